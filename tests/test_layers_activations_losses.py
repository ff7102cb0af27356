"""The activations, losses and containers that round out ``portacnn.nn`` (issue 11).

Each op is checked against PyTorch (forward, and gradients through
``torch.autograd``, float64, rtol 1e-9) over odd, non-square shapes, by
central finite differences, and on every backend case of conftest.py through
the layers and the tape (the functional ops also sit in test_functional.py's
``PARITY_OPS``). The containers are checked for parameter discovery, state
dict names equal to torch's for the same structure, slicing, and errors.
"""

import math

import numpy as np
import pytest
from conftest import case_params
from support import directional_check, t64, torch_forward_backward

import portacnn
from portacnn import functional as F
from portacnn import nn
from portacnn.backends import to_numpy
from portacnn.errors import (
    ArgumentError,
    ArgumentTypeError,
    DTypeError,
    ModuleIndexError,
    ModuleKeyError,
    PortacnnError,
    ShapeError,
    UsageError,
)
from portacnn.functional import _erf

torch = pytest.importorskip("torch")
TF = torch.nn.functional

#: The issue's bar against PyTorch autograd in float64.
RTOL, ATOL = 1e-9, 1e-12
SHAPES = [(7,), (3, 5), (2, 3, 5, 7)]


def close(actual, expected, rtol=RTOL, atol=ATOL, msg=""):
    """float64 comparison; atol scaled by the array's magnitude, as in conftest."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape} {msg}"
    scale = max(1.0, float(np.max(np.abs(expected[np.isfinite(expected)]), initial=0.0)))
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale, err_msg=msg)


def away_from(points, shape, rng, scale=3.0, gap=0.05):
    """Normal samples times ``scale``, none within ``gap`` of a kink in ``points``."""
    x = rng.standard_normal(shape) * scale
    for p in points:
        near = np.abs(x - p) < gap
        x = np.where(near, p + np.where(x >= p, gap, -gap) * 2, x)
    return x


# ==========================================================================
# erf: the standard has none, so it is Cody's rational approximation


def test_erf_is_exact_to_double_precision_over_a_wide_range():
    x = np.concatenate([np.linspace(-30, 30, 60001), np.geomspace(1e-300, 1e300, 3001),
                        -np.geomspace(1e-300, 1e300, 3001), [0.0, -0.0, 0.46875, -0.46875, 4.0, -4.0]])
    x = np.concatenate([x, np.nextafter(x, np.inf), np.nextafter(x, -np.inf)])  # both sides of each break
    xp = portacnn._arrays.namespace_of(x)
    got, want = _erf.erf(xp, x), np.array([math.erf(v) for v in x])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
    # erfc keeps its relative accuracy in the tail, down to where it leaves the normal range
    got, want = _erf.erfc(xp, x), np.array([math.erfc(v) for v in x])
    normal = want > 1e-300
    np.testing.assert_allclose(got[normal], want[normal], rtol=1e-12, atol=0)
    np.testing.assert_allclose(got[~normal], want[~normal], rtol=0, atol=1e-300)
    # and torch agrees with both
    np.testing.assert_allclose(_erf.erf(xp, x), torch.special.erf(torch.from_numpy(x)).numpy(), rtol=1e-12, atol=0)


def test_erf_special_values():
    x = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0])
    xp = portacnn._arrays.namespace_of(x)
    with np.errstate(over="raise", divide="raise", invalid="raise"):  # no branch overflows or divides by 0
        erf, erfc = _erf.erf(xp, x), _erf.erfc(xp, x)
    np.testing.assert_array_equal(erf, [1.0, -1.0, np.nan, 0.0, 0.0])
    np.testing.assert_array_equal(erfc, [0.0, 2.0, np.nan, 1.0, 1.0])
    assert np.signbit(erf[4])  # erf(-0) = -0


def test_erf_on_every_backend(case):
    x = np.concatenate([np.linspace(-6, 6, 97), [-30.0, 30.0, 1e-8, -1e-8]])
    xp = case.xp
    got = _erf.erf(xp, case.put(x))
    case.assert_close(got, [math.erf(v) for v in case.ref(x)])
    case.assert_close(_erf.erfc(xp, case.put(x)), [math.erfc(v) for v in case.ref(x)])


# ==========================================================================
# activations against torch


#: id -> (ours: x -> out, ours backward: (g, x) -> grad, torch: t -> out, kinks to keep away from)
ACTIVATIONS = {
    "leaky_relu": (F.leaky_relu, F.leaky_relu_backward, TF.leaky_relu, [0.0]),
    "leaky_relu-0.2": (lambda x: F.leaky_relu(x, 0.2), lambda g, x: F.leaky_relu_backward(g, x, 0.2),
                       lambda t: TF.leaky_relu(t, 0.2), [0.0]),
    "leaky_relu-negative": (lambda x: F.leaky_relu(x, negative_slope=-0.3),
                            lambda g, x: F.leaky_relu_backward(g, x, negative_slope=-0.3),
                            lambda t: TF.leaky_relu(t, -0.3), [0.0]),
    "leaky_relu-1.5": (lambda x: F.leaky_relu(x, 1.5), lambda g, x: F.leaky_relu_backward(g, x, 1.5),
                       lambda t: TF.leaky_relu(t, 1.5), [0.0]),
    "elu": (F.elu, F.elu_backward, TF.elu, [0.0]),
    "elu-0.4": (lambda x: F.elu(x, 0.4), lambda g, x: F.elu_backward(g, x, 0.4), lambda t: TF.elu(t, 0.4), [0.0]),
    "elu-2.5": (lambda x: F.elu(x, alpha=2.5), lambda g, x: F.elu_backward(g, x, alpha=2.5),
                lambda t: TF.elu(t, 2.5), [0.0]),
    "gelu": (F.gelu, F.gelu_backward, TF.gelu, []),
    "gelu-tanh": (lambda x: F.gelu(x, approximate="tanh"), lambda g, x: F.gelu_backward(g, x, approximate="tanh"),
                  lambda t: TF.gelu(t, approximate="tanh"), []),
    "silu": (F.silu, F.silu_backward, TF.silu, []),
    "hardswish": (F.hardswish, F.hardswish_backward, TF.hardswish, [-3.0, 3.0]),
}


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_matches_torch(name, shape):
    forward, backward, theirs, kinks = ACTIVATIONS[name]
    rng = np.random.default_rng(1)
    x = away_from(kinks, shape, rng)
    g = rng.standard_normal(shape)
    t_out, (t_grad,) = torch_forward_backward(theirs, [x], g)
    close(forward(x), t_out, msg="forward")
    close(backward(g, x), t_grad, msg="backward")


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_at_extreme_inputs_matches_torch(name):
    """Far tails, tiny inputs and huge ones: finite where torch is, and equal to it."""
    forward, backward, theirs, _ = ACTIVATIONS[name]
    x = np.array([-1e200, -1e10, -700.0, -60.0, -38.0, -20.0, -9.0, -5.0, -1e-9, -1e-300, 0.0,
                  1e-300, 1e-9, 5.0, 9.0, 20.0, 38.0, 60.0, 700.0, 1e10, 1e200])
    g = np.linspace(0.5, 1.5, x.size)
    t_out, (t_grad,) = torch_forward_backward(theirs, [x], g)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        out, grad = forward(x), backward(g, x)
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(grad)), (out, grad)
    # torch's own (1 + erf) and (1 + tanh) lose the tail's relative accuracy: compare at the scale of |x|
    # (torch's tanh-GELU gradient is nan at -1e200, where ours has the limit 0)
    tolerance = RTOL * np.abs(t_out) + 1e-15 * np.maximum(np.abs(x), 1.0)
    assert np.all((np.abs(out - t_out) <= tolerance) | np.isnan(t_out)), (out, t_out)
    finite = np.isfinite(t_grad)
    np.testing.assert_allclose(grad[finite], t_grad[finite], rtol=RTOL, atol=1e-13)


def test_gelu_keeps_relative_accuracy_in_the_negative_tail():
    """x Phi(x) with Phi = erfc(-x / sqrt 2) / 2: the tail that (1 + erf) / 2 rounds away."""
    x = np.array([-5.0, -8.0, -12.0, -20.0, -30.0])
    want = np.array([v * 0.5 * math.erfc(-v * math.sqrt(0.5)) for v in x])  # the argument rounded as gelu does
    np.testing.assert_allclose(F.gelu(x), want, rtol=1e-13)
    doubled = [2 * math.sqrt(2 / math.pi) * (v + 0.044715 * v ** 3) for v in x]  # 2u, all negative here
    tail = x * np.array([math.exp(u) / (1.0 + math.exp(u)) for u in doubled])
    np.testing.assert_allclose(F.gelu(x, approximate="tanh"), tail, rtol=1e-13)


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_finite_differences(name):
    forward, backward, _, kinks = ACTIVATIONS[name]
    rng = np.random.default_rng(2)
    x = away_from(kinks, (3, 4, 5), rng)
    g = rng.standard_normal(x.shape)
    directional_check(forward, [x], {0: backward(g, x)}, g, rng, name=name)


#: layer id -> (ours, torch's)
LAYERS = {
    "LeakyReLU": (lambda: nn.LeakyReLU(), lambda: torch.nn.LeakyReLU()),
    "LeakyReLU-0.2": (lambda: nn.LeakyReLU(0.2), lambda: torch.nn.LeakyReLU(0.2)),
    "ELU": (lambda: nn.ELU(), lambda: torch.nn.ELU()),
    "ELU-0.5": (lambda: nn.ELU(alpha=0.5), lambda: torch.nn.ELU(alpha=0.5)),
    "GELU": (lambda: nn.GELU(), lambda: torch.nn.GELU()),
    "GELU-tanh": (lambda: nn.GELU("tanh"), lambda: torch.nn.GELU("tanh")),
    "SiLU": (lambda: nn.SiLU(), lambda: torch.nn.SiLU()),
    "Hardswish": (lambda: nn.Hardswish(), lambda: torch.nn.Hardswish()),
    "Softmax-1": (lambda: nn.Softmax(dim=1), lambda: torch.nn.Softmax(dim=1)),
    "Softmax--1": (lambda: nn.Softmax(-1), lambda: torch.nn.Softmax(-1)),
    "LogSoftmax-1": (lambda: nn.LogSoftmax(dim=1), lambda: torch.nn.LogSoftmax(dim=1)),
    "LogSoftmax-0": (lambda: nn.LogSoftmax(0), lambda: torch.nn.LogSoftmax(0)),
    "Identity": (lambda: nn.Identity(), lambda: torch.nn.Identity()),
    "Flatten": (lambda: nn.Flatten(), lambda: torch.nn.Flatten()),
    "Flatten-0--1": (lambda: nn.Flatten(0, -1), lambda: torch.nn.Flatten(0, -1)),
    "Flatten-2-3": (lambda: nn.Flatten(2, 3), lambda: torch.nn.Flatten(2, 3)),
    "Flatten--3--2": (lambda: nn.Flatten(start_dim=-3, end_dim=-2), lambda: torch.nn.Flatten(-3, -2)),
    "Flatten-1-1": (lambda: nn.Flatten(1, 1), lambda: torch.nn.Flatten(1, 1)),
    "Flatten-0-0": (lambda: nn.Flatten(0, 0), lambda: torch.nn.Flatten(0, 0)),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_layer_matches_torch_through_the_tape(name):
    ours, theirs = LAYERS[name][0](), LAYERS[name][1]().double()
    rng = np.random.default_rng(3)
    x = away_from([0.0, -3.0, 3.0], (3, 5, 2, 7), rng)
    x_in = portacnn.tensor(x, requires_grad=True)
    out = ours(x_in)
    assert isinstance(out, portacnn.Tensor)
    g = rng.standard_normal(out.shape)
    out.backward(g)
    xt = t64(x, grad=True)
    out_t = theirs(xt)
    out_t.backward(t64(g))
    close(out.data, out_t.detach().numpy(), msg="forward")
    close(x_in.grad, xt.grad.numpy(), msg="input gradient")
    assert repr(ours) == repr(theirs)


def test_defaults_are_torchs():
    pairs = [
        (nn.LeakyReLU().negative_slope, torch.nn.LeakyReLU().negative_slope),
        (nn.ELU().alpha, torch.nn.ELU().alpha),
        (nn.GELU().approximate, torch.nn.GELU().approximate),
        ((nn.Flatten().start_dim, nn.Flatten().end_dim), (torch.nn.Flatten().start_dim, torch.nn.Flatten().end_dim)),
        (nn.Softmax().dim, torch.nn.Softmax().dim),
        (nn.LogSoftmax().dim, torch.nn.LogSoftmax().dim),
    ] + [(getattr(nn, loss)().reduction, getattr(torch.nn, loss)().reduction)
         for loss in ("MSELoss", "L1Loss", "NLLLoss", "BCEWithLogitsLoss")]
    for ours, theirs in pairs:
        assert ours == theirs


# ==========================================================================
# losses against torch


def _float_target(rng, shape):
    return rng.standard_normal(shape)


#: id -> (ours, ours backward, torch's, target maker, input shapes)
LOSSES = {
    "mse_loss": (F.mse_loss, F.mse_loss_backward, TF.mse_loss, _float_target),
    "l1_loss": (F.l1_loss, F.l1_loss_backward, TF.l1_loss, _float_target),
    "binary_cross_entropy_with_logits": (F.binary_cross_entropy_with_logits,
                                         F.binary_cross_entropy_with_logits_backward,
                                         TF.binary_cross_entropy_with_logits,
                                         lambda rng, shape: rng.uniform(0, 1, shape)),
}
REDUCTIONS = ["mean", "sum", "none"]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", list(LOSSES))
def test_paired_loss_matches_torch(name, shape, reduction):
    """Loss and the gradients with respect to both the input and the target."""
    ours, backward, theirs, target = LOSSES[name]
    rng = np.random.default_rng(4)
    x, t = rng.standard_normal(shape) * 3, target(rng, shape)
    out = ours(x, t, reduction=reduction)
    g = rng.standard_normal(np.shape(out))
    t_out, (t_gx, t_gt) = torch_forward_backward(lambda a, b: theirs(a, b, reduction=reduction), [x, t], g)
    close(out, t_out, msg="loss")
    gx, gt = backward(g, x, t, reduction=reduction)
    close(gx, t_gx, msg="input gradient")
    close(gt, t_gt, msg="target gradient")


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("n,c", [(1, 1), (5, 3), (7, 11)])
def test_nll_loss_matches_torch(n, c, reduction):
    rng = np.random.default_rng(5)
    x = F.log_softmax(rng.standard_normal((n, c)) * 2, axis=1)
    labels = rng.integers(0, c, n)
    out = F.nll_loss(x, labels, reduction=reduction)
    g = rng.standard_normal(np.shape(out))
    xt = t64(x, grad=True)
    out_t = TF.nll_loss(xt, torch.tensor(labels), reduction=reduction)
    (t_grad,) = torch.autograd.grad(out_t, [xt], grad_outputs=t64(g))
    close(out, out_t.detach().numpy())
    close(F.nll_loss_backward(g, x, labels, reduction=reduction), t_grad.numpy())


def test_log_softmax_then_nll_loss_is_cross_entropy():
    rng = np.random.default_rng(6)
    logits, labels = rng.standard_normal((6, 9)) * 3, rng.integers(0, 9, 6)
    close(F.nll_loss(F.log_softmax(logits, axis=1), labels), F.cross_entropy(logits, labels), rtol=1e-14)


def test_nll_loss_ignores_minus_infinity_in_other_classes():
    """log(0) of a class that is not the label must not turn the loss into nan (0 * -inf)."""
    x = np.array([[math.log(0.5), math.log(0.5), -np.inf], [-np.inf, 0.0, -np.inf]])
    labels = np.array([0, 1])
    with np.errstate(invalid="raise"):
        loss = F.nll_loss(x, labels, reduction="none")
        grad = F.nll_loss_backward(np.ones(2), x, labels, reduction="none")
    np.testing.assert_allclose(loss, [math.log(2), 0.0])
    np.testing.assert_array_equal(grad, [[-1, 0, 0], [0, -1, 0]])


def test_bce_with_logits_is_finite_at_extreme_logits_and_matches_torch():
    x = np.array([[-1e4, -800.0, -40.0, -1e-12, 0.0], [1e-12, 40.0, 800.0, 1e4, 3.0]])
    t = np.array([[0.0, 1.0, 0.3, 1.0, 0.5], [0.0, 1.0, 0.0, 1.0, 0.9]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        gx, gt = F.binary_cross_entropy_with_logits_backward(np.ones_like(x), x, t, reduction="none")
    t_out, (t_gx, t_gt) = torch_forward_backward(
        lambda a, b: TF.binary_cross_entropy_with_logits(a, b, reduction="none"), [x, t], np.ones_like(x))
    close(loss, t_out)
    close(gx, t_gx)
    close(gt, t_gt)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", list(LOSSES))
def test_paired_loss_finite_differences(name, reduction):
    ours, backward, _, target = LOSSES[name]
    rng = np.random.default_rng(7)
    x = away_from([0.0], (4, 3, 5), rng)
    t = target(rng, x.shape)
    if name == "l1_loss":
        t = x + away_from([0.0], x.shape, rng, scale=1.0)  # no element where input == target (|d|'s kink)
    g = rng.standard_normal(np.shape(ours(x, t, reduction=reduction)))
    gx, gt = backward(g, x, t, reduction=reduction)
    directional_check(lambda a, b: ours(a, b, reduction=reduction), [x, t], {0: gx, 1: gt}, g, rng, name=name)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nll_loss_finite_differences(reduction):
    rng = np.random.default_rng(8)
    x, labels = rng.standard_normal((7, 4)), rng.integers(0, 4, 7)
    g = rng.standard_normal(np.shape(F.nll_loss(x, labels, reduction=reduction)))
    directional_check(lambda a: F.nll_loss(a, labels, reduction=reduction), [x],
                      {0: F.nll_loss_backward(g, x, labels, reduction=reduction)}, g, rng, name="nll_loss")


#: layer id -> (ours, torch's, target maker: (rng, input shape) -> target)
LOSS_LAYERS = {
    "MSELoss": (lambda: nn.MSELoss(), lambda: torch.nn.MSELoss(), _float_target),
    "L1Loss-sum": (lambda: nn.L1Loss(reduction="sum"), lambda: torch.nn.L1Loss(reduction="sum"), _float_target),
    "BCEWithLogitsLoss-none": (lambda: nn.BCEWithLogitsLoss(reduction="none"),
                               lambda: torch.nn.BCEWithLogitsLoss(reduction="none"),
                               lambda rng, shape: rng.uniform(0, 1, shape)),
    "NLLLoss": (lambda: nn.NLLLoss(), lambda: torch.nn.NLLLoss(),
                lambda rng, shape: rng.integers(0, shape[1], shape[0])),
    "NLLLoss-sum": (lambda: nn.NLLLoss(reduction="sum"), lambda: torch.nn.NLLLoss(reduction="sum"),
                    lambda rng, shape: rng.integers(0, shape[1], shape[0])),
}


@pytest.mark.parametrize("name", list(LOSS_LAYERS))
def test_loss_layer_trains_a_linear_layer_as_torch_does(name):
    """The loss behind a Linear layer: the loss, the weight gradients and the target gradient equal torch's."""
    ours, theirs, target = LOSS_LAYERS[name]
    rng = np.random.default_rng(9)
    layer = nn.Linear(6, 5, rng=0, dtype="float64")
    torch_layer = torch.nn.Linear(6, 5).double()
    with torch.no_grad():
        torch_layer.weight.copy_(torch.from_numpy(layer.weight.data))
        torch_layer.bias.copy_(torch.from_numpy(layer.bias.data))
    x, t = rng.standard_normal((7, 6)), target(rng, (7, 5))
    floating = t.dtype.kind == "f"
    t_in = portacnn.tensor(t, requires_grad=True) if floating else t
    loss = ours()(layer(x), t_in)
    g = rng.standard_normal(loss.shape)
    loss.backward(g) if loss.shape else loss.backward()
    t_t = t64(t, grad=True) if floating else torch.from_numpy(t)
    loss_t = theirs()(torch_layer(t64(x)), t_t)
    loss_t.backward(t64(g) if loss.shape else None)
    close(loss.data, loss_t.detach().numpy())
    close(layer.weight.grad, torch_layer.weight.grad.numpy())
    close(layer.bias.grad, torch_layer.bias.grad.numpy())
    if floating:
        close(t_in.grad, t_t.grad.numpy())


