"""Tests for portacnn.functional: every op and its backward.

Four independent checks, in order of independence from the library:

1. naive loop references in NumPy float64, written here (explicit loops over
   output pixels, no im2col), for conv2d and the pooling ops;
2. PyTorch CPU autograd as an oracle for every forward and backward, over a
   fixed list of configurations and a small hypothesis search;
3. central finite differences in float64 along one random direction, for
   every differentiable input (data, weights, biases);
4. backend parity: each op on every backend case and dtype (see conftest.py)
   against the NumPy float64 result, keeping namespace, device and dtype, with
   read-only inputs and inputs left unchanged.

Then numerics at extreme logits, max-pool ties, and the library's own errors.
"""

from __future__ import annotations

import dataclasses
import math
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import directional_check, t64, torch_forward_backward

import portacnn.functional as F
from portacnn.errors import BackendMismatchError, DTypeError, PortacnnError, ShapeError

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # pragma: no cover - torch is optional
    torch = None
    TF = None

needs_torch = pytest.mark.skipif(torch is None, reason="torch is not installed (the PyTorch oracle)")

HYPOTHESIS = settings(max_examples=25, deadline=None, derandomize=True, database=None)


def pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def out_size(size, k, s, p, d=1):
    return (size + 2 * p - d * (k - 1) - 1) // s + 1


# ==========================================================================
# configurations


@dataclasses.dataclass(frozen=True)
class ConvCfg:
    n: int
    c: int
    h: int
    w: int
    o: int
    kernel: tuple
    stride: object = 1
    padding: object = 0
    dilation: object = 1

    @property
    def id(self):
        return (f"n{self.n}c{self.c}_{self.h}x{self.w}_o{self.o}_k{self.kernel}"
                f"_s{self.stride}_p{self.padding}_d{self.dilation}").replace(" ", "")

    @property
    def kw(self):
        return dict(stride=self.stride, padding=self.padding, dilation=self.dilation)


CONV_CONFIGS = [
    ConvCfg(2, 3, 7, 7, 4, (3, 3)),
    ConvCfg(1, 2, 8, 6, 3, (3, 2), stride=2, padding=1),
    ConvCfg(2, 1, 9, 7, 2, (2, 3), stride=(1, 2), padding=(2, 1)),
    ConvCfg(1, 3, 10, 9, 2, (3, 3), stride=3, padding=2, dilation=2),
    ConvCfg(2, 2, 5, 5, 3, (1, 1)),
    ConvCfg(1, 2, 7, 8, 2, (2, 2), stride=2, dilation=2),
    ConvCfg(2, 3, 6, 5, 2, (3, 1), stride=(2, 3), padding=(1, 0), dilation=(1, 2)),
    ConvCfg(1, 1, 4, 4, 1, (4, 4)),  # kernel as large as the input: 1x1 output
    ConvCfg(2, 2, 5, 7, 3, (2, 4), padding=2),
    ConvCfg(1, 4, 11, 10, 2, (3, 3), stride=(3, 2), padding=1, dilation=(2, 1)),
    ConvCfg(3, 2, 6, 6, 2, (5, 3), padding=2),
    ConvCfg(1, 3, 3, 3, 2, (3, 3), stride=2, padding=1, dilation=2),  # dilated kernel wider than input
    ConvCfg(2, 1, 1, 1, 2, (1, 1)),  # 1x1 image
]


@dataclasses.dataclass(frozen=True)
class PoolCfg:
    n: int
    c: int
    h: int
    w: int
    kernel: object
    stride: object = None
    padding: object = 0

    @property
    def id(self):
        return f"n{self.n}c{self.c}_{self.h}x{self.w}_k{self.kernel}_s{self.stride}_p{self.padding}".replace(" ", "")


POOL_CONFIGS = [
    PoolCfg(2, 3, 6, 6, 2),
    PoolCfg(1, 2, 7, 5, 3, 2, 1),
    PoolCfg(2, 1, 8, 7, (2, 3), (1, 2), (1, 1)),
    PoolCfg(1, 3, 9, 9, 3, 3, 0),
    PoolCfg(2, 2, 5, 6, (3, 2), 1, (1, 0)),
    PoolCfg(1, 1, 4, 4, 4, None, 2),
    PoolCfg(2, 2, 7, 7, (1, 3), (2, 1), (0, 1)),
    PoolCfg(1, 2, 6, 9, (2, 2), (3, 2), 1),
    PoolCfg(1, 1, 1, 1, 1),
    PoolCfg(2, 3, 10, 8, 5, 2, 2),
    PoolCfg(1, 2, 5, 5, 3, 1, 1),  # overlapping windows
    PoolCfg(2, 1, 7, 4, (4, 1), (1, 3), (2, 0)),
]
LP_NORMS = [1.0, 2.0, 3.0, 1.5, 0.5]


def pool_out_shape(cfg: PoolCfg, padding=None):
    k = pair(cfg.kernel)
    s = k if cfg.stride is None else pair(cfg.stride)
    p = pair(cfg.padding if padding is None else padding)
    return (cfg.n, cfg.c, out_size(cfg.h, k[0], s[0], p[0]), out_size(cfg.w, k[1], s[1], p[1]))


def distinct_values(shape, rng, step=0.01):
    """Values that differ pairwise by >= step (so no max-pool ties, and small
    perturbations never move an argmax), exactly distinct in float32 too."""
    n = math.prod(shape)
    return ((rng.permutation(n) - n / 2) * step).reshape(shape)


# ==========================================================================
# naive NumPy float64 references: explicit loops over output pixels


def ref_conv2d(x, w, b=None, stride=1, padding=0, dilation=1):
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    n_, c_, h_, w_ = x.shape
    o_, _, kh, kw = w.shape
    oh, ow = out_size(h_, kh, sh, ph, dh), out_size(w_, kw, sw, pw, dw)
    out = np.zeros((n_, o_, oh, ow))
    for n in range(n_):
        for o in range(o_):
            for oy in range(oh):
                for ox in range(ow):
                    acc = 0.0 if b is None else b[o]
                    for c in range(c_):
                        for i in range(kh):
                            y = oy * sh - ph + i * dh
                            if not 0 <= y < h_:
                                continue
                            for j in range(kw):
                                xx = ox * sw - pw + j * dw
                                if 0 <= xx < w_:
                                    acc += x[n, c, y, xx] * w[o, c, i, j]
                    out[n, o, oy, ox] = acc
    return out


def ref_conv2d_backward(g, x, w, stride=1, padding=0, dilation=1):
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    n_, c_, h_, w_ = x.shape
    o_, _, kh, kw = w.shape
    gx, gw = np.zeros_like(x), np.zeros_like(w)
    for n in range(n_):
        for o in range(o_):
            for oy in range(g.shape[2]):
                for ox in range(g.shape[3]):
                    go = g[n, o, oy, ox]
                    for c in range(c_):
                        for i in range(kh):
                            y = oy * sh - ph + i * dh
                            if not 0 <= y < h_:
                                continue
                            for j in range(kw):
                                xx = ox * sw - pw + j * dw
                                if 0 <= xx < w_:
                                    gx[n, c, y, xx] += go * w[o, c, i, j]
                                    gw[o, c, i, j] += go * x[n, c, y, xx]
    return gx, gw, g.sum(axis=(0, 2, 3))


def _windows(shape, kernel, stride, padding):
    """Yield (n, c, oy, ox, positions): the in-bounds input positions of each
    window, in row-major window order."""
    n_, c_, h_, w_ = shape
    (kh, kw) = pair(kernel)
    (sh, sw) = (kh, kw) if stride is None else pair(stride)
    (ph, pw) = pair(padding)
    oh, ow = out_size(h_, kh, sh, ph), out_size(w_, kw, sw, pw)
    for n in range(n_):
        for c in range(c_):
            for oy in range(oh):
                for ox in range(ow):
                    pos = [
                        (oy * sh - ph + i, ox * sw - pw + j)
                        for i in range(kh)
                        for j in range(kw)
                        if 0 <= oy * sh - ph + i < h_ and 0 <= ox * sw - pw + j < w_
                    ]
                    yield n, c, oy, ox, pos


def ref_max_pool2d(x, kernel, stride=None, padding=0, grad_out=None):
    """Forward, or with grad_out the backward: ties go to the first maximum
    in row-major window order (padding never wins)."""
    k, s, p = kernel, stride, padding
    cfg_shape = x.shape
    kh, kw = pair(k)
    sh, sw = (kh, kw) if s is None else pair(s)
    ph, pw = pair(p)
    out = np.empty((x.shape[0], x.shape[1], out_size(x.shape[2], kh, sh, ph), out_size(x.shape[3], kw, sw, pw)))
    gx = np.zeros_like(x)
    for n, c, oy, ox, pos in _windows(cfg_shape, k, s, p):
        best = None
        for y, xx in pos:
            if best is None or x[n, c, y, xx] > x[n, c, best[0], best[1]]:
                best = (y, xx)
        out[n, c, oy, ox] = x[n, c, best[0], best[1]]
        if grad_out is not None:
            gx[n, c, best[0], best[1]] += grad_out[n, c, oy, ox]
    return out if grad_out is None else gx


