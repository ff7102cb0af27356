"""Backends others plug in: ``portacnn.backends.register``, entry-point discovery, and the dask plugin.

A fake backend, NumPy under another name (its own array type and
namespace), shows that a registered backend works everywhere a spec is
taken: ``parse_spec``, ``lenet(device=...)``, ``model.to``, ``to_device``,
``to_numpy``, ``synchronize``, dropout, ``portacnn backends`` and
``portacnn parity``. Its array type refuses ``numpy.asarray``, so host-side
code that skips the protocol's ``to_host`` fails here.

The dask plugin kept in ``examples/plugins/portacnn-dask`` is tested when it
is installed (``pip install -e examples/plugins/portacnn-dask``); in CI
(``$CI`` set) it must be.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import portacnn
import portacnn.backends as B
from portacnn import functional as F
from portacnn import parity
from portacnn.cli import main
from portacnn.errors import BackendError, PortacnnError
from portacnn.models import lenet
from portacnn.nn import CrossEntropyLoss
from portacnn.optim import SGD

REPO = Path(__file__).resolve().parents[1]

# --------------------------------------------------------------------------
# a fake backend: NumPy under another name


class FakeArray:
    """A NumPy array in a wrapper of its own, so no built-in backend owns it."""

    __slots__ = ("_a",)

    def __init__(self, a):
        self._a = a

    def __array_namespace__(self, api_version=None):
        return FAKE_XP

    def __array__(self, *args, **kwargs):
        # Host-side code must go through the backend's to_host, never numpy.asarray.
        raise TypeError("a FakeArray reaches the host only through its backend's to_host")

    @property
    def shape(self):
        return self._a.shape

    @property
    def dtype(self):
        return self._a.dtype

    @property
    def ndim(self):
        return self._a.ndim

    @property
    def size(self):
        return self._a.size

    @property
    def device(self):
        return "cpu"

    @property
    def T(self):
        return FakeArray(self._a.T)

    @property
    def mT(self):
        return FakeArray(np.swapaxes(self._a, -1, -2))

    def to_device(self, device, stream=None):
        return self

    def __getitem__(self, key):
        return _wrap(self._a[_unwrap(key)])

    def __setitem__(self, key, value):
        self._a[_unwrap(key)] = _unwrap(value)

    def __float__(self):
        return float(self._a)

    def __int__(self):
        return int(self._a)

    def __bool__(self):
        return bool(self._a)

    def __index__(self):
        return self._a.__index__()

    def __len__(self):
        return len(self._a)

    def __repr__(self):
        return f"FakeArray({self._a!r})"


def _binary(name):
    def method(self, other):
        result = getattr(self._a, name)(_unwrap(other))
        return NotImplemented if result is NotImplemented else _wrap(result)

    return method


def _inplace(name):
    def method(self, other):
        getattr(self._a, name)(_unwrap(other))
        return self

    return method


def _unary(name):
    return lambda self: _wrap(getattr(self._a, name)())


for _op in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor", "lshift",
            "rshift"):
    setattr(FakeArray, f"__{_op}__", _binary(f"__{_op}__"))
    setattr(FakeArray, f"__r{_op}__", _binary(f"__r{_op}__"))
    setattr(FakeArray, f"__i{_op}__", _inplace(f"__i{_op}__"))
for _op in ("lt", "le", "gt", "ge", "eq", "ne"):
    setattr(FakeArray, f"__{_op}__", _binary(f"__{_op}__"))
for _op in ("neg", "pos", "abs", "invert"):
    setattr(FakeArray, f"__{_op}__", _unary(f"__{_op}__"))
FakeArray.__hash__ = None


def _unwrap(value):
    if isinstance(value, FakeArray):
        return value._a
    if isinstance(value, tuple):
        return tuple(_unwrap(v) for v in value)
    if isinstance(value, list):
        return [_unwrap(v) for v in value]
    return value


def _wrap(value):
    if isinstance(value, (np.ndarray, np.generic)):
        return FakeArray(np.asarray(value))
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple (unique_all, ...)
        return type(value)(*(_wrap(v) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(_wrap(v) for v in value)
    return value


class _FakeNamespace:
    """``array_api_compat.numpy``, taking and giving FakeArrays."""

    __name__ = "portacnn_fake_xp"

    def __getattr__(self, name):
        import array_api_compat.numpy as npx

        target = getattr(npx, name)
        if isinstance(target, type) or not callable(target):  # dtypes, constants, the info class
            return target

        def call(*args, **kwargs):
            return _wrap(target(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()}))

        return call


FAKE_XP = _FakeNamespace()


class FakeBackend:
    """Only the protocol's required members: every optional one takes its default."""

    def namespace(self):
        return FAKE_XP

    def device_names(self):
        return ["cpu"]

    def parse_device(self, text):
        return "cpu" if text is None else B.lookup_device("fakenp", text, {"cpu": "cpu"})

    def device_label(self, device):
        return "cpu"

    def owns(self, x):
        return isinstance(x, FakeArray)

    def device_of(self, x):
        return "cpu"

    def from_host(self, host, device):
        return FakeArray(host)

    def to_host(self, x):
        return np.array(x._a, copy=True)


