"""erf and erfc for any array-API backend (the standard has neither).

W. J. Cody's rational Chebyshev approximations ("Rational Chebyshev
approximations for the error function", Math. Comp. 23 (1969) 631-638), as in
his SPECFUN routine CALERF: erf(x) = x R(x^2) for |x| <= 0.46875, and
erfc(|x|) = exp(-x^2) R(|x|) on (0.46875, 4] and exp(-x^2) / |x| (1/sqrt(pi) +
R(1/x^2) / x^2) beyond. The rational functions are accurate well beyond double
precision, so the results are within a few ulp of the true values; erfc is
computed directly in the tail, so it keeps its relative accuracy where
1 - erf(x) would be all rounding error. exp(-x^2) is taken as
exp(-s^2) exp(-(x - s)(x + s)) with s = x rounded down to 1/16, whose square
is exact: exp of a rounded x^2 would lose up to x^2 ulp.

All three ranges are evaluated on every element and the answer is selected
with ``where`` (no Python branch on values, so it traces under ``jax.jit``);
each range gets its argument clipped into its own interval first, so the
unused ones never overflow or divide by zero.
"""

from __future__ import annotations

_THRESHOLD = 0.46875
_ONE_OVER_SQRT_PI = 5.6418958354775628695e-1
# erfc(30) = 2.6e-393 underflows to 0 in every float type; clipping there keeps
# exp and 1/x^2 finite at x = inf while giving the same 0.
_TAIL_CLIP = 30.0

_A = (3.16112374387056560e00, 1.13864154151050156e02, 3.77485237685302021e02, 3.20937758913846947e03,
      1.85777706184603153e-1)
_B = (2.36012909523441209e01, 2.44024637934444173e02, 1.28261652607737228e03, 2.84423683343917062e03)
_C = (5.64188496988670089e-1, 8.88314979438837594e00, 6.61191906371416295e01, 2.98635138197400131e02,
      8.81952221241769090e02, 1.71204761263407058e03, 2.05107837782607147e03, 1.23033935479799725e03,
      2.15311535474403846e-8)
_D = (1.57449261107098347e01, 1.17693950891312499e02, 5.37181101862009858e02, 1.62138957456669019e03,
      3.29079923573345963e03, 4.36261909014324716e03, 3.43936767414372164e03, 1.23033935480374942e03)
_P = (3.05326634961232344e-1, 3.60344899949804439e-1, 1.25781726111229246e-1, 1.60837851487422766e-2,
      6.58749161529837803e-4, 1.63153871373020978e-2)
_Q = (2.56852019228982242e00, 1.87295284992346047e00, 5.27905102951428412e-1, 6.05183413124413191e-2,
      2.33520497626869185e-3)


def _ratio(t, numerator, denominator):
    """CALERF's Horner loop: the last numerator coefficient leads, the denominator is monic."""
    num, den = numerator[-1] * t, t
    for a, b in zip(numerator[:len(denominator) - 1], denominator[:-1]):
        num, den = (num + a) * t, (den + b) * t
    return (num + numerator[len(denominator) - 1]) / (den + denominator[-1])


def _exp_minus_square(xp, y):
    s = xp.trunc(y * 16.0) / 16.0
    return xp.exp(-s * s) * xp.exp(-(y - s) * (y + s))


def _parts(xp, x):
    """(erf(x) for |x| <= 0.46875, erfc(|x|) for |x| > 0.46875, whether |x| <= 0.46875)."""
    y = xp.abs(x)
    small = y <= _THRESHOLD
    near = xp.clip(x, min=-_THRESHOLD, max=_THRESHOLD)
    erf_near = near * _ratio(near * near, _A, _B)
    middle = xp.clip(y, min=_THRESHOLD, max=4.0)
    erfc_middle = _exp_minus_square(xp, middle) * _ratio(middle, _C, _D)
    tail = xp.clip(y, min=4.0, max=_TAIL_CLIP)
    inverse_square = 1.0 / (tail * tail)
    erfc_tail = (_exp_minus_square(xp, tail)
                 * (_ONE_OVER_SQRT_PI - inverse_square * _ratio(inverse_square, _P, _Q)) / tail)
    return erf_near, xp.where(y <= 4.0, erfc_middle, erfc_tail), small


def erf(xp, x):
    erf_near, erfc_far, small = _parts(xp, x)
    far = (0.5 - erfc_far) + 0.5
    return xp.where(small, erf_near, xp.where(x < 0, -far, far))


def erfc(xp, x):
    erf_near, erfc_far, small = _parts(xp, x)
    return xp.where(small, 1.0 - erf_near, xp.where(x < 0, 2.0 - erfc_far, erfc_far))