def ref_avg_pool2d(x, kernel, stride=None, padding=0, grad_out=None):
    """count_include_pad=True: always divide by the full window size."""
    kh, kw = pair(kernel)
    sh, sw = (kh, kw) if stride is None else pair(stride)
    ph, pw = pair(padding)
    out = np.empty((x.shape[0], x.shape[1], out_size(x.shape[2], kh, sh, ph), out_size(x.shape[3], kw, sw, pw)))
    gx = np.zeros_like(x)
    for n, c, oy, ox, pos in _windows(x.shape, kernel, stride, padding):
        out[n, c, oy, ox] = sum(x[n, c, y, xx] for y, xx in pos) / (kh * kw)
        if grad_out is not None:
            for y, xx in pos:
                gx[n, c, y, xx] += grad_out[n, c, oy, ox] / (kh * kw)
    return out if grad_out is None else gx


def ref_lp_pool2d(x, p, kernel, stride=None, grad_out=None):
    """Power mean (mean(x**p))**(1/p) over each window, no padding."""
    kh, kw = pair(kernel)
    sh, sw = (kh, kw) if stride is None else pair(stride)
    out = np.empty((x.shape[0], x.shape[1], out_size(x.shape[2], kh, sh, 0), out_size(x.shape[3], kw, sw, 0)))
    gx = np.zeros_like(x)
    for n, c, oy, ox, pos in _windows(x.shape, kernel, stride, 0):
        m = sum(x[n, c, y, xx] ** p for y, xx in pos) / (kh * kw)
        r = m ** (1 / p)
        out[n, c, oy, ox] = r
        if grad_out is not None:
            for y, xx in pos:
                gx[n, c, y, xx] += grad_out[n, c, oy, ox] * x[n, c, y, xx] ** (p - 1) * r ** (1 - p) / (kh * kw)
    return out if grad_out is None else gx


