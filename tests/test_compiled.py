"""Compiled training and eval steps (JAX): the same results as eager steps, compiled once per shape."""

import os

import numpy as np
import pytest

from portacnn import nn
from portacnn.backends import to_device, to_numpy
from portacnn.compiled import CompiledTrainStep, can_compile, compiled_forward
from portacnn.errors import UsageError
from portacnn.models import lenet
from portacnn.optim import SGD, Adam
from portacnn.parity import check_compiled_training

jax = pytest.importorskip("jax")


def _batches(dtype, sizes=(8, 8, 8)):
    rng = np.random.default_rng(1)
    return [(to_device(rng.standard_normal((n, 1, 28, 28)).astype(dtype), "jax"),
             to_device(rng.integers(0, 10, n).astype(np.int32), "jax")) for n in sizes]


def _one_step(step, model, loss_fn, optimizer, x, y):
    """One training step: the compiled ``step`` where there is one, else eagerly → the loss array."""
    if step is not None:
        loss, logits = step(x, y)
        assert logits.shape == (x.shape[0], 10)
        return loss
    loss = loss_fn(model(x), y)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.data


def _assert_same_state(model, expected_model, rtol=1e-10, atol=1e-13):
    for (name, value), expected in zip(model.state_dict().items(), expected_model.state_dict().values()):
        np.testing.assert_allclose(to_numpy(value), to_numpy(expected), rtol=rtol, atol=atol, err_msg=name)


def _train(optimizer_type, options, compiled, dtype="float64", sizes=(8, 8, 8)):
    model = lenet(seed=0, dtype=dtype, device="jax")
    optimizer = optimizer_type(model.parameters(), **options)
    loss_fn = nn.CrossEntropyLoss(check_labels=False)
    step = CompiledTrainStep(model, loss_fn, optimizer) if compiled else None
    losses = []
    for x, y in _batches(dtype, sizes):
        losses.append(float(_one_step(step, model, loss_fn, optimizer, x, y)))
    return model, optimizer, step, losses


@pytest.mark.parametrize("optimizer_type, options", [
    (SGD, dict(lr=0.01, momentum=0.9, weight_decay=1e-4)),
    (SGD, dict(lr=0.01, momentum=0.9, nesterov=True)),
    (Adam, dict(lr=1e-3, weight_decay=1e-4)),
], ids=["sgd-momentum", "sgd-nesterov", "adam"])
def test_compiled_steps_equal_eager_steps(optimizer_type, options):
    eager_model, eager_optimizer, _, eager_losses = _train(optimizer_type, options, compiled=False)
    model, optimizer, step, losses = _train(optimizer_type, options, compiled=True)
    np.testing.assert_allclose(losses, eager_losses, rtol=1e-10)
    _assert_same_state(model, eager_model)
    assert optimizer.step_count == eager_optimizer.step_count == 3 and isinstance(optimizer.step_count, int)
    assert isinstance(optimizer.lr, float)
    for name in optimizer._state_names:  # momentum buffers / moments come back as concrete arrays
        for value, expected in zip(getattr(optimizer, name), getattr(eager_optimizer, name)):
            np.testing.assert_allclose(to_numpy(value), to_numpy(expected), rtol=1e-10, atol=1e-13)
    assert all(p.grad is None for p in model.parameters())


def test_parity_row_for_compiled_steps_passes():
    for dtype in ("float64", "float32"):
        result = check_compiled_training("jax", dtype)
        assert result.passed, result


def test_a_new_learning_rate_needs_no_recompile_and_is_used():
    model, optimizer, step, _ = _train(SGD, dict(lr=0.01), compiled=True, sizes=(8,))
    before = to_numpy(model.parameters()[0].data)
    optimizer.lr = 0.0  # as a scheduler would set it
    step(*_batches("float64", (8,))[0])
    np.testing.assert_array_equal(to_numpy(model.parameters()[0].data), before)
    compiled = step._compiled_by_mode[step._mode()]
    if hasattr(compiled, "_cache_size"):
        assert compiled._cache_size() == 1


def test_each_batch_shape_compiles_once():
    _, _, step, _ = _train(SGD, dict(lr=0.01, momentum=0.9), compiled=True, sizes=(8, 8, 5, 8, 5, 8))
    compiled = step._compiled_by_mode[step._mode()]
    if not hasattr(compiled, "_cache_size"):
        pytest.skip("this jax does not report its cache size")
    # batch 8 twice (momentum buffers absent, then present) and batch 5 once: never once per step.
    assert compiled._cache_size() == 3


