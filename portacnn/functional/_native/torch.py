"""PyTorch's own conv2d and max_pool2d, forward and backward (oneDNN on the CPU, cuDNN on CUDA).

The interface is described in ``portacnn/functional/_native/__init__.py``.
Inputs come from portacnn's ops and never require a torch gradient, so no
``torch.no_grad()`` guard is paid for (about 2 us a call, half the dispatch
of a small convolution).

On the CPU the kernels work in channels-last memory: there, at LeNet's
sizes, PyTorch's max pooling forward is about 10x faster than on NCHW memory
and oneDNN's convolutions about 1.3x. A channels-last weight (a copy per
call: weights are small) makes a convolution return a channels-last output
whatever its input's layout, and the elementwise ops between layers keep
that layout, so pooling finds its input channels-last and copies only what
another layer (a generic one) hands it in another layout. Results have the
NCHW shapes of every backend; only their strides differ. Other devices get
PyTorch's default layout.
"""

from __future__ import annotations

import torch

_conv2d = torch.conv2d
_max_pool2d = torch.max_pool2d
# The overloads themselves: calling the packets (torch.ops.aten.<op>) resolves one on every call.
_conv2d_backward = torch.ops.aten.convolution_backward.default
_max_pool2d_with_indices = torch.ops.aten.max_pool2d_with_indices.default
_max_pool2d_with_indices_backward = torch.ops.aten.max_pool2d_with_indices_backward.default
_CHANNELS_LAST = torch.channels_last
_NO_DILATION = (1, 1)
_NO_OUTPUT_PADDING = (0, 0)


def _weight_for(x, weight):
    """``weight`` as the convolution of ``x`` wants it: channels-last on the CPU (see the module docstring)."""
    return weight.to(memory_format=_CHANNELS_LAST) if x.is_cpu else weight


def _pooled_layout(x):
    """``x`` in the layout max pooling is fast on: channels-last on the CPU (a copy only where it is not)."""
    return x.contiguous(memory_format=_CHANNELS_LAST) if x.is_cpu else x


def conv2d(x, weight, bias, geometry):
    return _conv2d(x, _weight_for(x, weight), bias, geometry.stride, geometry.padding, geometry.dilation,
                   geometry.groups)


def conv2d_backward(grad_out, x, weight, geometry, needs):
    grad_x, grad_weight, grad_bias = _conv2d_backward(
        grad_out, x, _weight_for(x, weight), (weight.shape[0],), geometry.stride, geometry.padding,
        geometry.dilation, False, _NO_OUTPUT_PADDING, geometry.groups, needs)
    if grad_weight is not None:
        # The gradient of a parameter has the parameter's layout, as in PyTorch.
        grad_weight = grad_weight.contiguous() if weight.is_contiguous() else grad_weight
    return grad_x, grad_weight, grad_bias


def max_pool2d(x, kernel, stride, padding, ceil_mode):
    # Nothing will differentiate this call: no indices (int64, twice the output's bytes in float32).
    return _max_pool2d(_pooled_layout(x), kernel, stride, padding, _NO_DILATION, ceil_mode)


def max_pool2d_with_argmax(x, kernel, stride, padding, ceil_mode):
    return _max_pool2d_with_indices(_pooled_layout(x), kernel, stride, padding, _NO_DILATION, ceil_mode)


def max_pool2d_backward(grad_out, x, kernel, stride, padding, ceil_mode, argmax=None):
    # A gradient in another layout than x's (a Flatten's NCHW one) costs PyTorch's backward
    # about 4x more than this copy of it.
    x, grad_out = _pooled_layout(x), _pooled_layout(grad_out)
    if argmax is None:
        argmax = _max_pool2d_with_indices(x, kernel, stride, padding, _NO_DILATION, ceil_mode)[1]
    return _max_pool2d_with_indices_backward(grad_out, x, kernel, stride, padding, _NO_DILATION, ceil_mode, argmax)