def close64(actual, expected, rtol=1e-10, atol=1e-12, msg=""):
    """Float64 comparison; atol scaled by the array's magnitude (see conftest)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"shape {actual.shape} != {expected.shape} {msg}"
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol * scale, err_msg=msg)


# ==========================================================================
# 1. naive references vs the library on NumPy float64


@pytest.mark.parametrize("cfg", CONV_CONFIGS, ids=lambda c: c.id)
def test_conv2d_matches_naive_loops(cfg):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((cfg.n, cfg.c, cfg.h, cfg.w))
    w = rng.standard_normal((cfg.o, cfg.c, *cfg.kernel))
    b = rng.standard_normal(cfg.o)
    out = F.conv2d(x, w, b, **cfg.kw)
    close64(out, ref_conv2d(x, w, b, **cfg.kw))
    close64(F.conv2d(x, w, **cfg.kw), ref_conv2d(x, w, None, **cfg.kw))
    g = rng.standard_normal(out.shape)
    for got, want, name in zip(F.conv2d_backward(g, x, w, **cfg.kw), ref_conv2d_backward(g, x, w, **cfg.kw),
                               ("grad_x", "grad_weight", "grad_bias")):
        close64(got, want, msg=name)


@pytest.mark.parametrize("cfg", POOL_CONFIGS, ids=lambda c: c.id)
def test_pools_match_naive_loops(cfg):
    rng = np.random.default_rng(2)
    x = distinct_values((cfg.n, cfg.c, cfg.h, cfg.w), rng)
    g = rng.standard_normal(pool_out_shape(cfg))
    args = (cfg.kernel, cfg.stride, cfg.padding)
    close64(F.max_pool2d(x, *args), ref_max_pool2d(x, *args))
    close64(F.max_pool2d_backward(g, x, *args), ref_max_pool2d(x, *args, grad_out=g))
    close64(F.avg_pool2d(x, *args), ref_avg_pool2d(x, *args))
    close64(F.avg_pool2d_backward(g, x, *args), ref_avg_pool2d(x, *args, grad_out=g))


@pytest.mark.parametrize("p", LP_NORMS)
@pytest.mark.parametrize("cfg", POOL_CONFIGS[:6], ids=lambda c: c.id)
def test_lp_pool_matches_naive_loops(cfg, p):
    rng = np.random.default_rng(3)
    x = rng.uniform(0.2, 2.0, (cfg.n, cfg.c, cfg.h, cfg.w))
    g = rng.standard_normal(pool_out_shape(cfg, padding=0))
    close64(F.lp_pool2d(x, p, cfg.kernel, cfg.stride), ref_lp_pool2d(x, p, cfg.kernel, cfg.stride))
    close64(F.lp_pool2d_backward(g, x, p, cfg.kernel, cfg.stride),
            ref_lp_pool2d(x, p, cfg.kernel, cfg.stride, grad_out=g))


@pytest.mark.parametrize("cfg", POOL_CONFIGS[:6], ids=lambda c: c.id)
def test_lp_pool_inf_is_max_pool(cfg):
    rng = np.random.default_rng(4)
    x = distinct_values((cfg.n, cfg.c, cfg.h, cfg.w), rng)
    g = rng.standard_normal(pool_out_shape(cfg, padding=0))
    np.testing.assert_array_equal(F.lp_pool2d(x, math.inf, cfg.kernel, cfg.stride),
                                  F.max_pool2d(x, cfg.kernel, cfg.stride))
    np.testing.assert_array_equal(F.lp_pool2d_backward(g, x, math.inf, cfg.kernel, cfg.stride),
                                  F.max_pool2d_backward(g, x, cfg.kernel, cfg.stride))


# ==========================================================================
# 2. PyTorch oracle (float64 autograd with a random upstream gradient)


def check_conv_vs_torch(cfg: ConvCfg, seed: int):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((cfg.n, cfg.c, cfg.h, cfg.w))
    w = rng.standard_normal((cfg.o, cfg.c, *cfg.kernel))
    b = rng.standard_normal(cfg.o)
    out = F.conv2d(x, w, b, **cfg.kw)
    g = rng.standard_normal(out.shape)
    t_out, (t_gx, t_gw, t_gb) = torch_forward_backward(
        lambda x_, w_, b_: TF.conv2d(x_, w_, b_, **cfg.kw), [x, w, b], g)
    close64(out, t_out, msg="forward")
    gx, gw, gb = F.conv2d_backward(g, x, w, **cfg.kw)
    close64(gx, t_gx, msg="grad_x")
    close64(gw, t_gw, msg="grad_weight")
    close64(gb, t_gb, msg="grad_bias")


@needs_torch
@pytest.mark.parametrize("cfg", CONV_CONFIGS, ids=lambda c: c.id)
def test_conv2d_vs_torch(cfg):
    check_conv_vs_torch(cfg, seed=10)


def check_pools_vs_torch(cfg: PoolCfg, seed: int):
    rng = np.random.default_rng(seed)
    shape = (cfg.n, cfg.c, cfg.h, cfg.w)
    args = (cfg.kernel, cfg.stride, cfg.padding)
    g = rng.standard_normal(pool_out_shape(cfg))
    x = distinct_values(shape, rng)
    t_out, (t_gx,) = torch_forward_backward(lambda x_: TF.max_pool2d(x_, *args), [x], g)
    close64(F.max_pool2d(x, *args), t_out, msg="max forward")
    close64(F.max_pool2d_backward(g, x, *args), t_gx, msg="max backward")
    x = rng.standard_normal(shape)
    t_out, (t_gx,) = torch_forward_backward(lambda x_: TF.avg_pool2d(x_, *args), [x], g)
    close64(F.avg_pool2d(x, *args), t_out, msg="avg forward")
    close64(F.avg_pool2d_backward(g, x, *args), t_gx, msg="avg backward")


@needs_torch
@pytest.mark.parametrize("cfg", POOL_CONFIGS, ids=lambda c: c.id)
def test_max_avg_pool_vs_torch(cfg):
    check_pools_vs_torch(cfg, seed=11)


@needs_torch
@pytest.mark.parametrize("p", LP_NORMS)
@pytest.mark.parametrize("cfg", POOL_CONFIGS, ids=lambda c: c.id)
def test_lp_pool_vs_torch(cfg, p):
    """torch's lp_pool2d is the power *sum*; portacnn's is the power mean."""
    rng = np.random.default_rng(12)
    x = rng.uniform(0.2, 2.0, (cfg.n, cfg.c, cfg.h, cfg.w))
    kh, kw = pair(cfg.kernel)
    factor = (kh * kw) ** (1 / p)
    g = rng.standard_normal(pool_out_shape(cfg, padding=0))
    t_out, (t_gx,) = torch_forward_backward(
        lambda x_: TF.lp_pool2d(x_, p, cfg.kernel, cfg.stride) / factor, [x], g)
    close64(F.lp_pool2d(x, p, cfg.kernel, cfg.stride), t_out, msg="forward")
    close64(F.lp_pool2d_backward(g, x, p, cfg.kernel, cfg.stride), t_gx, msg="backward")


LINEAR_SHAPES = [(1, 1, 1), (1, 6, 4), (3, 5, 2), (4, 7, 6), (2, 16, 10)]  # (N, in, out); N=1 takes the outer-product path


@needs_torch
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", LINEAR_SHAPES, ids=str)
def test_linear_vs_torch(shape, bias):
    n, fin, fout = shape
    rng = np.random.default_rng(13)
    x, w = rng.standard_normal((n, fin)), rng.standard_normal((fout, fin))
    b = rng.standard_normal(fout) if bias else None
    g = rng.standard_normal((n, fout))
    t_out, t_grads = torch_forward_backward(lambda *a: TF.linear(*a), [x, w, b], g)
    close64(F.linear(x, w, b), t_out)
    gx, gw, gb = F.linear_backward(g, x, w)
    close64(gx, t_grads[0])
    close64(gw, t_grads[1])
    if bias:
        close64(gb, t_grads[2])
    close64(gb, g.sum(axis=0))


ACTIVATIONS = {
    "relu": (F.relu, F.relu_backward, lambda t: torch.relu(t)),
    "sigmoid": (F.sigmoid, F.sigmoid_backward, lambda t: torch.sigmoid(t)),
    "tanh": (F.tanh, F.tanh_backward, lambda t: torch.tanh(t)),
}
ELEMENTWISE_SHAPES = [(5,), (3, 4), (2, 3, 4, 5)]


def away_from_zero(shape, rng):
    """Normal samples pushed at least 0.05 away from 0 (relu's kink)."""
    x = rng.standard_normal(shape) * 3
    return np.where(np.abs(x) < 0.05, np.sign(x) * 0.05 + x, x) + (x == 0) * 0.1


@needs_torch
@pytest.mark.parametrize("shape", ELEMENTWISE_SHAPES, ids=str)
@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_vs_torch(name, shape):
    fwd, bwd, tfn = ACTIVATIONS[name]
    rng = np.random.default_rng(14)
    x = away_from_zero(shape, rng)
    g = rng.standard_normal(shape)
    t_out, (t_gx,) = torch_forward_backward(tfn, [x], g)
    close64(fwd(x), t_out)
    close64(bwd(g, x), t_gx)


SOFTMAX_CASES = [((4, 7), -1), ((3, 5), 0), ((2, 5, 3), 1), ((2, 3, 4, 2), 1), ((1, 1), -1)]


@needs_torch
@pytest.mark.parametrize("shape,axis", SOFTMAX_CASES, ids=str)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_vs_torch(name, shape, axis):
    fwd, bwd = getattr(F, name), getattr(F, name + "_backward")
    rng = np.random.default_rng(15)
    x = rng.standard_normal(shape) * 3
    g = rng.standard_normal(shape)
    t_out, (t_gx,) = torch_forward_backward(lambda t: getattr(torch, name)(t, dim=axis), [x], g)
    close64(fwd(x, axis), t_out)
    close64(bwd(g, x, axis), t_gx)


@needs_torch
@pytest.mark.parametrize("n,k", [(1, 2), (5, 3), (8, 10)])
def test_cross_entropy_vs_torch(n, k):
    rng = np.random.default_rng(16)
    logits = rng.standard_normal((n, k)) * 2
    labels = rng.integers(0, k, n)
    t_logits = t64(logits, grad=True)
    t_loss = TF.cross_entropy(t_logits, torch.tensor(labels))  # mean over the batch
    (t_grad,) = torch.autograd.grad(t_loss, [t_logits])
    loss = F.cross_entropy(logits, labels)
    assert np.ndim(loss) == 0
    close64(loss, t_loss.item())
    close64(F.cross_entropy_backward(logits, labels), t_grad.numpy())


BN_SHAPES = [(4, 3), (2, 3, 4, 5), (3, 2, 1, 1), (2, 1, 3, 2)]


def bn_inputs(shape, rng):
    c = shape[1]
    x = rng.standard_normal(shape) * 2 + 0.5
    return (x, rng.standard_normal(c) * 0.5, rng.uniform(0.5, 2.0, c),
            rng.uniform(0.5, 1.5, c), rng.standard_normal(c))


@needs_torch
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
def test_batch_norm_vs_torch(shape, training, affine):
    rng = np.random.default_rng(17)
    x, rm, rv, w, b = bn_inputs(shape, rng)
    if not affine:
        w = b = None
    momentum, eps = 0.2, 1e-3
    t_rm, t_rv = t64(rm), t64(rv)  # torch updates these in place
    g = rng.standard_normal(shape)
    t_out, t_grads = torch_forward_backward(
        lambda x_, *wb: TF.batch_norm(x_, t_rm, t_rv, *(wb if affine else (None, None)),
                                      training=training, momentum=momentum, eps=eps),
        [x, w, b], g)
    y, new_rm, new_rv = F.batch_norm(x, rm, rv, w, b, training=training, momentum=momentum, eps=eps)
    close64(y, t_out, msg="y")
    close64(new_rm, t_rm.numpy(), msg="running_mean")
    close64(new_rv, t_rv.numpy(), msg="running_var (unbiased in training)")
    gx, gw, gb = F.batch_norm_backward(g, x, rm, rv, w, training=training, eps=eps)
    close64(gx, t_grads[0], msg="grad_x")
    if affine:
        close64(gw, t_grads[1], msg="grad_weight")
        close64(gb, t_grads[2], msg="grad_bias")


@needs_torch
def test_batch_norm_training_without_running_stats_vs_torch():
    rng = np.random.default_rng(18)
    x, _, _, w, b = bn_inputs((3, 4, 2, 2), rng)
    y, rm, rv = F.batch_norm(x, None, None, w, b, training=True)
    assert rm is None and rv is None
    close64(y, TF.batch_norm(t64(x), None, None, t64(w), t64(b), training=True).numpy())


@needs_torch
@pytest.mark.parametrize("p", [0.0, 0.25, 0.6])
def test_dropout_vs_torch(p):
    """torch's dropout draws its own mask; with our mask the math is x*m/(1-p)."""
    rng = np.random.default_rng(19)
    x = rng.standard_normal((4, 6))
    mask = F.dropout_mask(x.shape, p, rng)
    g = rng.standard_normal(x.shape)
    t_mask = torch.tensor(mask)
    t_out, (t_gx,) = torch_forward_backward(
        lambda t: torch.where(t_mask, t / (1 - p), torch.zeros_like(t)), [x], g)
    close64(F.dropout(x, p, mask=mask), t_out)
    close64(F.dropout_backward(g, mask, p), t_gx)
    # torch draws its own masks; ours must keep the same fraction, 1 - p, as torch's dropout does
    big_mask = F.dropout_mask((200, 200), p, np.random.default_rng(3))
    assert abs(float(np.mean(big_mask)) - (1 - p)) < 0.02


# -------------------------------------------------------------- hypothesis


@st.composite
def conv_configs(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    dh, dw = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    # smallest input with a non-empty output: dilation*(k-1)+1 - 2*padding
    h = draw(st.integers(max(1, dh * (kh - 1) + 1 - 2 * ph), dh * (kh - 1) + 7))
    w = draw(st.integers(max(1, dw * (kw - 1) + 1 - 2 * pw), dw * (kw - 1) + 7))
    return ConvCfg(draw(st.integers(1, 2)), draw(st.integers(1, 3)), h, w, draw(st.integers(1, 3)),
                   (kh, kw), (sh, sw), (ph, pw), (dh, dw))


@st.composite
def pool_configs(draw):
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = draw(st.none() | st.tuples(st.integers(1, 3), st.integers(1, 3)))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))  # torch's limit too
    h = draw(st.integers(max(1, kh - 2 * ph), kh + 6))
    w = draw(st.integers(max(1, kw - 2 * pw), kw + 6))
    return PoolCfg(draw(st.integers(1, 2)), draw(st.integers(1, 2)), h, w, (kh, kw), stride, (ph, pw))


@needs_torch
@HYPOTHESIS
@given(cfg=conv_configs(), seed=st.integers(0, 2**16))
def test_conv2d_vs_torch_hypothesis(cfg, seed):
    check_conv_vs_torch(cfg, seed)


@needs_torch
@HYPOTHESIS
@given(cfg=pool_configs(), seed=st.integers(0, 2**16))
def test_pools_vs_torch_hypothesis(cfg, seed):
    check_pools_vs_torch(cfg, seed)


# ==========================================================================
# 3. finite differences (float64, central, one random direction per input)
#
# These check the functional backwards (``conv2d_backward`` and friends) on an
# explicit ``grad_out``, which ``portacnn.testing.gradcheck`` (the tape) cannot
# express; hence the shared ``support.directional_check``.


