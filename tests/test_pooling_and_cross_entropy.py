"""ceil_mode / count_include_pad pooling, adaptive pooling and the full cross_entropy (issue 11):
against torch in float64, by finite differences, through the tape, and on every backend."""

from __future__ import annotations

import numpy as np
import pytest
from support import directional_check, t64, torch_forward_backward

import portacnn
from portacnn import functional as F
from portacnn import nn
from portacnn.errors import ArgumentError, ArgumentTypeError, ShapeError
from portacnn.testing import gradcheck

torch = pytest.importorskip("torch")
TF = torch.nn.functional


def distinct(shape, seed=0):
    """Distinct values (no max ties), spread around zero."""
    rng = np.random.default_rng(seed)
    return rng.permutation(int(np.prod(shape))).reshape(shape) / 7.0 - 3.0


def close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)


POOL_OPTIONS = [  # kernel, stride, padding on a 7x5 input
    (3, 2, 1), ((3, 2), (2, 3), (1, 0)), (2, 2, 0), ((3, 3), 1, 1), (2, (3, 2), 1),
]


# ---------------------------------------------------------------- ceil_mode, count_include_pad


@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("options", POOL_OPTIONS)
def test_max_pool2d_ceil_mode_vs_torch(options, ceil_mode):
    x = distinct((2, 3, 7, 5))
    out = F.max_pool2d(x, *options, ceil_mode=ceil_mode)
    g = np.random.default_rng(1).standard_normal(out.shape)
    want, (want_grad,) = torch_forward_backward(lambda t: TF.max_pool2d(t, *options, ceil_mode=ceil_mode), [x], g)
    close(out, want)
    close(F.max_pool2d_backward(g, x, *options, ceil_mode=ceil_mode), want_grad)
    directional_check(lambda x: F.max_pool2d(x, *options, ceil_mode=ceil_mode), [x],
                      {0: F.max_pool2d_backward(g, x, *options, ceil_mode=ceil_mode)}, g,
                      np.random.default_rng(2), name="max_pool2d")


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("ceil_mode", [False, True])
@pytest.mark.parametrize("options", POOL_OPTIONS)
def test_avg_pool2d_options_vs_torch(options, ceil_mode, count_include_pad):
    x = np.random.default_rng(0).standard_normal((2, 3, 7, 5))
    kw = {"ceil_mode": ceil_mode, "count_include_pad": count_include_pad}
    out = F.avg_pool2d(x, *options, **kw)
    g = np.random.default_rng(1).standard_normal(out.shape)
    want, (want_grad,) = torch_forward_backward(lambda t: TF.avg_pool2d(t, *options, **kw), [x], g)
    close(out, want)
    close(F.avg_pool2d_backward(g, x, *options, **kw), want_grad)
    directional_check(lambda x: F.avg_pool2d(x, *options, **kw), [x], {0: F.avg_pool2d_backward(g, x, *options, **kw)},
                      g, np.random.default_rng(2), name="avg_pool2d")


def test_ceil_mode_drops_a_window_starting_in_the_right_padding():
    # 6 wide, kernel 2, stride 2, padding 1: a 5th window would start in the right padding
    x = np.random.default_rng(0).standard_normal((1, 1, 6, 6))
    assert F.max_pool2d(x, 2, 2, 1, ceil_mode=True).shape == TF.max_pool2d(t64(x), 2, 2, 1, ceil_mode=True).shape
    assert F.avg_pool2d(x, 2, 2, 1, True).shape == (1, 1, 4, 4)


def test_pool_layers_and_tape_take_the_options():
    x = distinct((2, 3, 7, 5))
    layer = nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False)
    close(layer(x).data, TF.avg_pool2d(t64(x), 3, 2, 1, ceil_mode=True, count_include_pad=False).detach().numpy())
    close(nn.MaxPool2d(3, 2, 1, ceil_mode=True)(x).data,
          TF.max_pool2d(t64(x), 3, 2, 1, ceil_mode=True).detach().numpy())
    assert "ceil_mode=True" in repr(layer) and "count_include_pad=False" in repr(layer)
    assert gradcheck(nn.MaxPool2d(3, 2, 1, ceil_mode=True), x, backends=["numpy"])
    assert gradcheck(layer, x, backends=["numpy"])


def test_pool_option_errors():
    x = np.zeros((1, 1, 5, 5))
    with pytest.raises(ArgumentTypeError, match="ceil_mode"):
        F.max_pool2d(x, 2, ceil_mode="yes")
    with pytest.raises(ArgumentTypeError, match="count_include_pad"):
        F.avg_pool2d(x, 2, count_include_pad=1)
    with pytest.raises(ArgumentTypeError, match="ceil_mode"):
        nn.MaxPool2d(2, ceil_mode=None)
    with pytest.raises(ShapeError, match="too small"):
        F.max_pool2d(np.zeros((1, 1, 1, 1)), 3, 1, 0, ceil_mode=True)


