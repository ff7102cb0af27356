"""Gradient clipping, as ``torch.nn.utils``: call it between ``loss.backward()`` and ``optimizer.step()``.

Both functions rebind ``p.grad`` to a new array instead of scaling it in
place (JAX arrays cannot be written, and a gradient array may be shared),
and never read an array's value in Python, so a training step that clips
still traces under ``jax.jit``; only ``error_if_nonfinite=True`` has to read
the norm, and so cannot be traced.
"""

from __future__ import annotations

import math

from .._arrays import device_of, namespace_of
from .._checks import check_flag, check_number
from ..errors import ArgumentError, ArgumentTypeError, NonFiniteError

__all__ = ["clip_grad_norm_", "clip_grad_value_"]


def _parameter_list(parameters, function: str) -> list:
    from ..autograd import Tensor
    from .module import Module

    if isinstance(parameters, Module):
        raise ArgumentTypeError(f"{function} takes the model's parameters, not the model: pass model.parameters()")
    if isinstance(parameters, Tensor):
        return [parameters]
    try:
        parameters = list(parameters)
    except TypeError:
        raise ArgumentTypeError(f"{function} takes a Parameter or a list of them (model.parameters()), "
                                f"got {type(parameters).__name__}") from None
    for index, parameter in enumerate(parameters):
        if not isinstance(parameter, Tensor):
            raise ArgumentTypeError(f"{function} takes Parameters (model.parameters()), item {index} is a "
                                    f"{type(parameter).__name__}")
    if not parameters:
        # PyTorch returns 0 here; an empty list is almost always an exhausted generator or a wrong attribute.
        raise ArgumentError(f"{function} got no parameters; pass model.parameters()")
    return parameters


def _vector_norm(xp, x, norm_type: float):
    """The ``norm_type``-norm of all of ``x``'s elements, as a 0-d array (the standard's core functions only)."""
    if math.prod(x.shape) == 0:
        return xp.zeros((), dtype=x.dtype, device=device_of(x))
    if norm_type == 2:
        return xp.sqrt(xp.sum(x * x))
    magnitude = xp.abs(x)
    if norm_type == math.inf:
        return xp.max(magnitude)
    if norm_type == 1:
        return xp.sum(magnitude)
    return xp.sum(magnitude ** norm_type) ** (1.0 / norm_type)


def clip_grad_norm_(parameters, max_norm: float, norm_type: float = 2.0, error_if_nonfinite: bool = False):
    """Scale the gradients so that their joint ``norm_type``-norm is at most ``max_norm``; return that norm
    before clipping, as a 0-d array of the gradients' backend (as PyTorch returns a tensor).

    The norm is taken over all gradients together, as if concatenated;
    ``norm_type`` is a positive number or ``math.inf`` (the largest
    magnitude). Gradients are multiplied by ``min(1, max_norm / (norm +
    1e-6))``, PyTorch's exact formula, so they are rebound even when
    nothing needed clipping. Parameters without a gradient are skipped.
    """
    parameters = _parameter_list(parameters, "clip_grad_norm_")
    max_norm = check_number(max_norm, "clip_grad_norm_ max_norm", low=0.0)
    norm_type = check_number(norm_type, "clip_grad_norm_ norm_type", low=0.0, low_inclusive=False,
                             hint=" (a positive number, or math.inf for the largest magnitude)")
    check_flag(error_if_nonfinite, "clip_grad_norm_ error_if_nonfinite")
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        data = parameters[0].data
        return namespace_of(data).zeros((), dtype=data.dtype, device=device_of(data))
    xp = namespace_of(*grads)
    total = _vector_norm(xp, xp.stack([_vector_norm(xp, g, norm_type) for g in grads]), norm_type)
    total = xp.asarray(total)  # NumPy's reductions give a scalar; PyTorch gives a 0-d tensor
    if error_if_nonfinite and not bool(xp.all(xp.isfinite(total))):
        raise NonFiniteError(
            f"the total norm of order {norm_type:g} of the gradients is {float(total)}, so they cannot be clipped; "
            "the loss or a gradient overflowed (try a lower learning rate), or pass error_if_nonfinite=False to "
            "scale by the non-finite norm anyway")
    scale = max_norm / (total + 1e-6)
    scale = xp.minimum(scale, xp.ones_like(scale))
    for p in parameters:
        if p.grad is not None:
            p.grad = p.grad * (scale if scale.dtype == p.grad.dtype else xp.astype(scale, p.grad.dtype))
    return total


def clip_grad_value_(parameters, clip_value: float) -> None:
    """Clip every gradient element into ``[-clip_value, clip_value]``; parameters without a gradient are skipped."""
    parameters = _parameter_list(parameters, "clip_grad_value_")
    clip_value = check_number(clip_value, "clip_grad_value_ clip_value", low=0.0)
    for p in parameters:
        if p.grad is not None:
            p.grad = namespace_of(p.grad).clip(p.grad, min=-clip_value, max=clip_value)
