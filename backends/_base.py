"""The small surface every backend module provides, and helpers they share.

A backend is a plain module (``numpy_backend``, ``torch_backend``, ...) whose
module-level names satisfy :class:`Backend`. Backends hold no math: only
detection, device names, host <-> device transfer, synchronisation and a few
capability flags. Each imports its array library lazily, inside functions, so
``import portacnn.backends`` stays cheap and never pulls in torch or jax.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol

import numpy

from portacnn.errors import BackendError


class Backend(Protocol):
    """What ``portacnn.backends`` needs from one array library."""

    name: str  # the spec prefix, e.g. "torch"
    install_hint: str  # shown when the backend is not usable here
    mutable_arrays: bool  # False where arrays cannot be updated in place (jax)
    # True where an in-place operator on a basic-slice view (``v = x[a:b]; v += y``)
    # writes through to ``x``. The standard leaves that implementation-defined;
    # the math uses it, where True, for a scatter-add with no extra copy.
    writable_views: bool
    # True where the library can compile a whole training step (forward,
    # backward, update) into one function: then ``compile_step(function)``
    # returns that compiled function (jax.jit). Everywhere else the step runs eagerly.
    compiles_steps: bool

    def is_available(self) -> bool: ...
    def version(self) -> str: ...
    def namespace(self) -> Any: ...
    def device_names(self) -> list[str]: ...
    def parse_device(self, text: str | None) -> Any: ...
    def device_label(self, device: Any) -> str: ...
    def owns(self, x: Any) -> bool: ...
    def device_of(self, x: Any) -> Any: ...
    # from_host may reuse ``host``'s memory: callers hand it a copy they own.
    def from_host(self, host: numpy.ndarray, device: Any) -> Any: ...
    # to_host always returns a fresh NumPy array the caller may mutate.
    def to_host(self, x: Any) -> numpy.ndarray: ...
    # Whether to_device may hand x to another library through DLPack. Host
    # arrays say no: the host path costs the same copy, and torch's importer
    # aborts the process (uncatchably) on NumPy's negative strides.
    def exports_dlpack(self, x: Any) -> bool: ...
    def synchronize(self, device: Any) -> None: ...
    def wait(self, x: Any) -> None: ...
    def supports_float64(self, device: Any) -> bool: ...


def lookup_device(
    backend: str, text: str, table: Mapping[str, Any], aliases: Mapping[str, Any] | None = None
) -> Any:
    """Return the device ``text`` names in ``table`` (or ``aliases``, unlisted
    extra spellings), or raise ``BackendError`` listing the valid names."""
    try:
        return {**(aliases or {}), **table}[text.strip()]
    except KeyError:
        valid = ", ".join(f"{backend}:{label}" for label in table) or "(none)"
        raise BackendError(
            f"unknown device {text!r} for backend {backend!r}; valid: {valid}"
        ) from None


def version_of(module: Any) -> str:
    """``module.__version__``, or ``"unknown"`` for libraries that lack one."""
    return str(getattr(module, "__version__", "unknown"))
