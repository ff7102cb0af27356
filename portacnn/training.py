"""A small, readable training loop for LeNet on MNIST, on any backend.

``train(TrainConfig(...))`` runs the whole recipe and returns the metrics dict::

    {"test_accuracy": 0.991, "history": [{"epoch": 1, "train_loss": ..., ...}, ...],
     "backend": "numpy", "device": "cpu", "dtype": "float32", "wall_seconds": 312.4}

One epoch: shuffle the training indices with a seeded host
``numpy.random.Generator`` (its state is checkpointed), then per mini-batch:
move it to the backend, forward, ``CrossEntropyLoss``, ``loss.backward()``, SGD step.
``StepLR`` is stepped once per epoch; the full test split (or its first
``test_size`` images) is evaluated in eval mode at the end of every epoch.
Each step's loss and logits stay on the device and are read back together
once every ``SYNC_EVERY`` steps (for the progress bar, the accuracy and the
NaN check), so the loop does not force a host sync per step. A NaN or
infinite loss raises :class:`TrainingDivergedError` naming the epoch and step;
nothing is saved from a diverged epoch.

History entries: ``epoch``, ``train_loss`` / ``train_accuracy`` (mean over the
epoch's steps, with the weights as they were at each step), ``test_loss`` /
``test_accuracy`` (after the epoch, eval mode), ``seconds`` (wall time of the
epoch, training plus evaluation).

With ``checkpoint_dir`` set, ``<checkpoint_dir>/last.npz`` is written
(atomically) at the end of every epoch; ``resume=True`` continues from it
bit-for-bit (same parameters and history as an uninterrupted run, apart from
the wall-clock ``seconds``).

With ``distributed=True`` under an MPI launcher (``mpiexec -n N``), the N
processes train one model data-parallel (see :mod:`portacnn.distributed`):
each takes a disjoint shard of every global batch of ``batch_size`` images,
the gradients are averaged (weighted by shard size) before each step, the
epoch's losses and the evaluation are reduced across processes, and rank 0
alone prints, shows the progress bar and writes checkpoints, metrics and
plots. Results match a single process with the same settings up to float
rounding. In a single process ``distributed=True`` changes nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy

from .autograd import no_grad
from .backends import get_backend, parse_spec, placement_of, to_device, to_numpy
from .compiled import CompiledTrainStep, can_compile, compiled_forward
from .threaded import ThreadedTrainStep, blocking_layers, default_threads, map_in_threads, one_blas_thread
from .checkpoint import LAST, load_checkpoint, restore_training_state, save_checkpoint
from .files import atomic_write
from .host_allocator import keep_freed_host_memory
from .errors import ArgumentError, CheckpointError, PortacnnError, ShapeError, UsageError

__all__ = [
    "PRESETS", "SYNC_EVERY", "TrainConfig", "TrainingDivergedError", "ConfigError",
    "train", "evaluate", "prepare_images", "write_metrics", "write_plot",
]

#: Labels travel as int32: every device has it (some, like array_api_strict:no_x64, lack int64).
LABEL_DTYPE = numpy.int32

#: Training steps between reads of the device-side losses (progress bar and NaN check).
SYNC_EVERY = 50

#: The fewest images per thread for which ``threads=None`` splits a NumPy batch: below it the
#: threads' Python overhead costs more than the second core gives (see benchmarks/README.md).
SPLIT_MIN_IMAGES = 32

#: Hyperparameter presets. ``seed`` is the write-up's experiment; ``fast`` is
#: tuned for test accuracy per minute on a 2-core CPU. Explicit values in a
#: ``TrainConfig`` (or CLI flags) override the preset's.
PRESETS: dict[str, dict] = {
    "seed": dict(epochs=50, batch_size=5, lr=0.005, momentum=0.0, weight_decay=1e-4,
                 lr_step=10, lr_gamma=0.9, train_size=10_000),
    "fast": dict(epochs=5, batch_size=64, lr=0.05, momentum=0.9, weight_decay=5e-4,
                 lr_step=2, lr_gamma=0.5, train_size=None),
}
#: The preset of a run that names none, for a model whose architecture registered no recipe of its own.
DEFAULT_PRESET = "fast"
#: Values of the recipe fields that neither the preset/recipe nor the caller set.
RECIPE_DEFAULTS = dict(optimizer="sgd", scheduler="step", warmup=0, label_smoothing=0.0, augment=False,
                       normalize=False)

#: Optimizer names a config (``--optimizer``) accepts, and the ``portacnn.optim`` class each builds.
OPTIMIZERS = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "adagrad": "Adagrad"}
#: Learning-rate schedules a config (``--lr-schedule``) accepts: ``step`` multiplies the rate by
#: ``lr_gamma`` every ``lr_step`` epochs; ``cosine`` anneals it to 0 over all the steps after the warm-up,
#: step by step; ``onecycle`` is PyTorch's OneCycleLR over the whole run (peak ``lr``); ``constant`` keeps it.
SCHEDULES = ("step", "cosine", "onecycle", "constant")

# Config fields that change the training trajectory: a resume must keep them.
_RECIPE = ("model", "dataset", "optimizer", "scheduler", "warmup", "label_smoothing", "augment", "normalize",
           "batch_size", "lr", "momentum", "weight_decay", "lr_step", "lr_gamma", "train_size", "dtype", "seed")
# Fields a preset or an architecture's recipe may set.
_TUNABLE = ("epochs", "batch_size", "lr", "momentum", "weight_decay", "lr_step", "lr_gamma", "train_size",
            *RECIPE_DEFAULTS)
# Config fields that may differ between the ranks of a distributed run (everything else must agree).
_PER_RANK = ("data_dir", "checkpoint_dir", "plot", "metrics_out", "quiet", "download")


class ConfigError(PortacnnError, ValueError):
    """A training configuration value is invalid or inconsistent."""


class TrainingDivergedError(PortacnnError, RuntimeError):
    """The training loss became NaN or infinite."""


@dataclass
class TrainConfig:
    """Everything one training run needs. Hyperparameters left as None come from the recipe.

    ``model`` is a registered architecture name (``portacnn.models.available()``:
    ``"lenet"``, ``"resnet20"``, ...; built with the dataset's channels and
    classes) or a ``Module`` to train as it is. ``dataset`` is one of
    ``portacnn.datasets.DATASETS``. ``optimizer`` is a name in
    :data:`OPTIMIZERS` or a ``portacnn.optim.Optimizer`` over the model's
    parameters; ``scheduler`` a name in :data:`SCHEDULES` or an
    ``LRScheduler`` of that optimizer (stepped once per epoch). ``warmup``
    is a number of epochs of linear learning-rate warm-up (step by step);
    ``label_smoothing`` goes to the cross-entropy; ``augment`` crops (and,
    for CIFAR, flips) each training batch on the host; ``normalize``
    standardises each channel with the dataset's mean and std.

    The recipe: an explicit ``preset`` (:data:`PRESETS`) gives the values
    left as None; else the architecture's registered recipe
    (``portacnn.models.recipe_of``); else the ``fast`` preset. Fields no
    recipe sets take :data:`RECIPE_DEFAULTS`.

    ``backend`` is a spec such as ``"numpy"``, ``"torch:cuda:0"`` (None:
    ``$PORTACNN_BACKEND`` or numpy; for a ``Module``, where it already is).
    ``train_size`` / ``test_size`` use the first N images of each split
    (None: all). ``data_dir`` None means the dataset's default folder; a
    given ``data_dir`` must exist unless ``download`` is True.
    ``checkpoint_dir`` None disables checkpoints (and so ``resume``).
    ``distributed`` trains data-parallel across the processes of an MPI job
    (a no-op in a single process). ``compile`` runs each training step and
    evaluation batch as one compiled function where the backend can (JAX;
    see ``portacnn.compiled``), and eagerly elsewhere, or when the run is
    distributed. ``threads`` splits each training batch across that many
    threads (``portacnn.threaded``); None picks: on the NumPy backend one per
    usable CPU, as long as each gets at least :data:`SPLIT_MIN_IMAGES` images
    and the model has no batch norm or dropout, else 1. Compiled and
    distributed steps do not split.
    """

    model: object = "lenet"
    dataset: str = "mnist"
    optimizer: object = None
    scheduler: object = None
    backend: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float | None = None
    weight_decay: float | None = None
    lr_step: int | None = None
    lr_gamma: float | None = None
    warmup: int | None = None
    label_smoothing: float | None = None
    augment: bool | None = None
    normalize: bool | None = None
    train_size: int | None = None
    test_size: int | None = None
    dtype: str = "float32"
    seed: int = 0
    data_dir: str | None = None
    download: bool | None = None
    checkpoint_dir: str | None = None
    resume: bool = False
    plot: str | None = None
    metrics_out: str | None = None
    quiet: bool = False
    preset: str | None = None
    distributed: bool = False
    compile: bool = True
    threads: int | None = None

    def __post_init__(self):
        # What a recipe leaves out comes from the default preset, then RECIPE_DEFAULTS.
        recipe = {**RECIPE_DEFAULTS, **PRESETS[DEFAULT_PRESET], **self._recipe()}
        warmup_given = self.warmup is not None
        for name in _TUNABLE:
            # train_size None in a preset means "all"; an explicit value wins either way.
            if getattr(self, name) is None:
                setattr(self, name, recipe[name])
        if not warmup_given and isinstance(self.epochs, int) and self.warmup >= self.epochs:
            self.warmup = max(self.epochs - 1, 0)  # a shorter run than the recipe's keeps some of the main schedule
        self.validate()

    def _recipe(self) -> dict:
        from .models import available, recipe_of

        if self.preset is not None:
            if self.preset not in PRESETS:
                raise ConfigError(f"unknown preset {self.preset!r}; choose one of: {', '.join(PRESETS)}")
            return PRESETS[self.preset]
        if isinstance(self.model, str) and self.model in available() and recipe_of(self.model):
            return recipe_of(self.model)
        self.preset = DEFAULT_PRESET
        return PRESETS[DEFAULT_PRESET]

    @property
    def model_name(self) -> str:
        """The architecture's name, or the class name of a ``Module`` given as it is."""
        return self.model if isinstance(self.model, str) else type(self.model).__name__

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first bad value."""
        from .datasets import DATASETS
        from .models import available
        from .nn import Module
        from .optim import LRScheduler, Optimizer

        def positive(name, kind=int):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0 or (
                    kind is int and int(value) != value):
                raise ConfigError(f"{name} must be a positive {kind.__name__}, got {value!r}")

        if isinstance(self.model, str):
            if self.model not in available():
                raise ConfigError(f"unknown model {self.model!r}; choose one of: {', '.join(available())}, or "
                                  "register your own with portacnn.models.register(name, factory)")
        elif not isinstance(self.model, Module):
            raise ConfigError(f"model must be an architecture name or a portacnn.nn.Module, got "
                              f"{type(self.model).__name__}")
        from .datasets import canonical_name
        from .errors import DatasetError

        try:
            self.dataset = canonical_name(self.dataset)  # "Fashion-MNIST" and "cifar-10" too
        except DatasetError:
            raise ConfigError(f"unknown dataset {self.dataset!r}; choose one of: {', '.join(DATASETS)}") from None
        if not isinstance(self.optimizer, Optimizer) and self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"unknown optimizer {self.optimizer!r}; choose one of: {', '.join(OPTIMIZERS)}, "
                              "or pass a portacnn.optim.Optimizer")
        if not isinstance(self.scheduler, LRScheduler) and self.scheduler not in SCHEDULES:
            raise ConfigError(f"unknown learning-rate schedule {self.scheduler!r}; choose one of: "
                              f"{', '.join(SCHEDULES)}, or pass a portacnn.optim.LRScheduler")
        if isinstance(self.scheduler, LRScheduler) and not isinstance(self.optimizer, Optimizer):
            raise ConfigError("a scheduler object needs the optimizer object it schedules: pass both "
                              "(optimizer=SGD(model.parameters(), ...), scheduler=CosineAnnealingLR(optimizer, ...))")
        if isinstance(self.optimizer, Optimizer) and isinstance(self.model, str):
            raise ConfigError("an optimizer object needs the model object whose parameters it updates: pass "
                              "model=<the Module> too, or name the optimizer (optimizer='sgd')")
        for name in ("epochs", "batch_size", "lr_step"):
            positive(name)
        positive("lr", float)
        for name in ("train_size", "test_size"):
            if getattr(self, name) is not None:
                positive(name)
        if self.momentum < 0 or self.weight_decay < 0:
            raise ConfigError(f"momentum and weight_decay must be >= 0, got {self.momentum!r} and {self.weight_decay!r}")
        if not self.lr_gamma > 0:
            raise ConfigError(f"lr_gamma must be positive, got {self.lr_gamma!r}")
        if not isinstance(self.warmup, int) or isinstance(self.warmup, bool) or self.warmup < 0:
            raise ConfigError(f"warmup must be a whole number of epochs >= 0, got {self.warmup!r}")
        if self.warmup >= self.epochs and self.warmup > 0:
            raise ConfigError(f"warmup ({self.warmup} epochs) must be shorter than the run ({self.epochs} epochs)")
        if not isinstance(self.label_smoothing, (int, float)) or not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing!r}")
        for name in ("augment", "normalize", "compile"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise ConfigError(f"threads must be a positive integer (or None to pick), got {self.threads!r}")
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")
        if self.resume and not self.checkpoint_dir:
            raise ConfigError("resume needs a checkpoint folder: pass checkpoint_dir (--checkpoint-dir)")

    def to_dict(self) -> dict:
        """The config as JSON-able values (a ``Module``, optimizer or scheduler object by its class name)."""
        values = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            values[field.name] = value if value is None or isinstance(value, (str, int, float, bool)) else (
                type(value).__name__)
        return values

    @property
    def checkpoint_path(self) -> Path | None:
        return None if not self.checkpoint_dir else Path(self.checkpoint_dir) / LAST


# --------------------------------------------------------------------------
# data and evaluation


def prepare_images(host_images: numpy.ndarray, dtype, normalization=None) -> numpy.ndarray:
    """Host images as float ``dtype`` in [0, 1]: uint8 is divided by 255, floats are only cast.

    ``normalization`` ``(mean, std)``, one value per channel, then standardises each channel.
    """
    if host_images.dtype == numpy.uint8:
        images = host_images.astype(dtype)
        images /= 255
    else:
        images = host_images.astype(dtype, copy=normalization is not None)
    if normalization is not None:
        mean, std = (numpy.asarray(values, dtype=images.dtype).reshape(1, -1, 1, 1) for values in normalization)
        images -= mean
        images /= std
    return images


def _model_placement(model):
    first = model.parameters()[0].data
    return placement_of(first), str(first.dtype).rsplit(".", 1)[-1]


#: Default batch size of ``evaluate``. Larger batches do not help on the CPU:
#: at 1000 images conv2's patch matrix is 128 MB and falls out of cache, and
#: batches of 250 ran about 30% faster here (NumPy, float32).
EVAL_BATCH_SIZE = 250


def evaluate(model, images, labels, batch_size: int = EVAL_BATCH_SIZE, compile: bool = True, normalization=None,
             threads: int | None = None):
    """Mean cross-entropy, accuracy and predicted classes of ``model`` on host arrays.

    ``images`` (N, C, H, W) uint8 or float, ``labels`` (N,) integers, both
    NumPy; ``normalization`` is the ``(mean, std)`` per channel the model
    was trained with (see :func:`prepare_images`), or None.
    Runs in eval mode (restoring the previous mode) in batches of
    ``batch_size``; reads results back from the device once. With
    ``compile`` (the default) the forward is one compiled function where the
    backend can compile (JAX). ``threads`` batches run at a time, each on
    its own thread (None: one per usable CPU on the NumPy backend, else 1).
    Returns ``(loss: float, accuracy: float, predictions: numpy int64 array)``.
    """
    from . import functional as F

    placement, dtype = _model_placement(model)
    xp = placement.namespace
    labels = numpy.asarray(labels)
    if len(images) != len(labels) or len(labels) == 0:
        raise ShapeError(f"evaluate needs as many labels as images (and at least one), got {len(images)} and {len(labels)}")
    was_training = model.training
    model.eval()
    forward = compiled_forward(model) if compile and can_compile(model) else None
    if threads is None:
        threads = default_threads() if placement.backend == "numpy" and forward is None else 1

    def loss_sum_and_logits(start):
        batch = images[start:start + batch_size]
        x = to_device(prepare_images(batch, dtype, *([normalization] if normalization else [])), placement)
        y = to_device(labels[start:start + batch_size].astype(LABEL_DTYPE), placement)
        if forward is not None:
            logits = forward(x)
        else:
            with no_grad():
                logits = model(x).data
        return F.cross_entropy(logits, y, check_labels=False) * y.shape[0], logits

    try:
        results = map_in_threads(loss_sum_and_logits, range(0, len(labels), batch_size), threads)
        loss_sums, all_logits = [loss for loss, _ in results], [logits for _, logits in results]
        loss = float(numpy.sum(to_numpy(xp.stack(loss_sums)).astype(numpy.float64))) / len(labels)
        # argmax on the host: one small transfer, and it works on devices without int64 indices.
        predicted = numpy.argmax(to_numpy(xp.concat(all_logits)), axis=1).astype(numpy.int64)
    finally:
        model.train(was_training)
    # The labels are on the host: their range is checked once here, not on the device per batch.
    num_classes = all_logits[0].shape[1]
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ArgumentError(f"evaluate: labels must be class indices in [0, {num_classes}), "
                            f"got values from {labels.min()} to {labels.max()}")
    accuracy = float(numpy.mean(predicted == labels))
    return loss, accuracy, predicted


# --------------------------------------------------------------------------
# progress bar


class _NoBar:
    def update(self, n=1):
        pass

    def set_postfix_str(self, text, refresh=True):
        pass

    def close(self):
        pass


def _progress_bar(total: int, description: str, quiet: bool, interactive: bool | None = None):
    if interactive is None:
        interactive = hasattr(sys.stdout, "isatty") and sys.stdout.isatty()
    if quiet or not interactive:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc=description, unit="img", unit_scale=True, leave=False, file=sys.stdout,
                dynamic_ncols=True)


# --------------------------------------------------------------------------
# outputs


def write_metrics(path, metrics: dict) -> None:
    """Write the metrics dict as JSON, atomically."""
    text = json.dumps(metrics, indent=2) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))


def _require_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ConfigError(
            "--plot needs matplotlib, which is not installed; install it with: pip install 'portacnn[plot]' "
            "(or pip install matplotlib)") from None


def write_plot(path, history: list[dict]) -> None:
    """Loss and accuracy curves (train and test) against epoch, as a PNG, atomically (Agg, no pyplot)."""
    _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [h["epoch"] for h in history]
    figure = Figure(figsize=(10, 4), dpi=100)
    FigureCanvasAgg(figure)
    loss_axes, accuracy_axes = figure.subplots(1, 2)
    for axes, key, title in ((loss_axes, "loss", "cross-entropy loss"), (accuracy_axes, "accuracy", "accuracy")):
        axes.plot(epochs, [h[f"train_{key}"] for h in history], marker="o", label="train")
        axes.plot(epochs, [h[f"test_{key}"] for h in history], marker="o", label="test")
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_title(title)
        axes.grid(True, alpha=0.3)
        axes.legend()
    figure.tight_layout()
    atomic_write(path, lambda handle: figure.savefig(handle, format="png"))


# --------------------------------------------------------------------------
# training


def _load_data(config: TrainConfig):
    from .datasets import load_dataset

    train_images, train_labels = load_dataset(config.dataset, "train", root=config.data_dir, download=config.download)
    test_images, test_labels = load_dataset(config.dataset, "test", root=config.data_dir, download=config.download)
    if config.train_size is not None:
        train_images, train_labels = train_images[:config.train_size], train_labels[:config.train_size]
    if config.test_size is not None:
        test_images, test_labels = test_images[:config.test_size], test_labels[:config.test_size]
    return train_images, train_labels, test_images, test_labels


def _check_resumable(config: TrainConfig, checkpoint: dict) -> None:
    saved, now = checkpoint.get("config") or {}, config.to_dict()
    # A schedule planned over the whole run (cosine, one-cycle, a warm-up) would change course with --epochs.
    planned = config.scheduler in ("cosine", "onecycle") or config.warmup
    different = [f"{name}: checkpoint {saved.get(name)!r} vs now {now[name]!r}"
                 for name in _RECIPE + ("epochs",) * bool(planned) if name in saved and saved[name] != now[name]]
    if different:
        raise CheckpointError(
            f"cannot resume from {checkpoint['path']}: it was trained with a different recipe ("
            + "; ".join(different) + "). Pass the same settings (and preset) as the original run, "
            "or use a new --checkpoint-dir to start afresh.")


def _say(config: TrainConfig, message: str) -> None:
    if not config.quiet:
        print(message, flush=True)


def _checkpoint_note(config: TrainConfig) -> str:
    path = config.checkpoint_path
    if path is not None and path.exists():
        return f" The diverged weights were not saved: {path} still holds the last good checkpoint."
    return ""


def _flush(xp, pending_losses, pending_logits, pending_labels, epoch, first_step, lr):
    """Read the pending steps' losses and logits back (two transfers), check them; return (loss_sum, correct)."""
    losses = to_numpy(xp.stack(pending_losses)).astype(numpy.float64)
    predicted = numpy.argmax(to_numpy(xp.concat(pending_logits)), axis=1)
    correct = int(numpy.sum(predicted == numpy.concatenate(pending_labels)))
    sizes = numpy.asarray([len(labels) for labels in pending_labels], dtype=numpy.float64)
    bad = numpy.flatnonzero(~numpy.isfinite(losses))
    if bad.size:
        step = first_step + int(bad[0])
        raise TrainingDivergedError(
            f"training diverged: the loss became {losses[bad[0]]} at epoch {epoch}, step {step} "
            f"(learning rate {lr:g}). Try a lower learning rate (--lr), e.g. {lr / 10:g}.")
    return float(numpy.dot(losses, sizes)), correct


