"""Optimizers, parameter groups and gradient clipping against PyTorch, step for step.

Each optimizer runs 20 steps with the same gradients as ``torch.optim`` (float64,
rtol 1e-10), with and without its options, with two parameter groups, and
with a parameter that sits out steps (its own step count, as PyTorch keeps
it). Then: parameter groups as an API (defaults, ``add_param_group``,
``optimizer.lr``), state dicts through a checkpoint, state saved before
parameter groups existed, argument errors; and ``clip_grad_norm_`` /
``clip_grad_value_`` against ``torch.nn.utils`` on every backend and under
``jax.jit``.
"""

import json
import math

import numpy as np
import pytest

import portacnn
from portacnn.checkpoint import load_checkpoint, restore_training_state, save_checkpoint
from portacnn.errors import ArgumentError, ArgumentTypeError, CheckpointError, NonFiniteError, UsageError
from portacnn.nn import Linear, Parameter, Sequential
from portacnn.nn.utils import clip_grad_norm_, clip_grad_value_
from portacnn.optim import SGD, Adagrad, Adam, AdamW, RMSprop

SHAPES = [(3, 4), (4,), (2, 3)]
STEPS = 20


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _host_problem(seed=0, steps=STEPS):
    rng = np.random.default_rng(seed)
    initial = [rng.standard_normal(shape) for shape in SHAPES]
    grads = [[rng.standard_normal(shape) for shape in SHAPES] for _ in range(steps)]
    return initial, grads


def _groups(params, split, group_options):
    """The parameters as given to the optimizer: a plain list, or two groups (the second with its own options)."""
    if not split:
        return list(params)
    return [{"params": params[:2]}, dict(group_options, params=params[2:])]


def _run_both(torch, ours_type, theirs_type, options, group_options=None, skip=lambda step, index: False,
              steps=STEPS):
    """Run both optimizers ``steps`` steps on the same gradients; ``skip(step, index)`` leaves a gradient out."""
    initial, grads = _host_problem(steps=steps)
    ours = [Parameter(p.copy()) for p in initial]
    theirs = [torch.tensor(p.copy(), requires_grad=True) for p in initial]
    split = group_options is not None
    optimizer = ours_type(_groups(ours, split, group_options), **options)
    reference = theirs_type(_groups(theirs, split, group_options), **options)
    for step, step_grads in enumerate(grads):
        for index, (p, t, g) in enumerate(zip(ours, theirs, step_grads)):
            left_out = skip(step, index)
            p.grad = None if left_out else g.copy()
            t.grad = None if left_out else torch.tensor(g)
        optimizer.step()
        reference.step()
    return optimizer, reference, ours, theirs


def _assert_same(ours, theirs, rtol=1e-10):
    for index, (p, t) in enumerate(zip(ours, theirs)):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=rtol, atol=1e-13, err_msg=f"parameter {index}")


CONFIGS = [
    # (ours, torch's name, options, the second group's own options)
    (SGD, "SGD", dict(lr=0.05), dict(lr=0.2)),
    (SGD, "SGD", dict(lr=0.05, momentum=0.9), dict(momentum=0.5, lr=0.01)),
    (SGD, "SGD", dict(lr=0.05, momentum=0.9, weight_decay=1e-2), dict(weight_decay=0.1)),
    (SGD, "SGD", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3), dict(momentum=0.7)),
    (SGD, "SGD", dict(lr=0.05, momentum=0.9, dampening=0.3), dict(dampening=0.0)),
    (SGD, "SGD", dict(lr=0.05, momentum=0.8, maximize=True), dict(lr=0.1)),
    (Adam, "Adam", dict(lr=0.01), dict(lr=0.03, betas=(0.8, 0.99))),
    (Adam, "Adam", dict(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=1e-2), dict(weight_decay=0.0)),
    (Adam, "Adam", dict(lr=0.01, amsgrad=True), dict(amsgrad=False)),
    (Adam, "Adam", dict(lr=0.01, maximize=True, weight_decay=1e-2), dict(eps=1e-4)),
    (AdamW, "AdamW", dict(lr=0.01), dict(weight_decay=0.1)),
    (AdamW, "AdamW", dict(lr=0.01, weight_decay=0.0), dict(weight_decay=0.05, lr=0.02)),
    (AdamW, "AdamW", dict(lr=0.01, betas=(0.85, 0.95), amsgrad=True), dict(amsgrad=False)),
    (RMSprop, "RMSprop", dict(), dict(lr=0.001)),
    (RMSprop, "RMSprop", dict(lr=0.01, alpha=0.9, weight_decay=1e-2), dict(alpha=0.5)),
    (RMSprop, "RMSprop", dict(lr=0.01, momentum=0.9), dict(momentum=0.0)),
    (RMSprop, "RMSprop", dict(lr=0.01, centered=True), dict(centered=False, eps=1e-3)),
    (RMSprop, "RMSprop", dict(lr=0.01, centered=True, momentum=0.5, weight_decay=1e-3, maximize=True),
     dict(momentum=0.9)),
    (Adagrad, "Adagrad", dict(), dict(lr=0.1)),
    (Adagrad, "Adagrad", dict(lr=0.1, lr_decay=0.05), dict(lr_decay=0.0)),
    (Adagrad, "Adagrad", dict(lr=0.1, weight_decay=1e-2, initial_accumulator_value=0.5, eps=1e-6),
     dict(initial_accumulator_value=0.0)),
]


