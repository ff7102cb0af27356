"""What every zoo factory does alike: check its sizes, and hand its layers one host generator."""

from __future__ import annotations

from .._checks import positive_int
from .._host_random import host_generator
from ..nn import AdaptiveAvgPool2d, Linear, Module, Sequential


def layer_options(factory: str, *, num_classes, in_channels, seed, dtype, device) -> tuple[dict, int, int]:
    """``(options for every layer, num_classes, in_channels)`` after checking the sizes.

    Every layer draws from the one generator in ``options`` in the order it is
    built, so ``seed`` decides all the weights, bit for bit, on any backend.
    """
    num_classes = positive_int(num_classes, "num_classes", factory)
    in_channels = positive_int(in_channels, "in_channels", factory)
    rng = host_generator(seed, f"{factory}: seed")
    return dict(rng=rng, dtype=dtype, device=device), num_classes, in_channels


def without_rng(options: dict) -> dict:
    """The options a layer without random weights (BatchNorm) takes."""
    return {key: value for key, value in options.items() if key != "rng"}


class PooledClassifier(Module):
    """``features``, then global average pooling, then ``classifier`` (a fully connected layer): the shape
    VGG and MobileNet share. Named in torchvision's style: ``features.0.weight``, ..., ``classifier.weight``."""

    def __init__(self, features: Sequential, classifier: Linear):
        self.features = features
        self.avgpool = AdaptiveAvgPool2d(1)
        self.classifier = classifier

    def forward(self, x):
        out = self.avgpool(self.features(x))
        return self.classifier(out.reshape(-1, out.shape[1]))  # the batch may be unknown (lazy arrays)
