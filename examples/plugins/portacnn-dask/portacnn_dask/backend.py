"""The ``dask`` backend: the members of portacnn's ``Backend`` protocol for dask.array.

Dask has one device here, ``cpu`` (``dask:cpu``): its arrays are graphs of
NumPy chunks, computed on the host's threads. Arrays arrive from the host
chunked along axis 0 (the batch axis), ``BATCH_CHUNK`` rows a chunk, so a
batch's images are processed chunk by chunk; every other axis is one chunk.
The math needs nothing from this module: it takes the namespace of its
inputs, ``array_api_compat.dask.array``.

Like the built-in backends, this module imports dask only inside functions,
so portacnn's discovery of installed plugins stays cheap.
"""

from __future__ import annotations

import os

import numpy
from portacnn.backends import lookup_device, version_of

name = "dask"
install_hint = "pip install portacnn-dask dask[array]"
# Dask arrays are immutable graphs: an "update" builds a new graph.
mutable_arrays = False
writable_views = False
compiles_steps = False
# Arrays from other libraries come through from_host, so they get our chunks.
imports_dlpack = False

#: Rows per chunk along axis 0 for arrays moved from the host; the
#: environment variable PORTACNN_DASK_CHUNK overrides it (``PORTACNN_DASK_CHUNK=2
#: portacnn parity --backends dask`` runs every case on several chunks).
BATCH_CHUNK = 64
CHUNK_VAR = "PORTACNN_DASK_CHUNK"

_DEVICES = {"cpu": "cpu"}  # array_api_compat.device(dask_array) is the string "cpu"


def _dask_array():
    import dask.array

    return dask.array


def is_available() -> bool:
    try:
        _dask_array()
    except Exception:  # noqa: BLE001 - a broken install counts as unavailable
        return False
    return True


def version() -> str:
    import dask

    return version_of(dask)


def namespace():
    import array_api_compat.dask.array

    return array_api_compat.dask.array


def device_names() -> list[str]:
    return list(_DEVICES)


def parse_device(text: str | None):
    return "cpu" if text is None else lookup_device(name, text, _DEVICES)


def device_label(device) -> str:
    return "cpu"


def owns(x) -> bool:
    import array_api_compat

    return array_api_compat.is_dask_array(x)  # checks the type's module: never imports dask


def device_of(x):
    return "cpu"


def from_host(host: numpy.ndarray, device):
    # Chunk along the batch axis only: per-sample work (convolution, pooling)
    # stays within a chunk, and reductions over the batch combine few chunks.
    # from_array keeps a reference to ``host``: portacnn hands over a copy it
    # owns, so later writes by the caller cannot reach this lazy graph.
    if host.ndim == 0:
        return _dask_array().from_array(host, chunks=())
    rows = _batch_chunk()
    chunks = (min(rows, max(host.shape[0], 1)),) + host.shape[1:]
    return _dask_array().from_array(host, chunks=chunks)


def _batch_chunk() -> int:
    text = os.environ.get(CHUNK_VAR, "").strip()
    if not text:
        return BATCH_CHUNK
    if not text.isdigit() or int(text) < 1:
        from portacnn.errors import BackendError

        raise BackendError(f"{CHUNK_VAR} must be a positive number of rows, got {text!r}; unset it for "
                           f"{BATCH_CHUNK}")
    return int(text)


def to_host(x) -> numpy.ndarray:
    # compute() may hand back the very buffer from_host received (a graph of
    # one chunk); copy so the caller can mutate the result safely.
    return numpy.array(x.compute(), copy=True)


def exports_dlpack(x) -> bool:
    return False  # a lazy graph, not a buffer: to_host computes it instead


def synchronize(device) -> None:
    """Nothing runs in the background: dask computes when a result is asked for (``wait``, ``to_host``)."""


def wait(x) -> None:
    """Compute ``x`` (and throw the result away), so a timer around this call measures the work.

    Dask arrays are immutable, so ``x`` itself stays a lazy graph: using it
    again computes it again. ``to_host`` is the one call that keeps a result.
    """
    x.compute()


def supports_float64(device) -> bool:
    return True
