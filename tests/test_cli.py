"""Tests for the ``portacnn`` command line (portacnn.cli and ``python -m portacnn``)."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from support import SHARED_MNIST, offline_environment, write_fake_mnist

from portacnn import datasets
from portacnn.cli import load_digit_image, main

HAVE_REAL_MNIST = SHARED_MNIST.is_dir()
METRICS_KEYS = {"test_accuracy", "history", "backend", "device", "dtype", "wall_seconds"}
HISTORY_KEYS = {"epoch", "train_loss", "train_accuracy", "test_loss", "test_accuracy", "seconds"}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    offline_environment(monkeypatch, tmp_path / "home")


@pytest.fixture
def fake_mnist(tmp_path):
    return write_fake_mnist(tmp_path / "mnist", n_train=60, n_test=20)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 1-epoch checkpoint: real MNIST (2,000 images) when present, else generated data."""
    root = tmp_path_factory.mktemp("trained")
    with pytest.MonkeyPatch.context() as monkeypatch:
        offline_environment(monkeypatch, root / "home")
        data = SHARED_MNIST if HAVE_REAL_MNIST else write_fake_mnist(root / "mnist", n_train=60, n_test=200)
        status = main(["train", "--data-dir", str(data), "--epochs", "1", "--train-size", "2000" if HAVE_REAL_MNIST
                       else "60", "--test-size", "200", "--batch-size", "20", "--lr", "0.02",
                       "--checkpoint-dir", str(root / "ck"), "--quiet"])
    assert status == 0
    return root / "ck" / "last.npz", data


@pytest.fixture(autouse=True)
def _run_in_a_scratch_folder(tmp_path, monkeypatch):
    """`portacnn train` writes ./checkpoints by default: keep that out of the repository."""
    monkeypatch.chdir(tmp_path)


def test_train_writes_a_checkpoint_by_default(fake_mnist, tmp_path):
    assert main(_train_args(fake_mnist)) == 0
    assert (tmp_path / "checkpoints" / "last.npz").is_file()


def _train_args(data, *extra):
    return ["train", "--data-dir", str(data), "--epochs", "1", "--train-size", "40", "--test-size", "20",
            "--batch-size", "20", "--lr", "0.01", "--quiet", *extra]


# ---------------------------------------------------------------- train


