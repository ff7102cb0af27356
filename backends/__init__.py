"""Choose where arrays live, and move arrays between array libraries.

A *spec* names a backend and optionally a device: ``"numpy"``, ``"cupy:1"``,
``"torch:cuda:0"``, ``"jax:cpu"``, ``"array_api_strict:device1"``. The
backend's own modules (``numpy_backend`` ...) import their library only when
first asked, so importing this package never loads torch, jax or cupy.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy

from portacnn._dispatch import TapeValue
from portacnn.errors import BackendError, DTypeError

from ._base import Backend

__all__ = [
    "ENV_VAR",
    "KNOWN_BACKENDS",
    "Backend",
    "BackendInfo",
    "Placement",
    "available_backends",
    "default_spec",
    "dtype_name",
    "get_backend",
    "parse_spec",
    "placement_of",
    "synchronize",
    "to_device",
    "to_numpy",
]

ENV_VAR = "PORTACNN_BACKEND"

# Spec prefix -> module of this package. placement_of asks them in this order.
_MODULES = {
    "numpy": "numpy_backend",
    "cupy": "cupy_backend",
    "torch": "torch_backend",
    "jax": "jax_backend",
    "array_api_strict": "array_api_strict_backend",
}
KNOWN_BACKENDS = tuple(_MODULES)


def get_backend(name: str) -> Backend:
    """The backend module for a spec prefix, e.g. ``get_backend("torch")``."""
    if name not in _MODULES:
        raise BackendError(
            f"unknown backend {name!r}; known backends: {', '.join(KNOWN_BACKENDS)}"
        )
    return importlib.import_module(f".{_MODULES[name]}", __name__)


def _spec(backend: str, label: str) -> str:
    # NumPy has a single device, so its spec is just "numpy".
    return backend if backend == "numpy" else f"{backend}:{label}"


@dataclass(frozen=True, eq=False)
class Placement:
    """A backend name plus that library's native device object."""

    backend: str
    device: Any

    @property
    def spec(self) -> str:
        """The canonical spec string, e.g. ``"torch:cuda:0"``."""
        return _spec(self.backend, get_backend(self.backend).device_label(self.device))

    @property
    def namespace(self):
        """The array-API namespace of this backend."""
        return get_backend(self.backend).namespace()

    @property
    def supports_float64(self) -> bool:
        return get_backend(self.backend).supports_float64(self.device)

    @property
    def mutable_arrays(self) -> bool:
        return get_backend(self.backend).mutable_arrays

    @property
    def writable_views(self) -> bool:
        return get_backend(self.backend).writable_views

    @property
    def compiles_steps(self) -> bool:
        return get_backend(self.backend).compiles_steps

    # Compare by spec: device objects such as torch.device("cuda") and
    # torch.device("cuda", 0) differ as objects but are the same place.
    def __eq__(self, other) -> bool:
        return isinstance(other, Placement) and self.spec == other.spec

    def __hash__(self) -> int:
        return hash(self.spec)

    def __str__(self) -> str:
        return self.spec


@dataclass(frozen=True)
class BackendInfo:
    """One usable backend: its name, library version and device specs."""

    name: str
    version: str
    devices: tuple[str, ...]


def default_spec() -> str:
    """``$PORTACNN_BACKEND`` when set and non-empty, else ``"numpy"``."""
    return os.environ.get(ENV_VAR, "").strip() or "numpy"


def parse_spec(spec: str | Placement | None = None) -> Placement:
    """Turn a spec string (``None``: ``default_spec()``) into a ``Placement``.

    Raises ``BackendError`` for an unknown backend (listing the known ones), a
    backend not usable here (saying what to install), or an unknown device
    (listing the valid ones).
    """
    if isinstance(spec, Placement):
        return spec
    if spec is None:
        spec = default_spec()
    if not isinstance(spec, str):
        raise BackendError(
            f"a backend spec must be a string such as 'torch:cuda:0', got {type(spec).__name__}"
        )
    prefix, _, device = spec.strip().partition(":")
    name = prefix.strip().lower().replace("-", "_")  # also accept array-api-strict
    backend = get_backend(name)
    if not backend.is_available():
        raise BackendError(
            f"backend {name!r} is not usable on this machine; install it with: "
            f"{backend.install_hint}"
        )
    return Placement(name, backend.parse_device(device.strip() or None))


