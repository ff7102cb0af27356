"""Comparing arrays of any backend against a host reference, with a report a reader can act on."""

from __future__ import annotations

from typing import Any

import numpy

from ..backends import to_numpy

__all__ = ["TOLERANCES", "assert_close", "close_report"]

#: Per-dtype ``(rtol, atol)`` against a NumPy float64 reference, as the parity
#: suite uses them. ``atol`` is scaled by ``max(1, max|expected|)``: entries
#: that come out near zero through cancellation carry an error proportional to
#: the terms that cancelled, i.e. to the array's scale, not to their own value.
#: float64 leaves room for summation order only (BLAS blocking, pairwise sums);
#: float32 is compared with float64 math on the same float32-rounded inputs.
TOLERANCES = {
    "float64": (1e-10, 1e-12),
    "float32": (1e-5, 1e-6),
    "float16": (1e-2, 1e-3),
    "bfloat16": (1e-2, 1e-2),
}


def _host(value) -> numpy.ndarray:
    if isinstance(value, numpy.ndarray):
        return value
    if isinstance(value, (int, float, complex, numpy.generic)):
        return numpy.asarray(value)
    return to_numpy(value)


def _dtype_name(value) -> str:
    dtype = getattr(value, "dtype", None)
    return "float64" if dtype is None else str(dtype).rsplit(".", 1)[-1]


def default_tolerance(actual: Any) -> tuple[float, float]:
    """The ``(rtol, atol)`` of ``actual``'s dtype (float64's for anything not listed)."""
    return TOLERANCES.get(_dtype_name(actual), TOLERANCES["float64"])


def close_report(actual: Any, expected: Any, rtol: float | None = None, atol: float | None = None,
                 name: str = "array") -> str | None:
    """None when ``actual`` (any backend) matches ``expected`` (any backend or host); else why not.

    The report names the worst entry: its index, both values, the absolute
    and relative difference and the tolerance it broke.
    """
    default_rtol, default_atol = default_tolerance(actual)
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    got = _host(actual).astype(numpy.float64)
    want = numpy.asarray(_host(expected), dtype=numpy.float64)
    if got.shape != want.shape:
        return f"{name}: shape {got.shape}, expected {want.shape}"
    finite = want[numpy.isfinite(want)]
    scale = max(1.0, float(numpy.max(numpy.abs(finite)))) if finite.size else 1.0
    allowed = atol * scale + rtol * numpy.abs(want)
    with numpy.errstate(invalid="ignore", over="ignore"):  # inf - inf: equal infinities are matched below
        difference = numpy.abs(got - want)
        same_special = (got == want) | (numpy.isnan(got) & numpy.isnan(want))
        # Where the reference is inf or nan only the same value will do (rtol x inf would allow anything).
        bad = ~same_special & (~numpy.isfinite(want) | ~(difference <= allowed))
        if not bad.any():
            return None
        excess = numpy.where(bad, numpy.nan_to_num(difference / numpy.maximum(allowed, 1e-300), nan=numpy.inf), -1.0)
    worst = numpy.unravel_index(int(numpy.argmax(excess)), got.shape) if got.ndim else ()
    g, w = float(got[worst]), float(want[worst])
    relative = abs(g - w) / max(abs(w), 1e-300)
    return (f"{name}: {int(bad.sum())} of {got.size} entries differ; worst at index {tuple(int(i) for i in worst)}: "
            f"got {g:.10g}, expected {w:.10g} (abs diff {abs(g - w):.3e}, rel diff {relative:.3e}; "
            f"rtol {rtol:g}, atol {atol:g} x scale {scale:.3g})")


def assert_close(actual: Any, expected: Any, rtol: float | None = None, atol: float | None = None, *,
                 name: str = "array") -> None:
    """Assert ``actual`` (an array of any backend, or a Tensor) equals ``expected`` within tolerance.

    ``rtol``/``atol`` default to ``TOLERANCES`` for ``actual``'s dtype;
    ``atol`` is scaled by ``max(1, max|expected|)``. NaNs match NaNs and
    infinities match equal infinities. A failure names the worst entry.
    """
    report = close_report(actual, expected, rtol, atol, name)
    if report is not None:
        raise AssertionError(report)