@pytest.fixture
def registry():
    """A clean plugin registry (entry points already discovered, as pytest's plugin did), restored afterwards."""
    saved = dict(B._PLUGINS), dict(B._FAILURES), B._discovered
    B._discover()
    yield B
    B._PLUGINS.clear()
    B._PLUGINS.update(saved[0])
    B._FAILURES.clear()
    B._FAILURES.update(saved[1])
    B._discovered = saved[2]
    B._forget_cached_flags()


@pytest.fixture
def fake(registry):
    registry.register("fakenp", FakeBackend())
    return "fakenp"


def _lenet_grads(device, images, labels, initial):
    model = lenet(seed=0, dtype="float64", device=device)
    model.load_state_dict(initial)
    loss = CrossEntropyLoss()(model(B.to_device(images, device)), B.to_device(labels, device))
    loss.backward()
    return [B.to_numpy(loss.data)] + [B.to_numpy(p.grad) for p in model.parameters()]


# --------------------------------------------------------------------------
# register(): a fake backend works wherever a spec is taken


def test_registered_backend_parses_lists_and_moves(fake):
    place = B.parse_spec(fake)
    assert place.spec == "fakenp:cpu" and B.parse_spec(" FakeNP:cpu ") == place
    assert fake in B.KNOWN_BACKENDS and fake in B.backend_names()
    info = next(i for i in B.available_backends() if i.name == fake)
    assert info.devices == ("fakenp:cpu",) and info.version == "unknown" and info.source == "registered in-process"
    with pytest.raises(BackendError, match="fakenp:cpu"):
        B.parse_spec("fakenp:gpu")

    host = np.arange(12, dtype=np.float64).reshape(3, 4)
    x = B.to_device(host, fake)
    assert isinstance(x, FakeArray) and B.placement_of(x) == place and B.dtype_name(x) == "float64"
    host[0, 0] = 99.0  # to_device copied: the backend never sees later writes
    back = B.to_numpy(x)
    assert back[0, 0] == 0.0
    back[0, 1] = 42.0  # to_numpy gave a copy
    assert B.to_numpy(x)[0, 1] == 1.0
    assert B.to_device(x, fake) is x
    np.testing.assert_array_equal(B.to_numpy(B.to_device(x, "numpy")), B.to_numpy(x))
    assert B.to_numpy(portacnn.tensor(x)).shape == (3, 4)
    assert B.synchronize(fake) == fake and B.synchronize(x) is x
    for dtype in ("bool", "int64", "float32"):
        assert B.dtype_name(B.to_device(np.zeros(2, dtype), fake)) == dtype


