"""Normalisation layers."""

from __future__ import annotations

import numpy

from .. import functional as F
from .._arrays import namespace_of
from .._checks import check_number, ndim_hint, positive_int
from ..backends import parse_spec, to_device
from ..errors import ArgumentError, ShapeError
from ..functional.normalization import _normalized_shape
from ._init import new_parameter, place
from .module import Buffer, Module, array_of


class _BatchNorm(Module):
    """Batch normalisation per channel, with running statistics for eval and PyTorch's ``num_batches_tracked``."""

    _shapes = ()  # the accepted input ndims
    _shape_text = ""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, *, dtype="float32", device=None):
        layer = type(self).__name__
        num_features = positive_int(num_features, "num_features", layer)
        check_number(eps, f"{layer} eps", low=0.0, low_inclusive=False)
        check_number(momentum, f"{layer} momentum", low=0.0, high=1.0)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = new_parameter(numpy.ones(num_features), dtype, device) if affine else None
        self.bias = new_parameter(numpy.zeros(num_features), dtype, device) if affine else None
        placement = parse_spec(device)
        self.running_mean = Buffer(place(numpy.zeros(num_features), dtype, placement))
        self.running_var = Buffer(place(numpy.ones(num_features), dtype, placement))
        # An int64 scalar, as PyTorch's: counted, saved and loaded, never cast with the model's dtype.
        self.num_batches_tracked = Buffer(to_device(numpy.zeros((), dtype=numpy.int64), placement))

    def forward(self, x):
        xp = namespace_of(array_of(x), names=("x",))
        if x.ndim not in self._shapes:
            raise ShapeError(f"{type(self).__name__} expects {self._shape_text} input, got shape {tuple(x.shape)}"
                             + ndim_hint(x.ndim, max(self._shapes)))
        y, self.running_mean.data, self.running_var.data = F.batch_norm(
            x, self.running_mean.data, self.running_var.data, self.weight, self.bias,
            training=self.training, momentum=self.momentum, eps=self.eps)
        if self.training:
            # asarray: NumPy turns a 0-d array plus 1 into a scalar
            self.num_batches_tracked.data = xp.asarray(self.num_batches_tracked.data + 1)
        return y

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.weight is not None}"


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of (N, C) or (N, C, L) input per channel, with running statistics for eval."""

    _shapes, _shape_text = (2, 3), "(N, C) or (N, C, L)"


class BatchNorm2d(_BatchNorm):
    """Batch normalisation over (N, H, W) per channel, with running statistics for eval."""

    _shapes, _shape_text = (4,), "(N, C, H, W)"


class LayerNorm(Module):
    """Layer normalisation over the trailing ``normalized_shape`` axes, with a per-element affine map."""

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, *, dtype="float32", device=None):
        self.normalized_shape = _normalized_shape(normalized_shape, "LayerNorm")
        check_number(eps, "LayerNorm eps", low=0.0, low_inclusive=False)
        self.eps, self.elementwise_affine = eps, bool(elementwise_affine)
        shape = self.normalized_shape
        self.weight = new_parameter(numpy.ones(shape), dtype, device) if elementwise_affine else None
        self.bias = new_parameter(numpy.zeros(shape), dtype, device) if elementwise_affine else None

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.normalized_shape}, eps={self.eps}, elementwise_affine={self.elementwise_affine}"


class GroupNorm(Module):
    """Group normalisation: ``num_channels`` split into ``num_groups`` groups, each normalised per sample."""

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, *, dtype="float32", device=None):
        num_groups = positive_int(num_groups, "num_groups", "GroupNorm")
        num_channels = positive_int(num_channels, "num_channels", "GroupNorm")
        if num_channels % num_groups:
            raise ArgumentError(f"GroupNorm: num_channels={num_channels} must be divisible by "
                                f"num_groups={num_groups}")
        check_number(eps, "GroupNorm eps", low=0.0, low_inclusive=False)
        self.num_groups, self.num_channels, self.eps, self.affine = num_groups, num_channels, eps, bool(affine)
        self.weight = new_parameter(numpy.ones(num_channels), dtype, device) if affine else None
        self.bias = new_parameter(numpy.zeros(num_channels), dtype, device) if affine else None

    def forward(self, x):
        namespace_of(array_of(x), names=("x",))
        if x.ndim < 2 or x.shape[1] != self.num_channels:
            raise ShapeError(f"GroupNorm expects (N, {self.num_channels}, *) input (num_channels="
                             f"{self.num_channels}), got shape {tuple(x.shape)}")
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}"
