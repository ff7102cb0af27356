"""Checkpoints as plain ``.npz`` files: arrays plus one JSON metadata entry, never pickle.

Format (``FORMAT_VERSION`` 2), one ``.npz`` (zip of ``.npy`` files, uncompressed):

``model/<name>``
    every parameter and buffer of ``model.state_dict()``, as host NumPy arrays
    in the model's dtype (``model/0.weight``, ``model/0.bias``, ...).
``optimizer/<name>``
    the array entries of ``optimizer.state_dict()`` (``momentum_buffers.<i>``
    for SGD, ``first_moments.<i>`` / ``second_moments.<i>`` for Adam, ...).
``metadata``
    a uint8 array holding UTF-8 JSON: ``format`` (always
    ``"portacnn-checkpoint"``), ``format_version``, ``portacnn_version``,
    ``architecture`` (a registered name such as ``"resnet20"``, or
    ``"<unregistered>"``) and ``architecture_kwargs`` (what rebuilds it with
    ``portacnn.models.create``), ``model_class`` (module and class name),
    ``epoch`` (epochs completed), ``config`` (the training config as a dict),
    ``history`` (one dict per epoch), ``rng`` (the shuffling generator's
    ``bit_generator.state``, or null), ``optimizer`` (its other entries:
    ``step_count``, ``param_groups`` with every group's hyper-parameters,
    ``steps`` for Adam-like optimizers, plus ``type``), ``scheduler`` (its
    state dict plus ``type``, or null).

Version 1 (before parameter groups) saved only the optimizer's ``lr`` and
the scheduler's ``base_lr``; such files still load and resume. A scheduler
whose state JSON cannot hold (a ``LambdaLR`` given a callable object with
array attributes, a custom scheduler's object) is refused at save time with
a ``CheckpointError`` naming the entry; plain functions are not saved at all,
so resuming needs the same ``lr_lambda`` again.

Every file loads with ``numpy.load(path, allow_pickle=False)``. Saving is
atomic: the data goes to a temporary file in the same folder, is flushed and
fsynced, then ``os.replace``-d over the target, so a crash or full disk mid-way
leaves the previous checkpoint intact. The training loop writes
``<checkpoint_dir>/last.npz`` (see :data:`LAST`) at the end of every epoch.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
import zipfile
from pathlib import Path

import numpy

from . import __version__
from .backends import to_numpy
from .errors import CheckpointError


class UnregisteredModelWarning(UserWarning):
    """A checkpoint was saved from a model that no registered architecture built (so it cannot be rebuilt)."""

from .files import atomic_write

__all__ = [
    "FORMAT_VERSION", "LAST", "UNREGISTERED", "UnregisteredModelWarning",
    "save_checkpoint", "load_checkpoint", "build_model", "restore_training_state",
]

#: The newest checkpoint format this module writes and reads.
FORMAT_VERSION = 2
#: File name of the checkpoint written at the end of every epoch, inside the checkpoint folder.
LAST = "last.npz"
_MAGIC = "portacnn-checkpoint"
_METADATA = "metadata"


# --------------------------------------------------------------------------
# save


def _jsonable(value):
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, numpy.generic):
        return value.item()
    return value


def _split_state(state: dict) -> tuple[dict, dict]:
    """Split a state dict into (JSON values: scalars, lists and dicts such as param_groups; arrays as NumPy)."""
    scalars, arrays = {}, {}
    for name, value in state.items():
        if value is None or isinstance(value, (bool, int, float, str, list, tuple, dict)):
            scalars[name] = _jsonable(value)
        else:
            arrays[name] = to_numpy(value)
    return scalars, arrays


def _not_json(value, where: str) -> str | None:
    """The first entry of ``value`` that JSON cannot hold, as ``where[...]`` with its type, or None."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where} (its key {key!r} is a {type(key).__name__}, not a string)"
            found = _not_json(item, f"{where}[{key!r}]")
            if found:
                return found
        return None
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _not_json(item, f"{where}[{index}]")
            if found:
                return found
        return None
    return f"{where} (a {type(value).__name__})"


