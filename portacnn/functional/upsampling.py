"""``interpolate`` (nearest and bilinear resizing of NCHW images), with PyTorch's index rules.

Resizing acts on H and W separately, so it is two products with constant
matrices built from the shapes alone: ``y = R · x · Cᵀ`` with ``R`` of shape
(out_h, in_h) and ``C`` of shape (out_w, in_w); row ``i`` of a matrix holds the
weights output ``i`` takes from the inputs. The gradient is the transposed
products, ``Rᵀ · grad · C``: no scatter. Nearest resizing copies, so its
forward gathers (``xp.take`` of the chosen rows and columns: exact, and an
inf stays where it is); its backward uses the 0/1 matrices.

The rules, as PyTorch's CPU kernels (``UpSample.h``):

* ``scale`` for an axis is ``1 / scale_factor`` when a scale factor was given,
  else ``in / out``;
* nearest: ``src = min(floor(dst * scale), in - 1)``, with ``scale`` in float32
  as PyTorch computes it, except that ``out == in`` copies and
  ``out == 2 * in`` takes ``dst // 2``;
* bilinear, ``align_corners=False``: ``src = max(scale * (dst + 0.5) - 0.5, 0)``
  (half-pixel centers); ``align_corners=True``: ``src = dst * (in - 1) / (out - 1)``
  (0 for a single output), ignoring any scale factor; an axis whose size
  does not change is copied, whatever the scale factor; then
  ``i0 = min(floor(src), in - 1)``, ``i1 = min(i0 + 1, in - 1)``,
  weights ``1 - λ`` and ``λ = src - i0``.

The output size is ``size``, or ``floor(in * scale_factor)``.
"""

from __future__ import annotations

import math
import struct

from .._arrays import device_of, namespace_of, with_sizes
from .._checks import check_grad, is_real_number, pair, require_float, require_ndim
from .._dispatch import tape_aware
from ..errors import ArgumentError, ArgumentTypeError, ShapeError

MODES = ("nearest", "bilinear")


def _float32(value: float) -> float:
    """``value`` rounded to float32 (PyTorch computes the nearest-neighbour scale in float)."""
    return struct.unpack("f", struct.pack("f", value))[0]


def check_interpolate_options(size, scale_factor, mode, align_corners, op: str):
    """Validate the options that do not depend on the input; return (size pair or None, scale pair or None)."""
    if not isinstance(mode, str) or mode not in MODES:
        raise ArgumentError(f"{op}: mode must be one of {', '.join(repr(m) for m in MODES)}, got {mode!r}")
    if mode == "nearest" and align_corners is not None:
        raise ArgumentError(f"{op}: align_corners can only be set with mode='bilinear' (as in PyTorch); "
                            f"leave it None for mode='nearest', got {align_corners!r}")
    if align_corners is not None and not isinstance(align_corners, bool):
        raise ArgumentTypeError(f"{op}: align_corners must be True, False or None, got {align_corners!r}")
    if (size is None) == (scale_factor is None):
        which = "both were given" if size is not None else "neither was given"
        raise ArgumentError(f"{op}: give exactly one of size and scale_factor ({which})")
    if size is not None:
        return pair(size, f"{op}: size", minimum=1), None
    values = tuple(scale_factor) if isinstance(scale_factor, (tuple, list)) else (scale_factor,) * 2
    if len(values) != 2 or not all(is_real_number(v) for v in values):
        raise ArgumentTypeError(f"{op}: scale_factor must be a number or a pair of numbers (height, width), "
                                f"got {scale_factor!r}")
    if not all(math.isfinite(float(v)) and float(v) > 0 for v in values):
        raise ArgumentError(f"{op}: scale_factor must be positive and finite, got {scale_factor!r}")
    return None, tuple(float(v) for v in values)


