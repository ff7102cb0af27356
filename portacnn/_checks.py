"""Argument checks shared by the ops, the layers and the optimizers.

Each raises one of ``portacnn.errors``' exceptions with a message that names
the argument, what was expected and, where a common mistake explains it, the
fix.
"""

from __future__ import annotations

import math
import numbers
import operator

from ._arrays import namespace_of
from .errors import ArgumentError, ArgumentTypeError, DTypeError, ShapeError


def as_int(value) -> int:
    if isinstance(value, bool):
        raise TypeError
    return operator.index(value)  # ints and NumPy integers, never floats


def _type_hint(value, name: str) -> str:
    if isinstance(value, str) and name.endswith("padding"):
        return ("; string padding such as 'same' is not supported: for stride 1 and an odd kernel size k, "
                "padding=k // 2 keeps the height and width")
    try:
        values = list(value) if isinstance(value, (list, tuple)) else [value]
    except TypeError:
        return ""
    if any(isinstance(v, float) for v in values):
        return "; pass whole numbers, e.g. 2 rather than 2.0"
    return ""


def pair(value, name: str, *, minimum: int) -> tuple[int, int]:
    """Accept an int or a pair of ints, as PyTorch does, and check the bound.

    Raises ``ArgumentTypeError`` (a TypeError) for anything else and
    ``ArgumentError`` (a ValueError) for a value below ``minimum``.
    """
    try:
        if hasattr(value, "__len__") and not isinstance(value, str):
            pair = tuple(as_int(v) for v in value)
        else:
            pair = (as_int(value),) * 2
    except TypeError:
        raise ArgumentTypeError(
            f"{name} must be an int or a pair of ints (height, width), got {value!r}{_type_hint(value, name)}"
        ) from None
    if len(pair) != 2:
        raise ArgumentTypeError(
            f"{name} must be an int or a pair of ints (height, width), got {len(pair)} values: {value!r}")
    if min(pair) < minimum:
        what = "positive" if minimum == 1 else "non-negative" if minimum == 0 else f">= {minimum}"
        raise ArgumentError(f"{name} must be >= {minimum} ({what}) in both directions, got {value!r}")
    return pair


def is_real_number(value) -> bool:
    """A Python or NumPy int/float (not a bool, string or array)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_probability(p, name: str) -> float:
    """A dropout probability: a real number in [0, 1)."""
    if not is_real_number(p):
        raise ArgumentTypeError(f"{name} must be a number in [0, 1), got {p!r} ({type(p).__name__})")
    if not 0.0 <= float(p) < 1.0:  # NaN fails too
        raise ArgumentError(f"{name} must be in [0, 1) (the fraction of elements zeroed), got {p!r}")
    return float(p)


def check_number(value, name: str, *, low: float, high: float | None = None, low_inclusive=True,
                  hint: str = "") -> float:
    """A real (non-bool) number in [low, high] (or (low, high] without ``low_inclusive``)."""
    if not is_real_number(value):
        raise ArgumentTypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    number = float(value)
    ok = (number >= low if low_inclusive else number > low) and (high is None or number <= high)
    if not ok:  # NaN fails every comparison, so it lands here too
        lower = f"{'>=' if low_inclusive else '>'} {low:g}"
        wanted = lower if high is None else f"{lower} and <= {high:g}"
        raise ArgumentError(f"{name} must be {wanted}, got {value!r}{hint}")
    return number


def check_finite(value, name: str) -> float:
    """A real (non-bool), finite number, as a Python float (a NumPy float64 scalar would promote float32 arrays)."""
    if not is_real_number(value):
        raise ArgumentTypeError(f"{name} must be a number, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value):
        raise ArgumentError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def check_flag(value, name: str) -> bool:
    """An on/off option (``nesterov``, ``amsgrad``): a bool, so a misplaced number or string is caught."""
    if not isinstance(value, bool):
        raise ArgumentTypeError(f"{name} must be True or False, got {value!r} ({type(value).__name__})")
    return value


def check_choice(value, name: str, choices: tuple[str, ...]) -> str:
    """One of a few option strings (a loss's ``reduction``, GELU's ``approximate``)."""
    if not isinstance(value, str) or value not in choices:
        wanted = ", ".join(repr(c) for c in choices)
        raise ArgumentError(f"{name} must be one of {wanted}, got {value!r}")
    return value


def check_reduction(reduction, op: str) -> str:
    """A loss's ``reduction``: how the per-element losses become the result, as in PyTorch."""
    return check_choice(reduction, f"{op} reduction", ("mean", "sum", "none"))