def _require_json(state: dict, what: str) -> None:
    problem = _not_json(state, what)
    if problem:
        raise CheckpointError(
            f"cannot save the {what}: {problem} cannot be stored in a checkpoint's JSON metadata. Keep only "
            "numbers, strings, lists and dicts in it (a LambdaLR's plain function is not saved at all, so pass "
            "the same lr_lambda when resuming; a callable object's attributes are saved and must be JSON)")


def save_checkpoint(path, model, optimizer=None, scheduler=None, epoch=0, rng=None, config=None, history=(),
                    *, architecture: str | None = None, architecture_kwargs: dict | None = None) -> Path:
    """Write a checkpoint (see the module docstring for the format), atomically; returns its path.

    ``optimizer`` and ``scheduler`` may be None (a bare model). ``rng`` is the
    ``numpy.random.Generator`` whose state should survive a resume (or None).
    ``config`` is a dataclass or dict of JSON-able values. The architecture
    and its arguments are those the model was built with through
    ``portacnn.models`` (see :func:`portacnn.models.architecture_of`);
    ``architecture`` / ``architecture_kwargs`` override them. A model no
    registered architecture built is saved as :data:`UNREGISTERED` (weights
    and training state intact), with an ``UnregisteredModelWarning`` that says
    how to register it, rather than under a wrong name.
    """
    if architecture is None:
        architecture, recorded = _architecture_of(model)
        architecture_kwargs = recorded if architecture_kwargs is None else architecture_kwargs
    arrays = {f"model/{name}": to_numpy(value) for name, value in model.state_dict().items()}
    optimizer_meta = scheduler_meta = None
    if optimizer is not None:
        optimizer_meta, optimizer_arrays = _split_state(optimizer.state_dict())
        optimizer_meta["type"] = type(optimizer).__name__
        _require_json(optimizer_meta, f"{type(optimizer).__name__} optimizer state")
        arrays.update({f"optimizer/{name}": value for name, value in optimizer_arrays.items()})
    if scheduler is not None:
        scheduler_meta = _jsonable(dict(scheduler.state_dict()))
        scheduler_meta["type"] = type(scheduler).__name__
        _require_json(scheduler_meta, f"{type(scheduler).__name__} scheduler state")
    metadata = {
        "format": _MAGIC,
        "format_version": FORMAT_VERSION,
        "portacnn_version": __version__,
        "architecture": architecture,
        "architecture_kwargs": _jsonable(architecture_kwargs or {}),
        "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
        "epoch": int(epoch),
        "config": _jsonable(config) if config is not None else None,
        "history": _jsonable(list(history)),
        "rng": _jsonable(rng.bit_generator.state) if rng is not None else None,
        "optimizer": optimizer_meta,
        "scheduler": scheduler_meta,
    }
    try:
        text = json.dumps(metadata, allow_nan=True)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint metadata is not JSON-serialisable: {exc}") from exc
    arrays[_METADATA] = numpy.frombuffer(text.encode("utf-8"), dtype=numpy.uint8)
    return atomic_write(path, lambda handle: numpy.savez(handle, **arrays))


