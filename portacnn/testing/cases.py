"""Backend cases for tests: every usable (backend, device) and (backend, dtype) pair, with placement checks.

In the style of array-api-extra's and scikit-learn's array-API tests. The
pytest plugin (``portacnn.testing.plugin``) turns these into the ``backend``,
``case`` and ``xp`` fixtures; ``case_params()`` and ``backend_params()`` give
the same cases for an explicit ``@pytest.mark.parametrize``. Ids read like
``numpy-float64``, ``array_api_strict-device1-float32``, ``torch-float32``:

``numpy``                     plain NumPy arrays
``numpy_readonly``            NumPy arrays with ``flags.writeable = False``, so
                              any in-place write on an input raises
``array_api_strict``          array-api-strict on its default device
``array_api_strict-device1``  array-api-strict on the emulated second device;
                              results must stay there
``torch``                     PyTorch on the CPU
``jax``                       JAX on the CPU, 64-bit enabled (``jax_enable_x64``)
``cupy``                      CuPy on GPU 0 (marked ``gpu``; skipped without one)
``<plugin>``                  a plugged-in backend (``portacnn-<x>``) on its default
                              device; only when named in ``--portacnn-backends``

A case whose library is not installed is skipped with a reason. Arrays are
moved with each library's own calls (``torch.from_numpy``,
``jax.device_put``, ...), not with ``portacnn.backends``, so a bug in
portacnn's transfer code cannot hide a bug in the math. A plugged-in
backend's case has no such independent path: it moves arrays with the
plugin's own ``from_host``/``to_host``. ``case.spec`` is the matching
``portacnn.backends`` spec for layers and models.

Typical use::

    def test_relu(case):
        x = np.random.default_rng(0).standard_normal((2, 3))
        xr = case.ref(x)                      # float64, rounded through case.dtype
        out = F.relu(case.put(x))             # on the backend, in case.dtype
        case.assert_close(out, np.maximum(xr, 0))   # also checks namespace/device/dtype
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from typing import Any

import numpy as np
import pytest

from .compare import TOLERANCES as _TOLERANCES

# --------------------------------------------------------------------------
# tolerances

#: Per-dtype (rtol, atol) against a NumPy float64 reference, with ``atol``
#: scaled by ``max(1, max|expected|)`` (see ``portacnn.testing.TOLERANCES``).
TOLERANCES = {name: _TOLERANCES[name] for name in ("float64", "float32")}

DTYPES = ("float32", "float64")


# --------------------------------------------------------------------------
# backend cases


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@functools.lru_cache(maxsize=None)
def gpu_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    if not _installed("cupy"):
        return False
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # noqa: BLE001 - no driver, no GPU, broken install
        return False


@dataclasses.dataclass(frozen=True)
class _Spec:
    id: str
    module: str  # the top-level library this case needs ("" for a plugin)
    spec: str  # the portacnn.backends spec string
    gpu: bool = False
    plugin: bool = False  # a plugged-in backend: moved through its own from_host/to_host


ALL_BACKEND_SPECS = (
    _Spec("numpy", "numpy", "numpy"),
    _Spec("numpy_readonly", "numpy", "numpy"),
    _Spec("array_api_strict", "array_api_strict", "array_api_strict"),
    _Spec("array_api_strict-device1", "array_api_strict", "array_api_strict:device1"),
    _Spec("torch", "torch", "torch"),
    _Spec("jax", "jax", "jax"),
    _Spec("cupy", "cupy", "cupy", gpu=True),
)
ALL_BACKEND_IDS = tuple(s.id for s in ALL_BACKEND_SPECS)


def plugin_specs() -> tuple[_Spec, ...]:
    """A case per plugged-in backend (``portacnn.backends.register`` or an installed entry point).

    They are not part of the default selection: a package that happens to be
    installed must not change which cases a test suite runs. Name them in
    ``--portacnn-backends`` (e.g. ``numpy,<plugin name>``) to run them.
    """
    from ..backends import BUILTIN_BACKENDS, backend_names

    return tuple(_Spec(name, "", name, plugin=True) for name in backend_names() if name not in BUILTIN_BACKENDS)


def all_specs() -> tuple[_Spec, ...]:
    """The built-in cases, then one per plugged-in backend."""
    return ALL_BACKEND_SPECS + plugin_specs()


#: The ids chosen with ``--portacnn-backends`` (or ``$PORTACNN_TEST_BACKENDS``);
#: set by the plugin's ``pytest_configure``, before any test module is imported.
_SELECTED: tuple[str, ...] | None = None


def parse_selection(raw: str | None) -> tuple[str, ...]:
    """Backend ids from a comma-separated list of ids or specs (``array_api_strict:device1`` works too)."""
    raw = (raw or "").strip()
    if not raw:
        return ALL_BACKEND_IDS
    specs = all_specs()
    valid = tuple(s.id for s in specs)
    by_spec = {s.spec: s.id for s in specs if s.id != "numpy_readonly"}
    wanted = tuple(by_spec.get(part.strip(), part.strip()) for part in raw.split(",") if part.strip())
    unknown = [w for w in wanted if w not in valid]
    if unknown:
        raise pytest.UsageError(
            f"--portacnn-backends (or PORTACNN_TEST_BACKENDS) names unknown backend(s) {unknown}; "
            f"valid: {', '.join(valid)}"
        )
    return wanted


def select(raw: str | None) -> tuple[str, ...]:
    global _SELECTED
    _SELECTED = parse_selection(raw)
    return _SELECTED


def _selected_ids() -> tuple[str, ...]:
    if _SELECTED is None:
        return parse_selection(os.environ.get("PORTACNN_TEST_BACKENDS"))
    return _SELECTED


class BackendCase:
    """One backend (and device): moves host arrays there and checks placement."""

    def __init__(self, spec: _Spec):
        self.id = spec.id
        self.module = spec.module
        self.spec = spec.spec
        self.gpu = spec.gpu
        self.plugin = spec.plugin
        self._ready = False

    def __repr__(self) -> str:
        return f"BackendCase({self.id!r})"

    # -- lazy set-up: importing torch / jax only when a test needs them
    def _setup(self) -> None:
        if self._ready:
            return
        if self.plugin:
            from ..backends import get_backend, parse_spec

            placement = parse_spec(self.spec)
            self._plugin_backend = get_backend(placement.backend)
            self._plugin_device = placement.device
        elif self.module == "jax":
            import jax

            jax.config.update("jax_enable_x64", True)
            self._jax = jax
            self._jax_device = jax.devices("cpu")[0]
        elif self.module == "array_api_strict":
            import array_api_strict

            self._strict = array_api_strict
            name = "device1" if self.id.endswith("device1") else "CPU_DEVICE"
            self._strict_device = array_api_strict.Device(name)
            self._strict_host = array_api_strict.Device("CPU_DEVICE")
        elif self.module == "torch":
            import torch

            self._torch = torch
        elif self.module == "cupy":
            import cupy

            self._cupy = cupy
        self._ready = True
        sample = self.asarray(np.zeros(1))
        import array_api_compat

        self._xp = array_api_compat.array_namespace(sample)
        self._device = array_api_compat.device(sample)

    @property
    def xp(self):
        """This backend's array-API namespace (imports the library on first use)."""
        self._setup()
        return self._xp

    @property
    def device(self):
        """The device arrays of this case live on."""
        self._setup()
        return self._device

    # -- host -> backend
    def asarray(self, a) -> Any:
        """A copy of the host array ``a`` on this backend/device, same dtype.

        ``numpy_readonly`` gives a read-only copy; every case gives a fresh
        array that shares no memory with ``a``.
        """
        self._setup()
        a = np.array(a, copy=True)  # private, contiguous copy of the host data
        if self.plugin:
            return self._plugin_backend.from_host(a, self._plugin_device)
        if self.module == "numpy":
            if self.id == "numpy_readonly":
                a.flags.writeable = False
            return a
        if self.module == "array_api_strict":
            return self._strict.asarray(a, device=self._strict_device, copy=True)
        if self.module == "torch":
            return self._torch.from_numpy(a)
        if self.module == "jax":
            return self._jax.device_put(a, self._jax_device)
        if self.module == "cupy":
            return self._cupy.asarray(a)
        raise AssertionError(self.module)

    # -- backend -> host
    def to_numpy(self, x) -> np.ndarray:
        """A fresh host NumPy copy of ``x`` (0-d results become 0-d arrays)."""
        self._setup()
        if self.plugin:
            return self._plugin_backend.to_host(x)
        if self.module == "numpy":
            return np.array(x, copy=True)
        if self.module == "array_api_strict":
            return np.array(x.to_device(self._strict_host), copy=True)
        if self.module == "torch":
            return x.detach().cpu().numpy().copy()
        if self.module == "jax":
            return np.array(x, copy=True)
        if self.module == "cupy":
            return x.get()
        raise AssertionError(self.module)

    # -- placement check
    def check(self, x, dtype: str | None = None) -> None:
        """Assert ``x`` is an array of this backend's namespace, on its device,
        and (if given) of dtype ``dtype`` (a name such as ``"float32"``)."""
        import array_api_compat

        self._setup()
        assert array_api_compat.is_array_api_obj(x), f"[{self.id}] expected an array, got {type(x).__name__}"
        ns = array_api_compat.array_namespace(x)
        assert ns is self.xp, f"[{self.id}] result lives in namespace {ns.__name__}, expected {self.xp.__name__}"
        dev = array_api_compat.device(x)
        assert dev == self.device, f"[{self.id}] result is on device {dev!r}, expected {self.device!r}"
        if dtype is not None:
            want = getattr(self.xp, dtype)
            assert x.dtype == want, f"[{self.id}] result has dtype {x.dtype}, expected {dtype}"


