"""Layer math, written once against the Python array API standard.

Every function takes its namespace from its inputs (``namespace_of``), so the
same code runs on NumPy, CuPy, PyTorch, JAX and array-api-strict, and the
result stays on the input's device with the input's dtype. Shapes and argument
names follow PyTorch: NCHW images, conv weights ``(out, in, kh, kw)``, linear
weights ``(out_features, in_features)``.

Each forward has a backward that recomputes what it needs from the forward's
inputs, so a caller only has to keep those inputs.

Rules this module keeps (see the README): only the standard plus
``array_api_extra``; no integer-index scatter (gradients are added back with
``array_api_extra.at`` on *slices*); no in-place writes on arrays a caller can
see (JAX arrays are immutable, NumPy inputs may be read-only).
"""

from __future__ import annotations

import math
import operator

from typing import NamedTuple

import array_api_extra as xpx

from ._arrays import device_of, namespace_of
from .errors import DTypeError, ShapeError

__all__ = [
    "conv2d", "conv2d_backward",
    "max_pool2d", "max_pool2d_backward",
    "avg_pool2d", "avg_pool2d_backward",
    "lp_pool2d", "lp_pool2d_backward",
    "linear", "linear_backward",
    "relu", "relu_backward", "sigmoid", "sigmoid_backward", "tanh", "tanh_backward",
    "softmax", "softmax_backward", "log_softmax", "log_softmax_backward",
    "cross_entropy", "cross_entropy_backward",
    "batch_norm", "batch_norm_backward",
    "dropout", "dropout_backward",
]


# --------------------------------------------------------------------------
# argument checking shared by the ops


def _pair(value, name: str, *, minimum: int) -> tuple[int, int]:
    """Accept an int or a pair of ints, as PyTorch does, and check the bound."""
    def as_int(v):
        if isinstance(v, bool):
            raise TypeError
        return operator.index(v)  # ints and NumPy integers, never floats

    try:
        pair = (as_int(value),) * 2 if not hasattr(value, "__len__") else tuple(as_int(v) for v in value)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if len(pair) != 2:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return pair


def _require_float(xp, x, name: str) -> None:
    if not xp.isdtype(x.dtype, "real floating"):
        hint = (
            " (uint8 images: convert with x.astype(float32) / 255 first)"
            if xp.isdtype(x.dtype, "integral") else ""
        )
        raise DTypeError(f"{name} must be a real floating-point array (float32 or float64), got {x.dtype}{hint}")


def _require_same_dtype(x, other, x_name: str, other_name: str) -> None:
    if other is not None and other.dtype != x.dtype:
        raise DTypeError(
            f"{x_name} has dtype {x.dtype} but {other_name} has dtype {other.dtype}; "
            f"cast one of them, e.g. model.to(..., dtype=...) or x.astype(...)"
        )


def _require_ndim(x, ndim: int, name: str, layout: str) -> None:
    if x.ndim != ndim:
        raise ShapeError(f"{name} must be a {ndim}-D array of shape {layout}, got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ShapeError(f"{name} is an empty batch (shape {tuple(x.shape)}); pass at least one sample")


def _output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _output_hw(x, kernel, stride, padding, dilation, name: str) -> tuple[int, int]:
    oh = _output_size(x.shape[2], kernel[0], stride[0], padding[0], dilation[0])
    ow = _output_size(x.shape[3], kernel[1], stride[1], padding[1], dilation[1])
    if oh < 1 or ow < 1:
        raise ShapeError(
            f"{name}: input of spatial size {tuple(x.shape[2:])} is too small for kernel {kernel}, "
            f"stride {stride}, padding {padding}, dilation {dilation}: the output would be {oh}x{ow}; "
            "use a larger input, more padding or a smaller kernel"
        )
    return oh, ow


# --------------------------------------------------------------------------
# sliding windows: one strided slice per kernel tap, never a loop over pixels


def _pad_spatial(xp, x, padding: tuple[int, int], value: float):
    if padding == (0, 0):
        return x
    ph, pw = padding
    return xpx.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value, xp=xp)


