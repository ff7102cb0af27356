"""Convolution layers."""

from __future__ import annotations

import numpy

from .. import functional as F
from .._checks import pair, positive_int
from .._host_random import host_generator
from ..errors import ArgumentError
from ._init import init_weight, new_parameter
from .module import Module


def _check_groups(groups, in_channels, out_channels, layer):
    groups = positive_int(groups, "groups", layer)
    for name, channels in (("in_channels", in_channels), ("out_channels", out_channels)):
        if channels % groups:
            raise ArgumentError(f"{layer}: {name} ({channels}) must be divisible by groups ({groups})")
    return groups


class _ConvNd(Module):
    """What both convolutions set up alike: checked sizes and options, then weight and bias."""

    def _set_options(self, layer, in_channels, out_channels, kernel_size, stride, padding, dilation, groups):
        in_channels = positive_int(in_channels, "in_channels", layer)
        out_channels = positive_int(out_channels, "out_channels", layer)
        self.groups = _check_groups(groups, in_channels, out_channels, layer)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size = pair(kernel_size, "kernel_size", minimum=1)
        self.stride = pair(stride, "stride", minimum=1)
        self.padding = pair(padding, "padding", minimum=0)
        self.dilation = pair(dilation, "dilation", minimum=1)

    def _set_parameters(self, weight_shape, bias, init, rng, dtype, device):
        # PyTorch's fans from the weight's shape: size(1) and size(0) times the kernel area.
        area = weight_shape[2] * weight_shape[3]
        weight = init_weight(host_generator(rng), weight_shape, weight_shape[1] * area, weight_shape[0] * area, init)
        self.weight = new_parameter(weight, dtype, device)
        self.bias = new_parameter(numpy.zeros(self.out_channels), dtype, device) if bias else None


class Conv2d(_ConvNd):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1, bias=True,
                 *, init="he", rng=None, dtype="float32", device=None):
        self._set_options("Conv2d", in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        self._set_parameters((self.out_channels, self.in_channels // self.groups, *self.kernel_size), bias, init, rng,
                             dtype, device)

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding, dilation=self.dilation,
                        groups=self.groups)

    def extra_repr(self):
        groups = f", groups={self.groups}" if self.groups != 1 else ""
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}{groups}, bias={self.bias is not None}")


class ConvTranspose2d(_ConvNd):
    """Transposed convolution (PyTorch's): weight (in_channels, out_channels/groups, kh, kw)."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, output_padding=0, groups=1,
                 bias=True, dilation=1, *, init="he", rng=None, dtype="float32", device=None):
        self._set_options("ConvTranspose2d", in_channels, out_channels, kernel_size, stride, padding, dilation, groups)
        self.output_padding = pair(output_padding, "output_padding", minimum=0)
        for extra, s, d in zip(self.output_padding, self.stride, self.dilation):
            if extra >= s and extra >= d:
                raise ArgumentError(f"ConvTranspose2d: output_padding {self.output_padding} must be smaller than "
                                    f"either stride {self.stride} or dilation {self.dilation} in each direction")
        self._set_parameters((self.in_channels, self.out_channels // self.groups, *self.kernel_size), bias, init, rng,
                             dtype, device)

    def forward(self, x):
        return F.conv_transpose2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding,
                                  output_padding=self.output_padding, groups=self.groups, dilation=self.dilation)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, output_padding={self.output_padding}, groups={self.groups}, "
                f"dilation={self.dilation}, bias={self.bias is not None}")
