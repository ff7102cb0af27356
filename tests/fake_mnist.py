"""Small MNIST-format IDX files for tests that must not depend on the real data."""

import struct
from pathlib import Path

import numpy as np

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def write_fake_mnist(folder: Path, n_train=120, n_test=40, seed=0) -> Path:
    """Uncompressed IDX files: noise plus a bright square whose position encodes the label."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        images = rng.integers(0, 40, (count, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            row, col = 3 + 2 * (label % 5), 4 + 10 * (label // 5)
            images[i, row:row + 8, col:col + 8] = 255
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, count, 28, 28) + images.tobytes())
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, count) + labels.tobytes())
    return folder


def offline_environment(monkeypatch, home: Path) -> None:
    """No network, no real home, no backend or data env vars; generated (uncompressed) files skip their md5."""
    from portacnn import datasets

    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("PORTACNN_DATA", raising=False)
    monkeypatch.delenv("PORTACNN_BACKEND", raising=False)
    monkeypatch.setattr(datasets, "MIRRORS", [])
    # Real .gz files keep their md5 check.
    monkeypatch.setattr(datasets, "MNIST_FILES", {k: v for k, v in datasets.MNIST_FILES.items() if k.endswith(".gz")})