# ==========================================================================
# every backend: the layers through the tape, against NumPy float64


BACKEND_LAYERS = {
    "LeakyReLU": (lambda: nn.LeakyReLU(0.1), lambda x: F.leaky_relu(x, 0.1),
                  lambda g, x: F.leaky_relu_backward(g, x, 0.1)),
    "ELU": (lambda: nn.ELU(0.8), lambda x: F.elu(x, 0.8), lambda g, x: F.elu_backward(g, x, 0.8)),
    "GELU": (lambda: nn.GELU(), F.gelu, F.gelu_backward),
    "GELU-tanh": (lambda: nn.GELU(approximate="tanh"), lambda x: F.gelu(x, approximate="tanh"),
                  lambda g, x: F.gelu_backward(g, x, approximate="tanh")),
    "SiLU": (lambda: nn.SiLU(), F.silu, F.silu_backward),
    "Hardswish": (lambda: nn.Hardswish(), F.hardswish, F.hardswish_backward),
    "Softmax": (lambda: nn.Softmax(dim=1), lambda x: F.softmax(x, 1), lambda g, x: F.softmax_backward(g, x, 1)),
    "LogSoftmax": (lambda: nn.LogSoftmax(dim=-1), F.log_softmax, F.log_softmax_backward),
    "Identity": (lambda: nn.Identity(), lambda x: x, lambda g, x: g),
    "Flatten-0-2": (lambda: nn.Flatten(0, 2), lambda x: x.reshape(30, 7), lambda g, x: g.reshape(x.shape)),
}


