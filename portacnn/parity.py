"""``portacnn parity``: every op and a short training run on every backend, against NumPy float64.

Where a backend compiles whole training steps (JAX), three compiled steps
are also compared with the same steps run eagerly on that backend.

For each available backend (and device), each dtype and each case, the inputs
are drawn on the host, rounded to the dtype, moved to the backend, run, moved
back and compared with the same computation in NumPy float64 on the same
rounded inputs. The report is a table of max abs/rel differences, the
tolerance each row was held to, and pass/FAIL, failures first; the exit
status is non-zero on any mismatch.

Your own ops join the table with ``portacnn parity --module my_pkg.my_ops``:
in that module, register a case with the ``@parity.case("name")`` decorator
on a ``make(rng) -> (host_inputs, run)`` function (the format of ``CASES``
below), with ``parity.tape_case(fn, *shapes)`` for a ``Function`` or a
function of Tensors (forward and gradients through the tape), or list them in
a module-level ``CASES`` dict.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy

from . import functional as F
from .backends import available_backends, parse_spec, to_device, to_numpy
from .errors import ArgumentError, ArgumentTypeError, PortacnnError
from .testing.compare import TOLERANCES as _TOLERANCES
from .testing.compare import close_report

# rtol, atol (atol is relative to the largest reference magnitude): float64
# must agree to rounding; float32 accumulates rounding over sums of a few
# hundred terms. The same table portacnn.testing uses.
TOLERANCES = {dtype: _TOLERANCES[dtype] for dtype in ("float64", "float32")}


@dataclass
class Result:
    backend: str
    dtype: str
    case: str
    max_abs: float
    max_rel: float
    passed: bool
    error: str = ""
    rtol: float = float("nan")
    atol: float = float("nan")


def _conv_case(rng):
    x = rng.standard_normal((2, 3, 11, 9))
    w = rng.standard_normal((4, 3, 3, 2))
    b = rng.standard_normal(4)
    options = dict(stride=(2, 2), padding=(1, 2), dilation=(2, 1))
    g = rng.standard_normal(F.conv2d(x, w, b, **options).shape)
    return (x, w, b, g), lambda x, w, b, g: (F.conv2d(x, w, b, **options), *F.conv2d_backward(g, x, w, **options))


def _grouped_conv_case(rng):
    x, w, b = rng.standard_normal((2, 6, 11, 9)), rng.standard_normal((4, 3, 3, 2)), rng.standard_normal(4)
    options = dict(stride=(2, 1), padding=(1, 2), dilation=(2, 1), groups=2)
    g = rng.standard_normal(F.conv2d(x, w, b, **options).shape)
    return (x, w, b, g), lambda x, w, b, g: (F.conv2d(x, w, b, **options), *F.conv2d_backward(g, x, w, **options))


def _conv_transpose_case(rng):
    x, w, b = rng.standard_normal((2, 6, 7, 5)), rng.standard_normal((6, 2, 3, 2)), rng.standard_normal(4)
    options = dict(stride=(2, 3), padding=(1, 0), output_padding=(1, 2), groups=2, dilation=(1, 2))
    g = rng.standard_normal(F.conv_transpose2d(x, w, b, **options).shape)
    return (x, w, b, g), lambda x, w, b, g: (F.conv_transpose2d(x, w, b, **options),
                                             *F.conv_transpose2d_backward(g, x, w, **options))


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


def _pool_options_case(forward, backward, **options):
    """A pool with ceil_mode / count_include_pad on an odd 9x8 input (distinct values: no max ties)."""
    def make(rng):
        x = rng.permutation(2 * 3 * 9 * 8).reshape(2, 3, 9, 8) / 50.0 - 2.0
        g = rng.standard_normal(forward(x, 3, 2, 1, **options).shape)
        return (x, g), lambda x, g: (forward(x, 3, 2, 1, **options), backward(g, x, 3, 2, 1, **options))
    return make


def _adaptive_case(forward, backward):
    def make(rng):
        x = rng.permutation(2 * 3 * 7 * 5).reshape(2, 3, 7, 5) / 50.0 - 2.0
        g = rng.standard_normal((2, 3, 3, 2))
        return (x, g), lambda x, g: (forward(x, (3, 2)), backward(g, x, (3, 2)))
    return make


def _interpolate_case(**options):
    def make(rng):
        x = rng.standard_normal((2, 3, 5, 7))
        g = rng.standard_normal(F.interpolate(x, **options).shape)
        return (x, g), lambda x, g: (F.interpolate(x, **options), F.interpolate_backward(g, x, **options))
    return make


def _weighted_cross_entropy_case(rng):
    logits, labels = rng.standard_normal((6, 10)) * 4, rng.integers(0, 10, 6)
    weight, g = rng.uniform(0.2, 2.0, 10), rng.standard_normal(6)
    options = {"reduction": "none", "label_smoothing": 0.1}

    def run(z, y, w, g):
        return (F.cross_entropy(z, y, weight=w, **options),
                F.cross_entropy_backward(z, y, weight=w, grad_out=g, **options))
    return (logits, labels, weight, g), run


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


def _loss_case(forward, backward, target, reduction):
    """A loss and its backward: (5, 7) inputs, ``target(rng)``, an upstream gradient shaped like the loss."""
    def make(rng):
        x, t = rng.standard_normal((5, 7)) * 2, target(rng)
        g = rng.standard_normal(forward(x, t, reduction=reduction).shape)

        def run(x, t, g):
            grads = backward(g, x, t, reduction=reduction)
            return (forward(x, t, reduction=reduction), *(grads if isinstance(grads, tuple) else (grads,)))
        return (x, t, g), run
    return make


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


def _layer_norm_case(rng):
    x, g = rng.standard_normal((3, 4, 5, 6)), rng.standard_normal((3, 4, 5, 6))
    weight, bias = rng.standard_normal((5, 6)), rng.standard_normal((5, 6))

    def run(x, g, weight, bias):
        return (F.layer_norm(x, (5, 6), weight, bias), *F.layer_norm_backward(g, x, (5, 6), weight))
    return (x, g, weight, bias), run


def _group_norm_case(rng):
    x, g = rng.standard_normal((3, 6, 5, 4)), rng.standard_normal((3, 6, 5, 4))
    weight, bias = rng.standard_normal(6), rng.standard_normal(6)

    def run(x, g, weight, bias):
        return (F.group_norm(x, 3, weight, bias), *F.group_norm_backward(g, x, 3, weight))
    return (x, g, weight, bias), run


def _dropout_case(rng):
    x, g = rng.standard_normal((4, 8)), rng.standard_normal((4, 8))
    mask = F.dropout_mask(x.shape, 0.3, rng)
    return (x, g), lambda x, g: (F.dropout(x, 0.3, mask=mask), F.dropout_backward(g, mask, 0.3))


CASES = {
    "conv2d": _conv_case,
    "conv2d_groups": _grouped_conv_case,
    "conv_transpose2d": _conv_transpose_case,
    "max_pool2d": _pool_case(F.max_pool2d, F.max_pool2d_backward),
    "avg_pool2d": _pool_case(F.avg_pool2d, F.avg_pool2d_backward),
    "max_pool2d_ceil": _pool_options_case(F.max_pool2d, F.max_pool2d_backward, ceil_mode=True),
    "avg_pool2d_ceil_exclude_pad": _pool_options_case(F.avg_pool2d, F.avg_pool2d_backward, ceil_mode=True,
                                                      count_include_pad=False),
    "adaptive_avg_pool2d": _adaptive_case(F.adaptive_avg_pool2d, F.adaptive_avg_pool2d_backward),
    "adaptive_max_pool2d": _adaptive_case(F.adaptive_max_pool2d, F.adaptive_max_pool2d_backward),
    "interpolate_nearest": _interpolate_case(size=(8, 4)),
    "interpolate_bilinear": _interpolate_case(scale_factor=(1.5, 0.7), mode="bilinear"),
    "interpolate_bilinear_align_corners": _interpolate_case(size=(9, 11), mode="bilinear", align_corners=True),
    "lp_pool2d": _pool_case(F.lp_pool2d, F.lp_pool2d_backward, positive=True, p=3.0),
    "linear": _linear_case,
    "relu": _elementwise_case(F.relu, F.relu_backward),
    "sigmoid": _elementwise_case(F.sigmoid, F.sigmoid_backward),
    "tanh": _elementwise_case(F.tanh, F.tanh_backward),
    "softmax": _elementwise_case(F.softmax, F.softmax_backward),
    "log_softmax": _elementwise_case(F.log_softmax, F.log_softmax_backward),
    "leaky_relu": _elementwise_case(lambda x: F.leaky_relu(x, 0.2), lambda g, x: F.leaky_relu_backward(g, x, 0.2)),
    "elu": _elementwise_case(lambda x: F.elu(x, 0.7), lambda g, x: F.elu_backward(g, x, 0.7)),
    "gelu": _elementwise_case(F.gelu, F.gelu_backward),
    "gelu_tanh": _elementwise_case(lambda x: F.gelu(x, approximate="tanh"),
                                   lambda g, x: F.gelu_backward(g, x, approximate="tanh")),
    "silu": _elementwise_case(F.silu, F.silu_backward),
    "hardswish": _elementwise_case(F.hardswish, F.hardswish_backward),
    "cross_entropy": _cross_entropy_case,
    "cross_entropy_weighted_smoothed": _weighted_cross_entropy_case,
    "nll_loss": _loss_case(F.nll_loss, F.nll_loss_backward, lambda rng: rng.integers(0, 7, 5), "mean"),
    "mse_loss": _loss_case(F.mse_loss, F.mse_loss_backward, lambda rng: rng.standard_normal((5, 7)), "mean"),
    "l1_loss": _loss_case(F.l1_loss, F.l1_loss_backward, lambda rng: rng.standard_normal((5, 7)), "sum"),
    "bce_with_logits": _loss_case(F.binary_cross_entropy_with_logits, F.binary_cross_entropy_with_logits_backward,
                                  lambda rng: rng.uniform(0.0, 1.0, (5, 7)), "none"),
    "batch_norm_train": _batch_norm_case(True),
    "batch_norm_eval": _batch_norm_case(False),
    "layer_norm": _layer_norm_case,
    "group_norm": _group_norm_case,
    "dropout": _dropout_case,
}


def case(name: str | None = None):
    """Register a parity case: ``@case("my_op")`` on ``make(rng) -> (host_inputs, run)``.

    ``host_inputs`` are NumPy arrays (floating ones are rounded to each
    dtype); ``run(*arrays)`` returns a tuple of arrays (outputs and
    gradients), run once on each backend and once in NumPy float64.
    """
    def register(make):
        key = name or make.__name__
        if not callable(make):
            raise ArgumentTypeError(f"parity case {key!r} must be a function make(rng) -> (host_inputs, run)")
        if CASES.get(key, make) is not make:
            raise ArgumentError(f"a parity case named {key!r} already exists; pick another name")
        CASES[key] = make
        return make
    return register


def tape_case(fn, *shapes, positive: bool = False):
    """A parity case for a ``Function`` subclass or a function of Tensors, on standard-normal inputs of ``shapes``.

    The case checks the outputs and the gradients of every input, taken
    through the tape with ``0.5 * sum(output ** 2)`` as the loss (so the
    upstream gradient is the output itself). ``positive`` draws ``|x| + 0.1``
    instead, for ops defined on positive inputs.
    """
    from .autograd import Function, Tensor, tensor

    run_fn = fn.apply if isinstance(fn, type) and issubclass(fn, Function) else fn

    def make(rng):
        inputs = [rng.standard_normal(shape) for shape in shapes]
        if positive:
            inputs = [numpy.abs(x) + 0.1 for x in inputs]

        def run(*arrays):
            leaves = [tensor(a, requires_grad=True) for a in arrays]
            result = run_fn(*leaves)
            outputs = (result,) if isinstance(result, Tensor) else tuple(result)
            loss = None
            for out in outputs:
                term = (out * out).sum() * 0.5
                loss = term if loss is None else loss + term
            loss.backward()
            return (*[out.data for out in outputs], *[leaf.grad for leaf in leaves])
        return inputs, run
    return make


def load_cases(module_name: str) -> list[str]:
    """Import ``module_name`` (which registers cases with ``@case`` or defines ``CASES``); return its case names."""
    import importlib
    import os

    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as ``python -m`` does: a module in the current folder is found
    before = set(CASES)
    try:
        module = importlib.import_module(module_name)
    except Exception as error:  # noqa: BLE001 - any import failure is the user's to fix, so say which
        raise PortacnnError(f"--module {module_name}: cannot import it ({type(error).__name__}: {error}); "
                            "check the name and that its package is installed or on PYTHONPATH") from error
    own = getattr(module, "CASES", None)
    if own is not None and own is not CASES:
        if not hasattr(own, "items"):
            raise ArgumentTypeError(f"{module_name}.CASES must be a dict of name -> make(rng), got {type(own).__name__}")
        for name, make in own.items():
            case(name)(make)
    names = [name for name in CASES if name not in before or (own is not None and name in own)]
    if not names:
        raise PortacnnError(f"--module {module_name} registered no parity cases: decorate make(rng) functions with "
                            "@portacnn.parity.case('name') or define a CASES dict there")
    return names


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
        with numpy.errstate(invalid="ignore"):  # inf - inf: close_report judges equal infinities
            difference = numpy.abs(a - r)
        worst_abs = max(worst_abs, float(numpy.max(difference, initial=0.0)))
        worst_rel = max(worst_rel, float(numpy.max(difference / numpy.maximum(numpy.abs(r), 1e-300), initial=0.0)))
        passed &= close_report(a, r, rtol, atol) is None  # the one tolerance rule portacnn.testing uses too
    return worst_abs, worst_rel, passed


def _check_placement(outputs, spec):
    from .backends import placement_of

    for output in outputs:
        where = placement_of(output)
        if where != spec:
            raise AssertionError(f"output landed on {where.spec}, expected {spec.spec}")


def check_op(name: str, spec, dtype: str, seed: int = 0) -> Result:
    """Run one op case on one backend and compare it with NumPy float64."""
    placement = parse_spec(spec)
    host_inputs, run = CASES[name](numpy.random.default_rng(seed))
    rounded = [_round_to(a, dtype) for a in host_inputs]
    reference = run(*[_round_to(a, "float64") for a in rounded])
    try:
        outputs = run(*[to_device(a, placement) for a in rounded])
        _check_placement(outputs, placement)
        for output in outputs:
            if str(to_numpy(output).dtype) != dtype:
                raise AssertionError(f"output dtype {to_numpy(output).dtype}, expected {dtype}")
    except Exception as error:  # noqa: BLE001 - the report shows any failure as a row
        return Result(placement.spec, dtype, name, float("nan"), float("nan"), False, f"{type(error).__name__}: {error}",
                      *TOLERANCES[dtype])
    return Result(placement.spec, dtype, name, *_compare(outputs, reference, *TOLERANCES[dtype]), "",
                  *TOLERANCES[dtype])


def _train_steps(model_spec, dtype, initial_state, steps=3, seed=0, in_place=True):
    """Train a LeNet for a few SGD steps; return the losses and the final parameters on the host.

    ``in_place=False`` makes the optimizer rebind the parameters instead of updating them in place."""
    from .models import lenet
    from .nn import CrossEntropyLoss
    from .optim import SGD

    model = lenet(seed=seed, dtype=dtype, device=model_spec)
    model.load_state_dict(initial_state)
    loss_fn = CrossEntropyLoss()
    optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    optimizer.in_place = in_place
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
    # Three steps carry float32 rounding of every forward and backward into
    # the next, so float32 gets ten times the per-op tolerance.
    rtol, atol = TOLERANCES[dtype]
    amplification = 1.0 if dtype == "float64" else 10.0
    rtol, atol = rtol * amplification, atol * amplification
    try:
        outputs = _train_steps(placement, dtype, initial, seed=seed)
    except Exception as error:  # noqa: BLE001 - the report shows any failure as a row
        return Result(placement.spec, dtype, "lenet_3_sgd_steps", float("nan"), float("nan"), False,
                      f"{type(error).__name__}: {error}", rtol, atol)
    return Result(placement.spec, dtype, "lenet_3_sgd_steps", *_compare(outputs, reference, rtol, atol), "",
                  rtol, atol)


def check_compiled_training(spec, dtype: str, seed: int = 0) -> Result:
    """Three SGD steps with momentum as compiled steps vs the same steps run eagerly, on one backend."""
    from .compiled import CompiledTrainStep
    from .models import lenet
    from .nn import CrossEntropyLoss
    from .optim import SGD

    placement = parse_spec(spec)
    initial = {k: to_numpy(v) for k, v in lenet(seed=seed, dtype=dtype, device="numpy").state_dict().items()}
    rtol, atol = TOLERANCES[dtype]

    def run(compiled: bool):
        model = lenet(seed=seed, dtype=dtype, device=placement)
        model.load_state_dict(initial)
        loss_fn = CrossEntropyLoss(check_labels=False)
        optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
        step = CompiledTrainStep(model, loss_fn, optimizer) if compiled else None
        rng = numpy.random.default_rng(seed + 1)
        losses = []
        for _ in range(3):
            images = to_device(rng.standard_normal((8, 1, 28, 28)).astype(dtype), placement)
            labels = to_device(rng.integers(0, 10, 8), placement)
            if step is not None:
                loss, _ = step(images, labels)
            else:
                loss_tensor = loss_fn(model(images), labels)
                optimizer.zero_grad()
                loss_tensor.backward()
                optimizer.step()
                loss = loss_tensor.data
            losses.append(to_numpy(loss).reshape(1))
        return [numpy.concatenate(losses)] + [to_numpy(v) for v in model.state_dict().values()]

    try:
        compiled, eager = run(True), run(False)
    except Exception as error:  # noqa: BLE001 - the report shows any failure as a row
        return Result(placement.spec, dtype, "lenet_3_sgd_compiled", float("nan"), float("nan"), False,
                      f"{type(error).__name__}: {error}", rtol, atol)
    return Result(placement.spec, dtype, "lenet_3_sgd_compiled", *_compare(compiled, eager, rtol, atol), "",
                  rtol, atol)


def check_in_place_training(spec, dtype: str, seed: int = 0) -> Result:
    """Three LeNet SGD steps (momentum, weight decay) updating the parameters in place vs rebinding them to
    new arrays, on one backend that updates in place: the two must give the same bits."""
    from .models import lenet

    placement = parse_spec(spec)
    initial = {k: to_numpy(v) for k, v in lenet(seed=seed, dtype=dtype, device="numpy").state_dict().items()}
    case = "lenet_in_place_bits"
    try:
        in_place = _train_steps(placement, dtype, initial, seed=seed, in_place=True)
        rebound = _train_steps(placement, dtype, initial, seed=seed, in_place=False)
    except Exception as error:  # noqa: BLE001 - the report shows any failure as a row
        return Result(placement.spec, dtype, case, float("nan"), float("nan"), False,
                      f"{type(error).__name__}: {error}", 0.0, 0.0)
    worst_abs, worst_rel, _ = _compare(in_place, rebound, 0.0, 0.0)
    same_bits = all(numpy.array_equal(a, b) for a, b in zip(in_place, rebound))
    return Result(placement.spec, dtype, case, worst_abs, worst_rel, same_bits, "", 0.0, 0.0)


def _updates_in_place(placement) -> bool:
    from .backends import updates_in_place

    return updates_in_place(to_device(numpy.zeros(1, dtype=numpy.float32), placement))


def backend_specs() -> list[str]:
    """Every backend and device usable here, e.g. ``array_api_strict:device1``.

    Devices without float64 (array-api-strict's emulated ``no_float64`` and
    ``no_x64``) are left out: the reference comparison and the int64 labels
    the training run uses need 64-bit types.
    """
    return [spec for info in available_backends() for spec in info.devices if parse_spec(spec).supports_float64]


def run_parity(specs=None, dtypes=("float64", "float32"), out=None, include_training=True, cases=None) -> int:
    """Print the parity table for ``specs`` (default: all available); return 0 if all pass, else 1.

    ``cases`` limits the op cases to those names (default: all registered).
    Failures come first; each row shows the tolerance it was held to
    (``atol`` is relative to the largest reference magnitude).
    """
    out = out or sys.stdout
    specs = list(specs) if specs else backend_specs()
    names = list(CASES) if cases is None else list(cases)
    results = []
    for spec in specs:
        for dtype in dtypes:
            results.extend(check_op(name, spec, dtype) for name in names)
            if include_training:
                results.append(check_training(spec, dtype))
                if parse_spec(spec).compiles_steps:
                    results.append(check_compiled_training(spec, dtype))
                if _updates_in_place(parse_spec(spec)):
                    results.append(check_in_place_training(spec, dtype))
    results.sort(key=lambda r: r.passed)  # stable: failures first, otherwise in run order
    header = (f"{'backend':<28} {'dtype':<8} {'case':<20} {'max abs diff':>13} {'max rel diff':>13} "
              f"{'rtol':>8} {'atol':>8}  result")
    print(header, file=out)
    print("-" * len(header), file=out)
    for r in results:
        verdict = "pass" if r.passed else "FAIL"
        print(f"{r.backend:<28} {r.dtype:<8} {r.case:<20} {r.max_abs:>13.3e} {r.max_rel:>13.3e} "
              f"{r.rtol:>8.0e} {r.atol:>8.0e}  {verdict}", file=out)
        if r.error:
            print(f"    {r.error}", file=out)
    failures = sum(not r.passed for r in results)
    print(f"\n{len(results) - failures} passed, {failures} failed "
          f"({len(specs)} backend(s): {', '.join(specs)}). A row passes when every entry is within "
          "atol x max|reference| + rtol x |reference|, so a large relative difference on an entry near zero "
          "can still pass.", file=out)
    return 1 if failures else 0
