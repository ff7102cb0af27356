"""CuPy: NVIDIA GPUs, named by their CUDA index (``cupy:0``, ``cupy:1``)."""

from __future__ import annotations

import numpy

from ._base import lookup_device, version_of

name = "cupy"
install_hint = 'pip install "portacnn[cuda12]" (or "portacnn[cuda13]"), on a machine with an NVIDIA GPU'
mutable_arrays = True
writable_views = True
native_kernels = False
compiles_steps = False
imports_dlpack = True  # to_device may build its arrays with from_dlpack (see _base.Backend)


def _cupy():
    import cupy

    return cupy


def is_available() -> bool:
    # Importable is not enough: CuPy installs fine on machines without a GPU.
    try:
        return _cupy().cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - missing driver, no GPU, broken install
        return False


def version() -> str:
    return version_of(_cupy())


def namespace():
    import array_api_compat.cupy

    return array_api_compat.cupy


def _devices() -> dict:
    cupy = _cupy()
    return {str(i): cupy.cuda.Device(i) for i in range(cupy.cuda.runtime.getDeviceCount())}


def device_names() -> list[str]:
    return list(_devices())


def parse_device(text: str | None):
    cupy = _cupy()
    if text is None:
        return cupy.cuda.Device(cupy.cuda.Device().id)  # the current device
    table = _devices()
    # Also accept the torch-style spelling cupy:cuda:0.
    aliases = {f"cuda:{label}": dev for label, dev in table.items()}
    return lookup_device(name, text, table, aliases)


def device_label(device) -> str:
    return str(device.id)


def owns(x) -> bool:
    import array_api_compat

    return array_api_compat.is_cupy_array(x)


def device_of(x):
    return x.device


def from_host(host: numpy.ndarray, device):
    cupy = _cupy()
    with cupy.cuda.Device(device.id):
        return cupy.asarray(host)


def to_host(x) -> numpy.ndarray:
    return x.get()  # a fresh host array


def exports_dlpack(x) -> bool:
    # Like NumPy, CuPy views may have negative strides, which some importers
    # (torch) cannot take; those go through the host path.
    return all(stride >= 0 for stride in x.strides)


def synchronize(device) -> None:
    _cupy().cuda.Device(device.id).synchronize()


def wait(x) -> None:
    synchronize(x.device)


def supports_float64(device) -> bool:
    return True


def updates_in_place(x) -> bool:
    """Optimizers may write new parameter values into ``x`` (``-=``), as PyTorch's do."""
    return True
