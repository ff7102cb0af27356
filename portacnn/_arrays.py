"""The one place the math asks which namespace and device its inputs live on.

The rest of the library never imports an array library: it calls
``namespace_of(...)`` and uses the namespace it gets back.
"""

from __future__ import annotations

import math

import array_api_compat

from .errors import BackendMismatchError, DTypeError


def describe_array(x) -> str:
    """A short human label such as ``numpy array on cpu`` for error messages."""
    module = type(x).__module__.split(".")[0]
    try:
        where = array_api_compat.device(x)
    except Exception:  # noqa: BLE001 - a label must never raise
        where = "?"
    return f"{module} array on {where}"


# array_namespace inspects its arguments on every call; the answer depends
# only on the array type, and the math asks it for every op, so it is cached.
_NAMESPACE_BY_TYPE: dict[type, object] = {}
# Array types whose library has a single device (NumPy's "cpu"): two of them
# are always on the same device, so that check is skipped for them.
_SINGLE_DEVICE_TYPES: set[type] = set()
# Array types whose ``.device`` attribute is the standard's: read directly, it
# costs a tenth of ``array_api_compat.device``, which first asks which of the
# libraries that lack one (NumPy < 2, chunked arrays, traced JAX) the array comes from.
_DEVICE_ATTRIBUTE_TYPES: set[type] = set()


def _label(names, index: int) -> str:
    return names[index] if names else f"argument {index}"


def _new_namespace(array, index: int, names):
    if not array_api_compat.is_array_api_obj(array):
        raise DTypeError(
            f"{_label(names, index)} must be an array, got {type(array).__name__}; "
            "convert it first, e.g. portacnn.to_device(numpy.asarray(value), 'numpy')"
        )
    namespace = array_api_compat.array_namespace(array)
    _NAMESPACE_BY_TYPE[type(array)] = namespace
    if array_api_compat.is_numpy_namespace(namespace):
        _SINGLE_DEVICE_TYPES.add(type(array))
    elif any(is_library(namespace) for is_library in (array_api_compat.is_torch_namespace,
                                                      array_api_compat.is_cupy_namespace,
                                                      array_api_compat.is_array_api_strict_namespace)):
        _DEVICE_ATTRIBUTE_TYPES.add(type(array))
    return namespace


def namespace_of(*arrays, names: tuple[str, ...] | None = None):
    """Return the array-API namespace shared by ``arrays`` (``None`` entries skipped).

    Raises ``BackendMismatchError`` naming both sides when the arrays come from
    different libraries or sit on different devices, and ``TypeError`` when an
    argument is not an array at all (a list, a scalar).
    """
    first = first_index = first_namespace = None
    for index, array in enumerate(arrays):
        if array is None:
            continue
        kind = type(array)
        namespace = _NAMESPACE_BY_TYPE.get(kind)
        if namespace is None:
            namespace = _new_namespace(array, index, names)
        if first is None:
            first, first_index, first_namespace = array, index, namespace
        elif namespace is not first_namespace or (
                kind not in _SINGLE_DEVICE_TYPES and device_of(array) != device_of(first)):
            raise BackendMismatchError(
                f"{_label(names, first_index)} is a {describe_array(first)} but {_label(names, index)} is a "
                f"{describe_array(array)}; move both to one place first, e.g. "
                "model.to(spec) and portacnn.to_device(batch, spec)"
            )
    if first is None:
        raise TypeError("namespace_of needs at least one array")
    return first_namespace


# Per array type, whether its backend declares ``writable_views`` (see
# backends/_base.py); types no backend owns take the standard's generic path.
_WRITABLE_VIEWS_BY_TYPE: dict[type, bool] = {}


def writes_through_views(x) -> bool:
    """Whether an in-place operator on a slice of ``x`` updates ``x`` itself (NumPy, CuPy, torch)."""
    return _backend_flag(x, "writable_views", _WRITABLE_VIEWS_BY_TYPE)


def _backend_flag(x, flag: str, cache: dict) -> bool:
    """The capability ``flag`` of the backend owning ``x``'s type (False for types no backend owns), cached."""
    value = cache.get(type(x))
    if value is None:
        from .backends import get_backend, placement_of
        from .errors import PortacnnError

        try:
            value = bool(getattr(get_backend(placement_of(x).backend), flag))
        except PortacnnError:
            value = False
        cache[type(x)] = value
    return value


