"""``gradcheck``: the tape's gradients against central finite differences, on any backend."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy

from ..autograd import no_grad, tensor
from ..backends import parse_spec, placement_of, to_device, to_numpy
from ._running import Subject, as_outputs, host_copy, is_float

__all__ = ["gradcheck"]

#: Finite-difference step and (rtol, atol) by the dtype the check runs in.
#: float64 is the norm; float32 only where a backend has no float64, and then
#: the central difference itself carries errors of about 1e-3.
_DEFAULTS = {"float64": (1e-6, 1e-5, 1e-8), "float32": (1e-2, 2e-2, 1e-3)}


def gradcheck(fn: Callable[..., Any], *inputs: Any, eps: float | None = None, rtol: float | None = None,
              atol: float | None = None, backends: Sequence[str] | None = None, max_checks: int = 32,
              seed: int = 0) -> bool:
    """Check the tape's gradient of ``fn`` against central finite differences; returns True or raises.

    ``fn`` is a ``Function`` subclass (called with ``apply``), a ``Module``
    (checked with respect to its inputs *and* its parameters; it is copied,
    never changed), or any function of Tensors returning a Tensor or a tuple
    of them. ``inputs`` are arrays of any backend, Tensors, or host NumPy
    arrays; floating-point ones are differentiated, integer ones (labels) are
    passed as constants.

    The outputs are reduced to one number with fixed random weights, and each
    checked entry ``j`` of each input compares ``(f(x + eps e_j) - f(x - eps
    e_j)) / 2 eps`` with the tape's gradient: it passes when
    ``|numeric - tape| <= atol + rtol * |numeric|``. The check runs in
    float64 where the backend has it (float32 with looser defaults
    elsewhere); at most ``max_checks`` entries of each input and parameter
    are checked, drawn at random (``seed``). A failure raises
    ``AssertionError`` naming the backend, the input, the worst entry's
    index, both values and the relative error.

    Without ``backends`` the check runs where the inputs are (NumPy for host
    arrays); with a list of specs (``["numpy", "torch", "jax"]``) it repeats
    on each. Keep inputs away from kinks (ReLU at 0, max-pool ties), and use
    ``model.eval()`` for layers with randomness (dropout).
    """
    hosts = [host_copy(value) for value in inputs]
    if backends is None:
        first = next((value for value in inputs if hasattr(value, "shape") and not isinstance(value, numpy.ndarray)),
                     None)
        specs = [placement_of(first.data if hasattr(first, "requires_grad") else first) if first is not None
                 else parse_spec("numpy")]
    else:
        specs = [parse_spec(spec) for spec in backends]
    for placement in specs:
        _check_one(fn, hosts, placement, eps, rtol, atol, max_checks, seed)
    return True


def _check_one(fn, hosts, placement, eps, rtol, atol, max_checks, seed):
    dtype = "float64" if placement.supports_float64 else "float32"
    default_eps, default_rtol, default_atol = _DEFAULTS[dtype]
    eps = default_eps if eps is None else eps
    rtol = default_rtol if rtol is None else rtol
    atol = default_atol if atol is None else atol
    subject = Subject(fn, placement, dtype)
    # A stream of its own: weights equal to a user's input drawn with the same seed would make
    # the projected gradient symmetric and hide a transposed gradient.
    rng = numpy.random.default_rng([seed, 0x67726164])

    def device(host):
        return to_device(host.astype(dtype) if is_float(host) else host, placement)

    leaves = [tensor(device(h), requires_grad=is_float(h)) for h in hosts]
    outputs = as_outputs(subject.run(*leaves))
    weights = [rng.standard_normal(tuple(out.shape)) for out in outputs]
    objective = None
    for out, weight in zip(outputs, weights):
        term = (out * to_device(weight.astype(dtype), placement)).sum()
        objective = term if objective is None else objective + term
    if objective is None or not objective.requires_grad:
        raise AssertionError(f"gradcheck: the output of {subject.what} does not depend on any floating-point input "
                             "or parameter, so there is no gradient to check")
    objective.backward()

    def value() -> float:
        with no_grad():
            results = as_outputs(subject.run(*[tensor(device(h)) for h in hosts]))
        return float(sum(numpy.sum(to_numpy(out).astype(numpy.float64) * w) for out, w in zip(results, weights)))

    targets = []  # (label, host float64 values, tape gradient, setter)
    for index, (host, leaf) in enumerate(zip(hosts, leaves)):
        if is_float(host):
            def set_input(values, index=index):
                hosts[index] = values
            targets.append((f"input {index}", host.astype(numpy.float64), leaf.grad, set_input))
    for name, parameter in subject.named_parameters():
        def set_parameter(values, parameter=parameter):
            parameter.data = to_device(values.astype(dtype), placement)
        targets.append((f"parameter {name!r}", to_numpy(parameter.data).astype(numpy.float64), parameter.grad,
                        set_parameter))

    for label, original, tape_grad, set_values in targets:
        tape = (numpy.zeros_like(original) if tape_grad is None
                else to_numpy(tape_grad).astype(numpy.float64).reshape(original.shape))
        size = original.size
        checked = (numpy.arange(size) if size <= max_checks
                   else numpy.sort(rng.choice(size, max_checks, replace=False)))
        numeric = numpy.empty(len(checked))
        for k, flat in enumerate(checked):
            shifted = original.copy()
            shifted.flat[flat] += eps
            set_values(shifted)
            plus = value()
            shifted.flat[flat] -= 2 * eps
            set_values(shifted)
            minus = value()
            numeric[k] = (plus - minus) / (2 * eps)
        set_values(original)
        analytic = tape.reshape(-1)[checked]
        error = numpy.abs(numeric - analytic)
        bad = error > atol + rtol * numpy.abs(numeric)
        if bad.any():
            relative = error / numpy.maximum(numpy.maximum(numpy.abs(numeric), numpy.abs(analytic)), 1e-300)
            worst = int(numpy.argmax(numpy.where(bad, relative, -1.0)))
            where = tuple(int(i) for i in numpy.unravel_index(int(checked[worst]), original.shape))
            raise AssertionError(
                f"gradcheck failed for {subject.what} on {placement.spec} ({dtype}): gradient of {label} at index "
                f"{where}: finite difference {numeric[worst]:.10g}, tape {analytic[worst]:.10g}, relative error "
                f"{relative[worst]:.3e} (rtol {rtol:g}, atol {atol:g}, eps {eps:g}); {int(bad.sum())} of "
                f"{len(checked)} checked entries fail")

