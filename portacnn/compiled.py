"""Compiled steps: a whole training step (or an eval forward) as one compiled function, where the backend can.

JAX runs portacnn eagerly one small op at a time, which is slow; but the
tape never reads an array's value, so the same Python step (forward,
``loss.backward()``, ``optimizer.step()``) traces under ``jax.jit`` into one
XLA program. These wrappers pass everything the step reads and writes
through the compiled function as arrays (parameters, buffers, optimizer
state, each parameter group's learning rate and the step count) and put the
results back, so the
model and optimizer look exactly as after an eager step:

    step = CompiledTrainStep(model, loss_fn, optimizer)
    loss, logits = step(x, y)          # arrays; model and optimizer are updated

A new input shape compiles once more, and each compiled shape is kept: the
last, smaller batch of an epoch compiles on the first epoch only; so do
train and eval mode, each set of frozen parameters, and each setting of the
optimizer's hyper-parameters other than the learning rate (momentum, betas,
weight decay: these steer Python branches, so they cannot be traced; a
schedule that changes them every step, such as OneCycleLR's momentum
cycling, compiles every step and is better run with ``--no-compile``). Dropout draws its masks on
the host, which a compiled step would freeze into constants, so models with
active dropout are refused; train them eagerly (``--no-compile``).

The training step updates the model in place, as PyTorch's optimizers do:
the old parameter, buffer and optimizer-state arrays are donated to the
compiled function, which writes the new values into their memory (JAX's
``donate_argnums``) instead of allocating them anew each step. An array that
anything outside the model and optimizer still refers to (a user's
``w = layer.weight.data``, a graph recorded eagerly, one array shared by two
parameters) is copied first and that copy donated, so what a caller holds
stays readable and unchanged.
"""

from __future__ import annotations

import sys
import weakref

from ._arrays import namespace_of
from .autograd import no_grad
from .backends import get_backend, placement_of
from .errors import UsageError

__all__ = ["CompiledTrainStep", "can_compile", "compiled_forward"]


def _placement(model):
    parameters = model.parameters()
    if not parameters:
        raise UsageError("a compiled step needs a model with parameters")
    return placement_of(parameters[0].data)


def can_compile(model) -> bool:
    """Whether ``model``'s backend compiles whole steps (JAX) and nothing in it stops that (active dropout)."""
    return _placement(model).compiles_steps and not _active_dropout(model)


def _active_dropout(model) -> bool:
    from .nn import Dropout

    return any(isinstance(m, Dropout) and m.p > 0 for m in model.modules())


def _state_holders(model):
    """The model's parameters and buffers: what holds each array a compiled function takes and gives back."""
    return model.parameters(), [buffer for _, buffer in model.named_buffers()]


def _arrays_of(holders) -> list:
    return [holder.data for holder in holders]


def _put_arrays(holders, arrays) -> None:
    for holder, array in zip(holders, arrays):
        holder.data = array


def _unshared(arrays: list) -> list:
    """``arrays`` with each one that something else also refers to replaced by a copy, so donating
    the list deletes nothing anyone else will read (CPython's reference counts tell)."""
    counts = _reference_counts(arrays)
    return [array if array is None or count <= _OWN_REFERENCES else _copy(array)
            for array, count in zip(arrays, counts)]


def _reference_counts(arrays: list) -> list[int]:
    getrefcount = getattr(sys, "getrefcount", None)
    if getrefcount is None:  # no reference counts here: treat every array as shared (copied, never lost)
        return [sys.maxsize] * len(arrays)
    return [getrefcount(array) for array in arrays]


def _count_own_references() -> int:
    """What ``_reference_counts`` reports for an array that only its owner (a Parameter's ``data``, an
    optimizer's state list) and the list handed to ``_unshared`` refer to: measured on a stand-in
    through the same code, since how many references the interpreter itself holds meanwhile (the loop
    variable, the call's argument) differs between Python versions."""
    stand_in = object()
    owner, handed_over = [stand_in], [stand_in]  # noqa: F841 - owner only has to be alive while counting
    del stand_in
    return _reference_counts(handed_over)[0]


_OWN_REFERENCES = _count_own_references()


def _copy(array):
    return namespace_of(array).asarray(array, copy=True)