def available_backends() -> list[BackendInfo]:
    """Every backend usable here (NumPy always), with its device specs.

    This imports each installed library (and so turns on JAX's x64 mode).
    """
    found = []
    for name in KNOWN_BACKENDS:
        backend = get_backend(name)
        if backend.is_available():
            specs = tuple(_spec(name, label) for label in backend.device_names())
            found.append(BackendInfo(name, backend.version(), specs))
    return found


def placement_of(x) -> Placement:
    """Which backend and device hold the array ``x``."""
    if not array_api_compat.is_array_api_obj(x):
        if isinstance(x, TapeValue):
            raise DTypeError(f"expected an array, got a {type(x).__name__}; pass the array it wraps, x.data")
        raise DTypeError(
            f"expected an array, got {type(x).__name__}; convert it first, "
            "e.g. portacnn.to_device(numpy.asarray(value), spec)"
        )
    for name in KNOWN_BACKENDS:
        backend = get_backend(name)
        if backend.owns(x):
            return Placement(name, backend.device_of(x))
    raise BackendError(
        f"arrays of type {type(x).__module__}.{type(x).__name__} are not supported; "
        f"use one of: {', '.join(KNOWN_BACKENDS)}"
    )


def dtype_name(x) -> str:
    """The dtype of an array of any backend as a NumPy dtype name, e.g. ``"float32"``."""
    # "torch.float32", "array_api_strict.float32" and numpy's "float32" agree
    # after the last dot.
    return str(x.dtype).rsplit(".", 1)[-1]


def _via_dlpack(x, target: Placement):
    """Move ``x`` without a trip through host memory, or ``None`` if DLPack can't.

    Worth it between libraries on one GPU (torch cuda:0 -> cupy:0), where it
    saves a round trip through host memory; host arrays never take it. Every
    library exports and imports DLPack a little differently, so any failure,
    or a result in the wrong place or dtype, just means "use the host path".
    """
    if not get_backend(placement_of(x).backend).exports_dlpack(x):
        return None
    xp = target.namespace
    try:
        moved = xp.from_dlpack(x)
        if placement_of(moved) != target:
            moved = array_api_compat.to_device(moved, target.device)
        if placement_of(moved) != target or dtype_name(moved) != dtype_name(x):
            return None
        # from_dlpack shares x's memory (jax does even when asked to copy), and
        # array-api-strict "devices" share host memory; copy so the result
        # never sees in-place updates to x, or the reverse.
        return xp.asarray(moved, copy=True)
    except Exception:  # noqa: BLE001 - any DLPack refusal falls back to the host
        return None


def to_device(x, spec: str | Placement | None):
    """``x`` (an array of any supported library) placed as ``spec`` says.

    Returns ``x`` itself when it is already there; otherwise a new array with
    the same dtype and values that shares no memory with ``x``.
    """
    target = parse_spec(spec)
    source = placement_of(x)
    if source == target:
        return x
    if dtype_name(x) in ("float64", "complex128") and not target.supports_float64:
        raise DTypeError(
            f"{target.spec} has no {dtype_name(x)}; cast to float32 before moving it there"
        )
    moved = _via_dlpack(x, target)
    if moved is None:
        host = get_backend(source.backend).to_host(x)  # a fresh copy we own
        moved = get_backend(target.backend).from_host(host, target.device)
    return moved


def to_numpy(x) -> numpy.ndarray:
    """A NumPy copy of ``x`` (an array, or a ``portacnn.Tensor``'s array), safe to mutate (even when ``x`` is NumPy)."""
    if isinstance(x, TapeValue):
        x = x.data
    return get_backend(placement_of(x).backend).to_host(x)


def synchronize(x_or_spec=None):
    """Wait until queued device work is done, for honest timing; returns its argument.

    Given arrays (one, or a list/tuple), waits for them; given a spec or
    ``Placement`` (``None``: the default), waits for that device. Prefer
    arrays: JAX can only wait for arrays, not for a whole device.
    """
    if x_or_spec is None or isinstance(x_or_spec, (str, Placement)):
        place = parse_spec(x_or_spec)
        get_backend(place.backend).synchronize(place.device)
    elif isinstance(x_or_spec, (list, tuple)):
        for item in x_or_spec:
            synchronize(item)
    else:
        get_backend(placement_of(x_or_spec).backend).wait(x_or_spec)
    return x_or_spec