def _tap_slices(kernel, stride, dilation, out_hw):
    """For each kernel tap in row-major order, the (rows, cols) slices of the
    padded input that this tap sees across all output positions."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_hw
    return [
        (slice(i * dh, i * dh + sh * (oh - 1) + 1, sh), slice(j * dw, j * dw + sw * (ow - 1) + 1, sw))
        for i in range(kh)
        for j in range(kw)
    ]


def _taps(x_padded, slices):
    return [x_padded[:, :, rows, cols] for rows, cols in slices]


def _scatter_taps(xp, padded_shape, dtype, device, slices, tap_grads):
    """Sum per-tap gradients back onto the padded input (the mirror of ``_taps``).

    ``at(...).add`` on slices is an in-place add on mutable arrays and a
    functional update on immutable ones; the accumulator is ours alone.
    """
    grad = xp.zeros(padded_shape, dtype=dtype, device=device)
    for (rows, cols), tap_grad in zip(slices, tap_grads):
        grad = xpx.at(grad)[:, :, rows, cols].add(tap_grad, xp=xp)
    return grad


def _unpad_spatial(x, padding: tuple[int, int]):
    ph, pw = padding
    if padding == (0, 0):
        return x
    return x[:, :, ph:x.shape[2] - ph, pw:x.shape[3] - pw]


# --------------------------------------------------------------------------
# convolution (im2col + one matrix multiply)


class ConvGeometry(NamedTuple):
    """Everything about one conv2d call that follows from the shapes and options."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    out_hw: tuple[int, int]
    slices: list


