"""The one place the math asks which namespace and device its inputs live on.

The rest of the library never imports an array library: it calls
``namespace_of(...)`` and uses the namespace it gets back.
"""

from __future__ import annotations

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


def _namespace_of_one(array):
    kind = type(array)
    namespace = _NAMESPACE_BY_TYPE.get(kind)
    if namespace is None:
        namespace = array_api_compat.array_namespace(array)
        _NAMESPACE_BY_TYPE[kind] = namespace
    return namespace


def namespace_of(*arrays, names: tuple[str, ...] | None = None):
    """Return the array-API namespace shared by ``arrays`` (``None`` entries skipped).

    Raises ``BackendMismatchError`` naming both sides when the arrays come from
    different libraries or sit on different devices, and ``TypeError`` when an
    argument is not an array at all (a list, a scalar).
    """
    present = [(i, a) for i, a in enumerate(arrays) if a is not None]
    labels = names or tuple(f"argument {i}" for i in range(len(arrays)))
    for i, a in present:
        if type(a) not in _NAMESPACE_BY_TYPE and not array_api_compat.is_array_api_obj(a):
            raise DTypeError(
                f"{labels[i]} must be an array, got {type(a).__name__}; "
                "convert it first, e.g. portacnn.to_device(numpy.asarray(value), 'numpy')"
            )
    first_index, first = present[0]
    first_ns = _namespace_of_one(first)
    if len(present) == 1:
        return first_ns
    first_device = array_api_compat.device(first)
    for i, a in present[1:]:
        if _namespace_of_one(a) is not first_ns or array_api_compat.device(a) != first_device:
            raise BackendMismatchError(
                f"{labels[first_index]} is a {describe_array(first)} but {labels[i]} is a "
                f"{describe_array(a)}; move both to one place first, e.g. "
                "model.to(spec) and portacnn.to_device(batch, spec)"
            )
    return first_ns


# Per array type, whether its backend declares ``writable_views`` (see
# backends/_base.py); types no backend owns take the standard's generic path.
_WRITABLE_VIEWS_BY_TYPE: dict[type, bool] = {}


def writes_through_views(x) -> bool:
    """Whether an in-place operator on a slice of ``x`` updates ``x`` itself (NumPy, CuPy, torch)."""
    kind = type(x)
    flag = _WRITABLE_VIEWS_BY_TYPE.get(kind)
    if flag is None:
        from .backends import get_backend, placement_of
        from .errors import PortacnnError

        try:
            flag = bool(get_backend(placement_of(x).backend).writable_views)
        except PortacnnError:
            flag = False
        _WRITABLE_VIEWS_BY_TYPE[kind] = flag
    return flag


def device_of(x):
    return array_api_compat.device(x)


def is_floating(xp, x) -> bool:
    return xp.isdtype(x.dtype, "real floating")
