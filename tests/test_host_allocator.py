"""portacnn.host_allocator: glibc keeps freed memory for reuse in numpy training runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

glibc_only = pytest.mark.skipif(not sys.platform.startswith("linux") or os.confstr("CS_GNU_LIBC_VERSION") is None,
                                reason="the settings exist only in glibc")

PROBE = """
import ctypes, ctypes.util, sys
from portacnn.host_allocator import keep_freed_host_memory
print(keep_freed_host_memory(), keep_freed_host_memory())
"""


def _probe(**env):
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True,
                         env={**os.environ, **env})
    return out.stdout.split()


@glibc_only
def test_the_allocator_is_tuned_once_and_can_be_left_alone():
    assert _probe() == ["True", "True"]
    assert _probe(PORTACNN_HOST_ALLOCATOR="default") == ["False", "False"]


@glibc_only
def test_freed_memory_stays_in_the_process():
    """A step's worth of blocks (8 x 8 MiB), freed and allocated again: glibc's defaults trim the freed heap
    top and fault every page back in; tuned, the memory stays and is reused."""
    code = """
import ctypes, resource, sys
from portacnn.host_allocator import keep_freed_host_memory
tuned = sys.argv[1] == "tuned" and keep_freed_host_memory()
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
size = 8 << 20
def touch():
    blocks = [libc.malloc(size) for _ in range(8)]
    for block in blocks:
        ctypes.memset(block, 1, size)
    for block in blocks:
        libc.free(block)
touch()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    touch()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    faults = {mode: int(subprocess.run([sys.executable, "-c", code, mode], capture_output=True, text=True,
                                       check=True).stdout) for mode in ("tuned", "default")}
    pages = 5 * 8 * (8 << 20) // 4096
    assert faults["default"] > pages // 2  # every block faulted in again
    assert faults["tuned"] < pages // 20   # reused


def test_numpy_training_runs_tune_it(monkeypatch, tmp_path):
    from support import offline_environment, write_fake_mnist

    import portacnn.training
    from portacnn.training import TrainConfig, train

    offline_environment(monkeypatch, tmp_path / "home")
    calls = []
    monkeypatch.setattr(portacnn.training, "keep_freed_host_memory", lambda: calls.append(1) or True)
    data = write_fake_mnist(tmp_path / "mnist", n_train=40, n_test=20)
    options = dict(epochs=1, train_size=40, test_size=20, batch_size=20, data_dir=str(data), quiet=True)
    train(TrainConfig(**options))
    assert calls == [1]
    pytest.importorskip("torch")
    train(TrainConfig(backend="torch", **options))
    assert calls == [1]  # other backends keep their own allocators
