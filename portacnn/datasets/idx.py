"""The MNIST family's file format: IDX files, as MNIST, Fashion-MNIST and KMNIST ship them.

A split is two files, ``<prefix>-images-idx3-ubyte`` (magic 2051, then the
count, rows and columns as big-endian uint32, then one byte per pixel) and
``<prefix>-labels-idx1-ubyte`` (magic 2049, the count, one byte per label),
each gzipped (``.gz``, preferred) or not. Every file is checked (gzip,
magic number, sizes, md5) before it is trusted; structure first, md5 last,
because "truncated" or "bad magic" says more than a bare md5 mismatch.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from . import _files

#: The two files of each split, without the ``.gz`` a downloaded copy has.
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
SIDE = 28


def candidates(name: str) -> tuple[str, str]:
    """The file names a split file may have on disk, preferred first."""
    return f"{name}.gz", name


def load_split(images_path: Path, labels_path: Path, *, md5s: dict | None, num_classes: int, fix: str):
    """Read and cross-check one split's two files: uint8 images (N, 1, 28, 28) and int64 labels (N,).

    ``md5s`` maps a file name to its expected md5 (None: no md5 check);
    ``fix`` ends every error message and says how to repair the file.
    """
    images = read_idx(images_path, IMAGES_MAGIC, md5s, fix)
    labels = read_idx(labels_path, LABELS_MAGIC, md5s, fix)
    if len(images) != len(labels):
        raise DatasetError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels. {fix}")
    if labels.size and labels.max() >= num_classes:
        raise DatasetError(f"{labels_path}: label {labels.max()} is outside 0-{num_classes - 1}. {fix}")
    return images.reshape(-1, 1, SIDE, SIDE), labels.astype(np.int64)


def read_idx(path: Path, magic: int, md5s: dict | None, fix: str) -> np.ndarray:
    """Read and check one IDX file; return its uint8 payload as (N,) labels or (N, 28, 28) images."""
    data = _files.read(path, fix)
    raw = data
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
            raise DatasetError(f"{path} is not a gzip file or the gzip data is corrupt ({exc}). {fix}") from exc

    header = 16 if magic == IMAGES_MAGIC else 8
    if len(raw) < header:
        raise DatasetError(
            f"{path} is truncated: expected at least a {header}-byte header, got {len(raw)} bytes. {fix}")
    fields = np.frombuffer(raw, dtype=">u4", count=header // 4)
    if fields[0] != magic:
        raise DatasetError(f"{path} has bad magic number {fields[0]}, expected {magic}. {fix}")
    count = int(fields[1])
    if magic == IMAGES_MAGIC and (fields[2], fields[3]) != (SIDE, SIDE):
        raise DatasetError(f"{path} holds {fields[2]}x{fields[3]} images, expected {SIDE}x{SIDE}. {fix}")
    item = SIDE * SIDE if magic == IMAGES_MAGIC else 1
    expected = header + count * item
    if len(raw) != expected:
        what = "truncated" if len(raw) < expected else "too long"
        raise DatasetError(f"{path} is {what}: expected {expected} bytes, got {len(raw)}. {fix}")

    if md5s:
        check_md5(path, data, raw, md5s, fix)
    payload = np.frombuffer(raw, dtype=np.uint8, offset=header)
    return payload.reshape(count, SIDE, SIDE) if magic == IMAGES_MAGIC else payload


def check_md5(path: Path, data: bytes, raw: bytes, md5s: dict, fix: str) -> None:
    """Raise DatasetError unless ``data`` (or, for a .gz, its content ``raw``) has the md5 ``md5s`` lists.

    A file name absent from ``md5s`` (or mapped to None) is not checked.
    """
    expected = md5s.get(path.name)
    if expected is None:
        return
    got = _files.md5(data)
    if got == expected:
        return
    if path.suffix == ".gz":
        # A re-compressed .gz differs byte-wise but is fine if its content matches the raw file's md5.
        raw_expected = md5s.get(path.name[:-3])
        if raw_expected is not None and _files.md5(raw) == raw_expected:
            return
    raise DatasetError(f"{path} fails its md5 check: expected {expected}, got {got}. {fix}")
