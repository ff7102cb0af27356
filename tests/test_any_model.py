"""Any model on any dataset: TrainConfig(model=..., dataset=..., optimizer=..., scheduler=...), the CLI flags,
checkpoints of any registered model (evaluate, predict), the architecture registry, and the small contracts
of issue 12 (--quiet's final line, "1 epoch", --data-dir must exist unless --download, model.to after the
optimizer has state)."""

import json
import math
import warnings

import numpy as np
import pytest
from support import offline_environment, write_fake_mnist

import portacnn
from portacnn import models, nn
from portacnn.checkpoint import UNREGISTERED, UnregisteredModelWarning, build_model, load_checkpoint, save_checkpoint
from portacnn.cli import main
from portacnn.errors import ArgumentError, CheckpointError, PortacnnError
from portacnn.optim import SGD, Adam, CosineAnnealingLR
from portacnn.training import ConfigError, TrainConfig, _build_scheduler, train


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    offline_environment(monkeypatch, tmp_path / "home")
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def fake_mnist(tmp_path):
    return write_fake_mnist(tmp_path / "mnist", n_train=48, n_test=16)


def _tiny(data, **options):
    values = dict(data_dir=str(data), epochs=1, batch_size=16, lr=0.01, quiet=True)
    values.update(options)
    return TrainConfig(**values)


class TwoLayer(nn.Module):
    """A user's own model, registered below as a class."""

    def __init__(self, hidden=16, num_classes=10, *, seed=0):
        rng = np.random.default_rng(seed)
        self.flatten = nn.Flatten()
        self.hidden = nn.Linear(784, hidden, rng=rng)
        self.relu = nn.ReLU()
        self.out = nn.Linear(hidden, num_classes, rng=rng)

    def forward(self, x):
        return self.out(self.relu(self.hidden(self.flatten(x))))


models.register("test_two_layer", TwoLayer, replace=True)


def _mlp(*, width=8, num_classes=10, seed=0, dtype="float32", device=None):
    rng = np.random.default_rng(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(784, width, rng=rng, dtype=dtype, device=device), nn.ReLU(),
                         nn.Linear(width, num_classes, rng=rng, dtype=dtype, device=device))


mlp = models.register("test_mlp", _mlp, recipe=dict(epochs=2, batch_size=8, lr=0.02, optimizer="adam"),
                           replace=True)


# ---------------------------------------------------------------- the registry


def test_a_registered_function_records_its_arguments_but_not_where_the_weights_start():
    model = mlp(width=12, seed=3, dtype="float64")
    assert models.architecture_of(model) == ("test_mlp", {"width": 12, "num_classes": 10})
    assert models.architecture_of(models.create("test_mlp", width=5)) == ("test_mlp", {"width": 5, "num_classes": 10})


def test_a_registered_class_records_its_constructor_arguments():
    assert models.architecture_of(TwoLayer(24, seed=5)) == ("test_two_layer", {"hidden": 24, "num_classes": 10})
    assert models.architecture_of(nn.Linear(2, 3)) is None


def test_register_refuses_bad_names_taken_names_and_non_callables():
    with pytest.raises(ArgumentError, match="identifier"):
        models.register("my net", _mlp)
    with pytest.raises(ArgumentError, match="already registered"):
        models.register("lenet", _mlp)
    with pytest.raises(ArgumentError, match="function or Module class"):
        models.register("test_not_callable", 3)
    with pytest.raises(ArgumentError, match="unknown architecture 'nope'.*lenet"):
        models.create("nope")


def test_register_works_as_a_decorator():
    @models.register("test_decorated")
    def decorated(*, depth=2, seed=0):
        return _mlp(width=depth, seed=seed)

    assert "test_decorated" in models.available()
    assert models.architecture_of(decorated(depth=3)) == ("test_decorated", {"depth": 3})


