"""Upsampling layer (``torch/nn/modules/upsampling.py``)."""

from __future__ import annotations

from .. import functional as F
from ..functional.upsampling import check_interpolate_options
from .module import Module


class Upsample(Module):
    """Resize NCHW images to ``size`` or by ``scale_factor`` with ``functional.interpolate``
    (``mode`` ``'nearest'`` or ``'bilinear'``; ``align_corners`` only with bilinear)."""

    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=None):
        check_interpolate_options(size, scale_factor, mode, align_corners, "Upsample")
        if isinstance(scale_factor, (tuple, list)):
            scale_factor = tuple(float(s) for s in scale_factor)
        elif scale_factor is not None:
            scale_factor = float(scale_factor)  # as PyTorch keeps it (its repr shows 2.0)
        self.size, self.scale_factor, self.mode, self.align_corners = size, scale_factor, mode, align_corners

    def forward(self, x):
        return F.interpolate(x, self.size, self.scale_factor, self.mode, self.align_corners)

    def extra_repr(self):
        if self.scale_factor is not None:
            info = f"scale_factor={self.scale_factor!r}"
        else:
            info = f"size={self.size!r}"
        return f"{info}, mode={self.mode!r}"