def test_compiled_forward_equals_the_eager_forward_in_each_mode():
    model = nn.Sequential(nn.Conv2d(1, 4, 3, dtype="float64", device="jax"), nn.BatchNorm2d(4, dtype="float64",
                                                                                        device="jax"))
    x = to_device(np.random.default_rng(0).standard_normal((3, 1, 6, 6)), "jax")
    forward = compiled_forward(model)
    assert compiled_forward(model) is forward, "kept per model: each shape compiles once"
    for training in (False, True):
        model.train(training)
        running = to_numpy(model[1].running_mean.data)
        np.testing.assert_allclose(to_numpy(forward(x)), to_numpy(model(x).data), rtol=1e-12)
        assert not isinstance(model[0].weight.data, jax.core.Tracer)
        if training:  # the eager call above moved the running mean once; the compiled one must not leak a tracer
            assert not isinstance(model[1].running_mean.data, jax.core.Tracer)
        else:
            np.testing.assert_array_equal(to_numpy(model[1].running_mean.data), running)


def test_models_that_cannot_compile_are_refused_with_the_reason():
    numpy_model = lenet()
    assert not can_compile(numpy_model)
    with pytest.raises(UsageError, match="only JAX"):
        CompiledTrainStep(numpy_model, nn.CrossEntropyLoss(), SGD(numpy_model.parameters(), lr=0.1))
    with_dropout = nn.Sequential(nn.Linear(4, 4, device="jax"), nn.Dropout(0.5))
    assert not can_compile(with_dropout)
    with pytest.raises(UsageError, match="Dropout"):
        CompiledTrainStep(with_dropout, nn.CrossEntropyLoss(), SGD(with_dropout.parameters(), lr=0.1))


def test_train_and_eval_mode_steps_are_compiled_apart():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, dtype="float64", device="jax"),
                          nn.BatchNorm2d(2, dtype="float64", device="jax"), nn.Flatten())

    def loss_fn(out, target):
        return ((out - target) * (out - target)).mean()

    step = CompiledTrainStep(model, loss_fn, SGD(model.parameters(), lr=1e-12))  # the weights barely move
    x = to_device(np.random.default_rng(0).standard_normal((4, 1, 5, 5)), "jax")
    target = to_device(np.zeros((4, 18)), "jax")
    trained, _ = step(x, target)
    model.eval()
    evaluated, _ = step(x, target)
    model.eval()
    eager = loss_fn(model(x), target)
    np.testing.assert_allclose(float(evaluated), float(eager.data), rtol=1e-9)
    assert abs(float(trained) - float(evaluated)) > 1e-3, "eval mode normalises with the running statistics"


def test_a_failing_step_leaves_the_model_as_it_was():
    model = lenet(seed=0, dtype="float32", device="jax")
    before = {k: to_numpy(v) for k, v in model.state_dict().items()}
    step = CompiledTrainStep(model, nn.CrossEntropyLoss(check_labels=False), SGD(model.parameters(), lr=0.1))
    wrong = to_device(np.zeros((2, 1, 27, 27), np.float32), "jax")  # LeNet needs 28x28
    with pytest.raises(Exception):
        step(wrong, to_device(np.zeros(2, np.int32), "jax"))
    for name, value in model.state_dict().items():
        assert not isinstance(value, jax.core.Tracer), name
        np.testing.assert_array_equal(to_numpy(value), before[name], err_msg=name)


def test_training_compiles_on_jax_by_default_and_matches_no_compile(tmp_path, monkeypatch):
    from support import offline_environment, write_fake_mnist

    from portacnn.training import TrainConfig, train

    offline_environment(monkeypatch, tmp_path / "home")
    data = write_fake_mnist(tmp_path / "mnist")
    runs = {}
    for compile_steps in (True, False):
        config = TrainConfig(backend="jax", epochs=2, train_size=60, test_size=20, batch_size=25, lr=0.01,
                             momentum=0.9, lr_step=1, lr_gamma=0.5, dtype="float64", data_dir=str(data),
                             quiet=True, compile=compile_steps)
        runs[compile_steps] = train(config)["history"]
    for compiled, eager in zip(runs[True], runs[False]):
        for key in ("train_loss", "train_accuracy", "test_loss", "test_accuracy"):
            assert compiled[key] == pytest.approx(eager[key], rel=1e-9), key


def test_cli_no_compile_flag():
    from portacnn.cli import build_parser

    assert build_parser().parse_args(["train"]).compile is True
    assert build_parser().parse_args(["train", "--no-compile"]).compile is False


def test_freezing_and_unfreezing_a_layer_between_compiled_steps_matches_eager():
    """requires_grad is Python state a trace bakes in: each setting gets its own compiled step."""
    runs = []
    for compiled in (False, True):
        model = lenet(seed=0, dtype="float64", device="jax")
        optimizer = Adam(model.parameters(), lr=1e-2)
        loss_fn = nn.CrossEntropyLoss(check_labels=False)
        step = CompiledTrainStep(model, loss_fn, optimizer) if compiled else None
        for index, (x, y) in enumerate(_batches("float64", (8, 8, 8, 8))):
            model[0].requires_grad_(index not in (1, 2))  # the first conv is frozen for steps 1 and 2
            _one_step(step, model, loss_fn, optimizer, x, y)
        runs.append((model, optimizer))
    (eager, eager_optimizer), (model, optimizer) = runs
    assert optimizer._missed == eager_optimizer._missed
    _assert_same_state(model, eager, rtol=1e-9, atol=1e-12)


