"""Max, average and power-mean pooling, on the batch-last view of the input like convolution."""

from __future__ import annotations

import math

from .._arrays import device_of, namespace_of
from .._checks import check_grad, is_real_number, pair, require_float, require_ndim
from .._dispatch import tape_aware
from ..errors import ArgumentError, ArgumentTypeError, ShapeError
from ._windows import (batch_first, batch_last, output_hw, pad_spatial, padded_shape, scatter_taps, tap_slices,
                       unpad_spatial, window_taps)


def _pool_setup(x, kernel_size, stride, padding, op: str):
    xp = namespace_of(x, names=("x",))
    require_float(xp, x, f"{op} input x")
    require_ndim(x, 4, f"{op} input x", "(N, C, H, W)")
    kernel = pair(kernel_size, "kernel_size", minimum=1)
    stride = kernel if stride is None else pair(stride, "stride", minimum=1)
    padding = pair(padding, "padding", minimum=0)
    check_pool_padding(padding, kernel, op)
    out_hw = output_hw(x, kernel, stride, padding, (1, 1), op)
    out_shape = (x.shape[0], x.shape[1], *out_hw)
    disjoint = stride[0] >= kernel[0] and stride[1] >= kernel[1]
    return xp, kernel, out_shape, padding, tap_slices(kernel, stride, (1, 1), out_hw), disjoint


def check_pool_padding(padding, kernel, op: str) -> None:
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ArgumentError(
            f"{op}: padding {padding} must be at most half the kernel size {kernel} (as in PyTorch: a window must "
            f"never lie entirely in the padding); use padding <= {(kernel[0] // 2, kernel[1] // 2)}")


def _window_max(taps, xp):
    out = taps[0]
    for tap in taps[1:]:
        out = xp.maximum(out, tap)
    return out


@tape_aware
def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Max over each window; padding is −inf so it never wins."""
    xp, _, _, padding, slices, _ = _pool_setup(x, kernel_size, stride, padding, "max_pool2d")
    taps = window_taps(pad_spatial(xp, batch_last(xp, x), padding, -math.inf), slices)
    return batch_first(xp, _window_max(taps, xp))


def max_pool2d_backward(grad_out, x, kernel_size, stride=None, padding=0, *, forward_output=None):
    """Gradient of ``max_pool2d``: each window's gradient goes to its maximum.

    On ties the first maximum in row-major window order takes it, on every
    backend: taps are visited in that order and each takes the gradient its
    window has not yet handed out. ``forward_output``, the result of the
    ``max_pool2d`` call being differentiated, saves recomputing it.
    """
    xp, _, out_shape, padding, slices, disjoint = _pool_setup(
        x, kernel_size, stride, padding, "max_pool2d_backward")
    check_grad(grad_out, x, out_shape, "max_pool2d_backward")
    taps = window_taps(pad_spatial(xp, batch_last(xp, x), padding, -math.inf), slices)
    if forward_output is None:
        out = _window_max(taps, xp)
    else:
        namespace_of(forward_output, x, names=("forward_output", "x"))
        if tuple(forward_output.shape) != out_shape or forward_output.dtype != x.dtype:
            raise ShapeError(
                f"max_pool2d_backward: forward_output must be max_pool2d's result for this x, of shape {out_shape} "
                f"and dtype {x.dtype}; got shape {tuple(forward_output.shape)}, dtype {forward_output.dtype}")
        out = batch_last(xp, forward_output)

    remaining = batch_last(xp, grad_out)
    tap_grads = []
    for index, tap in enumerate(taps):
        tap_grad = remaining * xp.astype(tap == out, remaining.dtype)
        tap_grads.append(tap_grad)
        if index < len(taps) - 1:
            remaining = remaining - tap_grad  # exact: either all of it or nothing is taken
    grad_x = scatter_taps(xp, padded_shape(x, padding), x.dtype, device_of(x), slices, tap_grads,
                           disjoint=disjoint)
    return batch_first(xp, unpad_spatial(grad_x, padding))


@tape_aware
def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Mean over each window; zero padding counts toward the mean (PyTorch's count_include_pad=True)."""
    xp, kernel, _, padding, slices, _ = _pool_setup(x, kernel_size, stride, padding, "avg_pool2d")
    taps = window_taps(pad_spatial(xp, batch_last(xp, x), padding, 0.0), slices)
    total = taps[0]
    for tap in taps[1:]:
        total = total + tap
    return batch_first(xp, total / (kernel[0] * kernel[1]))


