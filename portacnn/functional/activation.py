"""Elementwise activations, softmax and log-softmax."""

from __future__ import annotations

from .._arrays import device_of, namespace_of
from .._checks import as_int, check_grad, require_float
from .._dispatch import tape_aware
from ..errors import ArgumentError, ArgumentTypeError, ShapeError


def _elementwise_setup(x, name: str, grad_out=None):
    xp = namespace_of(x, grad_out, names=("x", "grad_out"))
    require_float(xp, x, f"{name} input x")
    if grad_out is not None:
        check_grad(grad_out, x, x.shape, name)
    return xp


def _check_axis(x, axis, name: str) -> None:
    """``axis`` must name an existing, non-empty axis of ``x`` (softmax and log-softmax reduce over it)."""
    try:
        axis = as_int(axis)
    except TypeError:
        raise ArgumentTypeError(f"{name}: axis must be an int, got {axis!r}") from None
    if not -x.ndim <= axis < x.ndim:
        raise ArgumentError(
            f"{name}: axis {axis} is out of range for an input of shape {tuple(x.shape)} ({x.ndim}-D); "
            "for logits of shape (N, num_classes) use axis=-1 (or 1)")
    if x.shape[axis] == 0:
        raise ShapeError(f"{name}: axis {axis} of the input (shape {tuple(x.shape)}) is empty; there is nothing "
                         "to normalise over")


# Masks are applied by multiplying with a 0/1 array rather than with
# ``where``: NumPy's ``where`` is about 10x slower on the unpredictable masks
# activations produce.


@tape_aware
def relu(x):
    xp = _elementwise_setup(x, "relu")
    # A 0-d zero broadcasts: a full zeros_like array would cost an allocation
    # and a pass over memory, several times the maximum itself in NumPy.
    return xp.maximum(x, xp.zeros((), dtype=x.dtype, device=device_of(x)))


def relu_backward(grad_out, x):
    xp = _elementwise_setup(x, "relu_backward", grad_out)
    return grad_out * xp.astype(x > 0, grad_out.dtype)


@tape_aware
def sigmoid(x):
    """Logistic function, finite for any input: exp is only taken of −|x|."""
    xp = _elementwise_setup(x, "sigmoid")
    e = xp.exp(-xp.abs(x))
    return xp.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def sigmoid_backward(grad_out, x):
    _elementwise_setup(x, "sigmoid_backward", grad_out)
    s = sigmoid(x)
    return grad_out * s * (1.0 - s)


@tape_aware
def tanh(x):
    xp = _elementwise_setup(x, "tanh")
    return xp.tanh(x)


def tanh_backward(grad_out, x):
    xp = _elementwise_setup(x, "tanh_backward", grad_out)
    t = xp.tanh(x)
    return grad_out * (1.0 - t * t)


@tape_aware
def log_softmax(x, axis: int = -1):
    """``x - logsumexp(x)`` with the maximum subtracted first, so large logits stay finite."""
    xp = _elementwise_setup(x, "log_softmax")
    _check_axis(x, axis, "log_softmax")
    shifted = x - xp.max(x, axis=axis, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


def log_softmax_backward(grad_out, x, axis: int = -1):
    xp = _elementwise_setup(x, "log_softmax_backward", grad_out)
    _check_axis(x, axis, "log_softmax_backward")
    return grad_out - xp.exp(log_softmax(x, axis)) * xp.sum(grad_out, axis=axis, keepdims=True)


@tape_aware
def softmax(x, axis: int = -1):
    xp = _elementwise_setup(x, "softmax")
    _check_axis(x, axis, "softmax")
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


def softmax_backward(grad_out, x, axis: int = -1):
    xp = _elementwise_setup(x, "softmax_backward", grad_out)
    _check_axis(x, axis, "softmax_backward")
    s = softmax(x, axis)
    return s * (grad_out - xp.sum(grad_out * s, axis=axis, keepdims=True))