def test_ceil_mode_pooling_on_every_backend(case):
    x = distinct((2, 3, 8, 6))
    g = np.random.default_rng(1).standard_normal((2, 3, 5, 4))
    for forward, backward, kw in ((F.max_pool2d, F.max_pool2d_backward, {"ceil_mode": True}),
                                  (F.avg_pool2d, F.avg_pool2d_backward, {"ceil_mode": True, "count_include_pad": False})):
        case.assert_close(forward(case.put(x), 3, 2, 1, **kw), forward(case.ref(x), 3, 2, 1, **kw))
        case.assert_close(backward(case.put(g), case.put(x), 3, 2, 1, **kw),
                          backward(case.ref(g), case.ref(x), 3, 2, 1, **kw))


# ---------------------------------------------------------------- adaptive pooling

ADAPTIVE = [((2, 3, 7, 5), (3, 2)), ((2, 3, 7, 5), 4), ((1, 2, 5, 6), (7, 9)), ((2, 1, 7, 5), 1),
            ((2, 1, 7, 5), (None, 3)), ((1, 2, 6, 9), (3, None))]


@pytest.mark.parametrize("kind", ["avg", "max"])
@pytest.mark.parametrize("shape, output_size", ADAPTIVE)
def test_adaptive_pool_vs_torch(kind, shape, output_size):
    forward = getattr(F, f"adaptive_{kind}_pool2d")
    backward = getattr(F, f"adaptive_{kind}_pool2d_backward")
    x = distinct(shape)
    out = forward(x, output_size)
    g = np.random.default_rng(1).standard_normal(out.shape)
    want, (want_grad,) = torch_forward_backward(lambda t: getattr(TF, f"adaptive_{kind}_pool2d")(t, output_size),
                                                [x], g)
    close(out, want)
    close(backward(g, x, output_size), want_grad)
    directional_check(lambda x: forward(x, output_size), [x], {0: backward(g, x, output_size)}, g,
                      np.random.default_rng(2), name=f"adaptive_{kind}_pool2d")


def test_adaptive_max_ties_go_to_the_first_maximum_in_row_major_order():
    x = np.zeros((1, 1, 7, 5))
    x[0, 0, 1:3, 1:4] = 1.0  # a block of equal maxima
    g = np.ones((1, 1, 3, 2))
    want = np.zeros_like(x)
    for i, (r0, r1) in enumerate([(0, 3), (2, 5), (4, 7)]):
        for j, (c0, c1) in enumerate([(0, 3), (2, 5)]):
            window = x[0, 0, r0:r1, c0:c1]
            r, c = np.unravel_index(np.argmax(window), window.shape)  # argmax: first in row-major order
            want[0, 0, r0 + r, c0 + c] += g[0, 0, i, j]
    close(F.adaptive_max_pool2d_backward(g, x, (3, 2)), want)


def test_adaptive_layers_through_the_tape():
    x = distinct((2, 3, 7, 5))
    assert gradcheck(nn.AdaptiveAvgPool2d((3, 2)), x, backends=["numpy"])
    assert gradcheck(nn.AdaptiveMaxPool2d((3, 2)), x, backends=["numpy"])
    out = F.adaptive_avg_pool2d(portacnn.tensor(x, requires_grad=True), (3, None))
    assert out.shape == (2, 3, 3, 5)
    assert repr(nn.AdaptiveMaxPool2d(2)) == "AdaptiveMaxPool2d(output_size=2)"


def test_adaptive_pool_on_every_backend(case):
    x = distinct((2, 3, 7, 5))
    g = np.random.default_rng(1).standard_normal((2, 3, 3, 2))
    for kind in ("avg", "max"):
        forward = getattr(F, f"adaptive_{kind}_pool2d")
        backward = getattr(F, f"adaptive_{kind}_pool2d_backward")
        case.assert_close(forward(case.put(x), (3, 2)), forward(case.ref(x), (3, 2)))
        case.assert_close(backward(case.put(g), case.put(x), (3, 2)), backward(case.ref(g), case.ref(x), (3, 2)))