# Per array type, the module of kernels its backend ships (``native_kernels``
# in backends/_base.py), or None for the generic math. Conv and max pooling
# ask on every call, so the answer, None included, is cached.
_NATIVE_KERNELS_BY_TYPE: dict[type, object] = {}
# True inside portacnn.functional._native.generic_only(), which empties the
# cache on the way in and out, so the hot path never reads this.
_generic_only = False


def native_kernels_for(x):
    """The module of fused kernels for ``x``'s backend (``portacnn.functional._native.torch``), or None."""
    try:
        return _NATIVE_KERNELS_BY_TYPE[type(x)]
    except KeyError:
        return _find_native_kernels(x)


def _find_native_kernels(x):
    from .backends import get_backend, placement_of
    from .errors import PortacnnError

    kernels = None
    if not _generic_only:
        try:
            name = placement_of(x).backend
            if get_backend(name).native_kernels:
                import importlib

                kernels = importlib.import_module(f"portacnn.functional._native.{name}")
        except PortacnnError:  # a type no backend owns takes the generic path (and fails there, clearly)
            kernels = None
    _NATIVE_KERNELS_BY_TYPE[type(x)] = kernels
    return kernels


# Per array type, whether its backend compiles whole steps (``compiles_steps``:
# JAX). Such a library fuses chains of slices and copies into one loop, so the
# math may spend extra intermediate arrays to issue fewer, larger ops.
_FUSES_OPS_BY_TYPE: dict[type, bool] = {}


def fuses_ops(x) -> bool:
    """Whether ``x``'s library compiles programs and fuses their elementwise work (JAX, under ``jax.jit``)."""
    return _backend_flag(x, "compiles_steps", _FUSES_OPS_BY_TYPE)


def device_of(x):
    if type(x) in _DEVICE_ATTRIBUTE_TYPES:
        return x.device
    return array_api_compat.device(x)


def is_floating(xp, x) -> bool:
    return xp.isdtype(x.dtype, "real floating")


# --------------------------------------------------------------------------
# unknown sizes
#
# The standard lets a lazy library report a size it does not know yet as
# None in ``x.shape``: ndonnx does for the batch of an ONNX graph built for any
# batch size. The math reshapes with -1, reads only the sizes it needs, and
# takes a size it needs but cannot read (a mean's divisor, a zero array's
# batch) from the data, with the helpers below. Given arrays whose sizes are
# all known they cost one ``None in shape`` test and return what they did.


def reshape_sizes(shape) -> tuple:
    """``shape`` for ``xp.reshape``: an unknown size (None) becomes -1, so at most one may be unknown."""
    if None not in shape:
        return tuple(shape)
    return tuple(-1 if size is None else size for size in shape)


def with_sizes(xp, y, shape):
    """``y``, reshaped to ``shape`` (None: unknown) where ``y.shape`` lacks sizes that ``shape`` states.

    A lazy library may lose track of sizes an op knows (ndonnx's ``max`` over
    an axis, a batched ``matmul``); the next op may need them (a conv's
    channels), and a reshape states them again.
    """
    if None not in y.shape or tuple(y.shape) == tuple(shape) or list(shape).count(None) > 1:
        return y
    return xp.reshape(y, reshape_sizes(shape))


def count(xp, x, axes=None):
    """How many elements of ``x`` lie along ``axes`` (all axes when None).

    An int when those sizes are known; where one is unknown (None), a 0-d
    array of ``x``'s dtype counted from the data, which the graph computes.
    """
    shape = x.shape
    sizes = shape if axes is None else tuple(map(shape.__getitem__, axes))
    if None not in sizes:
        return math.prod(sizes)
    ndim = len(shape)
    unknown = {axis % ndim for axis in (range(ndim) if axes is None else axes) if shape[axis] is None}
    sample = x[tuple(slice(None) if axis in unknown else 0 for axis in range(ndim))]
    counted = xp.sum(xp.ones_like(sample, dtype=xp.int64)) * math.prod(size for size in sizes if size is not None)
    return xp.astype(counted, x.dtype)


def full(xp, shape, fill_value, *, dtype, device, like):
    """``xp.full(shape, fill_value)``, where an unknown size (None) in ``shape`` is taken from
    the same axis of ``like`` (an array of ``len(shape)`` axes), by adding a zero slice of it."""
    if None not in shape:
        return xp.full(shape, fill_value, dtype=dtype, device=device)
    sample = like[tuple(slice(None) if size is None else slice(0, 1) for size in shape)]
    known = tuple(1 if size is None else size for size in shape)
    filled = xp.full(known, fill_value, dtype=dtype, device=device) + xp.zeros_like(sample, dtype=dtype)
    return with_sizes(xp, filled, shape)
