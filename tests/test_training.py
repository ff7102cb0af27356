"""Tests for portacnn.training: config and presets, resume equivalence, divergence, real MNIST, backends."""

import importlib.util

import numpy as np
import pytest
from support import SHARED_MNIST, needs_real_mnist, offline_environment, write_fake_mnist

from portacnn.checkpoint import load_checkpoint
from portacnn.errors import CheckpointError, PortacnnError
from portacnn.models import lenet
from portacnn.training import (PRESETS, ConfigError, TrainConfig, TrainingDivergedError, evaluate, prepare_images,
                               train)

HISTORY_KEYS = {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds"}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No network, no real home; generated files skip the md5 check."""
    offline_environment(monkeypatch, tmp_path / "home")


@pytest.fixture
def fake_mnist(tmp_path):
    return write_fake_mnist(tmp_path / "mnist")


def tiny(data_dir, **overrides):
    options = dict(epochs=1, train_size=60, test_size=20, batch_size=20, lr=0.01, momentum=0.9, lr_step=1,
                   lr_gamma=0.5, data_dir=str(data_dir), quiet=True)
    options.update(overrides)
    return TrainConfig(**options)


# ---------------------------------------------------------------- config


def test_presets_fill_unset_values_and_flags_override():
    seed = TrainConfig(preset="seed")
    assert (seed.epochs, seed.batch_size, seed.lr, seed.momentum, seed.weight_decay, seed.lr_step, seed.lr_gamma,
            seed.train_size) == (50, 5, 0.005, 0.0, 1e-4, 10, 0.9, 10_000)
    fast = TrainConfig()
    assert fast.preset == "fast" and fast.train_size is None
    assert {k: getattr(fast, k) for k in PRESETS["fast"]} == PRESETS["fast"]
    mixed = TrainConfig(preset="seed", epochs=3, lr=0.01)
    assert (mixed.epochs, mixed.lr, mixed.batch_size) == (3, 0.01, 5)


@pytest.mark.parametrize("options, fragment", [
    (dict(preset="slow"), "unknown preset"),
    (dict(epochs=0), "epochs"),
    (dict(batch_size=-1), "batch_size"),
    (dict(lr=0.0), "lr"),
    (dict(dtype="float16"), "dtype"),
    (dict(momentum=-0.1), "momentum"),
    (dict(resume=True), "checkpoint"),
])
def test_bad_config_values(options, fragment):
    with pytest.raises(ConfigError, match=fragment):
        TrainConfig(**options)


def test_prepare_images_scales_uint8():
    images = np.array([[[[0, 255, 51]]]], dtype=np.uint8)
    out = prepare_images(images, "float32")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[[[0.0, 1.0, 0.2]]]], rtol=1e-6)


def test_evaluate_returns_loss_accuracy_predictions():
    model = lenet(seed=0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (25, 1, 28, 28)).astype(np.uint8)
    labels = rng.integers(0, 10, 25)
    loss, accuracy, predictions = evaluate(model, images, labels, batch_size=10)
    assert predictions.shape == (25,) and predictions.dtype == np.int64
    assert accuracy == pytest.approx(np.mean(predictions == labels))
    assert np.isfinite(loss) and loss > 0
    assert model.training  # the previous mode comes back


# ---------------------------------------------------------------- training runs


def test_train_returns_metrics_and_writes_checkpoint(fake_mnist, tmp_path):
    metrics = train(tiny(fake_mnist, epochs=2, checkpoint_dir=str(tmp_path / "ck")))
    assert set(metrics) == {"test_accuracy", "history", "backend", "device", "dtype", "wall_seconds"}
    assert (metrics["backend"], metrics["device"], metrics["dtype"]) == ("numpy", "cpu", "float32")
    assert [h["epoch"] for h in metrics["history"]] == [1, 2]
    assert all(set(h) == HISTORY_KEYS for h in metrics["history"])
    assert metrics["test_accuracy"] == metrics["history"][-1]["test_accuracy"]
    assert 0.0 <= metrics["test_accuracy"] <= 1.0
    saved = load_checkpoint(tmp_path / "ck" / "last.npz")
    assert saved["epoch"] == 2 and saved["history"] == metrics["history"]
    assert saved["config"]["batch_size"] == 20 and saved["scheduler"]["last_epoch"] == 2
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["last.npz"]


def _without_seconds(history):
    return [{k: v for k, v in h.items() if k != "seconds"} for h in history]


