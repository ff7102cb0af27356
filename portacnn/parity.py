"""``portacnn parity``: every op and a short training run on every backend, against NumPy float64.

For each available backend (and device), each dtype and each case, the inputs
are drawn on the host, rounded to the dtype, moved to the backend, run, moved
back and compared with the same computation in NumPy float64 on the same
rounded inputs. The report is a table of max abs/rel differences with
pass/fail; the exit status is non-zero on any mismatch.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy

from . import functional as F
from .backends import available_backends, parse_spec, to_device, to_numpy

# rtol, atol (atol is relative to the largest reference magnitude): float64
# must agree to rounding; float32 accumulates rounding over sums of a few
# hundred terms.
TOLERANCES = {"float64": (1e-10, 1e-12), "float32": (1e-5, 1e-6)}


@dataclass
class Result:
    backend: str
    dtype: str
    case: str
    max_abs: float
    max_rel: float
    passed: bool
    error: str = ""


def _conv_case(rng):
    x = rng.standard_normal((2, 3, 11, 9))
    w = rng.standard_normal((4, 3, 3, 2))
    b = rng.standard_normal(4)
    options = dict(stride=(2, 2), padding=(1, 2), dilation=(2, 1))
    g = rng.standard_normal(F.conv2d(x, w, b, **options).shape)
    return (x, w, b, g), lambda x, w, b, g: (F.conv2d(x, w, b, **options), *F.conv2d_backward(g, x, w, **options))


def _pool_case(forward, backward, *, positive=False, p=None):
    def make(rng):
        x = rng.permutation(2 * 3 * 9 * 8).reshape(2, 3, 9, 8) / 50.0 - (0.0 if positive else 2.0)
        x = x + (0.01 if positive else 0.0)
        if p is not None:
            g = rng.standard_normal(forward(x, p, 3, 2).shape)
            return (x, g), lambda x, g: (forward(x, p, 3, 2), backward(g, x, p, 3, 2))
        g = rng.standard_normal(forward(x, 3, 2, 1).shape)
        return (x, g), lambda x, g: (forward(x, 3, 2, 1), backward(g, x, 3, 2, 1))
    return make


def _linear_case(rng):
    x, w, b, g = (rng.standard_normal(s) for s in ((5, 7), (3, 7), (3,), (5, 3)))
    return (x, w, b, g), lambda x, w, b, g: (F.linear(x, w, b), *F.linear_backward(g, x, w))


def _elementwise_case(forward, backward):
    def make(rng):
        x, g = rng.standard_normal((4, 6)) * 3, rng.standard_normal((4, 6))
        return (x, g), lambda x, g: (forward(x), backward(g, x))
    return make


def _cross_entropy_case(rng):
    logits = rng.standard_normal((6, 10)) * 4
    labels = rng.integers(0, 10, 6)
    return (logits, labels), lambda z, y: (F.cross_entropy(z, y), F.cross_entropy_backward(z, y))


def _batch_norm_case(training):
    def make(rng):
        x, g = rng.standard_normal((4, 3, 5, 5)), rng.standard_normal((4, 3, 5, 5))
        mean, var = rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)
        weight, bias = rng.standard_normal(3), rng.standard_normal(3)

        def run(x, g, mean, var, weight, bias):
            outputs = F.batch_norm(x, mean, var, weight, bias, training=training)
            return (*outputs, *F.batch_norm_backward(g, x, mean, var, weight, training=training))
        return (x, g, mean, var, weight, bias), run
    return make


def _dropout_case(rng):
    x, g = rng.standard_normal((4, 8)), rng.standard_normal((4, 8))
    mask = F.dropout_mask(x.shape, 0.3, rng)
    return (x, g), lambda x, g: (F.dropout(x, 0.3, mask=mask), F.dropout_backward(g, mask, 0.3))


CASES = {
    "conv2d": _conv_case,
    "max_pool2d": _pool_case(F.max_pool2d, F.max_pool2d_backward),
    "avg_pool2d": _pool_case(F.avg_pool2d, F.avg_pool2d_backward),
    "lp_pool2d": _pool_case(F.lp_pool2d, F.lp_pool2d_backward, positive=True, p=3.0),
    "linear": _linear_case,
    "relu": _elementwise_case(F.relu, F.relu_backward),
    "sigmoid": _elementwise_case(F.sigmoid, F.sigmoid_backward),
    "tanh": _elementwise_case(F.tanh, F.tanh_backward),
    "softmax": _elementwise_case(F.softmax, F.softmax_backward),
    "log_softmax": _elementwise_case(F.log_softmax, F.log_softmax_backward),
    "cross_entropy": _cross_entropy_case,
    "batch_norm_train": _batch_norm_case(True),
    "batch_norm_eval": _batch_norm_case(False),
    "dropout": _dropout_case,
}


def _round_to(array, dtype):
    return array.astype(dtype) if array.dtype.kind == "f" else array


def _compare(actual, reference, rtol, atol):
    worst_abs = worst_rel = 0.0
    passed = True
    for a, r in zip(actual, reference):
        a = numpy.asarray(to_numpy(a), dtype=numpy.float64)
        r = numpy.asarray(r, dtype=numpy.float64)
        if a.shape != r.shape:
            return float("inf"), float("inf"), False
        scale = max(1.0, float(numpy.max(numpy.abs(r), initial=0.0)))
        difference = numpy.abs(a - r)
        worst_abs = max(worst_abs, float(numpy.max(difference, initial=0.0)))
        worst_rel = max(worst_rel, float(numpy.max(difference / numpy.maximum(numpy.abs(r), 1e-300), initial=0.0)))
        passed &= bool(numpy.all(difference <= atol * scale + rtol * numpy.abs(r)))
    return worst_abs, worst_rel, passed


def _check_placement(outputs, spec):
    from .backends import placement_of

    for output in outputs:
        where = placement_of(output)
        if where != spec:
            raise AssertionError(f"output landed on {where.spec}, expected {spec.spec}")


def check_op(case: str, spec, dtype: str, seed: int = 0) -> Result:
    """Run one op case on one backend and compare it with NumPy float64."""
    placement = parse_spec(spec)
    host_inputs, run = CASES[case](numpy.random.default_rng(seed))
    rounded = [_round_to(a, dtype) for a in host_inputs]
    reference = run(*[_round_to(a, "float64") for a in rounded])
    try:
        outputs = run(*[to_device(a, placement) for a in rounded])
        _check_placement(outputs, placement)
        for output in outputs:
            if str(to_numpy(output).dtype) != dtype:
                raise AssertionError(f"output dtype {to_numpy(output).dtype}, expected {dtype}")
    except Exception as error:  # noqa: BLE001 - the report shows any failure as a row
        return Result(placement.spec, dtype, case, float("nan"), float("nan"), False, f"{type(error).__name__}: {error}")
    return Result(placement.spec, dtype, case, *_compare(outputs, reference, *TOLERANCES[dtype]))


def _train_steps(model_spec, dtype, initial_state, steps=3, seed=0):
    """Train a LeNet for a few SGD steps; return the losses and the final parameters on the host."""
    from .models import lenet
    from .nn import CrossEntropyLoss
    from .optim import SGD

    model = lenet(seed=seed, dtype=dtype, device=model_spec)
    model.load_state_dict(initial_state)
    loss_fn = CrossEntropyLoss()
    optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    rng = numpy.random.default_rng(seed + 1)
    losses = []
    for _ in range(steps):
        images = to_device(rng.standard_normal((8, 1, 28, 28)).astype(dtype), model_spec)
        labels = to_device(rng.integers(0, 10, 8), model_spec)
        loss = loss_fn(model(images), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(to_numpy(loss.data).reshape(1))
    return [numpy.concatenate(losses)] + [to_numpy(v) for v in model.state_dict().values()]


def check_training(spec, dtype: str, seed: int = 0) -> Result:
    """Three SGD steps of one seeded LeNet on a backend vs the same steps in NumPy float64."""
    from .models import lenet

    placement = parse_spec(spec)
    initial = {k: to_numpy(v) for k, v in lenet(seed=seed, dtype=dtype, device="numpy").state_dict().items()}
    reference = _train_steps("numpy", "float64", initial, seed=seed)
    try:
        outputs = _train_steps(placement, dtype, initial, seed=seed)
    except Exception as error:  # noqa: BLE001
        return Result(placement.spec, dtype, "lenet_3_sgd_steps", float("nan"), float("nan"), False,
                      f"{type(error).__name__}: {error}")
    # Three steps carry float32 rounding of every forward and backward into
    # the next, so float32 gets ten times the per-op tolerance.
    rtol, atol = TOLERANCES[dtype]
    amplification = 1.0 if dtype == "float64" else 10.0
    compared = _compare(outputs, reference, rtol * amplification, atol * amplification)
    return Result(placement.spec, dtype, "lenet_3_sgd_steps", *compared)


def backend_specs() -> list[str]:
    """Every backend and device usable here, e.g. ``array_api_strict:device1``.

    Devices without float64 (array-api-strict's emulated ``no_float64`` and
    ``no_x64``) are left out: the reference comparison and the int64 labels
    the training run uses need 64-bit types.
    """
    return [spec for info in available_backends() for spec in info.devices if parse_spec(spec).supports_float64]


def run_parity(specs=None, dtypes=("float64", "float32"), out=None, include_training=True) -> int:
    """Print the parity table for ``specs`` (default: all available); return 0 if all pass, else 1."""
    out = out or sys.stdout
    specs = list(specs) if specs else backend_specs()
    results = []
    for spec in specs:
        for dtype in dtypes:
            results.extend(check_op(case, spec, dtype) for case in CASES)
            if include_training:
                results.append(check_training(spec, dtype))
    header = f"{'backend':<28} {'dtype':<8} {'case':<20} {'max abs diff':>13} {'max rel diff':>13}  result"
    print(header, file=out)
    print("-" * len(header), file=out)
    for r in results:
        verdict = "pass" if r.passed else "FAIL"
        print(f"{r.backend:<28} {r.dtype:<8} {r.case:<20} {r.max_abs:>13.3e} {r.max_rel:>13.3e}  {verdict}", file=out)
        if r.error:
            print(f"    {r.error}", file=out)
    failures = sum(not r.passed for r in results)
    print(f"\n{len(results) - failures} passed, {failures} failed "
          f"({len(specs)} backend(s): {', '.join(specs)})", file=out)
    return 1 if failures else 0
