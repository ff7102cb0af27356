"""Tests for portacnn.checkpoint: round trip, no pickle, atomic saves, clear errors."""

import json
import os
import stat
import zipfile

import numpy as np
import pytest
from support import rewrite_checkpoint

from portacnn.backends import to_device, to_numpy
from portacnn.checkpoint import FORMAT_VERSION, build_model, load_checkpoint, restore_training_state, save_checkpoint
from portacnn.errors import CheckpointError, PortacnnError
from portacnn.files import atomic_write
from portacnn.models import lenet
from portacnn.nn import CrossEntropyLoss, Linear, Sequential
from portacnn.optim import SGD, StepLR


def _trained_setup(seed=0, dtype="float64"):
    """A LeNet after two SGD steps with momentum, its optimizer, scheduler and RNG."""
    model = lenet(seed=seed, dtype=dtype)
    optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    scheduler = StepLR(optimizer, 2, 0.5)
    loss_fn = CrossEntropyLoss()
    rng = np.random.default_rng(seed)
    for _ in range(2):
        images = rng.standard_normal((4, 1, 28, 28)).astype(dtype)
        loss = loss_fn(model(images), rng.integers(0, 10, 4))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    scheduler.step()
    return model, optimizer, scheduler, rng


HISTORY = [{"epoch": 1, "train_loss": 0.5, "train_accuracy": 0.9, "test_loss": 0.4, "test_accuracy": 0.91,
            "seconds": 1.25}]
CONFIG = {"batch_size": 4, "lr": 0.01, "data_dir": None}


@pytest.fixture
def saved(tmp_path):
    model, optimizer, scheduler, rng = _trained_setup()
    path = save_checkpoint(tmp_path / "last.npz", model, optimizer, scheduler, 1, rng, CONFIG, HISTORY)
    return path, model, optimizer, scheduler, rng


def test_round_trip_restores_everything(saved):
    path, model, optimizer, scheduler, rng = saved
    loaded = load_checkpoint(path)
    assert loaded["format_version"] == FORMAT_VERSION
    assert loaded["architecture"] == "lenet"
    assert loaded["epoch"] == 1
    assert loaded["config"] == CONFIG
    assert loaded["history"] == HISTORY

    fresh_model = lenet(seed=99, dtype="float64")
    fresh_optimizer = SGD(fresh_model.parameters(), lr=0.5, momentum=0.9, weight_decay=1e-4)
    fresh_scheduler = StepLR(fresh_optimizer, 2, 0.5)
    fresh_rng = np.random.default_rng(1234)
    restore_training_state(loaded, fresh_model, fresh_optimizer, fresh_scheduler, fresh_rng)

    for (name, a), (_, b) in zip(model.state_dict().items(), fresh_model.state_dict().items()):
        assert np.array_equal(to_numpy(a), to_numpy(b)), name
        assert to_numpy(b).dtype == np.float64
    for a, b in zip(optimizer.momentum_buffers, fresh_optimizer.momentum_buffers):
        assert np.array_equal(a, b)
    assert fresh_optimizer.lr == optimizer.lr and fresh_optimizer.step_count == optimizer.step_count == 2
    assert fresh_scheduler.last_epoch == 1 and fresh_scheduler.base_lr == 0.01
    assert np.array_equal(fresh_rng.integers(0, 1 << 30, 8), rng.integers(0, 1 << 30, 8))


def test_build_model_from_checkpoint_on_another_backend(saved):
    path, model, *_ = saved
    rebuilt = build_model(load_checkpoint(path), device="array_api_strict", dtype="float32")
    x = np.random.default_rng(0).standard_normal((2, 1, 28, 28))
    expected = to_numpy(model(x).data)
    got = to_numpy(rebuilt(to_device(x.astype(np.float32), "array_api_strict")).data)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_file_is_a_plain_npz_without_pickle(saved):
    path = saved[0]
    with np.load(path, allow_pickle=False) as archive:
        names = set(archive.files)
        assert "metadata" in names
        assert "model/0.weight" in names and "model/7.bias" in names
        assert "optimizer/momentum_buffers.0" in names
        assert all(n == "metadata" or n.startswith(("model/", "optimizer/")) for n in names)
        assert all(archive[n].dtype != object for n in names)
        metadata = json.loads(archive["metadata"].tobytes().decode("utf-8"))
    assert metadata["format"] == "portacnn-checkpoint"
    assert metadata["format_version"] == FORMAT_VERSION
    assert metadata["optimizer"]["type"] == "SGD" and metadata["scheduler"]["type"] == "StepLR"
    assert metadata["rng"]["bit_generator"] == "PCG64"


def test_save_without_optimizer(tmp_path):
    model = lenet(seed=1)
    loaded = load_checkpoint(save_checkpoint(tmp_path / "m.npz", model))
    assert loaded["optimizer"] is None and loaded["scheduler"] is None and loaded["rng"] is None
    with pytest.raises(CheckpointError, match="no optimizer state"):
        restore_training_state(loaded, lenet(), SGD(lenet().parameters(), lr=0.1))