def test_registered_backend_gets_the_protocol_defaults(fake):
    place, backend = B.parse_spec(fake), B.get_backend(fake)
    assert not place.mutable_arrays and not place.writable_views and not place.compiles_steps
    assert not place.native_kernels
    assert not backend.imports_dlpack and not backend.exports_dlpack(None)
    assert backend.is_available() and backend.version() == "unknown"
    assert place.supports_float64  # from the namespace's __array_namespace_info__
    assert place.namespace is FAKE_XP
    assert "fakenp" in backend.install_hint
    with pytest.raises(BackendError, match="cannot compile"):
        backend.compile_step(lambda: None)


def test_a_registered_backend_never_gets_native_kernels(registry):
    """The kernels live in portacnn, under built-in names: a plugin that claims them, even one registered
    as "torch", runs the generic math."""
    from portacnn._arrays import native_kernels_for

    class Claims(FakeBackend):
        native_kernels = True

    registry.register("fakenp", Claims())
    assert not B.parse_spec("fakenp").native_kernels
    assert native_kernels_for(B.to_device(np.zeros((1, 1, 2, 2)), "fakenp")) is None
    torch = pytest.importorskip("torch")
    import portacnn.backends.torch_backend as torch_backend

    registry.register("torch", torch_backend, replace=True)
    assert not B.parse_spec("torch").native_kernels
    assert native_kernels_for(torch.zeros(1)) is None


def test_a_plugin_compile_step_gets_donate_argnums_only_if_it_takes_them(registry):
    seen = {}

    class Compiles(FakeBackend):
        compiles_steps = True

        def compile_step(self, function):  # the protocol's first form: no donation
            seen["plain"] = function
            return function

    class Donates(FakeBackend):
        compiles_steps = True

        def compile_step(self, function, donate_argnums=()):
            seen["donated"] = donate_argnums
            return function

    def step(a, b):
        return a

    registry.register("plain", Compiles())
    registry.register("donates", Donates())
    assert B.get_backend("plain").compile_step(step, donate_argnums=(0,)) is step and seen["plain"] is step
    assert B.get_backend("donates").compile_step(step, donate_argnums=(0,)) is step and seen["donated"] == (0,)


def test_registered_backend_moves_to_and_from_other_libraries(fake):
    host = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    for spec in ("torch:cpu", "jax:cpu", "array_api_strict:device1"):
        try:
            B.parse_spec(spec)
        except BackendError:
            continue
        there = B.to_device(host, spec)
        here = B.to_device(there, fake)  # never through DLPack: the plugin did not ask for it
        assert isinstance(here, FakeArray)
        np.testing.assert_array_equal(B.to_numpy(B.to_device(here, spec)), host)


def test_lenet_model_to_and_dropout_on_a_registered_backend(fake):
    rng = np.random.default_rng(1)
    images, labels = rng.standard_normal((4, 1, 28, 28)), rng.integers(0, 10, 4)
    initial = {k: B.to_numpy(v) for k, v in lenet(seed=0, dtype="float64").state_dict().items()}
    expected = _lenet_grads("numpy", images, labels, initial)
    for got, want in zip(_lenet_grads(fake, images, labels, initial), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-13)

    model = lenet(seed=0).to(fake)
    assert {B.placement_of(p.data).spec for p in model.parameters()} == {"fakenp:cpu"}
    assert all(isinstance(p.data, FakeArray) for p in model.parameters())
    model.to("numpy")
    assert all(isinstance(p.data, np.ndarray) for p in model.parameters())

    x, mask = rng.standard_normal((3, 5)), F.dropout_mask((3, 5), 0.4, 7)
    out = F.dropout(B.to_device(x, fake), 0.4, mask=mask)  # the host mask moves to the fake backend
    assert isinstance(out, FakeArray)
    np.testing.assert_array_equal(B.to_numpy(out), F.dropout(x, 0.4, mask=mask))


def test_bfloat16_follows_the_namespace(fake):
    with pytest.raises(PortacnnError, match="fakenp:cpu has no bfloat16"):
        lenet(device=fake, dtype="bfloat16")