def _config_id(config):
    ours, _, options, _ = config
    return ours.__name__ + "".join(f"-{k}={v}" for k, v in options.items())


@pytest.mark.parametrize("two_groups", [False, True], ids=["one-group", "two-groups"])
@pytest.mark.parametrize("config", CONFIGS, ids=[_config_id(c) for c in CONFIGS])
def test_optimizer_matches_torch_for_20_steps(torch, config, two_groups):
    ours_type, name, options, group_options = config
    _, _, ours, theirs = _run_both(torch, ours_type, getattr(torch.optim, name), options,
                                   group_options if two_groups else None)
    _assert_same(ours, theirs)


@pytest.mark.parametrize("ours_type, name, options", [
    (Adam, "Adam", dict(lr=0.01, weight_decay=1e-2)),
    (AdamW, "AdamW", dict(lr=0.01)),
    (Adagrad, "Adagrad", dict(lr=0.1, lr_decay=0.1)),
    (RMSprop, "RMSprop", dict(lr=0.01, momentum=0.9, centered=True)),
    (SGD, "SGD", dict(lr=0.1, momentum=0.9)),
])
def test_a_parameter_that_sits_out_steps_keeps_its_own_step_count(torch, ours_type, name, options):
    """Frozen for the first 6 steps and again at step 12: its bias correction (Adam) and rate decay
    (Adagrad) count only its own updates, as PyTorch's per-parameter ``state["step"]`` does."""
    def skip(step, index):
        return index == 1 and (step < 6 or step == 12)

    optimizer, _, ours, theirs = _run_both(torch, ours_type, getattr(torch.optim, name), options, skip=skip)
    _assert_same(ours, theirs)
    if optimizer._counts_steps:
        assert optimizer.state_dict()["steps"] == [STEPS, STEPS - 7, STEPS]


def test_groups_changed_mid_run_follow_torch(torch):
    """Hyper-parameters are read at every step: changing ``param_groups[i]`` takes effect, as in PyTorch,
    and a group added later (``add_param_group``) starts its own state."""
    initial, grads = _host_problem()
    ours = [Parameter(p.copy()) for p in initial]
    theirs = [torch.tensor(p.copy(), requires_grad=True) for p in initial]
    optimizer = Adam(ours[:2], lr=0.01)
    reference = torch.optim.Adam(theirs[:2], lr=0.01)
    for step, step_grads in enumerate(grads):
        if step == 5:
            for group in (optimizer.param_groups[0], reference.param_groups[0]):
                group["lr"], group["betas"] = 0.02, (0.5, 0.9)
        if step == 8:
            optimizer.add_param_group({"params": ours[2:], "weight_decay": 0.1, "amsgrad": True})
            reference.add_param_group({"params": theirs[2:], "weight_decay": 0.1, "amsgrad": True})
        for p, t, g in zip(ours, theirs, step_grads):
            p.grad, t.grad = g.copy(), torch.tensor(g)
        optimizer.step()
        reference.step()
    _assert_same(ours, theirs)
    assert [len(g["params"]) for g in optimizer.param_groups] == [2, 1]


