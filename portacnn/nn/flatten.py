"""Reshaping layers."""

from __future__ import annotations

import math

from .._arrays import namespace_of
from .._checks import as_int
from ..autograd.tape import as_input
from ..errors import ArgumentError, ArgumentTypeError, ShapeError
from .module import Module, array_of


def _dim(value, name: str) -> int:
    try:
        return as_int(value)
    except TypeError:
        raise ArgumentTypeError(f"Flatten: {name} must be an int (an axis, negative counts from the end), "
                                f"got {value!r}") from None


class Flatten(Module):
    """Axes ``start_dim`` to ``end_dim`` (inclusive) into one, as PyTorch's: by default (N, C, H, W) → (N, C*H*W)."""

    def __init__(self, start_dim: int = 1, end_dim: int = -1):
        self.start_dim, self.end_dim = _dim(start_dim, "start_dim"), _dim(end_dim, "end_dim")

    def forward(self, x):
        namespace_of(array_of(x), names=("x",))
        if self.start_dim == 1 and self.end_dim == -1:
            if x.ndim < 2:
                raise ShapeError(
                    f"Flatten expects a batch of at least 2-D shape (N, ...), got shape {tuple(x.shape)}")
            if x.shape[0] == 0:
                raise ShapeError(
                    f"Flatten input is an empty batch (shape {tuple(x.shape)}); pass at least one sample")
            # -1 for the batch: the one size a lazy library may not know yet.
            return as_input(x).reshape(-1, math.prod(x.shape[1:]))
        shape = tuple(x.shape) or (1,)  # PyTorch flattens a 0-d input to shape (1,)
        start, end = (self._axis(dim, name, len(shape), x.shape)
                      for dim, name in ((self.start_dim, "start_dim"), (self.end_dim, "end_dim")))
        if start > end:
            raise ArgumentError(
                f"Flatten: start_dim {self.start_dim} comes after end_dim {self.end_dim} for a {x.ndim}-D input "
                f"(shape {tuple(x.shape)}); start_dim must name the first axis to flatten, end_dim the last")
        return as_input(x).reshape(*shape[:start], math.prod(shape[start:end + 1]), *shape[end + 1:])

    @staticmethod
    def _axis(dim: int, name: str, ndim: int, shape) -> int:
        if not -ndim <= dim < ndim:
            raise ShapeError(f"Flatten: {name}={dim} is out of range for an input of shape {tuple(shape)} "
                             f"({len(shape)}-D); valid axes are {-ndim} to {ndim - 1}")
        return dim % ndim

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"
