"""Datasets: find, download, check, cache and load MNIST, Fashion-MNIST, KMNIST, CIFAR-10 and CIFAR-100.

``load_dataset(name, split)`` returns host NumPy arrays ``(images, labels)``:
images ``(N, C, H, W)`` (raw uint8, or float scaled to [0, 1]) and int64
labels ``(N,)``. ``dataset_info(name)`` says what a dataset is (classes,
channels, size, normalization statistics); ``DATASETS`` names them all;
:mod:`portacnn.datasets.transforms` augments and normalizes batches.

Where the files live: the ``root`` argument, else (MNIST only)
``$PORTACNN_DATA``, else ``~/.cache/portacnn/<name>``. Missing files are
downloaded from the dataset's official mirrors and md5-checked; with the
default ``download=None`` that happens in the default cache folder, and in
a folder you named only if it already exists (a mistyped ``--data-dir``
is an error, not a new folder full of downloads); ``download=True`` creates
the folder, ``download=False`` never downloads. Every problem surfaces as
one :class:`~portacnn.errors.DatasetError` that names the file or folder,
says what is wrong and how to fix it.

The code is split by concern: ``_files`` (find, download, verify, cache),
``idx`` (the MNIST family's IDX files), ``cifar`` (CIFAR's binary
archives), ``_catalog`` (``DatasetInfo``) and ``transforms``. The mirror
lists, md5 tables, ``TIMEOUT`` and ``_tqdm`` below are read each time a
loader runs, so replacing them here (``monkeypatch.setattr(datasets,
"MIRRORS", [...])``) takes effect.
"""

from __future__ import annotations

import os
import urllib.request  # noqa: F401 - the downloader calls urllib.request.urlopen; tests patch it through here
from pathlib import Path

from ..errors import DatasetError
from . import _files, cifar, idx, transforms
from ._catalog import CIFAR100_COARSE_CLASSES, DATASETS, DatasetInfo, canonical_name, dataset_info

try:  # tqdm only draws the download progress bar; everything works without it
    from tqdm import tqdm as _tqdm
except ImportError:  # pragma: no cover - depends on the environment
    _tqdm = None

__all__ = [
    "CIFAR10_FILES", "CIFAR10_MIRRORS", "CIFAR100_COARSE_CLASSES", "CIFAR100_FILES", "CIFAR100_MIRRORS", "DATASETS",
    "FASHION_MNIST_FILES", "FASHION_MNIST_MIRRORS", "KMNIST_FILES", "KMNIST_MIRRORS", "MIRRORS", "MNIST_FILES",
    "TIMEOUT", "DatasetInfo", "canonical_name", "dataset_info", "dataset_root", "find_shared_mnist", "load_cifar10", "load_cifar100",
    "load_dataset", "load_fashion_mnist", "load_kmnist", "load_mnist", "mnist_root", "transforms",
]

# ---------------------------------------------------------------- mirrors and md5s (replaceable)
# Each loader tries its mirrors in order (the next on any failure) and checks each file against its
# md5 table. A name mapped to None (or absent) is not md5-checked, which lets tests use small
# generated files. Sources: each dataset's own page, cross-checked against torchvision's tables.

#: MNIST: base URLs tried in order for a missing ``<name>.gz``.
MIRRORS = [
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
]

#: MNIST: expected md5 of each file name the loader reads (gzipped and raw).
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

#: Fashion-MNIST (https://github.com/zalandoresearch/fashion-mnist): Zalando's download host, then the
#: copy in their repository. Only the .gz md5s are published, so uncompressed files are checked for
#: structure only.
FASHION_MNIST_MIRRORS = [
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
]
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}

#: KMNIST (https://github.com/rois-codh/kmnist): ROIS-CODH's host over https, then over plain http
#: (the md5 check guards both).
KMNIST_MIRRORS = [
    "https://codh.rois.ac.jp/kmnist/dataset/kmnist/",
    "http://codh.rois.ac.jp/kmnist/dataset/kmnist/",
]
KMNIST_FILES = {
    "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
    "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
    "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
    "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134",
}

#: CIFAR-10 and CIFAR-100 (https://www.cs.toronto.edu/~kriz/cifar.html): the binary archives only.
CIFAR10_MIRRORS = ["https://www.cs.toronto.edu/~kriz/"]
CIFAR10_FILES = {"cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"}
CIFAR100_MIRRORS = ["https://www.cs.toronto.edu/~kriz/"]
CIFAR100_FILES = {"cifar-100-binary.tar.gz": "03b5dce01913d631647c71ecec9e9cb8"}

