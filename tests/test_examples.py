"""The examples keep working as the library changes."""

import subprocess
import sys
from pathlib import Path

import pytest
from fake_mnist import SHARED_MNIST

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _run(*argv, timeout=300):
    return subprocess.run([sys.executable, *map(str, argv)], capture_output=True, text=True, timeout=timeout)


def test_same_model_any_backend_reports_agreement():
    result = _run(EXAMPLES / "same_model_any_backend.py")
    assert result.returncode == 0, result.stderr
    assert "all backends agree with numpy" in result.stdout


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"real MNIST not found at {SHARED_MNIST}")
def test_train_mnist_example_learns_in_one_epoch():
    result = _run(EXAMPLES / "train_mnist.py", "--epochs", "1", "--data-dir", SHARED_MNIST)
    assert result.returncode == 0, result.stderr
    accuracy = float(result.stdout.split("test accuracy")[-1])
    assert accuracy > 0.9
