"""array-api-strict: the standard's reference namespace, for testing portability.

Its devices (``CPU_DEVICE``, ``device1``, ``device2``, ...) are all host memory
with different labels, so tests catch code that mixes devices. ``no_float64``
and ``no_x64`` mimic accelerators that lack 64-bit types.
"""

from __future__ import annotations

import sys

import numpy

from ._base import lookup_device, version_of

name = "array_api_strict"
install_hint = "pip install array-api-strict"
mutable_arrays = True
writable_views = False  # kept on the standard's generic path, which the parity suite compares
native_kernels = False
compiles_steps = False
imports_dlpack = True  # to_device may build its arrays with from_dlpack (see _base.Backend)


def _xp():
    import array_api_strict

    return array_api_strict


def is_available() -> bool:
    try:
        _xp()
    except Exception:  # noqa: BLE001 - a broken install counts as unavailable
        return False
    return True


def version() -> str:
    return version_of(_xp())


def namespace():
    return _xp()


def device_label(device) -> str:
    # Device exposes its name only through repr: array_api_strict.Device('device1').
    return repr(device).split("'")[1]


def _devices() -> dict:
    return {device_label(d): d for d in _xp().__array_namespace_info__().devices()}


def device_names() -> list[str]:
    return list(_devices())


def parse_device(text: str | None):
    if text is None:
        return _xp().__array_namespace_info__().default_device()
    return lookup_device(name, text, _devices())


def owns(x) -> bool:
    import array_api_compat

    if "array_api_strict" not in sys.modules:  # no strict arrays can exist yet
        return False
    try:
        xp = array_api_compat.array_namespace(x)
    except TypeError:  # not an array of any library array_api_compat knows
        return False
    return array_api_compat.is_array_api_strict_namespace(xp)


def device_of(x):
    return x.device


def from_host(host: numpy.ndarray, device):
    return _xp().asarray(host, device=device)


def to_host(x) -> numpy.ndarray:
    # The library refuses to hand a non-CPU array to NumPy, as a real GPU
    # library would, so move it to CPU_DEVICE first (the supported way).
    cpu = _xp().Device("CPU_DEVICE")
    return numpy.array(x.to_device(cpu), copy=True)


def exports_dlpack(x) -> bool:
    return False  # a host array: the host path is as cheap (see _base.Backend)


def synchronize(device) -> None:
    """Eager and single-threaded: nothing is ever pending."""


def wait(x) -> None:
    """Nothing to wait for (see ``synchronize``)."""


def supports_float64(device) -> bool:
    # Ask the library: its no_float64 and no_x64 devices lack float64.
    return "float64" in _xp().__array_namespace_info__().dtypes(device=device)
