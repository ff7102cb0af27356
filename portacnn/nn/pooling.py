"""Pooling layers."""

from __future__ import annotations

from .. import functional as F
from .._checks import pair
from ..functional.pooling import check_lp_norm, check_pool_padding
from .module import Module


def _check_pool_arguments(layer: str, kernel_size, stride, padding=0) -> None:
    kernel = pair(kernel_size, f"{layer} kernel_size", minimum=1)
    if stride is not None:
        pair(stride, f"{layer} stride", minimum=1)
    check_pool_padding(pair(padding, f"{layer} padding", minimum=0), kernel, layer)


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        _check_pool_arguments(type(self).__name__, kernel_size, stride, padding)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(MaxPool2d):
    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)


class LPPool2d(Module):
    """Power-mean pooling (see ``functional.lp_pool2d``); p=1 is average, p=inf is max pooling."""

    def __init__(self, norm_type, kernel_size, stride=None):
        check_lp_norm(norm_type)
        _check_pool_arguments("LPPool2d", kernel_size, stride)
        self.norm_type, self.kernel_size, self.stride = norm_type, kernel_size, stride

    def forward(self, x):
        return F.lp_pool2d(x, self.norm_type, self.kernel_size, self.stride)

    def extra_repr(self):
        return f"norm_type={self.norm_type}, kernel_size={self.kernel_size}, stride={self.stride}"
