"""Helpers shared by the test files (one home instead of a copy in each).

* MNIST without the network: ``SHARED_MNIST``, ``needs_real_mnist``,
  ``idx_images`` / ``idx_labels``, ``write_fake_mnist``, ``offline_datasets``
  and ``offline_environment``.
* Checkpoints: ``rewrite_checkpoint`` edits a saved ``.npz`` in place.
* Training: ``capture_lenets`` keeps every LeNet that ``train()`` builds.
* Gradients: ``directional_check``, for the finite-difference checks that
  ``portacnn.testing.gradcheck`` cannot express (a functional backward given
  an explicit ``grad_out``, or a model too large to check entry by entry);
  everything else uses ``gradcheck``.
* The PyTorch oracle: ``t64`` and ``torch_forward_backward``.

Backend cases, comparisons against NumPy float64 and gradient checks of
the tape come from the library's own kit: ``portacnn.testing`` and its
pytest plugin (``backend``, ``case``, ``xp``; see conftest.py).

``tests/distributed_worker.py`` imports this module too (it runs as a
script, so ``tests/`` is on its path).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

import portacnn
from portacnn import functional as F

# ---------------------------------------------------------------- MNIST

#: The real MNIST files, where this checkout sits next to a ``shared/data/mnist`` folder.
SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"

#: Skip a test that needs the real MNIST files when they are not there.
needs_real_mnist = pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason=f"real MNIST not found at {SHARED_MNIST}")


def idx_images(images) -> bytes:
    """IDX3 bytes (magic 2051) for a (N, rows, cols) uint8 array."""
    n, rows, cols = images.shape
    return struct.pack(">IIII", 2051, n, rows, cols) + images.astype(np.uint8).tobytes()


def idx_labels(labels) -> bytes:
    """IDX1 bytes (magic 2049) for a (N,) uint8 array."""
    return struct.pack(">II", 2049, len(labels)) + labels.astype(np.uint8).tobytes()


def write_fake_mnist(folder: Path, n_train=120, n_test=40, seed=0) -> Path:
    """Uncompressed MNIST-format IDX files: noise plus a bright square whose position encodes the label."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, count in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        images = rng.integers(0, 40, (count, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            row, col = 3 + 2 * (label % 5), 4 + 10 * (label // 5)
            images[i, row:row + 8, col:col + 8] = 255
        (folder / f"{prefix}-images-idx3-ubyte").write_bytes(idx_images(images))
        (folder / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_labels(labels))
    return folder


#: The mirror lists and md5 tables of the datasets other than MNIST (whose are MIRRORS and MNIST_FILES).
_OTHER_MIRRORS = ("FASHION_MNIST_MIRRORS", "KMNIST_MIRRORS", "CIFAR10_MIRRORS", "CIFAR100_MIRRORS")
_OTHER_MD5S = ("FASHION_MNIST_FILES", "KMNIST_FILES", "CIFAR10_FILES", "CIFAR100_FILES")