class Case:
    """A (backend, dtype) pair: the object the ``case`` fixture yields."""

    def __init__(self, backend: BackendCase, dtype: str):
        self.backend = backend
        self.dtype = dtype
        self.np_dtype = np.dtype(dtype)
        self.rtol, self.atol = TOLERANCES[dtype]
        self.id = f"{backend.id}-{dtype}"
        self.spec = backend.spec

    def __repr__(self) -> str:
        return f"Case({self.id!r})"

    @property
    def xp(self):
        self.backend._setup()
        return self.backend.xp

    @property
    def device(self):
        self.backend._setup()
        return self.backend.device

    def asarray(self, a):
        """Host array -> this backend/device, keeping ``a``'s dtype."""
        return self.backend.asarray(a)

    def to_numpy(self, x) -> np.ndarray:
        return self.backend.to_numpy(x)

    def put(self, a):
        """Float host data cast to this case's dtype and moved to the backend;
        integer/bool arrays keep their dtype."""
        a = np.asarray(a)
        if a.dtype.kind == "f":
            a = a.astype(self.np_dtype)
        return self.backend.asarray(a)

    def ref(self, a) -> np.ndarray:
        """The float64 reference input for ``put(a)``: rounded through this
        case's dtype, so float32 results are compared against exact math on
        the very values the backend saw."""
        a = np.asarray(a)
        if a.dtype.kind == "f":
            return a.astype(self.np_dtype).astype(np.float64)
        return a

    def check(self, x, dtype: str | None = "default") -> None:
        """Namespace + device + dtype (this case's float dtype by default;
        ``dtype=None`` skips the dtype check)."""
        self.backend.check(x, self.dtype if dtype == "default" else dtype)

    def assert_close(self, actual, expected, *, rtol=None, atol=None, dtype="default", err_msg=""):
        assert_close(actual, expected, self, rtol=rtol, atol=atol, dtype=dtype, err_msg=err_msg)