# --------------------------------------------------------------------------
# load


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Returns a dict with ``model`` and ``optimizer`` (name -> NumPy array; the
    optimizer dict also holds its scalars such as ``lr``), ``scheduler``
    (dict or None), ``rng`` (bit-generator state or None), ``epoch``,
    ``config``, ``history``, ``architecture``, ``architecture_kwargs``,
    ``format_version`` and ``path``.

    Raises :class:`~portacnn.errors.CheckpointError` when the file is missing,
    truncated or corrupt, is not a portacnn checkpoint, or was written by a
    newer format version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}" + (" (it is a folder)" if path.is_dir() else ""))
    if not zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{path} is not a portacnn checkpoint: not an .npz (zip) file; it may be truncated "
            "(an interrupted copy) or a different kind of file")
    try:
        with numpy.load(path, allow_pickle=False) as archive:
            if _METADATA not in archive.files:
                raise CheckpointError(
                    f"{path} is not a portacnn checkpoint: it is an .npz without a '{_METADATA}' entry")
            entries = {name: _read_entry(path, archive, name) for name in archive.files}
    except CheckpointError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, RuntimeError) as exc:
        raise CheckpointError(f"{path} is corrupt or truncated and cannot be read ({exc})") from exc
    except Exception as exc:  # zlib.error and friends from a damaged archive
        raise CheckpointError(f"{path} is corrupt or truncated and cannot be read ({exc!r})") from exc

    metadata = _parse_metadata(path, entries.pop(_METADATA))
    version = metadata.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{path} is not a portacnn checkpoint: its metadata has no integer format_version")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} uses checkpoint format version {version}, but this portacnn ({__version__}) reads versions "
            f"up to {FORMAT_VERSION}; upgrade portacnn to load it")
    if version < 1:
        raise CheckpointError(f"{path} has an invalid checkpoint format version {version}")

    model, optimizer = {}, dict(metadata.get("optimizer") or {})
    for name, value in entries.items():
        group, _, key = name.partition("/")
        if group == "model" and key:
            model[key] = value
        elif group == "optimizer" and key:
            optimizer[key] = value
        else:
            raise CheckpointError(f"{path} has an unexpected entry {name!r}; is it a portacnn checkpoint?")
    if not model:
        raise CheckpointError(f"{path} holds no model arrays (no 'model/<name>' entries)")
    _check_metadata_fields(path, metadata)
    return {
        "path": str(path),
        "format_version": version,
        "architecture": metadata.get("architecture"),
        "architecture_kwargs": metadata.get("architecture_kwargs") or {},
        "model_class": metadata.get("model_class"),
        "epoch": int(metadata.get("epoch", 0)),
        "config": metadata.get("config"),
        "history": metadata.get("history") or [],
        "rng": metadata.get("rng"),
        "model": model,
        "optimizer": optimizer if metadata.get("optimizer") is not None else None,
        "scheduler": metadata.get("scheduler"),
        "portacnn_version": metadata.get("portacnn_version"),
    }


def _read_entry(path: Path, archive, name: str) -> numpy.ndarray:
    try:
        return archive[name]
    except ValueError as exc:
        if "allow_pickle" not in str(exc):
            raise
        raise CheckpointError(
            f"{path} is not a portacnn checkpoint: its entry {name!r} holds pickled Python objects, and portacnn "
            "never unpickles (loading a pickle can run arbitrary code). Only load such a file with NumPy yourself "
            "if you trust where it came from") from None


#: Metadata fields and the JSON types they must have (None allowed where a field may be null).
_METADATA_TYPES = {
    "architecture": (str,),
    "architecture_kwargs": (dict, type(None)),
    "epoch": (int,),
    "config": (dict, type(None)),
    "history": (list, type(None)),
    "rng": (dict, type(None)),
    "optimizer": (dict, type(None)),
    "scheduler": (dict, type(None)),
}


def _check_metadata_fields(path: Path, metadata: dict) -> None:
    """Fields present must have the JSON type ``save_checkpoint`` writes, so later steps cannot crash on them."""
    wrong = [f"{name} is {type(metadata[name]).__name__}, expected "
             + " or ".join("null" if t is type(None) else {"str": "string", "dict": "object", "list": "array"}
                           .get(t.__name__, t.__name__) for t in types)
             for name, types in _METADATA_TYPES.items()
             if name in metadata and (not isinstance(metadata[name], types) or isinstance(metadata[name], bool))]
    epoch = metadata.get("epoch", 0)
    if not wrong and epoch < 0:
        wrong.append(f"epoch is {epoch}, expected >= 0")
    if wrong:
        raise CheckpointError(f"{path} has malformed metadata ({'; '.join(wrong)}); it was not written by "
                              "portacnn's save_checkpoint, or was edited")


def _parse_metadata(path: Path, raw: numpy.ndarray) -> dict:
    if raw.dtype != numpy.uint8 or raw.ndim != 1:
        raise CheckpointError(f"{path} is not a portacnn checkpoint: '{_METADATA}' is not a uint8 byte string")
    try:
        metadata = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a portacnn checkpoint: its metadata is not valid JSON ({exc})") from exc
    if not isinstance(metadata, dict) or metadata.get("format") != _MAGIC:
        raise CheckpointError(f"{path} is not a portacnn checkpoint (its metadata lacks format={_MAGIC!r})")
    return metadata


# --------------------------------------------------------------------------
# restore


