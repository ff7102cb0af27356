"""The ``functional`` layer ops as tape nodes.

Each ``Function`` here runs ``functional.<op>`` forward and
``functional.<op>_backward`` backward, so every gradient formula lives once,
in ``functional``. ``register()`` hands ``functional``'s tape-aware ops these
implementations, so ``F.conv2d(x_tensor, weight)`` records a node while
``F.conv2d(x_array, weight_array)`` stays a pure array function.
"""

from __future__ import annotations

from .. import functional as F
from .._arrays import native_kernels_for
from .._checks import check_probability
from .._dispatch import HANDLERS
from .tape import Function, as_input


class Conv2d(Function):
    kernels = None  # the backend's fused kernels (native_kernels_for), when it has them

    def forward(self, x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1):
        xp, geometry = F.conv_geometry(x, weight, bias, stride=stride, padding=padding, dilation=dilation,
                                       groups=groups)
        kernels = native_kernels_for(x)
        if kernels is not None:
            # The fused backward works from x itself: there is no patch matrix to keep.
            self.kernels, self.x, self.weight, self.geometry = kernels, x, weight, geometry
            return kernels.conv2d(x, weight, bias, geometry)
        # The patch matrix is the largest share of a convolution's cost, so
        # it is kept for the weight gradient rather than rebuilt.
        patches = F.im2col(xp, x, geometry)
        self.xp, self.patches, self.input_shape, self.weight, self.geometry = (
            xp, patches, tuple(x.shape), weight, geometry)
        return F.conv2d_from_patches(xp, patches, x.shape[0], weight, bias, geometry)

    def backward(self, grad):
        if self.kernels is not None:
            return F.conv2d_backward_native(self.kernels, grad, self.x, self.weight, self.geometry,
                                            self.needs_input_grad)
        return F.conv2d_backward_from_patches(self.xp, grad, self.patches, self.input_shape, self.weight,
                                              self.geometry, input_grad=self.needs_input_grad[0])


