"""Convolution: im2col (one strided slice per kernel tap) and one matrix multiply."""

from __future__ import annotations

from typing import NamedTuple

from .._arrays import device_of, namespace_of
from .._checks import check_grad, pair, require_float, require_ndim, require_same_dtype
from .._dispatch import tape_aware
from ..errors import ShapeError
from ._windows import (batch_first, batch_last, contiguous, output_hw, pad_spatial, scatter_taps, tap_slices,
                       unpad_spatial, window_taps)


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
    require_float(xp, x, "conv2d input x")
    require_ndim(x, 4, "conv2d input x", "(N, C, H, W)")
    if weight.ndim != 4:
        raise ShapeError(f"conv2d weight must have shape (out_channels, in_channels, kh, kw), got {tuple(weight.shape)}")
    if min(weight.shape) < 1:
        raise ShapeError(f"conv2d weight shape {tuple(weight.shape)} has an empty axis; every size must be >= 1")
    require_same_dtype(x, weight, "x", "weight")
    require_same_dtype(x, bias, "x", "bias")
    if x.shape[1] != weight.shape[1]:
        raise ShapeError(
            f"conv2d: x has {x.shape[1]} channels but weight expects {weight.shape[1]} (x shape {tuple(x.shape)}, "
            f"weight shape {tuple(weight.shape)}); the layer's in_channels must equal the channels of its input"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ShapeError(f"conv2d bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    stride = pair(stride, "stride", minimum=1)
    padding = pair(padding, "padding", minimum=0)
    dilation = pair(dilation, "dilation", minimum=1)
    kernel = (weight.shape[2], weight.shape[3])
    out_hw = output_hw(x, kernel, stride, padding, dilation, "conv2d")
    return xp, ConvGeometry(kernel, stride, padding, dilation, out_hw, tap_slices(kernel, stride, dilation, out_hw))


def im2col(xp, x, geometry: ConvGeometry):
    """Patch matrix of shape (C*kh*kw, OH*OW*N): rows ordered (c, i, j) like the
    weight, columns (oh, ow, n), so one matrix multiply covers the whole batch.

    An input that is not batch-last in memory (a user's NCHW batch) is copied
    to that layout once first: gathering 25 taps from it directly is slower.
    """
    n, c = x.shape[0], x.shape[1]
    padded = pad_spatial(xp, contiguous(xp, batch_last(xp, x)), geometry.padding, 0.0)
    cols = xp.stack(window_taps(padded, geometry.slices), axis=1)
    return xp.reshape(cols, (c * len(geometry.slices), geometry.out_hw[0] * geometry.out_hw[1] * n))


def conv2d_from_patches(xp, cols, batch_size: int, weight, bias, geometry: ConvGeometry):
    """The conv2d output from the patch matrix ``im2col`` built."""
    out_channels = weight.shape[0]
    out = xp.matmul(xp.reshape(weight, (out_channels, -1)), cols)
    if bias is not None:
        out = out + xp.reshape(bias, (out_channels, 1))
    # Computed batch-last, (O, OH, OW, N), and returned as an NCHW view of
    # that memory, which the next layer's batch-last view undoes for free.
    return batch_first(xp, xp.reshape(out, (out_channels, *geometry.out_hw, batch_size)))


def conv2d_backward_from_patches(xp, grad_out, cols, input_shape, weight, geometry: ConvGeometry,
                                 input_grad: bool = True):
    """Gradients of conv2d from the forward's patch matrix → ``(grad_x or None, grad_weight, grad_bias)``."""
    n, c, height, width = input_shape
    out_channels, (oh, ow), padding = weight.shape[0], geometry.out_hw, geometry.padding
    check_grad(grad_out, cols, (n, out_channels, oh, ow), "conv2d_backward")
    grad = xp.reshape(batch_last(xp, grad_out), (out_channels, oh * ow * n))
    grad_weight = xp.reshape(xp.matmul(grad, cols.T), tuple(weight.shape))
    grad_bias = xp.sum(grad, axis=1)
    if not input_grad:
        return None, grad_weight, grad_bias

    grad_cols = xp.matmul(xp.reshape(weight, (out_channels, -1)).T, grad)
    grad_cols = xp.reshape(grad_cols, (c, len(geometry.slices), oh, ow, n))
    padded_shape = (c, height + 2 * padding[0], width + 2 * padding[1], n)
    grad_x = scatter_taps(
        xp, padded_shape, grad_out.dtype, device_of(grad_out), geometry.slices,
        (grad_cols[:, t, ...] for t in range(len(geometry.slices))),
    )
    return batch_first(xp, unpad_spatial(grad_x, padding)), grad_weight, grad_bias


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
    check_grad(grad_out, x, (x.shape[0], weight.shape[0], *geometry.out_hw), "conv2d_backward")
    return conv2d_backward_from_patches(xp, grad_out, im2col(xp, x, geometry), tuple(x.shape), weight, geometry)
