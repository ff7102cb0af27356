"""Layers, named as a PyTorch user expects: a layer needs only ``__init__`` and ``forward``.

Calling a layer on Tensors (or on a plain backend array, taken as a constant
input) runs the ``functional`` ops on the tape and returns a Tensor;
``loss.backward()`` then fills every parameter's ``grad`` (see
``portacnn.autograd``). Parameters are leaf Tensors whose ``data`` is
*rebound* by optimizers, never written in place.

Parameters are drawn on the host from a seeded ``numpy.random.Generator`` and
then moved to the backend, so one seed gives bit-identical weights everywhere.
"""

from __future__ import annotations

import math
import numbers

import numpy

from . import functional as F
from ._arrays import namespace_of
from ._host_random import host_generator
from .autograd import Tensor
from .autograd.tape import as_input
from .backends import dtype_name, parse_spec, placement_of, to_device, to_numpy
from .errors import (ArgumentError, ArgumentTypeError, CheckpointError, DTypeError, PortacnnError, ShapeError,
                     UsageError)

__all__ = [
    "Parameter", "Buffer", "Module", "Conv2d", "MaxPool2d", "AvgPool2d", "LPPool2d", "Linear",
    "ReLU", "Sigmoid", "Tanh", "Flatten", "Dropout", "BatchNorm2d", "Sequential", "CrossEntropyLoss",
]


class Parameter(Tensor):
    """A trainable leaf Tensor: ``data`` is a backend array, ``grad`` its accumulated gradient (or None).

    ``requires_grad`` is True unless switched off (``requires_grad_(False)``
    freezes it: no gradient is computed for it and optimizers skip it).
    """

    __slots__ = ()

    def __init__(self, data, requires_grad: bool = True):
        super().__init__(data, requires_grad=requires_grad)

    def __repr__(self):
        frozen = "" if self.requires_grad else ", requires_grad=False"
        return f"Parameter(shape={self.shape}, dtype={self.dtype}{frozen})"


class Buffer:
    """A non-trainable array saved with the model (e.g. batch-norm running statistics)."""

    __slots__ = ("data",)

    def __init__(self, data):
        self.data = data


def _host_dtype(dtype) -> numpy.dtype:
    try:
        resolved = numpy.dtype(str(dtype).rsplit(".", 1)[-1] if not isinstance(dtype, type) else dtype)
    except (TypeError, ValueError):
        resolved = None
    if resolved not in (numpy.float32, numpy.float64):
        raise DTypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return resolved