# --------------------------------------------------------------------------
# parameter groups as an API


def test_param_groups_look_like_torchs(torch):
    ours = [Parameter(np.zeros(s)) for s in SHAPES]
    theirs = [torch.zeros(s, requires_grad=True) for s in SHAPES]
    optimizer = SGD([{"params": ours[:2]}, {"params": ours[2:], "lr": 0.5, "momentum": 0.1}], lr=0.01,
                    momentum=0.9)
    reference = torch.optim.SGD([{"params": theirs[:2]}, {"params": theirs[2:], "lr": 0.5, "momentum": 0.1}],
                                lr=0.01, momentum=0.9)
    assert len(optimizer.param_groups) == 2
    for group, expected in zip(optimizer.param_groups, reference.param_groups):
        for key in ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize"):
            assert group[key] == expected[key], key
        assert len(group["params"]) == len(expected["params"])
    assert optimizer.param_groups[0]["params"][0] is ours[0]
    assert optimizer.defaults["lr"] == 0.01 and optimizer.defaults["momentum"] == 0.9


@pytest.mark.parametrize("optimizer_type, torch_name", [(SGD, "SGD"), (Adam, "Adam"), (AdamW, "AdamW"),
                                                        (RMSprop, "RMSprop"), (Adagrad, "Adagrad")])
def test_defaults_are_torchs(torch, optimizer_type, torch_name):
    ours = optimizer_type([Parameter(np.zeros(2))])
    theirs = getattr(torch.optim, torch_name)([torch.zeros(2, requires_grad=True)])
    for key, value in ours.defaults.items():
        assert theirs.defaults[key] == value, key


def test_single_group_attributes_and_multi_group_errors():
    a, b = Parameter(np.zeros(2)), Parameter(np.zeros(3))
    single = SGD([a, b], lr=0.1, momentum=0.9)
    assert single.lr == 0.1 and single.momentum == 0.9 and isinstance(single.lr, float)
    single.lr = 0.05
    assert single.param_groups[0]["lr"] == 0.05
    double = SGD([{"params": [a]}, {"params": [b], "lr": 0.2}], lr=0.1)
    assert double.momentum == 0.0  # every group agrees
    with pytest.raises(UsageError, match=r"param_groups\[i\]\['lr'\]"):
        double.lr
    with pytest.raises(UsageError, match="2 parameter groups"):
        double.lr = 0.3


def test_numpy_scalars_become_python_floats_so_float32_stays_float32():
    p = Parameter(np.ones(3, dtype=np.float32))
    optimizer = Adam([p], lr=np.float64(0.01), betas=(np.float64(0.9), 0.999), eps=np.float64(1e-8))
    p.grad = np.ones(3, dtype=np.float32)
    optimizer.step()
    assert type(optimizer.lr) is float and p.data.dtype == np.float32


def test_step_calls_the_closure_and_returns_its_loss():
    p = Parameter(np.array([3.0]))

    def closure():
        p.grad = 2 * p.data
        return float(p.data[0] ** 2)

    assert SGD([p], lr=0.25).step(closure) == 9.0
    np.testing.assert_array_equal(p.data, [1.5])


def test_zero_grad_can_keep_zero_arrays():
    p = Parameter(np.ones(2))
    p.grad = np.ones(2)
    SGD([p], lr=0.1).zero_grad(set_to_none=False)
    np.testing.assert_array_equal(p.grad, np.zeros(2))


# --------------------------------------------------------------------------
# state dicts and checkpoints


def _model():
    return Sequential(Linear(4, 3, rng=0, dtype="float64"), Linear(3, 2, rng=1, dtype="float64"))


def _two_group_optimizer(model, optimizer_type, **options):
    params = model.parameters()
    return optimizer_type([{"params": params[:2]}, {"params": params[2:], "lr": 0.003, "weight_decay": 0.1}],
                          **options)


def _train(model, optimizer, grads):
    for step_grads in grads:
        for p, g in zip(model.parameters(), step_grads):
            p.grad = g
        optimizer.step()