def avg_pool2d_backward(grad_out, x, kernel_size, stride=None, padding=0):
    """Gradient of ``avg_pool2d``: each input gets 1/window of every window it is in."""
    xp, kernel, out_shape, padding, slices, disjoint = _pool_setup(
        x, kernel_size, stride, padding, "avg_pool2d_backward")
    check_grad(grad_out, x, out_shape, "avg_pool2d_backward")
    share = batch_last(xp, grad_out) / (kernel[0] * kernel[1])
    grad_x = scatter_taps(xp, padded_shape(x, padding), x.dtype, device_of(x), slices, [share] * len(slices),
                           disjoint=disjoint)
    return batch_first(xp, unpad_spatial(grad_x, padding))


def check_lp_norm(p) -> float:
    if not is_real_number(p):
        raise ArgumentTypeError(f"lp_pool2d: p must be a positive number or math.inf, got {p!r} ({type(p).__name__})")
    if not p > 0:
        raise ArgumentError(f"lp_pool2d: p must be a positive number or math.inf, got {p!r}")
    return float(p)


@tape_aware
def lp_pool2d(x, p, kernel_size, stride=None):
    """Power mean of each window, ``mean(x**p) ** (1/p)``.

    p=1 is average pooling; p=inf is max pooling and dispatches to it. Unlike
    PyTorch's ``lp_pool2d`` (a power *sum*), this is the mean, as in the
    write-up this library comes from; they differ by ``window ** (1/p)``.
    """
    p = check_lp_norm(p)
    if math.isinf(p):
        return max_pool2d(x, kernel_size, stride)
    xp, kernel, _, _, slices, _ = _pool_setup(x, kernel_size, stride, 0, "lp_pool2d")
    taps = window_taps(batch_last(xp, x), slices)
    total = taps[0] ** p
    for tap in taps[1:]:
        total = total + tap ** p
    return batch_first(xp, (total / (kernel[0] * kernel[1])) ** (1.0 / p))


def lp_pool2d_backward(grad_out, x, p, kernel_size, stride=None):
    """Gradient of ``lp_pool2d``: d out / d x_k = x_k**(p-1) * out**(1-p) / window.

    Where a window's power mean is zero the gradient is taken as zero (the
    derivative is undefined there for p > 1). For p < 1 the derivative at an
    input of exactly zero is infinite; it is taken as zero too, so the
    gradient stays finite.
    """
    p = check_lp_norm(p)
    if math.isinf(p):
        return max_pool2d_backward(grad_out, x, kernel_size, stride)
    xp, kernel, out_shape, _, slices, disjoint = _pool_setup(x, kernel_size, stride, 0, "lp_pool2d_backward")
    check_grad(grad_out, x, out_shape, "lp_pool2d_backward")
    out = batch_last(xp, lp_pool2d(x, p, kernel_size, stride))
    grad = batch_last(xp, grad_out)
    taps = window_taps(batch_last(xp, x), slices)
    positive = out > 0
    safe_out = xp.where(positive, out, xp.ones_like(out))
    scale = xp.where(positive, grad * safe_out ** (1.0 - p), xp.zeros_like(out)) / (kernel[0] * kernel[1])
    if p >= 1.0:
        tap_grads = [scale * tap ** (p - 1.0) for tap in taps]
    else:  # 0 ** (p - 1) is inf: keep it out of the product (0 * inf would be NaN)
        tap_grads = [scale * xp.where(tap > 0, tap, xp.ones_like(tap)) ** (p - 1.0) * xp.astype(tap > 0, x.dtype)
                     for tap in taps]
    grad_x = scatter_taps(xp, padded_shape(x, (0, 0)), x.dtype, device_of(x), slices, tap_grads, disjoint=disjoint)
    return batch_first(xp, grad_x)
