"""The LeNets: the write-up's (``lenet``) and LeCun et al.'s LeNet-5 (``lenet5``)."""

from __future__ import annotations

import numbers

import numpy

from ..errors import ArgumentError, ArgumentTypeError
from ..nn import AvgPool2d, Conv2d, Flatten, Linear, MaxPool2d, ReLU, Sequential, Tanh
from ._building import layer_options

__all__ = ["lenet", "lenet5"]


def lenet(*, seed: int = 0, num_classes: int = 10, in_channels: int = 1, input_size: int = 28, dtype="float32",
          device=None) -> Sequential:
    """The write-up's LeNet, for ``in_channels`` x ``input_size`` x ``input_size`` images (1x28x28: MNIST).

    conv 20@5x5 → ReLU → max-pool 2 → conv 50@5x5 → ReLU → max-pool 2 →
    fc 500 → ReLU → fc ``num_classes``. Weights come from
    ``numpy.random.default_rng(seed)``: He-normal before ReLU, Glorot-uniform
    for the output layer; biases start at zero.
    """
    for name, value, low in (("in_channels", in_channels, 1), ("input_size", input_size, 16)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < low:
            raise ArgumentError(f"lenet: {name} must be a whole number >= {low}, got {value!r}")
    side = ((input_size - 4) // 2 - 4) // 2  # two 5x5 convolutions, each followed by a 2x2 max-pool
    rng = numpy.random.default_rng(seed)
    options = dict(rng=rng, dtype=dtype, device=device)
    return Sequential(
        Conv2d(in_channels, 20, 5, **options),
        ReLU(),
        MaxPool2d(2),
        Conv2d(20, 50, 5, **options),
        ReLU(),
        MaxPool2d(2),
        Flatten(),
        Linear(50 * side * side, 500, **options),
        ReLU(),
        Linear(500, num_classes, init="glorot", **options),
    )


def lenet5(*, num_classes: int = 10, in_channels: int = 1, input_size: int = 28, seed: int = 0, dtype="float32",
           device=None) -> Sequential:
    """LeNet-5 (LeCun et al., 1998) with tanh and average pooling, for ``input_size`` 28 (MNIST) or 32 (the paper's).

    C1 conv 6@5x5 → tanh → S2 avg-pool 2 → C3 conv 16@5x5 → tanh → S4 avg-pool 2
    → C5 conv 120@5x5 → tanh → F6 fc 84 → tanh → fc ``num_classes``. The paper
    drew its digits inside a 32x32 field, so C1 pads a smaller image by
    ``(32 - input_size) / 2`` and every later layer sees the paper's sizes; C5
    then covers the whole 5x5 map of S4. What the paper had and modern
    re-implementations drop: trainable pooling coefficients, C3's partial
    connection table and the RBF output layer.

    Weights are Glorot-uniform, the fan-preserving choice for tanh, drawn from
    ``numpy.random.default_rng(seed)``; biases start at zero.
    """
    options, num_classes, in_channels = layer_options("lenet5", num_classes=num_classes, in_channels=in_channels,
                                                      seed=seed, dtype=dtype, device=device)
    if isinstance(input_size, bool) or not isinstance(input_size, numbers.Integral):
        raise ArgumentTypeError(f"lenet5: input_size must be an int (the images' height and width: 28 for MNIST, "
                                f"32 for the paper's), got {input_size!r} ({type(input_size).__name__})")
    if not (0 < input_size <= 32 and (32 - input_size) % 2 == 0):
        raise ArgumentError(f"lenet5: input_size must be 32 (the paper's) or smaller by an even number, which C1 "
                            f"pads back to 32 (28 for MNIST), got {input_size!r}")
    options["init"] = "glorot"
    return Sequential(
        Conv2d(in_channels, 6, 5, padding=(32 - input_size) // 2, **options),  # C1
        Tanh(),
        AvgPool2d(2),  # S2
        Conv2d(6, 16, 5, **options),  # C3
        Tanh(),
        AvgPool2d(2),  # S4
        Conv2d(16, 120, 5, **options),  # C5
        Tanh(),
        Flatten(),
        Linear(120, 84, **options),  # F6
        Tanh(),
        Linear(84, num_classes, **options),
    )
