"""Weights to PyTorch.

Parameters and buffers already carry PyTorch's names (``features.0.weight``,
``bn1.running_var``, ``bn1.num_batches_tracked``), so a portacnn model and
the same architecture written with ``torch.nn`` share a state dict: from
PyTorch, ``model.load_state_dict(torch_model.state_dict())``; to PyTorch,
``torch_model.load_state_dict(to_torch_state_dict(model))``.
"""

from __future__ import annotations

from collections import OrderedDict

from ._arrays import namespace_of
from .backends import dtype_name, to_numpy
from .errors import BackendError, UsageError

__all__ = ["to_torch_state_dict"]


def _import_torch():
    try:
        import torch
    except ImportError as error:
        raise BackendError("to_torch_state_dict needs PyTorch, which is not installed: pip install torch "
                           f"(import failed: {error})") from None
    return torch


def to_torch_state_dict(model) -> OrderedDict:
    """``model``'s parameters and buffers as an ``OrderedDict`` of CPU ``torch.Tensor`` copies, by PyTorch name.

    The result is what ``torch_module.load_state_dict`` takes for the same
    architecture written with ``torch.nn``: floating entries keep the model's
    dtype (bfloat16 included), BatchNorm's ``num_batches_tracked`` is int64.
    Every tensor is contiguous and shares no memory with the model, whatever
    backend or device the model is on.
    """
    if not hasattr(model, "state_dict") or not hasattr(model, "named_parameters"):
        raise UsageError(f"to_torch_state_dict takes a portacnn Module, got {type(model).__name__}; for a dict of "
                         "arrays, convert each with torch.from_numpy(portacnn.to_numpy(array))")
    torch = _import_torch()
    arrays = model.state_dict()
    names = [name for name in _torch_order(model) if name in arrays]
    names += [name for name in arrays if name not in set(names)]  # (none, unless a Module hides members)
    state = OrderedDict()
    for name in names:
        array = arrays[name]
        if dtype_name(array) == "bfloat16":  # NumPy has no bfloat16: cross as float32 (exact), cast back
            xp = namespace_of(array)
            host = to_numpy(xp.astype(array, xp.float32))
            state[name] = torch.from_numpy(host).to(torch.bfloat16).contiguous()
        else:
            # to_numpy returns a fresh host copy, so the tensor owns its memory.
            state[name] = torch.from_numpy(to_numpy(array)).contiguous()
    return state


def _torch_order(module, prefix=""):
    """The names in the order ``torch.nn.Module.state_dict`` lists them: each module's parameters, then its
    buffers, then its children's, depth first (``Module.state_dict`` lists all parameters before any buffer)."""
    from .nn import Buffer, Module, Parameter

    members = vars(module).items()
    yield from (prefix + name for name, value in members if isinstance(value, Parameter))
    yield from (prefix + name for name, value in members if isinstance(value, Buffer))
    for name, value in members:
        if isinstance(value, Module):
            yield from _torch_order(value, f"{prefix}{name}.")
