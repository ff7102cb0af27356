"""Parameter initialisation on the host.

Parameters are drawn from a seeded ``numpy.random.Generator`` and then moved
to the backend, so one seed gives bit-identical weights everywhere.
"""

from __future__ import annotations

import math

import numpy

from ..backends import parse_spec, to_device
from ..errors import ArgumentError, DTypeError


def host_dtype(dtype) -> numpy.dtype:
    try:
        resolved = numpy.dtype(str(dtype).rsplit(".", 1)[-1] if not isinstance(dtype, type) else dtype)
    except (TypeError, ValueError):
        resolved = None
    if resolved not in (numpy.float32, numpy.float64):
        raise DTypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return resolved


def new_parameter(host_array, dtype, device):
    from .module import Parameter

    return Parameter(to_device(host_array.astype(host_dtype(dtype)), parse_spec(device)))


def _he_normal(rng, shape, fan_in):
    return rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)


def _glorot_uniform(rng, shape, fan_in, fan_out):
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, shape)


def init_weight(rng, shape, fan_in, fan_out, init):
    if init == "he":
        return _he_normal(rng, shape, fan_in)
    if init == "glorot":
        return _glorot_uniform(rng, shape, fan_in, fan_out)
    raise ArgumentError(f"init must be 'he' (before ReLU) or 'glorot' (before sigmoid/tanh/softmax), got {init!r}")
