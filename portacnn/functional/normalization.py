"""Batch, layer and group normalisation."""

from __future__ import annotations

import math
import numbers

from .._arrays import count, namespace_of, reshape_sizes, writes_through_views
from .._checks import (
    check_grad,
    check_number,
    ndim_hint,
    require_float,
    require_same_dtype,
)
from .._dispatch import tape_aware
from ..errors import ArgumentError, ShapeError
from ._precision import narrow, restore, widen


def _batch_norm_setup(x, running_mean, running_var, weight, bias):
    xp = namespace_of(
        x, running_mean, running_var, weight, bias,
        names=("x", "running_mean", "running_var", "weight", "bias"),
    )
    require_float(xp, x, "batch_norm input x")
    if x.ndim not in (2, 3, 4):
        raise ShapeError(f"batch_norm input must be (N, C), (N, C, L) or (N, C, H, W), got shape {tuple(x.shape)}"
                         + ndim_hint(x.ndim, 4))
    if x.shape[0] == 0:
        raise ShapeError(f"batch_norm input x is an empty batch (shape {tuple(x.shape)}); pass at least one sample")
    channels = x.shape[1]
    for name, a in (("running_mean", running_mean), ("running_var", running_var), ("weight", weight), ("bias", bias)):
        if a is not None and tuple(a.shape) != (channels,):
            raise ShapeError(
                f"batch_norm: x has {channels} channels (shape {tuple(x.shape)}) but {name} has shape "
                f"{tuple(a.shape)}, expected ({channels},); BatchNorm1d/BatchNorm2d's num_features must equal the "
                "channels of its input")
        require_same_dtype(x, a, "x", name)
    axes = (0,) + tuple(range(2, x.ndim))
    broadcast = (1, channels) + (1,) * (x.ndim - 2)
    return xp, axes, broadcast


@tape_aware
def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """Batch normalisation over all axes but the channel axis 1.

    Returns ``(y, new_running_mean, new_running_var)``: running statistics are
    returned, never updated in place. In training the batch statistics
    normalise and the running ones move by ``momentum`` (the variance with
    Bessel's correction, as PyTorch does); in eval the running ones normalise.
    """
    xp, axes, broadcast = _batch_norm_setup(x, running_mean, running_var, weight, bias)
    check_number(momentum, "batch_norm momentum", low=0.0, high=1.0)
    check_number(eps, "batch_norm eps", low=0.0, low_inclusive=False)
    if narrow(xp, x):
        # float16/bfloat16: statistics and normalisation in float32, as PyTorch does; y and the running
        # statistics come back in their own dtype.
        y, new_mean, new_var = batch_norm(widen(xp, x), widen(xp, running_mean), widen(xp, running_var),
                                          widen(xp, weight), widen(xp, bias), training=training,
                                          momentum=momentum, eps=eps)
        return restore(xp, y, x.dtype), restore(xp, new_mean, x.dtype), restore(xp, new_var, x.dtype)
    if training:
        # The values per channel: a 0-d array where a lazy library does not know the batch size (and
        # then it cannot be checked here).
        values = count(xp, x, axes)
        if isinstance(values, int) and values < 2:
            raise ShapeError(f"batch_norm in training needs more than one value per channel, got input shape {tuple(x.shape)}")
        mean = xp.mean(x, axis=axes)
        centered = x - xp.reshape(mean, broadcast)
        var = xp.mean(centered * centered, axis=axes)  # the centred values serve the variance and y alike
        if running_mean is not None:
            running_mean = (1.0 - momentum) * running_mean + momentum * mean
        if running_var is not None:
            running_var = (1.0 - momentum) * running_var + momentum * var * (values / (values - 1))
    else:
        if running_mean is None or running_var is None:
            raise ArgumentError("batch_norm in eval mode needs running_mean and running_var (training=False); "
                                "pass them, or training=True to normalise with the batch statistics")
        var = running_var
        centered = x - xp.reshape(running_mean, broadcast)
    # One scale per channel, so the full-size arrays take one multiply (and one add for the bias).
    scale = 1.0 / xp.sqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    if writes_through_views(centered):  # centered is ours: scale (and shift) it where it lies
        centered *= xp.reshape(scale, broadcast)
        y = centered
        if bias is not None:
            y += xp.reshape(bias, broadcast)
    else:
        y = centered * xp.reshape(scale, broadcast)
        if bias is not None:
            y = y + xp.reshape(bias, broadcast)
    return y, running_mean, running_var


