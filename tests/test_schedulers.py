"""Learning-rate schedulers: PyTorch's values for 50 steps, per parameter group, through checkpoints.

Every scheduler (and a user's subclass, closed-form or recursive) is run
next to ``torch.optim.lr_scheduler``'s for 50 steps, with one and with two
parameter groups, comparing every group's rate (and OneCycleLR's momentum)
at rtol 1e-12. Then each survives a checkpoint part-way (``save_checkpoint``,
``restore_training_state``) and continues as if never stopped; state from
before parameter groups (format version 1) still resumes; and bad arguments
and states give clear errors.
"""

import json

import numpy as np
import pytest
from support import rewrite_checkpoint

import portacnn.optim as optim
from portacnn.checkpoint import load_checkpoint, restore_training_state, save_checkpoint
from portacnn.errors import ArgumentError, ArgumentTypeError, CheckpointError, UsageError
from portacnn.nn import Linear, Parameter, Sequential
from portacnn.optim import SGD, Adagrad, Adam, LRScheduler, StepLR

STEPS = 50
LRS = (0.1, 0.02)


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


def _wave(epoch):
    return 0.95 ** epoch + 0.1 * (epoch % 3)


def _ramp(epoch):
    return min(1.0, (epoch + 1) / 8)


# Each builds the same schedule from either library: lib is portacnn.optim or torch.optim.lr_scheduler.
SCHEDULES = {
    "StepLR": lambda lib, opt: lib.StepLR(opt, step_size=7, gamma=0.5),
    "MultiStepLR": lambda lib, opt: lib.MultiStepLR(opt, milestones=[30, 5, 12, 12], gamma=0.3),
    "ExponentialLR": lambda lib, opt: lib.ExponentialLR(opt, gamma=0.93),
    "CosineAnnealingLR": lambda lib, opt: lib.CosineAnnealingLR(opt, T_max=20),  # past T_max, it rises again
    "CosineAnnealingLR-eta_min": lambda lib, opt: lib.CosineAnnealingLR(opt, T_max=13, eta_min=1e-3),
    "LinearLR": lambda lib, opt: lib.LinearLR(opt),
    "LinearLR-custom": lambda lib, opt: lib.LinearLR(opt, start_factor=0.05, end_factor=0.8, total_iters=10),
    "LambdaLR": lambda lib, opt: lib.LambdaLR(opt, lr_lambda=_wave),
    "LambdaLR-per-group": lambda lib, opt: lib.LambdaLR(opt, lr_lambda=[_wave, _ramp][:len(opt.param_groups)]),
    "OneCycleLR": lambda lib, opt: lib.OneCycleLR(opt, max_lr=0.5, total_steps=STEPS),
    "OneCycleLR-per-group": lambda lib, opt: lib.OneCycleLR(
        opt, max_lr=[0.5, 0.2][:len(opt.param_groups)], epochs=5, steps_per_epoch=10, base_momentum=0.8,
        max_momentum=[0.9, 0.99][:len(opt.param_groups)]),
    "OneCycleLR-linear-three-phase": lambda lib, opt: lib.OneCycleLR(
        opt, max_lr=0.3, total_steps=STEPS, pct_start=0.25, anneal_strategy="linear", three_phase=True,
        div_factor=10.0, final_div_factor=100.0),
    "OneCycleLR-no-momentum": lambda lib, opt: lib.OneCycleLR(opt, max_lr=0.3, total_steps=60,
                                                              cycle_momentum=False),
    "SequentialLR-warmup-cosine": lambda lib, opt: lib.SequentialLR(
        opt, [lib.LinearLR(opt, start_factor=0.1, total_iters=5), lib.CosineAnnealingLR(opt, T_max=45)],
        milestones=[5]),
    "SequentialLR-three-stages": lambda lib, opt: lib.SequentialLR(
        opt, [lib.LinearLR(opt, start_factor=0.2, total_iters=4), lib.ExponentialLR(opt, gamma=0.9),
              lib.StepLR(opt, step_size=4, gamma=0.5)], milestones=[6, 20]),
    "SequentialLR-nested": lambda lib, opt: lib.SequentialLR(
        opt, [lib.SequentialLR(opt, [lib.LinearLR(opt, total_iters=3), lib.ExponentialLR(opt, gamma=0.8)],
                               milestones=[3]),
              lib.MultiStepLR(opt, milestones=[5, 9])], milestones=[10]),
}


