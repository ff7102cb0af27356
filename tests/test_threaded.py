"""Batch splitting across threads (portacnn.threaded): the same step as one thread, to rounding."""

from __future__ import annotations

import numpy as np
import pytest
from support import offline_environment, write_fake_mnist

import portacnn
import portacnn.threaded
import portacnn.training
from portacnn import models, nn
from portacnn.errors import ArgumentError, UsageError
from portacnn.optim import SGD, Adam
from portacnn.threaded import ThreadedTrainStep
from portacnn.training import ConfigError, TrainConfig, train


def _batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 28, 28)), rng.integers(0, 10, n).astype(np.int32)


def _run(threads, batch, *, steps=3, optimizer=SGD, in_place=True, reduction="mean", freeze=False, **options):
    model = models.create("lenet", dtype="float64", seed=3)
    if freeze:
        model[0].weight.requires_grad = False
    opt = optimizer(model.parameters(), lr=0.05, **options)
    opt.in_place = in_place
    step = ThreadedTrainStep(model, nn.CrossEntropyLoss(reduction=reduction), opt, threads=threads)
    x, y = batch
    for _ in range(steps):
        loss, logits = step(x, y)
    step.close()
    return model, loss, logits


@pytest.mark.parametrize("threads, size", [(2, 37), (3, 37), (2, 64), (4, 5), (2, 1)])
def test_split_steps_equal_one_thread(threads, size):
    """Odd batches, more threads than needed and a batch of one all give the whole batch's step."""
    batch = _batch(size)
    want_model, want_loss, want_logits = _run(1, batch, momentum=0.9)
    model, loss, logits = _run(threads, batch, momentum=0.9)
    for got, want in zip(model.parameters(), want_model.parameters()):
        np.testing.assert_allclose(got.data, want.data, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(got.grad, want.grad, rtol=1e-10, atol=1e-14)  # the whole batch's gradient
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    assert logits.shape == (size, 10)
    np.testing.assert_allclose(logits, want_logits, rtol=1e-12, atol=1e-13)


def test_the_split_is_the_plain_eager_step():
    """threads=1 is exactly zero_grad, forward, backward, step as a user writes it."""
    batch = _batch(24)
    model = models.create("lenet", dtype="float64", seed=3)
    opt = SGD(model.parameters(), lr=0.05, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    for _ in range(2):
        opt.zero_grad()
        loss_fn(model(batch[0]), batch[1]).backward()
        opt.step()
    split, _, _ = _run(2, batch, steps=2, momentum=0.9)
    for got, want in zip(split.parameters(), model.parameters()):
        np.testing.assert_allclose(got.data, want.data, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("options", [
    dict(optimizer=Adam), dict(in_place=False, momentum=0.9), dict(reduction="sum"), dict(freeze=True),
], ids=["adam", "rebinding-optimizer", "sum-loss", "frozen-layer"])
def test_split_steps_with_other_settings(options):
    batch = _batch(30)
    want_model, want_loss, _ = _run(1, batch, **options)
    model, loss, _ = _run(3, batch, **options)
    # Adam divides by sqrt(v): a weight whose gradient is near zero moves by lr whatever its rounding.
    atol = 1e-9 if options.get("optimizer") is Adam else 1e-13
    for got, want in zip(model.parameters(), want_model.parameters()):
        np.testing.assert_allclose(got.data, want.data, rtol=1e-10, atol=atol)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
    if options.get("freeze"):
        assert model[0].weight.grad is None


def test_float32_split_matches_within_rounding():
    x, y = _batch(64)
    results = []
    for threads in (1, 2):
        model = models.create("lenet", seed=3)
        step = ThreadedTrainStep(model, nn.CrossEntropyLoss(), SGD(model.parameters(), lr=0.05), threads=threads)
        step(x.astype(np.float32), y)
        results.append([p.data for p in model.parameters()])
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_models_and_losses_that_cannot_be_split_are_refused():
    resnet = models.create("resnet8")
    with pytest.raises(UsageError, match=r"batch norm layers \(bn1, layer1.0.bn1, .*7 in all.*threads=1"):
        ThreadedTrainStep(resnet, nn.CrossEntropyLoss(), SGD(resnet.parameters(), lr=0.1), threads=2)
    ThreadedTrainStep(resnet, nn.CrossEntropyLoss(), SGD(resnet.parameters(), lr=0.1), threads=1)  # no split: fine
    dropped = nn.Sequential(nn.Flatten(), nn.Linear(784, 10), nn.Dropout(0.5))
    with pytest.raises(UsageError, match="dropout layers"):
        ThreadedTrainStep(dropped, nn.CrossEntropyLoss(), SGD(dropped.parameters(), lr=0.1), threads=2)
    lenet = models.create("lenet")
    opt = SGD(lenet.parameters(), lr=0.1)
    with pytest.raises(UsageError, match="class weights"):
        ThreadedTrainStep(lenet, nn.CrossEntropyLoss(weight=np.ones(10, np.float32)), opt, threads=2)
    with pytest.raises(UsageError, match="reduction 'mean' or 'sum'"):
        ThreadedTrainStep(lenet, nn.CrossEntropyLoss(reduction="none"), opt, threads=2)
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ArgumentError, match="threads must be a positive integer"):
            ThreadedTrainStep(lenet, nn.CrossEntropyLoss(), opt, threads=bad)


def test_the_replicas_follow_the_model_to_another_dtype():
    """The replicas share the model's arrays each step, so model.to() after building the step is seen."""
    x, y = _batch(16)
    model = models.create("lenet", seed=3)
    opt = SGD(model.parameters(), lr=0.05)
    step = ThreadedTrainStep(model, nn.CrossEntropyLoss(), opt, threads=2)
    model.to("numpy", dtype="float64")
    _, logits = step(x, y)
    assert logits.dtype == np.float64 and all(p.data.dtype == np.float64 for p in model.parameters())


# ---------------------------------------------------------------- training


@pytest.fixture
def fake_mnist(tmp_path, monkeypatch):
    offline_environment(monkeypatch, tmp_path / "home")  # no network; generated files skip the md5 check
    return write_fake_mnist(tmp_path / "mnist", n_train=128, n_test=40)


def _config(data_dir, **overrides):
    options = dict(epochs=1, train_size=128, test_size=40, batch_size=64, lr=0.01, momentum=0.9, data_dir=str(data_dir),
                   quiet=True, dtype="float64")
    options.update(overrides)
    return TrainConfig(**options)


def test_training_with_threads_matches_one_thread(fake_mnist):
    one = train(_config(fake_mnist, threads=1))
    two = train(_config(fake_mnist, threads=2))
    assert two["test_accuracy"] == one["test_accuracy"]
    np.testing.assert_allclose(two["history"][0]["train_loss"], one["history"][0]["train_loss"], rtol=1e-10)


def test_threads_none_picks_by_backend_batch_and_cpus(monkeypatch, fake_mnist):
    built = []
    real = portacnn.training.ThreadedTrainStep

    def spy(*args, **kwargs):
        step = real(*args, **kwargs)
        built.append(step.threads)
        return step

    monkeypatch.setattr(portacnn.training, "ThreadedTrainStep", spy)
    monkeypatch.setattr(portacnn.training, "default_threads", lambda: 4)
    train(_config(fake_mnist))                 # batch 64: two parts of 32
    train(_config(fake_mnist, batch_size=40))  # one part: no split
    monkeypatch.setattr(portacnn.training, "default_threads", lambda: 1)
    train(_config(fake_mnist))                 # one CPU: no split
    assert built == [2]


def test_bad_threads_are_config_errors(fake_mnist):
    for bad in (0, -2, 1.5, True):
        with pytest.raises(ConfigError, match="threads must be a positive integer"):
            _config(fake_mnist, threads=bad)
    with pytest.raises(ConfigError, match="--threads 2: .*batch norm"):
        train(_config(fake_mnist, model="resnet8", threads=2, train_size=8, test_size=8, batch_size=8))


def test_cli_threads_flag(fake_mnist, tmp_path, capsys):
    from portacnn.cli import main

    assert main(["train", "--data-dir", str(fake_mnist), "--epochs", "1", "--train-size", "64", "--test-size", "20",
                 "--batch-size", "32", "--threads", "2", "--checkpoint-dir", str(tmp_path / "ck")]) == 0
    out = capsys.readouterr().out
    assert "on numpy (each batch split across 2 threads)" in out and "final test accuracy" in out


def test_evaluate_with_threads_matches_one_thread():
    from portacnn.training import evaluate

    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (530, 1, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, 530)
    model = models.create("lenet", seed=1)
    model.train()
    one = evaluate(model, images, labels, batch_size=100, threads=1)
    for threads in (2, 3, None):
        loss, accuracy, predicted = evaluate(model, images, labels, batch_size=100, threads=threads)
        np.testing.assert_allclose(loss, one[0], rtol=1e-6)
        assert accuracy == one[1] and np.array_equal(predicted, one[2])
    assert model.training  # the mode is restored


def test_map_in_threads_keeps_order_grad_mode_and_errors():
    from portacnn.autograd import is_grad_enabled, no_grad
    from portacnn.threaded import map_in_threads

    assert map_in_threads(lambda i: i * i, range(7), 3) == [i * i for i in range(7)]
    with no_grad():
        assert map_in_threads(lambda _: is_grad_enabled(), range(4), 2) == [False] * 4
    assert map_in_threads(lambda _: is_grad_enabled(), range(4), 2) == [True] * 4

    def fail(i):
        if i == 2:
            raise ValueError("part 2 failed")
        return i

    with pytest.raises(ValueError, match="part 2 failed"):
        map_in_threads(fail, range(4), 2)


def test_a_dropped_step_ends_its_threads():
    import gc
    import threading

    def part_threads():
        return [t for t in threading.enumerate() if t.name.startswith("portacnn-part")]

    before = len(part_threads())
    model = models.create("lenet", seed=3, dtype="float64")
    step = ThreadedTrainStep(model, nn.CrossEntropyLoss(), SGD(model.parameters(), lr=0.05), threads=3)
    step(*_batch(8))
    assert len(part_threads()) > before
    del step
    gc.collect()
    for thread in part_threads()[before:]:
        thread.join(timeout=5)
    assert len(part_threads()) == before


def test_small_numpy_batches_train_with_one_blas_thread(monkeypatch, fake_mnist):
    import contextlib

    entered = []

    @contextlib.contextmanager
    def spy():
        entered.append(1)
        yield

    monkeypatch.setattr(portacnn.training, "one_blas_thread", spy)
    monkeypatch.setattr(portacnn.training, "default_threads", lambda: 2)
    train(_config(fake_mnist, batch_size=16, epochs=2))  # too small to split: each epoch under one BLAS thread
    assert entered == [1, 1]
    train(_config(fake_mnist, batch_size=64))            # split across threads instead
    assert entered == [1, 1]


def test_one_blas_thread_holds_blas_to_one_thread():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from portacnn.threaded import one_blas_thread

    with one_blas_thread():
        blas = [pool for pool in threadpoolctl.threadpool_info() if pool["user_api"] == "blas"]
        assert blas and all(pool["num_threads"] == 1 for pool in blas)