# NumPy would warn about overflow before the loss turns NaN; _flush reports that clearly instead.
@numpy.errstate(over="ignore", invalid="ignore")
def _train_epoch(model, loss_fn, optimizer, images, labels, order, config, placement, epoch, distributed=None,
                 whole_step=None, prepare=None, batch_scheduler=None):
    """One epoch of steps → (mean train loss, train accuracy).

    ``prepare`` turns a host batch of images into the float batch the model
    takes (augmentation, scaling, normalisation); ``batch_scheduler`` is a
    learning-rate scheduler stepped after every optimizer step (or None).

    With ``distributed`` (the module, in a multi-process job) this process
    trains on its shard of each global batch and the gradients are averaged
    across processes before every optimizer step. With ``whole_step`` (a
    ``CompiledTrainStep`` or a ``ThreadedTrainStep``, never together with
    ``distributed``) one call does each step's forward, backward and update.
    """
    xp, n = placement.namespace, len(order)
    model.train()
    steps = math.ceil(n / config.batch_size)
    interactive = None if distributed is None else distributed.launcher_is_tty()
    bar = _progress_bar(n, f"epoch {epoch}/{config.epochs}", config.quiet, interactive=interactive)
    flush = _flush if distributed is None else _flush_distributed
    loss_sum, correct = 0.0, 0
    pending_losses, pending_logits, pending_labels = [], [], []
    first_pending = 1
    try:
        for step in range(1, steps + 1):
            index = order[(step - 1) * config.batch_size: step * config.batch_size]
            local = index if distributed is None else distributed.shard(index)
            if len(local):  # only the last, short batch can leave a process without images
                if config.augment and distributed is not None:
                    # Every rank augments the whole batch, so the random draws stay in step across ranks.
                    start, stop = distributed.shard_bounds(len(index))
                    host = prepare(images[index])[start:stop]
                else:
                    host = prepare(images[local])
                x = to_device(host, placement)
                host_labels = labels[local].astype(LABEL_DTYPE)
                y = to_device(host_labels, placement)
                if whole_step is not None:  # forward, backward and update in one call
                    loss, logits = whole_step(x, y)
                else:
                    logits_tensor = model(x)
                    loss_tensor = loss_fn(logits_tensor, y)  # the mean over this process's images ...
                    loss_tensor.backward()
                    loss, logits = loss_tensor.data, logits_tensor.data
                pending_losses.append(loss)
                pending_logits.append(logits)
                pending_labels.append(host_labels)
            if whole_step is None:
                if distributed is not None:
                    # ... so each gradient counts by its share of the batch: the sum is the batch mean's gradient.
                    distributed.allreduce_gradients(model, weight=len(local) / len(index))
                optimizer.step()
                optimizer.zero_grad()
            if batch_scheduler is not None:
                batch_scheduler.step()

            bar.update(len(index))
            if step % SYNC_EVERY == 0 or step == steps:
                chunk_loss, chunk_correct = flush(xp, pending_losses, pending_logits, pending_labels,
                                                  epoch, first_pending, optimizer.lr)
                loss_sum += chunk_loss
                correct += chunk_correct
                # tqdm shows the images/s itself (unit="img"); the running mean loss is ours.
                bar.set_postfix_str(f"loss={loss_sum / min(step * config.batch_size, n):.4f}", refresh=False)
                pending_losses, pending_logits, pending_labels = [], [], []
                first_pending = step + 1
    finally:
        bar.close()
    return loss_sum / n, correct / n