@pytest.mark.parametrize("name", list(BACKEND_LAYERS))
def test_layer_on_every_backend(case, name):
    make, forward, backward = BACKEND_LAYERS[name]
    rng = np.random.default_rng(10)
    host = away_from([0.0, -3.0, 3.0], (3, 2, 5, 7), rng)
    x = portacnn.tensor(case.put(host), requires_grad=True)
    out = make()(x)
    grad = rng.standard_normal(out.shape)
    out.backward(case.put(grad))
    case.assert_close(out.data, forward(case.ref(host)), err_msg="forward")
    case.assert_close(x.grad, backward(case.ref(grad), case.ref(host)), err_msg="input gradient")


LOSS_CASES = {
    "MSELoss": (lambda: nn.MSELoss(reduction="sum"), F.mse_loss_backward, "sum"),
    "L1Loss": (lambda: nn.L1Loss(), F.l1_loss_backward, "mean"),
    "BCEWithLogitsLoss": (lambda: nn.BCEWithLogitsLoss(reduction="none"),
                          F.binary_cross_entropy_with_logits_backward, "none"),
}


@pytest.mark.parametrize("name", list(LOSS_CASES))
def test_paired_loss_layer_on_every_backend(case, name):
    make, backward, reduction = LOSS_CASES[name]
    rng = np.random.default_rng(11)
    x_host, t_host = rng.standard_normal((4, 3, 5)) * 2, rng.uniform(0, 1, (4, 3, 5))
    x, t = portacnn.tensor(case.put(x_host), requires_grad=True), portacnn.tensor(case.put(t_host), requires_grad=True)
    loss_fn = make()
    out = loss_fn(x, t)
    grad = rng.standard_normal(out.shape)
    out.backward(case.put(grad))
    reference = getattr(F, {"MSELoss": "mse_loss", "L1Loss": "l1_loss"}.get(name, "binary_cross_entropy_with_logits"))
    case.assert_close(out.data, reference(case.ref(x_host), case.ref(t_host), reduction=reduction))
    gx, gt = backward(case.ref(grad), case.ref(x_host), case.ref(t_host), reduction=reduction)
    case.assert_close(x.grad, gx, err_msg="input gradient")
    case.assert_close(t.grad, gt, err_msg="target gradient")


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_nll_loss_layer_on_every_backend(case, reduction):
    rng = np.random.default_rng(12)
    x_host, labels = rng.standard_normal((5, 4)), rng.integers(0, 4, 5)
    x = portacnn.tensor(case.put(x_host), requires_grad=True)
    out = nn.NLLLoss(reduction=reduction)(nn.LogSoftmax(dim=1)(x), case.put(labels))
    grad = rng.standard_normal(out.shape)
    out.backward(case.put(grad))
    log_p = F.log_softmax(case.ref(x_host), axis=1)
    case.assert_close(out.data, F.nll_loss(log_p, labels, reduction=reduction))
    want = F.log_softmax_backward(F.nll_loss_backward(case.ref(grad), log_p, labels, reduction=reduction),
                                  case.ref(x_host), axis=1)
    case.assert_close(x.grad, want)


