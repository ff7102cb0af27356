"""How ``functional`` ops take ``portacnn.Tensor`` arguments without importing the tape.

``functional`` marks each differentiable op with :func:`tape_aware`. Called
with plain arrays, the op runs as written and returns arrays (the parity suite
relies on that). Called with a ``Tensor`` among its arguments, the call goes
to the handler that ``portacnn.autograd`` registered under the op's name,
which records a node on the tape and returns a Tensor.
"""

from __future__ import annotations

import functools


class TapeValue:
    """Base class of ``portacnn.Tensor``: what ``tape_aware`` ops look for."""

    __slots__ = ()


#: op name → the tape's implementation, filled in by ``portacnn.autograd``.
HANDLERS: dict = {}


def tape_aware(op):
    """Route calls of ``op`` that involve a Tensor to ``HANDLERS[op.__name__]``."""
    name = op.__name__

    @functools.wraps(op)
    def op_or_node(*args, **kwargs):
        for value in args:
            if isinstance(value, TapeValue):
                return HANDLERS[name](*args, **kwargs)
        for value in kwargs.values():
            if isinstance(value, TapeValue):
                return HANDLERS[name](*args, **kwargs)
        return op(*args, **kwargs)

    op_or_node.array_op = op
    return op_or_node