# --------------------------------------------------------------------------
# data-parallel training (portacnn.distributed): the same steps, on each rank's shard


def _distributed():
    from . import distributed

    return distributed


def _flush_distributed(xp, pending_losses, pending_logits, pending_labels, epoch, first_step, lr):
    """``_flush`` of this rank's share, then agreed by all ranks: the global (loss_sum, correct).

    A loss that diverged on any rank raises the same ``TrainingDivergedError`` on every rank.
    """
    local, error = (0.0, 0), None
    try:
        if pending_losses:
            local = _flush(xp, pending_losses, pending_logits, pending_labels, epoch, first_step, lr)
    except TrainingDivergedError as diverged:
        error = str(diverged)
    gathered = _distributed().allgather((local, error))
    for rank, (_, error) in enumerate(gathered):
        if error:
            raise TrainingDivergedError(error.replace("training diverged:", f"training diverged on rank {rank}:", 1))
    return sum(loss for (loss, _), _ in gathered), sum(correct for (_, correct), _ in gathered)


def _evaluate_distributed(model, images, labels, normalization=None):
    """``evaluate`` with each rank scoring its shard of the test images; returns the global (loss, accuracy)."""
    distributed = _distributed()
    start, stop = distributed.shard_bounds(len(labels))
    local = (0.0, 0)
    if stop > start:
        loss, _, predicted = evaluate(model, images[start:stop], labels[start:stop], normalization=normalization)
        local = (loss * (stop - start), int(numpy.sum(predicted == numpy.asarray(labels[start:stop]))))
    gathered = distributed.allgather(local)
    return sum(loss for loss, _ in gathered) / len(labels), sum(correct for _, correct in gathered) / len(labels)