def test_checkpoint_of_a_registered_user_model_rebuilds_it(tmp_path):
    model = TwoLayer(hidden=7, seed=1)
    path = save_checkpoint(tmp_path / "m.npz", model)
    checkpoint = load_checkpoint(path)
    assert (checkpoint["architecture"], checkpoint["architecture_kwargs"]) == ("test_two_layer",
                                                                              {"hidden": 7, "num_classes": 10})
    rebuilt = build_model(checkpoint)
    assert isinstance(rebuilt, TwoLayer) and rebuilt.hidden.weight.shape == (7, 784)
    x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
    np.testing.assert_array_equal(portacnn.to_numpy(rebuilt(x)), portacnn.to_numpy(model(x)))


def test_an_unregistered_model_is_saved_as_such_with_a_warning_never_as_lenet(tmp_path):
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with pytest.warns(UnregisteredModelWarning, match="register"):
        path = save_checkpoint(tmp_path / "m.npz", model)
    checkpoint = load_checkpoint(path)
    assert checkpoint["architecture"] == UNREGISTERED and checkpoint["model_class"].endswith("Sequential")
    with pytest.raises(CheckpointError, match="Sequential that no registered architecture built.*load_state_dict"):
        build_model(checkpoint)
    nn.Sequential(nn.Flatten(), nn.Linear(784, 10)).load_state_dict(checkpoint["model"])  # the weights are all there


def test_arguments_json_cannot_hold_are_refused_at_save(tmp_path):
    @models.register("test_takes_an_array", replace=True)
    def takes_an_array(*, scale=None):
        return _mlp()

    with pytest.raises(CheckpointError, match="test_takes_an_array.*JSON"):
        save_checkpoint(tmp_path / "m.npz", takes_an_array(scale=np.ones(2)))


# ---------------------------------------------------------------- the config


def test_the_model_recipe_fills_what_no_preset_or_flag_sets():
    config = TrainConfig(model="test_mlp", lr=0.5)
    assert (config.epochs, config.batch_size, config.lr, config.optimizer) == (2, 8, 0.5, "adam")
    assert config.preset is None
    assert TrainConfig(model="test_mlp", preset="seed").batch_size == 5  # an explicit preset wins
    assert TrainConfig().preset == "fast"  # lenet has no recipe of its own: the fast preset
    # A run shorter than the recipe's warm-up keeps at least one epoch of the main schedule.
    assert TrainConfig(model="resnet8", epochs=1).warmup == 0 and TrainConfig(model="resnet8", epochs=3).warmup == 1


@pytest.mark.parametrize("options, fragment", [
    (dict(model="resnet9000"), "unknown model 'resnet9000'"),
    (dict(model=3), "architecture name or a portacnn.nn.Module"),
    (dict(dataset="imagenet"), "unknown dataset 'imagenet'"),
    (dict(optimizer="lbfgs"), "unknown optimizer 'lbfgs'"),
    (dict(scheduler="linear"), "unknown learning-rate schedule"),
    (dict(warmup=-1), "warmup"),
    (dict(warmup=5, epochs=5), "shorter than the run"),
    (dict(label_smoothing=1.0), "label_smoothing"),
    (dict(augment="yes"), "augment"),
])
def test_bad_config_values_name_the_problem(options, fragment):
    with pytest.raises(ConfigError, match=fragment):
        TrainConfig(**options)


def test_datasets_take_the_names_people_write():
    from portacnn.datasets import dataset_info

    assert TrainConfig(dataset="Fashion-MNIST").dataset == "fashion_mnist"
    assert TrainConfig(dataset="cifar-10").dataset == "cifar10"
    assert dataset_info("CIFAR-100").num_classes == 100


def test_an_optimizer_object_needs_the_model_object():
    model = _mlp()
    with pytest.raises(ConfigError, match="model object"):
        TrainConfig(optimizer=SGD(model.parameters(), lr=0.1))
    optimizer = SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="optimizer object"):
        TrainConfig(model=model, optimizer="sgd", scheduler=CosineAnnealingLR(optimizer, 3))


def _lrs(config, steps_per_epoch):
    model = _mlp()
    optimizer = SGD(model.parameters(), lr=config.lr)
    scheduler, every_batch = _build_scheduler(config, optimizer, steps_per_epoch)
    lrs = []
    for _ in range(config.epochs * (steps_per_epoch if every_batch else 1)):
        lrs.append(optimizer.lr)
        scheduler.step()
    return lrs, every_batch


