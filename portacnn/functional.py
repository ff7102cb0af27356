"""Layer math, written once against the Python array API standard.

Every function takes its namespace from its inputs (``namespace_of``), so the
same code runs on NumPy, CuPy, PyTorch, JAX and array-api-strict, and the
result stays on the input's device with the input's dtype. Shapes and argument
names follow PyTorch: NCHW images, conv weights ``(out, in, kh, kw)``, linear
weights ``(out_features, in_features)``.

Each forward has a backward that recomputes what it needs from the forward's
inputs, so a caller only has to keep those inputs.

Rules this module keeps (see the README): only the standard plus
``array_api_extra``; no integer-index scatter (gradients are added back on
*slices*); no in-place writes on arrays a caller can see (JAX arrays are
immutable, NumPy inputs may be read-only). The one backend-specific fast path
is behind the ``writable_views`` capability of ``portacnn.backends``: the
scatter-add into an accumulator this module just created goes through views
where a backend declares it (NumPy, CuPy, torch) and through
``array_api_extra.at`` elsewhere; a test checks both give the same bits.

The forward ops are ``tape_aware``: given a ``portacnn.Tensor`` they hand
the call to the tape (``portacnn.autograd``), which records a node whose
backward is the matching ``<op>_backward`` here, and return a Tensor; given
plain arrays they are pure array functions. This module never imports the
tape.

Internally, sliding windows are taken in a batch-last (C, H, W, N) layout,
and conv2d and the pools return NCHW *views* of batch-last memory, so the
next layer's batch-last view is free (see "sliding windows" below).
"""

from __future__ import annotations

import functools
import math
import numbers
import operator

from typing import NamedTuple

import array_api_extra as xpx

from ._arrays import device_of, namespace_of, writes_through_views
from ._dispatch import tape_aware
from ._host_random import host_generator
from .errors import ArgumentError, ArgumentTypeError, DTypeError, ShapeError

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


def _as_int(value) -> int:
    if isinstance(value, bool):
        raise TypeError
    return operator.index(value)  # ints and NumPy integers, never floats


def _type_hint(value, name: str) -> str:
    if isinstance(value, str) and name.endswith("padding"):
        return ("; string padding such as 'same' is not supported: for stride 1 and an odd kernel size k, "
                "padding=k // 2 keeps the height and width")
    try:
        values = list(value) if isinstance(value, (list, tuple)) else [value]
    except TypeError:
        return ""
    if any(isinstance(v, float) for v in values):
        return "; pass whole numbers, e.g. 2 rather than 2.0"
    return ""


def _pair(value, name: str, *, minimum: int) -> tuple[int, int]:
    """Accept an int or a pair of ints, as PyTorch does, and check the bound.

    Raises ``ArgumentTypeError`` (a TypeError) for anything else and
    ``ArgumentError`` (a ValueError) for a value below ``minimum``.
    """
    try:
        if hasattr(value, "__len__") and not isinstance(value, str):
            pair = tuple(_as_int(v) for v in value)
        else:
            pair = (_as_int(value),) * 2
    except TypeError:
        raise ArgumentTypeError(
            f"{name} must be an int or a pair of ints (height, width), got {value!r}{_type_hint(value, name)}"
        ) from None
    if len(pair) != 2:
        raise ArgumentTypeError(
            f"{name} must be an int or a pair of ints (height, width), got {len(pair)} values: {value!r}")
    if min(pair) < minimum:
        what = "positive" if minimum == 1 else "non-negative" if minimum == 0 else f">= {minimum}"
        raise ArgumentError(f"{name} must be >= {minimum} ({what}) in both directions, got {value!r}")
    return pair


