"""``Module``, ``Parameter`` and ``Buffer``: parameter discovery, train/eval, state dicts and device moves."""

from __future__ import annotations

from collections import namedtuple

import numpy

from .._arrays import namespace_of
from .._checks import check_flag
from ..autograd import Tensor
from ..autograd.tape import as_input
from ..backends import dtype_name, parse_spec, placement_of, to_device, to_numpy
from ..errors import CheckpointError, UsageError
from ._init import _FLOAT_NAMES, check_dtype_on


def _cast(data, current: str, cast: str, placement):
    """``data`` (of dtype ``current``) as ``cast`` on ``placement``: through the host, except that bfloat16,
    which NumPy lacks, is cast on the device (a float32 copy of it travels)."""
    if current == "bfloat16":
        data, current = namespace_of(data).astype(data, namespace_of(data).float32), "float32"
        if cast == "float32":
            return data
    if cast == "bfloat16":
        xp = placement.namespace
        moved = to_device(data if current == "float32" else to_numpy(data).astype(numpy.float32), placement)
        return xp.astype(moved, xp.bfloat16)
    return to_device(to_numpy(data).astype(cast), placement)


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


class IncompatibleKeys(namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])):
    """What ``load_state_dict`` returns, as PyTorch's: the model's names the state lacked, and the state's names
    the model lacks (both empty after a strict load)."""

    __slots__ = ()

    def __repr__(self):
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return super().__repr__()


#: Module classes registered as architectures (``portacnn.models.register``): their instances keep the
#: arguments they were built with, so that a checkpoint can rebuild them.
RECORDS_ARGUMENTS: set[type] = set()


