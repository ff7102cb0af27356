"""The LeNets: the write-up's (``lenet``)."""

from __future__ import annotations

import numpy

from ..nn import Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential

__all__ = ["lenet"]


def lenet(*, seed: int = 0, num_classes: int = 10, dtype="float32", device=None) -> Sequential:
    """The write-up's LeNet for 1x28x28 images.

    conv 20@5x5 → ReLU → max-pool 2 → conv 50@5x5 → ReLU → max-pool 2 →
    fc 500 → ReLU → fc ``num_classes``. Weights come from
    ``numpy.random.default_rng(seed)``: He-normal before ReLU, Glorot-uniform
    for the output layer; biases start at zero.
    """
    rng = numpy.random.default_rng(seed)
    options = dict(rng=rng, dtype=dtype, device=device)
    return Sequential(
        Conv2d(1, 20, 5, **options),
        ReLU(),
        MaxPool2d(2),
        Conv2d(20, 50, 5, **options),
        ReLU(),
        MaxPool2d(2),
        Flatten(),
        Linear(50 * 4 * 4, 500, **options),
        ReLU(),
        Linear(500, num_classes, init="glorot", **options),
    )