def _is_real_number(value) -> bool:
    """A Python or NumPy int/float (not a bool, string or array)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_probability(p, name: str) -> float:
    """A dropout probability: a real number in [0, 1)."""
    if not _is_real_number(p):
        raise ArgumentTypeError(f"{name} must be a number in [0, 1), got {p!r} ({type(p).__name__})")
    if not 0.0 <= float(p) < 1.0:  # NaN fails too
        raise ArgumentError(f"{name} must be in [0, 1) (the fraction of elements zeroed), got {p!r}")
    return float(p)


def _check_number(value, name: str, *, low: float, high: float | None = None, low_inclusive=True,
                  hint: str = "") -> float:
    """A real (non-bool) number in [low, high] (or (low, high] without ``low_inclusive``)."""
    if not _is_real_number(value):
        raise ArgumentTypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    number = float(value)
    ok = (number >= low if low_inclusive else number > low) and (high is None or number <= high)
    if not ok:  # NaN fails every comparison, so it lands here too
        lower = f"{'>=' if low_inclusive else '>'} {low:g}"
        wanted = lower if high is None else f"{lower} and <= {high:g}"
        raise ArgumentError(f"{name} must be {wanted}, got {value!r}{hint}")
    return number


_INTEGRAL_HINT = (" (integer data such as uint8 images: convert it first, e.g. x.astype(float32) / 255 for "
                  "0-255 pixels, or portacnn.training.prepare_images(images, 'float32') for NumPy images)")


# Every op checks its input's dtype; isdtype is slow enough in NumPy to show
# at batch size 5, so the dtypes that passed are remembered, one set per
# dtype class (array-api-strict warns when its dtypes meet NumPy's).
_REAL_FLOATING_DTYPES: dict[type, set] = {}


def _require_float(xp, x, name: str) -> None:
    dtype = x.dtype
    known = _REAL_FLOATING_DTYPES.setdefault(type(dtype), set())
    if dtype in known:
        return
    if xp.isdtype(dtype, "real floating"):
        known.add(dtype)
        return
    if xp.isdtype(dtype, "integral"):
        hint = _INTEGRAL_HINT
    elif dtype == xp.bool:
        hint = " (a boolean array: convert it with x.astype(float32) first)"
    elif xp.isdtype(dtype, "complex floating"):
        hint = " (complex numbers are not supported: pass the real part or the magnitude)"
    else:
        hint = ""
    raise DTypeError(f"{name} must be a real floating-point array (float32 or float64), got {dtype}{hint}")


def _require_same_dtype(x, other, x_name: str, other_name: str) -> None:
    if other is not None and other.dtype != x.dtype:
        raise DTypeError(
            f"{x_name} has dtype {x.dtype} but {other_name} has dtype {other.dtype}; "
            f"cast one of them, e.g. model.to(..., dtype=...) or x.astype(...)"
        )


def _ndim_hint(got: int, wanted: int) -> str:
    if wanted == 4 and got == 2:
        return ("; this looks like a flattened image batch: reshape it to (N, C, H, W), "
                "e.g. x.reshape(-1, 1, 28, 28) for MNIST")
    if wanted == 4 and got == 3:
        return ("; add the missing axis: x[:, None] turns (N, H, W) grayscale images into (N, 1, H, W), "
                "x[None] turns one (C, H, W) image into a batch of one")
    if wanted == 2 and got > 2:
        return "; flatten it first: put a Flatten() layer before Linear, or reshape it to (N, -1)"
    if got == wanted - 1:
        return "; one sample? add the batch axis with x[None]"
    return ""


def _require_ndim(x, ndim: int, name: str, layout: str) -> None:
    if x.ndim != ndim:
        raise ShapeError(
            f"{name} must be a {ndim}-D array of shape {layout}, got shape {tuple(x.shape)} ({x.ndim}-D)"
            + _ndim_hint(x.ndim, ndim))
    if x.shape[0] == 0:
        raise ShapeError(f"{name} is an empty batch (shape {tuple(x.shape)}); pass at least one sample")


def _check_grad(grad_out, x, expected_shape, op: str) -> None:
    """grad_out must be an array on x's backend and device, with x's dtype and the forward output's shape."""
    namespace_of(grad_out, x, names=("grad_out", "x"))
    if grad_out.dtype != x.dtype:
        raise DTypeError(
            f"{op}: grad_out has dtype {grad_out.dtype} but x has dtype {x.dtype}; the gradient must have the "
            "dtype of the forward input (cast it, or keep the model and the data in one dtype)")
    if tuple(grad_out.shape) != tuple(expected_shape):
        raise ShapeError(f"{op}: grad_out must have shape {tuple(expected_shape)} (the forward output's), "
                         f"got {tuple(grad_out.shape)}")


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
#
# Windows are taken in a batch-last layout, (C, H, W, N): each tap is then a
# slice whose innermost contiguous run is a whole output row times the batch
# (OW*N values) instead of one output row (OW), which makes the copies in
# im2col, the scatter-add in the backward and the pooling several times
# faster in NumPy. Layers hand each other NCHW *views* of batch-last memory,
# so the permutes between them are free.


def _batch_last(xp, x):
    """(N, C, H, W) → (C, H, W, N), a free view when ``x`` came out of another layer here."""
    return xp.permute_dims(x, (1, 2, 3, 0))