def _optimizers(torch, groups, kind="SGD"):
    ours_params = [Parameter(np.zeros(2)) for _ in range(groups)]
    theirs_params = [torch.zeros(2, requires_grad=True) for _ in range(groups)]

    def grouped(params):
        return [{"params": [p], "lr": lr} for p, lr in zip(params, LRS)]

    if kind == "SGD":
        return SGD(grouped(ours_params), momentum=0.9), torch.optim.SGD(grouped(theirs_params), momentum=0.9)
    return Adam(grouped(ours_params)), torch.optim.Adam(grouped(theirs_params))


def _momenta(optimizer):
    return [group["betas"][0] if "betas" in group else group["momentum"] for group in optimizer.param_groups]


def _assert_same_rates(ours, theirs, where):
    got = [group["lr"] for group in ours.param_groups]
    expected = [group["lr"] for group in theirs.param_groups]
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=0, err_msg=f"lr {where}")
    np.testing.assert_allclose(_momenta(ours), _momenta(theirs), rtol=1e-12, atol=0, err_msg=f"momentum {where}")
    assert all(type(lr) is float for lr in got)


# torch's nested SequentialLR steps its inner schedulers in a way its own order check misreads.
@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before:UserWarning")
@pytest.mark.parametrize("kind", ["SGD", "Adam"])
@pytest.mark.parametrize("groups", [1, 2], ids=["one-group", "two-groups"])
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_scheduler_matches_torch_for_50_steps(torch, name, groups, kind):
    ours_optimizer, theirs_optimizer = _optimizers(torch, groups, kind)
    ours = SCHEDULES[name](optim, ours_optimizer)
    theirs = SCHEDULES[name](torch.optim.lr_scheduler, theirs_optimizer)
    _assert_same_rates(ours_optimizer, theirs_optimizer, "after construction")
    for step in range(1, STEPS + 1):
        ours_optimizer.step()
        theirs_optimizer.step()
        ours.step()
        theirs.step()
        _assert_same_rates(ours_optimizer, theirs_optimizer, f"after step {step}")
        np.testing.assert_allclose(ours.get_last_lr(), theirs.get_last_lr(), rtol=1e-12, atol=0)