def test_cosine_schedule_with_warmup_goes_step_by_step():
    lrs, every_batch = _lrs(TrainConfig(epochs=4, lr=0.1, scheduler="cosine", warmup=1), steps_per_epoch=10)
    assert every_batch and len(lrs) == 40
    np.testing.assert_allclose(lrs[:10], [0.1 * (i + 1) / 10 for i in range(10)], rtol=1e-12)  # linear warm-up
    expected = [0.1 * (1 + math.cos(math.pi * i / 30)) / 2 for i in range(30)]
    np.testing.assert_allclose(lrs[10:], expected, rtol=1e-9, atol=1e-15)


def test_step_schedule_without_warmup_steps_once_per_epoch_as_before():
    lrs, every_batch = _lrs(TrainConfig(epochs=5, lr=0.1, lr_step=2, lr_gamma=0.5), steps_per_epoch=10)
    assert not every_batch
    np.testing.assert_allclose(lrs, [0.1, 0.1, 0.05, 0.05, 0.025])


def test_step_schedule_with_warmup_decays_at_the_same_epochs():
    lrs, _ = _lrs(TrainConfig(epochs=5, lr=0.1, lr_step=2, lr_gamma=0.5, warmup=1), steps_per_epoch=4)
    per_epoch = [lrs[i * 4 + 3] for i in range(5)]
    np.testing.assert_allclose(per_epoch, [0.1, 0.1, 0.05, 0.05, 0.025])
    np.testing.assert_allclose(lrs[:4], [0.025, 0.05, 0.075, 0.1])


def test_onecycle_peaks_at_lr():
    lrs, every_batch = _lrs(TrainConfig(epochs=3, lr=0.2, scheduler="onecycle", warmup=1), steps_per_epoch=10)
    assert every_batch and max(lrs) == pytest.approx(0.2) and int(np.argmax(lrs)) in (9, 10)


# ---------------------------------------------------------------- training any model


def test_train_a_user_module_with_its_own_optimizer_and_scheduler(fake_mnist, tmp_path):
    model = TwoLayer(hidden=12)
    optimizer = Adam(model.parameters(), lr=1e-3)
    scheduler = CosineAnnealingLR(optimizer, T_max=2)
    before = portacnn.to_numpy(model.hidden.weight.data).copy()
    metrics = train(_tiny(fake_mnist, model=model, optimizer=optimizer, scheduler=scheduler, epochs=2,
                          checkpoint_dir=str(tmp_path / "ck")))
    assert len(metrics["history"]) == 2
    assert not np.array_equal(portacnn.to_numpy(model.hidden.weight.data), before)  # that very model trained
    assert optimizer.lr == pytest.approx(0.0, abs=1e-12)  # its scheduler was stepped once per epoch
    checkpoint = load_checkpoint(tmp_path / "ck" / "last.npz")
    assert checkpoint["architecture"] == "test_two_layer" and checkpoint["scheduler"]["type"] == "CosineAnnealingLR"
    assert checkpoint["config"]["model"] == "TwoLayer" and checkpoint["config"]["input_shape"] == [1, 28, 28]


def test_a_given_model_trains_where_it_is_unless_a_backend_is_named(fake_mnist):
    pytest.importorskip("torch")
    model = _mlp(device="torch")
    metrics = train(_tiny(fake_mnist, model=model))
    assert metrics["backend"] == "torch" and not isinstance(model.parameters()[0].data, np.ndarray)
    metrics = train(_tiny(fake_mnist, model=model, backend="numpy"))
    assert metrics["backend"] == "numpy" and isinstance(model.parameters()[0].data, np.ndarray)


def test_a_model_with_the_wrong_number_of_outputs_is_refused_before_training(fake_mnist):
    with pytest.raises(ConfigError, match="num_classes=10"):
        train(_tiny(fake_mnist, model=TwoLayer(num_classes=7)))