def _setup(x, size, scale_factor, mode, align_corners, op: str):
    """Namespace, (out_h, out_w), and per axis the scale factor given (or None)."""
    size, scales = check_interpolate_options(size, scale_factor, mode, align_corners, op)
    xp = namespace_of(x, names=("x",))
    require_float(xp, x, f"{op} input x")
    require_ndim(x, 4, f"{op} input x", "(N, C, H, W)")
    in_hw = tuple(x.shape[2:])
    if min(in_hw) < 1:
        raise ShapeError(f"{op}: input x has an empty spatial size {in_hw}")
    if scales is None:
        return xp, size, (None, None)
    out_hw = tuple(math.floor(n * s) for n, s in zip(in_hw, scales))
    if min(out_hw) < 1:
        raise ArgumentError(f"{op}: scale_factor {scale_factor!r} makes the {in_hw[0]}x{in_hw[1]} input "
                            f"{out_hw[0]}x{out_hw[1]}: the output size must be positive")
    return xp, out_hw, scales


def _nearest_indices(size: int, out: int, scale_factor) -> list[int]:
    """The input index each output takes, PyTorch's ``nearest_idx``."""
    if out == size:
        return list(range(out))
    if out == 2 * size:
        return [i // 2 for i in range(out)]
    scale = _float32(1.0 / scale_factor if scale_factor is not None else _float32(size) / _float32(out))
    return [min(math.floor(_float32(i * scale)), size - 1) for i in range(out)]


def _weights(size: int, out: int, mode: str, align_corners: bool, scale_factor) -> list[list[float]]:
    """(out, size) interpolation matrix along one axis, as nested lists."""
    rows = [[0.0] * size for _ in range(out)]
    if mode == "nearest" or out == size:  # bilinear copies an axis it keeps the size of, whatever the scale
        for i, j in enumerate(_nearest_indices(size, out, scale_factor)):
            rows[i][j] = 1.0
        return rows
    if align_corners:
        scale = (size - 1) / (out - 1) if out > 1 else 0.0
    else:
        scale = 1.0 / scale_factor if scale_factor is not None else size / out
    for i in range(out):
        src = scale * i if align_corners else max(scale * (i + 0.5) - 0.5, 0.0)
        i0 = min(math.floor(src), size - 1)
        i1 = min(i0 + 1, size - 1)
        lam = min(max(src - i0, 0.0), 1.0)
        rows[i][i0] += 1.0 - lam
        rows[i][i1] += lam
    return rows


def _matrices(xp, x, out_hw, scales, mode, align_corners):
    return tuple(xp.asarray(_weights(size, out, mode, bool(align_corners), scale), dtype=x.dtype, device=device_of(x))
                 for size, out, scale in zip(x.shape[2:], out_hw, scales))


@tape_aware
def interpolate(x, size=None, scale_factor=None, mode="nearest", align_corners=None):
    """Resize the H and W of an NCHW ``x`` to ``size`` (an int or a pair) or by ``scale_factor`` (a number
    or a pair), as ``torch.nn.functional.interpolate``; ``mode`` is ``'nearest'`` or ``'bilinear'``
    (``align_corners`` only with bilinear; None means False)."""
    xp, out_hw, scales = _setup(x, size, scale_factor, mode, align_corners, "interpolate")
    if mode == "nearest":
        for axis, (n, out, scale) in enumerate(zip(x.shape[2:], out_hw, scales), start=2):
            index = xp.asarray(_nearest_indices(n, out, scale), device=device_of(x))
            x = xp.take(x, index, axis=axis)
        return x
    rows, cols = _matrices(xp, x, out_hw, scales, mode, align_corners)
    # with_sizes: a lazy library may lose the sizes of a product with an unknown batch (ndonnx does)
    return with_sizes(xp, xp.matmul(xp.matmul(rows, x), xp.matrix_transpose(cols)), (*x.shape[:2], *out_hw))


def interpolate_backward(grad_out, x, size=None, scale_factor=None, mode="nearest", align_corners=None):
    """Gradient of ``interpolate`` with respect to ``x``: ``Rᵀ · grad_out · C`` with the constant matrices."""
    xp, out_hw, scales = _setup(x, size, scale_factor, mode, align_corners, "interpolate_backward")
    check_grad(grad_out, x, (x.shape[0], x.shape[1], *out_hw), "interpolate_backward")
    rows, cols = _matrices(xp, x, out_hw, scales, mode, align_corners)
    return with_sizes(xp, xp.matmul(xp.matmul(xp.matrix_transpose(rows), grad_out), cols), x.shape)