def batch_norm_backward(grad_out, x, running_mean, running_var, weight=None, *, training=False, eps=1e-5):
    """Gradients of ``batch_norm`` → ``(grad_x, grad_weight, grad_bias)``."""
    xp, axes, broadcast = _batch_norm_setup(x, running_mean, running_var, weight, None)
    check_grad(grad_out, x, x.shape, "batch_norm_backward")
    check_number(eps, "batch_norm eps", low=0.0, low_inclusive=False)
    if narrow(xp, x):
        grads = batch_norm_backward(widen(xp, grad_out), widen(xp, x), widen(xp, running_mean),
                                    widen(xp, running_var), widen(xp, weight), training=training, eps=eps)
        return tuple(restore(xp, g, x.dtype) for g in grads)
    if training:
        centered = x - xp.reshape(xp.mean(x, axis=axes), broadcast)
        var = xp.mean(centered * centered, axis=axes)
    else:
        if running_mean is None or running_var is None:
            raise ArgumentError("batch_norm_backward in eval mode needs running_mean and running_var "
                                "(training=False)")
        centered, var = x - xp.reshape(running_mean, broadcast), running_var
    # Per-channel sums first, then one pass over the full-size arrays. With x_hat = centered * inv_std and
    # g = grad_out: grad_x = weight * inv_std * (g - mean(g) - x_hat * mean(g * x_hat)).
    inv_std = 1.0 / xp.sqrt(var + eps)
    grad_bias = xp.sum(grad_out, axis=axes)
    grad_weight = xp.sum(grad_out * centered, axis=axes) * inv_std  # sum(g * x_hat)
    scale = inv_std if weight is None else inv_std * weight
    if not training:
        return grad_out * xp.reshape(scale, broadcast), grad_weight, grad_bias
    values = count(xp, x, axes)
    mean_grad, mean_grad_x_hat = grad_bias / values, grad_weight / values
    grad_x = grad_out - xp.reshape(mean_grad, broadcast)
    if writes_through_views(grad_x):  # grad_x and centered are ours: no further full-size temporaries
        grad_x *= xp.reshape(scale, broadcast)
        centered *= xp.reshape(scale * mean_grad_x_hat * inv_std, broadcast)
        grad_x -= centered
        return grad_x, grad_weight, grad_bias
    grad_x = grad_x * xp.reshape(scale, broadcast) - centered * xp.reshape(scale * mean_grad_x_hat * inv_std, broadcast)
    return grad_x, grad_weight, grad_bias


def _normalized_shape(normalized_shape, op):
    """``normalized_shape`` as a tuple of positive ints (an int means a 1-tuple, as in PyTorch)."""
    shape = (normalized_shape,) if isinstance(normalized_shape, numbers.Integral) else normalized_shape
    try:
        shape = tuple(shape)
    except TypeError:
        shape = None
    if (not shape or any(isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1 for n in shape)):
        raise ArgumentError(f"{op}: normalized_shape must be a positive int or a non-empty sequence of positive "
                            f"ints, got {normalized_shape!r}")
    return tuple(int(n) for n in shape)


def _layer_norm_setup(x, normalized_shape, weight, bias, eps, op):
    xp = namespace_of(x, weight, bias, names=("x", "weight", "bias"))
    require_float(xp, x, f"{op} input x")
    shape = _normalized_shape(normalized_shape, op)
    if x.ndim < len(shape) or tuple(x.shape[x.ndim - len(shape):]) != shape:
        raise ShapeError(f"{op}: normalized_shape {shape} must equal the trailing shape of the input, got input "
                         f"shape {tuple(x.shape)}; pass normalized_shape=x.shape[-k:] for the last k axes")
    for name, a in (("weight", weight), ("bias", bias)):
        if a is not None and tuple(a.shape) != shape:
            raise ShapeError(f"{op}: {name} has shape {tuple(a.shape)}, expected normalized_shape {shape}")
        require_same_dtype(x, a, "x", name)
    check_number(eps, f"{op} eps", low=0.0, low_inclusive=False)
    axes = tuple(range(x.ndim - len(shape), x.ndim))
    return xp, axes, tuple(range(x.ndim - len(shape)))


def _normalize(xp, x, axes, eps):
    """``(x_hat, inv_std)`` over ``axes``, statistics kept with size-1 axes for broadcasting."""
    mean = xp.mean(x, axis=axes, keepdims=True)
    inv_std = 1.0 / xp.sqrt(xp.var(x, axis=axes, keepdims=True) + eps)
    return (x - mean) * inv_std, inv_std


def _normalize_backward(xp, grad_x_hat, x_hat, inv_std, axes):
    """The input gradient of ``_normalize`` given the gradient of ``x_hat`` (biased variance, as forward)."""
    return inv_std * (grad_x_hat - xp.mean(grad_x_hat, axis=axes, keepdims=True)
                      - x_hat * xp.mean(grad_x_hat * x_hat, axis=axes, keepdims=True))


def _sum_over(xp, a, axes):
    return xp.sum(a, axis=axes) if axes else a


@tape_aware
def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """Layer normalisation over the trailing axes given by ``normalized_shape`` (PyTorch's ``layer_norm``).

    ``weight`` and ``bias``, when given, have shape ``normalized_shape``.
    """
    xp, axes, _ = _layer_norm_setup(x, normalized_shape, weight, bias, eps, "layer_norm")
    y, _ = _normalize(xp, x, axes, eps)
    if weight is not None:
        y = y * weight
    if bias is not None:
        y = y + bias
    return y