class ConvTranspose2d(Function):
    def forward(self, x, weight, bias=None, *, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
        self.xp, self.geometry, _ = F.conv_transpose_geometry(
            x, weight, bias, stride=stride, padding=padding, output_padding=output_padding, groups=groups,
            dilation=dilation)
        self.x, self.weight = x, weight
        return F.conv_transpose2d(x, weight, bias, stride=stride, padding=padding, output_padding=output_padding,
                                  groups=groups, dilation=dilation)

    def backward(self, grad):
        return F.conv_transpose2d_backward_from_input(self.xp, grad, self.x, self.weight, self.geometry,
                                                      input_grad=self.needs_input_grad[0])


class MaxPool2d(Function):
    def forward(self, x, *, kernel_size, stride=None, padding=0, ceil_mode=False):
        if not self.needs_input_grad[0]:
            return F.max_pool2d(x, kernel_size, stride, padding, ceil_mode=ceil_mode)
        out, argmax = F.max_pool2d_with_argmax(x, kernel_size, stride, padding, ceil_mode=ceil_mode)
        # The fused backward needs only where the maxima lie; the generic one finds them again from out.
        self.found = {"forward_output": out} if argmax is None else {"argmax": argmax}
        self.x, self.options, self.ceil_mode = x, (kernel_size, stride, padding), ceil_mode
        return out

    def backward(self, grad):
        return F.max_pool2d_backward(grad, self.x, *self.options, ceil_mode=self.ceil_mode, **self.found)


class _KeepsInput(Function):
    """An op whose backward needs only its input and its options: subclasses name the pair."""

    _forward = _backward = None

    def forward(self, x, **options):
        self.x, self.options = x, options
        return type(self)._forward(x, **options)

    def backward(self, grad):
        return type(self)._backward(grad, self.x, **self.options)


class AvgPool2d(_KeepsInput):
    _forward, _backward = staticmethod(F.avg_pool2d), staticmethod(F.avg_pool2d_backward)


class AdaptiveAvgPool2d(_KeepsInput):
    _forward, _backward = staticmethod(F.adaptive_avg_pool2d), staticmethod(F.adaptive_avg_pool2d_backward)


class AdaptiveMaxPool2d(_KeepsInput):
    _forward, _backward = staticmethod(F.adaptive_max_pool2d), staticmethod(F.adaptive_max_pool2d_backward)


class Interpolate(_KeepsInput):
    _forward, _backward = staticmethod(F.interpolate), staticmethod(F.interpolate_backward)


class LPPool2d(_KeepsInput):
    _forward, _backward = staticmethod(F.lp_pool2d), staticmethod(F.lp_pool2d_backward)


class ReLU(_KeepsInput):
    _forward, _backward = staticmethod(F.relu), staticmethod(F.relu_backward)


class Sigmoid(_KeepsInput):
    _forward, _backward = staticmethod(F.sigmoid), staticmethod(F.sigmoid_backward)


class Tanh(_KeepsInput):
    _forward, _backward = staticmethod(F.tanh), staticmethod(F.tanh_backward)


class LeakyReLU(_KeepsInput):
    _forward, _backward = staticmethod(F.leaky_relu), staticmethod(F.leaky_relu_backward)


class ELU(_KeepsInput):
    _forward, _backward = staticmethod(F.elu), staticmethod(F.elu_backward)


class GELU(_KeepsInput):
    _forward, _backward = staticmethod(F.gelu), staticmethod(F.gelu_backward)


class SiLU(_KeepsInput):
    _forward, _backward = staticmethod(F.silu), staticmethod(F.silu_backward)


class Hardswish(_KeepsInput):
    _forward, _backward = staticmethod(F.hardswish), staticmethod(F.hardswish_backward)


class Softmax(_KeepsInput):
    _forward, _backward = staticmethod(F.softmax), staticmethod(F.softmax_backward)


class LogSoftmax(_KeepsInput):
    _forward, _backward = staticmethod(F.log_softmax), staticmethod(F.log_softmax_backward)


class Linear(Function):
    def forward(self, x, weight, bias=None):
        self.x, self.weight = x, weight
        return F.linear(x, weight, bias)

    def backward(self, grad):
        return F.linear_backward(grad, self.x, self.weight)


class CrossEntropy(Function):
    """Inputs ``(logits, labels, weight)``; the class weights are constants (no gradient)."""

    def forward(self, logits, labels, weight=None, *, reduction="mean", label_smoothing=0.0, check_labels=True):
        self.logits, self.labels, self.weight = logits, labels, weight
        self.reduction, self.label_smoothing = reduction, label_smoothing
        return F.cross_entropy(logits, labels, weight=weight, reduction=reduction, label_smoothing=label_smoothing,
                               check_labels=check_labels)

    def backward(self, grad):
        # forward already checked the labels
        return F.cross_entropy_backward(self.logits, self.labels, weight=self.weight, reduction=self.reduction,
                                        label_smoothing=self.label_smoothing, check_labels=False,
                                        grad_out=grad), None, None


class _KeepsInputAndTarget(Function):
    """A loss whose backward needs only its two inputs and its options; the functional backward gives both
    gradients."""

    _forward = _backward = None

    def forward(self, input, target, **options):
        self.input, self.target, self.options = input, target, options
        return type(self)._forward(input, target, **options)

    def backward(self, grad):
        return type(self)._backward(grad, self.input, self.target, **self.options)


class MSELoss(_KeepsInputAndTarget):
    _forward, _backward = staticmethod(F.mse_loss), staticmethod(F.mse_loss_backward)


class L1Loss(_KeepsInputAndTarget):
    _forward, _backward = staticmethod(F.l1_loss), staticmethod(F.l1_loss_backward)


class BCEWithLogits(_KeepsInputAndTarget):
    _forward = staticmethod(F.binary_cross_entropy_with_logits)
    _backward = staticmethod(F.binary_cross_entropy_with_logits_backward)


class NLLLoss(Function):
    def forward(self, input, target, *, reduction="mean", check_labels=True):
        self.input, self.target, self.reduction = input, target, reduction
        return F.nll_loss(input, target, reduction=reduction, check_labels=check_labels)

    def backward(self, grad):
        # forward already checked the labels
        return F.nll_loss_backward(grad, self.input, self.target, reduction=self.reduction, check_labels=False), None


class BatchNorm(Function):
    """Outputs ``(y, new_running_mean, new_running_var)``; only ``y`` has a gradient."""

    def forward(self, x, running_mean, running_var, weight=None, bias=None, *, training=False, momentum=0.1,
                eps=1e-5):
        y, new_mean, new_var = F.batch_norm(x, running_mean, running_var, weight, bias, training=training,
                                            momentum=momentum, eps=eps)
        # The backward normalises with the statistics the forward used: the
        # batch's in training, the running ones (as they were) in eval.
        self.x, self.running_mean, self.running_var, self.weight = x, running_mean, running_var, weight
        self.training, self.eps = training, eps
        return y, new_mean, new_var

    def backward(self, grad, _mean_grad=None, _var_grad=None):
        grad_x, grad_weight, grad_bias = F.batch_norm_backward(
            grad, self.x, self.running_mean, self.running_var, self.weight, training=self.training, eps=self.eps)
        return grad_x, None, None, grad_weight, grad_bias


class LayerNorm(Function):
    def forward(self, x, weight=None, bias=None, *, normalized_shape, eps=1e-5):
        self.x, self.weight, self.normalized_shape, self.eps = x, weight, normalized_shape, eps
        return F.layer_norm(x, normalized_shape, weight, bias, eps)

    def backward(self, grad):
        return F.layer_norm_backward(grad, self.x, self.normalized_shape, self.weight, self.eps)


class GroupNorm(Function):
    def forward(self, x, weight=None, bias=None, *, num_groups, eps=1e-5):
        self.x, self.weight, self.num_groups, self.eps = x, weight, num_groups, eps
        return F.group_norm(x, num_groups, weight, bias, eps)

    def backward(self, grad):
        return F.group_norm_backward(grad, self.x, self.num_groups, self.weight, self.eps)


class Dropout(Function):
    def forward(self, x, *, p, mask):
        self.mask, self.p = mask, p
        return F.dropout(x, p, mask=mask)

    def backward(self, grad):
        return F.dropout_backward(grad, self.mask, self.p)


# --------------------------------------------------------------------------
# handlers: functional's signatures, Tensors in, Tensors out


def conv2d(x, weight, bias=None, *, stride=1, padding=0, dilation=1, groups=1):
    return Conv2d.apply(x, weight, bias, stride=stride, padding=padding, dilation=dilation, groups=groups)


def conv_transpose2d(x, weight, bias=None, *, stride=1, padding=0, output_padding=0, groups=1, dilation=1):
    return ConvTranspose2d.apply(x, weight, bias, stride=stride, padding=padding, output_padding=output_padding,
                                 groups=groups, dilation=dilation)


def max_pool2d(x, kernel_size, stride=None, padding=0, *, ceil_mode=False):
    return MaxPool2d.apply(x, kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode)


def avg_pool2d(x, kernel_size, stride=None, padding=0, ceil_mode=False, count_include_pad=True):
    return AvgPool2d.apply(x, kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode,
                           count_include_pad=count_include_pad)


def adaptive_avg_pool2d(x, output_size):
    return AdaptiveAvgPool2d.apply(x, output_size=output_size)


def adaptive_max_pool2d(x, output_size, return_indices=False):
    if return_indices is not False:
        F.adaptive_max_pool2d(as_input(x).data, output_size, return_indices)  # raises the unsupported error
    return AdaptiveMaxPool2d.apply(x, output_size=output_size)


def interpolate(x, size=None, scale_factor=None, mode="nearest", align_corners=None):
    return Interpolate.apply(x, size=size, scale_factor=scale_factor, mode=mode, align_corners=align_corners)


def lp_pool2d(x, p, kernel_size, stride=None):
    return LPPool2d.apply(x, p=p, kernel_size=kernel_size, stride=stride)


def linear(x, weight, bias=None):
    return Linear.apply(x, weight, bias)


def relu(x):
    return ReLU.apply(x)


def sigmoid(x):
    return Sigmoid.apply(x)


def tanh(x):
    return Tanh.apply(x)


def leaky_relu(x, negative_slope=0.01):
    return LeakyReLU.apply(x, negative_slope=negative_slope)


def elu(x, alpha=1.0):
    return ELU.apply(x, alpha=alpha)


def gelu(x, *, approximate="none"):
    return GELU.apply(x, approximate=approximate)


def silu(x):
    return SiLU.apply(x)


def hardswish(x):
    return Hardswish.apply(x)


def softmax(x, axis=-1):
    return Softmax.apply(x, axis=axis)


def log_softmax(x, axis=-1):
    return LogSoftmax.apply(x, axis=axis)


def cross_entropy(logits, labels, *, weight=None, reduction="mean", label_smoothing=0.0, check_labels=True):
    return CrossEntropy.apply(logits, labels, weight, reduction=reduction, label_smoothing=label_smoothing,
                              check_labels=check_labels)


def nll_loss(input, target, *, reduction="mean", check_labels=True):
    return NLLLoss.apply(input, target, reduction=reduction, check_labels=check_labels)


def mse_loss(input, target, *, reduction="mean"):
    return MSELoss.apply(input, target, reduction=reduction)


def l1_loss(input, target, *, reduction="mean"):
    return L1Loss.apply(input, target, reduction=reduction)


def binary_cross_entropy_with_logits(input, target, *, reduction="mean"):
    return BCEWithLogits.apply(input, target, reduction=reduction)


def batch_norm(x, running_mean, running_var, weight=None, bias=None, training=False, momentum=0.1, eps=1e-5):
    """``functional.batch_norm`` on the tape: ``(y Tensor, new_running_mean, new_running_var)`` (arrays)."""
    y, new_mean, new_var = BatchNorm.apply(x, running_mean, running_var, weight, bias, training=training,
                                           momentum=momentum, eps=eps)
    return y, None if new_mean is None else new_mean.data, None if new_var is None else new_var.data


def layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    return LayerNorm.apply(x, weight, bias, normalized_shape=normalized_shape, eps=eps)


def group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    return GroupNorm.apply(x, weight, bias, num_groups=num_groups, eps=eps)


def dropout(x, p=0.5, *, mask=None, rng=None, training=True):
    x = as_input(x)
    if not training or check_probability(p, "dropout probability p") == 0.0:
        # Identity, as functional.dropout is (after the same dtype check).
        F.dropout(x.data, p, training=False)
        return x
    if mask is None:
        if rng is None:
            F.dropout(x.data, p, training=True)  # raises the missing-mask error
        mask = F.dropout_mask(x.shape, p, rng)
    return Dropout.apply(x, p=p, mask=mask)


def register() -> None:
    """Hand every ``@tape_aware`` op of ``functional`` its handler here (each must have one)."""
    for name, op in vars(F).items():
        if hasattr(op, "array_op"):
            HANDLERS[name] = globals()[name]