def _positive_int(value, name: str, layer: str) -> int:
    """A layer size (channels, features): a positive int; raises ``ArgumentError`` naming the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{layer}: {name} must be a positive int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ArgumentError(f"{layer}: {name} must be a positive int (at least 1), got {value!r}")
    return int(value)


class Module:
    """Base class: parameter discovery, train/eval, state dicts and device moves.

    Parameters, buffers and child modules are found among the instance
    attributes, in the order they were assigned, so a layer simply does
    ``self.weight = Parameter(...)``.
    """

    training = True

    def forward(self, *inputs):
        raise NotImplementedError(f"{type(self).__name__} must define forward(self, x)")

    def backward(self, *args, **kwargs):
        raise UsageError(
            "layers no longer have their own backward: the graph is recorded as the model runs, so compute the "
            "loss and call loss.backward(), e.g. loss = CrossEntropyLoss()(model(x), y); loss.backward()")

    def __call__(self, *inputs, **options):
        if len(inputs) == 1 and isinstance(inputs[0], Tensor):  # the common case, kept fast
            return self.forward(inputs[0], **options)
        return self.forward(*[as_input(value) for value in inputs], **options)

    # -- discovery ---------------------------------------------------------

    def _named_members(self, kind, prefix="", seen=None):
        """``(dotted name, member)`` pairs; with a ``seen`` set, each member only under its first name."""
        for name, value in vars(self).items():
            if isinstance(value, kind):
                if seen is not None:
                    if id(value) in seen:
                        continue
                    seen.add(id(value))
                yield prefix + name, value
            elif isinstance(value, Module):
                yield from value._named_members(kind, f"{prefix}{name}.", seen)

    def named_parameters(self):
        """Each parameter once, under the first name it is found by (a layer used twice counts once)."""
        return list(self._named_members(Parameter, seen=set()))

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self):
        return list(self._named_members(Buffer, seen=set()))

    def modules(self):
        """This module and every module inside it, each once."""
        seen = set()
        stack = [self]
        while stack:
            module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield module
            stack.extend(reversed([v for v in vars(module).values() if isinstance(v, Module)]))

    def zero_grad(self):
        for p in self.parameters():
            p.grad = None

    def requires_grad_(self, requires_grad: bool = True):
        """Freeze (False) or unfreeze every parameter; a frozen one gets no gradient and no update."""
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def train(self, mode: bool = True):
        for module in self.modules():
            module.training = mode
        return self

    def eval(self):
        return self.train(False)

    # -- placement ---------------------------------------------------------

    def to(self, spec=None, dtype=None):
        """Move (and optionally cast) every parameter and buffer; returns ``self``.

        ``spec`` is a backend specifier such as ``"numpy"``, ``"cupy:0"`` or
        ``"torch:cuda:0"``; None means ``PORTACNN_BACKEND`` or numpy.
        """
        cast = None if dtype is None else _host_dtype(dtype)
        placement = parse_spec(spec)
        for holder in self.parameters() + [b for _, b in self.named_buffers()]:
            data = holder.data
            if cast is not None and numpy.dtype(dtype_name(data)) != cast:
                data = to_device(to_numpy(data).astype(cast), placement)
            holder.data = to_device(data, placement)
            if isinstance(holder, Parameter) and holder.grad is not None:
                holder.grad = to_device(holder.grad, placement)
        return self

    # -- state -------------------------------------------------------------

    def state_dict(self) -> dict:
        """Parameters and buffers by dotted name, as arrays on the model's backend.

        As in PyTorch, a parameter shared by two layers appears under both names.
        """
        state = {name: p.data for name, p in self._named_members(Parameter)}
        state.update({name: b.data for name, b in self._named_members(Buffer)})
        return state

    def load_state_dict(self, state: dict) -> None:
        """Copy arrays (any backend, e.g. NumPy from a checkpoint) into this model.

        Names and shapes must match exactly; every mismatch is listed in one
        error. Arrays are moved to each parameter's current device and cast to
        its dtype.
        """
        if not hasattr(state, "keys") or not hasattr(state, "__getitem__"):
            raise CheckpointError(
                f"load_state_dict takes a dict of arrays by parameter name (e.g. model.state_dict() or "
                f"load_checkpoint(path)['model']), got {type(state).__name__}")
        own = dict(self._named_members(Parameter))
        own.update(self._named_members(Buffer))
        not_arrays = sorted(name for name in state if not (hasattr(state[name], "shape")
                                                             and hasattr(state[name], "dtype")))
        if not_arrays:
            raise CheckpointError(f"state dict entries are not arrays: {', '.join(map(str, not_arrays))}")
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        mis_shaped = [
            f"{name}: checkpoint {tuple(state[name].shape)} vs model {tuple(own[name].data.shape)}"
            for name in own
            if name in state and tuple(state[name].shape) != tuple(own[name].data.shape)
        ]
        not_float = [f"{name}: {state[name].dtype}" for name in own
                     if name in state and "float" not in str(state[name].dtype)]
        problems = []
        if not_float:
            problems.append(f"not floating point: {'; '.join(not_float)}")
        if missing:
            problems.append(f"missing: {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected: {', '.join(unexpected)}")
        if mis_shaped:
            problems.append(f"wrong shape: {'; '.join(mis_shaped)}")
        if problems:
            question = "; was it saved from a different architecture?" if missing or unexpected or mis_shaped else ""
            raise CheckpointError("state dict does not fit this model (" + " | ".join(problems) + ")" + question)
        for name, holder in own.items():
            dtype = numpy.dtype(dtype_name(holder.data))
            value = to_numpy(state[name]).astype(dtype, copy=False)
            holder.data = to_device(value, placement_of(holder.data))

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        children = [(n, m) for n, m in vars(self).items() if isinstance(m, Module)]
        if not children:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"  ({n}): " + repr(m).replace("\n", "\n  ") for n, m in children]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


def _new_parameter(host_array, dtype, device):
    return Parameter(to_device(host_array.astype(_host_dtype(dtype)), parse_spec(device)))


def _he_normal(rng, shape, fan_in):
    return rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)


def _glorot_uniform(rng, shape, fan_in, fan_out):
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape)


def _init_weight(rng, shape, fan_in, fan_out, init):
    if init == "he":
        return _he_normal(rng, shape, fan_in)
    if init == "glorot":
        return _glorot_uniform(rng, shape, fan_in, fan_out)
    raise ArgumentError(f"init must be 'he' (before ReLU) or 'glorot' (before sigmoid/tanh/softmax), got {init!r}")


def _data(value):
    """The array inside a Tensor argument (a layer's ``forward`` may also be given plain arrays)."""
    return value.data if isinstance(value, Tensor) else value


# --------------------------------------------------------------------------
# layers with parameters


class Conv2d(Module):
    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, bias=True,
                 *, init="he", rng=None, dtype="float32", device=None):
        in_channels = _positive_int(in_channels, "in_channels", "Conv2d")
        out_channels = _positive_int(out_channels, "out_channels", "Conv2d")
        kernel = F._pair(kernel_size, "kernel_size", minimum=1)
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel
        self.stride = F._pair(stride, "stride", minimum=1)
        self.padding = F._pair(padding, "padding", minimum=0)
        self.dilation = F._pair(dilation, "dilation", minimum=1)
        generator = host_generator(rng)
        fan_in, fan_out = in_channels * kernel[0] * kernel[1], out_channels * kernel[0] * kernel[1]
        shape = (out_channels, in_channels, *kernel)
        self.weight = _new_parameter(_init_weight(generator, shape, fan_in, fan_out, init), dtype, device)
        self.bias = _new_parameter(numpy.zeros(out_channels), dtype, device) if bias else None

    def forward(self, x):
        return F.conv2d(x, self.weight, self.bias, stride=self.stride, padding=self.padding, dilation=self.dilation)

    def extra_repr(self):
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
                f"padding={self.padding}, dilation={self.dilation}, bias={self.bias is not None}")