def layer_norm_backward(grad_out, x, normalized_shape, weight=None, eps=1e-5):
    """Gradients of ``layer_norm`` → ``(grad_x, grad_weight, grad_bias)``."""
    xp, axes, leading = _layer_norm_setup(x, normalized_shape, weight, None, eps, "layer_norm_backward")
    check_grad(grad_out, x, x.shape, "layer_norm_backward")
    x_hat, inv_std = _normalize(xp, x, axes, eps)
    grad_x_hat = grad_out if weight is None else grad_out * weight
    grad_x = _normalize_backward(xp, grad_x_hat, x_hat, inv_std, axes)
    return grad_x, _sum_over(xp, grad_out * x_hat, leading), _sum_over(xp, grad_out, leading)


def _group_norm_setup(x, num_groups, weight, bias, eps, op):
    xp = namespace_of(x, weight, bias, names=("x", "weight", "bias"))
    require_float(xp, x, f"{op} input x")
    if isinstance(num_groups, bool) or not isinstance(num_groups, numbers.Integral) or num_groups < 1:
        raise ArgumentError(f"{op}: num_groups must be a positive int, got {num_groups!r}")
    if x.ndim < 2:
        raise ShapeError(f"{op} input must be (N, C, *), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ShapeError(f"{op} input x is an empty batch (shape {tuple(x.shape)}); pass at least one sample")
    channels = x.shape[1]
    if channels % num_groups:
        raise ShapeError(f"{op}: the input's {channels} channels (shape {tuple(x.shape)}) are not divisible by "
                         f"num_groups={num_groups}")
    for name, a in (("weight", weight), ("bias", bias)):
        if a is not None and tuple(a.shape) != (channels,):
            raise ShapeError(f"{op}: x has {channels} channels (shape {tuple(x.shape)}) but {name} has shape "
                             f"{tuple(a.shape)}, expected ({channels},)")
        require_same_dtype(x, a, "x", name)
    check_number(eps, f"{op} eps", low=0.0, low_inclusive=False)
    broadcast = (1, channels) + (1,) * (x.ndim - 2)
    return xp, broadcast, (0,) + tuple(range(2, x.ndim))


def _split_groups_shape(x, num_groups: int) -> tuple:
    return (x.shape[0] if x.shape[0] is not None else -1, num_groups, x.shape[1] // num_groups, *x.shape[2:])


def _grouped(xp, x, num_groups: int):
    """``x`` as (N, num_groups, values per group): split the channels first, then merge, because a
    chunked array library cannot split and merge axes in one reshape."""
    return xp.reshape(xp.reshape(x, _split_groups_shape(x, num_groups)), _grouped_shape(x, num_groups))


def _ungrouped(xp, y, x, num_groups: int):
    """``y``, grouped like ``x`` by :func:`_grouped`, back in ``x``'s shape (again split, then merge)."""
    return xp.reshape(xp.reshape(y, _split_groups_shape(x, num_groups)), reshape_sizes(x.shape))


def _grouped_shape(x, num_groups: int) -> tuple:
    """(N, num_groups, values per group) for ``reshape``, with -1 for the one size a lazy library may
    not know: the batch's where it is unknown (None), else the group's."""
    if x.shape[0] is not None:
        return (x.shape[0], num_groups, -1)
    if None in x.shape[1:]:
        raise ShapeError(f"group_norm: an input of shape {tuple(x.shape)} (None: unknown) cannot be grouped; "
                         "only the batch size may be unknown")
    return (-1, num_groups, math.prod(x.shape[1:]) // num_groups)


@tape_aware
def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    """Group normalisation (PyTorch's ``group_norm``): the C channels of (N, C, *) input split into
    ``num_groups`` groups, each normalised over its channels and spatial axes, per sample.

    ``weight`` and ``bias``, when given, are per channel, shape (C,).
    """
    xp, broadcast, _ = _group_norm_setup(x, num_groups, weight, bias, eps, "group_norm")
    x_hat, _ = _normalize(xp, _grouped(xp, x, num_groups), (2,), eps)
    y = _ungrouped(xp, x_hat, x, num_groups)
    if weight is not None:
        y = y * xp.reshape(weight, broadcast)
    if bias is not None:
        y = y + xp.reshape(bias, broadcast)
    return y


def group_norm_backward(grad_out, x, num_groups, weight=None, eps=1e-5):
    """Gradients of ``group_norm`` → ``(grad_x, grad_weight, grad_bias)``."""
    xp, broadcast, axes = _group_norm_setup(x, num_groups, weight, None, eps, "group_norm_backward")
    check_grad(grad_out, x, x.shape, "group_norm_backward")
    x_hat, inv_std = _normalize(xp, _grouped(xp, x, num_groups), (2,), eps)
    grad_x_hat = grad_out if weight is None else grad_out * xp.reshape(weight, broadcast)
    grad_x = _normalize_backward(xp, _grouped(xp, grad_x_hat, num_groups), x_hat, inv_std, (2,))
    x_hat = _ungrouped(xp, x_hat, x, num_groups)
    return (_ungrouped(xp, grad_x, x, num_groups), xp.sum(grad_out * x_hat, axis=axes),
            xp.sum(grad_out, axis=axes))
