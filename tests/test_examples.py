"""The examples keep working as the library changes."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
from support import SHARED_MNIST, needs_real_mnist

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(*argv, timeout=300):
    return subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, timeout=timeout)


def test_same_model_any_backend_reports_agreement():
    result = _run(EXAMPLES / "same_model_any_backend.py")
    assert result.returncode == 0, result.stderr
    assert "all backends agree with numpy" in result.stdout


@needs_real_mnist
def test_train_mnist_example_learns_in_one_epoch():
    result = _run(EXAMPLES / "train_mnist.py", "--epochs", "1", "--data-dir", SHARED_MNIST)
    assert result.returncode == 0, result.stderr
    accuracy = float(result.stdout.split("test accuracy")[-1])
    assert accuracy > 0.9


@needs_real_mnist
def test_residual_example_learns_with_loss_backward():
    result = _run(EXAMPLES / "residual_mnist.py", "--train-size", "6000", "--test-size", "2000",
                  "--data-dir", SHARED_MNIST)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split("test accuracy")[-1]) > 0.6


@needs_real_mnist
@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_residual_example_trains_the_same_on_other_backends(backend):
    pytest.importorskip(backend)
    runs = {}
    for name in ("numpy", backend):
        result = _run(EXAMPLES / "residual_mnist.py", "--backend", name, "--train-size", "320", "--test-size", "250",
                      "--data-dir", SHARED_MNIST)
        assert result.returncode == 0, result.stderr
        runs[name] = [float(number) for number in re.findall(r"(?:loss|accuracy) ([0-9.]+)", result.stdout)]
        assert len(runs[name]) == 3, result.stdout
    # Same seed, same batches, float32 on both sides: the printed losses and accuracy agree.
    assert runs[backend] == pytest.approx(runs["numpy"], abs=2e-3), runs


def test_the_custom_function_test_file_passes_as_a_user_would_run_it():
    result = _run("-m", "pytest", "-q", "-p", "no:cacheprovider", EXAMPLES / "test_custom_swish.py")
    assert result.returncode == 0, result.stdout + result.stderr
    assert " passed" in result.stdout and "failed" not in result.stdout