@pytest.mark.parametrize("cfg", CONV_CONFIGS[:4] + CONV_CONFIGS[6:7] + CONV_CONFIGS[9:10], ids=lambda c: c.id)
def test_conv2d_finite_differences(cfg):
    rng = np.random.default_rng(20)
    x = rng.standard_normal((cfg.n, cfg.c, cfg.h, cfg.w))
    w = rng.standard_normal((cfg.o, cfg.c, *cfg.kernel))
    b = rng.standard_normal(cfg.o)
    g = rng.standard_normal(F.conv2d(x, w, b, **cfg.kw).shape)
    gx, gw, gb = F.conv2d_backward(g, x, w, **cfg.kw)
    directional_check(lambda x_, w_, b_: F.conv2d(x_, w_, b_, **cfg.kw), [x, w, b], {0: gx, 1: gw, 2: gb}, g, rng,
                      name="conv2d")


@pytest.mark.parametrize("cfg", POOL_CONFIGS, ids=lambda c: c.id)
def test_max_avg_pool_finite_differences(cfg):
    rng = np.random.default_rng(21)
    x = distinct_values((cfg.n, cfg.c, cfg.h, cfg.w), rng)  # h*|d| << 0.01: the argmax never moves
    args = (cfg.kernel, cfg.stride, cfg.padding)
    g = rng.standard_normal(pool_out_shape(cfg))
    directional_check(lambda x_: F.max_pool2d(x_, *args), [x], {0: F.max_pool2d_backward(g, x, *args)}, g, rng,
                      name="max_pool2d")
    directional_check(lambda x_: F.avg_pool2d(x_, *args), [x], {0: F.avg_pool2d_backward(g, x, *args)}, g, rng,
                      name="avg_pool2d")


@pytest.mark.parametrize("p", LP_NORMS + [math.inf])
@pytest.mark.parametrize("cfg", POOL_CONFIGS[:6], ids=lambda c: c.id)
def test_lp_pool_finite_differences(cfg, p):
    rng = np.random.default_rng(22)
    shape = (cfg.n, cfg.c, cfg.h, cfg.w)
    x = distinct_values(shape, rng) + 0.01 * math.prod(shape) if math.isinf(p) else rng.uniform(0.2, 2.0, shape)
    g = rng.standard_normal(pool_out_shape(cfg, padding=0))
    grad = F.lp_pool2d_backward(g, x, p, cfg.kernel, cfg.stride)
    directional_check(lambda x_: F.lp_pool2d(x_, p, cfg.kernel, cfg.stride), [x], {0: grad}, g, rng,
                      name="lp_pool2d")


@pytest.mark.parametrize("shape", LINEAR_SHAPES, ids=str)
def test_linear_finite_differences(shape):
    n, fin, fout = shape
    rng = np.random.default_rng(23)
    x, w, b = rng.standard_normal((n, fin)), rng.standard_normal((fout, fin)), rng.standard_normal(fout)
    g = rng.standard_normal((n, fout))
    gx, gw, gb = F.linear_backward(g, x, w)
    directional_check(F.linear, [x, w, b], {0: gx, 1: gw, 2: gb}, g, rng, name="linear")


@pytest.mark.parametrize("name", ["relu", "sigmoid", "tanh"])
def test_activation_finite_differences(name):
    rng = np.random.default_rng(24)
    x = away_from_zero((3, 4, 5), rng)
    g = rng.standard_normal(x.shape)
    fwd, bwd = getattr(F, name), getattr(F, name + "_backward")
    directional_check(fwd, [x], {0: bwd(g, x)}, g, rng, name=name)


@pytest.mark.parametrize("shape,axis", SOFTMAX_CASES, ids=str)
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_finite_differences(name, shape, axis):
    rng = np.random.default_rng(25)
    x = rng.standard_normal(shape) * 3
    g = rng.standard_normal(shape)
    fwd, bwd = getattr(F, name), getattr(F, name + "_backward")
    directional_check(lambda x_: fwd(x_, axis), [x], {0: bwd(g, x, axis)}, g, rng, name=name)


def test_cross_entropy_finite_differences():
    rng = np.random.default_rng(26)
    logits = rng.standard_normal((6, 5)) * 2
    labels = rng.integers(0, 5, 6)
    directional_check(lambda z: F.cross_entropy(z, labels), [logits],
                      {0: F.cross_entropy_backward(logits, labels)}, np.float64(1.0), rng, name="cross_entropy")


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", BN_SHAPES, ids=str)
def test_batch_norm_finite_differences(shape, training, affine):
    rng = np.random.default_rng(27)
    x, rm, rv, w, b = bn_inputs(shape, rng)
    eps = 1e-3
    g = rng.standard_normal(shape)
    if affine:
        gx, gw, gb = F.batch_norm_backward(g, x, rm, rv, w, training=training, eps=eps)
        directional_check(lambda x_, w_, b_: F.batch_norm(x_, rm, rv, w_, b_, training=training, eps=eps)[0],
                          [x, w, b], {0: gx, 1: gw, 2: gb}, g, rng, name="batch_norm")
    else:
        gx, _, _ = F.batch_norm_backward(g, x, rm, rv, None, training=training, eps=eps)
        directional_check(lambda x_: F.batch_norm(x_, rm, rv, training=training, eps=eps)[0],
                          [x], {0: gx}, g, rng, name="batch_norm")


def test_dropout_finite_differences():
    rng = np.random.default_rng(28)
    x = rng.standard_normal((5, 7))
    mask = F.dropout_mask(x.shape, 0.3, rng)
    g = rng.standard_normal(x.shape)
    directional_check(lambda x_: F.dropout(x_, 0.3, mask=mask), [x], {0: F.dropout_backward(g, mask, 0.3)}, g,
                      rng, name="dropout")


# ==========================================================================
# 4. backend parity


def _conv_args(rng):
    return [rng.standard_normal((2, 3, 7, 6)), rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(4)]


CONV_KW = dict(stride=(2, 1), padding=(1, 2), dilation=(1, 2))
POOL_ARGS = ((3, 2), (2, 1), (1, 1))  # kernel, stride, padding
LP_ARGS = ((3, 2), (2, 1))


def _bn(shape, rng):
    x, rm, rv, w, b = bn_inputs(shape, rng)
    return [x, rm, rv, w, b]


def _labels(rng, n=5, k=4):
    return rng.integers(0, k, n)