def _plural(count: int, noun: str) -> str:
    return f"{count:,} {noun}" + ("" if count == 1 else "s")


def _plan(config: TrainConfig) -> str:
    size = "all" if config.train_size is None else f"{config.train_size:,}"
    recipe = f"preset {config.preset}" if config.preset else f"the {config.model_name} recipe"
    optimizer = (type(config.optimizer).__name__ if not isinstance(config.optimizer, str)
                 else OPTIMIZERS[config.optimizer])
    if isinstance(config.optimizer, str):
        optimizer += f" lr {config.lr:g} momentum {config.momentum:g} weight decay {config.weight_decay:g}"
    if not isinstance(config.scheduler, str):
        schedule = f"{type(config.scheduler).__name__} every epoch"
    elif config.scheduler == "step":
        schedule = f"lr x{config.lr_gamma:g} every {_plural(config.lr_step, 'epoch')}"
    else:
        schedule = f"{config.scheduler} schedule"
    extras = [f"{_plural(config.warmup, 'epoch')} of warm-up"] if config.warmup else []
    extras += [f"label smoothing {config.label_smoothing:g}"] if config.label_smoothing else []
    extras += ["augmented"] * config.augment + ["normalized"] * config.normalize
    return (f"{recipe}: {_plural(config.epochs, 'epoch')}, {size} training images, batch {config.batch_size}, "
            f"{optimizer}, {schedule}, " + "".join(f"{extra}, " for extra in extras) + config.dtype)