def test_new_ops_trace_under_jax_jit():
    """No Python branch reads an array's value: forward and backward of each op trace and match eager."""
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(13)
    x, t = jax.numpy.asarray(rng.standard_normal((4, 6)) * 4), jax.numpy.asarray(rng.uniform(0, 1, (4, 6)))
    labels = jax.numpy.asarray(rng.integers(0, 6, 4))
    g = jax.numpy.asarray(rng.standard_normal((4, 6)))

    def everything(x, t, labels, g):
        out = []
        for name in ("leaky_relu", "elu", "gelu", "silu", "hardswish"):
            out += [getattr(F, name)(x), getattr(F, name + "_backward")(g, x)]
        out += [F.gelu(x, approximate="tanh"), F.gelu_backward(g, x, approximate="tanh")]
        for loss in ("mse_loss", "l1_loss", "binary_cross_entropy_with_logits"):
            out += [getattr(F, loss)(x, t), *getattr(F, loss + "_backward")(g[0, 0], x, t)]
        out += [F.nll_loss(x, labels, check_labels=False),
                F.nll_loss_backward(g[:, 0], x, labels, reduction="none", check_labels=False)]
        return out

    for traced, eager in zip(jax.jit(everything)(x, t, labels, g), everything(x, t, labels, g)):
        np.testing.assert_allclose(np.asarray(traced), np.asarray(eager), rtol=1e-12, atol=1e-14)


