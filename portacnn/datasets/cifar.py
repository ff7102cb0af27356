"""CIFAR-10 and CIFAR-100, read from their official *binary* archives.

``cifar-10-binary.tar.gz`` holds ``cifar-10-batches-bin/data_batch_1.bin`` ...
``data_batch_5.bin`` (train) and ``test_batch.bin``; ``cifar-100-binary.tar.gz``
holds ``cifar-100-binary/train.bin`` and ``test.bin``. Each ``.bin`` file is
a run of fixed-size records: the label byte(s) (CIFAR-100: ``<coarse><fine>``),
then 3072 pixel bytes, the 1024 red values of the 32x32 image row by row,
then the green, then the blue: already the channel-first (3, 32, 32) layout.

The records are read straight out of the tar archive in memory. Nothing is
extracted, so no member name can write outside the cache folder (no path
traversal), and nothing is unpickled: the pickled "python version" of CIFAR
is never used.
"""

from __future__ import annotations

import io
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from . import _files

CHANNELS, SIDE = 3, 32
PIXELS = CHANNELS * SIDE * SIDE


@dataclass(frozen=True)
class Layout:
    """Where one CIFAR variant keeps its records and what their label bytes mean."""

    archive: str  # the official archive's file name
    folder: str  # the folder inside the archive
    members: dict  # split -> the .bin files of that split, in order
    label_fields: tuple  # (name, number of classes) of each label byte, in record order

    @property
    def record_size(self) -> int:
        return len(self.label_fields) + PIXELS


CIFAR10 = Layout(
    archive="cifar-10-binary.tar.gz",
    folder="cifar-10-batches-bin",
    members={"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)},
    label_fields=(("label", 10),),
)
CIFAR100 = Layout(
    archive="cifar-100-binary.tar.gz",
    folder="cifar-100-binary",
    members={"train": ("train.bin",), "test": ("test.bin",)},
    label_fields=(("coarse", 20), ("fine", 100)),
)


def load_split(path: Path, layout: Layout, split: str, *, label_field: str, expected_md5: str | None, fix: str):
    """Read one split out of the archive at ``path``: uint8 images (N, 3, 32, 32) and int64 labels (N,).

    ``label_field`` picks the label byte (``"label"`` for CIFAR-10,
    ``"coarse"`` or ``"fine"`` for CIFAR-100). ``expected_md5`` (None: no
    check) is the archive's md5, checked after its structure so that a
    damaged archive is reported as what it is.
    """
    data = _files.read(path, fix)
    names = [f"{layout.folder}/{member}" for member in layout.members[split]]
    blobs = _read_members(path, data, names, fix)
    images, labels = [], []
    for name in names:
        member_images, member_labels = _parse_records(path, name, blobs[name], layout, label_field, fix)
        images.append(member_images)
        labels.append(member_labels)
    if expected_md5 is not None:
        got = _files.md5(data)
        if got != expected_md5:
            raise DatasetError(f"{path} fails its md5 check: expected {expected_md5}, got {got}. {fix}")
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def _read_members(path: Path, data: bytes, names: list[str], fix: str) -> dict:
    """The bytes of each regular-file member in ``names`` of the tar.gz ``data``."""
    wanted, found = set(names), {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
            for member in archive:  # one pass: a gzip stream is read front to back
                name = member.name.removeprefix("./")
                # Links are skipped: only a regular file's own bytes count as a record file.
                if name in wanted and member.isfile():
                    found[name] = archive.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DatasetError(f"{path} is not a tar.gz archive or it is corrupt ({exc}). {fix}") from exc
    missing = [name for name in names if name not in found]
    if missing:
        raise DatasetError(f"{path} has no {', '.join(missing)} (is it the official binary archive?). {fix}")
    return found


def _parse_records(path: Path, name: str, raw: bytes, layout: Layout, label_field: str, fix: str):
    size = layout.record_size
    if len(raw) % size:
        raise DatasetError(
            f"{path}: {name} is truncated or damaged: its {len(raw)} bytes are not a whole number of "
            f"{size}-byte records. {fix}")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, size)
    labels = None
    for column, (field, num_classes) in enumerate(layout.label_fields):
        values = records[:, column]
        if values.size and values.max() >= num_classes:
            raise DatasetError(
                f"{path}: {name} has {field} label {values.max()}, outside 0-{num_classes - 1}. {fix}")
        if field == label_field:
            labels = values
    images = records[:, len(layout.label_fields):].reshape(-1, CHANNELS, SIDE, SIDE)
    return images, labels