def test_cli_backends_and_parity_take_a_registered_backend(fake, capsys):
    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "fakenp:cpu" in out and "(registered in-process)" in out
    names = ["conv2d", "max_pool2d", "linear", "cross_entropy", "batch_norm_train", "dropout"]
    report = io.StringIO()
    assert parity.run_parity(specs=[fake], dtypes=("float64", "float32"), cases=names, out=report) == 0, \
        report.getvalue()
    assert "fakenp:cpu" in report.getvalue() and "lenet_3_sgd_steps" in report.getvalue()
    assert "fakenp:cpu" in parity.backend_specs()


def test_testing_cases_cover_a_registered_backend(fake):
    from portacnn.testing import cases

    spec = next(s for s in cases.plugin_specs() if s.id == fake)
    assert cases.parse_selection("numpy,fakenp") == ("numpy", "fakenp")
    assert fake not in cases.parse_selection(None)  # opt-in: not part of the default run
    case = cases.Case(cases.BackendCase(spec), "float64")
    x = case.put(np.ones((2, 2)))
    assert isinstance(x, FakeArray)
    case.assert_close(F.relu(x), np.ones((2, 2)))

    class Offline(FakeBackend):
        install_hint = "pip install offline-lib"

        def is_available(self):
            return False

    B.register("offline", Offline())
    assert "pip install offline-lib" in cases.plugin_unusable("offline")  # its cases skip, saying why
    assert cases.plugin_unusable(fake) is None


# --------------------------------------------------------------------------
# register(): bad registrations say what is wrong


def test_missing_members_are_named(registry):
    with pytest.raises(BackendError) as info:
        registry.register("empty", object())
    message = str(info.value)
    for member in ("namespace", "device_names", "parse_device", "device_label", "owns", "device_of", "from_host",
                   "to_host"):
        assert member in message
    assert "docs/backends.md" in message

    class Partial(FakeBackend):
        owns = None
        to_host = None

    with pytest.raises(BackendError, match=r"missing required member\(s\) owns, to_host;"):
        registry.register("partial", Partial())
    assert "partial" not in B.backend_names()


@pytest.mark.parametrize("attribute, value, fragment", [
    ("writable_views", lambda: True, "not a bool: writable_views"),
    ("native_kernels", 1, "not a bool: native_kernels"),
    ("compiles_steps", True, "compiles_steps is True but there is no compile_step"),
    ("synchronize", "soon", "not callable: synchronize"),
    ("install_hint", 3, "install_hint is not a string"),
])
def test_wrong_members_are_named(registry, attribute, value, fragment):
    backend = FakeBackend()
    setattr(backend, attribute, value)
    with pytest.raises(BackendError, match=fragment):
        registry.register("wrong", backend)


@pytest.mark.parametrize("name", ["", "Fake", "1fake", "fa:ke", "fa-ke", None, 3])
def test_malformed_names_are_refused(registry, name):
    with pytest.raises(BackendError, match="lower-case letters"):
        registry.register(name, FakeBackend())


def test_name_clashes_need_replace(registry):
    with pytest.raises(BackendError, match="'numpy' is already taken by the built-in backend.*replace=True"):
        registry.register("numpy", FakeBackend())
    registry.register("fakenp", FakeBackend())
    with pytest.raises(BackendError, match="'fakenp' is already taken by the plugin"):
        registry.register("fakenp", FakeBackend())
    registry.register("fakenp", FakeBackend(), replace=True)

    # replace=True takes over a built-in name; unregister gives it back.
    registry.register("array_api_strict", FakeBackend(), replace=True)
    assert B.parse_spec("array_api_strict").spec == "array_api_strict:cpu"
    assert B.placement_of(B.to_device(np.ones(2), "array_api_strict")).backend == "array_api_strict"
    registry.unregister("array_api_strict")
    try:
        assert B.parse_spec("array_api_strict:device1").spec == "array_api_strict:device1"
    except BackendError as error:
        assert "not usable" in str(error)
    with pytest.raises(BackendError, match="no plugin backend named 'nothing'"):
        registry.unregister("nothing")


