"""Grouped convolution and the transposed convolution (issue 11): against torch in float64,
by finite differences, through the tape, on every backend, and their errors."""

from __future__ import annotations

import numpy as np
import pytest
from support import directional_check, t64, torch_forward_backward

from portacnn import functional as F
from portacnn import nn
from portacnn.errors import ArgumentError, ArgumentTypeError, ShapeError
from portacnn.testing import gradcheck

torch = pytest.importorskip("torch")
TF = torch.nn.functional


def close(a, b):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12)


# in_channels, out_channels, groups, options; inputs are (2, C, 9, 7)
CONV = [
    (6, 4, 1, dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2))),
    (6, 4, 2, dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2))),
    (6, 6, 6, dict(stride=1, padding=1)),                              # depthwise
    (3, 6, 3, dict(stride=(1, 2), padding=(2, 0), dilation=2)),        # depthwise, channel multiplier 2
    (4, 6, 2, dict(stride=3, padding=0, dilation=(2, 1))),
]
# in_channels, out_channels, groups, options (with output_padding)
TRANSPOSE = [
    (6, 4, 1, dict(stride=(2, 1), padding=(1, 0), output_padding=(1, 0), dilation=(1, 2))),
    (6, 4, 2, dict(stride=(2, 3), padding=(1, 2), output_padding=(1, 2))),
    (6, 6, 6, dict(stride=2, padding=1, output_padding=1)),
    (4, 6, 2, dict(stride=(3, 2), padding=(0, 1), output_padding=(2, 0), dilation=(1, 3))),
    (3, 5, 1, dict(stride=1, padding=0, output_padding=(0, 1), dilation=2)),  # output_padding < dilation
]


def conv_inputs(c_in, c_out, groups, seed, transpose=False):
    rng = np.random.default_rng(seed)
    shape = (c_in, c_out // groups, 3, 2) if transpose else (c_out, c_in // groups, 3, 2)
    return rng, rng.standard_normal((2, c_in, 9, 7)), rng.standard_normal(shape), rng.standard_normal(c_out)


@pytest.mark.parametrize("c_in, c_out, groups, kw", CONV)
def test_grouped_conv2d_vs_torch_and_finite_differences(c_in, c_out, groups, kw):
    rng, x, w, b = conv_inputs(c_in, c_out, groups, 0)
    out = F.conv2d(x, w, b, groups=groups, **kw)
    g = rng.standard_normal(out.shape)
    want, want_grads = torch_forward_backward(lambda x_, w_, b_: TF.conv2d(x_, w_, b_, groups=groups, **kw),
                                              [x, w, b], g)
    close(out, want)
    grads = F.conv2d_backward(g, x, w, groups=groups, **kw)
    for got, expected in zip(grads, want_grads):
        close(got, expected)
    directional_check(lambda x_, w_, b_: F.conv2d(x_, w_, b_, groups=groups, **kw), [x, w, b],
                      dict(enumerate(grads)), g, rng, name="conv2d groups")


@pytest.mark.parametrize("c_in, c_out, groups, kw", TRANSPOSE)
def test_conv_transpose2d_vs_torch_and_finite_differences(c_in, c_out, groups, kw):
    rng, x, w, b = conv_inputs(c_in, c_out, groups, 1, transpose=True)
    out = F.conv_transpose2d(x, w, b, groups=groups, **kw)
    g = rng.standard_normal(out.shape)
    want, want_grads = torch_forward_backward(
        lambda x_, w_, b_: TF.conv_transpose2d(x_, w_, b_, groups=groups, **kw), [x, w, b], g)
    assert out.shape == want.shape
    close(out, want)
    close(F.conv_transpose2d(x, w, groups=groups, **kw), TF.conv_transpose2d(t64(x), t64(w), groups=groups,
                                                                              **kw).numpy())
    grads = F.conv_transpose2d_backward(g, x, w, groups=groups, **kw)
    for got, expected in zip(grads, want_grads):
        close(got, expected)
    directional_check(lambda x_, w_, b_: F.conv_transpose2d(x_, w_, b_, groups=groups, **kw), [x, w, b],
                      dict(enumerate(grads)), g, rng, name="conv_transpose2d")


def test_layers_match_torch_and_the_tape_passes_the_options():
    x = np.random.default_rng(2).standard_normal((2, 4, 7, 5))
    conv = nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=1, groups=2, dtype="float64")
    assert conv.weight.shape == (6, 2, 3, 2) and "groups=2" in repr(conv)
    close(conv(x).data, TF.conv2d(t64(x), t64(conv.weight.data), t64(conv.bias.data), stride=(2, 1), padding=1,
                                  groups=2).numpy())
    depthwise = nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False, dtype="float64")
    assert depthwise.weight.shape == (4, 1, 3, 3)
    up = nn.ConvTranspose2d(4, 6, 3, stride=2, padding=1, output_padding=1, groups=2, dilation=1, dtype="float64")
    assert up.weight.shape == (4, 3, 3, 3) and "output_padding=(1, 1)" in repr(up)
    close(up(x).data, TF.conv_transpose2d(t64(x), t64(up.weight.data), t64(up.bias.data), stride=2, padding=1,
                                          output_padding=1, groups=2).numpy())
    assert up(x).shape == (2, 6, 14, 10)
    for layer in (conv, depthwise, up, nn.ConvTranspose2d(4, 2, (2, 3), stride=(1, 2), bias=False, dtype="float64")):
        assert gradcheck(layer, x, backends=["numpy"])


