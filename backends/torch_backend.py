"""PyTorch: devices ``cpu``, ``cuda:N`` and ``mps``."""

from __future__ import annotations

import numpy

from portacnn.errors import DTypeError

from ._base import lookup_device, version_of

name = "torch"
install_hint = "pip install torch"
mutable_arrays = True
writable_views = True
native_kernels = True  # portacnn/functional/_native/torch.py: PyTorch's own conv2d and max_pool2d
compiles_steps = False
imports_dlpack = True  # to_device may build its arrays with from_dlpack (see _base.Backend)


def _torch():
    import torch

    return torch


def is_available() -> bool:
    try:
        _torch()
    except Exception:  # noqa: BLE001 - a broken install counts as unavailable
        return False
    return True


def version() -> str:
    return version_of(_torch())


def namespace():
    import array_api_compat.torch

    return array_api_compat.torch


def _devices() -> dict:
    torch = _torch()
    table = {"cpu": torch.device("cpu")}
    for i in range(torch.cuda.device_count()):
        table[f"cuda:{i}"] = torch.device("cuda", i)
    if torch.backends.mps.is_available():
        table["mps"] = torch.device("mps", 0)
    return table


def device_names() -> list[str]:
    return list(_devices())


def _canonical(device):
    # Tensors report indexed devices (cuda:0, mps:0); give bare names the index
    # they will end up on so placements compare equal.
    torch = _torch()
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    if device.type == "mps":
        return torch.device("mps", 0)
    return device


def parse_device(text: str | None):
    torch = _torch()
    if text is None:
        # Honour torch.set_default_device (get_default_device is torch >= 2.3).
        get_default = getattr(torch, "get_default_device", lambda: torch.device("cpu"))
        return _canonical(get_default())
    table = _devices()
    if text.strip() == "cuda" and torch.cuda.is_available():
        return _canonical(torch.device("cuda"))
    return lookup_device(name, text, table)


def device_label(device) -> str:
    if device.type in ("cpu", "mps") or device.index is None:
        return device.type
    return f"{device.type}:{device.index}"


def owns(x) -> bool:
    import array_api_compat

    return array_api_compat.is_torch_array(x)


def device_of(x):
    return x.device


def from_host(host: numpy.ndarray, device):
    torch = _torch()
    # from_numpy needs a contiguous, writable array; it shares memory, which is
    # fine because callers hand over a copy they own. (Not ascontiguousarray:
    # that turns 0-d arrays into 1-d ones.)
    if not (host.flags.c_contiguous and host.flags.writeable):
        host = host.copy(order="C")
    return torch.from_numpy(host).to(device)


def to_host(x) -> numpy.ndarray:
    torch = _torch()
    if x.dtype == torch.bfloat16:
        raise DTypeError("NumPy has no bfloat16; cast the tensor to float32 first")
    host = x.numpy(force=True)  # force: detach, move to cpu, resolve conj/neg
    # On the cpu the result shares the tensor's memory; copy so neither side
    # sees the other's in-place updates.
    return host.copy() if x.device.type == "cpu" else host


def exports_dlpack(x) -> bool:
    return True  # tensors never have negative strides


def synchronize(device) -> None:
    torch = _torch()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def wait(x) -> None:
    synchronize(x.device)


def supports_float64(device) -> bool:
    # Apple's Metal has no float64.
    return device.type != "mps"


def updates_in_place(x) -> bool:
    """Optimizers may write new parameter values into ``x`` (``-=``), as PyTorch's do."""
    return True
