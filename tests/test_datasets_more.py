"""Fashion-MNIST, KMNIST, CIFAR-10 and CIFAR-100, ``load_dataset`` / ``dataset_info``, the download rules
and ``portacnn.datasets.transforms``.

Every file here is small and written by the test in the real format: gzipped
IDX files, and ``cifar-10-binary.tar.gz`` / ``cifar-100-binary.tar.gz``
archives of ``.bin`` record files. Downloads go through a fake
``urllib.request.urlopen``: nothing touches the network. MNIST's own file
checks are in ``test_datasets.py`` and ``test_errors_datasets.py``.
"""

import dataclasses
import gzip
import hashlib
import io
import tarfile

import numpy as np
import pytest
from support import idx_images, idx_labels, offline_environment

from portacnn import datasets
from portacnn.datasets import (DATASETS, DatasetInfo, dataset_info, dataset_root, load_cifar10, load_cifar100,
                               load_dataset, load_fashion_mnist, load_kmnist, load_mnist)
from portacnn.datasets.transforms import augment, normalize, random_crop, random_horizontal_flip
from portacnn.errors import ArgumentError, DatasetError, ShapeError

IDX_NAMES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
MD5_TABLES = {"mnist": "MNIST_FILES", "fashion_mnist": "FASHION_MNIST_FILES", "kmnist": "KMNIST_FILES",
              "cifar10": "CIFAR10_FILES", "cifar100": "CIFAR100_FILES"}
MIRROR_LISTS = {"mnist": "MIRRORS", "fashion_mnist": "FASHION_MNIST_MIRRORS", "kmnist": "KMNIST_MIRRORS",
                "cifar10": "CIFAR10_MIRRORS", "cifar100": "CIFAR100_MIRRORS"}
LOADERS = {"mnist": load_mnist, "fashion_mnist": load_fashion_mnist, "kmnist": load_kmnist,
           "cifar10": load_cifar10, "cifar100": load_cifar100}


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No real home, no PORTACNN_DATA, no mirrors for any dataset; md5 tables as shipped."""
    offline_environment(monkeypatch, tmp_path / "home", md5s="all")


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ---------------------------------------------------------------- writing files in the real formats


def write_idx_split(folder, split="train", n=6, seed=0):
    """Gzipped IDX files of one split; returns (images (n, 28, 28), labels, {file name: bytes})."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, raw in zip(IDX_NAMES[split], (idx_images(images), idx_labels(labels))):
        written[f"{name}.gz"] = gzip.compress(raw, mtime=0)
        (folder / f"{name}.gz").write_bytes(written[f"{name}.gz"])
    return images, labels, written


def records(n, classes, seed):
    """(n, len(classes) + 3072) uint8 CIFAR records: a label byte per entry of classes, then the pixels."""
    rng = np.random.default_rng(seed)
    labels = [rng.integers(0, k, n, dtype=np.uint8) for k in classes]
    pixels = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
    return np.concatenate([np.stack(labels, axis=1), pixels], axis=1)


