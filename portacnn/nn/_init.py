"""Parameter initialisation on the host.

Parameters are drawn from a seeded ``numpy.random.Generator`` and then moved
to the backend, so one seed gives bit-identical weights everywhere.
"""

from __future__ import annotations

import math

import numpy

from ..backends import parse_spec, to_device
from ..errors import ArgumentError, DTypeError


_FLOAT_NAMES = ("float16", "bfloat16", "float32", "float64")
#: The built-in backends whose namespace has a bfloat16 (NumPy, CuPy and array-api-strict have none),
#: named in the error; a plugged-in backend has it when its namespace does.
BFLOAT16_BACKENDS = ("torch", "jax")


def dtype_choice(dtype) -> str:
    """The name of a parameter dtype: 'float16', 'bfloat16', 'float32' or 'float64' (names or dtype objects)."""
    name = None
    if isinstance(dtype, str) or not isinstance(dtype, type):
        name = str(dtype).rsplit(".", 1)[-1]  # "float32", numpy.float32's dtype, torch.bfloat16, ...
    if name not in _FLOAT_NAMES:
        try:
            name = numpy.dtype(dtype).name
        except (TypeError, ValueError):
            name = None
    if name not in _FLOAT_NAMES:
        raise DTypeError(f"dtype must be 'float16', 'bfloat16', 'float32' or 'float64', got {dtype!r}")
    return name


def host_dtype(dtype) -> numpy.dtype:
    """The NumPy dtype a parameter of ``dtype`` is built in on the host: bfloat16 goes through float32."""
    name = dtype_choice(dtype)
    return numpy.dtype("float32" if name == "bfloat16" else name)


def check_dtype_on(dtype, placement) -> str:
    """``dtype``'s name, after checking that ``placement``'s backend has it."""
    name = dtype_choice(dtype)
    # Ask the namespace, not a list of names, so a plugged-in backend with a bfloat16 gets to use it.
    if name == "bfloat16" and getattr(placement.namespace, "bfloat16", None) is None:
        raise DTypeError(f"{placement.spec} has no bfloat16 (of the built-in backends only "
                         f"{' and '.join(BFLOAT16_BACKENDS)} do); use float16 or float32 there, or a torch or jax "
                         "backend")
    return name


def place(host_array, dtype, placement):
    """``host_array`` (NumPy) cast to ``dtype`` and moved to ``placement``.

    bfloat16 has no NumPy dtype: a float32 copy is moved and cast on the device.
    """
    name = check_dtype_on(dtype, placement)
    if name != "bfloat16":
        return to_device(host_array.astype(name), placement)
    xp = placement.namespace
    return xp.astype(to_device(host_array.astype(numpy.float32), placement), xp.bfloat16)


def new_parameter(host_array, dtype, device):
    from .module import Parameter

    return Parameter(place(host_array, dtype, parse_spec(device)))


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