def test_groups_one_keeps_the_weight_shape_and_the_old_positional_order():
    layer = nn.Conv2d(3, 4, 3, 1, 0, 1, 1, False)  # PyTorch's order: ..., dilation, groups, bias
    assert layer.weight.shape == (4, 3, 3, 3) and layer.bias is None and "groups" not in repr(layer)


def test_grouped_and_transposed_on_every_backend(case):
    rng, x, w, b = conv_inputs(6, 4, 2, 3)
    kw = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2), groups=2)
    g = rng.standard_normal(F.conv2d(x, w, b, **kw).shape)
    case.assert_close(F.conv2d(case.put(x), case.put(w), case.put(b), **kw), F.conv2d(case.ref(x), case.ref(w),
                                                                                     case.ref(b), **kw))
    for got, want in zip(F.conv2d_backward(case.put(g), case.put(x), case.put(w), **kw),
                         F.conv2d_backward(case.ref(g), case.ref(x), case.ref(w), **kw)):
        case.assert_close(got, want)
    rng, x, w, b = conv_inputs(6, 4, 2, 4, transpose=True)
    kw = dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), groups=2, dilation=(1, 2))
    g = rng.standard_normal(F.conv_transpose2d(x, w, b, **kw).shape)
    case.assert_close(F.conv_transpose2d(case.put(x), case.put(w), case.put(b), **kw),
                      F.conv_transpose2d(case.ref(x), case.ref(w), case.ref(b), **kw))
    for got, want in zip(F.conv_transpose2d_backward(case.put(g), case.put(x), case.put(w), **kw),
                         F.conv_transpose2d_backward(case.ref(g), case.ref(x), case.ref(w), **kw)):
        case.assert_close(got, want)


def test_errors():
    x = np.zeros((1, 6, 5, 5))
    with pytest.raises(ShapeError, match="in_channels \\(6\\) must be divisible by groups \\(4\\)"):
        F.conv2d(x, np.zeros((4, 1, 3, 3)), groups=4)
    with pytest.raises(ShapeError, match="out_channels \\(4\\) must be divisible by groups \\(3\\)"):
        F.conv2d(x, np.zeros((4, 2, 3, 3)), groups=3)
    with pytest.raises(ShapeError, match="2 per group x 2 groups"):
        F.conv2d(x, np.zeros((4, 2, 3, 3)), groups=2)
    with pytest.raises(ArgumentError, match="groups"):
        F.conv2d(x, np.zeros((4, 6, 3, 3)), groups=0)
    with pytest.raises(ArgumentTypeError, match="groups"):
        F.conv2d(x, np.zeros((4, 6, 3, 3)), groups=1.5)
    with pytest.raises(ShapeError, match="divisible by groups"):
        F.conv_transpose2d(x, np.zeros((6, 2, 3, 3)), groups=4)
    with pytest.raises(ShapeError, match="weight expects 4"):
        F.conv_transpose2d(x, np.zeros((4, 2, 3, 3)))
    with pytest.raises(ShapeError, match="bias must have shape \\(4,\\)"):
        F.conv_transpose2d(x, np.zeros((6, 2, 3, 3)), np.zeros(2), groups=2)
    with pytest.raises(ArgumentError, match="output_padding"):
        F.conv_transpose2d(x, np.zeros((6, 2, 3, 3)), stride=2, output_padding=2)
    with pytest.raises(ShapeError, match="gives an output of"):
        F.conv_transpose2d(np.zeros((1, 6, 1, 1)), np.zeros((6, 2, 1, 1)), padding=1)
    with pytest.raises(ShapeError, match="grad_out must have shape"):
        F.conv_transpose2d_backward(np.zeros((1, 2, 5, 5)), x, np.zeros((6, 2, 3, 3)))
    with pytest.raises(ArgumentError, match="divisible by groups"):
        nn.Conv2d(6, 4, 3, groups=4)
    with pytest.raises(ArgumentError, match="divisible by groups"):
        nn.ConvTranspose2d(4, 6, 3, groups=4)
    with pytest.raises(ArgumentError, match="output_padding"):
        nn.ConvTranspose2d(4, 6, 3, stride=1, output_padding=1)