def test_resume_is_bit_identical_to_an_uninterrupted_run(fake_mnist, tmp_path):
    common = dict(dtype="float64", train_size=24, test_size=10, batch_size=8, lr=0.02, momentum=0.9,
                  weight_decay=1e-3, lr_step=2, lr_gamma=0.5, seed=3)
    straight = train(tiny(fake_mnist, epochs=3, checkpoint_dir=str(tmp_path / "straight"), **common))
    first = train(tiny(fake_mnist, epochs=2, checkpoint_dir=str(tmp_path / "resumed"), **common))
    assert len(first["history"]) == 2
    resumed = train(tiny(fake_mnist, epochs=3, checkpoint_dir=str(tmp_path / "resumed"), resume=True, **common))

    assert _without_seconds(resumed["history"]) == _without_seconds(straight["history"])
    a = load_checkpoint(tmp_path / "straight" / "last.npz")
    b = load_checkpoint(tmp_path / "resumed" / "last.npz")
    assert a["model"].keys() == b["model"].keys()
    for name in a["model"]:
        assert a["model"][name].dtype == np.float64
        assert np.array_equal(a["model"][name], b["model"][name]), name
    for name in a["optimizer"]:
        if isinstance(a["optimizer"][name], np.ndarray):
            assert np.array_equal(a["optimizer"][name], b["optimizer"][name]), name
        else:
            assert a["optimizer"][name] == b["optimizer"][name], name
    assert a["rng"] == b["rng"] and a["scheduler"] == b["scheduler"]


def test_resume_with_nothing_left_to_do(fake_mnist, tmp_path):
    config = tiny(fake_mnist, epochs=1, checkpoint_dir=str(tmp_path / "ck"))
    first = train(config)
    again = train(tiny(fake_mnist, epochs=1, checkpoint_dir=str(tmp_path / "ck"), resume=True))
    assert again["history"] == first["history"]


def test_resume_without_checkpoint_starts_fresh(fake_mnist, tmp_path):
    metrics = train(tiny(fake_mnist, checkpoint_dir=str(tmp_path / "empty"), resume=True))
    assert len(metrics["history"]) == 1


def test_resume_with_another_recipe_is_refused(fake_mnist, tmp_path):
    train(tiny(fake_mnist, checkpoint_dir=str(tmp_path / "ck")))
    with pytest.raises(CheckpointError, match="different recipe.*batch_size"):
        train(tiny(fake_mnist, epochs=2, batch_size=10, checkpoint_dir=str(tmp_path / "ck"), resume=True))


def test_divergence_is_a_clear_error_and_keeps_the_checkpoint(fake_mnist, tmp_path):
    folder = tmp_path / "ck"
    train(tiny(fake_mnist, checkpoint_dir=str(folder)))
    good = (folder / "last.npz").read_bytes()
    with pytest.raises(TrainingDivergedError) as info:
        train(tiny(fake_mnist, epochs=2, lr=1e5, checkpoint_dir=str(folder)))
    message = str(info.value)
    assert "epoch 1" in message and "step " in message and "lower learning rate" in message
    assert str(folder / "last.npz") in message
    assert isinstance(info.value, PortacnnError) and isinstance(info.value, RuntimeError)
    assert (folder / "last.npz").read_bytes() == good
    assert load_checkpoint(folder / "last.npz")["epoch"] == 1
    assert sorted(p.name for p in folder.iterdir()) == ["last.npz"]


def test_metrics_and_plot_files(fake_mnist, tmp_path):
    pytest.importorskip("matplotlib")
    import json

    metrics_path, plot_path = tmp_path / "out" / "metrics.json", tmp_path / "out" / "curves.png"
    train(tiny(fake_mnist, train_size=20, metrics_out=str(metrics_path), plot=str(plot_path)))
    written = json.loads(metrics_path.read_text())
    assert set(written) == {"test_accuracy", "history", "backend", "device", "dtype", "wall_seconds"}
    assert len(written["history"]) == 1
    assert plot_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in plot_path.parent.iterdir()) == ["curves.png", "metrics.json"]


def test_missing_matplotlib_fails_before_training(fake_mnist, tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ConfigError, match=r"pip install 'portacnn\[plot\]'"):
        train(tiny(fake_mnist, plot=str(tmp_path / "p.png"), checkpoint_dir=str(tmp_path / "ck")))
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize("backend", ["torch", "jax", "array_api_strict"])
def test_other_backends_train_like_numpy(backend, fake_mnist):
    module = {"array_api_strict": "array_api_strict"}.get(backend, backend)
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{backend} is not installed")
    options = dict(train_size=10, test_size=10, batch_size=10, dtype="float64")  # one step: jax compiles each op
    reference = train(tiny(fake_mnist, **options))
    metrics = train(tiny(fake_mnist, backend=backend, **options))
    assert metrics["backend"] == backend
    np.testing.assert_allclose(metrics["history"][0]["train_loss"], reference["history"][0]["train_loss"], rtol=1e-9)
    np.testing.assert_allclose(metrics["history"][0]["test_loss"], reference["history"][0]["test_loss"], rtol=1e-9)


@needs_real_mnist
def test_real_mnist_short_run_learns(monkeypatch):
    import portacnn.training as training

    losses = []
    real_flush = training._flush

    def recording_flush(xp, pending_losses, *args):
        result = real_flush(xp, pending_losses, *args)
        losses.extend(float(v) for v in pending_losses)
        return result

    monkeypatch.setattr(training, "_flush", recording_flush)
    metrics = train(TrainConfig(epochs=1, train_size=2000, test_size=500, batch_size=20, lr=0.02, momentum=0.9,
                                weight_decay=1e-4, data_dir=str(SHARED_MNIST), quiet=True))
    assert len(losses) == 100
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:5])
    assert metrics["test_accuracy"] > 0.8
    assert metrics["history"][0]["test_loss"] < 1.0