#: Seconds a network connect or read may stall before the mirror counts as failed.
TIMEOUT = 30.0


def _sources(name: str) -> tuple[list, dict]:
    """(mirrors, md5 table) of dataset ``name``, looked up now so that replaced tables are honoured."""
    return {
        "mnist": (MIRRORS, MNIST_FILES),
        "fashion_mnist": (FASHION_MNIST_MIRRORS, FASHION_MNIST_FILES),
        "kmnist": (KMNIST_MIRRORS, KMNIST_FILES),
        "cifar10": (CIFAR10_MIRRORS, CIFAR10_FILES),
        "cifar100": (CIFAR100_MIRRORS, CIFAR100_FILES),
    }[name]


def _mirrors_name(name: str) -> str:
    """The name of ``name``'s mirror list here, for the error when it is empty."""
    return "MIRRORS" if name == "mnist" else f"{name.upper()}_MIRRORS"


_TITLES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "kmnist": "KMNIST", "cifar10": "CIFAR-10",
           "cifar100": "CIFAR-100"}


def _hint(name: str) -> str:
    """The ways to name another folder for ``name``, for error messages."""
    return "root= / --data-dir / PORTACNN_DATA" if name == "mnist" else "root= / --data-dir"


def _fix(name: str) -> str:
    """How to repair a bad file of dataset ``name``: the last sentence of its errors."""
    return (f"Delete it and run again to re-download it, or point {_hint(name)} at a folder with good "
            f"{_TITLES[name]} files.")


_FIX = _fix("mnist")


# ---------------------------------------------------------------- folders


def dataset_root(name: str, root: str | os.PathLike | None = None) -> Path:
    """The folder dataset ``name`` is read from and downloaded into.

    ``root`` if given; for MNIST then ``$PORTACNN_DATA``; else ``~/.cache/portacnn/<name>``.
    """
    name = canonical_name(name)
    if root is not None:
        return Path(root).expanduser()
    if name == "mnist" and (env := _files.env_folder("PORTACNN_DATA")) is not None:
        return env
    return _files.cache_folder(name)


def _named_by_user(name: str, root) -> bool:
    """Whether the folder was named by the user (and so may be a typo), not the default cache."""
    return root is not None or (name == "mnist" and _files.env_folder("PORTACNN_DATA") is not None)


def mnist_root(root: str | os.PathLike | None = None) -> Path:
    """Return the MNIST folder: ``root`` if given, else ``$PORTACNN_DATA``, else ``~/.cache/portacnn/mnist``."""
    return dataset_root("mnist", root)


def find_shared_mnist() -> Path | None:
    """Return ``../shared/data/mnist`` beside the repository root if that folder exists, else None."""
    repo_root = Path(__file__).resolve().parents[2]
    folder = repo_root.parent / "shared" / "data" / "mnist"
    return folder if folder.is_dir() else None


# ---------------------------------------------------------------- loaders


def load_dataset(name, split="train", root=None, download=None, *, dtype="uint8", verify_md5=True):
    """Load one split of dataset ``name`` (one of ``DATASETS``) as host NumPy arrays ``(images, labels)``.

    ``images`` is ``(N, C, H, W)``: raw uint8 for ``dtype="uint8"``, or
    scaled to [0, 1] for ``"float32"`` / ``"float64"``; ``labels`` is int64
    ``(N,)``. ``split`` is ``"train"`` or ``"test"``. ``root`` is the data
    folder (default: see :func:`dataset_root`); ``download`` is None (the
    default: download into the default folder, or into ``root`` if it
    exists), True (create the folder and download) or False (never).
    ``verify_md5=False`` skips the md5 check of local files (their structure
    is still checked). CIFAR-100 gives its fine labels; call
    :func:`load_cifar100` for the coarse ones.
    """
    name = canonical_name(name)
    # Looked up by name at call time, so that a replaced loader (a test's fake) is the one called.
    loader = globals()[f"load_{name}"]
    return loader(split, root, download, dtype=dtype, verify_md5=verify_md5)