class Halving(LRScheduler):
    """Closed form: only factor(epoch)."""

    def factor(self, epoch):
        return 0.5 ** (epoch // 3)


class Decay(LRScheduler):
    """Recursive, as PyTorch's own: get_lr() from the current rates."""

    def get_lr(self):
        if self.last_epoch == 0:
            return [group["lr"] for group in self.optimizer.param_groups]
        return [group["lr"] * 0.9 for group in self.optimizer.param_groups]


@pytest.mark.parametrize("ours_type, torch_name, options", [
    (Halving, "StepLR", dict(step_size=3, gamma=0.5)),
    (Decay, "ExponentialLR", dict(gamma=0.9)),
])
def test_a_users_subclass_works_with_factor_or_get_lr(torch, ours_type, torch_name, options):
    ours_optimizer, theirs_optimizer = _optimizers(torch, 2)
    ours = ours_type(ours_optimizer)
    theirs = getattr(torch.optim.lr_scheduler, torch_name)(theirs_optimizer, **options)
    for step in range(STEPS):
        _assert_same_rates(ours_optimizer, theirs_optimizer, f"at step {step}")
        theirs_optimizer.step()
        ours.step()
        theirs.step()
    # A checkpoint round trip of a user's scheduler: its state is its attributes, as in PyTorch.
    state = json.loads(json.dumps(ours.state_dict()))
    again = ours_type(SGD([{"params": [Parameter(np.zeros(1))], "lr": lr} for lr in LRS]))
    again.load_state_dict(state)
    assert again.last_epoch == STEPS and again.get_last_lr() == ours.get_last_lr()


def test_get_lr_and_base_lr_conveniences():
    optimizer = SGD([Parameter(np.zeros(1))], lr=0.2)
    scheduler = StepLR(optimizer, 2)
    assert scheduler.get_last_lr() == [0.2] and scheduler.base_lr == 0.2 and scheduler.base_lrs == [0.2]
    assert optimizer.param_groups[0]["initial_lr"] == 0.2
    two = SGD([{"params": [Parameter(np.zeros(1))]}, {"params": [Parameter(np.zeros(1))], "lr": 0.5}], lr=0.1)
    with pytest.raises(UsageError, match="base_lrs"):
        StepLR(two, 2).base_lr


# --------------------------------------------------------------------------
# checkpoints


def _model():
    return Sequential(Linear(3, 2, rng=0, dtype="float64"), Linear(2, 2, rng=1, dtype="float64"))


def _setup(name, groups):
    model = _model()
    params = model.parameters()
    if groups == 1:
        optimizer = SGD(params, lr=LRS[0], momentum=0.9)
    else:
        optimizer = SGD([{"params": params[:2], "lr": LRS[0]}, {"params": params[2:], "lr": LRS[1]}],
                        momentum=0.9)
    return model, optimizer, SCHEDULES[name](optim, optimizer)


def _rates(optimizer):
    return [(group["lr"], group["momentum"]) for group in optimizer.param_groups]


@pytest.mark.parametrize("groups", [1, 2], ids=["one-group", "two-groups"])
@pytest.mark.parametrize("name", list(SCHEDULES))
def test_scheduler_survives_a_checkpoint_and_continues_identically(tmp_path, name, groups):
    _, straight_optimizer, straight = _setup(name, groups)
    expected = []
    for _ in range(STEPS):
        straight.step()
        expected.append(_rates(straight_optimizer))

    model, optimizer, scheduler = _setup(name, groups)
    for _ in range(20):
        scheduler.step()
    path = save_checkpoint(tmp_path / "last.npz", model, optimizer, scheduler, epoch=20)

    model, optimizer, scheduler = _setup(name, groups)  # fresh, as a resumed run builds them
    restore_training_state(load_checkpoint(path), model, optimizer, scheduler)
    assert _rates(optimizer) == expected[19]
    assert scheduler.last_epoch == 20
    for step in range(20, STEPS):
        scheduler.step()
        np.testing.assert_allclose(_rates(optimizer), expected[step], rtol=1e-15, atol=0, err_msg=f"step {step}")


class TableLambda:
    """A callable object: PyTorch (and portacnn) save its attributes with a LambdaLR's state."""

    def __init__(self, table):
        self.table = table

    def __call__(self, epoch):
        return self.table[min(epoch, len(self.table) - 1)]


def test_lambda_objects_attributes_are_saved_and_non_json_ones_refused(tmp_path):
    model = _model()
    optimizer = SGD(model.parameters(), lr=0.1)
    table = TableLambda([1.0, 0.5, 0.25])
    scheduler = optim.LambdaLR(optimizer, table)
    scheduler.step()
    table.table = [1.0, 0.5, 0.1]  # state the function carries
    path = save_checkpoint(tmp_path / "ok.npz", model, optimizer, scheduler)
    fresh_table = TableLambda([1.0])
    fresh_optimizer = SGD(_model().parameters(), lr=0.1)
    restore_training_state(load_checkpoint(path), _model(), fresh_optimizer, optim.LambdaLR(fresh_optimizer,
                                                                                              fresh_table))
    assert fresh_table.table == [1.0, 0.5, 0.1]

    table.table = np.array([1.0, 0.5])
    with pytest.raises(CheckpointError, match=r"LambdaLR scheduler state\['lr_lambdas'\]\[0\]\['table'\] "
                                              r"\(a ndarray\)"):
        save_checkpoint(tmp_path / "bad.npz", model, optimizer, scheduler)
    assert not (tmp_path / "bad.npz").exists()


def test_version_1_checkpoint_with_sgd_and_steplr_still_resumes(tmp_path):
    """Before parameter groups, the optimizer saved ``lr`` and the scheduler ``base_lr``."""
    model, optimizer, scheduler = _setup("StepLR", 1)
    for _ in range(9):
        scheduler.step()
    path = save_checkpoint(tmp_path / "v1.npz", model, optimizer, scheduler, epoch=9)
    rewrite_checkpoint(path, change_metadata=lambda metadata: metadata.update(
        format_version=1, optimizer={"lr": optimizer.lr, "step_count": 0, "type": "SGD"},
        scheduler={"base_lr": LRS[0], "last_epoch": 9, "type": "StepLR"}))

    fresh_model, fresh_optimizer, fresh_scheduler = _setup("StepLR", 1)
    fresh_optimizer.lr = 0.7
    restore_training_state(load_checkpoint(path), fresh_model, fresh_optimizer, fresh_scheduler)
    assert fresh_optimizer.lr == pytest.approx(optimizer.lr, rel=1e-15) and fresh_scheduler.base_lr == LRS[0]
    for _ in range(10):
        scheduler.step()
        fresh_scheduler.step()
        assert fresh_optimizer.lr == pytest.approx(optimizer.lr, rel=1e-12)


def test_restoring_into_another_kind_of_scheduler_is_refused(tmp_path):
    model, optimizer, scheduler = _setup("StepLR", 1)
    path = save_checkpoint(tmp_path / "a.npz", model, optimizer, scheduler)
    model, optimizer, _ = _setup("StepLR", 1)
    with pytest.raises(CheckpointError, match="holds StepLR state but the scheduler is ExponentialLR"):
        restore_training_state(load_checkpoint(path), model, optimizer, optim.ExponentialLR(optimizer, 0.9))


def test_sequential_state_of_other_stages_is_refused():
    _, _, scheduler = _setup("SequentialLR-warmup-cosine", 1)
    state = json.loads(json.dumps(scheduler.state_dict()))
    _, _, other = _setup("SequentialLR-three-stages", 1)
    with pytest.raises(CheckpointError, match="2 schedulers but this SequentialLR has 3"):
        other.load_state_dict(state)
    state["_schedulers"][1]["type"] = "StepLR"
    with pytest.raises(CheckpointError, match="a StepLR as scheduler 1"):
        scheduler.load_state_dict(state)


def test_scheduler_state_for_another_number_of_groups_is_refused():
    _, _, scheduler = _setup("ExponentialLR", 2)
    state = scheduler.state_dict()
    _, _, single = _setup("ExponentialLR", 1)
    with pytest.raises(CheckpointError, match="one number per parameter group"):
        single.load_state_dict(state)


# --------------------------------------------------------------------------
# argument and usage errors


def _sgd(groups=1):
    return SGD([{"params": [Parameter(np.zeros(1))]} for _ in range(groups)], lr=0.1, momentum=0.9)


@pytest.mark.parametrize("make, exception, fragments", [
    (lambda o: optim.MultiStepLR(o, milestones=[2, 3.5]), ArgumentTypeError, ["milestones", "ints"]),
    (lambda o: optim.CosineAnnealingLR(o, T_max=0), ArgumentError, ["T_max", ">= 1"]),
    (lambda o: optim.CosineAnnealingLR(o, T_max=2.5), ArgumentTypeError, ["T_max", "int"]),
    (lambda o: optim.CosineAnnealingLR(o, T_max=10, eta_min=-1), ArgumentError, ["eta_min", ">= 0"]),
    (lambda o: optim.LinearLR(o, start_factor=0), ArgumentError, ["start_factor", "> 0"]),
    (lambda o: optim.LinearLR(o, end_factor=1.5), ArgumentError, ["end_factor", "<= 1"]),
    (lambda o: optim.LambdaLR(o, lr_lambda=0.5), ArgumentTypeError, ["lr_lambda", "function"]),
    (lambda o: optim.LambdaLR(o, lr_lambda=[_wave, _wave]), ArgumentError, ["2 lr_lambdas", "1 parameter groups"]),
    (lambda o: optim.OneCycleLR(o, max_lr=0.1), ArgumentError, ["total_steps", "epochs and steps_per_epoch"]),
    (lambda o: optim.OneCycleLR(o, max_lr=0.1, total_steps=0), ArgumentError, ["total_steps", ">= 1"]),
    (lambda o: optim.OneCycleLR(o, max_lr=[0.1, 0.2], total_steps=9), ArgumentError, ["max_lr has 2 values"]),
    (lambda o: optim.OneCycleLR(o, max_lr=0.1, total_steps=9, pct_start=1.5), ArgumentError, ["pct_start"]),
    (lambda o: optim.OneCycleLR(o, max_lr=0.1, total_steps=9, anneal_strategy="cosine"), ArgumentError,
     ["anneal_strategy", "'cos', 'linear'"]),
    (lambda o: optim.OneCycleLR(Adagrad(o.params), max_lr=0.1, total_steps=9), ArgumentError,
     ["Adagrad has none", "cycle_momentum=False"]),
    (lambda o: optim.SequentialLR(o, [], milestones=[]), ArgumentTypeError, ["non-empty list"]),
    (lambda o: optim.SequentialLR(o, [StepLR(o, 2), StepLR(o, 3)], milestones=[]), ArgumentError,
     ["one milestone fewer"]),
    (lambda o: optim.SequentialLR(o, [StepLR(o, 2), StepLR(o, 3), StepLR(o, 4)], milestones=[5, 5]),
     ArgumentError, ["increasing"]),
    (lambda o: optim.SequentialLR(o, [StepLR(o, 2), StepLR(_sgd(), 3)], milestones=[5]), ArgumentError,
     ["schedulers[1]", "another optimizer"]),
    (lambda o: optim.SequentialLR(o, [StepLR(o, 2), "cosine"], milestones=[5]), ArgumentTypeError,
     ["schedulers[1] is a str"]),
    (lambda o: optim.LinearLR("sgd"), ArgumentTypeError, ["LinearLR takes an optimizer", "str"]),
])
def test_scheduler_argument_errors(make, exception, fragments):
    with pytest.raises(exception) as info:
        make(_sgd())
    for fragment in fragments:
        assert fragment in str(info.value), str(info.value)


def test_usage_errors():
    class NoSchedule(LRScheduler):
        pass

    with pytest.raises(NotImplementedError, match=r"get_lr\(\).*factor\(epoch\)"):
        NoSchedule(_sgd())

    class OneNumber(LRScheduler):
        def get_lr(self):
            return 0.1

    with pytest.raises(UsageError, match="one learning rate .* per parameter group"):
        OneNumber(_sgd())

    scheduler = optim.OneCycleLR(_sgd(), max_lr=0.1, total_steps=3)
    for _ in range(3):
        scheduler.step()
    with pytest.raises(UsageError, match="stepped 4 times but total_steps is 3"):
        scheduler.step()


def test_cycle_momentum_off_works_without_momentum():
    optimizer = Adagrad([Parameter(np.zeros(1))], lr=0.1)
    scheduler = optim.OneCycleLR(optimizer, max_lr=0.1, total_steps=10, cycle_momentum=False)
    scheduler.step()
    assert optimizer.lr == scheduler.get_last_lr()[0]