def test_a_changed_momentum_compiles_a_new_step_and_is_used():
    runs = []
    for compiled in (False, True):
        model = lenet(seed=0, dtype="float64", device="jax")
        optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss(check_labels=False)
        step = CompiledTrainStep(model, loss_fn, optimizer) if compiled else None
        for index, (x, y) in enumerate(_batches("float64", (8, 8, 8))):
            optimizer.param_groups[0]["momentum"] = 0.9 if index < 2 else 0.5
            _one_step(step, model, loss_fn, optimizer, x, y)
        runs.append(model)
    _assert_same_state(runs[1], runs[0], rtol=1e-9, atol=1e-12)


def _buffer_addresses(arrays):
    return {array.unsafe_buffer_pointer() for array in arrays}


def test_the_step_writes_its_results_into_the_old_arrays_memory():
    model, optimizer, step, _ = _train(SGD, dict(lr=0.01, momentum=0.9), compiled=True, dtype="float32", sizes=(8,))
    old = _buffer_addresses([p.data for p in model.parameters()] + optimizer.momentum_buffers)
    step(*_batches("float32", (8,))[0])
    assert _buffer_addresses([p.data for p in model.parameters()] + optimizer.momentum_buffers) == old


def test_arrays_held_outside_the_model_stay_readable_and_unchanged():
    runs = {}
    for compiled in (False, True):
        model, optimizer, step, _ = _train(SGD, dict(lr=0.01, momentum=0.9), compiled, sizes=(8,))
        weight, momentum = model[0].weight.data, optimizer.momentum_buffers[0]
        held = to_numpy(weight).copy(), to_numpy(momentum).copy()
        x, y = _batches("float64", (8, 8))[1]
        _one_step(step, model, nn.CrossEntropyLoss(check_labels=False), optimizer, x, y)
        assert not weight.is_deleted() and not momentum.is_deleted()
        np.testing.assert_array_equal(to_numpy(weight), held[0])
        np.testing.assert_array_equal(to_numpy(momentum), held[1])
        assert not np.array_equal(to_numpy(model[0].weight.data), held[0])
        runs[compiled] = model
    _assert_same_state(runs[True], runs[False])


def test_two_parameters_given_one_array_train_as_eagerly():
    # Donating the one array for both would fail ("donate the same buffer twice"); one of them gets a copy.
    runs = []
    for compiled in (False, True):
        options = dict(rng=np.random.default_rng(0), dtype="float64", device="jax")
        model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10, **options), nn.Linear(10, 10, **options),
                              nn.Linear(10, 10, **options))
        model[3].weight.data = model[2].weight.data
        optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9)
        loss_fn = nn.CrossEntropyLoss(check_labels=False)
        step = CompiledTrainStep(model, loss_fn, optimizer) if compiled else None
        for x, y in _batches("float64", (8, 8)):
            _one_step(step, model, loss_fn, optimizer, x, y)
        runs.append(model)
    _assert_same_state(runs[1], runs[0])


def test_xla_is_asked_to_run_cpu_kernels_one_at_a_time_unless_the_user_says_otherwise(monkeypatch):
    import portacnn.backends.jax_backend as jax_backend

    flag = "--xla_cpu_enable_concurrency_optimized_scheduler"
    assert jax_backend._jaxlib_knows_flag("xla_dump_to")  # a flag as old as XLA: the search works
    assert not jax_backend._jaxlib_knows_flag("xla_cpu_no_such_flag_anywhere")
    monkeypatch.setattr(jax_backend, "_jaxlib_knows_flag", lambda flag: True)
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    jax_backend._schedule_kernels_depth_first()
    assert os.environ["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=1 {flag}=false"
    monkeypatch.setenv("XLA_FLAGS", f"{flag}=true")  # the user's choice stands
    jax_backend._schedule_kernels_depth_first()
    assert os.environ["XLA_FLAGS"] == f"{flag}=true"
    monkeypatch.delenv("XLA_FLAGS")
    monkeypatch.setattr(jax_backend, "_jaxlib_knows_flag", lambda flag: False)  # XLA would abort on it
    jax_backend._schedule_kernels_depth_first()
    assert "XLA_FLAGS" not in os.environ


def test_a_fresh_process_compiles_with_the_depth_first_schedule():
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    script = ("import os, portacnn.backends as B; B.to_device(__import__('numpy').zeros(2), 'jax'); "
              "print(os.environ.get('XLA_FLAGS', ''))")
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import portacnn.backends.jax_backend as jax_backend

    known = jax_backend._jaxlib_knows_flag(jax_backend._SCHEDULER_FLAG)  # a jaxlib without it gets nothing
    assert out.stdout.strip() == ("--xla_cpu_enable_concurrency_optimized_scheduler=false" if known else "")
