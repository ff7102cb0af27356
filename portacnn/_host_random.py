"""Host-side randomness. Every random draw (weight init, dropout masks) comes
from a NumPy ``Generator`` on the host, so one seed gives the same numbers on
every backend; the math itself never imports NumPy."""

from __future__ import annotations

import numpy

from .errors import ArgumentTypeError


def host_generator(rng, name: str = "rng") -> numpy.random.Generator:
    """``rng`` itself if it is a ``numpy.random.Generator``, else one seeded with it
    (a non-negative int, or None for fresh entropy)."""
    if isinstance(rng, numpy.random.Generator):
        return rng
    if not isinstance(rng, bool):
        try:
            return numpy.random.default_rng(rng)
        except (TypeError, ValueError):
            pass
    raise ArgumentTypeError(
        f"{name} must be a numpy.random.Generator, a non-negative int seed or None, got {rng!r} "
        f"({type(rng).__name__})")
