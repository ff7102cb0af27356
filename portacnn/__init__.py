"""portacnn: a readable CNN library written once against the Python array API.

The math (``portacnn.functional``, ``portacnn.nn``, ``portacnn.optim``)
follows the namespace and device of its inputs; ``portacnn.backends`` picks
where new parameters live and moves arrays between backends. Ops on
``portacnn.Tensor`` record the graph, and ``loss.backward()`` fills the
parameters' gradients (``portacnn.autograd``).
"""

from .autograd import Function, Tensor, cat, enable_grad, is_grad_enabled, no_grad, tensor
from .backends import available_backends, to_device, to_numpy
from . import functional, nn, optim  # noqa: E402 - after autograd, which they build on
from . import amp  # noqa: E402
from .summary import summary  # noqa: E402
from .weights import load_weights, save_weights  # noqa: E402
from . import onnx  # noqa: E402 - portacnn.onnx.export; the onnx package itself is imported on use

__version__ = "0.1.0"

__all__ = [
    "Tensor", "Function", "tensor", "cat", "no_grad", "enable_grad", "is_grad_enabled",
    "available_backends", "to_device", "to_numpy", "functional", "nn", "optim", "amp", "summary", "__version__",
    "save_weights", "load_weights", "onnx",
]