def _batch_first(xp, x):
    """(C, H, W, N) → (N, C, H, W): the inverse of ``_batch_last``."""
    return xp.permute_dims(x, (3, 0, 1, 2))


def _contiguous(xp, x):
    """``x`` with its own row-major memory: a no-op when it already has it, one copy when it
    is a strided view (the standard has no ``ascontiguousarray``; flattening copies only then)."""
    return xp.reshape(xp.reshape(x, (-1,)), tuple(x.shape))


def _pad_spatial(xp, x, padding: tuple[int, int], value: float):
    """Pad the H and W axes of a batch-last (C, H, W, N) array."""
    if padding == (0, 0):
        return x
    ph, pw = padding
    return xpx.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)), constant_values=value, xp=xp)


def _unpad_spatial(x, padding: tuple[int, int]):
    ph, pw = padding
    if padding == (0, 0):
        return x
    return x[:, ph:x.shape[1] - ph, pw:x.shape[2] - pw, :]


def _padded_shape(x, padding):
    """Batch-last shape (C, H + 2ph, W + 2pw, N) of the padded NCHW array ``x``."""
    return (x.shape[1], x.shape[2] + 2 * padding[0], x.shape[3] + 2 * padding[1], x.shape[0])


@functools.lru_cache(maxsize=256)
def _tap_slices(kernel, stride, dilation, out_hw):
    """For each kernel tap in row-major order, the (rows, cols) slices of the
    padded input that this tap sees across all output positions."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_hw
    return tuple(
        (slice(i * dh, i * dh + sh * (oh - 1) + 1, sh), slice(j * dw, j * dw + sw * (ow - 1) + 1, sw))
        for i in range(kh)
        for j in range(kw)
    )


def _taps(x_padded, slices):
    """The per-tap (C, OH, OW, N) views of a batch-last array."""
    return [x_padded[:, rows, cols, :] for rows, cols in slices]


def _scatter_taps(xp, padded_shape, dtype, device, slices, tap_grads, *, disjoint=False):
    """Sum per-tap gradients back onto the padded batch-last input (the mirror of ``_taps``).

    When the windows do not overlap (``disjoint``) no element is written
    twice, so a plain ``set`` replaces the read-modify-write ``add``. The
    accumulator is ours alone, so it may be updated in place: through views
    where the backend declares ``writable_views`` (one pass per tap, and no
    per-call overhead), else with ``array_api_extra.at``, which is an
    in-place update on mutable arrays and a functional one on JAX.
    """
    grad = xp.zeros(padded_shape, dtype=dtype, device=device)
    if writes_through_views(grad):
        for (rows, cols), tap_grad in zip(slices, tap_grads):
            if disjoint:
                grad[:, rows, cols, :] = tap_grad
            else:
                window = grad[:, rows, cols, :]
                window += tap_grad
        return grad
    for (rows, cols), tap_grad in zip(slices, tap_grads):
        update = xpx.at(grad)[:, rows, cols, :]
        grad = update.set(tap_grad, xp=xp) if disjoint else update.add(tap_grad, xp=xp)
    return grad


# --------------------------------------------------------------------------
# convolution (im2col + one matrix multiply)


class ConvGeometry(NamedTuple):
    """Everything about one conv2d call that follows from the shapes and options."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    out_hw: tuple[int, int]
    slices: tuple


