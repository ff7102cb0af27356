"""Fully connected layers."""

from __future__ import annotations

import numpy

from .. import functional as F
from .._checks import positive_int
from .._host_random import host_generator
from ._init import init_weight, new_parameter
from .module import Module


class Linear(Module):
    def __init__(self, in_features, out_features, bias=True, *, init="he", rng=None, dtype="float32", device=None):
        in_features = positive_int(in_features, "in_features", "Linear")
        out_features = positive_int(out_features, "out_features", "Linear")
        self.in_features, self.out_features = in_features, out_features
        generator = host_generator(rng)
        weight = init_weight(generator, (out_features, in_features), in_features, out_features, init)
        self.weight = new_parameter(weight, dtype, device)
        self.bias = new_parameter(numpy.zeros(out_features), dtype, device) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
