"""A small VGG (Simonyan and Zisserman, 2014) with batch norm, sized for 28x28 and 32x32 images."""

from __future__ import annotations

from .._checks import as_int
from ..errors import ArgumentError, ArgumentTypeError
from ..nn import BatchNorm2d, Conv2d, Linear, MaxPool2d, ReLU, Sequential
from ._building import PooledClassifier, layer_options, without_rng

__all__ = ["VGG", "vgg"]


class VGG(PooledClassifier):
    """``features`` (stages of 3x3 conv-BN-ReLU, each ending in a 2x2 max-pool), global average pooling, and
    ``classifier``, a fully connected layer. Named in torchvision's style: ``features.0.weight``, ...,
    ``classifier.weight``."""


def _widths(widths) -> list[int]:
    try:
        values = [as_int(w) for w in widths]
    except TypeError:
        raise ArgumentTypeError(f"vgg: widths must be a list of ints (the channels of each stage), got "
                                f"{widths!r}") from None
    if not values or min(values) < 1:
        raise ArgumentError(f"vgg: widths must list at least one positive channel count per stage, got {widths!r}")
    return values


def vgg(*, num_classes: int = 10, in_channels: int = 3, widths=(32, 64, 128), convs_per_stage: int = 2,
        seed: int = 0, dtype="float32", device=None) -> VGG:
    """A VGG with batch norm: per entry of ``widths``, ``convs_per_stage`` x (conv 3x3 - BN - ReLU) then
    max-pool 2; then global average pooling and fc ``num_classes``.

    The default (32, 64, 128) takes 28x28 to 3x3 and 32x32 to 4x4 before the
    pooling, which makes the classifier independent of the input size; each
    stage halves the size, so an input needs at least ``2 ** len(widths)``
    pixels a side. Convolutions are He-normal (fan in), the classifier
    Glorot-uniform; every bias starts at zero; all drawn from
    ``numpy.random.default_rng(seed)``.
    """
    options, num_classes, in_channels = layer_options("vgg", num_classes=num_classes, in_channels=in_channels,
                                                      seed=seed, dtype=dtype, device=device)
    widths = _widths(widths)
    try:
        convs_per_stage = as_int(convs_per_stage)
    except TypeError:
        raise ArgumentTypeError(f"vgg: convs_per_stage must be a positive int, got {convs_per_stage!r}") from None
    if convs_per_stage < 1:
        raise ArgumentError(f"vgg: convs_per_stage must be a positive int, got {convs_per_stage!r}")
    layers, channels = [], in_channels
    for width in widths:
        for _ in range(convs_per_stage):
            # No conv bias: the BN right after it has one.
            layers += [Conv2d(channels, width, 3, padding=1, bias=False, **options),
                       BatchNorm2d(width, **without_rng(options)), ReLU()]
            channels = width
        layers.append(MaxPool2d(2))
    return VGG(Sequential(*layers), Linear(channels, num_classes, init="glorot", **options))
