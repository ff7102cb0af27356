"""Dropout with host-drawn keep-masks, identical on every backend."""

from __future__ import annotations

from .._arrays import namespace_of
from .._checks import check_probability, require_float
from .._dispatch import tape_aware
from .._host_random import host_generator
from ..errors import ArgumentError, DTypeError, ShapeError


def dropout_mask(shape, p: float, rng):
    """A host keep-mask (NumPy bool array, True = keep) drawn from ``rng``.

    ``rng`` is a ``numpy.random.Generator`` or an int seed. Drawing on the
    host makes the mask, and so the result, identical on every backend.
    """
    p = check_probability(p, "dropout probability p")
    return host_generator(rng, "dropout rng").random(tuple(shape)) >= p


def _device_mask(xp, mask, like):
    if not (hasattr(mask, "dtype") and hasattr(mask, "shape")):
        raise DTypeError(f"dropout mask must be a boolean array, got {type(mask).__name__}")
    if "bool" not in str(mask.dtype):
        raise DTypeError(f"dropout mask must be a boolean keep-mask (True = keep), got dtype {mask.dtype}")
    if tuple(mask.shape) != tuple(like.shape):
        raise ShapeError(f"dropout mask shape {tuple(mask.shape)} differs from x shape {tuple(like.shape)}")
    from ..backends import is_host_array, placement_of, to_device

    if is_host_array(mask):
        # A host mask (from dropout_mask) is moved to the input's device here,
        # by that backend's own from_host (to_device's host path), so every
        # backend, a plugged-in one too, gets the same mask with no hook of
        # its own; a mask on any other device must already be where x is.
        mask = to_device(mask, placement_of(like))
    namespace_of(like, mask, names=("x", "mask"))
    return mask


@tape_aware
def dropout(x, p: float = 0.5, *, mask=None, rng=None, training: bool = True):
    """Zero elements where ``mask`` is False and scale the rest by 1/(1-p).

    Give either ``mask`` (a boolean keep-mask, e.g. from ``dropout_mask``) or
    ``rng`` (a host ``numpy.random.Generator`` or int seed to draw one from).
    In eval mode (``training=False``) or with p=0, ``x`` is returned unchanged.
    """
    xp = namespace_of(x, names=("x",))
    require_float(xp, x, "dropout input x")
    p = check_probability(p, "dropout probability p")
    if not training or p == 0.0:
        return x
    if mask is None:
        if rng is None:
            raise ArgumentError(
                "dropout needs a mask or an rng (numpy.random.Generator or int seed) to be reproducible")
        mask = dropout_mask(x.shape, p, rng)
    mask = _device_mask(xp, mask, x)
    return x * (xp.astype(mask, x.dtype) / (1.0 - p))


def dropout_backward(grad_out, mask, p: float = 0.5):
    """Gradient of ``dropout`` with the same keep-mask."""
    xp = namespace_of(grad_out, names=("grad_out",))
    require_float(xp, grad_out, "dropout_backward grad_out")
    p = check_probability(p, "dropout probability p")
    mask = _device_mask(xp, mask, grad_out)
    return grad_out * (xp.astype(mask, grad_out.dtype) / (1.0 - p))
