"""Optimizers and schedulers follow PyTorch's update rules step for step."""

import numpy as np
import pytest

import portacnn
from portacnn.nn import Parameter
from portacnn.optim import SGD, Adam, AdamW, ExponentialLR, StepLR

torch = pytest.importorskip("torch")


def _run_both(make_ours, make_torch, steps=5, seed=0):
    rng = np.random.default_rng(seed)
    initial = [rng.standard_normal((3, 4)), rng.standard_normal(4)]
    grads = [[rng.standard_normal(p.shape) for p in initial] for _ in range(steps)]
    ours = [Parameter(p.copy()) for p in initial]
    theirs = [torch.tensor(p.copy(), requires_grad=True) for p in initial]
    optimizer, reference = make_ours(ours), make_torch(theirs)
    for step_grads in grads:
        for p, t, g in zip(ours, theirs, step_grads):
            p.grad = g
            t.grad = torch.tensor(g)
        optimizer.step()
        reference.step()
    return ours, theirs


@pytest.mark.parametrize("momentum, weight_decay, nesterov", [
    (0.0, 0.0, False), (0.9, 0.0, False), (0.9, 1e-2, False), (0.9, 1e-2, True), (0.0, 1e-4, False),
])
def test_sgd_matches_torch(momentum, weight_decay, nesterov):
    options = dict(lr=0.1, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov)
    ours, theirs = _run_both(lambda p: SGD(p, **options), lambda p: torch.optim.SGD(p, **options))
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("weight_decay", [0.0, 1e-2])
def test_adam_matches_torch(weight_decay):
    options = dict(lr=0.01, betas=(0.8, 0.99), eps=1e-8, weight_decay=weight_decay)
    ours, theirs = _run_both(lambda p: Adam(p, **options), lambda p: torch.optim.Adam(p, **options))
    for p, t in zip(ours, theirs):
        np.testing.assert_allclose(p.data, t.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_update_rebinds_and_never_writes_into_the_old_array():
    data = np.ones(3)
    data.flags.writeable = False
    parameter = Parameter(data)
    parameter.grad = np.full(3, 2.0)
    SGD([parameter], lr=0.5, momentum=0.9).step()
    np.testing.assert_array_equal(parameter.data, np.zeros(3))
    np.testing.assert_array_equal(data, np.ones(3))


@pytest.mark.parametrize("make", [lambda p: SGD(p, lr=0.0137, weight_decay=1e-4),
                                  lambda p: SGD(p, lr=0.0137, momentum=0.9),
                                  lambda p: Adam(p, lr=0.0137)])
@pytest.mark.parametrize("in_place", [True, False], ids=["in-place", "rebinding"])
def test_large_updates_are_the_textbook_formula_bit_for_bit_and_leave_inputs_alone(make, in_place):
    """Updates are written so NumPy can reuse its temporaries (arrays >= 256 KiB); that must
    change neither the bits of ``data - lr * step`` nor the gradient. In place (the default on
    NumPy, as in PyTorch) the parameter's own array takes the new values; rebinding leaves it alone."""
    rng = np.random.default_rng(5)
    data = rng.standard_normal((500, 800)).astype(np.float32)
    grad = rng.standard_normal((500, 800)).astype(np.float32)
    data_before, grad_before = data.copy(), grad.copy()
    parameter = Parameter(data)
    parameter.grad = grad
    optimizer = make([parameter])
    optimizer.in_place = in_place
    optimizer.step()
    assert (parameter.data is data) == in_place
    if isinstance(optimizer, Adam):
        m_hat = (1 - 0.9) * grad / (1 - 0.9)
        v_hat = (1 - 0.999) * grad * grad / (1 - 0.999)
        expected = data_before - 0.0137 * m_hat / (np.sqrt(v_hat) + 1e-8)
    else:
        step = grad + 1e-4 * data_before if optimizer.weight_decay else grad
        expected = data_before - 0.0137 * step
    np.testing.assert_array_equal(parameter.data, expected)
    if not in_place:
        np.testing.assert_array_equal(data, data_before)
    np.testing.assert_array_equal(grad, grad_before)


def test_parameters_without_gradient_are_left_alone():
    a, b = Parameter(np.ones(2)), Parameter(np.ones(2))
    a.grad = np.ones(2)
    SGD([a, b], lr=1.0).step()
    np.testing.assert_array_equal(b.data, np.ones(2))
    np.testing.assert_array_equal(a.data, np.zeros(2))


def test_zero_grad_clears_gradients():
    p = Parameter(np.ones(2))
    p.grad = np.ones(2)
    SGD([p], lr=1.0).zero_grad()
    assert p.grad is None


@pytest.mark.parametrize("make, options", [
    (StepLR, dict(step_size=3, gamma=0.5)),
    (ExponentialLR, dict(gamma=0.9)),
])
def test_schedulers_match_torch(make, options):
    ours = SGD([Parameter(np.ones(1))], lr=0.2)
    theirs = torch.optim.SGD([torch.ones(1, requires_grad=True)], lr=0.2)
    scheduler = make(ours, **options)
    reference = getattr(torch.optim.lr_scheduler, make.__name__)(theirs, **options)
    for _ in range(10):
        theirs.step()
        scheduler.step()
        reference.step()
        assert ours.lr == pytest.approx(theirs.param_groups[0]["lr"], rel=1e-12)


def test_optimizer_state_round_trips_and_continues_identically():
    rng = np.random.default_rng(1)
    grads = [rng.standard_normal(3) for _ in range(6)]

    def run(split):
        p = Parameter(np.zeros(3))
        optimizer = Adam([p], lr=0.1)
        for i, g in enumerate(grads):
            if i == split:
                state = optimizer.state_dict()
                p = Parameter(p.data.copy())
                optimizer = Adam([p], lr=0.1)
                optimizer.load_state_dict(state)
            p.grad = g
            optimizer.step()
        return p.data

    np.testing.assert_array_equal(run(split=3), run(split=-1))


@pytest.mark.parametrize("bad", [dict(lr=0.0), dict(lr=-1.0), dict(lr=0.1, momentum=-0.1), dict(lr=0.1, nesterov=True)])
def test_bad_hyperparameters_are_rejected(bad):
    with pytest.raises(ValueError):
        SGD([Parameter(np.ones(1))], **bad)


def test_empty_parameter_list_is_rejected():
    with pytest.raises(ValueError, match="empty parameter list"):
        SGD([], lr=0.1)


# ---------------------------------------------------------------- in-place updates (NumPy, CuPy, torch)

_IN_PLACE_OPTIMIZERS = {
    "sgd-momentum-decay": lambda p: SGD(p, lr=0.05, momentum=0.9, weight_decay=1e-3),
    "sgd-nesterov": lambda p: SGD(p, lr=0.05, momentum=0.9, nesterov=True),
    "sgd-dampening-maximize": lambda p: SGD(p, lr=0.05, momentum=0.5, dampening=0.3, maximize=True),
    "sgd-plain": lambda p: SGD(p, lr=0.05),
    "adam": lambda p: Adam(p, lr=1e-2, weight_decay=1e-3),
    "adam-amsgrad": lambda p: Adam(p, lr=1e-2, amsgrad=True),
    "adamw": lambda p: AdamW(p, lr=1e-2),
}


def _five_steps(make, in_place, xp_array, seed=3):
    rng = np.random.default_rng(seed)
    params = [Parameter(xp_array(rng.standard_normal(shape))) for shape in ((4, 3), (3,))]
    first_arrays = [p.data for p in params]
    optimizer = make(params)
    optimizer.in_place = in_place
    grads = []
    for _ in range(5):
        for p in params:
            p.grad = xp_array(rng.standard_normal(tuple(p.data.shape)))
            grads.append((p.grad, np.array(portacnn.to_numpy(p.grad))))
        optimizer.step()
    for grad, copy in grads:  # the optimizer never writes into a gradient
        np.testing.assert_array_equal(portacnn.to_numpy(grad), copy)
    return [portacnn.to_numpy(p.data) for p in params], [p.data is a for p, a in zip(params, first_arrays)]


@pytest.mark.parametrize("name", list(_IN_PLACE_OPTIMIZERS))
@pytest.mark.parametrize("library", ["numpy", "torch"])
def test_in_place_updates_give_the_bits_of_rebinding(name, library):
    if library == "torch":
        torch = pytest.importorskip("torch")
        xp_array = lambda a: torch.tensor(a)  # noqa: E731
    else:
        xp_array = np.array
    make = _IN_PLACE_OPTIMIZERS[name]
    updated, stayed = _five_steps(make, True, xp_array)
    rebound, moved = _five_steps(make, False, xp_array)
    for a, b in zip(updated, rebound):
        np.testing.assert_array_equal(a, b)
    assert all(stayed), "the parameters' own arrays should have been updated in place"
    assert not any(moved), "in_place=False must rebind param.data"


def test_read_only_parameters_are_rebound_not_written():
    data = np.ones((3, 2))
    data.flags.writeable = False
    parameter = Parameter(data)
    parameter.grad = np.full((3, 2), 0.5)
    SGD([parameter], lr=0.1, momentum=0.9).step()
    np.testing.assert_array_equal(data, np.ones((3, 2)))
    np.testing.assert_allclose(parameter.data, np.full((3, 2), 0.95))


def test_loaded_optimizer_state_is_a_copy_that_in_place_steps_do_not_reach_back_into():
    a, b = Parameter(np.ones(3)), Parameter(np.ones(3))
    first, second = SGD([a], lr=0.1, momentum=0.9), SGD([b], lr=0.1, momentum=0.9)
    a.grad = np.ones(3)
    first.step()
    second.load_state_dict(first.state_dict())
    b.grad = np.ones(3)
    second.step()
    np.testing.assert_array_equal(first.momentum_buffers[0], np.ones(3))


def test_the_parity_suite_checks_in_place_bits():
    from portacnn.parity import check_in_place_training

    result = check_in_place_training("numpy", "float32")
    assert result.passed and result.max_abs == 0.0, result