def tar_gz(members) -> bytes:
    """A tar.gz of regular files; members maps a name to its bytes, or to a TarInfo for anything else."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in members.items():
            if isinstance(content, tarfile.TarInfo):
                archive.addfile(content)
                continue
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


CIFAR10_TRAIN_SIZES = (3, 2, 4, 1, 2)  # records in data_batch_1.bin ... data_batch_5.bin


def cifar10_members(test_size=3, seed=0):
    """The members of a small cifar-10-binary.tar.gz and the records of each split, in file order."""
    folder = "cifar-10-batches-bin"
    train = [records(n, (10,), seed + i) for i, n in enumerate(CIFAR10_TRAIN_SIZES)]
    test = records(test_size, (10,), seed + 10)
    members = {f"{folder}/batches.meta.txt": b"airplane\nautomobile\n"}
    members.update({f"{folder}/data_batch_{i + 1}.bin": batch.tobytes() for i, batch in enumerate(train)})
    members[f"{folder}/test_batch.bin"] = test.tobytes()
    return members, {"train": np.concatenate(train), "test": test}


def cifar100_members(train_size=5, test_size=3, seed=0):
    folder = "cifar-100-binary"
    split_records = {"train": records(train_size, (20, 100), seed), "test": records(test_size, (20, 100), seed + 1)}
    members = {f"{folder}/coarse_label_names.txt": b"aquatic_mammals\n",
               f"{folder}/train.bin": split_records["train"].tobytes(),
               f"{folder}/test.bin": split_records["test"].tobytes()}
    return members, split_records


def write_archive(folder, name, members) -> bytes:
    """Write the tar.gz of members as folder/<archive of name>; return its bytes."""
    archive = {"cifar10": "cifar-10-binary.tar.gz", "cifar100": "cifar-100-binary.tar.gz"}[name]
    data = tar_gz(members)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / archive).write_bytes(data)
    return data


@pytest.fixture
def no_md5(monkeypatch):
    for table in MD5_TABLES.values():
        monkeypatch.setattr(datasets, table, {})


# ---------------------------------------------------------------- Fashion-MNIST and KMNIST


@pytest.mark.parametrize("name", ["fashion_mnist", "kmnist"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_idx_datasets_load_with_their_md5s(tmp_path, monkeypatch, name, split):
    images, labels, written = write_idx_split(tmp_path, split, n=7)
    monkeypatch.setattr(datasets, MD5_TABLES[name], {filename: md5(data) for filename, data in written.items()})
    got_images, got_labels = LOADERS[name](split, root=tmp_path, download=False)
    assert got_images.shape == (7, 1, 28, 28) and got_images.dtype == np.uint8 and got_images.flags.writeable
    np.testing.assert_array_equal(got_images[:, 0], images)
    assert got_labels.dtype == np.int64
    np.testing.assert_array_equal(got_labels, labels)

    as32, again = load_dataset(name, split, root=tmp_path, download=False, dtype="float32")
    assert as32.dtype == np.float32
    np.testing.assert_allclose(as32[:, 0], images / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(again, labels)


@pytest.mark.parametrize("name, title", [("fashion_mnist", "Fashion-MNIST"), ("kmnist", "KMNIST")])
def test_idx_dataset_wrong_md5(tmp_path, monkeypatch, name, title):
    _, _, written = write_idx_split(tmp_path)
    table = {filename: md5(data) for filename, data in written.items()}
    table["train-labels-idx1-ubyte.gz"] = "0" * 32
    monkeypatch.setattr(datasets, MD5_TABLES[name], table)
    with pytest.raises(DatasetError) as info:
        LOADERS[name]("train", root=tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path / "train-labels-idx1-ubyte.gz") in message and "md5" in message
    assert title in message and "--data-dir" in message
    LOADERS[name]("train", root=tmp_path, download=False, verify_md5=False)  # switchable per call


def test_the_shipped_md5_tables_reject_generated_files(tmp_path):
    write_idx_split(tmp_path)
    with pytest.raises(DatasetError, match="fails its md5 check: expected 8d4fb7e6c68d591d4c3dfef9ec88bf0d"):
        load_fashion_mnist("train", root=tmp_path, download=False)


def test_idx_dataset_labels_must_be_below_ten(tmp_path, no_md5):
    folder = tmp_path / "km"
    write_idx_split(folder)
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_labels(np.array([0, 1, 2, 3, 4, 10]))))
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte\.gz: label 10 is outside 0-9"):
        load_kmnist("train", root=folder, download=False)


def test_portacnn_data_is_mnists_alone(tmp_path, monkeypatch, no_md5):
    write_idx_split(tmp_path / "env")
    monkeypatch.setenv("PORTACNN_DATA", str(tmp_path / "env"))
    load_mnist("train", download=False)  # MNIST reads $PORTACNN_DATA ...
    with pytest.raises(DatasetError) as info:  # ... Fashion-MNIST its own cache folder
        load_fashion_mnist("train", download=False)
    assert str(tmp_path / "home" / ".cache" / "portacnn" / "fashion_mnist") in str(info.value)


# ---------------------------------------------------------------- CIFAR-10 and CIFAR-100


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar10_loads_from_the_binary_archive(tmp_path, monkeypatch, split):
    members, expected = cifar10_members()
    data = write_archive(tmp_path, "cifar10", members)
    monkeypatch.setattr(datasets, "CIFAR10_FILES", {"cifar-10-binary.tar.gz": md5(data)})
    images, labels = load_cifar10(split, root=tmp_path, download=False)
    n = len(expected[split])
    assert images.shape == (n, 3, 32, 32) and images.dtype == np.uint8 and images.flags.writeable
    assert labels.shape == (n,) and labels.dtype == np.int64
    np.testing.assert_array_equal(labels, expected[split][:, 0])  # data_batch_1 ... 5 in order
    np.testing.assert_array_equal(images.reshape(n, -1), expected[split][:, 1:])

    as64, _ = load_dataset("cifar10", split, root=tmp_path, download=False, dtype="float64")
    np.testing.assert_allclose(as64, images / 255.0)


def test_cifar_pixel_layout_is_channel_first(tmp_path, no_md5):
    """Record byte 1 + c*1024 + y*32 + x (after the label byte) is pixel (c, y, x): red plane, then green, blue."""
    members, expected = cifar10_members()
    raw = expected["test"].copy()
    raw[1, 1:] = 0
    raw[1, 1 + 1 * 1024 + 5 * 32 + 7] = 200  # green, row 5, column 7 of the second test image
    raw[1, 1 + 2 * 1024 + 31] = 99  # blue, row 0, column 31
    members["cifar-10-batches-bin/test_batch.bin"] = raw.tobytes()
    write_archive(tmp_path, "cifar10", members)
    images, _ = load_cifar10("test", root=tmp_path, download=False)
    assert images[1, 1, 5, 7] == 200 and images[1, 2, 0, 31] == 99
    assert np.count_nonzero(images[1]) == 2


@pytest.mark.parametrize("split", ["train", "test"])
def test_cifar100_fine_and_coarse_labels(tmp_path, monkeypatch, split):
    members, expected = cifar100_members()
    data = write_archive(tmp_path, "cifar100", members)
    monkeypatch.setattr(datasets, "CIFAR100_FILES", {"cifar-100-binary.tar.gz": md5(data)})
    images, fine = load_cifar100(split, root=tmp_path, download=False)
    _, coarse = load_cifar100(split, root=tmp_path, download=False, label_mode="coarse")
    _, default = load_dataset("cifar100", split, root=tmp_path, download=False)
    np.testing.assert_array_equal(fine, expected[split][:, 1])  # records are <coarse><fine><pixels>
    np.testing.assert_array_equal(coarse, expected[split][:, 0])
    np.testing.assert_array_equal(default, fine)
    np.testing.assert_array_equal(images.reshape(len(images), -1), expected[split][:, 2:])
    assert images.shape[1:] == (3, 32, 32) and fine.dtype == coarse.dtype == np.int64


def test_cifar100_bad_label_mode(tmp_path):
    with pytest.raises(DatasetError, match="'fine' and 'coarse'"):
        load_cifar100("train", root=tmp_path, label_mode="superclass")


def test_cifar_wrong_md5(tmp_path, monkeypatch):
    write_archive(tmp_path, "cifar10", cifar10_members()[0])
    monkeypatch.setattr(datasets, "CIFAR10_FILES", {"cifar-10-binary.tar.gz": "0" * 32})
    with pytest.raises(DatasetError) as info:
        load_cifar10("test", root=tmp_path, download=False)
    message = str(info.value)
    assert f"{tmp_path / 'cifar-10-binary.tar.gz'} fails its md5 check: expected {'0' * 32}" in message
    assert "--data-dir" in message
    load_cifar10("test", root=tmp_path, download=False, verify_md5=False)


def test_the_shipped_cifar_md5_rejects_a_generated_archive(tmp_path):
    write_archive(tmp_path, "cifar100", cifar100_members()[0])
    with pytest.raises(DatasetError, match="expected 03b5dce01913d631647c71ecec9e9cb8"):
        load_cifar100("test", root=tmp_path, download=False)


def test_cifar_truncated_record_file(tmp_path, no_md5):
    members, _ = cifar10_members()
    name = "cifar-10-batches-bin/data_batch_3.bin"
    members[name] = members[name][:-100]
    write_archive(tmp_path, "cifar10", members)
    with pytest.raises(DatasetError) as info:
        load_cifar10("train", root=tmp_path, download=False)
    message = str(info.value)
    assert str(tmp_path / "cifar-10-binary.tar.gz") in message and name in message
    assert "not a whole number of 3073-byte records" in message
    load_cifar10("test", root=tmp_path, download=False)  # the other split is intact


def test_cifar100_records_are_3074_bytes(tmp_path, no_md5):
    members, _ = cifar100_members(test_size=2)
    members["cifar-100-binary/test.bin"] = members["cifar-100-binary/test.bin"][:-2]  # 2 x 3073: CIFAR-10 sized
    write_archive(tmp_path, "cifar100", members)
    with pytest.raises(DatasetError, match="test.bin is truncated or damaged: its 6146 bytes .* 3074-byte records"):
        load_cifar100("test", root=tmp_path, download=False)


@pytest.mark.parametrize("damage", ["not-gzip", "gzip-not-tar", "truncated"])
def test_bad_cifar_archive(tmp_path, no_md5, damage):
    data = tar_gz(cifar10_members()[0])
    bad = {"not-gzip": b"this is not an archive",
           "gzip-not-tar": gzip.compress(b"\x01" * 5000),
           "truncated": data[: len(data) // 2]}[damage]
    (tmp_path / "cifar-10-binary.tar.gz").write_bytes(bad)
    with pytest.raises(DatasetError) as info:
        load_cifar10("train", root=tmp_path, download=False)
    message = str(info.value)
    assert f"{tmp_path / 'cifar-10-binary.tar.gz'} is not a tar.gz archive or it is corrupt" in message
    assert "Delete it" in message


def test_cifar_archive_without_a_record_file(tmp_path, no_md5):
    members, _ = cifar10_members()
    del members["cifar-10-batches-bin/data_batch_4.bin"]
    write_archive(tmp_path, "cifar10", members)
    with pytest.raises(DatasetError, match=r"has no cifar-10-batches-bin/data_batch_4\.bin"):
        load_cifar10("train", root=tmp_path, download=False)


def test_a_link_is_not_a_record_file(tmp_path, no_md5):
    members, _ = cifar10_members()
    link = tarfile.TarInfo("cifar-10-batches-bin/test_batch.bin")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    members["cifar-10-batches-bin/test_batch.bin"] = link
    write_archive(tmp_path, "cifar10", members)
    with pytest.raises(DatasetError, match="has no cifar-10-batches-bin/test_batch.bin"):
        load_cifar10("test", root=tmp_path, download=False)


def test_hostile_member_names_are_never_written(tmp_path, no_md5):
    """The records are read in memory: members named ../x or /abs/x create nothing anywhere."""
    members, expected = cifar10_members()
    members["../../escaped.bin"] = b"x" * 3073
    members[str(tmp_path / "absolute.bin")] = b"y" * 3073
    folder = tmp_path / "data" / "cifar10"
    write_archive(folder, "cifar10", members)
    _, labels = load_cifar10("test", root=folder, download=False)
    np.testing.assert_array_equal(labels, expected["test"][:, 0])
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == ["cifar-10-binary.tar.gz"]


@pytest.mark.parametrize("name, layout, column, bad", [
    ("cifar10", "cifar10", 0, 10), ("cifar100", "cifar100", 0, 20), ("cifar100", "cifar100", 1, 100)])
def test_cifar_label_out_of_range(tmp_path, no_md5, name, layout, column, bad):
    members, split_records = cifar10_members() if layout == "cifar10" else cifar100_members()
    member = next(m for m in members if m.endswith(("test_batch.bin", "/test.bin")))
    damaged = split_records["test"].copy()
    damaged[-1, column] = bad
    members[member] = damaged.tobytes()
    write_archive(tmp_path, name, members)
    with pytest.raises(DatasetError, match=rf"{member}.* label {bad}, outside 0-{bad - 1}"):
        LOADERS[name]("test", root=tmp_path, download=False)


# ---------------------------------------------------------------- load_dataset, dataset_info, folders


def test_unknown_dataset_lists_the_known_ones():
    for bad in ("imagenet", "mnist2", "", None, ["mnist"]):
        with pytest.raises(DatasetError) as info:
            load_dataset(bad)
        assert all(name in str(info.value) for name in DATASETS)
        with pytest.raises(DatasetError):
            dataset_info(bad)
    # Names as people write them: any case, "-" for "_", CIFAR with its dash.
    assert dataset_info("MNIST").name == "mnist" and dataset_info("Fashion-MNIST").name == "fashion_mnist"


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_bad_split_and_dtype_for_every_dataset(tmp_path, name):
    with pytest.raises(DatasetError, match="'train' and 'test'"):
        load_dataset(name, "validation", root=tmp_path)
    with pytest.raises(DatasetError, match="float32"):
        load_dataset(name, "train", root=tmp_path, dtype="int32")
    assert not list(tmp_path.iterdir())


def test_dataset_info():
    assert DATASETS == ("mnist", "fashion_mnist", "kmnist", "cifar10", "cifar100")
    for name in DATASETS:
        info = dataset_info(name)
        assert isinstance(info, DatasetInfo) and info.name == name
        assert len(info.class_names) == info.num_classes == len(set(info.class_names))
        assert len(info.mean) == len(info.std) == info.in_channels
        assert all(0 < m < 1 and 0 < s < 1 for m, s in zip(info.mean, info.std))
        assert info.image_size == ((28, 28) if info.in_channels == 1 else (32, 32))
        with pytest.raises(dataclasses.FrozenInstanceError):
            info.num_classes = 3
    assert (dataset_info("mnist").train_size, dataset_info("mnist").test_size) == (60_000, 10_000)
    assert (dataset_info("cifar10").train_size, dataset_info("cifar100").test_size) == (50_000, 10_000)
    assert dataset_info("cifar10").class_names[0] == "airplane" and dataset_info("cifar10").class_names[9] == "truck"
    fine = dataset_info("cifar100").class_names
    assert fine == tuple(sorted(fine)) and fine[0] == "apple" and fine[-1] == "worm"  # the archive's order
    assert len(datasets.CIFAR100_COARSE_CLASSES) == 20 and datasets.CIFAR100_COARSE_CLASSES[-1] == "vehicles_2"
    assert dataset_info("fashion_mnist").class_names[9] == "Ankle boot"
    assert dataset_info("mnist").mean == (0.1307,) and dataset_info("cifar10").std == (0.2470, 0.2435, 0.2616)


def test_shipped_sources():
    """The official md5s, as each dataset's page and torchvision publish them (a typo here breaks downloads)."""
    assert datasets.FASHION_MNIST_FILES == {
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310"}
    assert datasets.KMNIST_FILES == {
        "train-images-idx3-ubyte.gz": "bdb82020997e1d708af4cf47b453dcf7",
        "train-labels-idx1-ubyte.gz": "e144d726b3acfaa3e44228e80efcd344",
        "t10k-images-idx3-ubyte.gz": "5c965bf0a639b31b8f53240b1b52f4d7",
        "t10k-labels-idx1-ubyte.gz": "7320c461ea6c1c855c0b718fb2a4b134"}
    assert datasets.CIFAR10_FILES == {"cifar-10-binary.tar.gz": "c32a1d4ab5d03f1284b67883e8d87530"}
    assert datasets.CIFAR100_FILES == {"cifar-100-binary.tar.gz": "03b5dce01913d631647c71ecec9e9cb8"}


def test_dataset_root(tmp_path, monkeypatch):
    cache = tmp_path / "home" / ".cache" / "portacnn"
    for name in DATASETS:
        assert dataset_root(name) == cache / name
        assert dataset_root(name, tmp_path / "x") == tmp_path / "x"
    monkeypatch.setenv("PORTACNN_DATA", str(tmp_path / "env"))
    assert dataset_root("mnist") == tmp_path / "env"
    assert dataset_root("cifar10") == cache / "cifar10"


def test_names_of_the_one_module_datasets_py_still_import():
    from portacnn.datasets import (_DTYPES, _FIX, _IMAGES_MAGIC, _LABELS_MAGIC, _SIDE, _SPLITS,  # noqa: F401
                                   MIRRORS, MNIST_FILES, TIMEOUT, _check_md5, _download, _download_all, _find,
                                   _md5, _missing_message, _NoBar, _progress, _read_idx, _tqdm, find_shared_mnist,
                                   mnist_root)

    assert datasets.urllib.request.urlopen is not None  # tests patch urlopen through here


# ---------------------------------------------------------------- download rules (issue 12)


class FakeWeb:
    """Stands in for urllib.request.urlopen: serves self.files (URL -> bytes) and records each request."""

    def __init__(self):
        self.files, self.requested = {}, []

    def urlopen(self, url, timeout):
        self.requested.append(url)
        if url not in self.files:
            raise OSError(f"HTTP Error 404: {url}")
        response = io.BytesIO(self.files[url])  # a context manager with read(), as a real response
        response.headers = {"Content-Length": str(len(self.files[url]))}
        return response


@pytest.fixture
def web(monkeypatch):
    fake = FakeWeb()
    monkeypatch.setattr(datasets.urllib.request, "urlopen", fake.urlopen)
    return fake


def serve_cifar10(web, monkeypatch, mirrors=("http://one.invalid/kriz/", "http://two.invalid/")):
    """Publish a small CIFAR-10 archive on the first mirror and register its md5; return (bytes, records)."""
    members, expected = cifar10_members()
    data = tar_gz(members)
    monkeypatch.setattr(datasets, "CIFAR10_MIRRORS", list(mirrors))
    monkeypatch.setattr(datasets, "CIFAR10_FILES", {"cifar-10-binary.tar.gz": md5(data)})
    web.files[mirrors[0] + "cifar-10-binary.tar.gz"] = data
    return data, expected


def test_default_download_goes_to_the_cache_folder(tmp_path, monkeypatch, web):
    data, expected = serve_cifar10(web, monkeypatch)
    _, labels = load_dataset("cifar10", "test")  # download=None, no root: the default cache
    np.testing.assert_array_equal(labels, expected["test"][:, 0])
    cached = tmp_path / "home" / ".cache" / "portacnn" / "cifar10" / "cifar-10-binary.tar.gz"
    assert cached.read_bytes() == data
    assert web.requested == ["http://one.invalid/kriz/cifar-10-binary.tar.gz"]
    load_dataset("cifar10", "train", download=False)  # offline from now on
    assert len(web.requested) == 1


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_a_root_that_does_not_exist_is_an_error_not_a_new_folder(tmp_path, web, name):
    typo = tmp_path / "dtaa" / name
    with pytest.raises(DatasetError) as info:
        load_dataset(name, "train", root=typo)  # download=None
    message = str(info.value)
    assert str(typo) in message and "does not exist" in message
    assert "download=True" in message and "--download" in message
    assert not (tmp_path / "dtaa").exists() and web.requested == []


def test_portacnn_data_that_does_not_exist_is_an_error_too(tmp_path, monkeypatch, web):
    monkeypatch.setenv("PORTACNN_DATA", str(tmp_path / "nope"))
    with pytest.raises(DatasetError, match="PORTACNN_DATA.*download=True"):
        load_dataset("mnist", "test")
    assert not (tmp_path / "nope").exists()


def test_a_root_that_is_a_file(tmp_path, web):
    not_a_folder = tmp_path / "cifar.tar"
    not_a_folder.write_bytes(b"")
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        load_cifar10("train", root=not_a_folder)
    with pytest.raises(DatasetError, match="is a file, not a folder"):
        load_cifar10("train", root=not_a_folder, download=False)


def test_an_existing_root_is_downloaded_into(tmp_path, monkeypatch, web):
    data, _ = serve_cifar10(web, monkeypatch)
    folder = tmp_path / "data"
    folder.mkdir()
    load_cifar10("test", root=folder)
    assert (folder / "cifar-10-binary.tar.gz").read_bytes() == data


def test_download_true_creates_the_folder(tmp_path, monkeypatch, web):
    data, expected = serve_cifar10(web, monkeypatch)
    folder = tmp_path / "new" / "nested"
    _, labels = load_dataset("cifar10", "train", root=folder, download=True)
    np.testing.assert_array_equal(labels, expected["train"][:, 0])
    assert (folder / "cifar-10-binary.tar.gz").read_bytes() == data
    assert [p.name for p in folder.iterdir()] == ["cifar-10-binary.tar.gz"]  # no temp file left


@pytest.mark.parametrize("name", sorted(LOADERS))
def test_download_false_never_downloads(tmp_path, monkeypatch, web, name):
    monkeypatch.setattr(datasets, MIRROR_LISTS[name], ["http://mirror.invalid/"])
    folder = tmp_path / "empty"
    folder.mkdir()
    with pytest.raises(DatasetError) as info:
        load_dataset(name, "test", root=folder, download=False)
    message = str(info.value)
    assert str(folder) in message and "download=False" in message and "--download" in message
    assert web.requested == [] and not list(folder.iterdir())
    with pytest.raises(DatasetError):  # nor into the default folder
        load_dataset(name, "test", download=False)
    assert not (tmp_path / "home").exists()


def test_a_bad_mirror_falls_through_to_the_next(tmp_path, monkeypatch, web):
    data, _ = serve_cifar10(web, monkeypatch)
    web.files["http://two.invalid/cifar-10-binary.tar.gz"] = data
    web.files["http://one.invalid/kriz/cifar-10-binary.tar.gz"] = data[:-1] + b"x"  # md5 mismatch
    load_cifar10("test", root=tmp_path)
    assert len(web.requested) == 2
    assert (tmp_path / "cifar-10-binary.tar.gz").read_bytes() == data


def test_every_mirror_failing_leaves_nothing(tmp_path, monkeypatch, web):
    monkeypatch.setattr(datasets, "CIFAR100_MIRRORS", ["http://one.invalid/", "http://two.invalid/"])
    with pytest.raises(DatasetError) as info:
        load_cifar100("train", root=tmp_path)
    message = str(info.value)
    assert "cifar-100-binary.tar.gz" in message and "404" in message
    assert "http://one.invalid/cifar-100-binary.tar.gz" in message and "http://two.invalid/" in message
    assert not list(tmp_path.iterdir())


def test_empty_mirror_list_is_named(tmp_path):
    with pytest.raises(DatasetError, match="KMNIST_MIRRORS is empty"):
        load_kmnist("train", root=tmp_path)


@pytest.mark.parametrize("name", ["fashion_mnist", "kmnist"])
def test_idx_download_fetches_only_the_missing_gz_files(tmp_path, monkeypatch, web, name):
    source = tmp_path / "source"
    images, labels, written = write_idx_split(source, "test", n=4)
    monkeypatch.setattr(datasets, MIRROR_LISTS[name], ["http://mirror.invalid/x"])  # without the slash
    monkeypatch.setattr(datasets, MD5_TABLES[name], {filename: md5(data) for filename, data in written.items()})
    for filename, data in written.items():
        web.files[f"http://mirror.invalid/x/{filename}"] = data
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(written["t10k-labels-idx1-ubyte.gz"])
    got_images, got_labels = load_dataset(name, "test", root=folder)
    np.testing.assert_array_equal(got_images[:, 0], images)
    np.testing.assert_array_equal(got_labels, labels)
    assert web.requested == ["http://mirror.invalid/x/t10k-images-idx3-ubyte.gz"]


def test_load_dataset_passes_download_none_to_mnist(tmp_path, web):
    """load_mnist keeps download=True as its own default; through load_dataset MNIST follows the new rule."""
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset("mnist", "train", root=tmp_path / "typo")
    with pytest.raises(DatasetError, match="MIRRORS is empty"):
        load_mnist("train", root=tmp_path / "typo")  # download=True: creates the folder, then tries
    assert (tmp_path / "typo").is_dir()


# ---------------------------------------------------------------- transforms


def batch(n=6, channels=3, side=8, dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(1, 256, (n, channels, side, side)).astype(dtype)  # no zeros: padding stands out


def test_random_crop_moves_the_right_pixels():
    n = 200
    images = batch(n=n)
    before = images.copy()
    out = random_crop(images, 2, np.random.default_rng(7))
    assert out.shape == images.shape and out.dtype == images.dtype
    np.testing.assert_array_equal(images, before)  # input untouched

    # The same draws, replayed: the top then the left corner of each crop in the 12x12 padded image.
    replay = np.random.default_rng(7)
    tops, lefts = replay.integers(0, 5, size=n), replay.integers(0, 5, size=n)
    padded = np.zeros((n, 3, 12, 12), np.uint8)
    padded[:, :, 2:10, 2:10] = images
    for i in range(n):
        np.testing.assert_array_equal(out[i], padded[i, :, tops[i]:tops[i] + 8, lefts[i]:lefts[i] + 8])
    # An image cropped at (0, 0) is shifted right and down by 2 with a zero border, as torchvision's.
    corner = np.flatnonzero((tops == 0) & (lefts == 0))
    assert corner.size
    assert not out[corner[0], :, :2].any() and not out[corner[0], :, :, :2].any()
    np.testing.assert_array_equal(out[corner[0], :, 2:, 2:], images[corner[0], :, :6, :6])
    assert set(tops.tolist()) == set(range(5))  # every offset 0..2p occurs


def test_random_crop_without_padding_is_a_copy():
    images = batch()
    out = random_crop(images, 0, np.random.default_rng(0))
    np.testing.assert_array_equal(out, images)
    out[0, 0, 0, 0] = 0
    assert images[0, 0, 0, 0] != 0


def test_random_horizontal_flip():
    images = batch(n=64, dtype=np.float32)
    before = images.copy()
    np.testing.assert_array_equal(random_horizontal_flip(images, np.random.default_rng(0), p=1.0),
                                  images[..., ::-1])
    np.testing.assert_array_equal(random_horizontal_flip(images, np.random.default_rng(0), p=0.0), images)
    out = random_horizontal_flip(images, np.random.default_rng(3))
    flipped = np.random.default_rng(3).random(64) < 0.5
    np.testing.assert_array_equal(out[flipped], images[flipped, :, :, ::-1])
    np.testing.assert_array_equal(out[~flipped], images[~flipped])
    assert 0 < flipped.sum() < 64 and out.dtype == np.float32
    np.testing.assert_array_equal(images, before)


def test_augment_is_crop_then_flip_and_seeded():
    images = batch(n=16, side=32)
    before = images.copy()
    out = augment(images, np.random.default_rng(11))
    rng = np.random.default_rng(11)
    np.testing.assert_array_equal(out, random_horizontal_flip(random_crop(images, 4, rng), rng))
    np.testing.assert_array_equal(out, augment(images, np.random.default_rng(11)))  # same seed, same batch
    assert not np.array_equal(out, augment(images, np.random.default_rng(12)))
    np.testing.assert_array_equal(augment(images, np.random.default_rng(5), padding=0, flip=False), images)
    np.testing.assert_array_equal(images, before)
    assert out.shape == (16, 3, 32, 32)


def test_normalize():
    images = batch(n=2, channels=3, side=4, dtype=np.float32) / np.float32(255)
    before = images.copy()
    mean, std = (0.5, 0.25, 0.0), (0.5, 0.25, 2.0)
    out = normalize(images, mean, std)
    assert out.dtype == np.float32 and out.shape == images.shape
    np.testing.assert_allclose(out[:, 0], (images[:, 0] - 0.5) / 0.5, rtol=1e-6)
    np.testing.assert_allclose(out[:, 1], (images[:, 1] - 0.25) / 0.25, rtol=1e-6)
    np.testing.assert_allclose(out[:, 2], images[:, 2] / 2.0, rtol=1e-6)
    np.testing.assert_array_equal(images, before)
    assert normalize(np.full((1, 1, 2, 2), 0.1307), (0.1307,), (0.3081,)).dtype == np.float64
    np.testing.assert_allclose(normalize(np.ones((1, 2, 2)), (0.5,), (0.25,)), 2.0)  # one (C, H, W) image


def test_transform_argument_errors():
    rng = np.random.default_rng(0)
    with pytest.raises(ShapeError, match=r"\(N, C, H, W\)"):
        random_crop(np.zeros((3, 8, 8)), 4, rng)
    for padding in (-1, 1.5, True):
        with pytest.raises(ArgumentError, match="padding"):
            random_crop(batch(), padding, rng)
    for p in (-0.1, 1.5, "half"):
        with pytest.raises(ArgumentError, match="probability"):
            random_horizontal_flip(batch(), rng, p=p)
    with pytest.raises(ArgumentError, match="floating point"):
        normalize(batch(), (0.5,) * 3, (0.5,) * 3)
    with pytest.raises(ShapeError, match="one value per channel"):
        normalize(batch(dtype=np.float32), (0.5,), (0.5,))
    with pytest.raises(ArgumentError, match="positive"):
        normalize(batch(dtype=np.float32), (0.5,) * 3, (0.5, 0.0, 0.5))
