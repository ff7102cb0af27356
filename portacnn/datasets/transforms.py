"""Host-side augmentation and normalization of image batches (NumPy, channel-first).

The standard CIFAR recipe, per batch: :func:`augment` (a random 32x32 crop
of the image zero-padded by 4 pixels, then a random horizontal flip, as
torchvision's ``RandomCrop(32, padding=4)`` and ``RandomHorizontalFlip()``),
then :func:`normalize` with the dataset's per-channel mean and std::

    rng = np.random.default_rng(seed)
    x = normalize(augment(images[batch], rng), info.mean, info.std)

Every function takes ``(N, C, H, W)`` arrays, returns a new array and never
modifies its input; the random ones draw everything from the
``numpy.random.Generator`` they are given, so the same seed gives the same
batch. Crop and flip before normalizing: the padding is zeros, which is a
black pixel only before normalization.
"""

from __future__ import annotations

import numbers

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from ..errors import ArgumentError, ShapeError

__all__ = ["augment", "normalize", "random_crop", "random_horizontal_flip"]


def random_crop(images: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-pad each image by ``padding`` pixels on every side, then crop it back to (H, W) at a random place.

    The crop's top-left corner is drawn uniformly from the ``(2 * padding + 1) ** 2``
    positions, independently per image, as torchvision's ``RandomCrop(size, padding=padding)``.
    """
    images = _check_batch(images, "random_crop")
    if not isinstance(padding, numbers.Integral) or isinstance(padding, bool) or padding < 0:
        raise ArgumentError(f"random_crop: padding must be a non-negative int, got {padding!r}")
    n, _, height, width = images.shape
    tops = rng.integers(0, 2 * padding + 1, size=n)
    lefts = rng.integers(0, 2 * padding + 1, size=n)
    padded = np.pad(images, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    # windows[i, c, y, x] is the (H, W) crop of image i, channel c, whose corner is at (y, x); picking
    # one (y, x) per image is a single gather, without a Python loop over the batch.
    windows = sliding_window_view(padded, (height, width), axis=(2, 3))
    return windows[np.arange(n), :, tops, lefts]


def random_horizontal_flip(images: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """Mirror each image left-right with probability ``p`` (drawn independently per image)."""
    images = _check_batch(images, "random_horizontal_flip")
    if isinstance(p, bool) or not isinstance(p, numbers.Real) or not 0.0 <= p <= 1.0:
        raise ArgumentError(f"random_horizontal_flip: p must be a probability in [0, 1], got {p!r}")
    flip = rng.random(len(images)) < p
    out = images.copy()
    out[flip] = images[flip, :, :, ::-1]
    return out


def augment(images: np.ndarray, rng: np.random.Generator, padding: int = 4, flip: bool = True) -> np.ndarray:
    """The standard training augmentation: :func:`random_crop` with ``padding``, then (if ``flip``)
    :func:`random_horizontal_flip` with p=0.5."""
    out = random_crop(images, padding, rng)
    return random_horizontal_flip(out, rng) if flip else out


def normalize(images: np.ndarray, mean, std) -> np.ndarray:
    """``(images - mean) / std`` per channel, as a new array of the images' (floating) dtype.

    ``images`` are floating point in [0, 1] with channels on axis -3
    (``(N, C, H, W)`` or one ``(C, H, W)`` image); ``mean`` and ``std`` have
    one number per channel (``DatasetInfo.mean`` / ``.std``).
    """
    images = np.asarray(images)
    if images.ndim not in (3, 4):
        raise ShapeError(f"normalize: images must be (N, C, H, W) or (C, H, W), got shape {images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        raise ArgumentError(
            f"normalize: images must be floating point in [0, 1], got {images.dtype}; load them with "
            "dtype='float32' (or divide by 255) first")
    channels = images.shape[-3]
    mean = np.asarray(mean, dtype=images.dtype).reshape(-1)
    std = np.asarray(std, dtype=images.dtype).reshape(-1)
    if mean.shape != (channels,) or std.shape != (channels,):
        raise ShapeError(f"normalize: mean and std need one value per channel ({channels}), "
                         f"got {mean.size} and {std.size}")
    if np.any(std <= 0):
        raise ArgumentError(f"normalize: std must be positive, got {tuple(std.tolist())}")
    return (images - mean[:, None, None]) / std[:, None, None]


def _check_batch(images, op: str) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim != 4:
        raise ShapeError(f"{op}: images must be a (N, C, H, W) batch, got shape {images.shape}")
    return images
