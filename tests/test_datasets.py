"""Tests for portacnn.datasets: real MNIST (if present), generated IDX files, and downloads.

Nothing here touches the network: downloads go to a local http.server.
"""

import gzip
import hashlib
import os
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from support import SHARED_MNIST, idx_images, idx_labels, needs_real_mnist, offline_environment

from portacnn import datasets
from portacnn.datasets import find_shared_mnist, load_mnist, mnist_root
from portacnn.errors import DatasetError

TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Keep every test off the real home, the real PORTACNN_DATA and the network; md5s as shipped."""
    offline_environment(monkeypatch, tmp_path / "home", md5s="all")
    monkeypatch.setattr(datasets, "TIMEOUT", 5.0)


# ---------------------------------------------------------------- helpers


def make_split(n, seed=0):
    """Random images/labels and their IDX bytes: {name: raw bytes}, images, labels."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    return images, labels, idx_images(images), idx_labels(labels)


def write_split(folder, names=TRAIN, n=7, gz=True, seed=0):
    """Write one generated split into folder; return (images, labels, {filename: bytes written})."""
    images, labels, img_bytes, lbl_bytes = make_split(n, seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, raw in zip(names, (img_bytes, lbl_bytes)):
        filename, data = (f"{name}.gz", gzip.compress(raw, mtime=0)) if gz else (name, raw)
        (folder / filename).write_bytes(data)
        written[filename] = data
    return images, labels, written


def md5(data):
    return hashlib.md5(data).hexdigest()


@pytest.fixture
def no_md5(monkeypatch):
    """Relax md5 checking so generated files load."""
    monkeypatch.setattr(datasets, "MNIST_FILES", {})


# ---------------------------------------------------------------- real MNIST


@needs_real_mnist
@pytest.mark.parametrize("split, n", [("train", 60_000), ("test", 10_000)])
def test_real_mnist_loads(split, n):
    images, labels = load_mnist(split, root=SHARED_MNIST, download=False)  # md5s checked by default
    assert images.shape == (n, 1, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.int64
    assert labels.min() == 0 and labels.max() == 9
    assert set(np.unique(labels)) == set(range(10))
    assert images.max() == 255 and images.min() == 0


@needs_real_mnist
def test_real_mnist_float32_scaling_and_env(monkeypatch):
    monkeypatch.setenv("PORTACNN_DATA", str(SHARED_MNIST))
    images, labels = load_mnist("test", download=False, dtype="float32")
    raw, _ = load_mnist("test", download=False)
    assert images.dtype == np.float32 and images.shape == (10_000, 1, 28, 28)
    assert 0.0 <= images.min() and images.max() == 1.0
    np.testing.assert_allclose(images, raw / 255.0, rtol=1e-6)
    assert labels[:5].tolist() == [7, 2, 1, 0, 4]


@needs_real_mnist
def test_find_shared_mnist():
    assert find_shared_mnist() == SHARED_MNIST


# ---------------------------------------------------------------- root resolution and arguments


def test_mnist_root_order(tmp_path, monkeypatch):
    assert mnist_root() == tmp_path / "home" / ".cache" / "portacnn" / "mnist"
    monkeypatch.setenv("PORTACNN_DATA", str(tmp_path / "env"))
    assert mnist_root() == tmp_path / "env"
    assert mnist_root(tmp_path / "arg") == tmp_path / "arg"
    assert mnist_root(str(tmp_path / "arg")) == tmp_path / "arg"


def test_bad_split_and_dtype(tmp_path):
    with pytest.raises(DatasetError, match="'train' and 'test'"):
        load_mnist("validation", root=tmp_path)
    with pytest.raises(DatasetError, match="float32"):
        load_mnist("train", root=tmp_path, dtype="int32")
    with pytest.raises(ValueError):  # DatasetError is a ValueError
        load_mnist("Train", root=tmp_path)


def test_missing_folder_without_download(tmp_path):
    folder = tmp_path / "nowhere"
    with pytest.raises(DatasetError) as info:
        load_mnist("train", root=folder, download=False)
    message = str(info.value)
    assert str(folder) in message
    assert "train-images-idx3-ubyte" in message and "train-labels-idx1-ubyte" in message
    assert "PORTACNN_DATA" in message and "--data-dir" in message
    assert not folder.exists()  # download=False creates nothing


def test_default_folder_is_under_home(tmp_path):
    with pytest.raises(DatasetError, match=str(tmp_path / "home" / ".cache" / "portacnn" / "mnist")):
        load_mnist("test", download=False)


# ---------------------------------------------------------------- generated IDX files


@pytest.mark.parametrize("gz", [True, False])
@pytest.mark.parametrize("split, names", [("train", TRAIN), ("test", TEST)])
def test_generated_files_load(tmp_path, no_md5, gz, split, names):
    images, labels, _ = write_split(tmp_path, names, n=9, gz=gz)
    got_images, got_labels = load_mnist(split, root=tmp_path, download=False)
    assert got_images.shape == (9, 1, 28, 28) and got_images.dtype == np.uint8
    assert got_images.flags.writeable
    np.testing.assert_array_equal(got_images[:, 0], images)
    assert got_labels.dtype == np.int64
    np.testing.assert_array_equal(got_labels, labels)

    as64, _ = load_mnist(split, root=tmp_path, download=False, dtype=np.float64)
    assert as64.dtype == np.float64
    np.testing.assert_allclose(as64[:, 0], images / 255.0)


def test_gz_preferred_over_raw(tmp_path, no_md5):
    write_split(tmp_path, gz=False, seed=1)
    images, _, _ = write_split(tmp_path, gz=True, seed=2)
    got, _ = load_mnist("train", root=tmp_path, download=False)
    np.testing.assert_array_equal(got[:, 0], images)


def test_md5_checked_when_known(tmp_path, monkeypatch):
    _, _, written = write_split(tmp_path)
    table = {name: md5(data) for name, data in written.items()}
    monkeypatch.setattr(datasets, "MNIST_FILES", table)
    load_mnist("train", root=tmp_path, download=False)  # right md5s pass

    table["train-images-idx3-ubyte.gz"] = "0" * 32
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz.*md5.*expected 0{32}, got [0-9a-f]{32}"):
        load_mnist("train", root=tmp_path, download=False)
    load_mnist("train", root=tmp_path, download=False, verify_md5=False)  # switchable per call


def test_regzipped_file_passes_on_content_md5(tmp_path, monkeypatch):
    _, _, img_raw, lbl_raw = make_split(5)
    monkeypatch.setattr(datasets, "MNIST_FILES", {
        "train-images-idx3-ubyte.gz": "0" * 32,  # the "original" .gz differs byte-wise ...
        "train-images-idx3-ubyte": md5(img_raw),  # ... but the content is right
    })
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(img_raw, compresslevel=1))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(lbl_raw)
    images, _ = load_mnist("train", root=tmp_path, download=False)
    assert images.shape == (5, 1, 28, 28)


def _corrupt(path, mutate):
    """Rewrite the raw IDX file at path with mutate(bytes)."""
    path.write_bytes(mutate(path.read_bytes()))


@pytest.mark.parametrize("mutate, needle", [
    (lambda b: struct.pack(">I", 2049) + b[4:], "bad magic number 2049, expected 2051"),
    (lambda b: b[:-10], "truncated: expected 5504 bytes, got 5494"),
    (lambda b: b[:10], "truncated: expected at least a 16-byte header"),
    (lambda b: b + b"\0", "too long"),
    (lambda b: b[:8] + struct.pack(">II", 14, 56) + b[16:], "14x56"),
])
def test_corrupt_images_file(tmp_path, no_md5, mutate, needle):
    write_split(tmp_path, gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    _corrupt(path, mutate)
    with pytest.raises(DatasetError) as info:
        load_mnist("train", root=tmp_path, download=False)
    message = str(info.value)
    assert str(path) in message and needle in message
    assert "PORTACNN_DATA" in message  # says how to fix it


def test_corrupt_labels_magic(tmp_path, no_md5):
    write_split(tmp_path, gz=False)
    path = tmp_path / "train-labels-idx1-ubyte"
    _corrupt(path, lambda b: struct.pack(">I", 2051) + b[4:])
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.*bad magic"):
        load_mnist("train", root=tmp_path, download=False)


def test_label_out_of_range(tmp_path, no_md5):
    write_split(tmp_path, gz=False)
    _corrupt(tmp_path / "train-labels-idx1-ubyte", lambda b: b[:-1] + b"\x0c")
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.*label 12"):
        load_mnist("train", root=tmp_path, download=False)


def test_count_mismatch(tmp_path, no_md5):
    write_split(tmp_path, n=7)
    _, labels, _, _ = make_split(6)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_labels(labels)))
    with pytest.raises(DatasetError, match="7 images.*train-labels-idx1-ubyte.gz holds 6 labels"):
        load_mnist("train", root=tmp_path, download=False)


