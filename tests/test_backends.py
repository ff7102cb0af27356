"""The backend selector: spec parsing, placement, and moving arrays between libraries."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import portacnn.backends as B
from portacnn.errors import BackendError, DTypeError


def require(spec: str) -> B.Placement:
    """parse_spec(spec), or skip the test where that library or device is missing."""
    try:
        return B.parse_spec(spec)
    except BackendError as err:
        pytest.skip(str(err))


def gpu(spec: str):
    return pytest.param(spec, marks=pytest.mark.gpu, id=spec)


# Every place a round trip is tried; those missing here are skipped.
SPECS = [
    "numpy",
    "torch:cpu",
    "jax:cpu",
    "array_api_strict",
    "array_api_strict:device1",
    "array_api_strict:device2",
    gpu("cupy:0"),
    pytest.param("torch:cuda:0", id="torch:cuda:0"),
]

# Values chosen to catch lossy moves: signed zero, nan, inf, subnormals,
# integers beyond float precision, the ends of uint8.
SAMPLES = {
    "float32": np.array([[0.0, -0.0, np.nan, np.inf], [-np.inf, 1e-45, 3.4e38, 1 / 3]], np.float32),
    "float64": np.array([[0.0, -0.0, np.nan, np.inf], [-np.inf, 5e-324, 1.7e308, 1 / 3]], np.float64),
    "uint8": np.array([[0, 1, 127, 128], [200, 254, 255, 7]], np.uint8),
    "int64": np.array([[0, -1, 2**62 + 1, -(2**63)], [2**63 - 1, 3, -5, 9]], np.int64),
    "bool": np.array([[True, False, True, True], [False, False, True, False]]),
}


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def dtype_name(x) -> str:
    return str(x.dtype).rsplit(".", 1)[-1]


# --- import hygiene ---------------------------------------------------------------


def test_import_loads_no_array_library():
    code = (
        "import sys, numpy, portacnn.backends as B\n"
        "B.to_numpy(numpy.zeros(2)); B.placement_of(numpy.zeros(2)); B.parse_spec('numpy')\n"
        "print(sorted(m for m in ('torch', 'jax', 'cupy', 'array_api_strict') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_jax_backend_itself_turns_on_float64():
    """The test harness enables jax_enable_x64 for the whole pytest process, which would hide a
    backend that stopped doing it; a fresh interpreter shows what a user gets."""
    pytest.importorskip("jax")
    code = (
        "import numpy, portacnn.backends as B\n"
        "print(B.dtype_name(B.to_device(numpy.zeros(2), 'jax')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "float64"


# --- parse_spec -------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, canonical",
    [
        ("numpy", "numpy"),
        ("numpy:cpu", "numpy"),
        (" NumPy ", "numpy"),
        ("torch", "torch:cpu"),
        ("torch:cpu", "torch:cpu"),
        ("torch:cuda:0", "torch:cuda:0"),
        ("jax", None),  # jax's first device: cpu:0 here, gpu:0 on a GPU machine
        ("jax:cpu", "jax:cpu:0"),
        ("jax:cpu:0", "jax:cpu:0"),
        ("array_api_strict", "array_api_strict:CPU_DEVICE"),
        ("array_api_strict:device1", "array_api_strict:device1"),
        ("array-api-strict:device2", "array_api_strict:device2"),
        pytest.param("cupy", "cupy:0", marks=pytest.mark.gpu),
        pytest.param("cupy:0", "cupy:0", marks=pytest.mark.gpu),
        pytest.param("cupy:1", "cupy:1", marks=pytest.mark.gpu),
    ],
)
def test_parse_spec_accepts(spec, canonical):
    place = require(spec)
    assert isinstance(place, B.Placement)
    if canonical is not None:
        assert place.spec == canonical
    assert str(place) == place.spec
    # The canonical spec parses back to an equal placement; a Placement passes through.
    again = B.parse_spec(place.spec)
    assert again == place and hash(again) == hash(place)
    assert B.parse_spec(place) is place
    assert hasattr(place.namespace, "asarray")


def test_parse_spec_rejects_unknown_backend_listing_known_ones():
    with pytest.raises(BackendError) as info:
        B.parse_spec("tensorflow:gpu")
    assert isinstance(info.value, ValueError)
    for name in ("numpy", "cupy", "torch", "jax", "array_api_strict"):
        assert name in str(info.value)


@pytest.mark.parametrize(
    "spec, listed",
    [
        ("numpy:gpu", "numpy:cpu"),
        ("torch:cuda:99", "torch:cpu"),
        ("torch:banana", "torch:cpu"),
        ("jax:tpu:7", "jax:cpu:0"),
        ("array_api_strict:device9", "array_api_strict:device1"),
    ],
)
def test_parse_spec_rejects_unknown_device_listing_valid_ones(spec, listed):
    require(spec.rsplit(":", 1)[0].split(":")[0])
    with pytest.raises(BackendError, match="valid") as info:
        B.parse_spec(spec)
    assert listed in str(info.value)


@pytest.mark.parametrize("junk", ["", ":", "numpy torch", 42, ["numpy"]])
def test_parse_spec_rejects_junk(junk):
    with pytest.raises(BackendError):
        B.parse_spec(junk)


@pytest.mark.parametrize(
    "name, hint",
    [
        ("torch", "pip install torch"),
        ("jax", "pip install jax"),
        ("array_api_strict", "pip install array-api-strict"),
        ("cupy", "portacnn[cuda12]"),
    ],
)
def test_unavailable_backend_says_what_to_install(monkeypatch, name, hint):
    monkeypatch.setattr(B.get_backend(name), "is_available", lambda: False)
    with pytest.raises(BackendError, match="not usable") as info:
        B.parse_spec(name)
    assert hint in str(info.value)


# --- default_spec -----------------------------------------------------------------


def test_default_spec_is_numpy_without_env(monkeypatch):
    monkeypatch.delenv(B.ENV_VAR, raising=False)
    assert B.default_spec() == "numpy"
    assert B.parse_spec(None).spec == "numpy"
    monkeypatch.setenv(B.ENV_VAR, "  ")
    assert B.default_spec() == "numpy"


def test_default_spec_honours_env(monkeypatch):
    monkeypatch.setenv(B.ENV_VAR, "array_api_strict:device1")
    assert B.default_spec() == "array_api_strict:device1"
    assert require(None).spec == "array_api_strict:device1"


# --- to_device / to_numpy round trips ----------------------------------------------


@pytest.mark.parametrize("dtype", list(SAMPLES))
@pytest.mark.parametrize("spec", SPECS)
def test_round_trip_keeps_bits_and_dtype(spec, dtype):
    target = require(spec)
    host = SAMPLES[dtype]
    if dtype == "float64" and not target.supports_float64:
        pytest.skip(f"{spec} has no float64")
    x = B.to_device(host, spec)
    assert B.placement_of(x) == target
    assert dtype_name(x) == dtype
    back = B.to_numpy(x)
    assert isinstance(back, np.ndarray)
    assert same_bits(back, host)
    assert B.placement_of(x) == target  # reading it back did not move it
    # The result is the caller's own: writing to it changes neither x nor host.
    back[...] = back[0, 1]
    assert same_bits(B.to_numpy(x), host)
    assert same_bits(SAMPLES[dtype], host)


def test_to_device_does_not_share_memory_with_numpy_input():
    for spec in ("numpy:cpu", "torch:cpu", "jax:cpu", "array_api_strict:device1"):
        target = require(spec)
        host = np.arange(4.0)
        x = B.to_device(host, target)
        if target.backend == "numpy":
            assert x is host  # already there: no copy
            continue
        host[0] = 99.0
        assert B.to_numpy(x)[0] == 0.0, spec


def test_to_numpy_of_numpy_is_a_copy():
    host = np.arange(3)
    out = B.to_numpy(host)
    out[0] = 7
    assert host[0] == 0


def test_to_device_is_a_no_op_when_already_there():
    for spec in ("numpy", "torch:cpu", "jax:cpu", "array_api_strict:device1"):
        target = require(spec)
        x = B.to_device(np.ones(3, np.float32), spec)
        assert B.to_device(x, spec) is x
        assert B.to_device(x, target) is x


def test_to_device_refuses_float64_where_device_lacks_it():
    require("array_api_strict")
    with pytest.raises(DTypeError, match="float64"):
        B.to_device(np.zeros(2), "array_api_strict:no_float64")
    x = B.to_device(np.zeros(2, np.float32), "array_api_strict:no_float64")
    assert B.placement_of(x).spec == "array_api_strict:no_float64"


# --- moves between two non-numpy libraries ---------------------------------------

PAIRS = [
    ("torch:cpu", "jax:cpu"),
    ("jax:cpu", "torch:cpu"),
    ("array_api_strict:device1", "torch:cpu"),
    ("torch:cpu", "array_api_strict:device1"),
    ("jax:cpu", "array_api_strict:device1"),
    ("array_api_strict:device1", "array_api_strict:device2"),
    pytest.param("torch:cuda:0", "cupy:0", marks=pytest.mark.gpu),
    pytest.param("cupy:0", "torch:cuda:0", marks=pytest.mark.gpu),
]


@pytest.fixture(params=["dlpack", "host"])
def move_path(request, monkeypatch):
    """Run a test once as shipped (DLPack first) and once forced onto the host path."""
    if request.param == "host":
        monkeypatch.setattr(B, "_via_dlpack", lambda x, target: None)
    return request.param


@pytest.mark.parametrize("dtype", list(SAMPLES))
@pytest.mark.parametrize("source, dest", PAIRS)
def test_move_between_libraries(source, dest, dtype, move_path):
    src, dst = require(source), require(dest)
    host = SAMPLES[dtype]
    x = B.to_device(host, src)
    y = B.to_device(x, dst)
    assert B.placement_of(y) == dst
    assert dtype_name(y) == dtype
    assert same_bits(B.to_numpy(y), host)
    assert B.placement_of(x) == src  # the source stays where it was


@pytest.mark.parametrize("source, dest", [p for p in PAIRS if isinstance(p, tuple)])
def test_moved_array_does_not_alias_a_mutable_source(source, dest, move_path):
    # jax's from_dlpack shares memory even when asked to copy; an in-place
    # update of the torch tensor must not leak into the (immutable) jax array.
    src = require(source)
    require(dest)
    if not src.mutable_arrays:
        pytest.skip(f"{source} arrays cannot be updated in place")
    x = B.to_device(np.zeros(3, np.float32), source)
    y = B.to_device(x, dest)
    x[0] = 5.0
    assert B.to_numpy(y)[0] == 0.0


# --- placement_of -----------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS)
def test_placement_of_each_backend(spec):
    target = require(spec)
    x = B.to_device(np.zeros((2, 2), np.float32), target)
    assert B.placement_of(x) == target
    assert B.placement_of(x).spec == target.spec


def test_placement_of_native_arrays():
    assert B.placement_of(np.zeros(2)).spec == "numpy"
    torch = pytest.importorskip("torch")
    assert B.placement_of(torch.zeros(2)).spec == "torch:cpu"
    jnp = pytest.importorskip("jax.numpy")
    assert B.placement_of(jnp.zeros(2)).spec.startswith("jax:")
    xp = pytest.importorskip("array_api_strict")
    x = xp.zeros(2, device=xp.Device("device2"))
    assert B.placement_of(x).spec == "array_api_strict:device2"


@pytest.mark.parametrize("value", [[1.0, 2.0], 3.0, 7, "abc", None])
def test_placement_of_rejects_non_arrays(value):
    with pytest.raises(DTypeError, match="convert") as info:
        B.placement_of(value)
    assert isinstance(info.value, TypeError)
    with pytest.raises(TypeError):
        B.to_device(value, "numpy")
    with pytest.raises(TypeError):
        B.to_numpy(value)


# --- available_backends, capabilities, synchronize --------------------------------


def test_available_backends_lists_numpy_and_parseable_devices():
    found = B.available_backends()
    names = [info.name for info in found]
    assert names[0] == "numpy"
    assert found[0].devices == ("numpy",)
    assert len(names) == len(set(names))
    for info in found:
        assert info.name in B.KNOWN_BACKENDS and info.version
        for spec in info.devices:
            assert B.parse_spec(spec).spec == spec


def test_capability_flags():
    assert B.parse_spec("numpy").mutable_arrays
    assert B.parse_spec("numpy").supports_float64
    assert not require("jax").mutable_arrays
    assert require("jax").supports_float64  # x64 is on once portacnn loads jax
    assert require("torch:cpu").supports_float64
    assert not require("array_api_strict:no_float64").supports_float64
    assert B.parse_spec("numpy").writable_views
    assert not require("jax").writable_views
    assert require("torch:cpu").native_kernels  # tests/test_native_kernels.py checks them against the generic math
    assert not B.parse_spec("numpy").native_kernels


@pytest.mark.parametrize("spec", SPECS)
def test_writable_views_flag_tells_the_truth(spec):
    """A backend that declares writable_views must really write through a slice's
    in-place add: the conv and pool backward rely on it."""
    target = require(spec)
    x = B.to_device(np.zeros((2, 4, 4, 3), np.float32), target)
    if not target.writable_views:
        pytest.skip(f"{spec} does not declare writable views")
    window = x[:, 1:3, 0:4:2, :]
    window += B.to_device(np.ones((2, 2, 2, 3), np.float32), target)
    expected = np.zeros((2, 4, 4, 3), np.float32)
    expected[:, 1:3, 0:4:2, :] = 1.0
    np.testing.assert_array_equal(B.to_numpy(x), expected)


@pytest.mark.parametrize("spec", SPECS)
def test_synchronize_accepts_specs_arrays_and_lists(spec):
    target = require(spec)
    x = B.to_device(np.ones(3, np.float32), target)
    assert B.synchronize(spec) == spec
    assert B.synchronize(target) is target
    assert B.synchronize(x) is x
    pair = [x, x]
    assert B.synchronize(pair) is pair


# --- awkward layouts and the DLPack path --------------------------------------------

CPU_SPECS = ["numpy", "torch:cpu", "jax:cpu", "array_api_strict:device1"]


@pytest.mark.parametrize("dest", CPU_SPECS)
@pytest.mark.parametrize("source", CPU_SPECS)
def test_moves_of_strided_views(source, dest):
    # Negative strides once crashed the whole process inside torch's DLPack
    # importer; transposes and slices must arrive with their values in order.
    require(source), require(dest)
    grid = np.arange(60, dtype=np.float32).reshape(3, 4, 5)
    views = {
        "reversed": grid[:, ::-1, ::-2],
        "transposed": grid.transpose(2, 0, 1),
        "sliced": grid[1:, ::2, 1:4],
        "empty": grid[:, :0, :],
        "scalar": grid[1, 2, 3],
    }
    for label, view in views.items():
        if source == "numpy":
            x = view
        else:  # make the view natively in the source library
            x = B.to_device(grid, source)
            x = x[1, 2, 3] if label == "scalar" else _same_view(B.parse_spec(source).namespace, x, label)
        y = B.to_device(x, dest)
        assert same_bits(B.to_numpy(y), np.array(view)), (label, source, dest)


def _same_view(xp, x, label):
    if label == "reversed":  # not every library slices with negative steps
        x = xp.flip(x, axis=(1, 2))
        return x[:, :, ::2]
    if label == "transposed":
        return xp.permute_dims(x, (2, 0, 1))
    if label == "sliced":
        return x[1:, ::2, 1:4]
    return x[:, :0, :]


def test_dlpack_path_is_taken_between_accelerator_libraries():
    # On a CPU-only machine torch -> jax is the case that exercises DLPack.
    require("torch:cpu"), require("jax:cpu")
    x = B.to_device(np.arange(6, dtype=np.float64), "torch:cpu")
    moved = B._via_dlpack(x, B.parse_spec("jax:cpu"))
    assert moved is not None
    assert B.placement_of(moved).spec == "jax:cpu:0" and dtype_name(moved) == "float64"
    # Host arrays skip it (the host path is no dearer).
    assert B._via_dlpack(np.arange(3.0), B.parse_spec("torch:cpu")) is None
