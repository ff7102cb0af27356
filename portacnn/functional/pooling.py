"""Max, average and power-mean pooling, on the batch-last view of the input like convolution.

max_pool2d and its backward run the backend's own fused kernels instead where it declares
``native_kernels`` (``_native/``), after the same checks.
"""

from __future__ import annotations

import math

from .._arrays import device_of, namespace_of, native_kernels_for, with_sizes
from .._checks import check_grad, is_real_number, pair, require_float, require_ndim
from .._dispatch import tape_aware
from ..errors import ArgumentError, ArgumentTypeError, ShapeError
from ._windows import (
    batch_first,
    batch_last,
    output_hw,
    pad_hw,
    scatter_taps,
    tap_slices,
    window_taps,
)


def _pool_setup(x, kernel_size, stride, padding, op: str, ceil_mode: bool = False):
    """Namespace, kernel, output shape, (top/left padding, bottom/right padding), tap slices, disjoint.

    With ``ceil_mode`` the last window may hang past the padded input; the
    padding on the bottom/right then grows to cover it (PyTorch's rule: the
    last window must start inside the input or its left padding).
    """
    xp = namespace_of(x, names=("x",))
    require_float(xp, x, f"{op} input x")
    require_ndim(x, 4, f"{op} input x", "(N, C, H, W)")
    if not isinstance(ceil_mode, bool):
        raise ArgumentTypeError(f"{op}: ceil_mode must be True or False, got {ceil_mode!r}")
    kernel = pair(kernel_size, "kernel_size", minimum=1)
    stride = kernel if stride is None else pair(stride, "stride", minimum=1)
    padding = pair(padding, "padding", minimum=0)
    check_pool_padding(padding, kernel, op)
    if ceil_mode:
        out_hw = tuple(_ceil_output(size, k, s, p) for size, k, s, p in zip(x.shape[2:], kernel, stride, padding))
        if min(out_hw) < 1:
            raise ShapeError(f"{op}: input of spatial size {tuple(x.shape[2:])} is too small for kernel {kernel}, "
                             f"stride {stride}, padding {padding} with ceil_mode: the output would be "
                             f"{out_hw[0]}x{out_hw[1]}; use a larger input, more padding or a smaller kernel")
    else:
        out_hw = output_hw(x, kernel, stride, padding, (1, 1), op)
    extra = tuple(max(0, (o - 1) * s + k - (size + 2 * p))
                  for o, k, s, p, size in zip(out_hw, kernel, stride, padding, x.shape[2:]))
    out_shape = (x.shape[0], x.shape[1], *out_hw)
    disjoint = stride[0] >= kernel[0] and stride[1] >= kernel[1]
    pads = (padding, (padding[0] + extra[0], padding[1] + extra[1]))
    return xp, kernel, out_shape, pads, tap_slices(kernel, stride, (1, 1), out_hw), disjoint


