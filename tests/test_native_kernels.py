"""The fused kernels of backends that declare ``native_kernels`` (torch) against the generic math.

Each test runs an op (or a whole training step) twice on the same torch
tensors: once as shipped, on PyTorch's own conv2d / max_pool2d and their
backwards, and once inside ``generic_only()``, on the array-API math every
other backend runs. float64 must agree to summation order, float32 ops
within the project's float32 tolerance (rtol 1e-5, atol 1e-6 x max|reference|);
a whole float32 network is held to float64 math instead (see its test).
"""

from __future__ import annotations

import importlib.util
import itertools
import subprocess
import sys

import numpy as np
import pytest

import portacnn
import portacnn.backends as B
from portacnn import functional as F
from portacnn import nn
from portacnn._arrays import native_kernels_for
from portacnn.backends._base import FLAGS
from portacnn.errors import PortacnnError
from portacnn.functional._native import generic_only
from portacnn.models import create
from portacnn.testing import TOLERANCES, assert_close

DTYPES = ("float64", "float32")


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _tensor(torch, host: np.ndarray, dtype: str):
    return torch.from_numpy(np.ascontiguousarray(host)).to(getattr(torch, dtype))


def _both_paths(run):
    """``run()`` on the native kernels, then on the generic math: ``(native, generic)``."""
    native = run()
    with generic_only():
        generic = run()
    return native, generic


def _assert_same(native, generic, dtype: str, name: str):
    rtol, atol = TOLERANCES[dtype]
    assert tuple(native.shape) == tuple(generic.shape), f"{name}: shape {tuple(native.shape)} vs {tuple(generic.shape)}"
    assert native.dtype == generic.dtype, name
    assert_close(native, generic, rtol, atol, name=name)


# --------------------------------------------------------------------------
# the flag and the lookup


def test_only_torch_declares_native_kernels_and_each_declared_module_exists():
    assert "native_kernels" in FLAGS
    for name in B.BUILTIN_BACKENDS:
        declared = B.get_backend(name).native_kernels  # the backend module itself: no library is imported
        assert isinstance(declared, bool), name
        assert declared == (name == "torch"), name
        if declared:
            assert importlib.util.find_spec(f"portacnn.functional._native.{name}") is not None, name


def test_a_backend_without_the_flag_never_gets_kernels():
    assert not B.parse_spec("numpy").native_kernels
    assert native_kernels_for(np.zeros((1, 1, 2, 2))) is None
    x = np.random.default_rng(0).standard_normal((1, 2, 5, 5))
    F.conv2d(x, np.ones((3, 2, 3, 3)))  # runs the generic math, as it always has
    for spec in ("jax", "array_api_strict"):
        try:
            array = B.to_device(np.zeros(2), spec)
        except PortacnnError:
            continue
        assert native_kernels_for(array) is None, spec