# ==========================================================================
# containers


class Blocks(nn.Module):
    """A ModuleList and a ModuleDict inside a model."""

    def __init__(self):
        self.stem = nn.Linear(5, 6, rng=0, dtype="float64")
        self.blocks = nn.ModuleList([nn.Linear(6, 6, rng=i + 1, dtype="float64") for i in range(3)])
        self.heads = nn.ModuleDict({"main": nn.Linear(6, 2, rng=9, dtype="float64"), "act": nn.GELU()})

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = F.silu(block(x)) + x
        return self.heads["main"](self.heads["act"](x))


class TorchBlocks(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Linear(5, 6)
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(6, 6) for _ in range(3)])
        self.heads = torch.nn.ModuleDict({"main": torch.nn.Linear(6, 2), "act": torch.nn.GELU()})

    def forward(self, x):
        x = self.stem(x)
        for block in self.blocks:
            x = TF.silu(block(x)) + x
        return self.heads["main"](self.heads["act"](x))


def test_module_list_and_dict_models_match_torch():
    ours, theirs = Blocks(), TorchBlocks().double()
    assert list(ours.state_dict()) == list(theirs.state_dict()), "state_dict names as torch's"
    with torch.no_grad():
        for name, parameter in ours.named_parameters():
            theirs.get_parameter(name).copy_(torch.from_numpy(parameter.data))
    rng = np.random.default_rng(14)
    x, labels = rng.standard_normal((4, 5)), rng.integers(0, 2, 4)
    loss = nn.NLLLoss()(nn.LogSoftmax(dim=1)(ours(x)), labels)
    loss.backward()
    loss_t = torch.nn.NLLLoss()(torch.nn.LogSoftmax(dim=1)(theirs(t64(x))), torch.from_numpy(labels))
    loss_t.backward()
    close(loss.data, loss_t.item())
    for name, parameter in ours.named_parameters():
        close(parameter.grad, theirs.get_parameter(name).grad.numpy(), msg=name)