#: id -> (op taking the arrays positionally, builder of the host arrays)
PARITY_OPS = {
    "conv2d": (lambda x, w, b: F.conv2d(x, w, b, **CONV_KW), _conv_args),
    "conv2d-nobias": (lambda x, w: F.conv2d(x, w, **CONV_KW), lambda r: _conv_args(r)[:2]),
    "conv2d_backward": (lambda g, x, w: F.conv2d_backward(g, x, w, **CONV_KW),
                        lambda r: [r.standard_normal((2, 4, 4, 8))] + _conv_args(r)[:2]),
    "conv2d-groups": (lambda x, w, b: F.conv2d(x, w, b, groups=2, **CONV_KW),
                      lambda r: [r.standard_normal((2, 4, 7, 6)), r.standard_normal((6, 2, 3, 2)),
                                 r.standard_normal(6)]),
    "conv_transpose2d": (lambda x, w, b: F.conv_transpose2d(x, w, b, output_padding=(1, 1), groups=2, **CONV_KW),
                         lambda r: [r.standard_normal((2, 4, 5, 4)), r.standard_normal((4, 3, 3, 2)),
                                    r.standard_normal(6)]),
    "conv_transpose2d_backward": (
        lambda g, x, w: F.conv_transpose2d_backward(g, x, w, output_padding=(1, 1), groups=2, **CONV_KW),
        lambda r: [r.standard_normal((2, 6, 10, 3)), r.standard_normal((2, 4, 5, 4)), r.standard_normal((4, 3, 3, 2))]),
    "max_pool2d": (lambda x: F.max_pool2d(x, *POOL_ARGS), lambda r: [distinct_values((2, 3, 7, 6), r)]),
    "max_pool2d_backward": (lambda g, x: F.max_pool2d_backward(g, x, *POOL_ARGS),
                            lambda r: [r.standard_normal((2, 3, 4, 7)), distinct_values((2, 3, 7, 6), r)]),
    "avg_pool2d": (lambda x: F.avg_pool2d(x, *POOL_ARGS), lambda r: [r.standard_normal((2, 3, 7, 6))]),
    "avg_pool2d_backward": (lambda g, x: F.avg_pool2d_backward(g, x, *POOL_ARGS),
                            lambda r: [r.standard_normal((2, 3, 4, 7)), r.standard_normal((2, 3, 7, 6))]),
    "max_pool2d-ceil": (lambda x: F.max_pool2d(x, *POOL_ARGS, ceil_mode=True),
                        lambda r: [distinct_values((2, 3, 8, 6), r)]),
    "max_pool2d_backward-ceil": (lambda g, x: F.max_pool2d_backward(g, x, *POOL_ARGS, ceil_mode=True),
                                 lambda r: [r.standard_normal((2, 3, 5, 7)), distinct_values((2, 3, 8, 6), r)]),
    "avg_pool2d-ceil-exclude": (lambda x: F.avg_pool2d(x, *POOL_ARGS, ceil_mode=True, count_include_pad=False),
                                lambda r: [r.standard_normal((2, 3, 8, 6))]),
    "avg_pool2d_backward-ceil-exclude": (
        lambda g, x: F.avg_pool2d_backward(g, x, *POOL_ARGS, ceil_mode=True, count_include_pad=False),
        lambda r: [r.standard_normal((2, 3, 5, 7)), r.standard_normal((2, 3, 8, 6))]),
    "adaptive_avg_pool2d": (lambda x: F.adaptive_avg_pool2d(x, (3, 2)), lambda r: [r.standard_normal((2, 3, 7, 5))]),
    "adaptive_avg_pool2d_backward": (lambda g, x: F.adaptive_avg_pool2d_backward(g, x, (3, 2)),
                                     lambda r: [r.standard_normal((2, 3, 3, 2)), r.standard_normal((2, 3, 7, 5))]),
    "adaptive_max_pool2d": (lambda x: F.adaptive_max_pool2d(x, (3, 2)), lambda r: [distinct_values((2, 3, 7, 5), r)]),
    "adaptive_max_pool2d_backward": (lambda g, x: F.adaptive_max_pool2d_backward(g, x, (3, 2)),
                                     lambda r: [r.standard_normal((2, 3, 3, 2)), distinct_values((2, 3, 7, 5), r)]),
    "interpolate": (lambda x: F.interpolate(x, size=(8, 4)), lambda r: [r.standard_normal((2, 3, 5, 7))]),
    "interpolate_backward": (lambda g, x: F.interpolate_backward(g, x, size=(8, 4)),
                             lambda r: [r.standard_normal((2, 3, 8, 4)), r.standard_normal((2, 3, 5, 7))]),
    "interpolate-bilinear": (lambda x: F.interpolate(x, scale_factor=(1.5, 0.7), mode="bilinear"),
                             lambda r: [r.standard_normal((2, 3, 5, 7))]),
    "interpolate_backward-bilinear-align": (
        lambda g, x: F.interpolate_backward(g, x, size=(9, 11), mode="bilinear", align_corners=True),
        lambda r: [r.standard_normal((2, 3, 9, 11)), r.standard_normal((2, 3, 5, 7))]),
    "lp_pool2d-p2": (lambda x: F.lp_pool2d(x, 2, *LP_ARGS), lambda r: [r.uniform(0.2, 2, (2, 3, 7, 6))]),
    "lp_pool2d_backward-p3": (lambda g, x: F.lp_pool2d_backward(g, x, 3, *LP_ARGS),
                              lambda r: [r.standard_normal((2, 3, 3, 5)), r.uniform(0.2, 2, (2, 3, 7, 6))]),
    "lp_pool2d-inf": (lambda x: F.lp_pool2d(x, math.inf, *LP_ARGS), lambda r: [distinct_values((2, 3, 7, 6), r)]),
    "linear": (F.linear, lambda r: [r.standard_normal((5, 8)), r.standard_normal((3, 8)), r.standard_normal(3)]),
    "linear_backward": (F.linear_backward,
                        lambda r: [r.standard_normal((5, 3)), r.standard_normal((5, 8)), r.standard_normal((3, 8))]),
    "relu": (F.relu, lambda r: [r.standard_normal((3, 4, 5))]),
    "relu_backward": (F.relu_backward, lambda r: [r.standard_normal((3, 4, 5)), r.standard_normal((3, 4, 5))]),
    "sigmoid": (F.sigmoid, lambda r: [r.standard_normal((3, 4, 5)) * 5]),
    "sigmoid_backward": (F.sigmoid_backward, lambda r: [r.standard_normal((3, 4)), r.standard_normal((3, 4)) * 5]),
    "tanh": (F.tanh, lambda r: [r.standard_normal((3, 4, 5)) * 2]),
    "tanh_backward": (F.tanh_backward, lambda r: [r.standard_normal((3, 4)), r.standard_normal((3, 4)) * 2]),
    "softmax": (F.softmax, lambda r: [r.standard_normal((4, 7)) * 3]),
    "softmax-axis1": (lambda x: F.softmax(x, axis=1), lambda r: [r.standard_normal((2, 5, 3)) * 3]),
    "softmax_backward": (lambda g, x: F.softmax_backward(g, x, axis=1),
                         lambda r: [r.standard_normal((2, 5, 3)), r.standard_normal((2, 5, 3)) * 3]),
    "log_softmax": (F.log_softmax, lambda r: [r.standard_normal((4, 7)) * 3]),
    "log_softmax_backward": (F.log_softmax_backward,
                             lambda r: [r.standard_normal((4, 7)), r.standard_normal((4, 7)) * 3]),
    "leaky_relu": (lambda x: F.leaky_relu(x, 0.2), lambda r: [r.standard_normal((3, 4, 5))]),
    "leaky_relu_backward": (lambda g, x: F.leaky_relu_backward(g, x, -0.3),
                            lambda r: [r.standard_normal((3, 5)), r.standard_normal((3, 5))]),
    "elu": (lambda x: F.elu(x, 0.7), lambda r: [r.standard_normal((3, 4, 5)) * 2]),
    "elu_backward": (F.elu_backward, lambda r: [r.standard_normal((3, 5)), r.standard_normal((3, 5)) * 2]),
    "gelu": (F.gelu, lambda r: [r.standard_normal((3, 4, 5)) * 3]),
    "gelu-tanh": (lambda x: F.gelu(x, approximate="tanh"), lambda r: [r.standard_normal((3, 4, 5)) * 3]),
    "gelu_backward": (F.gelu_backward, lambda r: [r.standard_normal((3, 5)), r.standard_normal((3, 5)) * 3]),
    "gelu_backward-tanh": (lambda g, x: F.gelu_backward(g, x, approximate="tanh"),
                           lambda r: [r.standard_normal((3, 5)), r.standard_normal((3, 5)) * 3]),
    "silu": (F.silu, lambda r: [r.standard_normal((3, 4, 5)) * 3]),
    "silu_backward": (F.silu_backward, lambda r: [r.standard_normal((3, 5)), r.standard_normal((3, 5)) * 3]),
    "hardswish": (F.hardswish, lambda r: [r.standard_normal((3, 4, 5)) * 3]),
    "hardswish_backward": (F.hardswish_backward,
                           lambda r: [r.standard_normal((3, 5)), r.standard_normal((3, 5)) * 3]),
    "cross_entropy": (F.cross_entropy, lambda r: [r.standard_normal((5, 4)) * 2, _labels(r)]),
    "cross_entropy_backward": (F.cross_entropy_backward, lambda r: [r.standard_normal((5, 4)) * 2, _labels(r)]),
    "cross_entropy-weighted-smoothed": (
        lambda z, y, w: F.cross_entropy(z, y, weight=w, label_smoothing=0.2),
        lambda r: [r.standard_normal((5, 4)) * 2, _labels(r), r.uniform(0.2, 2.0, 4)]),
    "cross_entropy_backward-none": (
        lambda z, y, w, g: F.cross_entropy_backward(z, y, weight=w, reduction="none", label_smoothing=0.2, grad_out=g),
        lambda r: [r.standard_normal((5, 4)) * 2, _labels(r), r.uniform(0.2, 2.0, 4), r.standard_normal(5)]),
    "nll_loss": (F.nll_loss, lambda r: [r.standard_normal((5, 4)) * 2, _labels(r)]),
    "nll_loss-none": (lambda x, y: F.nll_loss(x, y, reduction="none"),
                      lambda r: [r.standard_normal((5, 4)) * 2, _labels(r)]),
    "nll_loss_backward": (F.nll_loss_backward,
                          lambda r: [r.standard_normal(()), r.standard_normal((5, 4)) * 2, _labels(r)]),
    "nll_loss_backward-none": (lambda g, x, y: F.nll_loss_backward(g, x, y, reduction="none"),
                               lambda r: [r.standard_normal(5), r.standard_normal((5, 4)) * 2, _labels(r)]),
    "mse_loss": (F.mse_loss, lambda r: [r.standard_normal((3, 5)), r.standard_normal((3, 5))]),
    "mse_loss-none": (lambda x, t: F.mse_loss(x, t, reduction="none"),
                      lambda r: [r.standard_normal((3, 5)), r.standard_normal((3, 5))]),
    "mse_loss_backward": (F.mse_loss_backward,
                          lambda r: [r.standard_normal(()), r.standard_normal((3, 5)), r.standard_normal((3, 5))]),
    "l1_loss": (lambda x, t: F.l1_loss(x, t, reduction="sum"),
                lambda r: [r.standard_normal((3, 5)), r.standard_normal((3, 5))]),
    "l1_loss_backward": (lambda g, x, t: F.l1_loss_backward(g, x, t, reduction="none"),
                         lambda r: [r.standard_normal((3, 5)), r.standard_normal((3, 5)), r.standard_normal((3, 5))]),
    "binary_cross_entropy_with_logits": (F.binary_cross_entropy_with_logits,
                                         lambda r: [r.standard_normal((3, 5)) * 4, r.uniform(0, 1, (3, 5))]),
    "binary_cross_entropy_with_logits-none": (
        lambda x, t: F.binary_cross_entropy_with_logits(x, t, reduction="none"),
        lambda r: [r.standard_normal((3, 5)) * 4, r.uniform(0, 1, (3, 5))]),
    "binary_cross_entropy_with_logits_backward": (
        lambda g, x, t: F.binary_cross_entropy_with_logits_backward(g, x, t, reduction="sum"),
        lambda r: [r.standard_normal(()), r.standard_normal((3, 5)) * 4, r.uniform(0, 1, (3, 5))]),
    "batch_norm-train": (lambda x, rm, rv, w, b: F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.3),
                         lambda r: _bn((4, 3, 3, 2), r)),
    "batch_norm-eval": (lambda x, rm, rv, w, b: F.batch_norm(x, rm, rv, w, b, training=False),
                        lambda r: _bn((5, 3), r)),
    "batch_norm-train-nostats": (lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True),
                                 lambda r: [_bn((6, 3), r)[i] for i in (0, 3, 4)]),
    "batch_norm_backward-train": (lambda g, x, rm, rv, w: F.batch_norm_backward(g, x, rm, rv, w, training=True),
                                  lambda r: [r.standard_normal((4, 3, 3, 2))] + _bn((4, 3, 3, 2), r)[:4]),
    "batch_norm_backward-eval": (lambda g, x, rm, rv, w: F.batch_norm_backward(g, x, rm, rv, w, training=False),
                                 lambda r: [r.standard_normal((5, 3))] + _bn((5, 3), r)[:4]),
    "batch_norm-train-3d": (lambda x, rm, rv, w, b: F.batch_norm(x, rm, rv, w, b, training=True),
                            lambda r: _bn((4, 3, 5), r)),
    "batch_norm_backward-train-3d": (
        lambda g, x, rm, rv, w: F.batch_norm_backward(g, x, rm, rv, w, training=True),
        lambda r: [r.standard_normal((4, 3, 5))] + _bn((4, 3, 5), r)[:4]),
    "layer_norm": (lambda x, w, b: F.layer_norm(x, (5, 3), w, b),
                   lambda r: [r.standard_normal((2, 4, 5, 3)), r.standard_normal((5, 3)), r.standard_normal((5, 3))]),
    "layer_norm-noaffine": (lambda x: F.layer_norm(x, 7), lambda r: [r.standard_normal((3, 7))]),
    "layer_norm_backward": (lambda g, x, w: F.layer_norm_backward(g, x, (5, 3), w),
                            lambda r: [r.standard_normal((2, 4, 5, 3)), r.standard_normal((2, 4, 5, 3)),
                                       r.standard_normal((5, 3))]),
    "group_norm": (lambda x, w, b: F.group_norm(x, 2, w, b),
                   lambda r: [r.standard_normal((3, 4, 5, 2)), r.standard_normal(4), r.standard_normal(4)]),
    "group_norm-noaffine": (lambda x: F.group_norm(x, 3, eps=1e-3), lambda r: [r.standard_normal((2, 6, 5))]),
    "group_norm_backward": (lambda g, x, w: F.group_norm_backward(g, x, 2, w),
                            lambda r: [r.standard_normal((3, 4, 5, 2)), r.standard_normal((3, 4, 5, 2)),
                                       r.standard_normal(4)]),
    "dropout": (lambda x, m: F.dropout(x, 0.4, mask=m),
                lambda r: [r.standard_normal((4, 6)), F.dropout_mask((4, 6), 0.4, r)]),
    "dropout-eval": (lambda x: F.dropout(x, 0.4, training=False), lambda r: [r.standard_normal((4, 6))]),
    "dropout_backward": (lambda g, m: F.dropout_backward(g, m, 0.4),
                         lambda r: [r.standard_normal((4, 6)), F.dropout_mask((4, 6), 0.4, r)]),
}