def test_unknown_backend_message_says_how_to_plug_one_in(registry):
    with pytest.raises(BackendError) as info:
        B.parse_spec("tensorflow")
    assert "known backends: numpy" in str(info.value)
    assert "portacnn.backends" in str(info.value) and "register" in str(info.value)


# --------------------------------------------------------------------------
# entry points: discovered once, lazily; a broken plugin is reported, never fatal


class _StubDistribution:
    name = "portacnn-stub"
    version = "9.8.7"


_STUB_DISTRIBUTION = _StubDistribution()


class _StubEntryPoint:
    """What discovery reads from an entry point: name, value, dist and load()."""

    def __init__(self, name, value, loader, dist=_STUB_DISTRIBUTION):
        self.name, self.value, self.dist, self._loader = name, value, dist, loader

    def load(self):
        return self._loader()


def _raise(error):
    def load():
        raise error

    return load


@pytest.fixture
def undiscovered(registry, monkeypatch, tmp_path):
    """Discovery reset, with ``set_entry_points(list)`` standing in for the installed metadata."""
    calls = []

    def set_entry_points(entries):
        def entry_points(**kwargs):
            calls.append(kwargs)
            return [e for e in entries if kwargs.get("group") == B.ENTRY_POINT_GROUP]

        monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)

    B._PLUGINS.clear()
    B._FAILURES.clear()
    B._discovered = False
    set_entry_points([])
    # A real module whose import raises, loaded the way a broken plugin package would be.
    (tmp_path / "portacnn_broken_plugin.py").write_text("raise RuntimeError('the plugin is broken on purpose')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "portacnn_broken_plugin", raising=False)
    return set_entry_points, calls


def test_entry_points_are_discovered_once_and_a_broken_one_is_reported(undiscovered, capsys):
    set_entry_points, calls = undiscovered
    set_entry_points([
        importlib.metadata.EntryPoint("broken", "portacnn_broken_plugin:backend", B.ENTRY_POINT_GROUP),
        _StubEntryPoint("good", "portacnn_stub:backend", lambda: FakeBackend()),
        _StubEntryPoint("gone", "portacnn_gone:backend", _raise(ModuleNotFoundError("No module named 'gonelib'"))),
    ])
    assert B.parse_spec("numpy").spec == "numpy" and not calls  # a built-in name needs no discovery

    assert B.parse_spec("good").spec == "good:cpu"
    info = next(i for i in B.available_backends() if i.name == "good")
    assert info.version == "9.8.7" and info.source == "plugin from portacnn-stub"  # from the distribution
    assert [i.name for i in B.available_backends()][:1] == ["numpy"]  # the others still work
    assert B.get_backend("good").install_hint == "pip install portacnn-stub"

    with pytest.raises(BackendError) as info:
        B.parse_spec("broken:cpu")
    message = str(info.value)
    assert "'broken'" in message and "broken = portacnn_broken_plugin:backend" in message
    assert "RuntimeError: the plugin is broken on purpose" in message and B.ENTRY_POINT_GROUP in message
    with pytest.raises(BackendError, match="gone.*portacnn-stub.*ModuleNotFoundError: No module named 'gonelib'"):
        lenet(device="gone")
    assert {f.name for f in B.plugin_failures()} == {"broken", "gone"}
    assert len(calls) == 1  # looked up once, however often specs are parsed

    assert main(["backends"]) == 0
    out = capsys.readouterr().out
    assert "good:cpu" in out and "plugins that failed to load:" in out
    assert "RuntimeError: the plugin is broken on purpose" in out and "fix or reinstall portacnn-stub" in out
    assert main(["parity", "--backends", "broken"]) == 2
    assert "broken on purpose" in capsys.readouterr().err


def test_entry_point_clashes_and_protocol_failures_are_reported(undiscovered):
    set_entry_points, _ = undiscovered
    set_entry_points([
        _StubEntryPoint("numpy", "portacnn_stub:numpy", lambda: FakeBackend()),
        _StubEntryPoint("twice", "first:backend", lambda: FakeBackend()),
        _StubEntryPoint("twice", "second:backend", lambda: FakeBackend()),
        _StubEntryPoint("hollow", "portacnn_stub:hollow", lambda: object()),
    ])
    failures = {f.name: f for f in B.plugin_failures()}
    assert "already taken by the built-in backend" in failures["numpy"].error
    assert B.parse_spec("numpy").backend == "numpy"  # the built-in stays
    assert "already taken by plugin from portacnn-stub" in failures["twice"].error
    assert failures["twice"].entry_point == "twice = second:backend"
    assert B.parse_spec("twice").spec == "twice:cpu"  # the first one stays
    assert "missing required member(s) namespace" in failures["hollow"].error


def test_arrays_no_built_in_owns_trigger_discovery(undiscovered):
    set_entry_points, calls = undiscovered
    set_entry_points([_StubEntryPoint("good", "portacnn_stub:backend", lambda: FakeBackend())])
    x = FakeArray(np.ones(3))
    assert B.placement_of(np.ones(3)).backend == "numpy" and not calls
    assert B.placement_of(x).spec == "good:cpu" and len(calls) == 1


def test_a_plugin_that_raises_while_listed_is_left_out(registry, capsys):
    class Flaky(FakeBackend):
        def device_names(self):
            raise OSError("driver went away")

    registry.register("flaky", Flaky())
    assert "flaky" not in [i.name for i in B.available_backends()]
    assert any("OSError: driver went away" in f.error for f in B.plugin_failures())
    assert main(["backends"]) == 0
    assert "driver went away" in capsys.readouterr().out


def test_nothing_in_the_library_names_a_plugin():
    named = [str(path.relative_to(REPO)) for folder in ("portacnn", "backends") for path in (REPO / folder).rglob("*.py")
             if "dask" in path.read_text(encoding="utf-8").lower()]
    assert not named, f"the library must not know its plugins by name: {named}"


# --------------------------------------------------------------------------
# the dask plugin (examples/plugins/portacnn-dask)

try:
    import portacnn_dask  # noqa: F401

    _DASK_PLUGIN = True
except ImportError:
    _DASK_PLUGIN = False

needs_dask_plugin = pytest.mark.skipif(
    not _DASK_PLUGIN and not os.environ.get("CI"),
    reason="portacnn-dask is not installed: pip install -e examples/plugins/portacnn-dask")


@needs_dask_plugin
def test_dask_plugin_is_installed_and_discovered(capsys):
    # In CI this fails (not skips) when the plugin was not installed.
    import portacnn_dask

    assert any(e.name == "dask" for e in importlib.metadata.entry_points(group=B.ENTRY_POINT_GROUP))
    assert B.get_backend("dask").wrapped is portacnn_dask.backend
    info = next(i for i in B.available_backends() if i.name == "dask")
    assert info.devices == ("dask:cpu",) and info.source == "plugin from portacnn-dask"
    place = B.parse_spec("dask")
    assert place.spec == "dask:cpu" and place.supports_float64 and not place.mutable_arrays
    with pytest.raises(BackendError, match="valid: dask:cpu"):
        B.parse_spec("dask:gpu")
    assert main(["backends"]) == 0
    assert "dask:cpu  (plugin from portacnn-dask)" in capsys.readouterr().out


@needs_dask_plugin
def test_dask_transfers_chunk_the_batch_axis_and_copy():
    import dask.array

    host = np.random.default_rng(0).standard_normal((150, 3, 2))
    x = B.to_device(host, "dask")
    assert isinstance(x, dask.array.Array) and x.chunks == ((64, 64, 22), (3,), (2,))
    assert B.placement_of(x).spec == "dask:cpu" and B.dtype_name(x) == "float64"
    expected = host.copy()
    host[:] = 0.0  # the lazy graph holds a copy, not the caller's array
    back = B.to_numpy(x)
    np.testing.assert_array_equal(back, expected)
    back[:] = 1.0  # to_numpy computes a fresh copy each time
    np.testing.assert_array_equal(B.to_numpy(x), expected)
    for value in (np.float32(2.5) * np.ones(()), np.array([True, False]), np.arange(5, dtype=np.int64)):
        np.testing.assert_array_equal(B.to_numpy(B.to_device(value, "dask")), value)
    try:
        B.parse_spec("torch:cpu")
    except BackendError:
        return
    via_torch = B.to_device(B.to_device(x, "torch:cpu"), "dask")  # torch -> dask: through from_host
    assert via_torch.chunks == x.chunks
    np.testing.assert_array_equal(B.to_numpy(via_torch), expected)


@needs_dask_plugin
@pytest.mark.slow
def test_dask_lenet_three_sgd_steps_match_numpy():
    """A batch of 70 is two chunks (64 + 6): each of three SGD steps' loss, gradients and weights equal NumPy's.

    Dask is lazy: a step's weights are a graph over every earlier step, and
    one ``to_numpy`` per array would compute that history again for each.
    So the three steps' arrays are kept as graphs and computed together, in
    one ``dask.compute``, which runs each step once.
    """
    import dask

    rng = np.random.default_rng(3)
    batches = [(rng.standard_normal((70, 1, 28, 28)), rng.integers(0, 10, 70)) for _ in range(3)]

    def train(device):
        model = lenet(seed=0, dtype="float64", device=device)
        optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        seen = []
        for images, labels in batches:
            x = B.to_device(images, device)
            assert device != "dask" or len(x.chunks[0]) == 2
            loss = CrossEntropyLoss()(model(x), B.to_device(labels, device))
            optimizer.zero_grad()
            loss.backward()
            arrays = [loss.data] + [p.grad for p in model.parameters()] + [p.data for p in model.parameters()]
            # NumPy's arrays are copied now: its optimizer may update them in place.
            seen.append(arrays if device == "dask" else [B.to_numpy(a) for a in arrays])
            optimizer.step()
        return dask.compute(seen)[0] if device == "dask" else seen

    for step, (got, want) in enumerate(zip(train("dask"), train("numpy"), strict=True)):
        for index, (g, w) in enumerate(zip(got, want, strict=True)):
            np.testing.assert_allclose(g, w, rtol=1e-10, atol=1e-14, err_msg=f"step {step}, array {index}")


@needs_dask_plugin
@pytest.mark.slow
def test_dask_parity_suite_passes():
    """Every parity case in float64 and float32 (about 2 s each), and the 3 LeNet SGD steps in float64.

    The training row takes about 20 s per dtype (2 shared cores): each
    ``to_numpy`` of a lazy weight recomputes all three steps. The float32 one
    runs with ``portacnn parity --backends dask``.
    """
    report = io.StringIO()
    assert parity.run_parity(specs=["dask"], dtypes=("float64", "float32"), include_training=False,
                             out=report) == 0, report.getvalue()
    assert f"{2 * len(parity.CASES)} passed, 0 failed" in report.getvalue()
    training = parity.check_training("dask", "float64")
    assert training.passed, training.error or f"max rel diff {training.max_rel:.2e}"


@needs_dask_plugin
@pytest.mark.parametrize("name", ["group_norm", "conv2d_groups", "conv_transpose2d"])
def test_dask_grouped_ops_on_a_batch_of_several_chunks(monkeypatch, name):
    monkeypatch.setenv("PORTACNN_DASK_CHUNK", "1")  # the parity cases' small batches span several chunks
    # dask reshapes an array of several chunks only by splitting or merging whole axes: the grouped
    # reshapes split first, then merge.
    result = parity.check_op(name, "dask", "float64")
    assert result.passed, result.error
