"""Batch normalisation."""

from __future__ import annotations

import math

from .._arrays import namespace_of
from .._checks import check_grad, check_number, ndim_hint, require_float, require_same_dtype
from .._dispatch import tape_aware
from ..errors import ArgumentError, ShapeError


def _batch_norm_setup(x, running_mean, running_var, weight, bias):
    xp = namespace_of(
        x, running_mean, running_var, weight, bias,
        names=("x", "running_mean", "running_var", "weight", "bias"),
    )
    require_float(xp, x, "batch_norm input x")
    if x.ndim not in (2, 4):
        raise ShapeError(f"batch_norm input must be (N, C) or (N, C, H, W), got shape {tuple(x.shape)}"
                         + ndim_hint(x.ndim, 4))
    if x.shape[0] == 0:
        raise ShapeError(f"batch_norm input x is an empty batch (shape {tuple(x.shape)}); pass at least one sample")
    channels = x.shape[1]
    for name, a in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if a is not None and tuple(a.shape) != (channels,):
            raise ShapeError(
                f"batch_norm: x has {channels} channels (shape {tuple(x.shape)}) but {name} has shape "
                f"{tuple(a.shape)}, expected ({channels},); BatchNorm2d's num_features must equal the channels "
                "of its input")
        require_same_dtype(x, a, "x", name)
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    broadcast = (1, channels) if x.ndim == 2 else (1, channels, 1, 1)
    count = math.prod(x.shape[i] for i in axes)
    return xp, axes, broadcast, count


@tape_aware
def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Batch normalisation over all axes but the channel axis 1.

    Returns ``(y, new_running_mean, new_running_var)``: running statistics are
    returned, never updated in place. In training the batch statistics
    normalise and the running ones move by ``momentum`` (the variance with
    Bessel's correction, as PyTorch does); in eval the running ones normalise.
    """
    xp, axes, broadcast, count = _batch_norm_setup(x, running_mean, running_var, weight, bias)
    check_number(momentum, "batch_norm momentum", low=0.0, high=1.0)
    check_number(eps, "batch_norm eps", low=0.0, low_inclusive=False)
    if training:
        if count < 2:
            raise ShapeError(f"batch_norm in training needs more than one value per channel, got input shape {tuple(x.shape)}")
        mean = xp.mean(x, axis=axes)
        var = xp.var(x, axis=axes)
        if running_mean is not None:
            running_mean = (1.0 - momentum) * running_mean + momentum * mean
        if running_var is not None:
            running_var = (1.0 - momentum) * running_var + momentum * var * (count / (count - 1))
    else:
        if running_mean is None or running_var is None:
            raise ArgumentError("batch_norm in eval mode needs running_mean and running_var (training=False); "
                                "pass them, or training=True to normalise with the batch statistics")
        mean, var = running_mean, running_var
    y = (x - xp.reshape(mean, broadcast)) / xp.sqrt(xp.reshape(var, broadcast) + eps)
    if weight is not None:
        y = y * xp.reshape(weight, broadcast)
    if bias is not None:
        y = y + xp.reshape(bias, broadcast)
    return y, running_mean, running_var


def batch_norm_backward(grad_out, x, running_mean, running_var, weight=None, *, training=False, eps=1e-5):
    """Gradients of ``batch_norm`` → ``(grad_x, grad_weight, grad_bias)``."""
    xp, axes, broadcast, count = _batch_norm_setup(x, running_mean, running_var, weight, None)
    check_grad(grad_out, x, x.shape, "batch_norm_backward")
    check_number(eps, "batch_norm eps", low=0.0, low_inclusive=False)
    if training:
        mean, var = xp.mean(x, axis=axes), xp.var(x, axis=axes)
    else:
        if running_mean is None or running_var is None:
            raise ArgumentError("batch_norm_backward in eval mode needs running_mean and running_var "
                                "(training=False)")
        mean, var = running_mean, running_var
    inv_std = xp.reshape(1.0 / xp.sqrt(var + eps), broadcast)
    x_hat = (x - xp.reshape(mean, broadcast)) * inv_std
    grad_bias = xp.sum(grad_out, axis=axes)
    grad_weight = xp.sum(grad_out * x_hat, axis=axes)
    grad_x_hat = grad_out if weight is None else grad_out * xp.reshape(weight, broadcast)
    if not training:
        return grad_x_hat * inv_std, grad_weight, grad_bias
    sum_grad = xp.reshape(xp.sum(grad_x_hat, axis=axes), broadcast)
    sum_grad_x_hat = xp.reshape(xp.sum(grad_x_hat * x_hat, axis=axes), broadcast)
    grad_x = inv_std / count * (count * grad_x_hat - sum_grad - x_hat * sum_grad_x_hat)
    return grad_x, grad_weight, grad_bias