def test_save_leaves_no_temp_files_and_overwrites(saved, tmp_path):
    path, model, optimizer, scheduler, rng = saved
    save_checkpoint(path, model, optimizer, scheduler, 2, rng, CONFIG, HISTORY)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.npz"]
    assert load_checkpoint(path)["epoch"] == 2


def test_failing_save_keeps_previous_checkpoint(saved, tmp_path, monkeypatch):
    path, model, optimizer, scheduler, rng = saved
    before = path.read_bytes()

    def broken_savez(handle, **arrays):
        handle.write(b"PK\x03\x04 partial data")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, model, optimizer, scheduler, 2, rng, CONFIG, HISTORY)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.npz"]
    assert load_checkpoint(path)["epoch"] == 1


def test_unserialisable_config_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path / "x.npz", lenet(), config={"bad": object()})
    assert list(tmp_path.iterdir()) == []


def _assert_checkpoint_error(path, *fragments):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message, message
    assert isinstance(info.value, PortacnnError)


def test_missing_file(tmp_path):
    _assert_checkpoint_error(tmp_path / "nope.npz", "no checkpoint")


def test_truncated_file(saved):
    path = saved[0]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _assert_checkpoint_error(path, "not a portacnn checkpoint", "truncated")


def test_not_an_npz(tmp_path):
    path = tmp_path / "notes.npz"
    path.write_text("hello, I am a text file\n")
    _assert_checkpoint_error(path, "not an .npz")


def test_plain_npy_is_rejected(tmp_path):
    path = tmp_path / "array.npz"
    with open(path, "wb") as handle:
        np.save(handle, np.arange(3))
    _assert_checkpoint_error(path, "not an .npz")


def test_corrupt_array_data(saved):
    path = saved[0]
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = archive.getinfo("model/3.weight.npy")
    middle = info.header_offset + 200 + info.compress_size // 2
    data[middle:middle + 16] = bytes(16)
    path.write_bytes(bytes(data))
    _assert_checkpoint_error(path, "corrupt")


def test_npz_without_metadata(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, weights=np.ones(3))
    _assert_checkpoint_error(path, "not a portacnn checkpoint", "metadata")


def test_newer_format_version(saved):
    path = saved[0]
    rewrite_checkpoint(path, change_metadata=lambda m: m.update(format_version=FORMAT_VERSION + 1))
    _assert_checkpoint_error(path, f"version {FORMAT_VERSION + 1}", "upgrade portacnn")


def test_foreign_metadata(saved):
    path = saved[0]
    rewrite_checkpoint(path, change_metadata=lambda m: m.update(format="something-else"))
    _assert_checkpoint_error(path, "not a portacnn checkpoint")


def test_unknown_architecture(saved):
    path = saved[0]
    rewrite_checkpoint(path, change_metadata=lambda m: m.update(architecture="resnet50"))
    with pytest.raises(CheckpointError, match="resnet50.*known architectures: lenet"):
        build_model(load_checkpoint(path))


def test_other_architecture_lists_the_mismatches(tmp_path):
    rng = np.random.default_rng(0)
    other = Sequential(Linear(784, 10, rng=rng), Linear(10, 10, rng=rng), Linear(10, 3, rng=rng))
    path = save_checkpoint(tmp_path / "mlp.npz", other, architecture="lenet")
    loaded = load_checkpoint(path)
    with pytest.raises(CheckpointError) as info:
        build_model(loaded)
    message = str(info.value)
    assert "missing: " in message and "3.weight" in message
    assert "wrong shape: " in message and "0.weight" in message
    with pytest.raises(CheckpointError, match="missing"):
        restore_training_state(loaded, lenet())


def test_optimizer_state_from_another_model(tmp_path):
    model, optimizer, scheduler, rng = _trained_setup()
    path = save_checkpoint(tmp_path / "a.npz", model, optimizer, scheduler, 1, rng)
    loaded = load_checkpoint(path)
    other = Sequential(Linear(784, 10))
    with pytest.raises(CheckpointError, match="optimizer state does not fit"):
        restore_training_state({**loaded, "model": other.state_dict()}, other,
                               SGD(other.parameters(), lr=0.1, momentum=0.9))


def test_atomic_write_creates_parent_folders(tmp_path):
    target = tmp_path / "a" / "b" / "file.bin"
    atomic_write(target, lambda handle: handle.write(b"hi"))
    assert target.read_bytes() == b"hi"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.bin"]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_write_gives_the_permissions_of_a_plainly_created_file(tmp_path, umask):
    """Temp files are created 0o600; checkpoints, metrics, plots and downloads must not stay that way."""
    previous = os.umask(umask)
    try:
        target = atomic_write(tmp_path / "metrics.json", lambda handle: handle.write(b"{}"))
    finally:
        os.umask(previous)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask
