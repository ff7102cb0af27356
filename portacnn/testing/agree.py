"""``assert_backends_agree``: one piece of code, forward and backward, on every backend against NumPy float64."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy

from ..autograd import tensor
from ..backends import dtype_name, parse_spec, placement_of, to_device, to_numpy
from .compare import TOLERANCES, close_report
from ._running import Subject, as_outputs, host_copy, is_float, put

__all__ = ["assert_backends_agree", "default_backend_specs"]


def default_backend_specs() -> list[str]:
    """Every backend and device usable here that has float64 (array-api-strict's second device included)."""
    from ..parity import backend_specs

    return backend_specs()


def _run(subject: Subject, hosts, spec, dtype, weights_seed, *, read_only):
    """Forward, then backward of a fixed random projection of the outputs.

    Returns (named results, leaves, problems): an output on the wrong backend,
    device or dtype is reported as a problem and ends the run before the
    backward, which would only fail later with a less direct message.
    """
    leaves = []
    for host in hosts:
        array = put(host, spec, dtype, read_only=read_only)
        leaves.append(tensor(array, requires_grad=is_float(host)))
    outputs = as_outputs(subject.run(*leaves))
    results = {f"output {i}": out.data for i, out in enumerate(outputs)}
    placement = parse_spec(spec)
    problems = [problem for name, value in results.items()
                for problem in _placement_problems(name, value, placement, dtype)]
    if problems:
        return results, leaves, problems
    rng = numpy.random.default_rng([weights_seed, 0x61677265])  # not the stream a user's inputs come from
    objective = None
    for out in outputs:
        weight = to_device(rng.standard_normal(tuple(out.shape)).astype(dtype), parse_spec(spec))
        term = (out * weight).sum()
        objective = term if objective is None else objective + term
    if objective is not None and objective.requires_grad:
        objective.backward()
    for index, leaf in enumerate(leaves):
        if is_float(hosts[index]):
            results[f"gradient of input {index}"] = leaf.grad
    for name, parameter in subject.named_parameters():
        results[f"gradient of parameter {name!r}"] = parameter.grad
    return results, leaves, []


def assert_backends_agree(fn_or_model_factory: Callable[..., Any], *host_inputs: Any,
                          backends: Sequence[str] | None = None, dtypes: Sequence[str] = ("float64", "float32"),
                          rtol: float | None = None, atol: float | None = None, seed: int = 0) -> None:
    """Run forward and backward on every backend from the same host inputs; compare with NumPy float64.

    ``fn_or_model_factory`` is a ``Function`` subclass, a function of Tensors,
    a ``Module`` (copied onto each backend), or a factory called as
    ``factory(device=spec, dtype=dtype)`` that returns a ``Module`` (a Module
    subclass whose ``__init__`` takes ``device`` and ``dtype`` is one). Every
    backend's model gets the same parameter values: those of the model built
    on NumPy in that dtype.

    For each dtype and backend (default: every one usable here with float64,
    array-api-strict's emulated second device included), the floating-point
    inputs are rounded to the dtype and moved there, the outputs are reduced
    with fixed random weights (``seed``) and differentiated. Every output and
    every gradient (of the inputs and of the parameters) must:

    * equal NumPy float64 on the same rounded inputs within the dtype's
      ``TOLERANCES`` (or ``rtol``/``atol``);
    * stay on the backend and device of the inputs, and keep their dtype;
    * leave the inputs unchanged: on NumPy they are read-only arrays, so an
      in-place write fails there and is reported as such.

    All failures are collected and raised together as one ``AssertionError``,
    each naming the backend, the dtype, the output and its worst entry.
    """
    hosts = [host_copy(value) for value in host_inputs]
    specs = [parse_spec(spec) for spec in (backends or default_backend_specs())]
    failures = []
    for dtype in dtypes:
        rounded = [h.astype(dtype) if is_float(h) else h for h in hosts]
        source = Subject(fn_or_model_factory, "numpy", dtype)
        state = None if source.model is None else {k: to_numpy(v) for k, v in source.model.state_dict().items()}
        reference_hosts = [h.astype(numpy.float64) if is_float(h) else h for h in rounded]
        reference, _, problems = _run(Subject(fn_or_model_factory, "numpy", "float64", state), reference_hosts,
                                      "numpy", "float64", seed, read_only=False)
        if problems:
            raise AssertionError("the NumPy float64 reference itself is wrong: " + "; ".join(problems))
        reference = {name: None if value is None else to_numpy(value) for name, value in reference.items()}
        default_rtol, default_atol = TOLERANCES[dtype]
        for placement in specs:
            where = f"[{placement.spec} {dtype}]"
            if dtype == "float64" and not placement.supports_float64:
                continue
            try:
                subject = Subject(fn_or_model_factory, placement, dtype, state)
                results, leaves, problems = _run(subject, rounded, placement, dtype, seed, read_only=True)
            except Exception as error:  # noqa: BLE001 - every backend's failure goes in the one report
                hint = ("; something wrote into an input (inputs are read-only NumPy arrays here)"
                        if "read-only" in str(error) else "")
                failures.append(f"{where} raised {type(error).__name__}: {error}{hint}")
                continue
            if problems:
                failures.extend(f"{where} {problem}" for problem in problems)
                continue
            for name, value in results.items():
                expected = reference.get(name)
                if (value is None) != (expected is None):
                    failures.append(f"{where} {name}: {'missing' if value is None else 'present'} here but "
                                    f"{'missing' if expected is None else 'present'} on NumPy float64")
                    continue
                if value is None:
                    continue
                failures.extend(f"{where} {problem}" for problem in _placement_problems(name, value, placement, dtype))
                report = close_report(value, expected, default_rtol if rtol is None else rtol,
                                      default_atol if atol is None else atol, name)
                if report is not None:
                    failures.append(f"{where} {report}")
            for index, (leaf, before) in enumerate(zip(leaves, rounded)):
                if not numpy.array_equal(to_numpy(leaf.data), before, equal_nan=is_float(before)):
                    failures.append(f"{where} input {index} was changed by the call: the code wrote into its input")
    if failures:
        raise AssertionError(f"backends disagree ({len(failures)} problem(s)):\n  " + "\n  ".join(failures))


def _placement_problems(name, value, placement, dtype):
    try:
        where = placement_of(value)
    except Exception as error:  # noqa: BLE001 - not an array of any known backend
        yield f"{name} is not an array of a known backend ({type(value).__name__}: {error})"
        return
    if where != placement:
        yield f"{name} landed on {where.spec}, expected {placement.spec} (the inputs' backend and device)"
    if dtype_name(value) != dtype:
        yield f"{name} has dtype {dtype_name(value)}, expected {dtype} (the inputs' dtype)"