def test_a_numpy_training_step_imports_neither_torch_nor_its_kernels():
    code = (
        "import sys, numpy\n"
        "from portacnn import nn\n"
        "from portacnn.models import lenet\n"
        "model = lenet(dtype='float64')\n"
        "nn.CrossEntropyLoss()(model(numpy.zeros((2, 1, 28, 28))), numpy.array([1, 2])).backward()\n"
        "print(sorted(m for m in ('torch', 'portacnn.functional._native.torch') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_torch_gets_its_kernels_and_generic_only_switches_them_off(torch):
    assert B.parse_spec("torch").native_kernels
    x = torch.zeros(1)
    kernels = native_kernels_for(x)
    assert kernels is not None and kernels.__name__ == "portacnn.functional._native.torch"
    with generic_only():
        assert native_kernels_for(x) is None
        with generic_only():
            assert native_kernels_for(x) is None
        assert native_kernels_for(x) is None
    assert native_kernels_for(x) is kernels


# --------------------------------------------------------------------------
# conv2d


def _conv_cases():
    cases = []
    for stride, padding, dilation, groups, bias, kernel in itertools.product(
            (1, 2), (0, 1, 2), (1, 2), (1, 2, "depthwise"), (True, False), ((3, 3), (2, 3))):
        cases.append(pytest.param(stride, padding, dilation, groups, bias, kernel,
                                  id=f"s{stride}-p{padding}-d{dilation}-g{groups}-{'bias' if bias else 'nobias'}"
                                     f"-k{kernel[0]}x{kernel[1]}"))
    return cases


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("stride, padding, dilation, groups, bias, kernel", _conv_cases())
def test_conv2d_forward_and_backward_match_the_generic_math(torch, dtype, stride, padding, dilation, groups, bias,
                                                            kernel):
    rng = np.random.default_rng(7)
    channels = 4
    groups = channels if groups == "depthwise" else groups
    out_channels = 6 if groups != channels else channels
    x = _tensor(torch, rng.standard_normal((2, channels, 9, 8)), dtype)
    w = _tensor(torch, rng.standard_normal((out_channels, channels // groups, *kernel)), dtype)
    b = _tensor(torch, rng.standard_normal(out_channels), dtype) if bias else None
    options = {"stride": stride, "padding": padding, "dilation": dilation, "groups": groups}
    inputs = [value.clone() for value in (x, w)]

    native, generic = _both_paths(lambda: F.conv2d(x, w, b, **options))
    _assert_same(native, generic, dtype, "conv2d")
    g = _tensor(torch, rng.standard_normal(tuple(generic.shape)), dtype)
    natives, generics = _both_paths(lambda: F.conv2d_backward(g, x, w, **options))
    for got, want, name in zip(natives, generics, ("grad_x", "grad_weight", "grad_bias")):
        _assert_same(got, want, dtype, name)
    assert natives[1].is_contiguous(), "a parameter's gradient has the parameter's layout"
    for before, after in zip(inputs, (x, w)):
        assert torch.equal(before, after), "a kernel wrote into its input"


def test_conv2d_backward_native_skips_the_gradients_nobody_needs(torch):
    rng = np.random.default_rng(8)
    x = _tensor(torch, rng.standard_normal((2, 3, 6, 6)), "float64")
    w = _tensor(torch, rng.standard_normal((4, 3, 3, 3)), "float64")
    _, geometry = F.conv_geometry(x, w, padding=1)
    g = torch.ones((2, 4, 6, 6), dtype=torch.float64)
    kernels = native_kernels_for(x)
    grad_x, grad_weight, grad_bias = F.conv2d_backward_native(kernels, g, x, w, geometry, (False, True, False))
    assert grad_x is None and grad_bias is None
    _assert_same(grad_weight, F.conv2d_backward(g, x, w, padding=1)[1], "float64", "grad_weight")


# --------------------------------------------------------------------------
# max_pool2d


def _pool_cases():
    cases = []
    for kernel, stride, padding, ceil_mode in itertools.product((2, 3, (2, 3)), (None, 1, 2), (0, 1), (False, True)):
        name = f"k{kernel}-s{stride}-p{padding}-{'ceil' if ceil_mode else 'floor'}".replace(" ", "")
        cases.append(pytest.param(kernel, stride, padding, ceil_mode, id=name))
    return cases


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kernel, stride, padding, ceil_mode", _pool_cases())
def test_max_pool2d_forward_and_backward_match_the_generic_math(torch, dtype, kernel, stride, padding, ceil_mode):
    rng = np.random.default_rng(9)
    x = _tensor(torch, rng.standard_normal((2, 3, 7, 8)), dtype)
    before = x.clone()
    options = {"kernel_size": kernel, "stride": stride, "padding": padding, "ceil_mode": ceil_mode}

    native, generic = _both_paths(lambda: F.max_pool2d(x, **options))
    _assert_same(native, generic, dtype, "max_pool2d")
    g = _tensor(torch, rng.standard_normal(tuple(generic.shape)), dtype)
    native, generic = _both_paths(lambda: F.max_pool2d_backward(g, x, **options))
    _assert_same(native, generic, dtype, "max_pool2d_backward")
    out, argmax = F.max_pool2d_with_argmax(x, **options)
    assert argmax is not None
    _assert_same(F.max_pool2d_backward(g, x, **options, argmax=argmax), generic, dtype, "backward from argmax")
    _assert_same(F.max_pool2d_backward(g, x, **options, forward_output=out), generic, dtype,
                 "backward from forward_output")
    assert torch.equal(before, x), "a kernel wrote into its input"


def test_max_pool2d_of_any_layout_matches(torch):
    """Inputs and gradients as other layers hand them on: NCHW, channels-last and batch-last views."""
    rng = np.random.default_rng(14)
    host, grad_host = rng.standard_normal((3, 4, 8, 8)), rng.standard_normal((3, 4, 4, 4))
    nchw, grad_nchw = _tensor(torch, host, "float64"), _tensor(torch, grad_host, "float64")
    batch_last = _tensor(torch, host.transpose(1, 2, 3, 0), "float64").permute(3, 0, 1, 2)
    grad_batch_last = _tensor(torch, grad_host.transpose(1, 2, 3, 0), "float64").permute(3, 0, 1, 2)
    channels_last = nchw.contiguous(memory_format=torch.channels_last)
    with generic_only():
        expected, expected_grad = F.max_pool2d(nchw, 2), F.max_pool2d_backward(grad_nchw, nchw, 2)
    for x in (nchw, batch_last, channels_last):
        _assert_same(F.max_pool2d(x, 2), expected, "float64", "max_pool2d")
        for g in (grad_nchw, grad_batch_last):
            _assert_same(F.max_pool2d_backward(g, x, 2), expected_grad, "float64", "max_pool2d_backward")


@pytest.mark.parametrize("kernel, stride, padding", [(2, 2, 0), (3, 1, 1), (3, 2, 1), (2, 1, 0)])
def test_max_pool2d_ties_go_to_the_first_maximum_on_both_paths(torch, kernel, stride, padding):
    """All-equal inputs and a few distinct values: PyTorch hands each window's gradient to its first maximum in
    row-major order, and the generic math does the same."""
    options = {"kernel_size": kernel, "stride": stride, "padding": padding}
    levels = np.random.default_rng(10).integers(0, 2, (2, 2, 6, 7)).astype(np.float64)
    for host in (np.ones((2, 2, 6, 7)), levels):
        x = _tensor(torch, host, "float64")
        g = torch.ones(F.max_pool2d(x, **options).shape, dtype=torch.float64)
        native, generic = _both_paths(lambda g=g, x=x: F.max_pool2d_backward(g, x, **options))
        assert torch.equal(native, generic)
    # All equal, disjoint 2x2 windows: each window's top-left element takes it all.
    x = torch.ones((1, 1, 4, 4), dtype=torch.float64)
    grad = F.max_pool2d_backward(torch.ones((1, 1, 2, 2), dtype=torch.float64), x, 2)
    expected = np.zeros((1, 1, 4, 4))
    expected[..., ::2, ::2] = 1.0
    np.testing.assert_array_equal(B.to_numpy(grad), expected)


# --------------------------------------------------------------------------
# errors read the same on both paths


def _error(run):
    with pytest.raises(PortacnnError) as info:
        run()
    return type(info.value), str(info.value)


@pytest.mark.parametrize("call", [
    lambda t: F.conv2d(t.zeros((1, 3, 5, 5)), t.zeros((2, 4, 3, 3))),
    lambda t: F.conv2d(t.zeros((1, 3, 2, 2)), t.zeros((2, 3, 3, 3))),
    lambda t: F.conv2d_backward(t.zeros((1, 2, 4, 4)), t.zeros((1, 3, 5, 5)), t.zeros((2, 3, 3, 3))),
    lambda t: F.conv2d_backward(t.zeros((1, 2, 3, 3), dtype=t.float64), t.zeros((1, 3, 5, 5)), t.zeros((2, 3, 3, 3))),
    lambda t: F.max_pool2d(t.zeros((1, 3, 5, 5)), 2, padding=2),
    lambda t: F.max_pool2d_backward(t.zeros((1, 3, 3, 3)), t.zeros((1, 3, 5, 5)), 2),
    lambda t: F.max_pool2d_backward(t.zeros((1, 3, 2, 2)), t.zeros((1, 3, 5, 5)), 2, forward_output=t.zeros(2)),
], ids=["conv-channels", "conv-too-small", "conv-grad-shape", "conv-grad-dtype", "pool-padding", "pool-grad-shape",
        "pool-forward-output"])
def test_errors_are_the_same_on_both_paths(torch, call):
    native, generic = _both_paths(lambda: _error(lambda: call(torch)))
    assert native == generic


# --------------------------------------------------------------------------
# through the tape


def _grads(model, x, y):
    for p in model.parameters():
        p.grad = None
    loss = nn.CrossEntropyLoss()(model(x), y)
    loss.backward()
    return [loss.data] + [p.grad for p in model.parameters()]


def test_lenet_training_step_matches_the_generic_math(torch):
    model = create("lenet", device="torch", dtype="float64")
    rng = np.random.default_rng(11)
    x = _tensor(torch, rng.standard_normal((4, 1, 28, 28)), "float64")
    y = torch.from_numpy(rng.integers(0, 10, 4))
    native, generic = _both_paths(lambda: _grads(model, x, y))
    names = ["loss"] + [name for name, _ in model.named_parameters()]
    assert len(native) == len(names)
    for got, want, name in zip(native, generic, names):
        _assert_same(got, want, "float64", name)


def test_lenet_training_step_in_float32_stays_close_to_exact_math_on_both_paths(torch):
    """A whole network compounds each layer's float32 rounding, and the two paths sum in different orders,
    so they are held to 10x the per-op tolerance, against float64 math on the same float32 values."""
    model = create("lenet", device="torch", dtype="float32")
    exact = create("lenet", device="torch", dtype="float64")
    exact.load_state_dict({name: value.double() for name, value in model.state_dict().items()})
    rng = np.random.default_rng(11)
    x = _tensor(torch, rng.standard_normal((4, 1, 28, 28)), "float32")
    y = torch.from_numpy(rng.integers(0, 10, 4))
    expected = _grads(exact, x.double(), y)
    rtol, atol = (10 * tolerance for tolerance in TOLERANCES["float32"])
    names = ["loss"] + [name for name, _ in model.named_parameters()]
    for path, results in zip(("native", "generic"), _both_paths(lambda: _grads(model, x, y))):
        for got, want, name in zip(results, expected, names):
            assert_close(got, want, rtol, atol, name=f"{path} {name}")


def test_a_model_mixing_native_and_generic_layers_has_the_right_gradient(torch):
    """The generic average pool hands on NCHW views of batch-last memory, the native layers channels-last
    tensors (on the CPU): each side must take the other's layout, forward and backward."""
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1, dtype="float64", device="torch"), nn.AvgPool2d(2),
        nn.Conv2d(4, 5, 3, stride=2, dtype="float64", device="torch"), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
        nn.Conv2d(5, 3, 1, dtype="float64", device="torch"))
    rng = np.random.default_rng(12)
    host = rng.standard_normal((3, 2, 14, 13))
    weights = rng.standard_normal((3, 3, 2, 2))

    def run():
        x = portacnn.tensor(_tensor(torch, host, "float64"), requires_grad=True)
        for p in model.parameters():
            p.grad = None
        out = model(x)
        (out * portacnn.tensor(_tensor(torch, weights, "float64"))).sum().backward()
        return [out.data, x.grad] + [p.grad for p in model.parameters()]

    native, generic = _both_paths(run)
    for index, (got, want) in enumerate(zip(native, generic)):
        _assert_same(got, want, "float64", f"result {index}")


def test_the_tape_keeps_the_input_not_a_patch_matrix(torch):
    conv = nn.Conv2d(2, 3, 3, dtype="float64", device="torch")
    x = torch.ones((1, 2, 5, 5), dtype=torch.float64)
    node = conv(x).grad_fn
    assert node.kernels is not None and not hasattr(node, "patches")
    with generic_only():
        assert conv(x).grad_fn.kernels is None
    pooled = nn.MaxPool2d(2)(portacnn.tensor(x, requires_grad=True))
    assert set(pooled.grad_fn.found) == {"argmax"}


def test_inference_without_a_tape_matches(torch):
    model = create("lenet", device="torch", dtype="float64")
    model.eval()
    x = _tensor(torch, np.random.default_rng(13).standard_normal((3, 1, 28, 28)), "float64")

    def run():
        with portacnn.no_grad():
            return model(x).data

    native, generic = _both_paths(run)
    _assert_same(native, generic, "float64", "logits")