@pytest.mark.parametrize("data", [b"this is not gzip at all", None], ids=["not-gzip", "truncated-gzip"])
def test_bad_gzip(tmp_path, no_md5, data):
    _, _, written = write_split(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(data if data is not None else written[path.name][:-20])
    with pytest.raises(DatasetError, match=r"train-images-idx3-ubyte\.gz is not a gzip file or the gzip data is corrupt"):
        load_mnist("train", root=tmp_path, download=False)


def test_directory_in_place_of_file(tmp_path, no_md5):
    write_split(tmp_path, gz=False)
    (tmp_path / "train-images-idx3-ubyte.gz").mkdir()  # preferred name, but not a file
    with pytest.raises(DatasetError, match=r"cannot read .*train-images-idx3-ubyte\.gz"):
        load_mnist("train", root=tmp_path, download=False)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads any file")
def test_unreadable_file(tmp_path, no_md5):
    write_split(tmp_path)
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.chmod(0)
    try:
        with pytest.raises(DatasetError, match=r"cannot read .*train-labels-idx1-ubyte\.gz"):
            load_mnist("train", root=tmp_path, download=False)
    finally:
        path.chmod(0o644)


def test_no_mirrors_and_download(tmp_path):
    folder = tmp_path / "dl"
    with pytest.raises(DatasetError, match="MIRRORS is empty") as info:
        load_mnist("train", root=folder)
    assert str(folder) in str(info.value)


# ---------------------------------------------------------------- downloads from a local server


class _Handler(BaseHTTPRequestHandler):
    """Serves server.routes: path -> (body, declared Content-Length); anything else is 404."""

    def do_GET(self):
        route = self.server.routes.get(self.path)
        if route is None:
            self.send_error(404)
            return
        body, declared = route
        self.send_response(200)
        self.send_header("Content-Length", str(declared))
        self.end_headers()
        self.wfile.write(body)  # fewer bytes than declared simulates a dropped connection

    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def server(monkeypatch):
    """A local HTTP server with two mirrors, /a/ and /b/; tests fill server.routes."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.routes = {}
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{httpd.server_address[1]}"
    monkeypatch.setattr(datasets, "MIRRORS", [f"{base}/a/", f"{base}/b"])  # with and without the slash
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


@pytest.fixture
def served_split(monkeypatch):
    """Generated gz train files with their md5s registered as the expected ones."""
    images, labels, img_raw, lbl_raw = make_split(11, seed=3)
    files = {
        "train-images-idx3-ubyte.gz": gzip.compress(img_raw, mtime=0),
        "train-labels-idx1-ubyte.gz": gzip.compress(lbl_raw, mtime=0),
    }
    monkeypatch.setattr(datasets, "MNIST_FILES", {name: md5(data) for name, data in files.items()})
    return images, labels, files


def _serve(server, mirror, files, mutate=lambda b: (b, len(b))):
    for name, data in files.items():
        server.routes[f"/{mirror}/{name}"] = mutate(data)


def test_download_success(tmp_path, server, served_split):
    images, labels, files = served_split
    _serve(server, "a", files)
    folder = tmp_path / "new" / "mnist"  # created on demand
    got_images, got_labels = load_mnist("train", root=folder)
    np.testing.assert_array_equal(got_images[:, 0], images)
    np.testing.assert_array_equal(got_labels, labels)
    assert sorted(os.listdir(folder)) == sorted(files)
    for name, data in files.items():
        assert (folder / name).read_bytes() == data

    server.routes.clear()  # second load uses the files on disk, no network
    load_mnist("train", root=folder)


def test_download_only_missing_file(tmp_path, server, served_split):
    _, _, files = served_split
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(files["train-labels-idx1-ubyte.gz"])
    _serve(server, "a", {"train-images-idx3-ubyte.gz": files["train-images-idx3-ubyte.gz"]})
    load_mnist("train", root=tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(files)


def test_download_uses_env_folder(tmp_path, monkeypatch, server, served_split):
    _serve(server, "a", served_split[2])
    monkeypatch.setenv("PORTACNN_DATA", str(tmp_path / "env"))
    load_mnist("train")
    assert sorted(os.listdir(tmp_path / "env")) == sorted(served_split[2])


def test_download_404_falls_through(tmp_path, server, served_split):
    _, labels, files = served_split
    _serve(server, "b", files)  # mirror a has nothing: 404
    _, got_labels = load_mnist("train", root=tmp_path)
    np.testing.assert_array_equal(got_labels, labels)
    assert sorted(os.listdir(tmp_path)) == sorted(files)


def test_download_bad_first_mirror_falls_through(tmp_path, server, served_split):
    _, _, files = served_split
    _serve(server, "a", files, lambda b: (b[:-1] + b"x", len(b)))  # corrupt: md5 mismatch
    _serve(server, "b", files)
    load_mnist("train", root=tmp_path)
    assert sorted(os.listdir(tmp_path)) == sorted(files)


def test_download_all_mirrors_bad_leaves_nothing(tmp_path, server, served_split):
    _, _, files = served_split
    _serve(server, "a", files, lambda b: (b[:-1] + b"x", len(b)))  # corrupt: md5 mismatch
    _serve(server, "b", files, lambda b: (b[: len(b) // 2], len(b)))  # connection drops halfway
    folder = tmp_path / "dl"
    with pytest.raises(DatasetError) as info:
        load_mnist("train", root=folder)
    message = str(info.value)
    assert "md5 mismatch" in message and "truncated download" in message
    assert str(folder) in message and "train-images-idx3-ubyte" in message and "PORTACNN_DATA" in message
    assert os.listdir(folder) == []  # no temp file, no target file


def test_download_honestly_short_file_rejected(tmp_path, server, served_split):
    _, _, files = served_split
    _serve(server, "a", files, lambda b: (b[: len(b) // 2], len(b) // 2))  # short, but says so
    folder = tmp_path / "dl"
    with pytest.raises(DatasetError, match="md5 mismatch"):
        load_mnist("train", root=folder)
    assert os.listdir(folder) == []


def test_download_all_404(tmp_path, server, served_split):
    with pytest.raises(DatasetError, match="404") as info:
        load_mnist("train", root=tmp_path)
    assert "/a/train-images-idx3-ubyte.gz" in str(info.value) and "/b/train-images-idx3-ubyte.gz" in str(info.value)
    assert os.listdir(tmp_path) == []


def test_download_timeout(tmp_path, monkeypatch, server, served_split):
    stall, server_gave_up = threading.Event(), threading.Event()

    class Slow(_Handler):
        def do_GET(self):
            if not stall.wait(5):  # never answers within the client's timeout
                server_gave_up.set()  # ... unless the client waited the whole 5 s

    server.RequestHandlerClass = Slow
    monkeypatch.setattr(datasets, "TIMEOUT", 0.3)
    try:
        with pytest.raises(DatasetError, match="timed out"):
            load_mnist("train", root=tmp_path)
    finally:
        stall.set()
    assert not server_gave_up.is_set(), "the client did not time out on its own"
    assert os.listdir(tmp_path) == []


def test_download_without_tqdm(tmp_path, monkeypatch, server, served_split):
    monkeypatch.setattr(datasets, "_tqdm", None)
    _serve(server, "a", served_split[2])
    load_mnist("train", root=tmp_path)
