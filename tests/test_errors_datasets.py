"""Bad dataset files and folders: each a clear DatasetError; a failed download leaves no partial file.

Covered in ``tests/test_datasets.py`` (not repeated here): bad magic numbers,
truncated / too long / wrong-size IDX files, bad or truncated gzip, labels out
of 0-9, image/label count mismatch, md5 mismatch, a folder without the files
(with and without download), a directory in a file's place, an unreadable file
(``chmod 0``; skipped when running as root), and downloads that 404, time out,
drop the connection halfway or deliver bad data on every mirror (nothing left
behind). ``tests/test_cli.py::test_predict_images_and_report_broken_ones``
covers ``portacnn predict`` with an unreadable and a missing image among good
ones (the good ones are still predicted, exit status non-zero) and a wrong-size
RGB image (resized to 28x28, as documented).

Here: permission errors that also show up as root (simulated), a root that
is a file, a folder that cannot be created, a download interrupted by Ctrl-C,
and property-based damage to md5-registered files.
"""

import gzip
import hashlib
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from support import idx_images, idx_labels, offline_environment

from portacnn import datasets
from portacnn.datasets import load_mnist
from portacnn.errors import DatasetError

TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    offline_environment(monkeypatch, tmp_path / "home", md5s="none")


def split_bytes(n=5, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    return {
        TRAIN[0]: idx_images(images),
        TRAIN[1]: idx_labels(labels),
    }


def write_split(folder: Path, gz=False) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, raw in split_bytes().items():
        filename, data = (f"{name}.gz", gzip.compress(raw, mtime=0)) if gz else (name, raw)
        (folder / filename).write_bytes(data)
        written[filename] = data
    return written


def test_unreadable_file_is_a_clear_error_even_as_root(tmp_path, monkeypatch):
    write_split(tmp_path)
    locked = tmp_path / TRAIN[1]
    real_read_bytes = Path.read_bytes

    def read_bytes(self):
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(DatasetError) as info:
        load_mnist("train", root=tmp_path, download=False)
    message = str(info.value)
    assert f"cannot read {locked}" in message and "Permission denied" in message and "PORTACNN_DATA" in message


def test_folder_that_cannot_be_searched(tmp_path, monkeypatch):
    write_split(tmp_path)
    real_exists = Path.exists

    def exists(self, *args, **kwargs):
        if self.parent == tmp_path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_exists(self, *args, **kwargs)

    monkeypatch.setattr(Path, "exists", exists)
    with pytest.raises(DatasetError) as info:
        load_mnist("train", root=tmp_path, download=False)
    message = str(info.value)
    assert f"in {tmp_path}" in message and "Permission denied" in message and "permissions" in message


def test_root_that_is_a_file(tmp_path):
    not_a_folder = tmp_path / "mnist.tar"
    not_a_folder.write_bytes(b"not a folder")
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        load_mnist("train", root=not_a_folder, download=False)
    with pytest.raises(DatasetError, match="cannot create the MNIST folder"):
        load_mnist("train", root=not_a_folder)  # download=True: it would have to create the folder


def test_folder_that_cannot_be_created(tmp_path, monkeypatch):
    def mkdir(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "mkdir", mkdir)
    with pytest.raises(DatasetError, match=r"cannot create the MNIST folder .*Permission denied"):
        load_mnist("train", root=tmp_path / "new")


class _Response:
    """A fake HTTP response: a few chunks of a declared body, then Ctrl-C."""

    headers = {"Content-Length": str(1 << 20)}

    def __init__(self):
        self.chunks = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read(self, size):
        self.chunks += 1
        if self.chunks > 3:
            raise KeyboardInterrupt
        return b"\x1f\x8b" + bytes(size - 2)


def test_download_interrupted_by_ctrl_c_leaves_no_partial_file(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "MIRRORS", ["http://mirror.invalid/"])
    monkeypatch.setattr(datasets.urllib.request, "urlopen", lambda url, timeout: _Response())
    folder = tmp_path / "dl"
    with pytest.raises(KeyboardInterrupt):
        load_mnist("train", root=folder)
    assert os.listdir(folder) == []  # neither the temp file nor the target


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(gz=st.booleans(), which=st.sampled_from(TRAIN), truncate=st.booleans(), data=st.data())
def test_any_damage_to_a_file_with_a_known_md5_is_a_dataset_error(tmp_path, monkeypatch, gz, which, truncate,
                                                                   data):
    folder = Path(tempfile.mkdtemp(dir=tmp_path))  # fresh per example: no files left from an earlier one
    written = write_split(folder, gz=gz)
    monkeypatch.setattr(datasets, "MNIST_FILES", {name: hashlib.md5(blob).hexdigest()
                                                  for name, blob in written.items()})
    filename = f"{which}.gz" if gz else which
    damaged = bytearray(written[filename])
    if truncate:
        damaged = damaged[:data.draw(st.integers(0, len(damaged) - 1), label="length")]
    else:
        damaged[data.draw(st.integers(0, len(damaged) - 1), label="offset")] ^= data.draw(st.integers(1, 255))
    (folder / filename).write_bytes(bytes(damaged))
    with pytest.raises(DatasetError) as info:
        load_mnist("train", root=folder, download=False)
    assert str(folder / filename) in str(info.value)