def _flatten(result):
    return list(result) if isinstance(result, tuple) else [result]


@pytest.mark.parametrize("op_id", list(PARITY_OPS))
def test_parity(case, op_id):
    op, build = PARITY_OPS[op_id]
    host = build(np.random.default_rng(zlib.crc32(op_id.encode())))
    expected = _flatten(op(*[case.ref(a) for a in host]))  # NumPy float64 on the same rounded inputs
    inputs = [case.put(a) for a in host]
    snapshots = [case.to_numpy(a) for a in inputs]
    actual = _flatten(op(*inputs))
    assert len(actual) == len(expected)
    for i, (got, want) in enumerate(zip(actual, expected)):
        if want is None:
            assert got is None, f"output {i}"
            continue
        case.assert_close(got, want, err_msg=f"{op_id} output {i}")
    for i, (a, before) in enumerate(zip(inputs, snapshots)):
        np.testing.assert_array_equal(case.to_numpy(a), before, err_msg=f"{op_id} changed input {i}")
        case.check(a, dtype=None)


def test_parity_covers_every_op():
    """Every public forward/backward appears in the parity table."""
    covered = {op_id.split("-")[0] for op_id in PARITY_OPS}
    missing = {name for name in F.__all__ if name not in covered}
    assert not missing, missing


def test_readonly_numpy_inputs_really_are_readonly(backend):
    """The harness itself: numpy_readonly inputs reject writes; others are copies."""
    host = np.ones(3)
    a = backend.asarray(host)
    if backend.id == "numpy_readonly":
        with pytest.raises(ValueError):
            a[0] = 2.0
    host[0] = 5.0
    assert backend.to_numpy(a)[0] == 1.0  # no memory shared with the host array


def test_dropout_host_mask_and_seed_on_every_backend(case):
    """A host NumPy mask (or an int seed) gives the same result on every backend."""
    if case.backend.module != "numpy":
        pytest.importorskip("portacnn.backends", reason="portacnn.backends is not available yet")
    rng = np.random.default_rng(29)
    x = rng.standard_normal((3, 5))
    mask = F.dropout_mask(x.shape, 0.5, 7)
    want = F.dropout(case.ref(x), 0.5, mask=mask)
    case.assert_close(F.dropout(case.put(x), 0.5, mask=mask), want)
    case.assert_close(F.dropout(case.put(x), 0.5, rng=7), want)
    case.assert_close(F.dropout_backward(case.put(x), mask, 0.5), want)


# ==========================================================================
# numerics at extreme logits


def test_extreme_logits_stay_finite(case):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4], [1e4, 1e4, -1e4], [-1e4, -1e4, -1e4]])
    labels = np.array([1, 0, 2, 0])
    z = case.put(logits)
    lab = case.put(labels)
    g = case.put(np.ones_like(logits))
    results = {
        "sigmoid": F.sigmoid(z), "sigmoid_backward": F.sigmoid_backward(g, z),
        "softmax": F.softmax(z), "softmax_backward": F.softmax_backward(g, z),
        "log_softmax": F.log_softmax(z), "log_softmax_backward": F.log_softmax_backward(g, z),
        "cross_entropy": F.cross_entropy(z, lab), "cross_entropy_backward": F.cross_entropy_backward(z, lab),
    }
    for name, r in results.items():
        case.check(r)
        assert np.all(np.isfinite(case.to_numpy(r))), f"{name} not finite: {case.to_numpy(r)}"
    # and the values are the exact limits
    s = case.to_numpy(results["sigmoid"])
    np.testing.assert_array_equal(s[logits == 1e4], 1.0)
    np.testing.assert_array_equal(s[logits == -1e4], 0.0)
    np.testing.assert_allclose(case.to_numpy(results["softmax"])[0], [1, 0, 0])
    np.testing.assert_allclose(case.to_numpy(results["softmax"])[2], [0.5, 0.5, 0])
    np.testing.assert_allclose(case.to_numpy(results["log_softmax"])[0], [0, -2e4, -1e4])
    # per-sample losses: 2e4, 2e4, 2e4 + log 2, log 3
    want_loss = (2e4 + 2e4 + 2e4 + math.log(2) + math.log(3)) / 4
    np.testing.assert_allclose(float(case.to_numpy(results["cross_entropy"])), want_loss, rtol=case.rtol)


# ==========================================================================
# max-pool ties


TIE_CASES = [
    # shape, kernel, stride, padding, fill value
    ((1, 1, 4, 4), 2, None, 0, 1.0),
    ((2, 2, 5, 5), 3, 1, 1, -2.0),  # overlapping windows, negative values next to -inf padding
    ((1, 2, 5, 6), (2, 3), (1, 2), (1, 0), 0.0),
]