def test_module_list_behaves_as_a_list():
    a, b, c, d = (nn.Linear(2, 2, rng=i) for i in range(4))
    layers = nn.ModuleList([a, b])
    assert layers.append(c) is layers and layers.extend([d]) is layers
    assert len(layers) == 4 and list(layers) == [a, b, c, d]
    assert layers[0] is a and layers[-1] is d and layers[-4] is a
    part = layers[1:3]
    assert isinstance(part, nn.ModuleList) and list(part) == [b, c]
    assert list(part.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias"], "renumbered, as torch's"
    layers.insert(1, nn.ReLU())
    assert [type(m).__name__ for m in layers] == ["Linear", "ReLU", "Linear", "Linear", "Linear"]
    layers.insert(-1, nn.Tanh())  # list.insert semantics: before the last
    assert isinstance(layers[-2], nn.Tanh) and layers[-1] is d
    del layers[1]
    del layers[-2]
    assert list(layers) == [a, b, c, d]
    layers[1] = nn.Sigmoid()
    assert isinstance(layers[1], nn.Sigmoid) and len(layers) == 4
    del layers[::2]
    assert len(layers) == 2 and layers[1] is d
    assert list(layers.state_dict()) == ["1.weight", "1.bias"]
    assert nn.ModuleList() is not None and len(nn.ModuleList()) == 0


def test_module_list_state_dict_names_match_torch():
    ours = nn.ModuleList([nn.Linear(3, 2), nn.ReLU(), nn.ModuleList([nn.Linear(2, 2), nn.Conv2d(1, 1, 2)])])
    ours.insert(0, nn.Linear(3, 3))
    theirs = torch.nn.ModuleList([torch.nn.Linear(3, 2), torch.nn.ReLU(),
                                  torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Conv2d(1, 1, 2)])])
    theirs.insert(0, torch.nn.Linear(3, 3))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]


def test_module_list_parameters_move_and_train_with_the_model(backend):
    model = nn.ModuleList([nn.Linear(3, 2, rng=0), nn.BatchNorm2d(2)])
    model.to(backend.spec)
    for value in model.state_dict().values():
        backend.check(value)
    model.eval()
    assert not any(m.training for m in model.modules())
    assert len(model.parameters()) == 4 and len(model.named_buffers()) == 3  # + num_batches_tracked


def test_a_layer_listed_twice_has_its_parameters_once():
    shared = nn.Linear(2, 2)
    layers = nn.ModuleList([shared, nn.ReLU(), shared])
    assert len(layers.parameters()) == 2
    assert list(layers.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]


def test_module_dict_behaves_as_a_dict():
    conv, relu, linear = nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Linear(2, 2)
    d = nn.ModuleDict({"conv": conv, "relu": relu})
    assert list(d) == ["conv", "relu"] == d.keys() and d.values() == [conv, relu]
    assert d.items() == [("conv", conv), ("relu", relu)]
    assert d["conv"] is conv and "relu" in d and "linear" not in d and 3 not in d and len(d) == 2
    d["linear"] = linear
    d.update([("relu", nn.Tanh()), ("out", nn.Identity())])
    assert d.keys() == ["conv", "relu", "linear", "out"] and isinstance(d["relu"], nn.Tanh), "replaced in place"
    assert d.pop("conv") is conv and "conv" not in d
    del d["out"]
    assert list(d.state_dict()) == ["linear.weight", "linear.bias"]
    d.update(nn.ModuleDict({"more": nn.Linear(2, 3)}))
    assert d.keys() == ["relu", "linear", "more"]
    d.clear()
    assert len(d) == 0 and d.parameters() == []
    d.train(False)
    d["training2"] = nn.ReLU()  # the instance's own "training" flag does not count as a layer
    assert d.keys() == ["training2"]


def test_module_dict_state_dict_names_match_torch():
    make = {"stem": (nn.Conv2d, 1, 2, 3), "head": (nn.Linear, 4, 2), "0": (nn.Linear, 2, 2)}
    ours = nn.ModuleDict({k: v[0](*v[1:]) for k, v in make.items()})
    torch_types = {nn.Conv2d: torch.nn.Conv2d, nn.Linear: torch.nn.Linear}
    theirs = torch.nn.ModuleDict({k: torch_types[v[0]](*v[1:]) for k, v in make.items()})
    assert list(ours.state_dict()) == list(theirs.state_dict())


def test_sequential_indexing_and_slicing():
    layers = [nn.Linear(4, 3, rng=0, dtype="float64"), nn.ReLU(), nn.Linear(3, 3, rng=1, dtype="float64"), nn.Tanh(),
              nn.Linear(3, 2, rng=2, dtype="float64")]
    model = nn.Sequential(*layers)
    assert model[0] is layers[0] and model[-1] is layers[-1] and model[-5] is layers[0]
    assert list(model) == layers and len(model) == 5
    head = model[0:2]
    assert isinstance(head, nn.Sequential) and list(head) == layers[:2]
    tail = model[2:]
    assert tail[0] is layers[2], "a slice indexes by position"
    torch_model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 3), torch.nn.Tanh(),
                                      torch.nn.Linear(3, 2))
    for key in (slice(0, 2), slice(2, None), slice(None, None, 2), slice(-3, -1), slice(None, None, -1)):
        assert list(model[key].state_dict()) == list(torch_model[key].state_dict()), key
    x = np.random.default_rng(15).standard_normal((2, 4))
    np.testing.assert_allclose(tail(head(x)).data, model(x).data, rtol=1e-15)
    assert len(model[5:]) == 0