def _ceil_output(size: int, kernel: int, stride: int, padding: int) -> int:
    """PyTorch's ceil_mode output size: round the window count up, but drop a last window that
    would start past the input and its left padding."""
    out = -(-(size + 2 * padding - kernel) // stride) + 1
    if (out - 1) * stride >= size + padding:
        out -= 1
    return out


def _pad(xp, x, pads, value: float):
    """Pad the H and W axes of a batch-last (C, H, W, N) array by (top, left) and (bottom, right)."""
    (top, left), (bottom, right) = pads
    if (top, left, bottom, right) == (0, 0, 0, 0):
        return x
    return pad_hw(xp, x, (top, bottom), (left, right), value)


def _padded_shape(x, pads):
    (top, left), (bottom, right) = pads
    return (x.shape[1], x.shape[2] + top + bottom, x.shape[3] + left + right, x.shape[0])


def _unpad(x, pads, hw):
    (top, left), _ = pads
    return x[:, top:top + hw[0], left:left + hw[1], :]


def _window_counts(xp, x, pads, slices, padding, count_include_pad: bool):
    """(1, OH, OW, 1): how many elements each window averages over, summed with the same tap
    slices over an array of ones (only the input, or the input and its nominal padding, count)."""
    h, w = x.shape[2], x.shape[3]
    ones = xp.ones((1, h, w, 1), dtype=x.dtype, device=device_of(x))
    if count_include_pad:
        ones = _pad(xp, ones, (padding, padding), 1.0)
        (top, left), (bottom, right) = pads
        ones = _pad(xp, ones, ((0, 0), (bottom - top, right - left)), 0.0)
    else:
        ones = _pad(xp, ones, pads, 0.0)
    taps = window_taps(ones, slices)
    total = taps[0]
    for tap in taps[1:]:
        total = total + tap
    return total


def _avg_divisor(xp, x, kernel, pads, slices, ceil_mode, count_include_pad):
    """The divisor of each window: the kernel area (a number) when every window counts it all."""
    if count_include_pad and pads[0] == pads[1]:
        return kernel[0] * kernel[1]
    return _window_counts(xp, x, pads, slices, pads[0], count_include_pad)


def check_pool_padding(padding, kernel, op: str) -> None:
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ArgumentError(
            f"{op}: padding {padding} must be at most half the kernel size {kernel} (as in PyTorch: a window must "
            f"never lie entirely in the padding); use padding <= {(kernel[0] // 2, kernel[1] // 2)}")


def _stride(slices) -> tuple[int, int]:
    """The pooling stride, which every tap's (rows, cols) slices step by."""
    rows, cols = slices[0]
    return rows.step, cols.step


def _window_max(taps, xp):
    out = taps[0]
    for tap in taps[1:]:
        out = xp.maximum(out, tap)
    return out


@tape_aware
def max_pool2d(x, kernel_size, stride=None, padding=0, *, ceil_mode=False):
    """Max over each window; padding is −inf so it never wins. ``ceil_mode`` as in PyTorch."""
    xp, kernel, _, pads, slices, _ = _pool_setup(x, kernel_size, stride, padding, "max_pool2d", ceil_mode)
    kernels = native_kernels_for(x)
    if kernels is not None:
        return kernels.max_pool2d(x, kernel, _stride(slices), pads[0], ceil_mode)
    taps = window_taps(_pad(xp, batch_last(xp, x), pads, -math.inf), slices)
    return batch_first(xp, _window_max(taps, xp))


def max_pool2d_with_argmax(x, kernel_size, stride=None, padding=0, *, ceil_mode=False):
    """``max_pool2d`` for a caller that will differentiate it → ``(out, argmax)``.

    ``argmax`` is where a backend's fused kernels found each window's maximum,
    for ``max_pool2d_backward``; it is None on the generic path, whose backward
    finds the maxima again from ``out`` (its ``forward_output``).
    """
    xp, kernel, _, pads, slices, _ = _pool_setup(x, kernel_size, stride, padding, "max_pool2d", ceil_mode)
    kernels = native_kernels_for(x)
    if kernels is not None:
        return kernels.max_pool2d_with_argmax(x, kernel, _stride(slices), pads[0], ceil_mode)
    taps = window_taps(_pad(xp, batch_last(xp, x), pads, -math.inf), slices)
    return batch_first(xp, _window_max(taps, xp)), None


def max_pool2d_backward(grad_out, x, kernel_size, stride=None, padding=0, *, ceil_mode=False, forward_output=None,
                        argmax=None):
    """Gradient of ``max_pool2d``: each window's gradient goes to its maximum.

    On ties the first maximum in row-major window order takes it, on every
    backend: taps are visited in that order and each takes the gradient its
    window has not yet handed out (PyTorch's fused kernels, used where the
    backend declares ``native_kernels``, do the same). ``forward_output``, the
    result of the ``max_pool2d`` call being differentiated, saves recomputing
    it; ``argmax``, the second result of ``max_pool2d_with_argmax`` for this
    ``x``, does so for the fused kernels.
    """
    xp, kernel, out_shape, pads, slices, disjoint = _pool_setup(
        x, kernel_size, stride, padding, "max_pool2d_backward", ceil_mode)
    check_grad(grad_out, x, out_shape, "max_pool2d_backward")
    if forward_output is not None:
        namespace_of(forward_output, x, names=("forward_output", "x"))
        if tuple(forward_output.shape) != out_shape or forward_output.dtype != x.dtype:
            raise ShapeError(
                f"max_pool2d_backward: forward_output must be max_pool2d's result for this x, of shape {out_shape} "
                f"and dtype {x.dtype}; got shape {tuple(forward_output.shape)}, dtype {forward_output.dtype}")
    kernels = native_kernels_for(x)
    if kernels is not None:
        return kernels.max_pool2d_backward(grad_out, x, kernel, _stride(slices), pads[0], ceil_mode, argmax)
    taps = window_taps(_pad(xp, batch_last(xp, x), pads, -math.inf), slices)
    out = _window_max(taps, xp) if forward_output is None else batch_last(xp, forward_output)

    remaining = batch_last(xp, grad_out)
    tap_grads = []
    for index, tap in enumerate(taps):
        tap_grad = remaining * xp.astype(tap == out, remaining.dtype)
        tap_grads.append(tap_grad)
        if index < len(taps) - 1:
            remaining = remaining - tap_grad  # exact: either all of it or nothing is taken
    grad_x = scatter_taps(xp, _padded_shape(x, pads), x.dtype, device_of(x), slices, tap_grads, disjoint=disjoint)
    return batch_first(xp, _unpad(grad_x, pads, x.shape[2:]))


def _check_count_include_pad(value, op: str) -> None:
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{op}: count_include_pad must be True or False, got {value!r}")


@tape_aware
def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    """Mean over each window, as PyTorch's: with ``count_include_pad`` (the default) zero padding counts
    toward the mean; without it only the input's elements do. Windows that ``ceil_mode`` lets hang past
    the padding never count the overhang."""
    _check_count_include_pad(count_include_pad, "avg_pool2d")
    xp, kernel, _, pads, slices, _ = _pool_setup(x, kernel_size, stride, padding, "avg_pool2d", ceil_mode)
    taps = window_taps(_pad(xp, batch_last(xp, x), pads, 0.0), slices)
    total = taps[0]
    for tap in taps[1:]:
        total = total + tap
    return batch_first(xp, total / _avg_divisor(xp, x, kernel, pads, slices, ceil_mode, count_include_pad))


def avg_pool2d_backward(grad_out, x, kernel_size, stride=None, padding=0, *, ceil_mode=False,
                        count_include_pad=True):
    """Gradient of ``avg_pool2d``: each input gets 1/divisor of every window it is in."""
    _check_count_include_pad(count_include_pad, "avg_pool2d_backward")
    xp, kernel, out_shape, pads, slices, disjoint = _pool_setup(
        x, kernel_size, stride, padding, "avg_pool2d_backward", ceil_mode)
    check_grad(grad_out, x, out_shape, "avg_pool2d_backward")
    share = batch_last(xp, grad_out) / _avg_divisor(xp, x, kernel, pads, slices, ceil_mode, count_include_pad)
    grad_x = scatter_taps(xp, _padded_shape(x, pads), x.dtype, device_of(x), slices, [share] * len(slices),
                          disjoint=disjoint)
    return batch_first(xp, _unpad(grad_x, pads, x.shape[2:]))


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
    grad_x = scatter_taps(xp, _padded_shape(x, ((0, 0), (0, 0))), x.dtype, device_of(x), slices, tap_grads,
                          disjoint=disjoint)
    return batch_first(xp, grad_x)


# --------------------------------------------------------------------------
# adaptive pooling: PyTorch's windows [floor(i*H/out), ceil((i+1)*H/out)),
# which may differ in size, pooled one axis at a time (columns, then rows)


def _adaptive_setup(x, output_size, op: str, return_indices=False):
    xp = namespace_of(x, names=("x",))
    if return_indices is not False:
        raise ArgumentError(f"{op}: return_indices=True is not supported (portacnn never returns integer indices: "
                            "its gradients use masks); leave return_indices=False")
    require_float(xp, x, f"{op} input x")
    require_ndim(x, 4, f"{op} input x", "(N, C, H, W)")
    if output_size is None or isinstance(output_size, (int, float)) and not isinstance(output_size, bool):
        sizes = (output_size, output_size)
    else:
        try:
            sizes = tuple(output_size)
        except TypeError:
            sizes = ()
        if len(sizes) != 2:
            raise ArgumentTypeError(f"{op}: output_size must be an int or a pair of ints (or None to keep that "
                                    f"size), got {output_size!r}")
    out_hw = []
    for size, keep in zip(sizes, x.shape[2:]):
        if size is None:
            size = keep
        if isinstance(size, bool) or not isinstance(size, int) and not hasattr(size, "__index__"):
            raise ArgumentTypeError(f"{op}: output_size must be an int or a pair of ints (or None to keep that "
                                    f"size), got {output_size!r}")
        if int(size) < 1:
            raise ArgumentError(f"{op}: output_size must be positive, got {output_size!r}")
        out_hw.append(int(size))
    if x.shape[2] < 1 or x.shape[3] < 1:
        raise ShapeError(f"{op}: input x has an empty spatial size {tuple(x.shape[2:])}")
    return xp, tuple(out_hw)


def _adaptive_windows(size: int, out: int):
    """(start, end) of each of the ``out`` windows over ``size`` elements, as PyTorch's."""
    return tuple(((i * size) // out, -(-((i + 1) * size) // out)) for i in range(out))


def _adaptive_reduce(xp, x, axis: int, size: int, out: int, reduce):
    """Reduce each adaptive window along ``axis`` (2 or 3, of ``size`` elements) of an NCHW array: one
    slice per output. ``size`` comes from the op's input: ``x`` may be a result whose sizes a lazy
    library lost track of (ndonnx's ``max``)."""
    parts = []
    for start, end in _adaptive_windows(size, out):
        window = x[:, :, start:end, :] if axis == 2 else x[:, :, :, start:end]
        parts.append(reduce(window, axis=axis, keepdims=True))
    return parts[0] if len(parts) == 1 else xp.concat(parts, axis=axis)


def _window_matrix(xp, x, size: int, out: int, *, mean: bool, offset: int | None = None):
    """(out, size) constant: row i is 1 (or 1/window for ``mean``) on window i; with ``offset``, row i
    is one-hot at start_i + offset (zero where the window is shorter than that)."""
    # Built as Python lists from the sizes alone: the math imports no array library.
    matrix = [[0.0] * size for _ in range(out)]
    for i, (start, end) in enumerate(_adaptive_windows(size, out)):
        if offset is None:
            matrix[i][start:end] = [1.0 / (end - start) if mean else 1.0] * (end - start)
        elif start + offset < end:
            matrix[i][start + offset] = 1.0
    return xp.asarray(matrix, dtype=x.dtype, device=device_of(x))


@tape_aware
def adaptive_avg_pool2d(x, output_size):
    """Mean over PyTorch's adaptive windows: ``output_size`` is an int or a pair (None keeps that size)."""
    xp, (oh, ow) = _adaptive_setup(x, output_size, "adaptive_avg_pool2d")
    return _adaptive_reduce(xp, _adaptive_reduce(xp, x, 3, x.shape[3], ow, xp.mean), 2, x.shape[2], oh, xp.mean)


def adaptive_avg_pool2d_backward(grad_out, x, output_size):
    """Gradient of ``adaptive_avg_pool2d``: A_hᵀ · grad · A_w with the constant averaging matrices."""
    xp, (oh, ow) = _adaptive_setup(x, output_size, "adaptive_avg_pool2d_backward")
    check_grad(grad_out, x, (x.shape[0], x.shape[1], oh, ow), "adaptive_avg_pool2d_backward")
    rows = _window_matrix(xp, x, x.shape[2], oh, mean=True)
    cols = _window_matrix(xp, x, x.shape[3], ow, mean=True)
    return with_sizes(xp, xp.matmul(xp.matmul(xp.matrix_transpose(rows), grad_out), cols), x.shape)


@tape_aware
def adaptive_max_pool2d(x, output_size, return_indices=False):
    """Max over PyTorch's adaptive windows (``return_indices=True`` is not supported)."""
    xp, (oh, ow) = _adaptive_setup(x, output_size, "adaptive_max_pool2d", return_indices)
    pooled = _adaptive_reduce(xp, _adaptive_reduce(xp, x, 3, x.shape[3], ow, xp.max), 2, x.shape[2], oh, xp.max)
    return with_sizes(xp, pooled, (x.shape[0], x.shape[1], oh, ow))


def _adaptive_max_axis_backward(xp, grad, x, pooled, axis: int, size: int, out: int):
    """Gradient through the max over windows along ``axis`` of ``x`` (``size`` elements, giving ``pooled``,
    ``out``): each window's gradient goes to its first maximum. Taps are the window offsets; each tap's
    elements are gathered with ``take`` and its gradient summed back with a constant 0/1 matrix (a product,
    not a scatter)."""
    windows = _adaptive_windows(size, out)
    longest = max(end - start for start, end in windows)
    remaining = grad
    grad_x = None
    for offset in range(longest):
        index = xp.asarray([min(start + offset, end - 1) for start, end in windows], device=device_of(x))
        valid = xp.asarray([start + offset < end for start, end in windows], device=device_of(x))
        valid = xp.reshape(valid, (-1, 1) if axis == 2 else (1, -1))
        tap = xp.take(x, index, axis=axis)
        tap_grad = remaining * xp.astype((tap == pooled) & valid, grad.dtype)
        if offset < longest - 1:
            remaining = remaining - tap_grad  # exact: either all of it or nothing is taken
        spread = _window_matrix(xp, x, size, out, mean=False, offset=offset)
        if axis == 2:
            part = xp.matmul(xp.matrix_transpose(spread), tap_grad)
        else:
            part = xp.matmul(tap_grad, spread)
        grad_x = part if grad_x is None else grad_x + part
    return grad_x


def adaptive_max_pool2d_backward(grad_out, x, output_size):
    """Gradient of ``adaptive_max_pool2d``: each window's gradient goes to its first maximum in row-major
    order, as in ``max_pool2d_backward``. Pooling columns then rows gives exactly that order: the rows
    step picks the first row holding the maximum, the columns step the first column in that row."""
    xp, (oh, ow) = _adaptive_setup(x, output_size, "adaptive_max_pool2d_backward")
    check_grad(grad_out, x, (x.shape[0], x.shape[1], oh, ow), "adaptive_max_pool2d_backward")
    height, width = x.shape[2], x.shape[3]
    by_columns = _adaptive_reduce(xp, x, 3, width, ow, xp.max)
    pooled = _adaptive_reduce(xp, by_columns, 2, height, oh, xp.max)
    grad_columns = _adaptive_max_axis_backward(xp, grad_out, by_columns, pooled, 2, height, oh)
    grad_x = _adaptive_max_axis_backward(xp, grad_columns, x, by_columns, 3, width, ow)
    return with_sizes(xp, grad_x, x.shape)