class _Interrupted(Exception):
    pass


def test_resume_with_augmentation_and_a_per_step_schedule_is_exact(fake_mnist, tmp_path, monkeypatch):
    from portacnn import training

    options = dict(model="test_mlp", epochs=3, augment=True, normalize=True, scheduler="cosine", warmup=1,
                   label_smoothing=0.1)
    whole = train(_tiny(fake_mnist, checkpoint_dir=str(tmp_path / "a"), **options))
    real_save = training.save_checkpoint

    def save_then_stop_after_epoch_2(path, model, optimizer, scheduler, epoch, *args, **kwargs):
        real_save(path, model, optimizer, scheduler, epoch, *args, **kwargs)
        if epoch == 2:
            raise _Interrupted

    monkeypatch.setattr(training, "save_checkpoint", save_then_stop_after_epoch_2)
    with pytest.raises(_Interrupted):
        train(_tiny(fake_mnist, checkpoint_dir=str(tmp_path / "b"), **options))
    monkeypatch.setattr(training, "save_checkpoint", real_save)
    resumed = train(_tiny(fake_mnist, checkpoint_dir=str(tmp_path / "b"), resume=True, **options))
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in whole["history"]]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in resumed["history"]]
    a = load_checkpoint(tmp_path / "a" / "last.npz")["model"]
    b = load_checkpoint(tmp_path / "b" / "last.npz")["model"]
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])


def test_resume_refuses_another_model_or_dataset_setting(fake_mnist, tmp_path):
    train(_tiny(fake_mnist, model="test_mlp", checkpoint_dir=str(tmp_path / "ck")))
    with pytest.raises(CheckpointError, match="model: checkpoint 'test_mlp' vs now 'lenet'"):
        train(_tiny(fake_mnist, model="lenet", epochs=2, checkpoint_dir=str(tmp_path / "ck"), resume=True))


def test_a_schedule_planned_over_the_run_cannot_resume_into_a_longer_run(fake_mnist, tmp_path):
    options = dict(model="test_mlp", scheduler="cosine", checkpoint_dir=str(tmp_path / "ck"))
    train(_tiny(fake_mnist, epochs=1, **options))
    with pytest.raises(CheckpointError, match="epochs: checkpoint 1 vs now 2"):
        train(_tiny(fake_mnist, epochs=2, resume=True, **options))


# ---------------------------------------------------------------- the command line


def test_cli_trains_a_zoo_model_with_the_issue_flags_and_evaluates_it(fake_mnist, tmp_path, capsys):
    pytest.importorskip("portacnn.models.resnets")
    status = main(["train", "--model", "resnet8", "--dataset", "mnist", "--data-dir", str(fake_mnist), "--epochs",
                   "2", "--batch-size", "16", "--optimizer", "sgd", "--lr-schedule", "cosine", "--warmup", "1",
                   "--label-smoothing", "0.1", "--augment", "--quiet", "--checkpoint-dir", str(tmp_path / "ck")])
    assert status == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("final test accuracy: ") and "resnet8 on mnist, 2 epochs" in out[0]
    checkpoint = load_checkpoint(tmp_path / "ck" / "last.npz")
    assert checkpoint["architecture"] == "resnet8"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "ck"), "--data-dir", str(fake_mnist)]) == 0
    out = capsys.readouterr().out
    assert "(resnet8, epoch 2" in out and "test images: 16 (mnist)" in out


