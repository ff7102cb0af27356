"""Reshaping layers."""

from __future__ import annotations

import math

from .._arrays import namespace_of
from ..autograd.tape import as_input
from ..errors import ShapeError
from .module import Module, array_of


class Flatten(Module):
    """(N, C, H, W) → (N, C*H*W)."""

    def forward(self, x):
        namespace_of(array_of(x), names=("x",))
        if x.ndim < 2:
            raise ShapeError(f"Flatten expects a batch of at least 2-D shape (N, ...), got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ShapeError(f"Flatten input is an empty batch (shape {tuple(x.shape)}); pass at least one sample")
        # -1 for the batch: the one size a lazy library may not know yet.
        return as_input(x).reshape(-1, math.prod(x.shape[1:]))