@pytest.mark.parametrize("optimizer_type, options", [
    (SGD, dict(lr=0.01, momentum=0.9, nesterov=True)),
    (Adam, dict(lr=0.01, amsgrad=True)),
    (AdamW, dict(lr=0.01)),
    (RMSprop, dict(lr=0.01, momentum=0.5, centered=True)),
    (Adagrad, dict(lr=0.1, lr_decay=0.01)),
])
def test_two_group_state_survives_a_checkpoint_and_continues_identically(tmp_path, optimizer_type, options):
    rng = np.random.default_rng(3)
    shapes = [p.shape for p in _model().parameters()]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(8)]
    straight = _model()
    straight_optimizer = _two_group_optimizer(straight, optimizer_type, **options)
    _train(straight, straight_optimizer, grads)

    first = _model()
    first_optimizer = _two_group_optimizer(first, optimizer_type, **options)
    _train(first, first_optimizer, grads[:5])
    first_optimizer.param_groups[1]["lr"] = 0.004  # as a scheduler would: the saved group keeps it
    path = save_checkpoint(tmp_path / "last.npz", first, first_optimizer, epoch=1)
    with np.load(path, allow_pickle=False) as archive:
        metadata = json.loads(archive["metadata"].tobytes())
    assert [g["params"] for g in metadata["optimizer"]["param_groups"]] == [[0, 1], [2, 3]]

    resumed = _model()
    resumed_optimizer = _two_group_optimizer(resumed, optimizer_type, **options)
    restore_training_state(load_checkpoint(path), resumed, resumed_optimizer)
    assert resumed_optimizer.param_groups[1]["lr"] == 0.004
    assert resumed_optimizer.step_count == 5
    resumed_optimizer.param_groups[1]["lr"] = 0.003  # back to the straight run's rate, to compare the rest
    _train(resumed, resumed_optimizer, grads[5:])
    for (name, value), expected in zip(resumed.state_dict().items(), straight.state_dict().values()):
        np.testing.assert_allclose(value, expected, rtol=1e-12, atol=1e-15, err_msg=name)
    for name in straight_optimizer._state_names:
        for value, expected in zip(getattr(resumed_optimizer, name), getattr(straight_optimizer, name)):
            assert (value is None) == (expected is None)
            if value is not None:
                np.testing.assert_allclose(value, expected, rtol=1e-12, atol=1e-15)


def test_state_saved_before_parameter_groups_still_loads_and_continues():
    """The format of earlier versions: ``lr``, ``step_count`` and the arrays; Adam's step was global."""
    rng = np.random.default_rng(4)
    grads = [rng.standard_normal(3) for _ in range(6)]
    p = Parameter(np.zeros(3))
    optimizer = Adam([p], lr=0.1)
    for g in grads[:3]:
        p.grad = g
        optimizer.step()
    state = optimizer.state_dict()
    old = {"lr": 0.1, "step_count": state["step_count"],
           **{k: v for k, v in state.items() if k.startswith(("first_moments", "second_moments"))}}
    q = Parameter(p.data.copy())
    restored = Adam([q], lr=0.5)
    restored.load_state_dict(old)
    assert restored.lr == 0.1 and restored.state_dict()["steps"] == [3]
    for g in grads[3:]:
        p.grad = q.grad = g
        optimizer.step()
        restored.step()
    np.testing.assert_array_equal(q.data, p.data)


def test_loading_state_of_another_grouping_is_refused():
    model = _model()
    state = _two_group_optimizer(model, SGD, lr=0.1).state_dict()
    with pytest.raises(CheckpointError, match=r"sizes \[2, 2\].*\[4\]"):
        SGD(model.parameters(), lr=0.1).load_state_dict(state)
    old = {"lr": 0.1, "step_count": 0}
    with pytest.raises(CheckpointError, match="one parameter group"):
        _two_group_optimizer(model, SGD, lr=0.1).load_state_dict(old)


# --------------------------------------------------------------------------
# argument errors


