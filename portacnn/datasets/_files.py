"""Finding, downloading, checking and caching dataset files: the part every dataset shares.

Nothing here knows a dataset's format. A loader asks :func:`find` for a file,
:func:`allow_download` whether (and where) it may fetch a missing one,
:func:`fetch` to try each mirror in turn, and :func:`download` streams one
URL into place through :func:`portacnn.files.atomic_write`, so a partial or
bad download never sits where a loader would read it.

The module-level settings a user or a test may replace (mirrors, md5 tables,
``TIMEOUT``, the tqdm class) live in :mod:`portacnn.datasets` itself and are
passed in at call time; that is what keeps ``monkeypatch.setattr(datasets,
"MIRRORS", ...)`` working.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import sys
import urllib.request
from pathlib import Path

import numpy as np

from ..errors import DatasetError

#: The image dtypes a loader hands out: raw bytes, or scaled to [0, 1].
DTYPES = ("uint8", "float32", "float64")

#: The splits every dataset has.
SPLITS = ("train", "test")


def cache_folder(name: str) -> Path:
    """``~/.cache/portacnn/<name>``: where a dataset lives when no folder is given."""
    return Path.home() / ".cache" / "portacnn" / name


def check_split(split, title: str) -> None:
    if split not in SPLITS:
        raise DatasetError(f"unknown {title} split {split!r}; valid values are 'train' and 'test'")


def check_dtype(dtype, title: str) -> str:
    """Return the dtype's name if it is one of ``DTYPES``, else raise DatasetError."""
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise DatasetError(f"unsupported dtype {dtype!r} for {title} images; valid values are {', '.join(DTYPES)}")
    return name


def as_dtype(images: np.ndarray, dtype_name: str) -> np.ndarray:
    """uint8 images as a writable array of ``dtype_name``: raw for uint8, else scaled to [0, 1]."""
    if dtype_name == "uint8":
        return images.copy() if not images.flags.writeable else images  # frombuffer views are read-only
    scaled = images.astype(dtype_name)
    scaled /= 255
    return scaled


def find(folder: Path, candidates, hint: str) -> Path | None:
    """Return the first of ``folder/candidate`` that exists, else None.

    ``hint`` names the ways to pick another folder (``"root= / --data-dir"``).
    """
    for candidate in (folder / name for name in candidates):
        try:
            if candidate.exists():
                return candidate
        except OSError as exc:  # e.g. no permission to look inside the folder
            raise DatasetError(
                f"cannot look for {candidate.name} in {folder}: {exc.strerror or exc}. Check the folder's "
                f"permissions, or point {hint} at a readable folder.") from exc
    return None


def read(path: Path, fix: str) -> bytes:
    """The bytes of ``path``; any OS error becomes a DatasetError ending in ``fix``."""
    try:
        return path.read_bytes()
    except OSError as exc:  # permissions, a directory in the file's place, I/O errors
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}. {fix}") from exc


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def allow_download(folder: Path, *, explicit: bool, download: bool | None, title: str, missing_message) -> None:
    """Raise unless missing files may be downloaded into ``folder``; create the folder when they may.

    ``download=False`` never downloads; ``True`` creates the folder and
    downloads. ``None`` (the loaders' default) downloads into the default
    cache folder, but into a folder the user named (``explicit``) only if
    it already exists: a mistyped ``--data-dir`` must not be created and
    filled silently. ``missing_message(why)`` says which files are missing.
    """
    if download is not None:
        download = bool(download)
    if download is False:
        raise DatasetError(missing_message("download=False"))
    if download is None and explicit and not folder.is_dir():
        if folder.exists():  # a file, which missing_message points out
            raise DatasetError(missing_message("nothing was downloaded"))
        raise DatasetError(
            missing_message("the folder does not exist - a typo? - so nothing was downloaded")
            + f" Or pass download=True (--download) to create that folder and download {title} into it.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DatasetError(f"cannot create the {title} folder {folder}: {exc.strerror or exc}") from exc


def fetch(folder: Path, filenames, mirrors, md5s: dict, download_one, missing_message, mirrors_name: str) -> None:
    """Download each of ``filenames`` into ``folder``, trying each mirror in turn.

    ``download_one(url, target, expected_md5)`` does one attempt (raising on
    failure); when every mirror fails for a file, the DatasetError lists
    each URL tried and why it failed (``mirrors_name`` names the list when it is empty).
    """
    for filename in filenames:
        failures = []
        for base in mirrors:
            url = (base if base.endswith("/") else base + "/") + filename
            try:
                download_one(url, folder / filename, md5s.get(filename))
                break
            except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError, timeouts, bad data
                failures.append(f"  {url}: {exc}")
        else:
            tried = "\n".join(failures) or f"  ({mirrors_name} is empty)"
            raise DatasetError(missing_message("download failed") + f"\nMirrors tried:\n{tried}")


def download(url: str, target: Path, expected_md5: str | None, *, timeout: float, tqdm=None) -> None:
    """Stream ``url`` into ``target`` through ``atomic_write``, checking length and md5 before the
    file takes its name. ``tqdm`` (the class, or None) draws a progress bar on a terminal."""
    from ..files import atomic_write

    def stream(handle):
        digest, got = hashlib.md5(usedforsecurity=False), 0
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            with progress(total, target.name, tqdm) as bar:
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


class NoBar:
    """Stand-in for a tqdm bar when tqdm is not installed."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n):
        pass


def progress(total: int | None, name: str, tqdm=None):
    """Return a byte progress bar (context manager), quiet unless stderr is a terminal."""
    if tqdm is None:
        return NoBar()
    quiet = not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty())
    return tqdm(total=total, desc=name, unit="B", unit_scale=True, unit_divisor=1024, leave=False, disable=quiet)


def env_folder(variable: str) -> Path | None:
    """The folder named by environment variable ``variable``, or None when it is unset or empty."""
    value = os.environ.get(variable)
    return Path(value).expanduser() if value else None