def write_fake_cifar10(folder: Path, n_train=50, n_test=20, seed=0) -> Path:
    """A ``cifar-10-binary.tar.gz`` in the official layout (five train batches, one test batch), with few
    images: noise plus a bright square whose position encodes the label, in one colour channel per label."""
    import io
    import tarfile

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)

    def records(count):
        labels = rng.integers(0, 10, count).astype(np.uint8)
        images = rng.integers(0, 40, (count, 3, 32, 32)).astype(np.uint8)
        for i, label in enumerate(labels):
            row, col = 4 + 2 * (label % 5), 4 + 12 * (label // 5)
            images[i, label % 3, row:row + 10, col:col + 10] = 255
        return np.concatenate([labels[:, None], images.reshape(count, -1)], axis=1).tobytes()

    members = {f"data_batch_{i}.bin": records(n_train // 5 + (i <= n_train % 5)) for i in range(1, 6)}
    members["test_batch.bin"] = records(n_test)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-bin/{name}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    (folder / "cifar-10-binary.tar.gz").write_bytes(buffer.getvalue())
    return folder


def offline_datasets(md5s: str = "gz") -> dict:
    """The ``portacnn.datasets`` settings of an offline test: no mirrors (for any dataset), and the md5
    table ``md5s`` picks.

    ``"gz"``: only the ``.gz`` entries, so generated (uncompressed) IDX files
    load and real ``.gz`` files keep their md5 check, and no CIFAR archive
    md5 (a generated archive has the real archive's name); ``"none"``: no
    md5 checked, for any dataset; ``"all"``: every table as shipped.
    """
    from portacnn import datasets

    tables = {"all": lambda: dict(datasets.MNIST_FILES),
              "gz": lambda: {k: v for k, v in datasets.MNIST_FILES.items() if k.endswith(".gz")},
              "none": dict}
    if md5s not in tables:
        raise ValueError(f"md5s must be one of {sorted(tables)}, got {md5s!r}")
    settings = {"MIRRORS": [], "MNIST_FILES": tables[md5s]()}
    settings.update({name: [] for name in _OTHER_MIRRORS})
    if md5s == "none":
        settings.update({name: {} for name in _OTHER_MD5S})
    elif md5s == "gz":
        settings.update({name: {} for name in _OTHER_MD5S if name.startswith("CIFAR")})
    return settings


def offline_environment(monkeypatch, home: Path, *, md5s: str = "gz") -> None:
    """No network, no real home, no ``PORTACNN_DATA`` / ``PORTACNN_BACKEND``; md5s as in ``offline_datasets``."""
    from portacnn import datasets

    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("PORTACNN_DATA", raising=False)
    monkeypatch.delenv("PORTACNN_BACKEND", raising=False)
    for name, value in offline_datasets(md5s).items():
        monkeypatch.setattr(datasets, name, value)


# ---------------------------------------------------------------- checkpoints


def rewrite_checkpoint(path, change_arrays=None, change_metadata=None) -> None:
    """Rewrite the checkpoint ``.npz`` at ``path`` after editing its arrays and/or its JSON metadata.

    ``change_arrays(arrays)`` edits the dict of arrays (without the metadata
    entry) in place; ``change_metadata(metadata)`` edits the parsed metadata.
    """
    with np.load(path, allow_pickle=False) as archive:
        arrays = {name: archive[name] for name in archive.files}
    metadata = json.loads(arrays.pop("metadata").tobytes())
    if change_arrays:
        change_arrays(arrays)
    if change_metadata:
        change_metadata(metadata)
    arrays["metadata"] = np.frombuffer(json.dumps(metadata).encode(), dtype=np.uint8)
    np.savez(path, **arrays)


# ---------------------------------------------------------------- training


def capture_lenets(monkeypatch) -> list:
    """Patch the registered ``lenet`` architecture so every LeNet built from now on (by ``train()`` or
    ``build_model``, say) is also appended to the returned list. ``monkeypatch`` is anything with
    pytest's ``setattr(target, name, value)``."""
    from portacnn.models._registry import _REGISTRY

    models = []
    entry = _REGISTRY["lenet"]
    real_lenet = entry.factory

    def capturing_lenet(*args, **kwargs):
        models.append(real_lenet(*args, **kwargs))
        return models[-1]

    monkeypatch.setattr(entry, "factory", capturing_lenet)
    return models


# ---------------------------------------------------------------- gradients


def directional_check(forward, args, grads, weights, rng, *, h=1e-6, rtol=1e-6, atol=1e-8, name=""):
    """Claimed gradients against central finite differences along one random direction, in float64.

    ``grads`` maps an index ``i`` to the claimed gradient of
    ``<forward(*args), weights>`` with respect to ``args[i]``. For each, in
    order, a direction ``d`` is drawn from ``rng`` (standard normal, the
    shape of ``args[i]``) and the central difference
    ``(f(args[i] + h d) - f(args[i] - h d)) / 2h`` must equal ``<grad, d>``
    within ``max(rtol * |<grad, d>|, atol)`` (``pytest.approx``'s rule).

    Use ``portacnn.testing.gradcheck`` (every entry, through the tape) where it
    can express the check; this is for a functional backward given an explicit
    ``grad_out``, and for models too large to check entry by entry.
    """
    args = list(args)

    def objective(values):
        return float(np.sum(np.asarray(forward(*values)) * weights))

    for index, grad in grads.items():
        d = rng.standard_normal(np.shape(args[index]))
        plus, minus = list(args), list(args)
        plus[index], minus[index] = args[index] + h * d, args[index] - h * d
        numeric = (objective(plus) - objective(minus)) / (2 * h)
        exact = float(np.sum(np.asarray(grad) * d))
        tolerance = max(rtol * abs(exact), atol)
        assert abs(numeric - exact) <= tolerance, (
            f"{name} input {index}: finite difference {numeric!r} vs backward {exact!r} "
            f"(difference {abs(numeric - exact):.3e}, allowed {tolerance:.3e})")


# ---------------------------------------------------------------- the PyTorch oracle


def t64(a, grad=False):
    """A float64 torch tensor of ``a`` (a leaf that requires grad when ``grad``)."""
    import torch

    return torch.tensor(np.asarray(a), dtype=torch.float64, requires_grad=grad)


def torch_forward_backward(fn, arrays, g):
    """Run ``fn`` on float64 tensors made from ``arrays`` (None passes through); return
    (output, grads of <output, g> for each non-None array), as NumPy arrays."""
    import torch

    tensors = [None if a is None else t64(a, grad=True) for a in arrays]
    out = fn(*tensors)
    wrt = [t for t in tensors if t is not None]
    grads = torch.autograd.grad(out, wrt, grad_outputs=t64(g))
    return out.detach().numpy(), [gr.numpy() for gr in grads]


class Swish(portacnn.Function):
    """x * sigmoid(x) with its backward written by hand, as a user writes a custom Function."""

    def forward(self, x):
        self.x = x
        return x * F.sigmoid(x)

    def backward(self, grad):
        s = F.sigmoid(self.x)
        return grad * (s + self.x * s * (1.0 - s))
