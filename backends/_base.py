"""The ``Backend`` protocol every backend provides, and helpers backends share.

A backend is any object whose attributes satisfy :class:`Backend`: the
built-in ones are plain modules (``numpy_backend``, ``torch_backend``, ...),
and a third-party one registered with ``portacnn.backends.register`` (or
through a ``portacnn.backends`` entry point) may be a module or an instance.
Backends hold no math: only detection, device names, host <-> device
transfer, synchronisation and a few capability flags. The math never calls
them: it takes its namespace from its input arrays, through
``array_api_compat.array_namespace``. So the arrays of a backend must be
recognised there (a library array-api-compat knows, or one whose arrays
have ``__array_namespace__``).

Each backend imports its array library lazily, inside functions, so
``import portacnn.backends`` (and the discovery of installed plugins) stays
cheap and never pulls in torch, jax or a plugin's library.

Every member is listed below, required ones first. A registered backend may
leave out the optional ones: :class:`PluginBackend` fills in the defaults
given in :data:`OPTIONAL_DEFAULTS`. docs/backends.md has a worked example.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Protocol

import numpy

from portacnn._signatures import accepts_keyword
from portacnn.errors import BackendError


class Backend(Protocol):
    """What ``portacnn.backends`` needs from one array library.

    **Required** (registration fails, naming each one missing):

    ``namespace() -> module``
        The array-API namespace the math will see for this backend's arrays;
        it must be what ``array_api_compat.array_namespace(x)`` returns for
        them (``array_api_compat.torch``, ``jax.numpy``, ...).
    ``device_names() -> list[str]``
        The labels of the devices usable here, default first (``["cpu"]``).
        Specs are ``<name>:<label>``.
    ``parse_device(text: str | None) -> device``
        The library's device object for a label (``None``: the default
        device). Raise ``BackendError`` listing the valid labels for an unknown
        one (``lookup_device`` below does that).
    ``device_label(device) -> str``
        The inverse of ``parse_device``: the label of a device object.
    ``owns(x) -> bool``
        Whether ``x`` is an array of this library. Must not import the
        library (check the type's module, as ``array_api_compat.is_*_array``
        do): it is asked about arrays of every other backend too.
    ``device_of(x) -> device``
        The device ``x`` lives on, as ``parse_device`` would return it.
    ``from_host(host: numpy.ndarray, device) -> array``
        ``host`` on ``device``, same dtype and shape. It may keep ``host``'s
        memory: callers hand it a copy they own.
    ``to_host(x) -> numpy.ndarray``
        A fresh NumPy copy of ``x`` that the caller may mutate (never a view
        of ``x``'s memory), computing ``x`` first where the library is lazy.

    **Optional** (default in brackets):

    ``is_available() -> bool`` [True]
        Whether the library imports and can run here. False makes specs fail
        with ``install_hint`` and leaves the backend out of listings.
    ``version() -> str`` [the providing distribution's version, else "unknown"]
    ``install_hint: str`` [``pip install <distribution>``]
        How to make the backend usable, shown when it is not.
    ``mutable_arrays: bool`` [False]
        True where arrays can be updated in place (False: jax).
    ``writable_views: bool`` [False]
        True where an in-place operator on a basic-slice view
        (``v = x[a:b]; v += y``) writes through to ``x``. The standard leaves
        that implementation-defined; the math uses it, where True, for a
        scatter-add with no extra copy. Declare it only if it is true:
        ``tests/test_backends.py`` checks it on every backend.
    ``native_kernels: bool`` [False]
        True where portacnn ships kernels that call the library's own fused
        CNN ops (conv2d, max_pool2d and their backwards) in
        ``portacnn/functional/_native/<backend name>.py``; the generic math
        is used otherwise. A registered backend cannot ship them, so
        :class:`PluginBackend` always says False.
    ``compiles_steps: bool`` [False]
        True where the library can compile a whole training step (forward,
        backward, update) into one function; then ``compile_step`` is required.
    ``compile_step(function, donate_argnums=()) -> function`` [required only with compiles_steps]
        ``function`` compiled (``jax.jit``); same arguments and results. The
        positional arguments listed in ``donate_argnums`` are never read
        again by the caller, so the compiled function may reuse their arrays'
        memory for its results (``jax.jit``'s donation); a library that
        cannot may ignore it, and a plugin whose ``compile_step`` takes only
        ``function`` is called without it.
    ``exports_dlpack(x) -> bool`` [False]
        Whether ``to_device`` may hand ``x`` to another library through
        DLPack. Host arrays say no: the host path costs the same copy, and
        torch's importer aborts the process (uncatchably) on NumPy's negative
        strides.
    ``imports_dlpack: bool`` [False]
        Whether ``to_device`` may build this backend's arrays with its
        namespace's ``from_dlpack``. False sends every incoming array through
        ``from_host``, so a backend that lays arrays out its own way (chunks,
        say) always gets to.
    ``synchronize(device) -> None`` [nothing to wait for]
        Wait until work queued on ``device`` is done (for honest timing).
    ``wait(x) -> None`` [nothing to wait for]
        Wait until ``x`` is computed.
    ``updates_in_place(x) -> bool`` [False]
        Whether an optimizer may write a parameter's new values into ``x``
        itself (``x -= step``), as PyTorch's optimizers do; without it
        optimizers rebind ``param.data`` to a new array. NumPy says yes where
        ``x`` is writable, CuPy and torch always.
    ``supports_float64(device) -> bool`` [what the namespace's
        ``__array_namespace_info__().dtypes(device=device)`` says; False
        without that inspection API]
        Whether ``device`` has float64 (Apple's Metal does not). Parity and
        the test kit's defaults use only devices with float64.

    ``name`` is the spec prefix. A registered backend is always known by the
    name it was registered under, whatever its own ``name`` says.
    """

    name: str
    install_hint: str
    mutable_arrays: bool
    writable_views: bool
    native_kernels: bool
    compiles_steps: bool
    imports_dlpack: bool

    def is_available(self) -> bool: ...
    def version(self) -> str: ...
    def namespace(self) -> Any: ...
    def device_names(self) -> list[str]: ...
    def parse_device(self, text: str | None) -> Any: ...
    def device_label(self, device: Any) -> str: ...
    def owns(self, x: Any) -> bool: ...
    def device_of(self, x: Any) -> Any: ...
    def from_host(self, host: numpy.ndarray, device: Any) -> Any: ...
    def to_host(self, x: Any) -> numpy.ndarray: ...
    def exports_dlpack(self, x: Any) -> bool: ...
    def synchronize(self, device: Any) -> None: ...
    def wait(self, x: Any) -> None: ...
    def supports_float64(self, device: Any) -> bool: ...


#: The members a registered backend must have (all callables).
REQUIRED_MEMBERS = ("namespace", "device_names", "parse_device", "device_label", "owns", "device_of",
                    "from_host", "to_host")
#: The capability flags: plain bools, False when left out.
FLAGS = ("mutable_arrays", "writable_views", "native_kernels", "compiles_steps", "imports_dlpack")
#: The optional callables and what :class:`PluginBackend` does without them.
OPTIONAL_DEFAULTS = {
    "is_available": "True",
    "version": "the providing distribution's version, else 'unknown'",
    "exports_dlpack": "False",
    "synchronize": "nothing to wait for",
    "wait": "nothing to wait for",
    "updates_in_place": "False: optimizers rebind param.data to a new array",
    "supports_float64": "asks the namespace's __array_namespace_info__().dtypes(device=...)",
    "compile_step": "required when compiles_steps is True",
}


def check_backend(name: str, backend: Any) -> None:
    """Raise ``BackendError`` naming every member ``backend`` lacks or gets wrong."""
    problems = []
    missing = [member for member in REQUIRED_MEMBERS if not callable(getattr(backend, member, None))]
    if missing:
        problems.append(f"missing required member(s) {', '.join(missing)}")
    not_callable = [member for member in OPTIONAL_DEFAULTS
                    if getattr(backend, member, None) is not None and not callable(getattr(backend, member))]
    if not_callable:
        problems.append(f"not callable: {', '.join(not_callable)}")
    # A flag must be a real bool: a flag that is a function (always truthy) is a classic slip.
    not_bool = [flag for flag in FLAGS if not isinstance(getattr(backend, flag, False), bool)]
    if not_bool:
        problems.append(f"not a bool: {', '.join(not_bool)}")
    if getattr(backend, "compiles_steps", False) is True and not callable(getattr(backend, "compile_step", None)):
        problems.append("compiles_steps is True but there is no compile_step(function)")
    hint = getattr(backend, "install_hint", None)
    if hint is not None and not isinstance(hint, str):
        problems.append("install_hint is not a string")
    if problems:
        raise BackendError(
            f"backend {name!r} ({_describe(backend)}) does not satisfy the Backend protocol: "
            f"{'; '.join(problems)}; see what each member must do in portacnn.backends.Backend or "
            "docs/backends.md")


def _describe(backend: Any) -> str:
    module = getattr(backend, "__name__", None)
    return f"module {module}" if module and type(backend).__name__ == "module" else f"a {type(backend).__name__}"


def _plugin_flag(flag: str) -> property:
    """A capability flag read from the wrapped backend, False where it leaves it out."""
    return property(lambda self: getattr(self.wrapped, flag, False), doc=f"The plugin's ``{flag}`` (default False).")


class PluginBackend:
    """A registered backend, with the protocol's defaults for what it leaves out.

    ``get_backend`` returns this wrapper for a plugin, so the rest of
    portacnn calls every member of every backend the same way.
    ``wrapped`` is the object that was registered.
    """

    def __init__(self, name: str, wrapped: Any, *, source: str = "registered in-process",
                 distribution: str | None = None, distribution_version: str | None = None):
        check_backend(name, wrapped)
        self.name = name
        self.wrapped = wrapped
        self.source = source  # shown by `portacnn backends`
        self.distribution = distribution  # the installed package that provides it, if any
        self.distribution_version = distribution_version

    def __repr__(self) -> str:
        return f"PluginBackend({self.name!r}, {_describe(self.wrapped)}, {self.source})"

    # -- flags and hints: read on every use, so a plugin may compute them
    mutable_arrays = _plugin_flag("mutable_arrays")
    writable_views = _plugin_flag("writable_views")
    compiles_steps = _plugin_flag("compiles_steps")
    imports_dlpack = _plugin_flag("imports_dlpack")

    @property
    def native_kernels(self) -> bool:
        # The kernels live in portacnn itself, under the built-in backend's name:
        # a plugin (even one registered under a built-in name) has none there.
        return False

    @property
    def install_hint(self) -> str:
        hint = getattr(self.wrapped, "install_hint", None)
        if hint:
            return hint
        if self.distribution:
            return f"pip install {self.distribution}"
        return f"install the package that provides the {self.name!r} backend"

    # -- required members: straight through
    def namespace(self):
        return self.wrapped.namespace()

    def device_names(self) -> list[str]:
        return list(self.wrapped.device_names())

    def parse_device(self, text: str | None):
        return self.wrapped.parse_device(text)

    def device_label(self, device) -> str:
        return str(self.wrapped.device_label(device))

    def owns(self, x) -> bool:
        return bool(self.wrapped.owns(x))

    def device_of(self, x):
        return self.wrapped.device_of(x)

    def from_host(self, host: numpy.ndarray, device):
        return self.wrapped.from_host(host, device)

    def to_host(self, x) -> numpy.ndarray:
        return self.wrapped.to_host(x)

    # -- optional members: the plugin's own, else the default
    def _optional(self, member: str) -> Callable | None:
        return getattr(self.wrapped, member, None)

    def is_available(self) -> bool:
        own = self._optional("is_available")
        return True if own is None else bool(own())

    def version(self) -> str:
        own = self._optional("version")
        if own is not None:
            return str(own())
        return self.distribution_version or "unknown"

    def exports_dlpack(self, x) -> bool:
        own = self._optional("exports_dlpack")
        return False if own is None else bool(own(x))

    def synchronize(self, device) -> None:
        own = self._optional("synchronize")
        if own is not None:
            own(device)

    def wait(self, x) -> None:
        own = self._optional("wait")
        if own is not None:
            own(x)

    def updates_in_place(self, x) -> bool:
        own = self._optional("updates_in_place")
        return False if own is None else bool(own(x))

    def supports_float64(self, device) -> bool:
        own = self._optional("supports_float64")
        if own is not None:
            return bool(own(device))
        # Ask the standard's inspection API; a namespace without it gives no
        # way to tell, and claiming float64 falsely would fail deep in the math.
        info = getattr(self.namespace(), "__array_namespace_info__", None)
        if info is None:
            return False
        try:
            return "float64" in info().dtypes(device=device)
        except Exception:  # noqa: BLE001 - an inspection API that rejects the device tells us nothing
            return False

    def compile_step(self, function, donate_argnums=()):
        if not self.compiles_steps:
            raise BackendError(f"backend {self.name!r} cannot compile a training step; run the step eagerly")
        own = self.wrapped.compile_step
        if donate_argnums and accepts_keyword(own, "donate_argnums", if_unknown=False):
            return own(function, donate_argnums=donate_argnums)
        return own(function)  # donation is an optimisation: without it every result is a new array



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
