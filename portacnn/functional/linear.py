"""Fully connected layers."""

from __future__ import annotations

from .._arrays import namespace_of, with_sizes
from .._checks import check_grad, require_float, require_ndim, require_same_dtype
from .._dispatch import tape_aware
from ..errors import ShapeError


def _linear_setup(x, weight, bias):
    xp = namespace_of(x, weight, bias, names=("x", "weight", "bias"))
    require_float(xp, x, "linear input x")
    require_ndim(x, 2, "linear input x", "(N, in_features)")
    require_same_dtype(x, weight, "x", "weight")
    require_same_dtype(x, bias, "x", "bias")
    if weight.ndim != 2 or weight.shape[1] != x.shape[1]:
        raise ShapeError(
            f"linear: x has {x.shape[1]} features but weight has shape {tuple(weight.shape)} "
            f"(expected (out_features, {x.shape[1]}); x shape {tuple(x.shape)}); the layer's in_features must equal "
            "the features of its input: check the Flatten before it and the input image size"
        )
    if bias is not None and tuple(bias.shape) != (weight.shape[0],):
        raise ShapeError(f"linear bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    return xp


@tape_aware
def linear(x, weight, bias=None):
    """``x @ weight.T + bias`` for ``x`` of shape (N, in_features)."""
    xp = _linear_setup(x, weight, bias)
    out = xp.matmul(weight, x.T).T
    if None in x.shape:  # a lazy library may lose the sizes of a product with an unknown batch (ndonnx does)
        out = with_sizes(xp, out, (x.shape[0], weight.shape[0]))
    return out if bias is None else out + bias


def linear_backward(grad_out, x, weight):
    """Gradients of ``linear`` → ``(grad_x, grad_weight, grad_bias)``."""
    xp = _linear_setup(x, weight, None)
    check_grad(grad_out, x, (x.shape[0], weight.shape[0]), "linear_backward")
    if x.shape[0] == 1:
        # One sample: the weight gradient is an outer product, which NumPy's
        # matmul (inner size 1) computes about 3x slower than a broadcast product.
        grad_weight = grad_out.T * x
    else:
        grad_weight = xp.matmul(grad_out.T, x)
    grad_x = xp.matmul(grad_out, weight)
    if None in x.shape:  # as in linear
        grad_x, grad_weight = with_sizes(xp, grad_x, x.shape), with_sizes(xp, grad_weight, weight.shape)
    return grad_x, grad_weight, xp.sum(grad_out, axis=0)
