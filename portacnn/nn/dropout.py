"""Dropout."""

from __future__ import annotations

from .. import functional as F
from .._arrays import namespace_of
from .._checks import check_probability, require_float
from .._host_random import host_generator
from .module import Module, array_of


class Dropout(Module):
    """Zeroes each element with probability ``p`` in training, scaling the rest by 1/(1-p).

    Masks are drawn on the host from this layer's own seeded generator, so a
    seed gives the same masks, and the same training run, on every backend.
    """

    def __init__(self, p=0.5, *, rng=None):
        check_probability(p, "Dropout probability p")
        self.p = p
        self.rng = host_generator(rng)

    def forward(self, x):
        require_float(namespace_of(array_of(x), names=("x",)), array_of(x), "Dropout input x")
        if not self.training or self.p == 0.0:
            return x
        return F.dropout(x, self.p, mask=F.dropout_mask(x.shape, self.p, self.rng))

    def extra_repr(self):
        return f"p={self.p}"