def train(config: TrainConfig) -> dict:
    """Train LeNet on MNIST as ``config`` says; returns the metrics dict (see the module docstring).

    Raises ``TrainingDivergedError`` when the loss becomes NaN or infinite,
    ``CheckpointError`` when a resume checkpoint is unreadable or from another
    recipe, ``DatasetError`` / ``BackendError`` for data or backend problems.
    With ``config.distributed`` in an MPI job, any other failure on one rank
    prints ``rank N failed: ...`` and ends every rank (``MPI_Abort``); every
    rank returns the same metrics (apart from the wall-clock times).
    """
    distributed = _distributed()
    if not config.distributed:
        if distributed.launched_size() > 1:
            raise ConfigError(
                f"this process is one of {distributed.launched_size()} started by an MPI launcher, but distributed "
                "training is off: each would train alone and write the same files. Pass --distributed "
                "(TrainConfig(distributed=True)), or run a single process")
        return _train(config)
    if distributed.init() == 1:
        return _train(config)
    with distributed.guard(collective=(TrainingDivergedError, distributed.DistributedError)):
        return _train(config)


def _build_model(config: TrainConfig, info, placement):
    """The model to train: a registered architecture built for the dataset, or the given Module moved there."""
    import inspect

    from .models import create
    from .models._registry import _entry

    if not isinstance(config.model, str):
        return config.model.to(placement, dtype=config.dtype)
    # Pass the dataset's shape to the options the architecture has (LeNet's layers fix its input size).
    options = dict(num_classes=info.num_classes, in_channels=info.in_channels, input_size=info.image_size[0])
    accepted = inspect.signature(_entry(config.model).factory).parameters
    return create(config.model, seed=config.seed, dtype=config.dtype, device=placement,
                  **{name: value for name, value in options.items() if name in accepted})