def test_train_writes_metrics_and_plot(fake_mnist, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    PIL = pytest.importorskip("PIL.Image")
    metrics_path, plot_path = tmp_path / "metrics.json", tmp_path / "plots" / "curves.png"
    status = main(_train_args(fake_mnist, "--metrics-out", str(metrics_path), "--plot", str(plot_path),
                              "--dtype", "float64"))
    assert status == 0
    metrics = json.loads(metrics_path.read_text())
    assert set(metrics) == METRICS_KEYS
    assert isinstance(metrics["test_accuracy"], float) and 0.0 <= metrics["test_accuracy"] <= 1.0
    assert len(metrics["history"]) == 1 and set(metrics["history"][0]) == HISTORY_KEYS
    assert metrics["history"][0]["epoch"] == 1
    assert (metrics["backend"], metrics["device"], metrics["dtype"]) == ("numpy", "cpu", "float64")
    assert metrics["wall_seconds"] > 0
    with PIL.open(plot_path) as image:
        assert image.format == "PNG" and image.size[0] > 100
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["metrics.json"]
    assert sorted(p.name for p in plot_path.parent.iterdir()) == ["curves.png"]
    out = capsys.readouterr().out.splitlines()  # --quiet: only the final result line
    assert len(out) == 1 and out[0].startswith("final test accuracy: ")


def test_train_prints_progress_lines_unless_quiet(fake_mnist, capsys):
    assert main(_train_args(fake_mnist)[:-1]) == 0
    out = capsys.readouterr().out
    assert "epoch 1/1: train loss" in out and "final test accuracy" in out


def test_train_on_another_backend(fake_mnist, tmp_path):
    pytest.importorskip("array_api_strict")
    metrics_path = tmp_path / "m.json"
    assert main(_train_args(fake_mnist, "--backend", "array_api_strict", "--metrics-out", str(metrics_path))) == 0
    assert json.loads(metrics_path.read_text())["backend"] == "array_api_strict"


def test_friendly_errors_exit_2_without_traceback(fake_mnist, tmp_path, capsys):
    assert main(_train_args(fake_mnist, "--backend", "nosuchlib")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "nosuchlib" in err and "Traceback" not in err

    assert main(_train_args(fake_mnist)) == 0
    capsys.readouterr()
    assert main(_train_args(fake_mnist, "--resume", "--batch-size", "10")) == 2
    assert "checkpoint" in capsys.readouterr().err

    assert main(_train_args(tmp_path / "empty-folder")) == 2
    assert "MNIST files missing" in capsys.readouterr().err

    assert main(["evaluate", "--checkpoint", str(tmp_path / "missing.npz")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_divergence_exits_2_with_advice(fake_mnist, capsys):
    assert main(_train_args(fake_mnist, "--lr", "100000")) == 2
    err = capsys.readouterr().err
    assert "training diverged" in err and "lower learning rate" in err and "Traceback" not in err


def test_usage_errors_and_help():
    assert main(["train", "--dtype", "float16"]) == 2
    assert main(["--help"]) == 0
    assert main([]) == 2


# ---------------------------------------------------------------- evaluate and predict


def test_evaluate_prints_accuracy_and_confusion_matrix(trained, capsys):
    checkpoint, data = trained
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--data-dir", str(data), "--test-size", "200"]) == 0
    out = capsys.readouterr().out
    accuracy = float(re.search(r"test accuracy: ([0-9.]+) \((\d+)/200\)", out).group(1))
    if HAVE_REAL_MNIST:
        assert accuracy > 0.8
    assert "per-class accuracy" in out and "confusion matrix" in out
    rows = [line for line in out.splitlines() if re.match(r"^\s+\d\s+(\s+\d+){10}$", line)]
    assert len(rows) == 10
    counts = np.array([[int(v) for v in row.split()[1:]] for row in rows])
    assert counts.sum() == 200


def test_evaluate_accepts_the_checkpoint_folder(trained, capsys):
    checkpoint, data = trained
    assert main(["evaluate", "--checkpoint", str(checkpoint.parent), "--data-dir", str(data), "--test-size", "20",
                 "--backend", "numpy"]) == 0
    assert "test accuracy" in capsys.readouterr().out


def _save_png(path, pixels):
    from PIL import Image

    Image.fromarray(pixels.astype(np.uint8), mode="L").save(path)
    return path


def test_predict_images_and_report_broken_ones(trained, tmp_path, capsys):
    pytest.importorskip("PIL")
    from PIL import Image

    checkpoint, data = trained
    images, labels = datasets.load_mnist("test", root=data)
    paths, expected = [], []
    for i in range(8):
        paths.append(_save_png(tmp_path / f"digit{i}.png", images[i, 0]))
        expected.append(int(labels[i]))
    # Black digit on white, and a larger RGB image: inverted and resized like the others.
    paths.append(_save_png(tmp_path / "inverted.png", 255 - images[8, 0]))
    expected.append(int(labels[8]))
    big = Image.fromarray(images[9, 0]).resize((56, 56)).convert("RGB")
    big.save(tmp_path / "big.png")
    paths.append(tmp_path / "big.png")
    expected.append(int(labels[9]))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    missing = tmp_path / "missing.png"

    argv = ["predict", "--checkpoint", str(checkpoint), str(paths[0]), str(broken), *map(str, paths[1:]), str(missing)]
    status = main(argv)
    captured = capsys.readouterr()
    assert status != 0
    assert f"{broken}: cannot read image" in captured.err and f"{missing}" in captured.err
    predicted = {}
    for line in captured.out.splitlines():
        match = re.fullmatch(r"(.+): (\d) \(([01]\.\d+)\)", line)
        assert match, line
        predicted[match.group(1)] = int(match.group(2))
        assert 0.0 <= float(match.group(3)) <= 1.0
    assert list(predicted) == [str(p) for p in paths]
    if HAVE_REAL_MNIST:
        correct = sum(predicted[str(p)] == e for p, e in zip(paths, expected))
        assert correct >= 8, (predicted, expected)


def test_predict_all_good_exits_0(trained, tmp_path, capsys):
    pytest.importorskip("PIL")
    checkpoint, data = trained
    images, _ = datasets.load_mnist("test", root=data)
    path = _save_png(tmp_path / "one.png", images[0, 0])
    assert main(["predict", "--checkpoint", str(checkpoint), str(path)]) == 0
    assert capsys.readouterr().out.startswith(f"{path}: ")


def test_load_digit_image_inverts_light_backgrounds(tmp_path):
    pytest.importorskip("PIL")
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[10:18, 12:16] = 255
    dark = load_digit_image(_save_png(tmp_path / "dark.png", pixels))
    light = load_digit_image(_save_png(tmp_path / "light.png", 255 - pixels))
    assert dark.shape == (28, 28) and dark.max() == 1.0 and dark.min() == 0.0
    np.testing.assert_allclose(light, dark)


# ---------------------------------------------------------------- backends and parity


def test_python_m_portacnn_backends():
    result = subprocess.run([sys.executable, "-m", "portacnn", "backends"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^numpy\s+\S+\s+numpy$", result.stdout, re.MULTILINE)
    assert "default backend" in result.stdout


def test_parity_subcommand(capsys):
    assert main(["parity", "--backends", "numpy", "--dtypes", "float64"]) == 0
    out = capsys.readouterr().out
    assert "conv2d" in out and "passed, 0 failed" in out
    assert main(["parity", "--dtypes", "float16"]) == 2
    assert main(["parity", "--backends", "nosuchlib"]) == 2


USER_PARITY_MODULE = '''
import numpy
from portacnn import parity
from support import Swish  # a hand-written Function, as a user would register one


parity.case("user_swish")(parity.tape_case(Swish, (3, 4)))


@parity.case("user_numpy_only")
def make(rng):
    x = rng.standard_normal((2, 3))
    return (x,), lambda x: (numpy.asarray(x) * 2.0,)  # works on NumPy only
'''


def test_parity_checks_a_users_module_and_lists_failures_first(tmp_path, monkeypatch, capsys):
    pytest.importorskip("array_api_strict")
    from portacnn import parity

    monkeypatch.setattr(parity, "CASES", dict(parity.CASES))  # the user's cases leave with the test
    (tmp_path / "user_ops_for_parity.py").write_text(USER_PARITY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["parity", "--module", "user_ops_for_parity", "--backends", "numpy,array_api_strict:device1",
                 "--dtypes", "float64"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 1
    assert lines[0].split()[-3:] == ["rtol", "atol", "result"]
    rows = [line for line in lines[2:] if line.strip() and not line.startswith(" ") and "passed" not in line]
    assert len(rows) == 4 and {row.split()[2] for row in rows} == {"user_swish", "user_numpy_only"}
    assert rows[0].split()[:3] == ["array_api_strict:device1", "float64", "user_numpy_only"]
    assert rows[0].endswith("FAIL") and all(row.endswith("pass") for row in rows[1:])
    assert "lenet" not in "\n".join(lines), "a user's module checks the user's cases only"


def test_parity_module_errors_name_the_problem(tmp_path, monkeypatch, capsys):
    from portacnn import parity

    monkeypatch.setattr(parity, "CASES", dict(parity.CASES))
    assert main(["parity", "--module", "no_such_module_here"]) == 2
    assert "cannot import it" in capsys.readouterr().err
    (tmp_path / "empty_parity_module.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["parity", "--module", "empty_parity_module"]) == 2
    assert "registered no parity cases" in capsys.readouterr().err
