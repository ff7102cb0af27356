"""Sliding windows: one strided slice per kernel tap, never a loop over pixels.

Shared by convolution and pooling. Windows are taken in a batch-last layout,
(C, H, W, N); see the comment above ``batch_last``.
"""

from __future__ import annotations

import functools

import array_api_extra as xpx

from .._arrays import device_of, full, writes_through_views
from ..errors import ShapeError


def output_size(size: int, kernel: int, stride: int, padding: int, dilation: int) -> int:
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def output_hw(x, kernel, stride, padding, dilation, name: str) -> tuple[int, int]:
    oh = output_size(x.shape[2], kernel[0], stride[0], padding[0], dilation[0])
    ow = output_size(x.shape[3], kernel[1], stride[1], padding[1], dilation[1])
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


def batch_last(xp, x):
    """(N, C, H, W) → (C, H, W, N), a free view when ``x`` came out of another layer here."""
    return xp.permute_dims(x, (1, 2, 3, 0))


def batch_first(xp, x):
    """(C, H, W, N) → (N, C, H, W): the inverse of ``batch_last``."""
    return xp.permute_dims(x, (3, 0, 1, 2))


def contiguous(xp, x):
    """``x`` with its own row-major memory: a no-op when it already has it, one copy when it
    is a strided view (the standard has no ``ascontiguousarray``; flattening copies only then).
    An array with an unknown size (None, a lazy library's graph) has no memory layout to fix."""
    shape = x.shape
    if None in shape:
        return x
    return xp.reshape(xp.reshape(x, (-1,)), tuple(shape))


def pad_spatial(xp, x, padding: tuple[int, int], value: float):
    """Pad the H and W axes of a batch-last (C, H, W, N) array."""
    if padding == (0, 0):
        return x
    ph, pw = padding
    return pad_hw(xp, x, (ph, ph), (pw, pw), value)


def pad_hw(xp, x, rows: tuple[int, int], cols: tuple[int, int], value: float):
    """Pad a batch-last (C, H, W, N) array by ``rows`` (top, bottom) and ``cols`` (left, right).

    ``xpx.pad`` needs every size known; an array with an unknown size (None,
    a lazy library's batch) is padded by concatenating blocks of ``value``.
    """
    if None not in x.shape:
        return xpx.pad(x, ((0, 0), rows, cols, (0, 0)), constant_values=value, xp=xp)
    for axis, widths in ((1, rows), (2, cols)):
        blocks = [full(xp, tuple(width if a == axis else size for a, size in enumerate(x.shape)), value,
                       dtype=x.dtype, device=device_of(x), like=x) if width else None for width in widths]
        pieces = [piece for piece in (blocks[0], x, blocks[1]) if piece is not None]
        if len(pieces) > 1:
            x = xp.concat(pieces, axis=axis)
    return x


def unpad_spatial(x, padding: tuple[int, int]):
    ph, pw = padding
    if padding == (0, 0):
        return x
    return x[:, ph:-ph or None, pw:-pw or None, :]  # reads no size (a lazy library may not know them)


def padded_shape(x, padding):
    """Batch-last shape (C, H + 2ph, W + 2pw, N) of the padded NCHW array ``x``."""
    return (x.shape[1], x.shape[2] + 2 * padding[0], x.shape[3] + 2 * padding[1], x.shape[0])


@functools.lru_cache(maxsize=256)
def tap_slices(kernel, stride, dilation, out_hw):
    """For each kernel tap in row-major order, the (rows, cols) slices of the
    padded input that this tap sees across all output positions."""
    (kh, kw), (sh, sw), (dh, dw), (oh, ow) = kernel, stride, dilation, out_hw
    return tuple(
        (slice(i * dh, i * dh + sh * (oh - 1) + 1, sh), slice(j * dw, j * dw + sw * (ow - 1) + 1, sw))
        for i in range(kh)
        for j in range(kw)
    )


def window_taps(x_padded, slices):
    """The per-tap (C, OH, OW, N) views of a batch-last array."""
    return [x_padded[:, rows, cols, :] for rows, cols in slices]


def scatter_taps(xp, shape, dtype, device, slices, tap_grads, *, disjoint=False):
    """Sum per-tap gradients back onto the padded batch-last input (the mirror of ``taps``).

    When the windows do not overlap (``disjoint``) no element is written
    twice, so a plain ``set`` replaces the read-modify-write ``add``. The
    accumulator is ours alone, so it may be updated in place: through views
    where the backend declares ``writable_views`` (one pass per tap, and no
    per-call overhead), else with ``array_api_extra.at``, which is an
    in-place update on mutable arrays and a functional one on JAX.
    """
    tap_grads = list(tap_grads)
    writable = writes_through_views(tap_grads[0])  # the accumulator below is of the same library
    if not writable and disjoint and _tile_the_input(slices):
        return _interleaved(xp, shape, tap_grads, slices)
    if shape[-1] is None:  # a lazy library's unknown batch: the zeros take it from a tap gradient
        grad = full(xp, shape, 0, dtype=dtype, device=device, like=tap_grads[0])
    else:
        grad = xp.zeros(shape, dtype=dtype, device=device)
    if writable:
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


# Without writable views, each ``at`` update is a new array (a scatter or an
# in-place dynamic-update-slice on JAX). Windows that tile the input need
# none: their gradients are woven together by stacking and reshaping, which
# gives the same bits (every element is set once).


def _tile_the_input(slices) -> bool:
    """Whether the windows are kh x kw tiles laid side by side (stride == kernel, no dilation)."""
    kh = len({rows.start for rows, _ in slices})
    kw = len(slices) // kh
    return all(rows.step == kh and cols.step == kw and rows.start == index // kw and cols.start == index % kw
               for index, (rows, cols) in enumerate(slices))


def _interleaved(xp, shape, tap_grads, slices):
    """Tiles' gradients (C, OH, OW, N) in row-major tap order, woven into (C, OH*kh, OW*kw, N), then
    padded with zeros to ``shape`` where the tiles stop short of the input's edge."""
    kh = len({rows.start for rows, _ in slices})
    kw = len(slices) // kh
    c, oh, ow = tap_grads[0].shape[:3]
    rows = [xp.reshape(xp.stack(tap_grads[i * kw:(i + 1) * kw], axis=3), (c, oh, ow * kw, -1)) for i in range(kh)]
    woven = xp.reshape(xp.stack(rows, axis=2), (c, oh * kh, ow * kw, -1))
    return pad_hw(xp, woven, (0, shape[1] - oh * kh), (0, shape[2] - ow * kw), 0.0)