class Linear(Module):
    def __init__(self, in_features, out_features, bias=True, *, init="he", rng=None, dtype="float32", device=None):
        in_features = _positive_int(in_features, "in_features", "Linear")
        out_features = _positive_int(out_features, "out_features", "Linear")
        self.in_features, self.out_features = in_features, out_features
        generator = host_generator(rng)
        weight = _init_weight(generator, (out_features, in_features), in_features, out_features, init)
        self.weight = _new_parameter(weight, dtype, device)
        self.bias = _new_parameter(numpy.zeros(out_features), dtype, device) if bias else None

    def forward(self, x):
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self):
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class BatchNorm2d(Module):
    """Batch normalisation over (N, H, W) per channel, with running statistics for eval."""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, *, dtype="float32", device=None):
        num_features = _positive_int(num_features, "num_features", "BatchNorm2d")
        F._check_number(eps, "BatchNorm2d eps", low=0.0, low_inclusive=False)
        F._check_number(momentum, "BatchNorm2d momentum", low=0.0, high=1.0)
        self.num_features, self.eps, self.momentum = num_features, eps, momentum
        self.weight = _new_parameter(numpy.ones(num_features), dtype, device) if affine else None
        self.bias = _new_parameter(numpy.zeros(num_features), dtype, device) if affine else None
        placement = parse_spec(device)
        host_dtype = _host_dtype(dtype)
        self.running_mean = Buffer(to_device(numpy.zeros(num_features, dtype=host_dtype), placement))
        self.running_var = Buffer(to_device(numpy.ones(num_features, dtype=host_dtype), placement))

    def forward(self, x):
        namespace_of(_data(x), names=("x",))
        if x.ndim != 4:
            raise ShapeError(f"BatchNorm2d expects (N, C, H, W) input, got shape {tuple(x.shape)}"
                             + F._ndim_hint(x.ndim, 4))
        y, self.running_mean.data, self.running_var.data = F.batch_norm(
            x, self.running_mean.data, self.running_var.data, self.weight, self.bias,
            training=self.training, momentum=self.momentum, eps=self.eps)
        return y

    def extra_repr(self):
        return f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, affine={self.weight is not None}"


# --------------------------------------------------------------------------
# layers without parameters


def _check_pool_arguments(layer: str, kernel_size, stride, padding=0) -> None:
    kernel = F._pair(kernel_size, f"{layer} kernel_size", minimum=1)
    if stride is not None:
        F._pair(stride, f"{layer} stride", minimum=1)
    F._check_pool_padding(F._pair(padding, f"{layer} padding", minimum=0), kernel, layer)