class Module:
    """Base class: parameter discovery, train/eval, state dicts and device moves.

    Parameters, buffers and child modules are found among the instance
    attributes, in the order they were assigned, so a layer simply does
    ``self.weight = Parameter(...)``.
    """

    training = True

    def __new__(cls, *args, **kwargs):
        module = super().__new__(cls)
        if cls in RECORDS_ARGUMENTS:
            module._constructor_arguments = (args, kwargs)
        return module

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
        for _, module in self.named_modules():
            yield module

    def named_modules(self, prefix: str = ""):
        """``(dotted name, module)`` for this module ("") and every module inside it, each once, depth first."""
        seen = set()
        stack = [(prefix, self)]
        while stack:
            name, module = stack.pop()
            if id(module) in seen:
                continue
            seen.add(id(module))
            yield name, module
            children = [(f"{name}.{key}" if name else key, value) for key, value in vars(module).items()
                        if isinstance(value, Module)]
            stack.extend(reversed(children))

    def summary(self, input_shape, *, dtype=None) -> str:
        """Each layer's output shape and parameter count; see ``portacnn.summary``."""
        from ..summary import summary

        return summary(self, input_shape, dtype=dtype)

    def num_parameters(self, trainable_only: bool = False) -> int:
        """How many numbers the parameters hold (each shared parameter once); ``trainable_only`` skips frozen ones."""
        return sum(_size(p) for p in self.parameters() if p.requires_grad or not trainable_only)

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
        ``"torch:cuda:0"``; None means ``PORTACNN_BACKEND`` or numpy. The state
        an optimizer keeps for these parameters (momentum, moments) and their
        gradients move and cast with them, so training goes on after the move.
        """
        placement = parse_spec(spec)
        cast = None if dtype is None else check_dtype_on(dtype, placement)
        from ..optim import follow_moved_parameters

        for holder in self.parameters() + [b for _, b in self.named_buffers()]:
            data = holder.data
            # Only floating arrays take the new dtype: an integer buffer (a batch count) stays integer.
            current = dtype_name(data)
            if cast is not None and current in _FLOAT_NAMES and current != cast:
                data = _cast(data, current, cast, placement)
            holder.data = to_device(data, placement)
            if isinstance(holder, Parameter) and holder.grad is not None:
                holder.grad = to_device(holder.grad, placement)
                if holder.grad.dtype != holder.data.dtype:
                    holder.grad = placement.namespace.astype(holder.grad, holder.data.dtype)
        # An optimizer built before the move keeps state (momentum, moments) for these parameters: it follows.
        follow_moved_parameters(self.parameters())
        return self

    # -- state -------------------------------------------------------------

    def state_dict(self) -> dict:
        """Parameters and buffers by dotted name, as arrays on the model's backend.

        As in PyTorch, a parameter shared by two layers appears under both names.
        """
        state = {name: p.data for name, p in self._named_members(Parameter)}
        state.update({name: b.data for name, b in self._named_members(Buffer)})
        return state

    def load_state_dict(self, state: dict, strict: bool = True) -> IncompatibleKeys:
        """Copy arrays (any backend, e.g. NumPy from a checkpoint) into this model.

        Names and shapes must match exactly; every mismatch is listed in one
        error. Arrays are moved to each parameter's current device and cast to
        its dtype. A PyTorch ``state_dict()`` of the same architecture loads as
        it is (torch tensors on any device; ``num_batches_tracked`` stays an
        integer). With ``strict=False`` entries the model lacks are skipped and
        parameters the state lacks keep their values, as in PyTorch; a wrong
        shape or dtype kind is still an error. Returns ``IncompatibleKeys``
        (``missing_keys``, ``unexpected_keys``).
        """
        strict = check_flag(strict, "load_state_dict strict")
        if not hasattr(state, "keys") or not hasattr(state, "__getitem__"):
            raise CheckpointError(
                f"load_state_dict takes a dict of arrays by parameter name (e.g. model.state_dict() or "
                f"load_checkpoint(path)['model']), got {type(state).__name__}")
        own = dict(self._named_members(Parameter))
        own.update(self._named_members(Buffer))
        # A strict load refuses anything in the state that is not an array; a lax one only what it would load.
        not_arrays = sorted(name for name in state if (strict or name in own) and not (
            hasattr(state[name], "shape") and hasattr(state[name], "dtype")))
        if not_arrays:
            raise CheckpointError(f"state dict entries are not arrays: {', '.join(map(str, not_arrays))}")
        result = IncompatibleKeys([name for name in own if name not in state],
                                  [name for name in state if name not in own])
        missing, unexpected = (sorted(result.missing_keys), sorted(result.unexpected_keys)) if strict else ((), ())
        mis_shaped = [
            f"{name}: checkpoint {tuple(state[name].shape)} vs model {tuple(own[name].data.shape)}"
            for name in own
            if name in state and tuple(state[name].shape) != tuple(own[name].data.shape)
        ]
        # A floating parameter or buffer takes only floating values; an integer buffer (BatchNorm's
        # num_batches_tracked) takes only integer ones.
        integer = {name for name in own if dtype_name(own[name].data) not in _FLOAT_NAMES
                   and numpy.dtype(dtype_name(own[name].data)).kind in "iu"}
        not_float = [f"{name}: {state[name].dtype}" for name in own
                     if name in state and name not in integer and "float" not in str(state[name].dtype)]
        not_int = [f"{name}: {state[name].dtype}" for name in integer
                   if name in state and not _is_integer_dtype(state[name].dtype)]
        problems = []
        if not_float:
            problems.append(f"not floating point: {'; '.join(not_float)}")
        if not_int:
            problems.append(f"not integer: {'; '.join(not_int)}")
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
            if name not in state:  # only after a lax load
                continue
            dtype, value = dtype_name(holder.data), state[name]
            if dtype == "bfloat16" or dtype_name(value) == "bfloat16":  # NumPy has none: cast on the device
                # (the model's placement, taken before the cast: a torch bfloat16 value casts on torch)
                placement = placement_of(holder.data)
                holder.data = to_device(_cast(value, dtype_name(value), dtype, placement), placement)
                continue
            value = to_numpy(value).astype(numpy.dtype(dtype), copy=False)
            holder.data = to_device(value, placement_of(holder.data))
        return result

    def extra_repr(self) -> str:
        return ""

    def __repr__(self):
        children = [(n, m) for n, m in vars(self).items() if isinstance(m, Module)]
        if not children:
            return f"{type(self).__name__}({self.extra_repr()})"
        lines = [f"  ({n}): " + repr(m).replace("\n", "\n  ") for n, m in children]
        return f"{type(self).__name__}(\n" + "\n".join(lines) + "\n)"


def _is_integer_dtype(dtype) -> bool:
    """Whether an array dtype of any backend (NumPy, torch, JAX, ...) is a (non-bool) integer type."""
    name = str(dtype).rsplit(".", 1)[-1]
    return name.startswith(("int", "uint"))


def array_of(value):
    """The array inside a Tensor argument (a layer's ``forward`` may also be given plain arrays)."""
    return value.data if isinstance(value, Tensor) else value


def _size(parameter) -> int:
    size = 1
    for extent in parameter.data.shape:
        size *= extent
    return size
