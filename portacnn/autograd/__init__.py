"""Define-by-run autograd over any array-API backend.

``Tensor`` wraps one backend array; ops on Tensors (``functional`` ops,
layers, arithmetic) record ``Function`` nodes, and ``loss.backward()`` runs
their backwards in reverse topological order, adding into the ``grad`` of
every leaf that requires one. See ``tape.py`` for the engine,
``layer_ops.py`` for the layer ops and ``arithmetic.py`` for the rest.
"""

from . import layer_ops as _layer_ops
from .arithmetic import cat
from .tape import Function, Tensor, enable_grad, is_grad_enabled, no_grad, tensor

_layer_ops.register()

__all__ = ["Tensor", "Function", "tensor", "cat", "no_grad", "enable_grad", "is_grad_enabled"]
