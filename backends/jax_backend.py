"""JAX: devices named ``platform:id`` as JAX reports them (``cpu:0``, ``gpu:0``).

Loading jax here changes two pieces of global state:

- it turns on ``jax_enable_x64``: portacnn supports float64 models, and
  without x64 JAX silently turns every float64 array into float32 (and int64
  into int32);
- before JAX first compiles, it adds
  ``--xla_cpu_enable_concurrency_optimized_scheduler=false`` to ``XLA_FLAGS``
  (unless ``XLA_FLAGS`` already sets it): XLA then runs a CPU program's
  kernels one at a time, each on all cores, which is faster for training
  steps (see ``_SCHEDULER_FLAG``). It changes speed, never results.
"""

from __future__ import annotations

import functools
import importlib.util
import mmap
import os
import pathlib

import numpy

from ._base import lookup_device, version_of

name = "jax"
install_hint = "pip install jax (or jax[cuda12] for NVIDIA GPUs)"
mutable_arrays = False  # JAX arrays are immutable: updates return new arrays
writable_views = False
native_kernels = False
compiles_steps = True  # jax.jit: see compile_step
imports_dlpack = True  # to_device may build its arrays with from_dlpack (see _base.Backend)


# XLA schedules a CPU program's kernels breadth-first by default, to run
# independent ones side by side ("concurrency-optimized"). A training step's
# kernels are mostly matrix products that each use every core already, so
# side by side they only fight over the cores: scheduled depth-first, LeNet's
# compiled step at batch 64 took about 8 ms instead of 10 on 2 cores
# (benchmarks/README.md, "JAX: compiled steps"). The schedule is an XLA flag,
# read once, from XLA_FLAGS, when JAX first compiles; per-function compiler
# options do not reach it.
_SCHEDULER_FLAG = "xla_cpu_enable_concurrency_optimized_scheduler"


def _schedule_kernels_depth_first() -> None:
    """Add the flag to XLA_FLAGS unless the user set it there, or this jaxlib does not know it (XLA
    aborts the process on an unknown flag). It takes effect only if JAX has not compiled anything yet."""
    flags = os.environ.get("XLA_FLAGS", "")
    if _SCHEDULER_FLAG not in flags and _jaxlib_knows_flag(_SCHEDULER_FLAG):
        os.environ["XLA_FLAGS"] = f"{flags} --{_SCHEDULER_FLAG}=false".strip()


def _jaxlib_knows_flag(flag: str) -> bool:
    """Whether ``flag``'s name is compiled into one of jaxlib's shared libraries (where XLA lives)."""
    spec = importlib.util.find_spec("jaxlib")
    if spec is None or not spec.submodule_search_locations:
        return False
    needle = flag.encode() + b"\0"
    for location in spec.submodule_search_locations:
        for library in sorted(pathlib.Path(location).glob("*.so"), key=lambda path: -path.stat().st_size):
            try:
                with open(library, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as image:
                    if image.find(needle) >= 0:
                        return True
            except (OSError, ValueError):  # unreadable or empty: not this one
                continue
    return False


@functools.cache
def _jax():
    _schedule_kernels_depth_first()
    import jax

    jax.config.update("jax_enable_x64", True)  # see the module docstring
    return jax


def compile_step(function, donate_argnums=()):
    """``function`` compiled with ``jax.jit``: traced once per input shape, then one XLA call per step.

    The arrays in the ``donate_argnums`` arguments are donated: XLA writes the
    results into their memory (where shapes match) and deletes them."""
    return _jax().jit(function, donate_argnums=tuple(donate_argnums))


def is_available() -> bool:
    try:
        _jax()
    except Exception:  # noqa: BLE001 - a broken install counts as unavailable
        return False
    return True


def version() -> str:
    return version_of(_jax())


def namespace():
    import jax.numpy

    _jax()  # make sure x64 is on before anyone builds arrays
    return jax.numpy


def _all_devices() -> list:
    # jax.devices() lists only the default platform (the GPU where there is
    # one); add the CPU so jax:cpu:0 stays reachable next to a GPU.
    jax = _jax()
    found = list(jax.devices())
    try:
        found += [d for d in jax.devices("cpu") if d not in found]
    except RuntimeError:  # no cpu platform in this jax build
        pass
    return found


def device_label(device) -> str:
    return f"{device.platform}:{device.id}"


def device_names() -> list[str]:
    return [device_label(d) for d in _all_devices()]


def parse_device(text: str | None):
    devices = _all_devices()
    if text is None:
        return devices[0]  # jax.devices()[0], where JAX puts new arrays
    # A bare platform ("cpu", "gpu", or "cuda" as torch users write it) means
    # its first device.
    aliases = {}
    for d in reversed(devices):
        aliases[d.platform] = d
    if "gpu" in aliases:
        aliases["cuda"] = aliases["gpu"]
    return lookup_device(name, text, {device_label(d): d for d in devices}, aliases)


def owns(x) -> bool:
    import array_api_compat

    return array_api_compat.is_jax_array(x)


def device_of(x):
    import array_api_compat

    return array_api_compat.device(x)


def from_host(host: numpy.ndarray, device):
    return _jax().device_put(host, device)


def to_host(x) -> numpy.ndarray:
    # numpy.asarray would return a read-only view of JAX's buffer; copy instead.
    return numpy.array(x, copy=True)


def exports_dlpack(x) -> bool:
    return True  # jax arrays are always dense


def synchronize(device) -> None:
    """JAX has no per-device barrier: this waits only for pending effects.

    For honest timing, wait on the result arrays instead (``wait``), which is
    what ``portacnn.backends.synchronize(array)`` does.
    """
    _jax().effects_barrier()


def wait(x) -> None:
    x.block_until_ready()


def supports_float64(device) -> bool:
    return True  # x64 is enabled when this module loads jax