def _model_dtype(checkpoint: dict) -> str:
    for value in checkpoint["model"].values():
        if value.dtype.kind == "f":
            return value.dtype.name
    return "float32"


#: The architecture recorded for a model that no registered architecture built (never a registered name,
#: which must be an identifier): its weights load into a model the user builds, but nothing rebuilds it.
UNREGISTERED = "<unregistered>"


def _architecture_of(model) -> tuple[str, dict]:
    from .models import architecture_of

    found = architecture_of(model)
    if found is None:
        warnings.warn(
            f"saving a {type(model).__name__} that no registered architecture built: the checkpoint holds its "
            "weights and training state, but `portacnn evaluate`, `predict`, `export` and build_model cannot "
            "rebuild it. Register its factory (a function or Module class) with "
            "portacnn.models.register('my_net', factory) and build the model through it to make it rebuildable",
            UnregisteredModelWarning, stacklevel=3)
        return UNREGISTERED, {}
    return found


def build_model(checkpoint: dict, device=None, dtype=None):
    """A fresh model of the checkpoint's architecture on ``device``, with its weights loaded.

    ``dtype`` defaults to the dtype the weights were saved in. Raises
    ``CheckpointError`` for an architecture not registered in this process
    (a user's own must be registered again before loading), or (from
    ``load_state_dict``) when the arrays do not fit it.
    """
    from .models import available, create

    name = checkpoint.get("architecture")
    if name == UNREGISTERED:
        raise CheckpointError(
            f"{checkpoint.get('path', 'checkpoint')} holds the weights of a {checkpoint.get('model_class') or 'model'}"
            " that no registered architecture built, so it cannot be rebuilt from the file. Build the model "
            "yourself and call model.load_state_dict(load_checkpoint(path)['model']), or register its factory "
            "(portacnn.models.register) and save it again from a model built through it")
    if name not in available():
        raise CheckpointError(
            f"{checkpoint.get('path', 'checkpoint')} was saved from architecture {name!r}, which this portacnn "
            f"cannot build; known architectures: {', '.join(available())}. If it is your own, register it "
            "(portacnn.models.register) before loading")
    kwargs = checkpoint.get("architecture_kwargs") or {}
    try:
        model = create(name, dtype=dtype or _model_dtype(checkpoint), device=device, **kwargs)
    except TypeError as exc:  # an option this version's builder does not take
        raise CheckpointError(
            f"{checkpoint.get('path', 'checkpoint')}: cannot build architecture {name!r} with the saved options "
            f"{kwargs} ({exc}); was it saved by another portacnn version?") from exc
    model.load_state_dict(checkpoint["model"])
    return model


def restore_training_state(checkpoint: dict, model, optimizer=None, scheduler=None, rng=None) -> None:
    """Load a checkpoint's weights, optimizer and scheduler state and RNG state into live objects.

    Architecture mismatches surface as ``CheckpointError`` listing the missing,
    unexpected and mis-shaped names.
    """
    path = checkpoint.get("path", "checkpoint")
    model.load_state_dict(checkpoint["model"])

    def restore(key: str, what: str, apply) -> None:
        state = checkpoint.get(key)
        if state is None:
            raise CheckpointError(f"{path} holds no {what} state, so training cannot resume from it")
        try:
            apply(state)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(f"{path}: {what} state does not fit ({exc})") from exc

    if optimizer is not None:
        saved_type = (checkpoint.get("optimizer") or {}).get("type")
        if saved_type is not None and saved_type != type(optimizer).__name__:
            raise CheckpointError(f"{path} holds {saved_type} state but the optimizer is {type(optimizer).__name__}")
        restore("optimizer", "optimizer",
                lambda state: optimizer.load_state_dict({k: v for k, v in state.items() if k != "type"}))
    if scheduler is not None:
        saved_type = (checkpoint.get("scheduler") or {}).get("type")
        if saved_type is not None and saved_type != type(scheduler).__name__:
            raise CheckpointError(f"{path} holds {saved_type} state but the scheduler is {type(scheduler).__name__}")
        restore("scheduler", "learning-rate scheduler",
                lambda state: scheduler.load_state_dict({k: v for k, v in state.items() if k != "type"}))
    if rng is not None:
        restore("rng", "random-generator", lambda state: setattr(rng.bit_generator, "state", state))