def test_container_errors():
    model = nn.Sequential(nn.ReLU(), nn.Tanh())
    with pytest.raises(ModuleIndexError, match=r"index 2 is out of range for a Sequential of 2 layers") as error:
        model[2]
    assert isinstance(error.value, IndexError) and isinstance(error.value, PortacnnError)
    with pytest.raises(ModuleIndexError, match="-3"):
        model[-3]
    with pytest.raises(ArgumentTypeError, match="integers or slices"):
        model["0"]
    layers = nn.ModuleList([nn.ReLU()])
    with pytest.raises(ModuleIndexError, match=r"ModuleList of 1 layer \(valid: -1 to 0\)"):
        layers[1]
    with pytest.raises(ModuleIndexError, match="empty"):
        nn.ModuleList()[0]
    with pytest.raises(ModuleIndexError):
        layers[3] = nn.Tanh()
    with pytest.raises(ModuleIndexError):
        del layers[-2]
    with pytest.raises(ArgumentTypeError, match="ReLU\\(\\) rather than ReLU"):
        layers.append(nn.ReLU)
    with pytest.raises(ArgumentTypeError, match="use append"):
        layers.extend(nn.ReLU())
    with pytest.raises(ArgumentTypeError, match="iterable of layers"):
        nn.ModuleList(3)
    with pytest.raises(ArgumentTypeError, match="element 1 must be a layer"):
        nn.ModuleList([nn.ReLU(), "relu"])
    assert len(layers) == 1, "a refused call changes nothing"
    with pytest.raises(UsageError, match="for layer in"):
        layers(np.zeros((1, 2)))

    d = nn.ModuleDict({"a": nn.ReLU()})
    with pytest.raises(ModuleKeyError, match=r"has no layer 'b'; its keys are \['a'\]") as error:
        d["b"]
    assert isinstance(error.value, KeyError) and str(error.value).startswith("ModuleDict has no layer")
    with pytest.raises(ModuleKeyError):
        del d["b"]
    for key in ("keys", "training", "forward", "update"):
        with pytest.raises(ArgumentError, match="would hide"):
            d[key] = nn.ReLU()
    with pytest.raises(ArgumentError, match="no '.'"):
        d["a.b"] = nn.ReLU()
    with pytest.raises(ArgumentError, match="non-empty"):
        d[""] = nn.ReLU()
    with pytest.raises(ArgumentTypeError, match="keys must be strings"):
        d[1] = nn.ReLU()
    with pytest.raises(ArgumentTypeError, match="must be a layer"):
        d["c"] = 3
    with pytest.raises(ArgumentTypeError, match=r"\(name, layer\) pair"):
        nn.ModuleDict([nn.ReLU()])
    with pytest.raises(ArgumentTypeError, match="mapping of layers"):
        nn.ModuleDict(5)
    assert d.keys() == ["a"], "a refused call changes nothing"
    with pytest.raises(UsageError, match="not one itself"):
        d(np.zeros(2))


def test_identity_passes_its_input_and_ignores_arguments():
    layer = nn.Identity(54, unused_argument=0.1)
    x = portacnn.tensor(np.ones((2, 3)), requires_grad=True)
    assert layer(x) is x
    with pytest.raises(DTypeError, match="must be an array"):
        layer([1.0, 2.0])


def test_flatten_errors():
    x = np.zeros((2, 3, 4))
    with pytest.raises(ArgumentError, match="start_dim 2 comes after end_dim 1"):
        nn.Flatten(2, 1)(x)
    with pytest.raises(ArgumentError, match="comes after"):
        nn.Flatten(-1, 0)(x)
    with pytest.raises(ShapeError, match=r"end_dim=3 is out of range for an input of shape \(2, 3, 4\)"):
        nn.Flatten(0, 3)(x)
    with pytest.raises(ShapeError, match="start_dim=-4"):
        nn.Flatten(-4)(x)
    with pytest.raises(ArgumentTypeError, match="start_dim must be an int"):
        nn.Flatten(1.0)
    with pytest.raises(ShapeError, match="at least 2-D"):  # the default keeps its own messages
        nn.Flatten()(np.zeros(3))
    assert nn.Flatten(0)(np.zeros(())).shape == (1,), "a 0-d input flattens to (1,), as in torch"
    with pytest.raises(ShapeError, match=r"start_dim=1 is out of range for an input of shape \(\) \(0-D\)"):
        nn.Flatten(1, 0)(np.zeros(()))
    assert nn.Flatten(2, 3)(np.zeros((0, 2, 3, 4))).shape == (0, 2, 12), "an empty batch is fine off the default"


# ==========================================================================
# argument errors


def test_activation_argument_errors():
    x = np.zeros((2, 3))
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ArgumentError, match="negative_slope must be a finite number"):
            F.leaky_relu(x, bad)
        with pytest.raises(ArgumentError, match="alpha must be a finite number"):
            nn.ELU(bad)
    for bad in ("0.1", True, None, np.zeros(1)):
        with pytest.raises(ArgumentTypeError, match="negative_slope must be a number"):
            nn.LeakyReLU(bad)
        with pytest.raises(ArgumentTypeError, match="alpha must be a number"):
            F.elu_backward(x, x, bad)
    for bad in ("exact", "Tanh", None, 1):
        with pytest.raises(ArgumentError, match="approximate must be one of 'none', 'tanh'"):
            F.gelu(x, approximate=bad)
        with pytest.raises(ArgumentError, match="GELU approximate"):
            nn.GELU(bad)
    with pytest.raises(TypeError):
        F.gelu(x, "tanh")  # keyword-only, as in torch
    for name in ("leaky_relu", "elu", "gelu", "silu", "hardswish"):
        with pytest.raises(DTypeError, match=f"{name} input x must be a real floating-point array"):
            getattr(F, name)(np.zeros((2, 3), np.int64))
        with pytest.raises(ShapeError, match=f"{name}_backward: grad_out must have shape"):
            getattr(F, name + "_backward")(np.zeros((3, 2)), x)
        with pytest.raises(DTypeError, match="grad_out has dtype float32"):
            getattr(F, name + "_backward")(np.zeros((2, 3), np.float32), x)


