"""Bad checkpoint files: never unpickled, always a clear CheckpointError, never corrupted by a killed save.

Covered in ``tests/test_checkpoint.py`` (not repeated here): missing file,
truncated file, a text file, a plain ``.npy``, corrupt array data (CRC), an
``.npz`` without metadata, a newer format version, foreign metadata, an
unknown architecture, another architecture's arrays (missing and mis-shaped
names listed), optimizer state from another model, a save that fails with a
full disk (previous file intact, no temp file left), and no pickle in the files
we write. ``tests/test_nn.py::test_load_state_dict_lists_every_mismatch`` covers
unexpected names in a state dict.

Here: a pickled entry is refused without being unpickled, one file with
missing, unexpected and mis-shaped parameters lists all three, malformed
metadata, saved options this version cannot build, non-float arrays,
truncation or a flipped byte anywhere (property-based), an interrupted save,
and a process SIGKILLed in the middle of saving.
"""

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support import rewrite_checkpoint

from portacnn.checkpoint import build_model, load_checkpoint, save_checkpoint
from portacnn.files import atomic_write
from portacnn.errors import CheckpointError, PortacnnError
from portacnn.models import lenet
from portacnn.nn import Linear, Sequential


def small_model(seed=0):
    return Sequential(Linear(4, 3, rng=seed, dtype="float64"), Linear(3, 2, rng=seed + 1, dtype="float64"))


def assert_refused(path, *fragments, call=load_checkpoint):
    with pytest.raises(CheckpointError) as info:
        call(path)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert isinstance(info.value, PortacnnError)
    return message


class _Trap:
    """Unpickling this runs os.mkdir(marker): proof that something unpickled the file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_pickled_entry_is_refused_without_being_unpickled(tmp_path):
    path = save_checkpoint(tmp_path / "evil.npz", small_model())
    marker = tmp_path / "pickle-was-loaded"
    trap = np.empty(1, dtype=object)
    trap[0] = _Trap(marker)
    rewrite_checkpoint(path, change_arrays=lambda arrays: arrays.update({"model/0.weight": trap}))
    assert_refused(path, str(path), "model/0.weight", "pickled", "never unpickles")
    assert not marker.exists()


def test_missing_unexpected_and_misshaped_parameters_are_all_listed(tmp_path):
    path = save_checkpoint(tmp_path / "other.npz", lenet(seed=0))

    def edit(arrays):
        del arrays["model/0.bias"]
        arrays["model/10.weight"] = np.zeros((3, 3), np.float32)
        arrays["model/7.weight"] = np.zeros((500, 801), np.float32)

    rewrite_checkpoint(path, change_arrays=edit)
    message = assert_refused(path, "missing: 0.bias", "unexpected: 10.weight", "7.weight",
                             "(500, 801)", "(500, 800)", call=lambda p: build_model(load_checkpoint(p)))
    assert "different architecture" in message


@pytest.mark.parametrize("field, value, fragment", [
    ("epoch", "three", "epoch is str"),
    ("epoch", -1, "epoch is -1"),
    ("architecture_kwargs", [1, 2], "architecture_kwargs is list"),
    ("history", {"epoch": 1}, "history is dict"),
    ("architecture", None, "architecture is NoneType"),
])
def test_malformed_metadata_is_refused(tmp_path, field, value, fragment):
    path = save_checkpoint(tmp_path / "m.npz", small_model())
    rewrite_checkpoint(path, change_metadata=lambda metadata: metadata.update({field: value}))
    assert_refused(path, "malformed metadata", fragment)


def test_saved_options_this_version_cannot_build(tmp_path):
    path = save_checkpoint(tmp_path / "m.npz", lenet(seed=0), architecture_kwargs={"width_multiplier": 2})
    assert_refused(path, "width_multiplier", "another portacnn version",
                   call=lambda p: build_model(load_checkpoint(p)))


def test_non_float_parameter_arrays_are_refused(tmp_path):
    path = save_checkpoint(tmp_path / "m.npz", small_model())
    rewrite_checkpoint(path, change_arrays=lambda arrays: arrays.update({"model/0.bias": np.array(["a", "b", "c"])}))
    assert_refused(path, "not floating point", "0.bias",
                   call=lambda p: small_model().load_state_dict(load_checkpoint(p)["model"]))


# --------------------------------------------------------------------------
# damaged bytes: always refused or loaded unchanged, never wrong numbers


@pytest.fixture(scope="module")
def good_bytes(tmp_path_factory):
    path = save_checkpoint(tmp_path_factory.mktemp("good") / "good.npz", small_model(), epoch=3)
    return path.read_bytes(), load_checkpoint(path)


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_truncated_or_flipped_bytes_never_load_wrong_numbers(good_bytes, tmp_path_factory, data):
    original, expected = good_bytes
    damaged = bytearray(original)
    if data.draw(st.booleans(), label="truncate"):
        damaged = damaged[:data.draw(st.integers(0, len(original) - 1), label="length")]
    else:
        where = data.draw(st.integers(0, len(original) - 1), label="offset")
        damaged[where] ^= data.draw(st.integers(1, 255), label="xor")
    path = tmp_path_factory.mktemp("damaged") / "last.npz"
    path.write_bytes(bytes(damaged))
    try:
        loaded = load_checkpoint(path)
    except CheckpointError as error:
        assert str(path) in str(error)
        return
    # The byte was one the format does not rely on (a zip timestamp, say): the content must be unchanged.
    assert loaded["epoch"] == expected["epoch"]
    assert loaded["model"].keys() == expected["model"].keys()
    for name, value in expected["model"].items():
        np.testing.assert_array_equal(loaded["model"][name], value)


# --------------------------------------------------------------------------
# interrupted saves


def test_interrupted_save_keeps_the_previous_checkpoint(tmp_path):
    path = save_checkpoint(tmp_path / "last.npz", small_model(), epoch=1)
    before = path.read_bytes()

    def interrupted(handle):
        handle.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(path, interrupted)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.npz"]


SAVER = textwrap.dedent("""
    import sys
    import numpy as np
    from portacnn.checkpoint import save_checkpoint
    from portacnn.nn import Linear, Sequential

    # About 16 MB of float64, so a save takes long enough to be killed in the middle of.
    model = Sequential(Linear(1400, 1400, rng=0, dtype="float64"))
    weight = model.parameters()[0]
    version = 0
    while True:
        version += 1
        weight.data = np.full((1400, 1400), float(version))  # every value names the save it belongs to
        save_checkpoint(sys.argv[1], model, epoch=version)
