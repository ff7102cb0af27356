"""NumPy: the host itself, always available, one device called ``cpu``."""

from __future__ import annotations

import numpy

from ._base import lookup_device, version_of

name = "numpy"
install_hint = "pip install numpy"
mutable_arrays = True
writable_views = True
native_kernels = False
compiles_steps = False
imports_dlpack = True  # to_device may build its arrays with from_dlpack (see _base.Backend)


def is_available() -> bool:
    return True


def version() -> str:
    return version_of(numpy)


def namespace():
    import array_api_compat.numpy

    return array_api_compat.numpy


def device_names() -> list[str]:
    return ["cpu"]


def parse_device(text: str | None):
    # array_api_compat.device(numpy_array) is the string "cpu"; use the same.
    return "cpu" if text is None else lookup_device(name, text, {"cpu": "cpu"})


def device_label(device) -> str:
    return "cpu"


def owns(x) -> bool:
    import array_api_compat

    return array_api_compat.is_numpy_array(x)


def device_of(x):
    return "cpu"


def from_host(host: numpy.ndarray, device):
    # The host array already is a NumPy array; callers hand over a private copy.
    return host


def to_host(x) -> numpy.ndarray:
    # Always a copy, like every other backend, so callers may mutate the result.
    return numpy.array(x, copy=True)


def exports_dlpack(x) -> bool:
    return False  # a host array: the host path is as cheap (see _base.Backend)


def synchronize(device) -> None:
    """NumPy runs eagerly on the calling thread: nothing is ever pending."""


def wait(x) -> None:
    """Nothing to wait for (see ``synchronize``)."""


def supports_float64(device) -> bool:
    return True


def updates_in_place(x) -> bool:
    """Optimizers may write new parameter values into ``x`` (``-=``), as PyTorch's do."""
    return bool(x.flags.writeable)  # a read-only array (a test case, a memory map) is rebound
