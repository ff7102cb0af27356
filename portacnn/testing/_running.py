"""What gradcheck and assert_backends_agree share: turning "a thing to test" into a runner on one backend."""

from __future__ import annotations

import copy
import inspect

import numpy

from ..autograd import Function, Tensor
from ..backends import parse_spec, to_device, to_numpy
from ..nn import Module


def is_float(host: numpy.ndarray) -> bool:
    return host.dtype.kind == "f"


def host_copy(value) -> numpy.ndarray:
    """A fresh NumPy copy of an input given as a host array, a backend array, a Tensor or a number."""
    if isinstance(value, Tensor):
        value = value.data
    if isinstance(value, numpy.ndarray) or numpy.isscalar(value):
        return numpy.array(value, copy=True)
    return to_numpy(value)


def _is_model_factory(candidate) -> bool:
    """A callable that builds a model from ``device=`` and ``dtype=`` (and needs nothing else)."""
    try:
        parameters = inspect.signature(candidate).parameters
    except (TypeError, ValueError):
        return False
    if "device" not in parameters or "dtype" not in parameters:
        return False
    return all(p.default is not inspect.Parameter.empty or name in ("device", "dtype")
               or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for name, p in parameters.items())


class Subject:
    """The code under test, on one backend and dtype: ``run(*tensors)`` and its named parameters."""

    def __init__(self, target, spec, dtype: str, state: dict | None = None):
        self.model = None
        if isinstance(target, type) and issubclass(target, Function):
            self.run = target.apply
            self.what = target.__name__
        else:
            if isinstance(target, Module):
                model = copy.deepcopy(target).to(parse_spec(spec), dtype=dtype)
            elif isinstance(target, type) and issubclass(target, Module) or _is_model_factory(target):
                model = target(device=parse_spec(spec).spec, dtype=dtype)
                if not isinstance(model, Module):
                    raise TypeError(f"{getattr(target, '__name__', target)!r} was called as a model factory "
                                    f"(device=, dtype=) but returned a {type(model).__name__}, not a Module")
                model.to(parse_spec(spec), dtype=dtype)
            else:
                model = None
            if model is not None:
                if state is not None:
                    model.load_state_dict(state)
                self.model = model
                self.run = model
                self.what = type(model).__name__
            else:
                self.run = target
                self.what = getattr(target, "__name__", type(target).__name__)

    def named_parameters(self):
        if self.model is None:
            return []
        return [(name, p) for name, p in self.model.named_parameters() if p.requires_grad]


def as_outputs(result) -> tuple:
    """The Tensor outputs of a call, as a tuple (non-Tensors are not differentiated and are left out)."""
    if isinstance(result, Tensor):
        return (result,)
    if isinstance(result, (tuple, list)):
        return tuple(r for r in result if isinstance(r, Tensor))
    raise TypeError(f"the function under test must return a Tensor or a tuple of Tensors, got {type(result).__name__}")


def put(host: numpy.ndarray, spec, dtype: str, *, read_only: bool = False):
    """``host`` on ``spec``, floats cast to ``dtype``; a fresh array (read-only when asked, on NumPy)."""
    array = host.astype(dtype) if is_float(host) else numpy.array(host, copy=True)
    placement = parse_spec(spec)
    if placement.backend == "numpy" and read_only:
        array.flags.writeable = False
    return to_device(array, placement)
