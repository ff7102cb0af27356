"""Convolution layers."""

from __future__ import annotations

import numpy

from .. import functional as F
from .._checks import pair, positive_int
from .._host_random import host_generator
from ._init import init_weight, new_parameter
from .module import Module


class Conv2d(Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 *, init="he", rng=None, dtype="float32", device=None):
        in_channels = positive_int(in_channels, "in_channels", "Conv2d")
        out_channels = positive_int(out_channels, "out_channels", "Conv2d")
        kernel = pair(kernel_size, "kernel_size", minimum=1)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel
        self.stride = pair(stride, "stride", minimum=1)
        self.padding = pair(padding, "padding", minimum=0)
        self.dilation = pair(dilation, "dilation", minimum=1)
        generator = host_generator(rng)
        fan_in, fan_out = in_channels * kernel[0] * kernel[1], out_channels * kernel[0] * kernel[1]
        shape = (out_channels, in_channels, *kernel)
        self.weight = new_parameter(init_weight(generator, shape, fan_in, fan_out, init), dtype, device)
        self.bias = new_parameter(numpy.zeros(out_channels), dtype, device) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding, dilation=self.dilation)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}")