def conv_geometry(x, weight, bias=None, *, stride=1, padding=0, dilation=1):
    """Check a conv2d call's inputs and work out its geometry → ``(xp, ConvGeometry)``."""
    xp = namespace_of(x, weight, bias, names=("x", "weight", "bias"))
    _require_float(xp, x, "conv2d input x")
    _require_ndim(x, 4, "conv2d input x", "(N, C, H, W)")
    if weight.ndim != 4:
        raise ShapeError(f"conv2d weight must have shape (out_channels, in_channels, kh, kw), got {tuple(weight.shape)}")
    if min(weight.shape) < 1:
        raise ShapeError(f"conv2d weight shape {tuple(weight.shape)} has an empty axis; every size must be >= 1")
    _require_same_dtype(x, weight, "x", "weight")
    _require_same_dtype(x, bias, "x", "bias")
    if x.shape[1] != weight.shape[1]:
        raise ShapeError(
            f"conv2d: x has {x.shape[1]} channels but weight expects {weight.shape[1]} (x shape {tuple(x.shape)}, "
            f"weight shape {tuple(weight.shape)}); the layer's in_channels must equal the channels of its input"
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
    """Patch matrix of shape (C*kh*kw, OH*OW*N): rows ordered (c, i, j) like the
    weight, columns (oh, ow, n), so one matrix multiply covers the whole batch.

    An input that is not batch-last in memory (a user's NCHW batch) is copied
    to that layout once first: gathering 25 taps from it directly is slower.
    """
    n, c = x.shape[0], x.shape[1]
    batch_last = _pad_spatial(xp, _contiguous(xp, _batch_last(xp, x)), geometry.padding, 0.0)
    cols = xp.stack(_taps(batch_last, geometry.slices), axis=1)
    return xp.reshape(cols, (c * len(geometry.slices), geometry.out_hw[0] * geometry.out_hw[1] * n))


def conv2d_from_patches(xp, cols, batch_size: int, weight, bias, geometry: ConvGeometry):
    """The conv2d output from the patch matrix ``im2col`` built."""
    out_channels = weight.shape[0]
    out = xp.matmul(xp.reshape(weight, (out_channels, -1)), cols)
    if bias is not None:
        out = out + xp.reshape(bias, (out_channels, 1))
    # Computed batch-last, (O, OH, OW, N), and returned as an NCHW view of
    # that memory, which the next layer's batch-last view undoes for free.
    return _batch_first(xp, xp.reshape(out, (out_channels, *geometry.out_hw, batch_size)))


def conv2d_backward_from_patches(xp, grad_out, cols, input_shape, weight, geometry: ConvGeometry,
                                 input_grad: bool = True):
    """Gradients of conv2d from the forward's patch matrix → ``(grad_x or None, grad_weight, grad_bias)``."""
    n, c, height, width = input_shape
    out_channels, (oh, ow), padding = weight.shape[0], geometry.out_hw, geometry.padding
    _check_grad(grad_out, cols, (n, out_channels, oh, ow), "conv2d_backward")
    grad = xp.reshape(_batch_last(xp, grad_out), (out_channels, oh * ow * n))
    grad_weight = xp.reshape(xp.matmul(grad, cols.T), tuple(weight.shape))
    grad_bias = xp.sum(grad, axis=1)
    if not input_grad:
        return None, grad_weight, grad_bias

    grad_cols = xp.matmul(xp.reshape(weight, (out_channels, -1)).T, grad)
    grad_cols = xp.reshape(grad_cols, (c, len(geometry.slices), oh, ow, n))
    padded_shape = (c, height + 2 * padding[0], width + 2 * padding[1], n)
    grad_x = _scatter_taps(
        xp, padded_shape, grad_out.dtype, device_of(grad_out), geometry.slices,
        (grad_cols[:, t, ...] for t in range(len(geometry.slices))),
    )
    return _batch_first(xp, _unpad_spatial(grad_x, padding)), grad_weight, grad_bias


@tape_aware
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
    _check_grad(grad_out, x, (x.shape[0], weight.shape[0], *geometry.out_hw), "conv2d_backward")
    return conv2d_backward_from_patches(xp, grad_out, im2col(xp, x, geometry), tuple(x.shape), weight, geometry)


# --------------------------------------------------------------------------
# pooling (on the batch-last view of the input, like convolution)


def _pool_setup(x, kernel_size, stride, padding, op: str):
    xp = namespace_of(x, names=("x",))
    _require_float(xp, x, f"{op} input x")
    _require_ndim(x, 4, f"{op} input x", "(N, C, H, W)")
    kernel = _pair(kernel_size, "kernel_size", minimum=1)
    stride = kernel if stride is None else _pair(stride, "stride", minimum=1)
    padding = _pair(padding, "padding", minimum=0)
    _check_pool_padding(padding, kernel, op)
    out_hw = _output_hw(x, kernel, stride, padding, (1, 1), op)
    out_shape = (x.shape[0], x.shape[1], *out_hw)
    disjoint = stride[0] >= kernel[0] and stride[1] >= kernel[1]
    return xp, kernel, out_shape, padding, _tap_slices(kernel, stride, (1, 1), out_hw), disjoint


def _check_pool_padding(padding, kernel, op: str) -> None:
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
    taps = _taps(_pad_spatial(xp, _batch_last(xp, x), padding, -math.inf), slices)
    return _batch_first(xp, _window_max(taps, xp))


def max_pool2d_backward(grad_out, x, kernel_size, stride=None, padding=0, *, forward_output=None):
    """Gradient of ``max_pool2d``: each window's gradient goes to its maximum.

    On ties the first maximum in row-major window order takes it, on every
    backend: taps are visited in that order and each takes the gradient its
    window has not yet handed out. ``forward_output``, the result of the
    ``max_pool2d`` call being differentiated, saves recomputing it.
    """
    xp, _, out_shape, padding, slices, disjoint = _pool_setup(
        x, kernel_size, stride, padding, "max_pool2d_backward")
    _check_grad(grad_out, x, out_shape, "max_pool2d_backward")
    taps = _taps(_pad_spatial(xp, _batch_last(xp, x), padding, -math.inf), slices)
    if forward_output is None:
        out = _window_max(taps, xp)
    else:
        namespace_of(forward_output, x, names=("forward_output", "x"))
        if tuple(forward_output.shape) != out_shape or forward_output.dtype != x.dtype:
            raise ShapeError(
                f"max_pool2d_backward: forward_output must be max_pool2d's result for this x, of shape {out_shape} "
                f"and dtype {x.dtype}; got shape {tuple(forward_output.shape)}, dtype {forward_output.dtype}")
        out = _batch_last(xp, forward_output)

    remaining = _batch_last(xp, grad_out)
    tap_grads = []
    for index, tap in enumerate(taps):
        tap_grad = remaining * xp.astype(tap == out, remaining.dtype)
        tap_grads.append(tap_grad)
        if index < len(taps) - 1:
            remaining = remaining - tap_grad  # exact: either all of it or nothing is taken
    grad_x = _scatter_taps(xp, _padded_shape(x, padding), x.dtype, device_of(x), slices, tap_grads,
                           disjoint=disjoint)
    return _batch_first(xp, _unpad_spatial(grad_x, padding))


@tape_aware
def avg_pool2d(x, kernel_size, stride=None, padding=0):
    """Mean over each window; zero padding counts toward the mean (PyTorch's count_include_pad=True)."""
    xp, kernel, _, padding, slices, _ = _pool_setup(x, kernel_size, stride, padding, "avg_pool2d")
    taps = _taps(_pad_spatial(xp, _batch_last(xp, x), padding, 0.0), slices)
    total = taps[0]
    for tap in taps[1:]:
        total = total + tap
    return _batch_first(xp, total / (kernel[0] * kernel[1]))


def avg_pool2d_backward(grad_out, x, kernel_size, stride=None, padding=0):
    """Gradient of ``avg_pool2d``: each input gets 1/window of every window it is in."""
    xp, kernel, out_shape, padding, slices, disjoint = _pool_setup(
        x, kernel_size, stride, padding, "avg_pool2d_backward")
    _check_grad(grad_out, x, out_shape, "avg_pool2d_backward")
    share = _batch_last(xp, grad_out) / (kernel[0] * kernel[1])
    grad_x = _scatter_taps(xp, _padded_shape(x, padding), x.dtype, device_of(x), slices, [share] * len(slices),
                           disjoint=disjoint)
    return _batch_first(xp, _unpad_spatial(grad_x, padding))


def _check_lp_norm(p) -> float:
    if not _is_real_number(p):
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
    p = _check_lp_norm(p)
    if math.isinf(p):
        return max_pool2d(x, kernel_size, stride)
    xp, kernel, _, _, slices, _ = _pool_setup(x, kernel_size, stride, 0, "lp_pool2d")
    taps = _taps(_batch_last(xp, x), slices)
    total = taps[0] ** p
    for tap in taps[1:]:
        total = total + tap ** p
    return _batch_first(xp, (total / (kernel[0] * kernel[1])) ** (1.0 / p))


def lp_pool2d_backward(grad_out, x, p, kernel_size, stride=None):
    """Gradient of ``lp_pool2d``: d out / d x_k = x_k**(p-1) * out**(1-p) / window.

    Where a window's power mean is zero the gradient is taken as zero (the
    derivative is undefined there for p > 1). For p < 1 the derivative at an
    input of exactly zero is infinite; it is taken as zero too, so the
    gradient stays finite.
    """
    p = _check_lp_norm(p)
    if math.isinf(p):
        return max_pool2d_backward(grad_out, x, kernel_size, stride)
    xp, kernel, out_shape, _, slices, disjoint = _pool_setup(x, kernel_size, stride, 0, "lp_pool2d_backward")
    _check_grad(grad_out, x, out_shape, "lp_pool2d_backward")
    out = _batch_last(xp, lp_pool2d(x, p, kernel_size, stride))
    grad = _batch_last(xp, grad_out)
    taps = _taps(_batch_last(xp, x), slices)
    positive = out > 0
    safe_out = xp.where(positive, out, xp.ones_like(out))
    scale = xp.where(positive, grad * safe_out ** (1.0 - p), xp.zeros_like(out)) / (kernel[0] * kernel[1])
    if p >= 1.0:
        tap_grads = [scale * tap ** (p - 1.0) for tap in taps]
    else:  # 0 ** (p - 1) is inf: keep it out of the product (0 * inf would be NaN)
        tap_grads = [scale * xp.where(tap > 0, tap, xp.ones_like(tap)) ** (p - 1.0) * xp.astype(tap > 0, x.dtype)
                     for tap in taps]
    grad_x = _scatter_taps(xp, _padded_shape(x, (0, 0)), x.dtype, device_of(x), slices, tap_grads, disjoint=disjoint)
    return _batch_first(xp, grad_x)


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
            f"(expected (out_features, {x.shape[1]}); x shape {tuple(x.shape)}); the layer's in_features must equal "
            "the features of its input: check the Flatten before it and the input image size"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ShapeError(f"linear bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    return xp


@tape_aware
def linear(x, weight, bias=None):
    """``x @ weight.T + bias`` for ``x`` of shape (N, in_features)."""
    xp = _linear_setup(x, weight, bias)
    out = xp.matmul(weight, x.T).T
    return out if bias is None else out + bias


def linear_backward(grad_out, x, weight):
    """Gradients of ``linear`` → ``(grad_x, grad_weight, grad_bias)``."""
    xp = _linear_setup(x, weight, None)
    _check_grad(grad_out, x, (x.shape[0], weight.shape[0]), "linear_backward")
    if x.shape[0] == 1:
        # One sample: the weight gradient is an outer product, which NumPy's
        # matmul (inner size 1) computes about 3x slower than a broadcast product.
        grad_weight = grad_out.T * x
    else:
        grad_weight = xp.matmul(grad_out.T, x)
    return xp.matmul(grad_out, weight), grad_weight, xp.sum(grad_out, axis=0)


# --------------------------------------------------------------------------
# activations


def _elementwise_setup(x, name: str, grad_out=None):
    xp = namespace_of(x, grad_out, names=("x", "grad_out"))
    _require_float(xp, x, f"{name} input x")
    if grad_out is not None:
        _check_grad(grad_out, x, x.shape, name)
    return xp


def _check_axis(x, axis, name: str) -> None:
    """``axis`` must name an existing, non-empty axis of ``x`` (softmax and log-softmax reduce over it)."""
    try:
        axis = _as_int(axis)
    except TypeError:
        raise ArgumentTypeError(f"{name}: axis must be an int, got {axis!r}") from None
    if not -x.ndim <= axis < x.ndim:
        raise ArgumentError(
            f"{name}: axis {axis} is out of range for an input of shape {tuple(x.shape)} ({x.ndim}-D); "
            "for logits of shape (N, num_classes) use axis=-1 (or 1)")
    if x.shape[axis] == 0:
        raise ShapeError(f"{name}: axis {axis} of the input (shape {tuple(x.shape)}) is empty; there is nothing "
                         "to normalise over")


# Masks are applied by multiplying with a 0/1 array rather than with
# ``where``: NumPy's ``where`` is about 10x slower on the unpredictable masks
# activations produce.


@tape_aware
def relu(x):
    xp = _elementwise_setup(x, "relu")
    # A 0-d zero broadcasts: a full zeros_like array would cost an allocation
    # and a pass over memory, several times the maximum itself in NumPy.
    return xp.maximum(x, xp.zeros((), dtype=x.dtype, device=device_of(x)))


def relu_backward(grad_out, x):
    xp = _elementwise_setup(x, "relu_backward", grad_out)
    return grad_out * xp.astype(x > 0, grad_out.dtype)


@tape_aware
def sigmoid(x):
    """Logistic function, finite for any input: exp is only taken of −|x|."""
    xp = _elementwise_setup(x, "sigmoid")
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def sigmoid_backward(grad_out, x):
    _elementwise_setup(x, "sigmoid_backward", grad_out)
    s = sigmoid(x)
    return grad_out * s * (1.0 - s)


@tape_aware
def tanh(x):
    xp = _elementwise_setup(x, "tanh")
    return xp.tanh(x)


def tanh_backward(grad_out, x):
    xp = _elementwise_setup(x, "tanh_backward", grad_out)
    t = xp.tanh(x)
    return grad_out * (1.0 - t * t)


@tape_aware
def log_softmax(x, axis: int = -1):
    """``x - logsumexp(x)`` with the maximum subtracted first, so large logits stay finite."""
    xp = _elementwise_setup(x, "log_softmax")
    _check_axis(x, axis, "log_softmax")
    shifted = x - xp.max(x, axis=axis, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


def log_softmax_backward(grad_out, x, axis: int = -1):
    xp = _elementwise_setup(x, "log_softmax_backward", grad_out)
    _check_axis(x, axis, "log_softmax_backward")
    return grad_out - xp.exp(log_softmax(x, axis)) * xp.sum(grad_out, axis=axis, keepdims=True)


@tape_aware
def softmax(x, axis: int = -1):
    xp = _elementwise_setup(x, "softmax")
    _check_axis(x, axis, "softmax")
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


def softmax_backward(grad_out, x, axis: int = -1):
    xp = _elementwise_setup(x, "softmax_backward", grad_out)
    _check_axis(x, axis, "softmax_backward")
    s = softmax(x, axis)
    return s * (grad_out - xp.sum(grad_out * s, axis=axis, keepdims=True))


# --------------------------------------------------------------------------
# loss


def _cross_entropy_setup(logits, labels, check_labels: bool):
    xp = namespace_of(logits, labels, names=("logits", "labels"))
    _require_float(xp, logits, "cross_entropy logits")
    _require_ndim(logits, 2, "cross_entropy logits", "(N, num_classes)")
    if not xp.isdtype(labels.dtype, "integral"):
        raise DTypeError(
            f"cross_entropy labels must be integer class indices (e.g. int64), got dtype {labels.dtype}; "
            "one-hot or probability targets are not supported: pass the class numbers, e.g. argmax(targets, axis=1)")
    if tuple(labels.shape) != (logits.shape[0],):
        raise ShapeError(
            f"cross_entropy labels must have shape ({logits.shape[0]},) to match logits {tuple(logits.shape)}, "
            f"got {tuple(labels.shape)}"
        )
    num_classes = logits.shape[1]
    if num_classes == 0:
        raise ShapeError(f"cross_entropy logits have no classes (shape {tuple(logits.shape)})")
    if check_labels:
        _check_label_range(xp, labels, num_classes)
    return xp


def _check_label_range(xp, labels, num_classes: int) -> None:
    """One reduction over the labels; reading its answer waits for the device (a sync on GPUs)."""
    info = xp.iinfo(labels.dtype)
    too_small = labels < 0 if info.min < 0 else None
    too_large = labels >= num_classes if num_classes <= info.max else None
    bad = too_small if too_large is None else too_large if too_small is None else too_small | too_large
    if bad is None or not bool(xp.any(bad)):
        return
    low, high = int(xp.min(labels)), int(xp.max(labels))
    raise ArgumentError(
        f"cross_entropy labels must be class indices in [0, {num_classes - 1}] for logits with {num_classes} "
        f"classes, got labels from {low} to {high}; check the labels, or give the last layer as many outputs "
        "as there are classes")


def _one_hot(xp, labels, num_classes: int, dtype):
    # The default integer dtype, not the labels': uint8 class numbers would wrap past 255.
    classes = xp.arange(num_classes, device=device_of(labels))
    return xp.astype(xp.reshape(labels, (-1, 1)) == classes, dtype)


@tape_aware
def cross_entropy(logits, labels, *, check_labels: bool = True):
    """Mean negative log-likelihood of integer ``labels`` under softmax(``logits``); a 0-d array.

    With ``check_labels`` (the default) a label outside ``[0, num_classes)``
    raises ``ArgumentError`` instead of silently counting as no class. The
    check is one reduction over the labels, but reading its answer waits for
    the device: on a GPU that is a host sync per call, so a loop whose labels
    are already known to be valid (checked once on the host) may pass
    ``check_labels=False``.
    """
    xp = _cross_entropy_setup(logits, labels, check_labels)
    target = _one_hot(xp, labels, logits.shape[1], logits.dtype)
    return -xp.sum(target * log_softmax(logits)) / logits.shape[0]


def cross_entropy_backward(logits, labels, *, check_labels: bool = True):
    """Gradient of the mean ``cross_entropy`` with respect to ``logits`` (``check_labels`` as there)."""
    xp = _cross_entropy_setup(logits, labels, check_labels)
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
        raise ShapeError(f"batch_norm input must be (N, C) or (N, C, H, W), got shape {tuple(x.shape)}"
                         + _ndim_hint(x.ndim, 4))
    if x.shape[0] == 0:
        raise ShapeError(f"batch_norm input x is an empty batch (shape {tuple(x.shape)}); pass at least one sample")
    channels = x.shape[1]
    for name, a in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if a is not None and tuple(a.shape) != (channels,):
            raise ShapeError(
                f"batch_norm: x has {channels} channels (shape {tuple(x.shape)}) but {name} has shape "
                f"{tuple(a.shape)}, expected ({channels},); BatchNorm2d's num_features must equal the channels "
                "of its input")
        _require_same_dtype(x, a, "x", name)
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    broadcast = (1, channels) if x.ndim == 2 else (1, channels, 1, 1)
    count = math.prod(x.shape[i] for i in axes)
    return xp, axes, broadcast, count


@tape_aware
def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Batch normalisation over all axes but the channel axis 1.

    Returns ``(y, new_running_mean, new_running_var)``: running statistics are
    returned, never updated in place. In training the batch statistics
    normalise and the running ones move by ``momentum`` (the variance with
    Bessel's correction, as PyTorch does); in eval the running ones normalise.
    """
    xp, axes, broadcast, count = _batch_norm_setup(x, running_mean, running_var, weight, bias)
    _check_number(momentum, "batch_norm momentum", low=0.0, high=1.0)
    _check_number(eps, "batch_norm eps", low=0.0, low_inclusive=False)
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
            raise ArgumentError("batch_norm in eval mode needs running_mean and running_var (training=False); "
                                "pass them, or training=True to normalise with the batch statistics")
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
    _check_grad(grad_out, x, x.shape, "batch_norm_backward")
    _check_number(eps, "batch_norm eps", low=0.0, low_inclusive=False)
    if training:
        mean, var = xp.mean(x, axis=axes), xp.var(x, axis=axes)
    else:
        if running_mean is None or running_var is None:
            raise ArgumentError("batch_norm_backward in eval mode needs running_mean and running_var "
                                "(training=False)")
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

    ``rng`` is a ``numpy.random.Generator`` or an int seed. Drawing on the
    host makes the mask, and so the result, identical on every backend.
    """
    p = _check_probability(p, "dropout probability p")
    return host_generator(rng, "dropout rng").random(tuple(shape)) >= p


def _device_mask(xp, mask, like):
    if not (hasattr(mask, "dtype") and hasattr(mask, "shape")):
        raise DTypeError(f"dropout mask must be a boolean array, got {type(mask).__name__}")
    if "bool" not in str(mask.dtype):
        raise DTypeError(f"dropout mask must be a boolean keep-mask (True = keep), got dtype {mask.dtype}")
    if tuple(mask.shape) != tuple(like.shape):
        raise ShapeError(f"dropout mask shape {tuple(mask.shape)} differs from x shape {tuple(like.shape)}")
    from .backends import placement_of, to_device

    if placement_of(mask).backend == "numpy":
        # A host mask (from dropout_mask) is moved to the input's device here;
        # a mask on any other device must already be where x is.
        mask = to_device(mask, placement_of(like))
    namespace_of(like, mask, names=("x", "mask"))
    return mask


@tape_aware
def dropout(x, p: float = 0.5, *, mask=None, rng=None, training: bool = True):
    """Zero elements where ``mask`` is False and scale the rest by 1/(1-p).

    Give either ``mask`` (a boolean keep-mask, e.g. from ``dropout_mask``) or
    ``rng`` (a host ``numpy.random.Generator`` or int seed to draw one from).
    In eval mode (``training=False``) or with p=0, ``x`` is returned unchanged.
    """
    xp = namespace_of(x, names=("x",))
    _require_float(xp, x, "dropout input x")
    p = _check_probability(p, "dropout probability p")
    if not training or p == 0.0:
        return x
    if mask is None:
        if rng is None:
            raise ArgumentError(
                "dropout needs a mask or an rng (numpy.random.Generator or int seed) to be reproducible")
        mask = dropout_mask(x.shape, p, rng)
    mask = _device_mask(xp, mask, x)
    return x * (xp.astype(mask, x.dtype) / (1.0 - p))


def dropout_backward(grad_out, mask, p: float = 0.5):
    """Gradient of ``dropout`` with the same keep-mask."""
    xp = namespace_of(grad_out, names=("grad_out",))
    _require_float(xp, grad_out, "dropout_backward grad_out")
    p = _check_probability(p, "dropout probability p")
    mask = _device_mask(xp, mask, grad_out)
    return grad_out * (xp.astype(mask, grad_out.dtype) / (1.0 - p))
