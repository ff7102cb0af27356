"""Batch splitting: one training step's batch cut into parts that run on their own threads.

NumPy runs each op on one core (only the matrix products use more), but it
releases the GIL inside its large kernels. So at batch 64 and above, two
threads that each take the forward and backward of half the batch keep both
cores busy with the elementwise work (im2col copies, pooling, ReLU, the
scatter-add) where one thread leaves one idle. Each thread works on a replica
of the model whose parameters share the model's arrays and keep their own
``.grad``; the parts' gradients are then added in a fixed order and the
optimizer steps once, on the model:

    step = ThreadedTrainStep(model, loss_fn, optimizer, threads=2)
    loss, logits = step(x, y)          # arrays; model and optimizer are updated

The result is the whole batch's step, to rounding: each part's mean loss
counts by its share of the batch. While the parts run, the BLAS libraries are
held to one thread each (through ``threadpoolctl``, where installed), so the
threads do not fight over the cores. Layers whose output depends on the
whole batch (batch norm in training mode) or that draw random numbers on
the host (active dropout) would change or race, so such models are refused.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import os
import weakref
from concurrent.futures import ThreadPoolExecutor

from ._arrays import namespace_of
from .errors import ArgumentError, UsageError

__all__ = ["ThreadedTrainStep", "blocking_layers", "default_threads", "map_in_threads", "one_blas_thread"]


def default_threads() -> int:
    """The CPUs this process may use (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def blocking_layers(model) -> list[str]:
    """Why the model's batch cannot be split (its batch norm and active dropout layers), one line a kind."""
    from .nn import Dropout
    from .nn.normalization import _BatchNorm

    kinds = {"batch norm": ([], "whose statistics are the whole batch's"),
             "dropout": ([], "whose masks come from one host generator")}
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            kinds["batch norm"][0].append(name or "the model")
        elif isinstance(module, Dropout) and module.p > 0:
            kinds["dropout"][0].append(name or "the model")
    reasons = []
    for kind, (names, why) in kinds.items():
        if names:
            shown = ", ".join(names[:3]) + (f", ... ({len(names)} in all)" if len(names) > 3 else "")
            reasons.append(f"{kind} layers ({shown}), {why}")
    return reasons


def _part_weight(loss_fn, part: int, batch: int) -> float:
    """How much one part's loss counts: its share of the batch for a mean, all of it for a sum."""
    reduction = getattr(loss_fn, "reduction", None)
    if getattr(loss_fn, "weight", None) is not None:
        raise UsageError("a threaded step cannot split a loss with class weights (its mean divides by the "
                         "whole batch's weight total); train with threads=1")
    if reduction == "mean":
        return part / batch
    if reduction == "sum":
        return 1.0
    raise UsageError(f"a threaded step needs a loss with reduction 'mean' or 'sum' (a portacnn.nn loss), got "
                     f"{type(loss_fn).__name__} with reduction {reduction!r}; train with threads=1")


class ThreadedTrainStep:
    """``step(x, y) -> (loss, logits)``: zero_grad, forward, backward and ``optimizer.step()``, with the
    batch split across ``threads`` threads.

    Batches smaller than ``threads`` use fewer threads. ``param.grad`` holds the
    whole batch's gradient afterwards, as after an eager step.
    """

    def __init__(self, model, loss_fn, optimizer, threads: int = 2):
        if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
            raise ArgumentError(f"threads must be a positive integer, got {threads!r}")
        blocking = blocking_layers(model)
        if blocking and threads > 1:
            raise UsageError("a threaded step cannot split the batch of a model with " + " and ".join(blocking)
                             + "; train it with threads=1")
        _part_weight(loss_fn, 1, 1)  # refuse an unsupported loss now, not at the first step
        self.model, self.loss_fn, self.optimizer, self.threads = model, loss_fn, optimizer, threads
        shared = {id(value.data): value.data for value in (*model.parameters(), *(b for _, b in model.named_buffers()))}
        # Parameters are new objects (their own .grad); their arrays are the model's.
        self._replicas = [copy.deepcopy(model, memo=dict(shared)) for _ in range(threads - 1)]
        self._pool = ThreadPoolExecutor(threads - 1, thread_name_prefix="portacnn-part") if threads > 1 else None
        if self._pool is not None:  # its threads end with the step (a finished train() call), not the process
            weakref.finalize(self, self._pool.shutdown, wait=False)
        self._limit_blas = _blas_limiter()

    def _sync_replicas(self):
        """Point every replica at the model's current arrays (an optimizer may have rebound them) and mode."""
        parameters, buffers = self.model.parameters(), [b for _, b in self.model.named_buffers()]
        for replica in self._replicas:
            for mine, theirs in zip(replica.parameters(), parameters):
                mine.data, mine.requires_grad, mine.grad = theirs.data, theirs.requires_grad, None
            for mine, theirs in zip((b for _, b in replica.named_buffers()), buffers):
                mine.data = theirs.data
            replica.train(self.model.training)

    def _run_part(self, model, x, y, weight):
        logits = model(x)
        loss = self.loss_fn(logits, y)
        if weight != 1.0:
            loss = loss * weight
        loss.backward()
        return loss.data, logits.data

    def __call__(self, x, y):
        batch = x.shape[0]
        parts = min(self.threads, batch)
        self.optimizer.zero_grad()
        if parts == 1:
            loss, logits = self._run_part(self.model, x, y, _part_weight(self.loss_fn, batch, batch))
            self.optimizer.step()
            return loss, logits
        self._sync_replicas()
        bounds = [batch * i // parts for i in range(parts + 1)]
        models = [self.model, *self._replicas[:parts - 1]]
        pieces = [(x[start:stop], y[start:stop], _part_weight(self.loss_fn, stop - start, batch))
                  for start, stop in itertools.pairwise(bounds)]
        with self._limit_blas():
            futures = [self._pool.submit(self._run_part, model, *piece) for model, piece in zip(models[1:], pieces[1:])]
            results = [self._run_part(models[0], *pieces[0])]
            results += [future.result() for future in futures]
        replica_parameters = [replica.parameters() for replica in models[1:]]
        for index, parameter in enumerate(self.model.parameters()):
            for parameters in replica_parameters:
                grad = parameters[index].grad
                if grad is not None:
                    parameter.grad = grad if parameter.grad is None else parameter.grad + grad
        self.optimizer.step()
        xp = namespace_of(results[0][1])
        loss = results[0][0]
        for part_loss, _ in results[1:]:
            loss = loss + part_loss
        return loss, xp.concat([logits for _, logits in results], axis=0)

    def close(self):
        """End the worker threads now (they also end when the step is garbage-collected)."""
        if self._pool is not None:
            self._pool.shutdown()


def map_in_threads(function, items, threads: int) -> list:
    """``[function(item) for item in items]``, up to ``threads`` at a time, with BLAS held to one thread each.

    Grad mode is per thread: ``function`` runs under ``no_grad()`` if the caller's thread is in it.
    """
    items = list(items)
    threads = min(threads, len(items))
    if threads <= 1:
        return [function(item) for item in items]
    from .autograd import is_grad_enabled, no_grad

    recording = is_grad_enabled()

    def run(item):
        if recording:
            return function(item)
        with no_grad():
            return function(item)

    with _blas_limiter()(), ThreadPoolExecutor(threads, thread_name_prefix="portacnn-part") as pool:
        return list(pool.map(run, items))


def one_blas_thread():
    """A context manager holding the BLAS libraries to one thread (nothing without ``threadpoolctl``).

    ``portacnn train`` runs small NumPy batches (under :data:`portacnn.training.SPLIT_MIN_IMAGES`
    images) in it: their matrix products are too small to share, and a second BLAS thread
    spinning between them only takes the core from the rest of the step.
    """
    return _blas_limiter()()


def _blas_limiter():
    """A context manager holding the BLAS libraries to one thread, or one that does nothing without
    ``threadpoolctl``."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return contextlib.nullcontext
    controller = ThreadpoolController()
    return lambda: controller.limit(limits=1, user_api="blas")