def conv_geometry(x, weight, bias=None, *, stride=1, padding=0, dilation=1):
    """Check a conv2d call's inputs and work out its geometry → ``(xp, ConvGeometry)``."""
    xp = namespace_of(x, weight, bias, names=("x", "weight", "bias"))
    _require_float(xp, x, "conv2d input x")
    _require_ndim(x, 4, "conv2d input x", "(N, C, H, W)")
    if weight.ndim != 4:
        raise ShapeError(f"conv2d weight must have shape (out_channels, in_channels, kh, kw), got {tuple(weight.shape)}")
    _require_same_dtype(x, weight, "x", "weight")
    _require_same_dtype(x, bias, "x", "bias")
    if x.shape[1] != weight.shape[1]:
        raise ShapeError(
            f"conv2d: x has {x.shape[1]} channels but weight expects {weight.shape[1]} "
            f"(weight shape {tuple(weight.shape)}); check in_channels of the layer"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ShapeError(f"conv2d bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    stride = _pair(stride, "stride", minimum=1)
    padding = _pair(padding, "padding", minimum=0)
    dilation = _pair(dilation, "dilation", minimum=1)
    kernel = (weight.shape[2], weight.shape[3])
    out_hw = _output_hw(x, kernel, stride, padding, dilation, "conv2d")
    return xp, ConvGeometry(kernel, stride, padding, dilation, out_hw, _tap_slices(kernel, stride, dilation, out_hw))


def im2col(xp, x, geometry: ConvGeometry):
    """Patch matrix of shape (C*kh*kw, N*OH*OW), rows ordered (c, i, j) like the weight.

    The batch sits on the second axis so one matrix multiply covers the
    whole batch; the input is viewed channel-first (C, N, H, W) for that,
    which is free when it came out of another conv2d (see ``conv2d``).
    """
    n, c = x.shape[0], x.shape[1]
    channels_first = _pad_spatial(xp, xp.permute_dims(x, (1, 0, 2, 3)), geometry.padding, 0.0)
    cols = xp.stack(_taps(channels_first, geometry.slices), axis=1)
    return xp.reshape(cols, (c * len(geometry.slices), n * geometry.out_hw[0] * geometry.out_hw[1]))


def conv2d_from_patches(xp, cols, batch_size: int, weight, bias, geometry: ConvGeometry):
    """The conv2d output from the patch matrix ``im2col`` built."""
    out_channels = weight.shape[0]
    out = xp.matmul(xp.reshape(weight, (out_channels, -1)), cols)
    if bias is not None:
        out = out + xp.reshape(bias, (out_channels, 1))
    # The result is computed as (O, N, OH, OW) and returned as an NCHW view:
    # the next conv2d's channel-first view of it is then contiguous again.
    return xp.permute_dims(xp.reshape(out, (out_channels, batch_size, *geometry.out_hw)), (1, 0, 2, 3))


def conv2d_backward_from_patches(xp, grad_out, cols, input_shape, weight, geometry: ConvGeometry,
                                 input_grad: bool = True):
    """Gradients of conv2d from the forward's patch matrix → ``(grad_x or None, grad_weight, grad_bias)``."""
    n, c, height, width = input_shape
    out_channels, (oh, ow), padding = weight.shape[0], geometry.out_hw, geometry.padding
    expected = (n, out_channels, oh, ow)
    if tuple(grad_out.shape) != expected:
        raise ShapeError(f"conv2d_backward: grad_out must have shape {expected}, got {tuple(grad_out.shape)}")
    grad = xp.reshape(xp.permute_dims(grad_out, (1, 0, 2, 3)), (out_channels, n * oh * ow))
    grad_weight = xp.reshape(xp.matmul(grad, cols.T), tuple(weight.shape))
    grad_bias = xp.sum(grad, axis=1)
    if not input_grad:
        return None, grad_weight, grad_bias

    grad_cols = xp.matmul(xp.reshape(weight, (out_channels, -1)).T, grad)
    grad_cols = xp.reshape(grad_cols, (c, len(geometry.slices), n, oh, ow))
    padded_shape = (c, n, height + 2 * padding[0], width + 2 * padding[1])
    grad_x = _scatter_taps(
        xp, padded_shape, grad_out.dtype, device_of(grad_out), geometry.slices,
        (grad_cols[:, t, :, :, :] for t in range(len(geometry.slices))),
    )
    return xp.permute_dims(_unpad_spatial(grad_x, padding), (1, 0, 2, 3)), grad_weight, grad_bias


def conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1):
    """2-D cross-correlation of ``x`` (N, C, H, W) with ``weight`` (O, C, kh, kw)."""
    xp, geometry = conv_geometry(x, weight, bias, stride=stride, padding=padding, dilation=dilation)
    return conv2d_from_patches(xp, im2col(xp, x, geometry), x.shape[0], weight, bias, geometry)


def conv2d_backward(grad_out, x, weight, *, stride=1, padding=0, dilation=1):
    """Gradients of ``conv2d`` → ``(grad_x, grad_weight, grad_bias)``.

    ``grad_bias`` is always returned (the sum of ``grad_out``); a caller
    without a bias ignores it.
    """
    xp, geometry = conv_geometry(x, weight, None, stride=stride, padding=padding, dilation=dilation)
    namespace_of(grad_out, x, names=("grad_out", "x"))
    return conv2d_backward_from_patches(xp, grad_out, im2col(xp, x, geometry), tuple(x.shape), weight, geometry)


# --------------------------------------------------------------------------
# pooling


def _pool_setup(x, kernel_size, stride, padding, op: str):
    xp = namespace_of(x, names=("x",))
    _require_float(xp, x, f"{op} input x")
    _require_ndim(x, 4, f"{op} input x", "(N, C, H, W)")
    kernel = _pair(kernel_size, "kernel_size", minimum=1)
    stride = kernel if stride is None else _pair(stride, "stride", minimum=1)
    padding = _pair(padding, "padding", minimum=0)
    if padding[0] > kernel[0] // 2 or padding[1] > kernel[1] // 2:
        raise ValueError(f"{op}: padding {padding} must be at most half the kernel size {kernel}")
    out_hw = _output_hw(x, kernel, stride, padding, (1, 1), op)
    out_shape = (x.shape[0], x.shape[1], *out_hw)
    return xp, kernel, out_shape, padding, _tap_slices(kernel, stride, (1, 1), out_hw)


def _check_grad_shape(grad_out, expected_shape, op: str):
    if tuple(grad_out.shape) != tuple(expected_shape):
        raise ShapeError(f"{op}: grad_out must have shape {tuple(expected_shape)}, got {tuple(grad_out.shape)}")


def _padded_shape(x, padding):
    return (x.shape[0], x.shape[1], x.shape[2] + 2 * padding[0], x.shape[3] + 2 * padding[1])


def max_pool2d(x, kernel_size, stride=None, padding=0):
    """Max over each window; padding is −inf so it never wins."""
    xp, _, _, padding, slices = _pool_setup(x, kernel_size, stride, padding, "max_pool2d")
    taps = _taps(_pad_spatial(xp, x, padding, -math.inf), slices)
    out = taps[0]
    for tap in taps[1:]:
        out = xp.maximum(out, tap)
    return out


def max_pool2d_backward(grad_out, x, kernel_size, stride=None, padding=0):
    """Gradient of ``max_pool2d``: each window's gradient goes to its maximum.

    On ties the first maximum in row-major window order takes it, on every
    backend, because taps are visited in that order and a window stops
    accepting once it has a winner.
    """
    xp, _, out_shape, padding, slices = _pool_setup(x, kernel_size, stride, padding, "max_pool2d_backward")
    namespace_of(grad_out, x, names=("grad_out", "x"))
    _check_grad_shape(grad_out, out_shape, "max_pool2d_backward")
    taps = _taps(_pad_spatial(xp, x, padding, -math.inf), slices)
    out = taps[0]
    for tap in taps[1:]:
        out = xp.maximum(out, tap)

    assigned = xp.zeros(out.shape, dtype=xp.bool, device=device_of(x))
    tap_grads = []
    for tap in taps:
        winner = (tap == out) & ~assigned
        assigned = assigned | winner
        tap_grads.append(grad_out * xp.astype(winner, grad_out.dtype))
    grad_x = _scatter_taps(xp, _padded_shape(x, padding), x.dtype, device_of(x), slices, tap_grads)
    return _unpad_spatial(grad_x, padding)


def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Mean over each window; zero padding counts toward the mean (PyTorch's count_include_pad=True)."""
    xp, kernel, _, padding, slices = _pool_setup(x, kernel_size, stride, padding, "avg_pool2d")
    taps = _taps(_pad_spatial(xp, x, padding, 0.0), slices)
    total = taps[0]
    for tap in taps[1:]:
        total = total + tap
    return total / (kernel[0] * kernel[1])


def avg_pool2d_backward(grad_out, x, kernel_size, stride=None, padding=0):
    """Gradient of ``avg_pool2d``: each input gets 1/window of every window it is in."""
    xp, kernel, out_shape, padding, slices = _pool_setup(x, kernel_size, stride, padding, "avg_pool2d_backward")
    namespace_of(grad_out, x, names=("grad_out", "x"))
    _check_grad_shape(grad_out, out_shape, "avg_pool2d_backward")
    share = grad_out / (kernel[0] * kernel[1])
    grad_x = _scatter_taps(xp, _padded_shape(x, padding), x.dtype, device_of(x), slices, [share] * len(slices))
    return _unpad_spatial(grad_x, padding)


def _check_lp_norm(p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not p > 0:
        raise ValueError(f"lp_pool2d: p must be a positive number or math.inf, got {p!r}")
    return float(p)


def lp_pool2d(x, p, kernel_size, stride=None):
    """Power mean of each window, ``mean(x**p) ** (1/p)``.

    p=1 is average pooling; p=inf is max pooling and dispatches to it. Unlike
    PyTorch's ``lp_pool2d`` (a power *sum*), this is the mean, as in the
    write-up this library comes from; they differ by ``window ** (1/p)``.
    """
    p = _check_lp_norm(p)
    if math.isinf(p):
        return max_pool2d(x, kernel_size, stride)
    xp, kernel, _, _, slices = _pool_setup(x, kernel_size, stride, 0, "lp_pool2d")
    taps = _taps(x, slices)
    total = taps[0] ** p
    for tap in taps[1:]:
        total = total + tap ** p
    return (total / (kernel[0] * kernel[1])) ** (1.0 / p)


def lp_pool2d_backward(grad_out, x, p, kernel_size, stride=None):
    """Gradient of ``lp_pool2d``: d out / d x_k = x_k**(p-1) * out**(1-p) / window.

    Where a window's power mean is zero the gradient is taken as zero (the
    derivative is undefined there for p > 1).
    """
    p = _check_lp_norm(p)
    if math.isinf(p):
        return max_pool2d_backward(grad_out, x, kernel_size, stride)
    xp, kernel, _, _, slices = _pool_setup(x, kernel_size, stride, 0, "lp_pool2d_backward")
    namespace_of(grad_out, x, names=("grad_out", "x"))
    out = lp_pool2d(x, p, kernel_size, stride)
    _check_grad_shape(grad_out, out.shape, "lp_pool2d_backward")
    positive = out > 0
    safe_out = xp.where(positive, out, xp.ones_like(out))
    scale = xp.where(positive, grad_out * safe_out ** (1.0 - p), xp.zeros_like(out)) / (kernel[0] * kernel[1])
    tap_grads = [scale * tap ** (p - 1.0) for tap in _taps(x, slices)]
    return _scatter_taps(xp, tuple(x.shape), x.dtype, device_of(x), slices, tap_grads)


# --------------------------------------------------------------------------
# fully connected


def _linear_setup(x, weight, bias):
    xp = namespace_of(x, weight, bias, names=("x", "weight", "bias"))
    _require_float(xp, x, "linear input x")
    _require_ndim(x, 2, "linear input x", "(N, in_features)")
    _require_same_dtype(x, weight, "x", "weight")
    _require_same_dtype(x, bias, "x", "bias")
    if weight.ndim != 2 or weight.shape[1] != x.shape[1]:
        raise ShapeError(
            f"linear: x has {x.shape[1]} features but weight has shape {tuple(weight.shape)} "
            f"(expected (out_features, {x.shape[1]})); flatten the input or fix in_features"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ShapeError(f"linear bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    return xp


def linear(x, weight, bias=None):
    """``x @ weight.T + bias`` for ``x`` of shape (N, in_features)."""
    xp = _linear_setup(x, weight, bias)
    out = xp.matmul(x, weight.T)
    return out if bias is None else out + bias


def linear_backward(grad_out, x, weight):
    """Gradients of ``linear`` → ``(grad_x, grad_weight, grad_bias)``."""
    xp = _linear_setup(x, weight, None)
    namespace_of(grad_out, x, names=("grad_out", "x"))
    _check_grad_shape(grad_out, (x.shape[0], weight.shape[0]), "linear_backward")
    return xp.matmul(grad_out, weight), xp.matmul(grad_out.T, x), xp.sum(grad_out, axis=0)


# --------------------------------------------------------------------------
# activations


def _elementwise_setup(x, name: str, grad_out=None):
    xp = namespace_of(x, grad_out, names=("x", "grad_out"))
    _require_float(xp, x, f"{name} input x")
    if grad_out is not None and tuple(grad_out.shape) != tuple(x.shape):
        raise ShapeError(f"{name}: grad_out shape {tuple(grad_out.shape)} differs from x shape {tuple(x.shape)}")
    return xp


# Masks are applied by multiplying with a 0/1 array rather than with
# ``where``: NumPy's ``where`` is about 10x slower on the unpredictable masks
# activations produce.


def relu(x):
    xp = _elementwise_setup(x, "relu")
    return xp.maximum(x, xp.zeros_like(x))


def relu_backward(grad_out, x):
    xp = _elementwise_setup(x, "relu_backward", grad_out)
    return grad_out * xp.astype(x > 0, grad_out.dtype)


def sigmoid(x):
    """Logistic function, finite for any input: exp is only taken of −|x|."""
    xp = _elementwise_setup(x, "sigmoid")
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def sigmoid_backward(grad_out, x):
    _elementwise_setup(x, "sigmoid_backward", grad_out)
    s = sigmoid(x)
    return grad_out * s * (1.0 - s)


def tanh(x):
    xp = _elementwise_setup(x, "tanh")
    return xp.tanh(x)


def tanh_backward(grad_out, x):
    xp = _elementwise_setup(x, "tanh_backward", grad_out)
    t = xp.tanh(x)
    return grad_out * (1.0 - t * t)


def log_softmax(x, axis: int = -1):
    """``x - logsumexp(x)`` with the maximum subtracted first, so large logits stay finite."""
    xp = _elementwise_setup(x, "log_softmax")
    shifted = x - xp.max(x, axis=axis, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


def log_softmax_backward(grad_out, x, axis: int = -1):
    xp = _elementwise_setup(x, "log_softmax_backward", grad_out)
    return grad_out - xp.exp(log_softmax(x, axis)) * xp.sum(grad_out, axis=axis, keepdims=True)


def softmax(x, axis: int = -1):
    xp = _elementwise_setup(x, "softmax")
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


def softmax_backward(grad_out, x, axis: int = -1):
    xp = _elementwise_setup(x, "softmax_backward", grad_out)
    s = softmax(x, axis)
    return s * (grad_out - xp.sum(grad_out * s, axis=axis, keepdims=True))


# --------------------------------------------------------------------------
# loss


def _cross_entropy_setup(logits, labels):
    xp = namespace_of(logits, labels, names=("logits", "labels"))
    _require_float(xp, logits, "cross_entropy logits")
    _require_ndim(logits, 2, "cross_entropy logits", "(N, num_classes)")
    if not xp.isdtype(labels.dtype, "integral"):
        raise DTypeError(f"cross_entropy labels must be integer class indices, got dtype {labels.dtype}")
    if tuple(labels.shape) != (logits.shape[0],):
        raise ShapeError(
            f"cross_entropy labels must have shape ({logits.shape[0]},) to match logits {tuple(logits.shape)}, "
            f"got {tuple(labels.shape)}"
        )
    return xp


def _one_hot(xp, labels, num_classes: int, dtype):
    # The default integer dtype, not the labels': uint8 class numbers would wrap past 255.
    classes = xp.arange(num_classes, device=device_of(labels))
    return xp.astype(xp.reshape(labels, (-1, 1)) == classes, dtype)


def cross_entropy(logits, labels):
    """Mean negative log-likelihood of integer ``labels`` under softmax(``logits``); a 0-d array."""
    xp = _cross_entropy_setup(logits, labels)
    target = _one_hot(xp, labels, logits.shape[1], logits.dtype)
    return -xp.sum(target * log_softmax(logits)) / logits.shape[0]


def cross_entropy_backward(logits, labels):
    """Gradient of the mean ``cross_entropy`` with respect to ``logits``."""
    xp = _cross_entropy_setup(logits, labels)
    target = _one_hot(xp, labels, logits.shape[1], logits.dtype)
    return (softmax(logits) - target) / logits.shape[0]


# --------------------------------------------------------------------------
# batch normalisation


def _batch_norm_setup(x, running_mean, running_var, weight, bias):
    xp = namespace_of(
        x, running_mean, running_var, weight, bias,
        names=("x", "running_mean", "running_var", "weight", "bias"),
    )
    _require_float(xp, x, "batch_norm input x")
    if x.ndim not in (2, 4):
        raise ShapeError(f"batch_norm input must be (N, C) or (N, C, H, W), got shape {tuple(x.shape)}")
    channels = x.shape[1]
    for name, a in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if a is not None and tuple(a.shape) != (channels,):
            raise ShapeError(f"batch_norm {name} must have shape ({channels},), got {tuple(a.shape)}")
        _require_same_dtype(x, a, "x", name)
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    broadcast = (1, channels) if x.ndim == 2 else (1, channels, 1, 1)
    count = math.prod(x.shape[i] for i in axes)
    return xp, axes, broadcast, count


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Batch normalisation over all axes but the channel axis 1.

    Returns ``(y, new_running_mean, new_running_var)``: running statistics are
    returned, never updated in place. In training the batch statistics
    normalise and the running ones move by ``momentum`` (the variance with
    Bessel's correction, as PyTorch does); in eval the running ones normalise.
    """
    xp, axes, broadcast, count = _batch_norm_setup(x, running_mean, running_var, weight, bias)
    if training:
        if count < 2:
            raise ShapeError(f"batch_norm in training needs more than one value per channel, got input shape {tuple(x.shape)}")
        mean = xp.mean(x, axis=axes)
        var = xp.var(x, axis=axes)
        if running_mean is not None:
            running_mean = (1.0 - momentum) * running_mean + momentum * mean
        if running_var is not None:
            running_var = (1.0 - momentum) * running_var + momentum * var * (count / (count - 1))
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm in eval mode needs running_mean and running_var")
        mean, var = running_mean, running_var
    y = (x - xp.reshape(mean, broadcast)) / xp.sqrt(xp.reshape(var, broadcast) + eps)
    if weight is not None:
        y = y * xp.reshape(weight, broadcast)
    if bias is not None:
        y = y + xp.reshape(bias, broadcast)
    return y, running_mean, running_var


def batch_norm_backward(grad_out, x, running_mean, running_var, weight=None, *, training=False, eps=1e-5):
    """Gradients of ``batch_norm`` → ``(grad_x, grad_weight, grad_bias)``."""
    xp, axes, broadcast, count = _batch_norm_setup(x, running_mean, running_var, weight, None)
    namespace_of(grad_out, x, names=("grad_out", "x"))
    if tuple(grad_out.shape) != tuple(x.shape):
        raise ShapeError(f"batch_norm_backward: grad_out shape {tuple(grad_out.shape)} differs from x shape {tuple(x.shape)}")
    if training:
        mean, var = xp.mean(x, axis=axes), xp.var(x, axis=axes)
    else:
        if running_mean is None or running_var is None:
            raise ValueError("batch_norm_backward in eval mode needs running_mean and running_var")
        mean, var = running_mean, running_var
    inv_std = xp.reshape(1.0 / xp.sqrt(var + eps), broadcast)
    x_hat = (x - xp.reshape(mean, broadcast)) * inv_std
    grad_bias = xp.sum(grad_out, axis=axes)
    grad_weight = xp.sum(grad_out * x_hat, axis=axes)
    grad_x_hat = grad_out if weight is None else grad_out * xp.reshape(weight, broadcast)
    if not training:
        return grad_x_hat * inv_std, grad_weight, grad_bias
    sum_grad = xp.reshape(xp.sum(grad_x_hat, axis=axes), broadcast)
    sum_grad_x_hat = xp.reshape(xp.sum(grad_x_hat * x_hat, axis=axes), broadcast)
    grad_x = inv_std / count * (count * grad_x_hat - sum_grad - x_hat * sum_grad_x_hat)
    return grad_x, grad_weight, grad_bias


# --------------------------------------------------------------------------
# dropout


def dropout_mask(shape, p: float, rng):
    """A host keep-mask (NumPy bool array, True = keep) drawn from ``rng``.

    ``rng`` is a ``numpy.random.Generator`` (or an int seed). Drawing on the
    host makes the mask, and so the result, identical on every backend.
    """
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability p must be in [0, 1), got {p!r}")
    if isinstance(rng, int):
        import numpy  # host-side randomness only; the math below never touches it

        rng = numpy.random.default_rng(rng)
    return rng.random(tuple(shape)) >= p


def _device_mask(xp, mask, like):
    if not (hasattr(mask, "dtype") and hasattr(mask, "shape")):
        raise DTypeError(f"dropout mask must be a boolean array, got {type(mask).__name__}")
    if "bool" not in str(mask.dtype):
        raise DTypeError(f"dropout mask must be a boolean keep-mask (True = keep), got dtype {mask.dtype}")
    if tuple(mask.shape) != tuple(like.shape):
        raise ShapeError(f"dropout mask shape {tuple(mask.shape)} differs from x shape {tuple(like.shape)}")
    if type(mask).__module__.split(".")[0] == "numpy" and type(like).__module__.split(".")[0] != "numpy":
        # A host mask is moved to the input's device once, here.
        from .backends import placement_of, to_device

        mask = to_device(mask, placement_of(like))
    namespace_of(like, mask, names=("x", "mask"))
    return mask


def dropout(x, p: float = 0.5, *, mask=None, rng=None, training: bool = True):
    """Zero elements where ``mask`` is False and scale the rest by 1/(1-p).

    Give either ``mask`` (a boolean keep-mask, e.g. from ``dropout_mask``) or
    ``rng`` (a host ``numpy.random.Generator`` or int seed to draw one from).
    In eval mode (``training=False``) or with p=0, ``x`` is returned unchanged.
    """
    xp = namespace_of(x, names=("x",))
    _require_float(xp, x, "dropout input x")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability p must be in [0, 1), got {p!r}")
    if not training or p == 0.0:
        return x
    if mask is None:
        if rng is None:
            raise ValueError("dropout needs a mask or an rng (numpy.random.Generator or int seed) to be reproducible")
        mask = dropout_mask(x.shape, p, rng)
    mask = _device_mask(xp, mask, x)
    return x * (xp.astype(mask, x.dtype) / (1.0 - p))


def dropout_backward(grad_out, mask, p: float = 0.5):
    """Gradient of ``dropout`` with the same keep-mask."""
    xp = namespace_of(grad_out, names=("grad_out",))
    mask = _device_mask(xp, mask, grad_out)
    return grad_out * (xp.astype(mask, grad_out.dtype) / (1.0 - p))
