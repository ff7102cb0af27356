"""Layer math, written once against the Python array API standard.

Every function takes its namespace from its inputs (``namespace_of``), so the
same code runs on NumPy, CuPy, PyTorch, JAX and array-api-strict, and the
result stays on the input's device with the input's dtype. Shapes and argument
names follow PyTorch: NCHW images, conv weights ``(out, in, kh, kw)``, linear
weights ``(out_features, in_features)``.

Each forward has a backward that recomputes what it needs from the forward's
inputs, so a caller only has to keep those inputs.

Rules these modules keep (see the README): only the standard plus
``array_api_extra``; no integer-index scatter (gradients are added back on
*slices*); no in-place writes on arrays a caller can see (JAX arrays are
immutable, NumPy inputs may be read-only). The one backend-specific fast
path inside this math is behind the ``writable_views`` capability of
``portacnn.backends``: the scatter-add into an accumulator the op just
created goes through views where a backend declares it (NumPy, CuPy,
torch) and through ``array_api_extra.at`` elsewhere; a test checks both
give the same bits. Apart from this math, a backend that declares
``native_kernels`` (torch) has conv2d, max_pool2d and their backwards run
by its library's own fused ops (``_native/``), after the same argument
checks; tests/test_native_kernels.py checks both paths agree.

The forward ops are ``tape_aware``: given a ``portacnn.Tensor`` they hand
the call to the tape (``portacnn.autograd``), which records a node whose
backward is the matching ``<op>_backward`` here, and return a Tensor; given
plain arrays they are pure array functions. This package never imports
the tape.

Internally, sliding windows are taken in a batch-last (C, H, W, N) layout,
and conv2d and the pools return NCHW *views* of batch-last memory, so the
next layer's batch-last view is free (see ``_windows.py``).

The ops live in one module per family, as PyTorch's ``torch/nn/modules`` and
Chainer's ``chainer/functions`` do: ``conv``, ``pooling``, ``linear``,
``activation``, ``loss``, ``normalization``, ``dropout``. Argument checks
shared with the layers and optimizers are in ``portacnn._checks``.
"""

from .activation import (
                         elu,
                         elu_backward,
                         gelu,
                         gelu_backward,
                         hardswish,
                         hardswish_backward,
                         leaky_relu,
                         leaky_relu_backward,
                         log_softmax,
                         log_softmax_backward,
                         relu,
                         relu_backward,
                         sigmoid,
                         sigmoid_backward,
                         silu,
                         silu_backward,
                         softmax,
                         softmax_backward,
                         tanh,
                         tanh_backward,
)

# Building blocks the layers and the tape use (the conv keeps its patch
# matrix between forward and backward, or its input where the backend has
# fused kernels; Dropout draws its masks on the host).
from .conv import (  # noqa: F401,E402
                         ConvGeometry,
                         conv2d,
                         conv2d_backward,
                         conv2d_backward_from_patches,
                         conv2d_backward_native,
                         conv2d_from_patches,
                         conv_geometry,
                         conv_transpose2d,
                         conv_transpose2d_backward,
                         conv_transpose2d_backward_from_input,
                         conv_transpose_geometry,
                         im2col,
)
from .dropout import (
                         dropout,
                         dropout_backward,
                         dropout_mask,  # noqa: F401,E402
)
from .linear import linear, linear_backward
from .loss import (
                         binary_cross_entropy_with_logits,
                         binary_cross_entropy_with_logits_backward,
                         cross_entropy,
                         cross_entropy_backward,
                         l1_loss,
                         l1_loss_backward,
                         mse_loss,
                         mse_loss_backward,
                         nll_loss,
                         nll_loss_backward,
)
from .normalization import (
                         batch_norm,
                         batch_norm_backward,
                         group_norm,
                         group_norm_backward,
                         layer_norm,
                         layer_norm_backward,
)
from .pooling import avg_pool2d, avg_pool2d_backward, lp_pool2d, lp_pool2d_backward, max_pool2d, max_pool2d_backward
from .pooling import max_pool2d_with_argmax  # noqa: F401 - a building block of the tape's MaxPool2d
from .pooling import (adaptive_avg_pool2d, adaptive_avg_pool2d_backward, adaptive_max_pool2d,
                      adaptive_max_pool2d_backward)
from .upsampling import interpolate, interpolate_backward

__all__ = [
    "conv2d", "conv2d_backward",
    "conv_transpose2d", "conv_transpose2d_backward",
    "max_pool2d", "max_pool2d_backward",
    "avg_pool2d", "avg_pool2d_backward",
    "lp_pool2d", "lp_pool2d_backward",
    "adaptive_avg_pool2d", "adaptive_avg_pool2d_backward", "adaptive_max_pool2d", "adaptive_max_pool2d_backward",
    "interpolate", "interpolate_backward",
    "linear", "linear_backward",
    "relu", "relu_backward", "sigmoid", "sigmoid_backward", "tanh", "tanh_backward",
    "leaky_relu", "leaky_relu_backward", "elu", "elu_backward", "gelu", "gelu_backward",
    "silu", "silu_backward", "hardswish", "hardswish_backward",
    "softmax", "softmax_backward", "log_softmax", "log_softmax_backward",
    "cross_entropy", "cross_entropy_backward",
    "nll_loss", "nll_loss_backward", "mse_loss", "mse_loss_backward", "l1_loss", "l1_loss_backward",
    "binary_cross_entropy_with_logits", "binary_cross_entropy_with_logits_backward",
    "batch_norm", "batch_norm_backward",
    "layer_norm", "layer_norm_backward", "group_norm", "group_norm_backward",
    "dropout", "dropout_backward",
]
