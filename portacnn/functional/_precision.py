"""float32 accumulation for half-precision inputs, where PyTorch does it.

PyTorch computes softmax, log-softmax, cross-entropy and the batch-norm
statistics of float16 and bfloat16 inputs in float32 and rounds the result
back to the input's dtype. ``narrow`` is the test (one dtype comparison on the
float32 and float64 paths, which it leaves untouched); ``widen`` casts to
float32.
"""

from __future__ import annotations


def narrow(xp, x) -> bool:
    """Whether ``x`` (a real floating array) has a dtype narrower than float32 (float16, bfloat16)."""
    dtype = x.dtype
    return not (dtype == xp.float32 or dtype == xp.float64)


def widen(xp, x):
    """``x`` as float32 (a new array; ``None`` stays ``None``)."""
    return None if x is None else xp.astype(x, xp.float32)


def restore(xp, x, dtype):
    """``x`` cast back to ``dtype`` (``None`` stays ``None``)."""
    return None if x is None else xp.astype(x, dtype)
