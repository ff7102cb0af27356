"""Activation layers."""

from __future__ import annotations

from .. import functional as F
from .._checks import as_int, check_choice, check_finite
from ..errors import ArgumentError, ArgumentTypeError
from .module import Module


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(x)


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


class LeakyReLU(Module):
    def __init__(self, negative_slope: float = 0.01):
        self.negative_slope = check_finite(negative_slope, "LeakyReLU negative_slope")

    def forward(self, x):
        return F.leaky_relu(x, self.negative_slope)

    def extra_repr(self) -> str:
        return f"negative_slope={self.negative_slope}"


class ELU(Module):
    def __init__(self, alpha: float = 1.0):
        self.alpha = check_finite(alpha, "ELU alpha")

    def forward(self, x):
        return F.elu(x, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"


class GELU(Module):
    """``approximate='none'`` is the exact x Phi(x); ``'tanh'`` is PyTorch's faster tanh formula."""

    def __init__(self, approximate: str = "none"):
        self.approximate = check_choice(approximate, "GELU approximate", ("none", "tanh"))

    def forward(self, x):
        return F.gelu(x, approximate=self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class SiLU(Module):
    def forward(self, x):
        return F.silu(x)


class Hardswish(Module):
    def forward(self, x):
        return F.hardswish(x)


def _check_dim(dim, layer: str):
    if dim is None:
        return None
    try:
        return as_int(dim)
    except TypeError:
        raise ArgumentTypeError(f"{layer}: dim must be an int (the axis to normalise over), got {dim!r}") from None


class _SoftmaxLayer(Module):
    """``dim`` is required when the layer is called: with ``dim=None`` PyTorch guesses the axis from the input's
    rank (0 for 0-, 1- and 3-D inputs, else 1), a rule it deprecated because it silently normalises over the
    wrong axis; this layer raises ``ArgumentError`` instead of guessing."""

    _op = None

    def __init__(self, dim=None):
        self.dim = _check_dim(dim, type(self).__name__)

    def forward(self, x):
        if self.dim is None:
            name = type(self).__name__
            raise ArgumentError(
                f"{name} was made without dim: say which axis to normalise over, e.g. {name}(dim=1) for logits of "
                "shape (N, num_classes) (PyTorch's implicit choice for dim=None is deprecated and not copied)")
        return type(self)._op(x, self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Softmax(_SoftmaxLayer):
    __doc__ = _SoftmaxLayer.__doc__
    _op = staticmethod(F.softmax)


class LogSoftmax(_SoftmaxLayer):
    __doc__ = _SoftmaxLayer.__doc__
    _op = staticmethod(F.log_softmax)