def assert_close(actual, expected, case: Case, *, rtol=None, atol=None, dtype="default", err_msg=""):
    """Check placement (namespace, device, dtype) of ``actual``, then compare
    it with the host reference ``expected`` at the case's tolerances.

    ``atol`` (default: the case's) is multiplied by ``max(1, max|expected|)``;
    see ``TOLERANCES``. ``dtype`` is the expected dtype name, default the
    case's float dtype, ``None`` to skip.
    """
    case.check(actual, dtype)
    got = case.to_numpy(actual)
    expected = np.asarray(expected)
    assert got.shape == expected.shape, f"[{case.id}] shape {got.shape} != expected {expected.shape} {err_msg}"
    rtol = case.rtol if rtol is None else rtol
    atol = case.atol if atol is None else atol
    finite = expected[np.isfinite(expected)]
    scale = max(1.0, float(np.max(np.abs(finite)))) if finite.size else 1.0
    np.testing.assert_allclose(
        got.astype(np.float64) if got.dtype.kind == "f" else got,
        expected,
        rtol=rtol,
        atol=atol * scale,
        err_msg=f"[{case.id}] {err_msg}",
    )


# --------------------------------------------------------------------------
# parametrisation

_BACKENDS = {s.id: BackendCase(s) for s in all_specs()}


@functools.lru_cache(maxsize=None)
def plugin_unusable(spec: str) -> str | None:
    """Why a plugged-in backend's case cannot run here (its spec's error), or None.

    Asked when such a case is about to run (the plugin's ``pytest_runtest_setup``),
    not when the fixtures are built: that would import the plugin's library at
    every pytest start, even when no case of it runs.
    """
    from ..backends import parse_spec
    from ..errors import PortacnnError

    try:
        parse_spec(spec)
    except PortacnnError as error:
        return str(error)
    return None


def _marks(spec: _Spec) -> list:
    marks = []
    if spec.gpu:
        marks.append(pytest.mark.gpu)
    if not spec.plugin and not _installed(spec.module):  # a plugin's: see plugin_unusable
        marks.append(pytest.mark.skip(reason=f"{spec.module} is not installed"))
    return marks


def _selected_specs() -> list[_Spec]:
    ids = _selected_ids()
    return [s for s in all_specs() if s.id in ids]


def backend_params() -> list:
    """``pytest.param`` per selected backend case (for custom parametrize)."""
    return [pytest.param(_BACKENDS[s.id], id=s.id, marks=_marks(s)) for s in _selected_specs()]


def case_params(dtypes=DTYPES) -> list:
    """``pytest.param`` per selected (backend, dtype) pair."""
    return [
        pytest.param(Case(_BACKENDS[s.id], d), id=f"{s.id}-{d}", marks=_marks(s))
        for s in _selected_specs()
        for d in dtypes
    ]


def supports_float64(backend: "BackendCase") -> bool:
    from ..backends import parse_spec

    return parse_spec(backend.spec).supports_float64


def writable_views(backend: "BackendCase") -> bool:
    from ..backends import parse_spec

    return parse_spec(backend.spec).writable_views


__all__ = [
    "ALL_BACKEND_IDS", "DTYPES", "TOLERANCES", "BackendCase", "Case", "all_specs", "assert_close", "backend_params",
    "case_params", "gpu_available", "plugin_specs", "select", "supports_float64", "writable_views",
]