@pytest.mark.parametrize("make, exception, fragments", [
    (lambda p: AdamW(p, betas=(0.9,)), ArgumentTypeError, ["AdamW betas", "pair"]),
    (lambda p: RMSprop(p, alpha=1.5), ArgumentError, ["RMSprop alpha", "<= 1"]),
    (lambda p: RMSprop(p, centered=1), ArgumentTypeError, ["centered", "True or False"]),
    (lambda p: Adagrad(p, lr_decay=-1), ArgumentError, ["Adagrad lr_decay", ">= 0"]),
    (lambda p: Adagrad(p, eps=0), ArgumentError, ["Adagrad eps", "> 0"]),
    (lambda p: SGD(p, momentum=0.9, dampening=0.1, nesterov=True), ArgumentError, ["Nesterov", "dampening"]),
    (lambda p: SGD([{"params": p[:1]}, {"params": p[1:], "lr": -1}]), ArgumentError,
     ["SGD parameter group 1 learning rate lr", "> 0"]),
    (lambda p: SGD([{"params": p[:1]}, {"lr": 0.1}]), ArgumentError, ["parameter group 1", "no 'params'"]),
    (lambda p: SGD([{"params": p[:1]}, p[1]]), ArgumentTypeError, ["mixes parameter-group dicts"]),
    (lambda p: SGD([{"params": p}, {"params": p[:1]}]), ArgumentError, ["same parameter twice", "group 1"]),
    (lambda p: SGD(set(p)), ArgumentTypeError, ["set", "order"]),
    (lambda p: SGD(p[0]), ArgumentTypeError, ["[param]"]),
    (lambda p: SGD({"params": p}), ArgumentTypeError, ["list of parameter groups"]),
])
def test_optimizer_argument_errors(make, exception, fragments):
    params = [Parameter(np.zeros(2)), Parameter(np.zeros(3))]
    with pytest.raises(exception) as info:
        make(params)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


# --------------------------------------------------------------------------
# gradient clipping


CLIP_SHAPES = [(3, 4), (5,), (2, 2, 2), (4,)]


def _clip_problem(case, scale=1.0):
    """Parameters on the case's backend, each with a gradient but the third; plus torch's twins."""
    rng = np.random.default_rng(7)
    hosts = [case.ref(scale * rng.standard_normal(s)) for s in CLIP_SHAPES]
    ours = [Parameter(case.put(np.zeros(s))) for s in CLIP_SHAPES]
    for index, (p, g) in enumerate(zip(ours, hosts)):
        if index != 2:
            p.grad = case.put(g)
    return ours, hosts


def _torch_twins(torch, hosts):
    twins = [torch.zeros(h.shape, dtype=torch.float64, requires_grad=True) for h in hosts]
    for index, (t, g) in enumerate(zip(twins, hosts)):
        if index != 2:
            t.grad = torch.tensor(g)
    return twins


@pytest.mark.parametrize("max_norm", [0.5, 1e3], ids=["clips", "leaves-alone"])
@pytest.mark.parametrize("norm_type", [2.0, 1.0, math.inf, 3.5], ids=["l2", "l1", "inf", "p3.5"])
def test_clip_grad_norm_matches_torch_on_every_backend(torch, case, norm_type, max_norm):
    ours, hosts = _clip_problem(case)
    before = [p.grad for p in ours]
    total = clip_grad_norm_(ours, max_norm, norm_type=norm_type)
    twins = _torch_twins(torch, hosts)
    expected = torch.nn.utils.clip_grad_norm_(twins, max_norm, norm_type=norm_type)
    case.assert_close(total, expected.numpy(), err_msg="total norm")
    assert tuple(total.shape) == ()
    for index, (p, t) in enumerate(zip(ours, twins)):
        if index == 2:
            assert p.grad is None
        else:
            case.assert_close(p.grad, t.grad.numpy(), err_msg=f"gradient {index}")
            assert p.grad is not before[index], "rebound, never scaled in place"
    for index, (old, host) in enumerate(zip(before, hosts)):
        if old is not None:
            case.assert_close(old, host, rtol=0, atol=0, err_msg="the old gradient array is untouched")


def test_clip_grad_value_matches_torch_on_every_backend(torch, case):
    ours, hosts = _clip_problem(case)
    before = [p.grad for p in ours]
    clip_grad_value_(ours, 0.4)
    twins = _torch_twins(torch, hosts)
    torch.nn.utils.clip_grad_value_(twins, 0.4)
    for index, (p, t) in enumerate(zip(ours, twins)):
        if index != 2:
            case.assert_close(p.grad, t.grad.numpy(), err_msg=f"gradient {index}")
            case.assert_close(before[index], hosts[index], rtol=0, atol=0)