_INTEGRAL_HINT = (" (integer data such as uint8 images: convert it first, e.g. x.astype(float32) / 255 for "
                  "0-255 pixels, or portacnn.training.prepare_images(images, 'float32') for NumPy images)")


# Every op checks its input's dtype; isdtype is slow enough in NumPy to show
# at batch size 5, so the dtypes that passed are remembered, one set per
# dtype class (array-api-strict warns when its dtypes meet NumPy's).
_REAL_FLOATING_DTYPES: dict[type, set] = {}


def require_float(xp, x, name: str) -> None:
    dtype = x.dtype
    known = _REAL_FLOATING_DTYPES.setdefault(type(dtype), set())
    if dtype in known:
        return
    if xp.isdtype(dtype, "real floating"):
        known.add(dtype)
        return
    if xp.isdtype(dtype, "integral"):
        hint = _INTEGRAL_HINT
    elif dtype == xp.bool:
        hint = " (a boolean array: convert it with x.astype(float32) first)"
    elif xp.isdtype(dtype, "complex floating"):
        hint = " (complex numbers are not supported: pass the real part or the magnitude)"
    else:
        hint = ""
    raise DTypeError(f"{name} must be a real floating-point array (float32 or float64), got {dtype}{hint}")


def require_same_dtype(x, other, x_name: str, other_name: str) -> None:
    if other is not None and other.dtype != x.dtype:
        raise DTypeError(
            f"{x_name} has dtype {x.dtype} but {other_name} has dtype {other.dtype}; "
            f"cast one of them, e.g. model.to(..., dtype=...) or x.astype(...)"
        )


def ndim_hint(got: int, wanted: int) -> str:
    if wanted == 4 and got == 2:
        return ("; this looks like a flattened image batch: reshape it to (N, C, H, W), "
                "e.g. x.reshape(-1, 1, 28, 28) for MNIST")
    if wanted == 4 and got == 3:
        return ("; add the missing axis: x[:, None] turns (N, H, W) grayscale images into (N, 1, H, W), "
                "x[None] turns one (C, H, W) image into a batch of one")
    if wanted == 2 and got > 2:
        return "; flatten it first: put a Flatten() layer before Linear, or reshape it to (N, -1)"
    if got == wanted - 1:
        return "; one sample? add the batch axis with x[None]"
    return ""


def require_ndim(x, ndim: int, name: str, layout: str) -> None:
    if x.ndim != ndim:
        raise ShapeError(
            f"{name} must be a {ndim}-D array of shape {layout}, got shape {tuple(x.shape)} ({x.ndim}-D)"
            + ndim_hint(x.ndim, ndim))
    if x.shape[0] == 0:
        raise ShapeError(f"{name} is an empty batch (shape {tuple(x.shape)}); pass at least one sample")


def check_grad(grad_out, x, expected_shape, op: str) -> None:
    """grad_out must be an array on x's backend and device, with x's dtype and the forward output's shape."""
    namespace_of(grad_out, x, names=("grad_out", "x"))
    if grad_out.dtype != x.dtype:
        raise DTypeError(
            f"{op}: grad_out has dtype {grad_out.dtype} but x has dtype {x.dtype}; the gradient must have the "
            "dtype of the forward input (cast it, or keep the model and the data in one dtype)")
    if tuple(grad_out.shape) != tuple(expected_shape):
        raise ShapeError(f"{op}: grad_out must have shape {tuple(expected_shape)} (the forward output's), "
                         f"got {tuple(grad_out.shape)}")


def positive_int(value, name: str, layer: str) -> int:
    """A layer size (channels, features): a positive int; raises ``ArgumentError`` naming the argument."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ArgumentTypeError(f"{layer}: {name} must be a positive int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ArgumentError(f"{layer}: {name} must be a positive int (at least 1), got {value!r}")
    return int(value)
