"""Normalisation layers."""

from __future__ import annotations

import numpy

from .. import functional as F
from .._arrays import namespace_of
from .._checks import check_number, ndim_hint, positive_int
from ..backends import parse_spec, to_device
from ..errors import ShapeError
from ._init import host_dtype, new_parameter
from .module import Buffer, Module, array_of


class BatchNorm2d(Module):
    """Batch normalisation over (N, H, W) per channel, with running statistics for eval."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, *, dtype="float32", device=None):
        num_features = positive_int(num_features, "num_features", "BatchNorm2d")
        check_number(eps, "BatchNorm2d eps", low=0.0, low_inclusive=False)
        check_number(momentum, "BatchNorm2d momentum", low=0.0, high=1.0)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = new_parameter(numpy.ones(num_features), dtype, device) if affine else None
        self.bias = new_parameter(numpy.zeros(num_features), dtype, device) if affine else None
        placement = parse_spec(device)
        resolved_dtype = host_dtype(dtype)
        self.running_mean = Buffer(to_device(numpy.zeros(num_features, dtype=resolved_dtype), placement))
        self.running_var = Buffer(to_device(numpy.ones(num_features, dtype=resolved_dtype), placement))

    def forward(self, x):
        namespace_of(array_of(x), names=("x",))
        if x.ndim != 4:
            raise ShapeError(f"BatchNorm2d expects (N, C, H, W) input, got shape {tuple(x.shape)}"
                             + ndim_hint(x.ndim, 4))
        y, self.running_mean.data, self.running_var.data = F.batch_norm(
            x, self.running_mean.data, self.running_var.data, self.weight, self.bias,
            training=self.training, momentum=self.momentum, eps=self.eps)
        return y

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.weight is not None}"