def test_adaptive_pool_errors():
    x = np.zeros((1, 1, 5, 5))
    with pytest.raises(ArgumentError, match="return_indices"):
        F.adaptive_max_pool2d(x, 2, return_indices=True)
    with pytest.raises(ArgumentError, match="return_indices"):
        F.adaptive_max_pool2d(portacnn.tensor(x), 2, True)
    with pytest.raises(ArgumentError, match="return_indices"):
        nn.AdaptiveMaxPool2d(2, return_indices=True)
    for bad in ((1, 2, 3), "2", 2.5):
        with pytest.raises(ArgumentTypeError, match="output_size"):
            F.adaptive_avg_pool2d(x, bad)
        with pytest.raises(ArgumentTypeError, match="output_size"):
            nn.AdaptiveAvgPool2d(bad)
    for bad in (0, (2, -1)):
        with pytest.raises(ArgumentError, match="positive"):
            F.adaptive_max_pool2d(x, bad)
        with pytest.raises(ArgumentError, match="positive"):
            nn.AdaptiveMaxPool2d(bad)
    with pytest.raises(ShapeError, match="grad_out"):
        F.adaptive_avg_pool2d_backward(np.zeros((1, 1, 3, 3)), x, 2)


# ---------------------------------------------------------------- cross_entropy


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.15, 1.0])
def test_cross_entropy_vs_torch(reduction, weighted, label_smoothing):
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((7, 5)) * 2, rng.integers(0, 5, 7)
    weight = rng.uniform(0.2, 2.0, 5) if weighted else None
    kw = {"weight": weight, "reduction": reduction, "label_smoothing": label_smoothing}
    out = F.cross_entropy(logits, labels, **kw)
    g = rng.standard_normal(np.shape(out))
    t_logits = t64(logits, grad=True)
    t_out = TF.cross_entropy(t_logits, torch.tensor(labels), weight=None if weight is None else t64(weight),
                             reduction=reduction, label_smoothing=label_smoothing)
    (t_grad,) = torch.autograd.grad(t_out, [t_logits], grad_outputs=t64(g))
    close(out, t_out.detach().numpy())
    grad = F.cross_entropy_backward(logits, labels, grad_out=g, **kw)
    close(grad, t_grad.numpy())
    directional_check(lambda z: F.cross_entropy(z, labels, **kw), [logits], {0: grad}, g, rng, name="cross_entropy")
    # through the tape and the layer
    loss = nn.CrossEntropyLoss(weight, reduction=reduction, label_smoothing=label_smoothing)
    z = portacnn.tensor(logits, requires_grad=True)
    loss(z, labels).backward(None if reduction != "none" else g)
    close(z.grad if reduction == "none" else z.grad * g, t_grad.numpy())


def test_cross_entropy_old_call_forms_unchanged():
    rng = np.random.default_rng(3)
    logits, labels = rng.standard_normal((4, 3)), rng.integers(0, 3, 4)
    close(F.cross_entropy(logits, labels), TF.cross_entropy(t64(logits), torch.tensor(labels)).numpy())
    close(F.cross_entropy_backward(logits, labels, check_labels=False),
          F.cross_entropy_backward(logits, labels, grad_out=np.float64(1.0)))
    assert gradcheck(lambda z: F.cross_entropy(z, labels, weight=np.array([0.5, 1.0, 2.0]), label_smoothing=0.1),
                     logits, backends=["numpy"])


def test_cross_entropy_on_every_backend(case):
    rng = np.random.default_rng(4)
    logits, labels = rng.standard_normal((6, 5)) * 2, rng.integers(0, 5, 6)
    weight, g = rng.uniform(0.2, 2.0, 5), rng.standard_normal(6)
    for reduction in ("mean", "none"):
        kw = {"reduction": reduction, "label_smoothing": 0.1}
        grad = g if reduction == "none" else np.asarray(g[0])
        case.assert_close(F.cross_entropy(case.put(logits), case.put(labels), weight=case.put(weight), **kw),
                          F.cross_entropy(case.ref(logits), case.ref(labels), weight=case.ref(weight), **kw))
        case.assert_close(
            F.cross_entropy_backward(case.put(logits), case.put(labels), weight=case.put(weight),
                                     grad_out=case.put(grad), **kw),
            F.cross_entropy_backward(case.ref(logits), case.ref(labels), weight=case.ref(weight),
                                     grad_out=case.ref(grad), **kw))


def test_cross_entropy_errors():
    logits, labels = np.zeros((3, 4)), np.array([0, 1, 3])
    with pytest.raises(ShapeError, match="weight"):
        F.cross_entropy(logits, labels, weight=np.ones(3))
    with pytest.raises(Exception, match="weight"):
        F.cross_entropy(logits, labels, weight=np.ones(4, dtype=np.float32))
    with pytest.raises(ArgumentError, match="label_smoothing"):
        F.cross_entropy(logits, labels, label_smoothing=1.5)
    with pytest.raises(ArgumentTypeError, match="label_smoothing"):
        nn.CrossEntropyLoss(label_smoothing="0.1")
    with pytest.raises(ArgumentError, match="reduction"):
        F.cross_entropy(logits, labels, reduction="avg")
    with pytest.raises(ShapeError, match="grad_out"):
        F.cross_entropy_backward(logits, labels, reduction="none", grad_out=np.float64(1.0))