class MaxPool2d(Module):
    def __init__(self, kernel_size, stride=None, padding=0):
        _check_pool_arguments(type(self).__name__, kernel_size, stride, padding)
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding

    def forward(self, x):
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding)

    def extra_repr(self):
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(MaxPool2d):
    def forward(self, x):
        return F.avg_pool2d(x, self.kernel_size, self.stride, self.padding)


class LPPool2d(Module):
    """Power-mean pooling (see ``functional.lp_pool2d``); p=1 is average, p=inf is max pooling."""

    def __init__(self, norm_type, kernel_size, stride=None):
        F._check_lp_norm(norm_type)
        _check_pool_arguments("LPPool2d", kernel_size, stride)
        self.norm_type, self.kernel_size, self.stride = norm_type, kernel_size, stride

    def forward(self, x):
        return F.lp_pool2d(x, self.norm_type, self.kernel_size, self.stride)

    def extra_repr(self):
        return f"norm_type={self.norm_type}, kernel_size={self.kernel_size}, stride={self.stride}"


class ReLU(Module):
    def forward(self, x):
        return F.relu(x)


class Sigmoid(Module):
    def forward(self, x):
        return F.sigmoid(x)


class Tanh(Module):
    def forward(self, x):
        return F.tanh(x)


class Flatten(Module):
    """(N, C, H, W) → (N, C*H*W)."""

    def forward(self, x):
        namespace_of(_data(x), names=("x",))
        if x.ndim < 2:
            raise ShapeError(f"Flatten expects a batch of at least 2-D shape (N, ...), got shape {tuple(x.shape)}")
        if x.shape[0] == 0:
            raise ShapeError(f"Flatten input is an empty batch (shape {tuple(x.shape)}); pass at least one sample")
        # -1 for the batch: the one size a lazy library may not know yet.
        return as_input(x).reshape(-1, math.prod(x.shape[1:]))


class Dropout(Module):
    """Zeroes each element with probability ``p`` in training, scaling the rest by 1/(1-p).

    Masks are drawn on the host from this layer's own seeded generator, so a
    seed gives the same masks, and the same training run, on every backend.
    """

    def __init__(self, p=0.5, *, rng=None):
        F._check_probability(p, "Dropout probability p")
        self.p = p
        self.rng = host_generator(rng)

    def forward(self, x):
        F._require_float(namespace_of(_data(x), names=("x",)), _data(x), "Dropout input x")
        if not self.training or self.p == 0.0:
            return x
        return F.dropout(x, self.p, mask=F.dropout_mask(x.shape, self.p, self.rng))

    def extra_repr(self):
        return f"p={self.p}"


class Sequential(Module):
    def __init__(self, *layers):
        for index, layer in enumerate(layers):
            if not isinstance(layer, Module):
                raise ArgumentTypeError(
                    f"Sequential takes layers (Module instances), argument {index} is {type(layer).__name__}"
                    + ("; create it first, e.g. ReLU() rather than ReLU" if isinstance(layer, type) else ""))
            setattr(self, str(index), layer)

    @property
    def layers(self):
        return [m for m in vars(self).values() if isinstance(m, Module)]

    def __getitem__(self, index):
        return self.layers[index]

    def __len__(self):
        return len(self.layers)

    def forward(self, x):
        x = as_input(x)
        for index, layer in enumerate(self.layers):
            try:
                x = layer.forward(x)
            except PortacnnError as error:
                # Say which layer refused its input; the error keeps its type and traceback.
                error.args = (f"layer {index} ({type(layer).__name__}): {error}", *error.args[1:])
                raise
        return x


class CrossEntropyLoss(Module):
    """Mean cross-entropy of integer labels: ``loss = CrossEntropyLoss()(logits, labels); loss.backward()``.

    ``check_labels`` (default True) makes it refuse labels outside
    ``[0, num_classes)``; see ``functional.cross_entropy`` for its cost (one
    reduction, and a device sync on GPUs).
    """

    def __init__(self, *, check_labels: bool = True):
        self.check_labels = bool(check_labels)

    def forward(self, logits, labels):
        return F.cross_entropy(logits, labels, check_labels=self.check_labels)
