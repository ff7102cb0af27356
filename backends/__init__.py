"""Choose where arrays live, and move arrays between array libraries.

A *spec* names a backend and optionally a device: ``"numpy"``, ``"cupy:1"``,
``"torch:cuda:0"``, ``"jax:cpu"``, ``"array_api_strict:device1"``. The
backend's own modules (``numpy_backend`` ...) import their library only when
first asked, so importing this package never loads torch, jax or cupy.

Other backends plug in: ``register(name, backend)`` in-process, or an entry
point in the group ``portacnn.backends`` of an installed distribution
(``pip install portacnn-<x>`` makes ``"<x>"`` a spec). Entry points are
loaded once, the first time a name that is not built in is looked up or the
backends are listed; docs/backends.md shows how to write one.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import re
import threading
from dataclasses import dataclass
from typing import Any

import array_api_compat
import numpy

from portacnn._dispatch import TapeValue
from portacnn.errors import BackendError, DTypeError

from ._base import Backend, PluginBackend, lookup_device, version_of

__all__ = [
    "BUILTIN_BACKENDS",
    "ENTRY_POINT_GROUP",
    "ENV_VAR",
    "KNOWN_BACKENDS",
    "Backend",
    "BackendInfo",
    "PluginFailure",
    "Placement",
    "available_backends",
    "backend_names",
    "default_spec",
    "dtype_name",
    "get_backend",
    "is_host_array",
    "lookup_device",
    "parse_spec",
    "placement_of",
    "plugin_failures",
    "register",
    "synchronize",
    "to_device",
    "to_numpy",
    "unregister",
    "version_of",
]

ENV_VAR = "PORTACNN_BACKEND"
ENTRY_POINT_GROUP = "portacnn.backends"

# Spec prefix -> module of this package. placement_of asks them in this order.
_MODULES = {
    "numpy": "numpy_backend",
    "cupy": "cupy_backend",
    "torch": "torch_backend",
    "jax": "jax_backend",
    "array_api_strict": "array_api_strict_backend",
}
BUILTIN_BACKENDS = tuple(_MODULES)


@dataclass(frozen=True)
class PluginFailure:
    """A plugin backend that could not be used: which, from where, and why."""

    name: str
    entry_point: str  # e.g. "mylib = portacnn_mylib:backend", or "" for register()
    distribution: str  # the installed distribution that declares it, or ""
    error: str  # "importing it raised ImportError: ..."

    def message(self) -> str:
        where = f"entry point '{self.entry_point}' in group {ENTRY_POINT_GROUP!r}" if self.entry_point else "plugin"
        source = f" of {self.distribution}" if self.distribution else ""
        fix = f"fix or reinstall {self.distribution}, or uninstall it" if self.distribution else "fix the plugin"
        what = "failed to load" if self.entry_point else "failed"
        return f"backend {self.name!r} ({where}{source}) {what}: {self.error}; {fix}"


# Plugins by name, in registration order (register() and entry points).
# A plugin registered under a built-in name (replace=True) is found here first.
_PLUGINS: dict[str, PluginBackend] = {}
# Entry points that failed to load or to pass the protocol check, by name.
_FAILURES: dict[str, PluginFailure] = {}
_discovered = False
_discovering = False
# Discovery imports third-party code once; a lock keeps two threads from
# doing it twice (RLock: a plugin's import may itself look a backend up).
_lock = threading.RLock()
_NAME = re.compile(r"[a-z][a-z0-9_]*\Z")


def _canonical_name(text: str) -> str:
    # Specs are case-insensitive and accept "-" for "_" (array-api-strict).
    return text.strip().lower().replace("-", "_")


def _forget_cached_flags() -> None:
    # portacnn._arrays caches writable_views, native_kernels and compiles_steps per array type;
    # a (re)registration may change which backend owns a type.
    import sys

    arrays = sys.modules.get("portacnn._arrays")
    if arrays is not None:
        arrays._WRITABLE_VIEWS_BY_TYPE.clear()
        arrays._NATIVE_KERNELS_BY_TYPE.clear()
        arrays._FUSES_OPS_BY_TYPE.clear()


def _check_name(name) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise BackendError(
            f"a backend name must be lower-case letters, digits and underscores, starting with a letter "
            f"(it is the spec prefix before ':'), got {name!r}")


def register(name: str, backend: Any, *, replace: bool = False) -> None:
    """Make ``backend`` usable as the spec prefix ``name`` (``"name"``, ``"name:<device>"``).

    ``backend`` is any object or module with the members of the ``Backend``
    protocol (docs/backends.md); optional ones left out get their defaults.
    A ``BackendError`` names every missing member, a malformed name, or a
    name already taken by a built-in or another plugin (pass ``replace=True``
    to take it over; ``unregister`` gives it back).
    """
    _check_name(name)
    wrapped = PluginBackend(name, backend)  # checks the protocol
    _discover()  # so a clash with an installed plugin is caught now, not at its first use
    _add(wrapped, replace=replace)


def _add(wrapped: PluginBackend, *, replace: bool) -> None:
    name = wrapped.name
    with _lock:
        if not replace and (name in _MODULES or name in _PLUGINS):
            taken = f"the plugin {_PLUGINS[name]!r}" if name in _PLUGINS else "the built-in backend"
            raise BackendError(f"backend name {name!r} is already taken by {taken}; pick another name, "
                               "or pass replace=True to replace it")
        _PLUGINS[name] = wrapped
        _FAILURES.pop(name, None)
    _forget_cached_flags()


def unregister(name: str) -> None:
    """Remove the plugin ``name`` (a built-in it replaced comes back); ``BackendError`` if there is none."""
    with _lock:
        if _PLUGINS.pop(name, None) is None:
            raise BackendError(f"no plugin backend named {name!r} is registered; registered: "
                               f"{', '.join(_PLUGINS) or '(none)'}")
    _forget_cached_flags()


def _entry_points():
    return importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)


def _discover() -> None:
    """Load every ``portacnn.backends`` entry point, once; a failure is recorded, never raised."""
    global _discovered, _discovering
    if _discovered:
        return
    with _lock:
        # _discovering: a plugin that looks a backend up while it is being
        # imported (same thread: the lock is reentrant) must not recurse.
        if _discovered or _discovering:
            return
        _discovering = True
        try:
            entry_points = list(_entry_points())
        except Exception as error:  # noqa: BLE001 - broken metadata must not break the built-ins
            entry_points = []
            _FAILURES["?"] = PluginFailure("?", "", "", f"listing the entry points raised {type(error).__name__}: "
                                                        f"{error}")
        try:
            for entry in entry_points:
                _load_entry_point(entry)
        finally:
            # Set last, so another thread never sees discovery done while plugins are still loading.
            _discovering = False
            _discovered = True


def _load_entry_point(entry) -> None:
    dist = getattr(entry, "dist", None)
    distribution = getattr(dist, "name", "") or ""
    name = _canonical_name(entry.name)
    failure = None
    try:
        _check_name(name)
        if name in _MODULES or name in _PLUGINS:
            # Two distributions offering one name, or one shadowing a built-in:
            # keep what is there and say so, rather than pick one silently.
            raise BackendError(f"the name {name!r} is already taken by "
                               f"{'the built-in backend' if name in _MODULES else _PLUGINS[name].source}")
        try:
            backend = entry.load()
        except Exception as error:  # noqa: BLE001 - any import failure is reported, not fatal
            raise BackendError(f"importing it raised {type(error).__name__}: {error}") from error
        source = f"plugin from {distribution}" if distribution else f"plugin {entry.value}"
        _add(PluginBackend(name, backend, source=source, distribution=distribution or None,
                           distribution_version=getattr(dist, "version", None)), replace=False)
    except BackendError as error:
        failure = PluginFailure(name, f"{entry.name} = {entry.value}", distribution, str(error))
    if failure is not None:
        _FAILURES.setdefault(name, failure)


def plugin_failures() -> list[PluginFailure]:
    """The plugins that could not be loaded (after looking for them once)."""
    _discover()
    return list(_FAILURES.values())


def backend_names() -> list[str]:
    """Every spec prefix known here: the built-ins, then the registered plugins (usable or not)."""
    _discover()
    return list(_MODULES) + [name for name in _PLUGINS if name not in _MODULES]


def __getattr__(attribute: str):
    # KNOWN_BACKENDS reads like a constant but includes the plugins, so
    # looking it up discovers them; BUILTIN_BACKENDS is the fixed part.
    if attribute == "KNOWN_BACKENDS":
        return tuple(backend_names())
    raise AttributeError(f"module {__name__!r} has no attribute {attribute!r}")


def get_backend(name: str) -> Backend:
    """The backend for a spec prefix, e.g. ``get_backend("torch")`` (a module, or a ``PluginBackend``)."""
    plugin = _PLUGINS.get(name)
    if plugin is not None:
        return plugin
    if name in _MODULES:
        return importlib.import_module(f".{_MODULES[name]}", __name__)
    _discover()
    if name in _PLUGINS:
        return _PLUGINS[name]
    if name in _FAILURES:
        raise BackendError(_FAILURES[name].message())
    raise BackendError(
        f"unknown backend {name!r}; known backends: {', '.join(backend_names())}. Other libraries plug in "
        f"as packages with a {ENTRY_POINT_GROUP!r} entry point (e.g. pip install portacnn-{name}) or with "
        "portacnn.backends.register"
    )


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
    def native_kernels(self) -> bool:
        return get_backend(self.backend).native_kernels

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
    """One usable backend: its name, library version, device specs and where it comes from."""

    name: str
    version: str
    devices: tuple[str, ...]
    source: str = "built-in"  # or "plugin from portacnn-<x>", "registered in-process"


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
    if not _usable(backend):
        raise BackendError(
            f"backend {name!r} is not usable on this machine; install it with: "
            f"{backend.install_hint}"
        )
    return Placement(name, backend.parse_device(device.strip() or None))


def _usable(backend) -> bool:
    if not isinstance(backend, PluginBackend):
        return backend.is_available()
    try:
        return backend.is_available()
    except Exception as error:  # noqa: BLE001 - third-party code: say whose it is
        raise BackendError(f"backend {backend.name!r} ({backend.source}) raised {type(error).__name__}: {error} "
                           f"when asked whether it is usable; fix or reinstall it ({backend.install_hint})") from error


def available_backends() -> list[BackendInfo]:
    """Every backend usable here (NumPy always), with its device specs.

    The built-ins come first, then the plugins in the order they were
    registered. This imports each installed library (and so turns on JAX's
    x64 mode). A plugin that raises while answering is left out and listed
    by ``plugin_failures()``, so one broken plugin never hides the others.
    """
    found = []
    for name in backend_names():
        backend = get_backend(name)
        if not isinstance(backend, PluginBackend):
            if backend.is_available():
                specs = tuple(_spec(name, label) for label in backend.device_names())
                found.append(BackendInfo(name, backend.version(), specs))
            continue
        try:
            if backend.is_available():
                specs = tuple(_spec(name, label) for label in backend.device_names())
                found.append(BackendInfo(name, backend.version(), specs, backend.source))
        except Exception as error:  # noqa: BLE001 - third-party code: report it, keep listing
            _FAILURES.setdefault(name, PluginFailure(
                name, "", backend.distribution or "",
                f"listing its devices raised {type(error).__name__}: {error}"))
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
    for name in _MODULES:
        backend = get_backend(name)
        if backend.owns(x):
            return Placement(name, backend.device_of(x))
    # Only arrays no built-in owns make portacnn look for plugins.
    _discover()
    for name, backend in list(_PLUGINS.items()):
        if name not in _MODULES and backend.owns(x):
            return Placement(name, backend.device_of(x))
    raise BackendError(
        f"arrays of type {type(x).__module__}.{type(x).__name__} are not supported; "
        f"use one of: {', '.join(backend_names())}, or plug in a backend for them (docs/backends.md)"
    )


_DTYPE_NAMES = ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                "float16", "bfloat16", "float32", "float64", "complex64", "complex128")


def dtype_name(x) -> str:
    """The dtype of an array of any backend as a NumPy dtype name, e.g. ``"float32"``."""
    # "torch.float32", "array_api_strict.float32" and numpy's "float32" agree
    # after the last dot.
    name = str(x.dtype).rsplit(".", 1)[-1]
    if name in _DTYPE_NAMES:
        return name
    # A plugged-in library may print its dtypes otherwise ("<dtype: float32>"):
    # ask its namespace which of the standard's dtypes this one is.
    try:
        xp = array_api_compat.array_namespace(x)
        for candidate in _DTYPE_NAMES:
            dtype = getattr(xp, candidate, None)
            if dtype is not None and x.dtype == dtype:
                return candidate
    except Exception:  # noqa: BLE001 - a name is only a label: fall back to the printed one
        pass
    return name


def updates_in_place(x) -> bool:
    """Whether an optimizer may write a parameter's new values into the array ``x`` itself.

    A backend says so with an optional ``updates_in_place(x) -> bool`` member
    (NumPy: where ``x`` is writable; CuPy and torch: always); without one, as
    for JAX, array-api-strict and plugins that do not declare it, optimizers
    rebind ``param.data`` to a new array instead.
    """
    backend = get_backend(placement_of(x).backend)
    declared = getattr(getattr(backend, "wrapped", backend), "updates_in_place", None)
    return declared is not None and bool(declared(x))


def is_host_array(x) -> bool:
    """Whether ``x`` is a host (NumPy) array, such as a dropout mask drawn on the host."""
    return isinstance(x, numpy.ndarray)


def _via_dlpack(x, target: Placement):
    """Move ``x`` without a trip through host memory, or ``None`` if DLPack can't.

    Worth it between libraries on one GPU (torch cuda:0 -> cupy:0), where it
    saves a round trip through host memory; host arrays never take it. Every
    library exports and imports DLPack a little differently, so any failure,
    or a result in the wrong place or dtype, just means "use the host path".
    Both sides must agree to it: the source's ``exports_dlpack(x)`` and the
    target's ``imports_dlpack``.
    """
    if not get_backend(target.backend).imports_dlpack:
        return None
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
