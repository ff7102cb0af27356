"""MNIST: find, download, check and load the four standard IDX files.

The loader reads ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each gzipped or
not) from one folder: the ``root`` argument, else ``$PORTACNN_DATA``, else
``~/.cache/portacnn/mnist``. Missing files are downloaded from ``MIRRORS``.
Every file is checked (gzip, magic number, sizes, md5) before it is trusted,
and every problem surfaces as one :class:`~portacnn.errors.DatasetError` that
names the file, says what is wrong and how to fix it.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import sys
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from .errors import DatasetError

try:  # tqdm only draws the download progress bar; everything works without it
    from tqdm import tqdm as _tqdm
except ImportError:  # pragma: no cover - depends on the environment
    _tqdm = None

__all__ = ["MIRRORS", "MNIST_FILES", "load_mnist", "mnist_root", "find_shared_mnist"]

#: Base URLs tried in order for a missing ``<name>.gz``; the next is tried on any failure.
MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
]

#: Expected md5 of each file name the loader reads. A name mapped to None (or
#: absent) is not md5-checked, which lets tests use small generated files.
MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}

#: Seconds a network connect or read may stall before the mirror counts as failed.
TIMEOUT = 30.0

_SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_DTYPES = ("uint8", "float32", "float64")
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049
_SIDE = 28
_FIX = (
    "Delete it and run again to re-download it, or point --data-dir / "
    "PORTACNN_DATA (or root=) at a folder with good MNIST files."
)


def mnist_root(root: str | os.PathLike | None = None) -> Path:
    """Return the MNIST folder: ``root`` if given, else ``$PORTACNN_DATA``, else ``~/.cache/portacnn/mnist``."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get("PORTACNN_DATA")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "portacnn" / "mnist"


def find_shared_mnist() -> Path | None:
    """Return ``../shared/data/mnist`` beside the repository root if that folder exists, else None."""
    repo_root = Path(__file__).resolve().parents[1]
    folder = repo_root.parent / "shared" / "data" / "mnist"
    return folder if folder.is_dir() else None


def load_mnist(split="train", root=None, download=True, *, dtype="uint8", verify_md5=True):
    """Load one MNIST split as host NumPy arrays ``(images, labels)``.

    ``images`` has shape (N, 1, 28, 28): raw uint8 for ``dtype="uint8"``, or
    scaled to [0, 1] for ``"float32"`` / ``"float64"``. ``labels`` is int64 of
    shape (N,). ``split`` is ``"train"`` (60,000) or ``"test"`` (10,000).
    Missing files are downloaded when ``download`` is true; ``verify_md5=False``
    skips the md5 check of local files (the structure is still checked).
    """
    if split not in _SPLITS:
        raise DatasetError(f"unknown MNIST split {split!r}; valid values are 'train' and 'test'")
    try:
        dtype_name = np.dtype(dtype).name
    except TypeError:
        dtype_name = None
    if dtype_name not in _DTYPES:
        raise DatasetError(f"unsupported dtype {dtype!r} for MNIST images; valid values are {', '.join(_DTYPES)}")

    folder = mnist_root(root)
    names = _SPLITS[split]
    missing = [name for name in names if _find(folder, name) is None]
    if missing and not download:
        raise DatasetError(_missing_message(folder, missing, "download=False"))
    if missing:
        _download_all(folder, missing)

    images_path, labels_path = (_find(folder, name) for name in names)
    images = _read_idx(images_path, _IMAGES_MAGIC, verify_md5)
    labels = _read_idx(labels_path, _LABELS_MAGIC, verify_md5)
    if len(images) != len(labels):
        raise DatasetError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels. {_FIX}"
        )
    if labels.size and labels.max() > 9:
        raise DatasetError(f"{labels_path}: label {labels.max()} is outside 0-9. {_FIX}")

    images = images.reshape(-1, 1, _SIDE, _SIDE)
    if dtype_name == "uint8":
        images = images.copy()  # frombuffer views are read-only; hand out a writable array
    else:
        images = images.astype(dtype_name)
        images /= 255
    return images, labels.astype(np.int64)


def _find(folder: Path, name: str) -> Path | None:
    """Return ``folder/name.gz`` or ``folder/name`` (in that order of preference), whichever exists."""
    for candidate in (folder / f"{name}.gz", folder / name):
        try:
            if candidate.exists():
                return candidate
        except OSError as exc:  # e.g. no permission to look inside the folder
            raise DatasetError(
                f"cannot look for {candidate.name} in {folder}: {exc.strerror or exc}. Check the folder's "
                "permissions, or point root= / --data-dir / PORTACNN_DATA at a readable folder.") from exc
    return None


