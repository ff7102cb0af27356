"""Weights in the safetensors format: ``portacnn.save_weights(model, "model.safetensors")``.

A safetensors file is a JSON header (names, dtypes, shapes) followed by the
raw bytes of each array: nothing in it is executable, unlike a pickle. The
names are the model's ``state_dict()`` names, which are PyTorch's
(``conv1.weight``, ``bn1.running_var``, ``bn1.num_batches_tracked`` as
int64), and the header's metadata is ``{"format": "pt"}`` as in the files
PyTorch's own safetensors helpers write, so the same architecture written
with ``torch.nn`` loads the file with
``torch_model.load_state_dict(safetensors.torch.load_file(path))``, and
``load_weights`` reads a file saved from such a model.

Only the weights are stored. A full training checkpoint (optimizer state,
epoch, architecture, configuration) is ``portacnn.checkpoint``'s ``.npz``.
The ``safetensors`` package is optional: ``pip install "portacnn[safetensors]"``.
"""

from __future__ import annotations

from pathlib import Path

import numpy

from .backends import dtype_name, to_numpy
from .errors import ArgumentTypeError, CheckpointError
from .files import atomic_write

__all__ = ["save_weights", "load_weights"]

_INSTALL_HINT = 'pip install "portacnn[safetensors]"'
#: What PyTorch's ``safetensors.torch.save_model`` writes; tools that read "pt" files check it.
METADATA = {"format": "pt"}


def _safetensors_numpy():
    try:
        import safetensors.numpy
    except ImportError as error:
        raise CheckpointError(f"saving and loading safetensors weights needs the safetensors package, which is not "
                              f"installed: {_INSTALL_HINT} (import failed: {error})") from None
    return safetensors.numpy


def _require_module(model, what: str):
    from .nn import Module

    if not isinstance(model, Module):
        raise ArgumentTypeError(f"{what} takes a portacnn Module, got {type(model).__name__}")


def _host_array(name: str, array) -> numpy.ndarray:
    """One state entry as a contiguous NumPy array in its own dtype (bfloat16 via ml_dtypes)."""
    if dtype_name(array) == "bfloat16":
        # NumPy has no bfloat16: widen on the device (exact), then narrow on the host with ml_dtypes'
        # bfloat16, which safetensors stores as BF16 (exact too: every value is a bfloat16 value).
        try:
            import ml_dtypes
        except ImportError:
            raise CheckpointError(
                f"{name} is bfloat16, which NumPy cannot hold without the ml_dtypes package: pip install ml_dtypes, "
                "or save a float32 copy (model.to(dtype='float32'))") from None
        from ._arrays import namespace_of

        xp = namespace_of(array)
        return numpy.asarray(to_numpy(xp.astype(array, xp.float32)).astype(ml_dtypes.bfloat16), order="C")
    # asarray, not ascontiguousarray, which would make num_batches_tracked's shape () into (1,)
    return numpy.asarray(to_numpy(array), order="C")


def save_weights(model, path) -> Path:
    """Write ``model``'s parameters and buffers to ``path`` as safetensors, atomically; returns the path.

    Every ``state_dict()`` entry is stored under its name in its own dtype
    (float16/32/64, bfloat16, int64 for ``num_batches_tracked``), copied to
    the host from whatever backend the model is on. A parameter shared by
    two layers is stored under both names, as PyTorch's ``state_dict`` lists it.
    """
    _require_module(model, "save_weights")
    st_numpy = _safetensors_numpy()
    tensors = {name: _host_array(name, array) for name, array in model.state_dict().items()}
    payload = st_numpy.save(tensors, metadata=dict(METADATA))
    return atomic_write(path, lambda handle: handle.write(payload))


def load_weights(model, path, strict: bool = True):
    """Load a safetensors file's arrays into ``model`` (by ``state_dict`` name); returns ``load_state_dict``'s keys.

    Arrays are moved to each parameter's device and cast to its dtype. With
    ``strict`` (the default) the names must match exactly and every mismatch
    is listed in one ``CheckpointError``; ``strict=False`` skips names the
    model lacks and leaves parameters the file lacks as they are, returning
    both lists (``missing_keys``, ``unexpected_keys``), as PyTorch does. A
    wrong shape is always an error, and so is a file that is not a complete
    safetensors file.
    """
    _require_module(model, "load_weights")
    st_numpy = _safetensors_numpy()
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no weights file at {path}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        loaded = st_numpy.load_file(path)
    except Exception as error:  # noqa: BLE001 - the library's errors (SafetensorError, OSError, ...) all mean one thing
        detail = str(error) or type(error).__name__
        hint = ("; its bfloat16 arrays need the ml_dtypes package: pip install ml_dtypes"
                if "bf16" in detail.lower() or "bfloat16" in detail.lower() else "")
        raise CheckpointError(f"cannot read {path} as safetensors weights ({detail}): the file is truncated, "
                              f"corrupt or not a safetensors file{hint}") from None
    # Copies, not views of the memory-mapped file; bfloat16 (ml_dtypes) goes in as float32, which
    # load_state_dict casts back exactly on the device.
    state = {name: numpy.array(array, dtype=numpy.float32 if array.dtype.name == "bfloat16" else array.dtype)
             for name, array in loaded.items()}
    try:
        return model.load_state_dict(state, strict=strict)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from None
