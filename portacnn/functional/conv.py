"""Convolution: im2col (one strided slice per kernel tap) and one matrix multiply.

conv2d and its backward run the backend's own fused kernels instead where it declares
``native_kernels`` (``_native/``), after the same checks.
"""

from __future__ import annotations

from typing import NamedTuple

from .._arrays import device_of, fuses_ops, namespace_of, native_kernels_for
from .._checks import (
    check_grad,
    pair,
    positive_int,
    require_float,
    require_ndim,
    require_same_dtype,
)
from .._dispatch import tape_aware
from ..errors import ArgumentError, ShapeError
from ._windows import (
    batch_first,
    batch_last,
    contiguous,
    output_hw,
    pad_spatial,
    scatter_taps,
    tap_slices,
    unpad_spatial,
    window_taps,
)


class ConvGeometry(NamedTuple):
    """Everything about one conv2d call that follows from the shapes and options."""

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    out_hw: tuple[int, int]
    slices: tuple
    groups: int = 1


def check_groups(groups, in_channels: int, out_channels: int, op: str) -> int:
    """``groups`` as an int that divides both channel counts, or a clear error."""
    groups = positive_int(groups, "groups", op)
    for name, channels in (("in_channels", in_channels), ("out_channels", out_channels)):
        if channels % groups:
            raise ShapeError(f"{op}: {name} ({channels}) must be divisible by groups ({groups})")
    return groups


def _check_weight(x, weight, bias, op: str, layout: str):
    xp = namespace_of(x, weight, bias, names=("x", "weight", "bias"))
    require_float(xp, x, f"{op} input x")
    require_ndim(x, 4, f"{op} input x", "(N, C, H, W)")
    if weight.ndim != 4:
        raise ShapeError(f"{op} weight must have shape {layout}, got {tuple(weight.shape)}")
    if min(weight.shape) < 1:
        raise ShapeError(f"{op} weight shape {tuple(weight.shape)} has an empty axis; every size must be >= 1")
    require_same_dtype(x, weight, "x", "weight")
    require_same_dtype(x, bias, "x", "bias")
    return xp