def load_mnist(split="train", root=None, download=True, *, dtype="uint8", verify_md5=True):
    """Load one MNIST split as host NumPy arrays ``(images, labels)``.

    ``images`` has shape (N, 1, 28, 28): raw uint8 for ``dtype="uint8"``, or
    scaled to [0, 1] for ``"float32"`` / ``"float64"``. ``labels`` is int64 of
    shape (N,). ``split`` is ``"train"`` (60,000) or ``"test"`` (10,000).
    The folder is ``root``, else ``$PORTACNN_DATA``, else
    ``~/.cache/portacnn/mnist``; it holds the four standard IDX files,
    gzipped or not. Missing files are downloaded when ``download`` is true
    (MNIST's historical default, which creates the folder);
    ``download=None`` downloads only into the default folder or a folder
    that exists (see :func:`load_dataset`); ``False`` never downloads.
    ``verify_md5=False`` skips the md5 check of local files (the structure
    is still checked).
    """
    return _load_idx_dataset("mnist", split, root, download, dtype, verify_md5)


def load_fashion_mnist(split="train", root=None, download=None, *, dtype="uint8", verify_md5=True):
    """Load one Fashion-MNIST split (Zalando's clothing images, 10 classes): ``(N, 1, 28, 28)`` images,
    int64 labels, exactly as :func:`load_mnist` does.

    The folder is ``root``, else ``~/.cache/portacnn/fashion_mnist``
    (``$PORTACNN_DATA`` is MNIST's alone); it holds the four IDX files,
    gzipped or not. ``download`` as in :func:`load_dataset`.
    """
    return _load_idx_dataset("fashion_mnist", split, root, download, dtype, verify_md5)


def load_kmnist(split="train", root=None, download=None, *, dtype="uint8", verify_md5=True):
    """Load one Kuzushiji-MNIST split (cursive Japanese characters, 10 classes): ``(N, 1, 28, 28)``
    images, int64 labels, exactly as :func:`load_mnist` does.

    The folder is ``root``, else ``~/.cache/portacnn/kmnist``; it holds the
    four IDX files, gzipped or not. ``download`` as in :func:`load_dataset`.
    """
    return _load_idx_dataset("kmnist", split, root, download, dtype, verify_md5)


def load_cifar10(split="train", root=None, download=None, *, dtype="uint8", verify_md5=True):
    """Load one CIFAR-10 split: images ``(N, 3, 32, 32)`` (RGB), int64 labels in 0-9.

    ``split`` is ``"train"`` (50,000) or ``"test"`` (10,000). The folder is
    ``root``, else ``~/.cache/portacnn/cifar10``; it holds the official
    ``cifar-10-binary.tar.gz``, which is read in place (never extracted).
    ``download``, ``dtype`` and ``verify_md5`` as in :func:`load_dataset`.
    """
    return _load_cifar_dataset("cifar10", cifar.CIFAR10, "label", split, root, download, dtype, verify_md5)


def load_cifar100(split="train", root=None, download=None, *, dtype="uint8", label_mode="fine", verify_md5=True):
    """Load one CIFAR-100 split: images ``(N, 3, 32, 32)`` (RGB), int64 labels.

    ``label_mode="fine"`` (the default) gives the 100 classes
    (``dataset_info("cifar100").class_names``), ``"coarse"`` the 20
    superclasses (``CIFAR100_COARSE_CLASSES``). The folder is ``root``,
    else ``~/.cache/portacnn/cifar100``; it holds the official
    ``cifar-100-binary.tar.gz``, read in place. ``download``, ``dtype`` and
    ``verify_md5`` as in :func:`load_dataset`.
    """
    if label_mode not in ("fine", "coarse"):
        raise DatasetError(f"unknown CIFAR-100 label_mode {label_mode!r}; valid values are 'fine' and 'coarse'")
    return _load_cifar_dataset("cifar100", cifar.CIFAR100, label_mode, split, root, download, dtype, verify_md5)


