"""Elementwise activations, softmax and log-softmax."""

from __future__ import annotations

import math

from .._arrays import device_of, namespace_of
from .._checks import as_int, check_choice, check_finite, check_grad, require_float
from .._dispatch import tape_aware
from ..errors import ArgumentError, ArgumentTypeError, ShapeError
from ._erf import erfc
from ._precision import narrow, restore, widen


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
    if narrow(xp, x):  # float16/bfloat16: computed in float32, as PyTorch does
        return restore(xp, log_softmax(widen(xp, x), axis), x.dtype)
    shifted = x - xp.max(x, axis=axis, keepdims=True)
    return shifted - xp.log(xp.sum(xp.exp(shifted), axis=axis, keepdims=True))


def log_softmax_backward(grad_out, x, axis: int = -1):
    xp = _elementwise_setup(x, "log_softmax_backward", grad_out)
    _check_axis(x, axis, "log_softmax_backward")
    if narrow(xp, x):
        return restore(xp, log_softmax_backward(widen(xp, grad_out), widen(xp, x), axis), x.dtype)
    return grad_out - xp.exp(log_softmax(x, axis)) * xp.sum(grad_out, axis=axis, keepdims=True)


@tape_aware
def softmax(x, axis: int = -1):
    xp = _elementwise_setup(x, "softmax")
    _check_axis(x, axis, "softmax")
    if narrow(xp, x):  # float16/bfloat16: computed in float32, as PyTorch does
        return restore(xp, softmax(widen(xp, x), axis), x.dtype)
    e = xp.exp(x - xp.max(x, axis=axis, keepdims=True))
    return e / xp.sum(e, axis=axis, keepdims=True)


def softmax_backward(grad_out, x, axis: int = -1):
    xp = _elementwise_setup(x, "softmax_backward", grad_out)
    _check_axis(x, axis, "softmax_backward")
    if narrow(xp, x):
        return restore(xp, softmax_backward(widen(xp, grad_out), widen(xp, x), axis), x.dtype)
    s = softmax(x, axis)
    return s * (grad_out - xp.sum(grad_out * s, axis=axis, keepdims=True))


def _scalar(xp, x, value):
    """A 0-d array of ``x``'s dtype and device: ``where`` and ``maximum`` take no Python numbers everywhere."""
    return xp.full((), value, dtype=x.dtype, device=device_of(x))


@tape_aware
def leaky_relu(x, negative_slope: float = 0.01):
    xp = _elementwise_setup(x, "leaky_relu")
    slope = check_finite(negative_slope, "leaky_relu negative_slope")
    return xp.where(x > 0, x, x * slope)


def leaky_relu_backward(grad_out, x, negative_slope: float = 0.01):
    xp = _elementwise_setup(x, "leaky_relu_backward", grad_out)
    slope = check_finite(negative_slope, "leaky_relu_backward negative_slope")
    return xp.where(x > 0, grad_out, grad_out * slope)


@tape_aware
def elu(x, alpha: float = 1.0):
    """expm1 keeps small negative inputs accurate; it only sees x <= 0, so large inputs cannot overflow."""
    xp = _elementwise_setup(x, "elu")
    alpha = check_finite(alpha, "elu alpha")
    return xp.where(x > 0, x, alpha * xp.expm1(xp.minimum(x, _scalar(xp, x, 0.0))))


def elu_backward(grad_out, x, alpha: float = 1.0):
    xp = _elementwise_setup(x, "elu_backward", grad_out)
    alpha = check_finite(alpha, "elu_backward alpha")
    return xp.where(x > 0, grad_out, grad_out * (alpha * xp.exp(xp.minimum(x, _scalar(xp, x, 0.0)))))


_GELU_APPROXIMATIONS = ("none", "tanh")
_SQRT_HALF = math.sqrt(0.5)
_ONE_OVER_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_TANH_SCALE, _TANH_CUBIC = math.sqrt(2.0 / math.pi), 0.044715
# Beyond |x| = 40 the Gaussian density and the tanh form's sigmoid'(2u) are 0
# (or 1) to the last bit in every float type; clipping there keeps x^2 and x^3
# from overflowing into inf * 0 = nan at huge or infinite inputs.
_GELU_CLIP = 40.0


def _gelu_tanh_gate(xp, x):
    """(1 + tanh(u)) / 2 with u = sqrt(2/pi) (x + 0.044715 x^3), written as sigmoid(2u).

    1 + tanh(u) cancels to rounding noise for negative x; sigmoid(2u) is the
    same number without the cancellation.
    """
    clipped = xp.clip(x, min=-_GELU_CLIP, max=_GELU_CLIP)
    u = _TANH_SCALE * (clipped + _TANH_CUBIC * clipped * clipped * clipped)
    return clipped, u, sigmoid(2.0 * u)


@tape_aware
def gelu(x, *, approximate: str = "none"):
    """x Phi(x), Phi the standard normal CDF; ``approximate='tanh'`` is PyTorch's tanh formula.

    Phi(x) = erfc(-x / sqrt 2) / 2 rather than (1 + erf(x / sqrt 2)) / 2, so
    the output keeps its relative accuracy for negative x.
    """
    xp = _elementwise_setup(x, "gelu")
    if check_choice(approximate, "gelu approximate", _GELU_APPROXIMATIONS) == "tanh":
        return x * _gelu_tanh_gate(xp, x)[2]
    return x * (0.5 * erfc(xp, -_SQRT_HALF * x))


def gelu_backward(grad_out, x, *, approximate: str = "none"):
    xp = _elementwise_setup(x, "gelu_backward", grad_out)
    if check_choice(approximate, "gelu_backward approximate", _GELU_APPROXIMATIONS) == "tanh":
        clipped, u, gate = _gelu_tanh_gate(xp, x)
        inner = _TANH_SCALE * (1.0 + 3.0 * _TANH_CUBIC * clipped * clipped)
        return grad_out * (gate + clipped * (2.0 * gate * sigmoid(-2.0 * u)) * inner)
    clipped = xp.clip(x, min=-_GELU_CLIP, max=_GELU_CLIP)
    density = _ONE_OVER_SQRT_2PI * xp.exp(-0.5 * clipped * clipped)
    return grad_out * (0.5 * erfc(xp, -_SQRT_HALF * x) + clipped * density)


@tape_aware
def silu(x):
    _elementwise_setup(x, "silu")
    return x * sigmoid(x)


def silu_backward(grad_out, x):
    _elementwise_setup(x, "silu_backward", grad_out)
    s = sigmoid(x)
    return grad_out * (s * (1.0 + x * (1.0 - s)))


@tape_aware
def hardswish(x):
    xp = _elementwise_setup(x, "hardswish")
    return x * xp.clip(x + 3.0, min=0.0, max=6.0) / 6.0


def hardswish_backward(grad_out, x):
    """PyTorch's one-sided choices at the kinks: slope 0 below -3, x/3 + 1/2 on [-3, 3], 1 above."""
    xp = _elementwise_setup(x, "hardswish_backward", grad_out)
    slope = xp.where(x < -3.0, _scalar(xp, x, 0.0), xp.where(x <= 3.0, x / 3.0 + 0.5, _scalar(xp, x, 1.0)))
    return grad_out * slope
