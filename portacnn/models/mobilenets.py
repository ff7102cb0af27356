"""A small MobileNet (Howard et al., 2017, "MobileNets"): depthwise-separable convolutions, for 28x28 and 32x32."""

from __future__ import annotations

from .._checks import check_finite, check_number
from ..nn import BatchNorm2d, Conv2d, Linear, Module, ReLU, Sequential
from ._building import PooledClassifier, layer_options, without_rng

__all__ = ["MobileNet", "DepthwiseSeparable", "mobilenet"]

#: (output channels, stride) of each depthwise-separable block: the paper's first five, at full width.
BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1))
STEM_CHANNELS = 32


class DepthwiseSeparable(Module):
    """A 3x3 depthwise conv (one filter per channel: ``groups=in_channels``) - BN - ReLU, then a 1x1 pointwise
    conv that mixes the channels - BN - ReLU: the paper's Figure 3."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, options: dict):
        self.depthwise = Conv2d(in_channels, in_channels, 3, stride=stride, padding=1, groups=in_channels, bias=False,
                                **options)
        self.bn1 = BatchNorm2d(in_channels, **without_rng(options))
        self.pointwise = Conv2d(in_channels, out_channels, 1, bias=False, **options)
        self.bn2 = BatchNorm2d(out_channels, **without_rng(options))
        self.relu = ReLU()

    def forward(self, x):
        return self.relu(self.bn2(self.pointwise(self.relu(self.bn1(self.depthwise(x))))))


class MobileNet(PooledClassifier):
    """``features`` (a conv-BN-ReLU stem, then depthwise-separable blocks), global average pooling,
    ``classifier``."""


def mobilenet(*, num_classes: int = 10, in_channels: int = 3, width_mult: float = 1.0, seed: int = 0,
              dtype="float32", device=None) -> MobileNet:
    """MobileNet-v1 blocks for small images: a stride-1 3x3 stem of 32 channels, then depthwise-separable
    blocks to 64, 128 (stride 2), 128, 256 (stride 2), 256 channels; global average pooling, fc ``num_classes``.

    The stem keeps the size (the paper's stride 2 is for 224x224 images), so
    28x28 ends at 7x7 and 32x32 at 8x8. ``width_mult`` is the paper's width
    multiplier alpha: every layer's channels times alpha (at least 1).
    Convolutions are He-normal (fan in, so a depthwise filter's fan is its 9
    taps), the classifier Glorot-uniform, BN weight 1 and bias 0; all drawn
    from ``numpy.random.default_rng(seed)``.
    """
    options, num_classes, in_channels = layer_options("mobilenet", num_classes=num_classes,
                                                      in_channels=in_channels, seed=seed, dtype=dtype, device=device)
    alpha = check_number(check_finite(width_mult, "mobilenet width_mult"), "mobilenet width_mult", low=0.0,
                         low_inclusive=False)

    def scaled(channels: int) -> int:
        return max(1, round(channels * alpha))

    channels = scaled(STEM_CHANNELS)
    layers = [Sequential(Conv2d(in_channels, channels, 3, padding=1, bias=False, **options),
                         BatchNorm2d(channels, **without_rng(options)), ReLU())]
    for width, stride in BLOCKS:
        layers.append(DepthwiseSeparable(channels, scaled(width), stride, options))
        channels = scaled(width)
    return MobileNet(Sequential(*layers), Linear(channels, num_classes, init="glorot", **options))