def conv_geometry(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1):
    """Check a conv2d call's inputs and work out its geometry → ``(xp, ConvGeometry)``."""
    xp = _check_weight(x, weight, bias, "conv2d", "(out_channels, in_channels/groups, kh, kw)")
    groups = check_groups(groups, x.shape[1], weight.shape[0], "conv2d")
    if x.shape[1] != weight.shape[1] * groups:
        raise ShapeError(
            f"conv2d: x has {x.shape[1]} channels but weight expects {weight.shape[1] * groups} "
            f"({weight.shape[1]} per group x {groups} groups; x shape {tuple(x.shape)}, "
            f"weight shape {tuple(weight.shape)}); the layer's in_channels must equal the channels of its input"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ShapeError(f"conv2d bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    stride = pair(stride, "stride", minimum=1)
    padding = pair(padding, "padding", minimum=0)
    dilation = pair(dilation, "dilation", minimum=1)
    kernel = (weight.shape[2], weight.shape[3])
    out_hw = output_hw(x, kernel, stride, padding, dilation, "conv2d")
    return xp, ConvGeometry(kernel, stride, padding, dilation, out_hw, tap_slices(kernel, stride, dilation, out_hw),
                            groups)


def im2col(xp, x, geometry: ConvGeometry):
    """Patch matrix of shape (C*kh*kw, OH*OW*N): rows ordered (c, i, j) like the
    weight, columns (oh, ow, n), so one matrix multiply covers the whole batch.

    An input that is not batch-last in memory (a user's NCHW batch) is copied
    to that layout once first: gathering 25 taps from it directly is slower.
    """
    padded = pad_spatial(xp, contiguous(xp, batch_last(xp, x)), geometry.padding, 0.0)
    if fuses_ops(x):
        cols = _taps_in_two_stages(xp, padded, geometry)
    else:
        cols = xp.stack(window_taps(padded, geometry.slices), axis=1)
    return xp.reshape(cols, (x.shape[1] * len(geometry.slices), -1))  # -1: the batch may be unknown (None)


def _taps_in_two_stages(xp, padded, geometry: ConvGeometry):
    """The (C, kh*kw, OH, OW, N) taps as kw column slices, then kh row slices of those: 2k ops instead of k².

    A fusing compiler (XLA) turns the two stacks into one copy loop, about twice as fast as one
    stack of k² slices at LeNet's sizes. Libraries that run each op eagerly would write the first
    stage out (a fifth more bytes at 5x5), which costs NumPy more than the fewer calls save."""
    kh, kw = geometry.kernel
    column_slices = [cols for _, cols in geometry.slices[:kw]]
    row_slices = [rows for rows, _ in geometry.slices[::kw]]
    by_column = xp.stack([padded[:, :, cols, :] for cols in column_slices], axis=1)  # (C, kw, H, OW, N)
    return xp.stack([by_column[:, :, rows, :, :] for rows in row_slices], axis=1)  # (C, kh, kw, OH, OW, N)


def conv2d_from_patches(xp, cols, batch_size, weight, bias, geometry: ConvGeometry):
    """The conv2d output from the patch matrix ``im2col`` built (``batch_size`` is not read: the
    patch matrix holds it, and a lazy library may not know it)."""
    out_channels, groups = weight.shape[0], geometry.groups
    if groups == 1:
        out = xp.matmul(xp.reshape(weight, (out_channels, -1)), cols)
    else:  # one batched matmul: (G, O/G, C/G*kh*kw) @ (G, C/G*kh*kw, L)
        grouped = xp.reshape(weight, (groups, out_channels // groups, -1))
        out = xp.matmul(grouped, _grouped(xp, cols, groups))
        out = xp.reshape(out, (out_channels, -1))
    if bias is not None:
        out = out + xp.reshape(bias, (out_channels, 1))
    # Computed batch-last, (O, OH, OW, N), and returned as an NCHW view of
    # that memory, which the next layer's batch-last view undoes for free.
    return batch_first(xp, xp.reshape(out, (out_channels, *geometry.out_hw, -1)))


def _grouped(xp, matrix, groups: int):
    """(R, K) → (G, R/G, K): the rows of each group as one batch entry (K, holding the batch, is not read)."""
    return xp.reshape(matrix, (groups, matrix.shape[0] // groups, -1))


def _transposed(xp, batch):
    return xp.permute_dims(batch, (0, 2, 1))


def conv2d_input_grad(xp, grad, input_shape, weight, geometry: ConvGeometry):
    """The conv2d input gradient, batch-last and unpadded (C, H, W, N), from ``grad``, the
    output gradient as an (O, OH*OW*N) matrix: per-tap products scattered back onto the input."""
    if _is_plain_stride_one(geometry):
        return _input_grad_as_conv(xp, grad, input_shape, weight, geometry)
    n, c, height, width = input_shape
    out_channels, (oh, ow), padding, groups = weight.shape[0], geometry.out_hw, geometry.padding, geometry.groups
    if groups == 1:
        grad_cols = xp.matmul(xp.reshape(weight, (out_channels, -1)).T, grad)
    else:
        grad_cols = xp.matmul(_transposed(xp, xp.reshape(weight, (groups, out_channels // groups, -1))),
                              _grouped(xp, grad, groups))
    if groups != 1:  # merge the groups first, then split: a chunked array library cannot do both in one reshape
        grad_cols = xp.reshape(grad_cols, (c * len(geometry.slices), -1))
    grad_cols = xp.reshape(grad_cols, (c, len(geometry.slices), oh, ow, -1))
    padded_shape = (c, height + 2 * padding[0], width + 2 * padding[1], n)  # n may be None: scatter_taps copes
    grad_x = scatter_taps(
        xp, padded_shape, grad.dtype, device_of(grad), geometry.slices,
        (grad_cols[:, t, ...] for t in range(len(geometry.slices))),
    )
    return unpad_spatial(grad_x, padding)


def _is_plain_stride_one(geometry: ConvGeometry) -> bool:
    """A stride-1 "same" convolution (output as large as the input), where the output gradient's patch
    matrix is no larger than the patch gradient it replaces. With little padding (LeNet's 5x5 "valid"
    convolutions) the padded output gradient's patches would be several times larger: the scatter wins."""
    return (geometry.stride == (1, 1) and geometry.dilation == (1, 1) and geometry.groups == 1
            and all(2 * p == k - 1 for p, k in zip(geometry.padding, geometry.kernel)))


def _input_grad_as_conv(xp, grad, input_shape, weight, geometry: ConvGeometry):
    """The stride-1 input gradient as a convolution: the output gradient, padded by ``k - 1 - p``, convolved
    with the weight flipped in space and with its channel axes swapped. One patch matrix of the output
    gradient and one GEMM, instead of a GEMM into a kh*kw times larger patch gradient that is then added
    back tap by tap (about half the memory traffic for 3x3 kernels)."""
    _, c, height, width = input_shape
    out_channels, (oh, ow), kernel = weight.shape[0], geometry.out_hw, geometry.kernel
    flipped = xp.permute_dims(xp.flip(weight, axis=(2, 3)), (1, 0, 2, 3))  # (C, O, kh, kw)
    padding = (kernel[0] - 1 - geometry.padding[0], kernel[1] - 1 - geometry.padding[1])
    transposed = ConvGeometry(kernel, (1, 1), padding, (1, 1), (height, width),
                              tap_slices(kernel, (1, 1), (1, 1), (height, width)), 1)
    cols = im2col(xp, batch_first(xp, xp.reshape(grad, (out_channels, oh, ow, -1))), transposed)
    return xp.reshape(xp.matmul(xp.reshape(flipped, (c, -1)), cols), (c, height, width, -1))


def conv2d_weight_grad(xp, grad, cols, weight_shape, groups: int = 1):
    """The conv2d weight gradient from the (O, L) output gradient and the (C*kh*kw, L) patch matrix."""
    if groups == 1:
        return xp.reshape(xp.matmul(grad, cols.T), tuple(weight_shape))
    return xp.reshape(xp.matmul(_grouped(xp, grad, groups), _transposed(xp, _grouped(xp, cols, groups))),
                      tuple(weight_shape))


def conv2d_backward_from_patches(xp, grad_out, cols, input_shape, weight, geometry: ConvGeometry,
                                 input_grad: bool = True):
    """Gradients of conv2d from the forward's patch matrix → ``(grad_x or None, grad_weight, grad_bias)``."""
    n = input_shape[0]
    out_channels, (oh, ow) = weight.shape[0], geometry.out_hw
    check_grad(grad_out, cols, (n, out_channels, oh, ow), "conv2d_backward")
    grad = xp.reshape(batch_last(xp, grad_out), (out_channels, -1))
    grad_weight = conv2d_weight_grad(xp, grad, cols, weight.shape, geometry.groups)
    if fuses_ops(grad):
        # XLA turns a sum over this batch-last view back into a sum over the NCHW output gradient,
        # and first copies that gradient out in NCHW order (1.4 ms of a 10 ms LeNet step at batch 64);
        # a matrix-vector product reads it where it lies.
        grad_bias = xp.matmul(grad, xp.ones((grad.shape[1],), dtype=grad.dtype, device=device_of(grad)))
    else:
        grad_bias = xp.sum(grad, axis=1)
    if not input_grad:
        return None, grad_weight, grad_bias
    return batch_first(xp, conv2d_input_grad(xp, grad, input_shape, weight, geometry)), grad_weight, grad_bias


@tape_aware
def conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1):
    """2-D cross-correlation of ``x`` (N, C, H, W) with ``weight`` (O, C/groups, kh, kw).

    With ``groups`` > 1 the channels split into that many groups, each
    convolved with its own O/groups filters (depthwise when groups == C).
    """
    xp, geometry = conv_geometry(x, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=groups)
    kernels = native_kernels_for(x)
    if kernels is not None:
        return kernels.conv2d(x, weight, bias, geometry)
    return conv2d_from_patches(xp, im2col(xp, x, geometry), x.shape[0], weight, bias, geometry)


def conv2d_backward(grad_out, x, weight, *, stride=1, padding=0, dilation=1, groups=1):
    """Gradients of ``conv2d`` → ``(grad_x, grad_weight, grad_bias)``.

    ``grad_bias`` is always returned (the sum of ``grad_out``); a caller
    without a bias ignores it.
    """
    xp, geometry = conv_geometry(x, weight, None, stride=stride, padding=padding, dilation=dilation, groups=groups)
    kernels = native_kernels_for(x)
    if kernels is not None:
        return conv2d_backward_native(kernels, grad_out, x, weight, geometry)
    check_grad(grad_out, x, (x.shape[0], weight.shape[0], *geometry.out_hw), "conv2d_backward")
    return conv2d_backward_from_patches(xp, grad_out, im2col(xp, x, geometry), tuple(x.shape), weight, geometry)


def conv2d_backward_native(kernels, grad_out, x, weight, geometry: ConvGeometry, needs=(True, True, True)):
    """Gradients of conv2d by a backend's fused kernels (``native_kernels_for(x)``) →
    ``(grad_x, grad_weight, grad_bias)``, each None where ``needs`` (three bools) says it is not wanted."""
    check_grad(grad_out, x, (x.shape[0], weight.shape[0], *geometry.out_hw), "conv2d_backward")
    return kernels.conv2d_backward(grad_out, x, weight, geometry, needs)


# --------------------------------------------------------------------------
# transposed convolution: the conv's input gradient, and back again
#
# conv_transpose2d(x, w) is the input gradient of conv2d(y, w) where y has the
# transposed convolution's output shape and ``x`` plays the output gradient;
# its backward therefore is that conv2d's forward (for x) and weight gradient.


def conv_transpose_geometry(x, weight, bias=None, *, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Check a conv_transpose2d call → ``(xp, ConvGeometry of the matching conv2d, output shape)``."""
    xp = _check_weight(x, weight, bias, "conv_transpose2d", "(in_channels, out_channels/groups, kh, kw)")
    groups = positive_int(groups, "groups", "conv_transpose2d")
    if x.shape[1] != weight.shape[0]:
        raise ShapeError(
            f"conv_transpose2d: x has {x.shape[1]} channels but weight expects {weight.shape[0]} (x shape "
            f"{tuple(x.shape)}, weight shape {tuple(weight.shape)}); the layer's in_channels must equal the "
            "channels of its input")
    out_channels = weight.shape[1] * groups
    check_groups(groups, x.shape[1], out_channels, "conv_transpose2d")
    if bias is not None and tuple(bias.shape) != (out_channels,):
        raise ShapeError(f"conv_transpose2d bias must have shape ({out_channels},), got {tuple(bias.shape)}")
    stride = pair(stride, "stride", minimum=1)
    padding = pair(padding, "padding", minimum=0)
    output_padding = pair(output_padding, "output_padding", minimum=0)
    dilation = pair(dilation, "dilation", minimum=1)
    for op, s, d in zip(output_padding, stride, dilation):
        if op >= s and op >= d:
            raise ArgumentError(f"conv_transpose2d: output_padding {output_padding} must be smaller than either "
                                f"stride {stride} or dilation {dilation} in each direction")
    kernel = (weight.shape[2], weight.shape[3])
    out_hw = tuple((size - 1) * s - 2 * p + d * (k - 1) + op + 1 for size, s, p, d, k, op in
                   zip(x.shape[2:], stride, padding, dilation, kernel, output_padding))
    if min(out_hw) < 1:
        raise ShapeError(
            f"conv_transpose2d: input of spatial size {tuple(x.shape[2:])} with kernel {kernel}, stride {stride}, "
            f"padding {padding}, output_padding {output_padding}, dilation {dilation} gives an output of "
            f"{out_hw[0]}x{out_hw[1]}; use less padding or a larger input")
    # The matching conv2d maps the output back onto x's spatial size.
    in_hw = (x.shape[2], x.shape[3])
    geometry = ConvGeometry(kernel, stride, padding, dilation, in_hw, tap_slices(kernel, stride, dilation, in_hw),
                            groups)
    return xp, geometry, (x.shape[0], out_channels, *out_hw)


@tape_aware
def conv_transpose2d(x, weight, bias=None, *, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """2-D transposed convolution of ``x`` (N, C_in, H, W) with ``weight`` (C_in, C_out/groups, kh, kw):
    the gradient of ``conv2d`` with respect to its input, as in PyTorch."""
    xp, geometry, out_shape = conv_transpose_geometry(x, weight, bias, stride=stride, padding=padding,
                                                      output_padding=output_padding, groups=groups, dilation=dilation)
    grad = xp.reshape(batch_last(xp, x), (x.shape[1], -1))
    out = conv2d_input_grad(xp, grad, out_shape, weight, geometry)
    if bias is not None:
        out = out + xp.reshape(bias, (out_shape[1], 1, 1, 1))
    return batch_first(xp, out)


def conv_transpose2d_backward_from_input(xp, grad_out, x, weight, geometry: ConvGeometry, input_grad: bool = True):
    """Gradients of conv_transpose2d → ``(grad_x or None, grad_weight, grad_bias)``: im2col of ``grad_out``,
    then the matching conv2d's forward (for x) and weight gradient."""
    n = x.shape[0]
    cols = im2col(xp, grad_out, geometry)
    grad_weight = conv2d_weight_grad(xp, xp.reshape(batch_last(xp, x), (x.shape[1], -1)), cols,
                                     weight.shape, geometry.groups)
    grad_bias = xp.sum(grad_out, axis=(0, 2, 3))
    grad_x = conv2d_from_patches(xp, cols, n, weight, None, geometry) if input_grad else None
    return grad_x, grad_weight, grad_bias


def conv_transpose2d_backward(grad_out, x, weight, *, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    """Gradients of ``conv_transpose2d`` → ``(grad_x, grad_weight, grad_bias)`` (``grad_bias`` always returned)."""
    xp, geometry, out_shape = conv_transpose_geometry(x, weight, None, stride=stride, padding=padding,
                                                      output_padding=output_padding, groups=groups, dilation=dilation)
    check_grad(grad_out, x, out_shape, "conv_transpose2d_backward")
    return conv_transpose2d_backward_from_input(xp, grad_out, x, weight, geometry)