def test_softmax_layers_need_a_dim():
    x = np.zeros((2, 3))
    for layer in (nn.Softmax(), nn.LogSoftmax(dim=None)):
        with pytest.raises(ArgumentError, match=r"made without dim.*\(dim=1\).*deprecated"):
            layer(x)
    with pytest.raises(ArgumentTypeError, match="dim must be an int"):
        nn.Softmax(1.0)
    with pytest.raises(ArgumentError, match="axis 2 is out of range"):
        nn.LogSoftmax(2)(x)
    assert repr(nn.Softmax(dim=None)) == repr(torch.nn.Softmax(dim=None))


def test_loss_argument_errors(backend):
    def a(shape, dtype=np.float64):
        return backend.asarray(np.zeros(shape, dtype))

    x = a((3, 4))
    for bad in ("avg", "elementwise_mean", None, "Mean"):
        for loss in (F.mse_loss, F.l1_loss, F.binary_cross_entropy_with_logits):
            with pytest.raises(ArgumentError, match="reduction must be one of 'mean', 'sum', 'none'"):
                loss(x, x, reduction=bad)
        with pytest.raises(ArgumentError, match="nll_loss reduction"):
            F.nll_loss(x, a((3,), np.int64), reduction=bad)
        with pytest.raises(ArgumentError, match="MSELoss reduction"):
            nn.MSELoss(reduction=bad)
    with pytest.raises(TypeError):
        nn.L1Loss("sum")  # keyword-only: torch's positional slots are size_average and reduce
    with pytest.raises(ShapeError, match=r"target has shape \(3,\) but input has shape \(3, 4\)"):
        F.mse_loss(x, a((3,)))
    with pytest.raises(ShapeError, match="target.reshape"):
        nn.BCEWithLogitsLoss()(a((3, 1)), a((3,)))
    with pytest.raises(DTypeError, match=r"l1_loss target must be a real floating-point .* cross_entropy or nll_loss"):
        F.l1_loss(x, a((3, 4), np.int64))
    with pytest.raises(DTypeError, match="input has dtype .*float64 but target has dtype .*float32"):
        F.mse_loss(x, a((3, 4), np.float32))
    with pytest.raises(DTypeError, match="mse_loss input must be a real floating-point"):
        F.mse_loss(a((3, 4), np.int32), x)
    with pytest.raises(ShapeError, match="mean over an empty input"):
        F.mse_loss(a((0, 4)), a((0, 4)))
    assert float(to_numpy(F.mse_loss(a((0, 4)), a((0, 4)), reduction="sum"))) == 0.0
    with pytest.raises(ShapeError, match=r"mse_loss_backward: grad_out must have shape \(\)"):
        F.mse_loss_backward(x, x, x)
    with pytest.raises(ShapeError, match=r"grad_out must have shape \(3, 4\)"):
        F.binary_cross_entropy_with_logits_backward(a(()), x, x, reduction="none")

    labels = backend.asarray(np.array([0, 3, 1]))
    with pytest.raises(DTypeError, match="nll_loss target must be integer class indices"):
        F.nll_loss(x, a((3,)))
    with pytest.raises(ShapeError, match=r"nll_loss target must have shape \(3,\) to match input \(3, 4\)"):
        F.nll_loss(x, a((2,), np.int64))
    with pytest.raises(ShapeError, match=r"nll_loss input must be a 2-D array of shape \(N, C\)"):
        F.nll_loss(a((3, 4, 2)), labels)
    with pytest.raises(ShapeError, match="empty batch"):
        nn.NLLLoss()(a((0, 4)), a((0,), np.int64))
    with pytest.raises(ArgumentError, match=r"nll_loss target must be class indices in \[0, 2\].* from 0 to 3"):
        F.nll_loss(a((3, 3)), labels)
    with pytest.raises(ArgumentError, match="class indices"):
        nn.NLLLoss(reduction="none")(portacnn.tensor(a((3, 3)), requires_grad=True), labels)
    out = nn.NLLLoss(check_labels=False)(a((3, 3)), labels)  # the caller vouches for them
    assert float(to_numpy(out.data)) == 0.0
    with pytest.raises(ShapeError, match=r"nll_loss_backward: grad_out must have shape \(3,\)"):
        F.nll_loss_backward(a(()), x, labels, reduction="none")


def test_cross_entropy_messages_are_unchanged_by_the_shared_checks():
    with pytest.raises(ArgumentError, match=r"^cross_entropy labels must be class indices in \[0, 2\] for logits with "
                                            r"3 classes, got labels from 0 to 5; check the labels, or give the last "
                                            r"layer as many outputs as there are classes$"):
        F.cross_entropy(np.zeros((2, 3)), np.array([0, 5]))
    with pytest.raises(ShapeError, match=r"^cross_entropy logits have no classes \(shape \(2, 0\)\)$"):
        F.cross_entropy(np.zeros((2, 0)), np.array([0, 0]))


@pytest.mark.parametrize("case", case_params(dtypes=("float32",)))
def test_float32_stays_float32_with_numpy_scalar_options(case):
    """Options given as NumPy float64 scalars must not promote float32 results."""
    x = case.put(np.linspace(-2, 2, 12).reshape(3, 4))
    for out in (F.leaky_relu(x, np.float64(0.2)), F.elu(x, np.float64(0.5)),
                nn.LeakyReLU(np.float64(0.3))(x).data):
        case.check(out)