def test_clip_grad_of_a_single_parameter_and_without_gradients(torch):
    p = Parameter(np.zeros(3, dtype=np.float32))
    total = clip_grad_norm_(p, 1.0)  # no gradient anywhere: a zero norm, of the parameters' backend and dtype
    assert isinstance(total, np.ndarray) and total.shape == () and total.dtype == np.float32 and total == 0
    p.grad = np.array([3.0, 4.0, 0.0], dtype=np.float32)
    total = clip_grad_norm_(p, 1.0)
    assert isinstance(total, np.ndarray) and total.dtype == np.float32
    np.testing.assert_allclose(total, 5.0)
    np.testing.assert_allclose(p.grad, np.array([3.0, 4.0, 0.0]) / (5.0 + 1e-6), rtol=1e-6)


def test_non_finite_norm_scales_like_torch_or_raises_when_asked(torch):
    grad = np.array([1.0, np.inf, -2.0])
    p = Parameter(np.zeros(3))
    p.grad = grad.copy()
    t = torch.zeros(3, dtype=torch.float64, requires_grad=True)
    t.grad = torch.tensor(grad)
    with np.errstate(invalid="ignore"):  # 0 * inf
        total = clip_grad_norm_([p], 1.0)
    expected = torch.nn.utils.clip_grad_norm_([t], 1.0)
    assert np.isinf(total) and np.isinf(expected.item())
    np.testing.assert_array_equal(p.grad, t.grad.numpy())  # 0 * inf = nan, as in torch
    p.grad = grad.copy()
    with pytest.raises(NonFiniteError, match="error_if_nonfinite=False") as info:
        clip_grad_norm_([p], 1.0, error_if_nonfinite=True)
    assert isinstance(info.value, RuntimeError)
    np.testing.assert_array_equal(p.grad, grad)


def test_clipping_traces_under_jax_jit():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)
    rng = np.random.default_rng(8)
    hosts = [rng.standard_normal(s) for s in CLIP_SHAPES]
    params = [Parameter(portacnn.to_device(np.zeros(s), "jax")) for s in CLIP_SHAPES]

    def clip(grads):
        for p, g in zip(params, grads):
            p.grad = g
        total = clip_grad_norm_(params, 0.7, norm_type=math.inf)
        clip_grad_value_(params, 0.1)
        return total, [p.grad for p in params]

    arrays = [portacnn.to_device(h, "jax") for h in hosts]
    traced_total, traced = jax.jit(clip)(arrays)
    eager_total, eager = clip(arrays)
    np.testing.assert_allclose(np.asarray(traced_total), np.asarray(eager_total), rtol=1e-12)
    for a, b in zip(traced, eager):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12)


@pytest.mark.parametrize("call, exception, fragments", [
    (lambda ps: clip_grad_norm_(ps, -1.0), ArgumentError, ["max_norm", ">= 0"]),
    (lambda ps: clip_grad_norm_(ps, 1.0, norm_type=0), ArgumentError, ["norm_type", "> 0", "math.inf"]),
    (lambda ps: clip_grad_norm_(ps, 1.0, norm_type=-math.inf), ArgumentError, ["norm_type"]),
    (lambda ps: clip_grad_norm_(ps, 1.0, norm_type="fro"), ArgumentTypeError, ["norm_type", "'fro'"]),
    (lambda ps: clip_grad_norm_(Linear(2, 2), 1.0), ArgumentTypeError, ["not the model", "model.parameters()"]),
    (lambda ps: clip_grad_norm_([], 1.0), ArgumentError, ["no parameters"]),
    (lambda ps: clip_grad_value_(ps, -0.1), ArgumentError, ["clip_value", ">= 0"]),
    (lambda ps: clip_grad_value_([np.ones(2)], 0.1), ArgumentTypeError, ["item 0", "ndarray"]),
])
def test_clip_argument_errors(call, exception, fragments):
    params = [Parameter(np.zeros(2))]
    params[0].grad = np.ones(2)
    with pytest.raises(exception) as info:
        call(params)
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)
