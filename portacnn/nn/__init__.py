"""Layers, named as a PyTorch user expects: a layer needs only ``__init__`` and ``forward``.

Calling a layer on Tensors (or on a plain backend array, taken as a constant
input) runs the ``functional`` ops on the tape and returns a Tensor;
``loss.backward()`` then fills every parameter's ``grad`` (see
``portacnn.autograd``). Parameters are leaf Tensors whose ``data`` is
*rebound* by optimizers, never written in place.

Parameters are drawn on the host from a seeded ``numpy.random.Generator`` and
then moved to the backend, so one seed gives bit-identical weights everywhere.

One module per family, as PyTorch's ``torch/nn/modules``: ``module``
(``Module``, ``Parameter``, ``Buffer``), ``conv``, ``linear``, ``pooling``,
``activation``, ``normalization``, ``dropout``, ``flatten``, ``container``,
``loss``; ``utils`` has gradient clipping.
"""

from .activation import ELU, GELU, Hardswish, LeakyReLU, LogSoftmax, ReLU, Sigmoid, SiLU, Softmax, Tanh
from .container import Identity, ModuleDict, ModuleList, Sequential
from .conv import Conv2d, ConvTranspose2d
from .dropout import Dropout
from .flatten import Flatten
from .linear import Linear
from .loss import BCEWithLogitsLoss, CrossEntropyLoss, L1Loss, MSELoss, NLLLoss
from .module import Buffer, Module, Parameter
from .normalization import BatchNorm1d, BatchNorm2d, GroupNorm, LayerNorm
from .pooling import AdaptiveAvgPool2d, AdaptiveMaxPool2d, AvgPool2d, LPPool2d, MaxPool2d
from .upsampling import Upsample
from . import utils  # noqa: F401 - portacnn.nn.utils (gradient clipping), as torch.nn.utils

__all__ = [
    "Parameter", "Buffer", "Module", "Conv2d", "ConvTranspose2d", "MaxPool2d", "AvgPool2d", "LPPool2d", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d",
    "Upsample",
    "Linear",
    "ReLU", "Sigmoid", "Tanh", "LeakyReLU", "ELU", "GELU", "SiLU", "Hardswish", "Softmax", "LogSoftmax",
    "Identity", "Flatten", "Dropout", "BatchNorm1d", "BatchNorm2d", "LayerNorm", "GroupNorm",
    "Sequential", "ModuleList", "ModuleDict",
    "CrossEntropyLoss", "NLLLoss", "MSELoss", "L1Loss", "BCEWithLogitsLoss",
]