""")


def _kill_mid_save(folder: Path, wait_for_bytes: int) -> None:
    """Start the saver, wait until last.npz exists and a temp file has ``wait_for_bytes``, SIGKILL it."""
    target = folder / "last.npz"
    process = subprocess.Popen([sys.executable, "-c", SAVER, str(target)], stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            assert process.poll() is None, process.stderr.read().decode()
            temps = list(folder.glob(".last.npz.*.tmp"))
            if target.exists() and any(_size(t) >= wait_for_bytes for t in temps):
                break
            time.sleep(0.001)
        else:
            pytest.fail("the saver never got to a second save in 60 s")
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
        process.stderr.close()
    assert process.returncode == -signal.SIGKILL


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:  # renamed into place between glob and stat
        return -1


@pytest.mark.parametrize("wait_for_bytes", [1, 8_000_000], ids=["save-just-begun", "save-half-written"])
def test_sigkill_during_save_leaves_the_previous_checkpoint_loadable(tmp_path, wait_for_bytes):
    from portacnn.cli import _checkpoint_file

    _kill_mid_save(tmp_path, wait_for_bytes)
    target = tmp_path / "last.npz"
    loaded = load_checkpoint(target)  # the surviving file is a whole, earlier checkpoint
    version = loaded["epoch"]
    assert version >= 1
    np.testing.assert_array_equal(loaded["model"]["0.weight"], np.full((1400, 1400), float(version)))

    # Whatever the kill left behind is a hidden temp file that nothing loads on its own:
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name != "last.npz")
    assert all(name.startswith(".last.npz.") and name.endswith(".tmp") for name in leftovers), leftovers
    assert _checkpoint_file(str(tmp_path)) == target  # the CLI (and resume) read last.npz only
    for name in leftovers:  # and a partial temp file, if loaded by hand, is refused rather than trusted
        try:
            partial = load_checkpoint(tmp_path / name)
        except CheckpointError:
            continue
        assert partial["epoch"] == version + 1  # killed after the data was complete, before the rename
        np.testing.assert_array_equal(partial["model"]["0.weight"], np.full((1400, 1400), float(version + 1)))

    # The next save replaces it normally.
    model = Sequential(Linear(1400, 1400, rng=0, dtype="float64"))
    assert load_checkpoint(save_checkpoint(target, model, epoch=version + 5))["epoch"] == version + 5
