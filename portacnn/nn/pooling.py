"""Pooling layers."""

from __future__ import annotations

from .. import functional as F
from .._checks import pair
from ..errors import ArgumentError, ArgumentTypeError
from ..functional.pooling import check_lp_norm, check_pool_padding
from .module import Module


def _check_pool_arguments(layer: str, kernel_size, stride, padding=0) -> None:
    kernel = pair(kernel_size, f"{layer} kernel_size", minimum=1)
    if stride is not None:
        pair(stride, f"{layer} stride", minimum=1)
    check_pool_padding(pair(padding, f"{layer} padding", minimum=0), kernel, layer)


def _check_flag(layer: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{layer}: {name} must be True or False, got {value!r}")
    return value


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, *, ceil_mode=False):
        _check_pool_arguments(type(self).__name__, kernel_size, stride, padding)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode = _check_flag(type(self).__name__, "ceil_mode", ceil_mode)

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, ceil_mode=self.ceil_mode)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
                + (", ceil_mode=True" if self.ceil_mode else ""))


class AvgPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
        _check_pool_arguments(type(self).__name__, kernel_size, stride, padding)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.ceil_mode = _check_flag(type(self).__name__, "ceil_mode", ceil_mode)
        self.count_include_pad = _check_flag(type(self).__name__, "count_include_pad", count_include_pad)

    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, ceil_mode=self.ceil_mode,
                            count_include_pad=self.count_include_pad)

    def extra_repr(self):
        return (f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"
                + (", ceil_mode=True" if self.ceil_mode else "")
                + ("" if self.count_include_pad else ", count_include_pad=False"))


def _check_output_size(layer: str, output_size):
    sizes = (output_size, output_size) if output_size is None or isinstance(output_size, int) else output_size
    try:
        sizes = tuple(sizes)
    except TypeError:
        sizes = ()
    if len(sizes) != 2 or any(s is not None and (isinstance(s, bool) or not isinstance(s, int)) for s in sizes):
        raise ArgumentTypeError(f"{layer}: output_size must be an int or a pair of ints (or None to keep that size), "
                                f"got {output_size!r}")
    if any(s is not None and s < 1 for s in sizes):
        raise ArgumentError(f"{layer}: output_size must be positive, got {output_size!r}")


class AdaptiveAvgPool2d(Module):
    """Mean over PyTorch's adaptive windows, to a fixed ``output_size`` (an int, or a pair; None keeps that size)."""

    def __init__(self, output_size):
        _check_output_size(type(self).__name__, output_size)
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(x, self.output_size)

    def extra_repr(self):
        return f"output_size={self.output_size}"


class AdaptiveMaxPool2d(AdaptiveAvgPool2d):
    """Max over PyTorch's adaptive windows; ``return_indices=True`` is not supported."""

    def __init__(self, output_size, return_indices=False):
        if return_indices is not False:
            raise ArgumentError("AdaptiveMaxPool2d: return_indices=True is not supported (portacnn never returns "
                                "integer indices: its gradients use masks); leave return_indices=False")
        super().__init__(output_size)

    def forward(self, x):
        return F.adaptive_max_pool2d(x, self.output_size)


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