@pytest.mark.parametrize("shape,kernel,stride,padding,fill", TIE_CASES, ids=str)
def test_max_pool_ties_go_to_first_in_row_major_order(case, shape, kernel, stride, padding, fill):
    x = np.full(shape, fill)
    rng = np.random.default_rng(30)
    g = rng.standard_normal(F.max_pool2d(x, kernel, stride, padding).shape)
    want = ref_max_pool2d(x, kernel, stride, padding, grad_out=g)
    got = F.max_pool2d_backward(case.put(g), case.put(x), kernel, stride, padding)
    case.assert_close(got, case.ref(want))
    # spelled out for the simplest case: each window's first element takes it all
    if padding == 0 and stride is None:
        k = pair(kernel)
        expected = np.zeros(shape)
        expected[:, :, ::k[0], ::k[1]] = g
        case.assert_close(got, case.ref(expected))


def test_max_pool_partial_ties():
    """Two equal maxima in a window: the earlier one (row-major) wins."""
    x = np.array([[[[0.0, 5.0, 1.0, 1.0],
                    [5.0, 2.0, 1.0, 1.0]]]])
    g = np.array([[[[3.0, 7.0]]]])
    np.testing.assert_array_equal(F.max_pool2d_backward(g, x, 2),
                                  [[[[0, 3, 7, 0], [0, 0, 0, 0]]]])


@pytest.mark.parametrize("cfg", POOL_CONFIGS, ids=lambda c: c.id)
def test_max_pool_backward_from_kept_forward_output(case, cfg):
    """Handing max_pool2d_backward the forward's result (what MaxPool2d does) changes nothing."""
    rng = np.random.default_rng(31)
    x = case.put(np.round(rng.standard_normal((cfg.n, cfg.c, cfg.h, cfg.w)), 1))  # rounding makes ties
    args = (cfg.kernel, cfg.stride, cfg.padding)
    out = F.max_pool2d(x, *args)
    g = case.put(rng.standard_normal(tuple(out.shape)))
    want = case.to_numpy(F.max_pool2d_backward(g, x, *args))
    case.assert_close(F.max_pool2d_backward(g, x, *args, forward_output=out), want, rtol=0, atol=0)


def test_max_pool_backward_refuses_a_foreign_forward_output():
    x = np.zeros((1, 1, 4, 4))
    with pytest.raises(ShapeError, match="forward_output must be max_pool2d's result"):
        F.max_pool2d_backward(np.zeros((1, 1, 2, 2)), x, 2, forward_output=np.zeros((1, 1, 4, 4)))
    with pytest.raises(ShapeError, match="dtype float64"):
        F.max_pool2d_backward(np.zeros((1, 1, 2, 2)), x, 2, forward_output=np.zeros((1, 1, 2, 2), np.float32))


@pytest.mark.parametrize("cfg", CONV_CONFIGS[:6], ids=lambda c: c.id)
def test_in_place_scatter_matches_the_generic_path(cfg, monkeypatch):
    """Backends with writable views add gradients back through views; the generic
    path (array_api_extra.at, used on JAX and array-api-strict) must agree bit for bit."""
    import portacnn._arrays

    rng = np.random.default_rng(33)
    x = rng.standard_normal((cfg.n, cfg.c, cfg.h, cfg.w))
    w = rng.standard_normal((cfg.o, cfg.c, *cfg.kernel))
    g = rng.standard_normal(F.conv2d(x, w, **cfg.kw).shape)
    g_pool = rng.standard_normal(F.max_pool2d(x, 3, 2, 1).shape)

    def backward_passes():
        return (*F.conv2d_backward(g, x, w, **cfg.kw), F.max_pool2d_backward(g_pool, x, 3, 2, 1),
                F.avg_pool2d_backward(g_pool, x, 3, 2, 1), F.max_pool2d_backward(np.ones(F.max_pool2d(x, 2).shape), x, 2))

    assert portacnn._arrays.writes_through_views(x)  # the first run really takes the fast path
    fast = backward_passes()
    monkeypatch.setitem(portacnn._arrays._WRITABLE_VIEWS_BY_TYPE, np.ndarray, False)
    assert not portacnn._arrays.writes_through_views(x)
    for got, want in zip(fast, backward_passes()):
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("op", ["conv", "max_pool", "avg_pool"])
def test_results_do_not_depend_on_the_inputs_memory_layout(op):
    """Ops work on a batch-last view of their input; an NCHW-contiguous input, a batch-last
    one (what layers hand each other) and a strided slice must all give the same numbers."""
    rng = np.random.default_rng(32)
    batch_last = rng.standard_normal((3, 8, 9, 4))  # (C, H, W, N) in memory
    layouts = {
        "nchw": np.ascontiguousarray(batch_last.transpose(3, 0, 1, 2)),
        "batch-last": batch_last.transpose(3, 0, 1, 2),
        "strided": np.ascontiguousarray(batch_last.transpose(3, 0, 1, 2).repeat(2, axis=3))[:, :, :, ::2],
    }
    w = rng.standard_normal((5, 3, 3, 3))
    forward, backward = {
        "conv": (lambda x: F.conv2d(x, w, padding=1), lambda g, x: F.conv2d_backward(g, x, w, padding=1)),
        "max_pool": (lambda x: F.max_pool2d(x, 2), lambda g, x: (F.max_pool2d_backward(g, x, 2),)),
        "avg_pool": (lambda x: F.avg_pool2d(x, 3, 2, 1), lambda g, x: (F.avg_pool2d_backward(g, x, 3, 2, 1),)),
    }[op]
    reference = layouts["nchw"]
    out = forward(reference)
    g = rng.standard_normal(out.shape)
    for name, x in layouts.items():
        np.testing.assert_array_equal(x, reference)
        np.testing.assert_allclose(forward(x), out, rtol=1e-13, err_msg=name)
        for got, want in zip(backward(g, x), backward(g, reference)):
            np.testing.assert_allclose(got, want, rtol=1e-13, err_msg=name)


# ==========================================================================
# errors


def _foreign(backend, shape):
    """(library name, zeros of ``shape``) from a library other than ``backend``'s."""
    if backend.module != "numpy":
        return "numpy", np.zeros(shape)
    torch_ = pytest.importorskip("torch")
    return "torch", torch_.zeros(shape, dtype=torch_.float64)


def test_mixing_backends_names_both(backend):
    x = backend.asarray(np.zeros((1, 3, 5, 5)))
    name, w = _foreign(backend, (2, 3, 2, 2))
    with pytest.raises(BackendMismatchError) as err:
        F.conv2d(x, w)
    msg = str(err.value)
    assert name in msg and backend.module in msg, msg
    assert "x is a" in msg and "weight is a" in msg, msg
    name, w = _foreign(backend, (4, 3))
    with pytest.raises(BackendMismatchError, match=name):
        F.linear(backend.asarray(np.zeros((2, 3))), w)
    name, labels = _foreign(backend, (2,))
    with pytest.raises(BackendMismatchError, match=name):
        F.cross_entropy(backend.asarray(np.zeros((2, 3))), labels)
    name, g = _foreign(backend, (1, 3, 2, 2))
    with pytest.raises(BackendMismatchError, match=name):
        F.max_pool2d_backward(g, x, 2)


def test_strict_default_device_vs_device1():
    strict = pytest.importorskip("array_api_strict")
    x = strict.asarray(np.zeros((1, 2, 4, 4)))
    w = strict.asarray(np.zeros((3, 2, 2, 2)), device=strict.Device("device1"))
    with pytest.raises(BackendMismatchError) as err:
        F.conv2d(x, w)
    assert "CPU_DEVICE" in str(err.value) and "device1" in str(err.value), str(err.value)
    g = strict.asarray(np.zeros((1, 2, 2, 2)), device=strict.Device("device1"))
    with pytest.raises(BackendMismatchError):
        F.max_pool2d_backward(g, x, 2)
    with pytest.raises(BackendMismatchError):
        F.cross_entropy(strict.asarray(np.zeros((2, 3))),
                        strict.asarray(np.zeros(2, dtype=np.int64), device=strict.Device("device1")))


def _raises(exc, match=None):
    return pytest.raises(exc, match=match)