def test_quiet_prints_only_the_final_line_and_one_epoch_is_singular(fake_mnist, capsys):
    assert main(["train", "--data-dir", str(fake_mnist), "--epochs", "1", "--batch-size", "16", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "1 epoch," in out and "1 epochs" not in out
    assert main(["train", "--data-dir", str(fake_mnist), "--epochs", "1", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "1 epoch," in out and "1 epochs" not in out and "epoch 1/1: train loss" in out


def test_a_data_dir_that_does_not_exist_is_an_error_and_is_not_created(tmp_path, capsys):
    missing = tmp_path / "mnsit"  # a typo
    assert main(["train", "--data-dir", str(missing), "--epochs", "1", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and "--download" in err
    assert not missing.exists()


def test_download_creates_the_data_dir(tmp_path, capsys):
    target = tmp_path / "new" / "mnist"
    # Offline: no mirrors, so the download itself fails, but only after the folder was made for it.
    assert main(["train", "--data-dir", str(target), "--download", "--epochs", "1", "--quiet"]) == 2
    assert target.is_dir()
    assert "Traceback" not in capsys.readouterr().err


# ---------------------------------------------------------------- moving a model after its optimizer has state


@pytest.mark.parametrize("optimizer_class, options", [(SGD, dict(momentum=0.9)), (Adam, {})])
def test_model_to_after_steps_moves_the_optimizer_state(optimizer_class, options):
    pytest.importorskip("torch")
    from portacnn.nn import CrossEntropyLoss

    rng = np.random.default_rng(0)
    x, y = rng.random((4, 1, 28, 28)), np.array([1, 2, 3, 4])
    reference, moved = _mlp(dtype="float64"), _mlp(dtype="float64")
    ref_opt = optimizer_class(reference.parameters(), lr=0.01, **options)
    moved_opt = optimizer_class(moved.parameters(), lr=0.01, **options)
    for step in range(3):
        if step == 1:
            moved.to("torch")  # after the first step gave the optimizer state
        for model, opt in ((reference, ref_opt), (moved, moved_opt)):
            inputs = portacnn.to_device(x, "torch") if model is moved and step >= 1 else x
            labels = portacnn.to_device(y, "torch") if model is moved and step >= 1 else y
            opt.zero_grad()
            CrossEntropyLoss()(model(inputs), labels).backward()
            opt.step()
    for a, b in zip(reference.parameters(), moved.parameters()):
        np.testing.assert_allclose(portacnn.to_numpy(b.data), portacnn.to_numpy(a.data), rtol=1e-9, atol=1e-15)
    assert not isinstance(moved.parameters()[0].data, np.ndarray)


def test_model_to_a_new_dtype_casts_the_optimizer_state():
    from portacnn.nn import CrossEntropyLoss

    model = _mlp(dtype="float32")
    optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = np.random.default_rng(0).random((4, 1, 28, 28), dtype=np.float32), np.array([1, 2, 3, 4])
    CrossEntropyLoss()(model(x), y).backward()
    optimizer.step()
    model.to("numpy", dtype="float64")
    assert all(buffer.dtype == np.float64 for buffer in optimizer.momentum_buffers)
    optimizer.zero_grad()
    CrossEntropyLoss()(model(x.astype(np.float64)), y).backward()
    optimizer.step()
    assert all(p.data.dtype == np.float64 for p in model.parameters())


def test_cifar10_runs_end_to_end_on_cifar_format_files(tmp_path, capsys):
    datasets = pytest.importorskip("portacnn.datasets")
    pytest.importorskip("portacnn.models.resnets")
    from support import write_fake_cifar10

    folder = write_fake_cifar10(tmp_path / "cifar10", n_train=40, n_test=20)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UnregisteredModelWarning)
        status = main(["train", "--model", "resnet8", "--dataset", "cifar10", "--data-dir", str(folder),
                       "--epochs", "1", "--batch-size", "20", "--augment", "--normalize", "--quiet",
                       "--checkpoint-dir", str(tmp_path / "ck"), "--metrics-out", str(tmp_path / "m.json")])
    assert status == 0, capsys.readouterr().err
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert len(metrics["history"]) == 1
    checkpoint = load_checkpoint(tmp_path / "ck" / "last.npz")
    assert checkpoint["config"]["input_shape"] == [3, 32, 32]
    assert checkpoint["config"]["normalization"] == [list(datasets.dataset_info("cifar10").mean),
                                                      list(datasets.dataset_info("cifar10").std)]
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(tmp_path / "ck"), "--data-dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert "test images: 20 (cifar10)" in out and "airplane" in out
    assert isinstance(checkpoint, dict) and not isinstance(checkpoint, PortacnnError)