def _load_idx_dataset(name, split, root, download, dtype, verify_md5):
    title = _TITLES[name]
    _files.check_split(split, title)
    dtype_name = _files.check_dtype(dtype, title)
    folder = dataset_root(name, root)
    mirrors, md5s = _sources(name)
    names = idx.SPLITS[split]
    missing = [n for n in names if _files.find(folder, idx.candidates(n), _hint(name)) is None]
    if missing:
        def message(why):
            return _missing_message(name, folder, [f"{n}(.gz)" for n in missing], why)

        _files.allow_download(folder, explicit=_named_by_user(name, root), download=download, title=title,
                              missing_message=message)
        _files.fetch(folder, [f"{n}.gz" for n in missing], mirrors, md5s, _download, message, _mirrors_name(name))

    images_path, labels_path = (_files.find(folder, idx.candidates(n), _hint(name)) for n in names)
    images, labels = idx.load_split(images_path, labels_path, md5s=md5s if verify_md5 else None,
                                    num_classes=dataset_info(name).num_classes, fix=_fix(name))
    return _files.as_dtype(images, dtype_name), labels


def _load_cifar_dataset(name, layout, label_field, split, root, download, dtype, verify_md5):
    title = _TITLES[name]
    _files.check_split(split, title)
    dtype_name = _files.check_dtype(dtype, title)
    folder = dataset_root(name, root)
    mirrors, md5s = _sources(name)
    path = _files.find(folder, (layout.archive,), _hint(name))
    if path is None:
        def message(why):
            return _missing_message(name, folder, [layout.archive], why)

        _files.allow_download(folder, explicit=_named_by_user(name, root), download=download, title=title,
                              missing_message=message)
        _files.fetch(folder, [layout.archive], mirrors, md5s, _download, message, _mirrors_name(name))
        path = folder / layout.archive
    images, labels = cifar.load_split(path, layout, split, label_field=label_field,
                                      expected_md5=md5s.get(layout.archive) if verify_md5 else None,
                                      fix=_fix(name))
    return _files.as_dtype(images, dtype_name), labels


def _missing_message(name: str, folder: Path, files: list[str], why: str) -> str:
    title = _TITLES[name]
    download_refused = why == "download=False"
    if folder.is_file():
        why += f"; {folder} is a file, not a folder"
    if name in ("mnist", "fashion_mnist", "kmnist"):
        wanted, them = "the four standard IDX files (gzipped or not)", "them"
    else:
        wanted, them = f"the official binary archive {files[0]}", "it"
    hint = "root= / --data-dir / the PORTACNN_DATA environment variable" if name == "mnist" else _hint(name)
    download_hint = f" Or pass download=True (--download) to download {them}." if download_refused else ""
    return (f"{title} files missing from {folder} ({why}): {', '.join(files)}. Put {wanted} in that folder, "
            f"or point {hint} at a folder that has {them}.{download_hint}")


def _download(url: str, target: Path, expected_md5: str | None) -> None:
    """Stream ``url`` into ``target`` through ``atomic_write``, checking length and md5 before the
    file takes its name: a partial or bad download never sits where the loader would read it."""
    _files.download(url, target, expected_md5, timeout=TIMEOUT, tqdm=_tqdm)


# ---------------------------------------------------------------- names kept from the one-module datasets.py


_SPLITS, _DTYPES, _SIDE = idx.SPLITS, _files.DTYPES, idx.SIDE
_IMAGES_MAGIC, _LABELS_MAGIC = idx.IMAGES_MAGIC, idx.LABELS_MAGIC
_md5, _NoBar = _files.md5, _files.NoBar


def _find(folder: Path, name: str) -> Path | None:
    """Return MNIST's ``folder/name.gz`` or ``folder/name`` (in that order of preference), whichever exists."""
    return _files.find(folder, idx.candidates(name), _hint("mnist"))


def _read_idx(path: Path, magic: int, verify_md5: bool):
    """Read and check one MNIST IDX file against ``MNIST_FILES``."""
    return idx.read_idx(path, magic, MNIST_FILES if verify_md5 else None, _FIX)


def _check_md5(path: Path, data: bytes, raw: bytes) -> None:
    idx.check_md5(path, data, raw, MNIST_FILES, _FIX)


def _download_all(folder: Path, missing: list[str]) -> None:
    """Download MNIST's ``<name>.gz`` for each missing name into ``folder`` (creating it)."""
    _files.allow_download(folder, explicit=False, download=True, title="MNIST", missing_message=None)
    _files.fetch(folder, [f"{n}.gz" for n in missing], MIRRORS, MNIST_FILES, _download,
                 lambda why: _missing_message("mnist", folder, [f"{n}(.gz)" for n in missing], why), "MIRRORS")


def _progress(total: int | None, name: str):
    return _files.progress(total, name, _tqdm)