def _check_model_fits(model, info, placement, dtype) -> None:
    """One image through the model before training: a wrong input or class count fails here, clearly."""
    sample = numpy.zeros((1, info.in_channels, *info.image_size), dtype=dtype)
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            out = model(to_device(sample, placement))
    except PortacnnError as error:
        raise ConfigError(f"the model cannot take the dataset's {info.in_channels}x{info.image_size[0]}x"
                          f"{info.image_size[1]} images: {error}") from error
    finally:
        model.train(was_training)
    if tuple(out.shape) != (1, info.num_classes):
        raise ConfigError(f"the model gives outputs of shape {tuple(out.shape)[1:]} per image, but {info.name} has "
                          f"{info.num_classes} classes: build it with num_classes={info.num_classes}")


def _threaded_step(config: TrainConfig, placement, model, loss_fn, optimizer):
    """A ``ThreadedTrainStep`` when the run asks for threads or ``threads=None`` picks more than one, else None."""
    threads = config.threads
    if threads is None:
        if placement.backend != "numpy" or blocking_layers(model):
            return None
        threads = min(default_threads(), config.batch_size // SPLIT_MIN_IMAGES)
    if threads <= 1:
        return None
    try:
        return ThreadedTrainStep(model, loss_fn, optimizer, threads)
    except UsageError as error:
        raise ConfigError(f"--threads {threads}: {error}") from None


def _build_optimizer(config: TrainConfig, model):
    from . import optim

    if not isinstance(config.optimizer, str):
        owned = {id(p) for p in config.optimizer.params}
        if any(id(p) not in owned for p in model.parameters() if p.requires_grad):
            raise ConfigError("the optimizer does not hold the model's parameters: build it with "
                              "model.parameters() of the model you pass")
        return config.optimizer
    options = dict(lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer in ("sgd", "rmsprop"):
        options["momentum"] = config.momentum
    return getattr(optim, OPTIMIZERS[config.optimizer])(model.parameters(), **options)


def _build_scheduler(config: TrainConfig, optimizer, steps_per_epoch: int):
    """``(scheduler, stepped_every_batch)``; the named schedules other than per-epoch ``step`` go step by step."""
    from .optim import (CosineAnnealingLR, LinearLR, MultiStepLR, OneCycleLR, SequentialLR, StepLR)

    if not isinstance(config.scheduler, str):
        return config.scheduler, False
    if config.scheduler == "step" and not config.warmup:
        return StepLR(optimizer, config.lr_step, config.lr_gamma), False
    total, warmup = config.epochs * steps_per_epoch, config.warmup * steps_per_epoch
    if config.scheduler == "onecycle":
        pct_start = config.warmup / config.epochs if config.warmup else 0.3
        return OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total,
                          pct_start=pct_start, cycle_momentum=False), True
    if config.scheduler == "cosine":
        main = CosineAnnealingLR(optimizer, T_max=total - warmup)
    elif config.scheduler == "step":
        milestones = list(range(config.lr_step * steps_per_epoch - warmup, total, config.lr_step * steps_per_epoch))
        main = MultiStepLR(optimizer, milestones=[m for m in milestones if m > 0] or [total], gamma=config.lr_gamma)
    else:  # constant
        main = LinearLR(optimizer, start_factor=1.0, end_factor=1.0, total_iters=1)
    if not warmup:
        return main, True
    # Step i of the warm-up runs at (i + 1) / warmup of the rate: the last one at the full rate.
    ramp = LinearLR(optimizer, start_factor=1.0 / warmup, end_factor=1.0, total_iters=max(warmup - 1, 1))
    return SequentialLR(optimizer, [ramp, main], milestones=[warmup]), True


def _host_pipeline(config: TrainConfig, info, rng):
    """``(prepare, normalization)``: the host function from a batch of raw images to the model's input."""
    from .datasets.transforms import augment

    normalization = (info.mean, info.std) if config.normalize else None
    # A flipped digit or letter is another symbol; photos (CIFAR) keep their class when mirrored.
    flip = info.name.startswith("cifar")
    padding = 4 if info.image_size[0] >= 32 else 2

    def prepare(batch):
        if config.augment:
            batch = augment(batch, rng, padding=padding, flip=flip)
        return prepare_images(batch, config.dtype, *([normalization] if normalization else []))

    return prepare, normalization


def _train(config: TrainConfig) -> dict:
    from .datasets import dataset_info
    from .nn import CrossEntropyLoss

    started = time.perf_counter()
    config.validate()
    distributed = _distributed() if config.distributed and _distributed().is_distributed() else None
    lead = distributed is None or distributed.rank() == 0  # the one process that prints and writes files
    if not lead:
        config = dataclasses.replace(config, quiet=True)
    if config.plot:
        _require_matplotlib()
    if config.backend is None and not isinstance(config.model, str) and distributed is None:
        placement = placement_of(config.model.parameters()[0].data)  # a given model trains where it is
    else:
        placement = parse_spec(config.backend if distributed is None else distributed.local_device_spec(config.backend))
    device = get_backend(placement.backend).device_label(placement.device)
    if placement.backend == "numpy":
        keep_freed_host_memory()  # each step's arrays reuse freed memory instead of faulting in new pages

    checkpoint = None
    if config.resume:
        if config.checkpoint_path.exists():
            checkpoint = load_checkpoint(config.checkpoint_path)
            _check_resumable(config, checkpoint)
        else:
            _say(config, f"no checkpoint at {config.checkpoint_path}; starting from scratch")
    elif config.checkpoint_path is not None and config.checkpoint_path.exists():
        _say(config, f"note: {config.checkpoint_path} exists and will be overwritten after epoch 1 "
                     "(pass --resume to continue from it instead)")

    train_images, train_labels, test_images, test_labels = _load_data(config)
    if config.batch_size > len(train_labels):
        raise ConfigError(f"batch_size {config.batch_size} is larger than the {len(train_labels)} training images")
    if distributed is not None and config.batch_size < distributed.world_size():
        raise ConfigError(f"batch_size {config.batch_size} is smaller than the {distributed.world_size()} processes: "
                          "each needs at least one image of every batch")

    info = dataset_info(config.dataset)
    model = _build_model(config, info, placement)
    _check_model_fits(model, info, placement, config.dtype)
    # The loaders guarantee labels below the dataset's class count, which the model was just checked to
    # output; a per-step range check would force a device sync every step on GPUs.
    loss_fn = CrossEntropyLoss(check_labels=False, label_smoothing=config.label_smoothing)
    optimizer = _build_optimizer(config, model)
    scheduler, batch_scheduler = _build_scheduler(config, optimizer, math.ceil(len(train_labels) / config.batch_size))
    # One generator shuffles and augments, so its checkpointed state resumes both exactly.
    rng = numpy.random.default_rng(config.seed)
    prepare, normalization = _host_pipeline(config, info, rng)
    history: list[dict] = []
    start_epoch = 0
    if checkpoint is not None:
        restore_training_state(checkpoint, model, optimizer, scheduler, rng)
        history = [dict(h) for h in checkpoint["history"]]
        start_epoch = checkpoint["epoch"]
        _say(config, f"resuming from {config.checkpoint_path} after epoch {start_epoch}")
    if distributed is not None:
        # Every rank must start from the same weights, shuffling, settings and data sizes (a broadcast checksum).
        settings = {k: v for k, v in config.to_dict().items() if k not in _PER_RANK}
        distributed.check_parameters(model, extra=json.dumps(
            [settings, start_epoch, len(train_labels), len(test_labels), rng.bit_generator.state],
            sort_keys=True, default=str))

    def metrics() -> dict:
        return {
            "test_accuracy": history[-1]["test_accuracy"] if history else None,
            "history": history,
            "backend": placement.backend,
            "device": device,
            "dtype": config.dtype,
            "wall_seconds": time.perf_counter() - started,
        }

    # What evaluate, predict and export need to feed the model as it was trained.
    saved_config = {**config.to_dict(), "input_shape": [info.in_channels, *info.image_size],
                    "normalization": [list(normalization[0]), list(normalization[1])] if normalization else None}
    compiled_step = (CompiledTrainStep(model, loss_fn, optimizer)
                     if config.compile and distributed is None and can_compile(model) else None)
    where = placement.spec if distributed is None else (
        f"{distributed.world_size()} MPI processes ({placement.spec} on rank 0), data-parallel")
    threaded_step = None if compiled_step is not None or distributed is not None else _threaded_step(
        config, placement, model, loss_fn, optimizer)
    if compiled_step is not None:
        where += " (each step compiled; --no-compile to run eagerly)"
    elif threaded_step is not None:
        where += f" (each batch split across {threaded_step.threads} threads)"
    _say(config, f"training {config.model_name} on {info.name} on {where}; {_plan(config)}")
    # Small NumPy batches' matrix products are too small to share between BLAS threads (see one_blas_thread).
    small_steps = (placement.backend == "numpy" and compiled_step is None and threaded_step is None
                   and distributed is None and config.batch_size < SPLIT_MIN_IMAGES)
    for epoch in range(start_epoch + 1, config.epochs + 1):
        epoch_started = time.perf_counter()
        order = rng.permutation(len(train_labels))
        try:
            with one_blas_thread() if small_steps else contextlib.nullcontext():
                train_loss, train_accuracy = _train_epoch(
                    model, loss_fn, optimizer, train_images, train_labels, order, config, placement, epoch,
                    distributed, compiled_step or threaded_step, prepare, scheduler if batch_scheduler else None)
        except TrainingDivergedError as error:
            raise TrainingDivergedError(f"{error}{_checkpoint_note(config)}") from None
        lr = optimizer.lr
        if not batch_scheduler:
            scheduler.step()
        with numpy.errstate(over="ignore", invalid="ignore"):
            if distributed is None:
                # Batches as large as training's, at least 64: a wide network's patch matrices at the
                # default 250 fall out of cache (ResNet-8: 6.4 s against 4.5 s at 64 for the 10,000 images).
                test_loss, test_accuracy, _ = evaluate(model, test_images, test_labels, compile=config.compile,
                                                       normalization=normalization,
                                                       batch_size=max(config.batch_size, 64))
            else:
                test_loss, test_accuracy = _evaluate_distributed(model, test_images, test_labels, normalization)
        if not (math.isfinite(test_loss) and math.isfinite(train_loss)):
            raise TrainingDivergedError(
                f"training diverged: the test loss became {test_loss} after epoch {epoch}, step "
                f"{math.ceil(len(train_labels) / config.batch_size)} (the weights overflowed at the last steps; "
                f"learning rate {lr:g}). Try a lower learning rate (--lr), e.g. {lr / 10:g}."
                + _checkpoint_note(config))
        history.append({
            "epoch": epoch,
            "train_loss": train_loss,
            "train_accuracy": train_accuracy,
            "test_loss": test_loss,
            "test_accuracy": test_accuracy,
            "seconds": time.perf_counter() - epoch_started,
        })
        _say(config, f"epoch {epoch}/{config.epochs}: train loss {train_loss:.4f} acc {train_accuracy:.4f} | "
                     f"test loss {test_loss:.4f} acc {test_accuracy:.4f} | {history[-1]['seconds']:.1f}s")
        if config.checkpoint_path is not None and lead:
            save_checkpoint(config.checkpoint_path, model, optimizer, scheduler, epoch, rng, saved_config, history)
        if config.metrics_out and lead:
            write_metrics(config.metrics_out, metrics())
        if config.plot and lead:
            write_plot(config.plot, history)

    result = metrics()
    if start_epoch >= config.epochs:
        _say(config, f"the checkpoint already has {_plural(start_epoch, 'epoch')} (asked for {config.epochs}); "
                     "nothing to train")
        if config.plot and history and lead:
            write_plot(config.plot, history)
    if config.metrics_out and lead:
        write_metrics(config.metrics_out, result)  # again, so wall_seconds covers the whole call
    return result
