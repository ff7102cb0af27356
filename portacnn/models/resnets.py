"""The CIFAR ResNets of He et al., "Deep Residual Learning for Image Recognition" (2015), section 4.2.

A 3x3 conv with 16 filters, then three stages of ``n`` basic blocks with 16,
32 and 64 filters on maps of size 32, 16 and 8 (the first block of stages 2
and 3 halves the size with stride 2), then global average pooling and a
fully connected layer: ``6n + 2`` weighted layers (``resnet20``: n = 3).

Names follow the widely used PyTorch re-implementation (Yerlan Idelbayev's
``resnet_cifar10``): ``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layer3.2.shortcut.0.weight`` (option B), ``linear``. So a ``state_dict`` of
that code (without DataParallel's ``module.`` prefix) loads as it is.
"""

from __future__ import annotations

from .._arrays import device_of, namespace_of
from .._checks import check_choice
from ..autograd import cat
from ..nn import AdaptiveAvgPool2d, BatchNorm2d, Conv2d, Identity, Linear, Module, ReLU, Sequential
from ._building import layer_options, without_rng

__all__ = ["ResNet", "BasicBlock", "PadShortcut", "resnet8", "resnet20", "resnet32"]


class PadShortcut(Module):
    """The paper's option A: identity, except that a down-sampling block keeps every other row and column
    (stride 2) and zero-pads the new channels, half before and half after the input's. No parameters.

    Built from ops the tape already has (slicing and ``cat``), so its gradient is theirs: the strided slice
    sends the gradient back to the kept pixels, ``cat`` drops the zero channels' share.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride

    def forward(self, x):
        if self.stride != 1:
            x = x[:, :, ::self.stride, ::self.stride]
        extra = self.out_channels - self.in_channels
        if extra == 0:
            return x
        xp = namespace_of(x.data)
        n, _, h, w = x.shape
        before, after = extra // 2, extra - extra // 2
        zeros = [xp.zeros((n, count, h, w), dtype=x.dtype, device=device_of(x.data)) for count in (before, after)]
        return cat([zeros[0], x, zeros[1]] if before else [x, zeros[1]], axis=1)

    def extra_repr(self):
        return f"{self.in_channels}, {self.out_channels}, stride={self.stride}"


class BasicBlock(Module):
    """conv 3x3 - BN - ReLU - conv 3x3 - BN, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str, options: dict):
        self.conv1 = Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False, **options)
        self.bn1 = BatchNorm2d(out_channels, **without_rng(options))
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1, bias=False, **options)
        self.bn2 = BatchNorm2d(out_channels, **without_rng(options))
        if stride == 1 and in_channels == out_channels:
            self.shortcut = Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_channels, out_channels, stride)
        else:  # option B: a projection, only where the shape changes
            self.shortcut = Sequential(
                Conv2d(in_channels, out_channels, 1, stride=stride, bias=False, **options),
                BatchNorm2d(out_channels, **without_rng(options)))
        self.relu = ReLU()

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(Module):
    """A CIFAR ResNet with ``blocks`` basic blocks per stage (the paper's n) and 16/32/64 channels."""

    def __init__(self, blocks: int, *, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A",
                 seed: int = 0, dtype="float32", device=None, name: str = "ResNet"):
        options, num_classes, in_channels = layer_options(name, num_classes=num_classes, in_channels=in_channels,
                                                          seed=seed, dtype=dtype, device=device)
        shortcut = check_choice(shortcut, f"{name} shortcut", ("A", "B"))
        # He init for the convolutions, as in the paper (its reference 13); the draws come in build order.
        self.conv1 = Conv2d(in_channels, 16, 3, padding=1, bias=False, **options)
        self.bn1 = BatchNorm2d(16, **without_rng(options))
        self.relu = ReLU()
        channels = 16
        for stage, width in enumerate((16, 32, 64), start=1):
            layer = Sequential()
            for index in range(blocks):
                stride = 2 if index == 0 and stage > 1 else 1
                setattr(layer, str(index), BasicBlock(channels, width, stride, shortcut, options))
                channels = width
            setattr(self, f"layer{stage}", layer)
        self.avgpool = AdaptiveAvgPool2d(1)
        self.linear = Linear(64, num_classes, init="glorot", **options)

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = self.avgpool(out)
        return self.linear(out.reshape(out.shape[0], -1))


def _resnet(name: str, blocks: int, **kwargs) -> ResNet:
    return ResNet(blocks, name=name, **kwargs)


def resnet8(*, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A", seed: int = 0, dtype="float32",
            device=None) -> ResNet:
    """ResNet-8 (n = 1, 8 weighted layers; 75k parameters with option A). See the module docstring."""
    return _resnet("resnet8", 1, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut, seed=seed,
                   dtype=dtype, device=device)


def resnet20(*, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A", seed: int = 0, dtype="float32",
             device=None) -> ResNet:
    """ResNet-20 (n = 3; 0.27M parameters with option A, the paper's Table 6).

    ``shortcut="A"``: the paper's parameter-free identity with zero-padded new
    channels (used for its CIFAR results); ``"B"``: a 1x1 conv + BN projection
    where the shape changes.
    """
    return _resnet("resnet20", 3, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut, seed=seed,
                   dtype=dtype, device=device)


def resnet32(*, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A", seed: int = 0, dtype="float32",
             device=None) -> ResNet:
    """ResNet-32 (n = 5; 0.46M parameters with option A, the paper's Table 6). See ``resnet20``."""
    return _resnet("resnet32", 5, num_classes=num_classes, in_channels=in_channels, shortcut=shortcut, seed=seed,
                   dtype=dtype, device=device)