class CompiledTrainStep:
    """``step(x, y) -> (loss, logits)``: forward, backward and ``optimizer.step()`` as one compiled function.

    The same result as the eager step, to rounding (the parity suite checks
    three SGD steps with momentum at rtol 1e-10 in float64). Gradients stay
    inside the compiled function: ``param.grad`` is None afterwards.
    """

    def __init__(self, model, loss_fn, optimizer):
        placement = _placement(model)
        if not placement.compiles_steps:
            raise UsageError(f"{placement.spec} cannot compile a training step (only JAX can); run the step eagerly")
        if _active_dropout(model):
            raise UsageError("a compiled training step cannot use Dropout (its masks are drawn on the host and "
                             "would be frozen into the compiled step); train this model eagerly (--no-compile)")
        self.model, self.loss_fn, self.optimizer = model, loss_fn, optimizer
        self._compile = get_backend(placement.backend).compile_step
        self._compiled_by_mode = {}
        self._without_grad = {}  # mode -> indices of the parameters the traced step gave no gradient

    def _mode(self):
        """The Python state a trace bakes in: train/eval, which parameters are frozen, and every
        optimizer hyper-parameter but the (traced) learning rate."""
        settings = tuple(tuple(sorted((key, value) for key, value in group.items() if key not in ("params", "lr")))
                         for group in self.optimizer.param_groups)
        return self.model.training, tuple(p.requires_grad for p in self.optimizer.params), settings

    def _compiled(self, mode, *arrays):
        # Each mode gets its own function (JAX caches traces by function, not
        # by our flags), so switching eval() or freezing a layer never reuses
        # a trace made for another mode.
        compiled = self._compiled_by_mode.get(mode)
        if compiled is None:
            def step_in_this_mode(*args):
                return self._pure_step(mode, *args)
            # Parameters, buffers and optimizer state (the first three arguments) are donated.
            compiled = self._compiled_by_mode[mode] = self._compile(step_in_this_mode, donate_argnums=(0, 1, 2))
        return compiled(*arrays)

    def _optimizer_state(self):
        return {name: list(getattr(self.optimizer, name)) for name in self.optimizer._state_names}

    def _load_optimizer_state(self, state):
        for name, values in state.items():
            setattr(self.optimizer, name, list(values))

    def _set_rates(self, rates):
        for group, rate in zip(self.optimizer.param_groups, rates):
            group["lr"] = rate

    def _pure_step(self, mode, params, buffers, optimizer_state, rates, step_count, x, y):
        parameters, buffer_holders = _state_holders(self.model)
        _put_arrays(parameters, params)
        _put_arrays(buffer_holders, buffers)
        self._load_optimizer_state(optimizer_state)
        # The groups' rates and the step count are traced arrays, so a
        # scheduler's new rate or Adam's bias correction needs no new compilation.
        self._set_rates(rates)
        self.optimizer.step_count = step_count
        self.optimizer.zero_grad()
        logits = self.model(x)
        loss = self.loss_fn(logits, y)
        loss.backward()
        self._without_grad[mode] = [i for i, p in enumerate(self.optimizer.params) if p.grad is None]
        self.optimizer.step()
        return _arrays_of(parameters), _arrays_of(buffer_holders), self._optimizer_state(), loss.data, logits.data

    def __call__(self, x, y):
        optimizer = self.optimizer
        rates = [group["lr"] for group in optimizer.param_groups]
        step_count = optimizer.step_count
        mode = self._mode()
        parameters, buffer_holders = _state_holders(self.model)  # walked once a step: this is the hot path
        params, buffers = _arrays_of(parameters), _arrays_of(buffer_holders)
        optimizer_state = self._optimizer_state()
        missed = list(getattr(optimizer, "_missed", ()))  # the trace's own counting is undone below
        try:
            new_params, new_buffers, new_optimizer_state, loss, logits = self._compiled(
                mode, _unshared(params), _unshared(buffers),
                {name: _unshared(values) for name, values in optimizer_state.items()},
                # Plain numbers are traced as weakly typed scalars (taking the parameters' dtype where
                # they meet them): a new rate needs no new compilation, and unlike a fresh device
                # array per call they cost no extra dispatch that waits for the previous step.
                [float(rate) for rate in rates], float(step_count), x, y)
        except BaseException:
            # Tracing ran the step on placeholders: put the real arrays back.
            _put_arrays(parameters, params)
            _put_arrays(buffer_holders, buffers)
            self._load_optimizer_state(optimizer_state)
            raise
        finally:
            self._set_rates(rates)
            optimizer.step_count = step_count
            if missed:
                optimizer._missed = missed
            self.optimizer.zero_grad()
        _put_arrays(parameters, new_params)
        _put_arrays(buffer_holders, new_buffers)
        self._load_optimizer_state(new_optimizer_state)
        optimizer.step_count = step_count + 1
        if getattr(optimizer, "_counts_steps", False):
            # A parameter without a gradient sat this step out, as in an eager step.
            for index in self._without_grad[mode]:
                optimizer._missed[index] += 1
        return loss, logits


class _CompiledForward:
    def __init__(self, model):
        placement = _placement(model)
        self.model = weakref.proxy(model)
        self._compiled = {}  # train/eval mode -> compiled function (the mode is Python state, not traced)
        self._compile = get_backend(placement.backend).compile_step

    def _pure_forward(self, params, buffers, x):
        parameters, buffer_holders = _state_holders(self.model)
        _put_arrays(parameters, params)
        _put_arrays(buffer_holders, buffers)
        with no_grad():
            return self.model(x).data

    def __call__(self, x):
        mode = self.model.training
        if mode not in self._compiled:
            def forward_in_this_mode(params, buffers, x):  # a function per mode: see CompiledTrainStep._compiled
                return self._pure_forward(params, buffers, x)
            self._compiled[mode] = self._compile(forward_in_this_mode)
        parameters, buffer_holders = _state_holders(self.model)
        params, buffers = _arrays_of(parameters), _arrays_of(buffer_holders)
        try:
            return self._compiled[mode](params, buffers, x)
        finally:  # tracing put placeholders in
            _put_arrays(parameters, params)
            _put_arrays(buffer_holders, buffers)


_FORWARDS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_forward(model):
    """``forward(x) -> logits array`` without a graph, compiled; kept per model so each shape compiles once."""
    forward = _FORWARDS.get(model)
    if forward is None:
        forward = _FORWARDS[model] = _CompiledForward(model)
    return forward