def _read_idx(path: Path, magic: int, verify_md5: bool) -> np.ndarray:
    """Read and check one IDX file; return its uint8 payload as (N,) labels or (N, 28, 28) images."""
    try:
        data = path.read_bytes()
    except OSError as exc:  # permissions, a directory in the file's place, I/O errors
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}. {_FIX}") from exc
    raw = data
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise DatasetError(f"{path} is not a gzip file or the gzip data is corrupt ({exc}). {_FIX}") from exc

    header = 16 if magic == _IMAGES_MAGIC else 8
    if len(raw) < header:
        raise DatasetError(f"{path} is truncated: expected at least a {header}-byte header, got {len(raw)} bytes. {_FIX}")
    fields = np.frombuffer(raw, dtype=">u4", count=header // 4)
    if fields[0] != magic:
        raise DatasetError(f"{path} has bad magic number {fields[0]}, expected {magic}. {_FIX}")
    count = int(fields[1])
    if magic == _IMAGES_MAGIC and (fields[2], fields[3]) != (_SIDE, _SIDE):
        raise DatasetError(f"{path} holds {fields[2]}x{fields[3]} images, expected {_SIDE}x{_SIDE}. {_FIX}")
    item = _SIDE * _SIDE if magic == _IMAGES_MAGIC else 1
    expected = header + count * item
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "too long"
        raise DatasetError(f"{path} is {what}: expected {expected} bytes, got {len(raw)}. {_FIX}")

    # Structure first, md5 last: "truncated" or "bad magic" says more than a bare md5 mismatch.
    if verify_md5:
        _check_md5(path, data, raw)
    payload = np.frombuffer(raw, dtype=np.uint8, offset=header)
    return payload.reshape(count, _SIDE, _SIDE) if magic == _IMAGES_MAGIC else payload


def _check_md5(path: Path, data: bytes, raw: bytes) -> None:
    """Raise DatasetError unless ``data`` (or, for a .gz, its content ``raw``) has the known md5."""
    expected = MNIST_FILES.get(path.name)
    if expected is None:
        return
    got = _md5(data)
    if got == expected:
        return
    if path.suffix == ".gz":
        # A re-compressed .gz differs byte-wise but is fine if its content matches the raw file's md5.
        raw_expected = MNIST_FILES.get(path.name[:-3])
        if raw_expected is not None and _md5(raw) == raw_expected:
            return
    raise DatasetError(f"{path} fails its md5 check: expected {expected}, got {got}. {_FIX}")


def _md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _missing_message(folder: Path, missing: list[str], why: str) -> str:
    files = ", ".join(f"{name}(.gz)" for name in missing)
    if folder.is_file():
        why += f"; {folder} is a file, not a folder"
    return (
        f"MNIST files missing from {folder} ({why}): {files}. Put the four standard IDX files "
        "(gzipped or not) in that folder, or point root= / --data-dir / the PORTACNN_DATA "
        "environment variable at a folder that has them."
    )


def _download_all(folder: Path, missing: list[str]) -> None:
    """Download ``<name>.gz`` for each missing name into ``folder``, trying each mirror in turn."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cannot create the MNIST folder {folder}: {exc.strerror or exc}") from exc
    for name in missing:
        filename = f"{name}.gz"
        failures = []
        for base in MIRRORS:
            url = base if base.endswith("/") else base + "/"
            url += filename
            try:
                _download(url, folder / filename, MNIST_FILES.get(filename))
                break
            except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError, timeouts, bad data
                failures.append(f"  {url}: {exc}")
        else:
            tried = "\n".join(failures) or "  (MIRRORS is empty)"
            raise DatasetError(_missing_message(folder, missing, "download failed") + f"\nMirrors tried:\n{tried}")


def _download(url: str, target: Path, expected_md5: str | None) -> None:
    """Stream ``url`` into ``target`` through ``atomic_write``, checking length and md5 before the
    file takes its name: a partial or bad download never sits where the loader would read it."""
    from .files import atomic_write

    def stream(handle):
        digest, got = hashlib.md5(usedforsecurity=False), 0
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with _progress(total, target.name) as bar:
                while chunk := response.read(1 << 16):
                    handle.write(chunk)
                    digest.update(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        # http.client does not raise when the server closes early, so compare lengths ourselves.
        if total is not None and got != total:
            raise DatasetError(f"truncated download: expected {total} bytes, got {got}")
        if expected_md5 is not None and digest.hexdigest() != expected_md5:
            raise DatasetError(f"md5 mismatch: expected {expected_md5}, got {digest.hexdigest()}")

    atomic_write(target, stream)


class _NoBar:
    """Stand-in for a tqdm bar when tqdm is not installed."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        pass


def _progress(total: int | None, name: str):
    """Return a byte progress bar (context manager), quiet unless stderr is a terminal."""
    if _tqdm is None:
        return _NoBar()
    quiet = not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    return _tqdm(total=total, desc=name, unit="B", unit_scale=True, unit_divisor=1024, leave=False, disable=quiet)