def test_shape_errors(backend):
    a = lambda shape, dtype=np.float64: backend.asarray(np.zeros(shape, dtype))  # noqa: E731
    with _raises(ShapeError, r"4-D.*\(N, C, H, W\).*\(3, 5, 5\)"):
        F.conv2d(a((3, 5, 5)), a((2, 3, 3, 3)))
    with _raises(ShapeError, "weight"):
        F.conv2d(a((1, 3, 5, 5)), a((2, 3, 3)))
    with _raises(ShapeError, "3 channels but weight expects 2"):
        F.conv2d(a((1, 3, 5, 5)), a((4, 2, 3, 3)))
    with _raises(ShapeError, "bias"):
        F.conv2d(a((1, 3, 5, 5)), a((4, 3, 3, 3)), a((3,)))
    with _raises(ShapeError, "4-D"):
        F.max_pool2d(a((5, 5)), 2)
    with _raises(ShapeError, "2-D"):
        F.linear(a((2, 3, 4)), a((5, 12)))
    with _raises(ShapeError, "3 features"):
        F.linear(a((2, 3)), a((5, 4)))
    with _raises(ShapeError, "empty batch"):
        F.conv2d(a((0, 3, 5, 5)), a((2, 3, 3, 3)))
    with _raises(ShapeError, r"labels must have shape \(4,\)"):
        F.cross_entropy(a((4, 3)), a((3,), np.int64))
    with _raises(ShapeError, "running_mean"):
        F.batch_norm(a((4, 3)), a((2,)), a((3,)))
    with _raises(ShapeError, "more than one value"):
        F.batch_norm(a((1, 3)), None, None, training=True)
    with _raises(ShapeError, "grad_out"):
        F.conv2d_backward(a((1, 2, 4, 4)), a((1, 3, 5, 5)), a((2, 3, 3, 3)))
    with _raises(ShapeError, "grad_out"):
        F.max_pool2d_backward(a((1, 3, 3, 3)), a((1, 3, 5, 5)), 2)
    with _raises(ShapeError, "mask"):
        F.dropout(a((2, 3)), 0.5, mask=backend.asarray(np.ones((3, 2), bool)))


@pytest.mark.parametrize("op", ["conv2d", "max_pool2d", "avg_pool2d", "lp_pool2d"])
def test_kernel_too_large_states_output_size(backend, op):
    x = backend.asarray(np.zeros((1, 1, 3, 4)))
    if op == "conv2d":
        call = lambda: F.conv2d(x, backend.asarray(np.zeros((1, 1, 5, 2))), dilation=(1, 2))  # noqa: E731
        oh, ow = out_size(3, 5, 1, 0), out_size(4, 2, 1, 0, 2)
    elif op == "lp_pool2d":
        call = lambda: F.lp_pool2d(x, 2, (2, 5))  # noqa: E731
        oh, ow = out_size(3, 2, 2, 0), out_size(4, 5, 5, 0)
    else:
        call = lambda: getattr(F, op)(x, (4, 2), 1)  # noqa: E731
        oh, ow = out_size(3, 4, 1, 0), out_size(4, 2, 1, 0)
    with pytest.raises(ShapeError) as err:
        call()
    assert f"{oh}x{ow}" in str(err.value), str(err.value)
    assert "(3, 4)" in str(err.value)


def test_dtype_errors(backend):
    def a(shape, dtype=np.float64):
        return backend.asarray(np.zeros(shape, dtype))

    with _raises(DTypeError, r"x has dtype \S*float32 but weight has dtype \S*float64"):
        F.conv2d(a((1, 2, 4, 4), np.float32), a((1, 2, 2, 2)))
    with _raises(DTypeError, "bias"):
        F.conv2d(a((1, 2, 4, 4)), a((1, 2, 2, 2)), a((1,), np.float32))
    with _raises(DTypeError, "weight"):
        F.linear(a((2, 3)), a((4, 3), np.float32))
    with _raises(DTypeError, "running_var"):
        F.batch_norm(a((4, 3), np.float32), a((3,), np.float32), a((3,)))
    with _raises(DTypeError, "labels must be integer"):
        F.cross_entropy(a((2, 3)), a((2,)))


INT_INPUT_OPS = {
    "conv2d": lambda a: F.conv2d(a((1, 1, 4, 4), np.uint8), a((1, 1, 2, 2))),
    "max_pool2d": lambda a: F.max_pool2d(a((1, 1, 4, 4), np.uint8), 2),
    "avg_pool2d": lambda a: F.avg_pool2d(a((1, 1, 4, 4), np.int32), 2),
    "lp_pool2d": lambda a: F.lp_pool2d(a((1, 1, 4, 4), np.int64), 2, 2),
    "linear": lambda a: F.linear(a((2, 3), np.int64), a((2, 3))),
    "relu": lambda a: F.relu(a((2, 3), np.int32)),
    "softmax": lambda a: F.softmax(a((2, 3), np.int64)),
    "cross_entropy": lambda a: F.cross_entropy(a((2, 3), np.int64), a((2,), np.int64)),
    "batch_norm": lambda a: F.batch_norm(a((4, 3), np.int64), None, None, training=True),
    "dropout": lambda a: F.dropout(a((2, 3), np.uint8), 0.5, rng=0),
}


@pytest.mark.parametrize("op", list(INT_INPUT_OPS))
def test_integer_input_is_a_dtype_error(backend, op):
    def a(shape, dtype=np.float64):
        return backend.asarray(np.zeros(shape, dtype))

    with pytest.raises(DTypeError, match="real floating-point") as err:
        INT_INPUT_OPS[op](a)
    assert isinstance(err.value, TypeError) and isinstance(err.value, PortacnnError)
    if "uint8" in str(err.value):
        assert "/ 255" in str(err.value)  # the hint for images


def test_argument_errors():
    x = np.zeros((1, 1, 6, 6))
    with _raises(ValueError, "padding .* at most half"):
        F.max_pool2d(x, 2, padding=2)
    with _raises(ValueError, "padding .* at most half"):
        F.avg_pool2d(x, (3, 2), padding=(1, 2))
    with _raises(ValueError, "stride must be >= 1"):
        F.conv2d(x, np.zeros((1, 1, 2, 2)), stride=0)
    with _raises(ValueError, "dilation must be >= 1"):
        F.conv2d(x, np.zeros((1, 1, 2, 2)), dilation=(1, 0))
    with _raises(TypeError, "padding must be an int or a pair"):
        F.conv2d(x, np.zeros((1, 1, 2, 2)), padding=(1, 2, 3))
    with _raises(TypeError, "stride must be an int or a pair"):
        F.max_pool2d(x, 2, stride=True)
    for p in (0, -1.0, "2", True):
        with _raises(ValueError, "p must be a positive number"):
            F.lp_pool2d(x, p, 2)
    for p in (-0.1, 1.0):
        with _raises(ValueError, r"\[0, 1\)"):
            F.dropout(x, p, rng=0)
    with _raises(ValueError, "mask or an rng"):
        F.dropout(x, 0.5)
    with _raises(ValueError, "eval mode needs running_mean"):
        F.batch_norm(np.zeros((2, 3)), None, None, training=False)
    with _raises(DTypeError, "must be an array, got list"):
        F.relu([1.0, 2.0])
    with _raises(DTypeError, "mask must be a boolean array"):
        F.dropout(np.zeros((2, 2)), 0.5, mask=[[True, False], [True, True]])


# ==========================================================================
# the harness checks itself


def test_harness_check_rejects_wrong_placement_and_dtype(case):
    x = case.put(np.ones((2, 2)))
    case.check(x)
    other = "float64" if case.dtype == "float32" else "float32"
    with pytest.raises(AssertionError, match="dtype"):
        case.check(x, dtype=other)
    foreign = np.ones((2, 2), dtype=case.np_dtype) if case.backend.module != "numpy" else None
    if foreign is not None:
        with pytest.raises(AssertionError, match="namespace"):
            case.check(foreign)
    if case.backend.id.startswith("array_api_strict"):
        strict = pytest.importorskip("array_api_strict")
        wrong = "CPU_DEVICE" if case.backend.id.endswith("device1") else "device1"
        y = strict.asarray(np.ones((2, 2), dtype=case.np_dtype), device=strict.Device(wrong))
        with pytest.raises(AssertionError, match="device"):
            case.check(y)


# ==========================================================================
# regressions: bugs this suite found in the library, now fixed


def test_cross_entropy_uint8_labels_with_many_classes():
    rng = np.random.default_rng(31)
    logits = rng.standard_normal((3, 300))
    labels = np.array([5, 0, 255])
    close64(F.cross_entropy(logits, labels.astype(np.uint8)), F.cross_entropy(logits, labels))
    close64(F.cross_entropy_backward(logits, labels.astype(np.uint8)), F.cross_entropy_backward(logits, labels))


def test_batch_norm_backward_eval_without_running_stats_is_a_library_error():
    x = np.ones((4, 3))
    with pytest.raises(ValueError, match="running_mean"):
        F.batch_norm_backward(x, x, None, None, training=False)


def test_dropout_non_boolean_mask_is_a_dtype_error():
    x = np.ones((2, 3))
    with pytest.raises(DTypeError, match="mask"):
        F.dropout(x, 0.5, mask=np.ones((2, 3)))


def test_the_math_imports_no_array_library():
    """The array rules: functional, the tape, optim and amp take their namespace from their inputs."""
    import ast
    from pathlib import Path

    root = Path(F.__file__).resolve().parents[1]
    files = [*root.joinpath("functional").glob("*.py"), *root.joinpath("autograd").glob("*.py"),
             root / "optim.py", root / "amp.py"]
    offenders = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            offenders += [f"{path.name}: {name}" for name in names
                          if name.split(".")[0] in ("numpy", "cupy", "torch", "jax", "array_api_strict")]
    assert not offenders, offenders
