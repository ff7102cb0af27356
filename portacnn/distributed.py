"""Data-parallel training on MPI: one model, N processes, gradients averaged every step.

Start N copies of the same program with an MPI launcher (``mpiexec -n 4
portacnn train --distributed``) and each becomes one *rank*. Every rank builds
the model from the same seed (checked with a checksum broadcast from rank 0),
trains on its own disjoint shard of each global batch, and before every
optimizer step :func:`allreduce_gradients` sums the gradients of all ranks,
each weighted by its share of the batch, so every rank applies the same update
as one process would with the whole batch::

    from portacnn import distributed

    distributed.init()                                  # no-op in a single process
    distributed.broadcast_parameters(model)             # rank 0's weights everywhere
    for start in range(0, n, batch_size):
        batch = order[start:start + batch_size]         # the global batch, the same on every rank
        local = distributed.shard(batch)                # this rank's disjoint part of it
        loss = loss_fn(model(x[local]), y[local])
        loss.backward()
        distributed.allreduce_gradients(model, weight=len(local) / len(batch))
        optimizer.step(); optimizer.zero_grad()

Transport: ``mpi4py`` (``pip install "portacnn[mpi]"``, which also brings the
MPICH wheel and its ``mpiexec``). The gradients of all parameters travel as
one flat buffer per step. Host arrays (NumPy, PyTorch on the CPU, JAX,
array-api-strict) are reduced by MPI in host memory; CuPy arrays stay on the
GPU and are reduced with NCCL through CuPy (the NCCL id is broadcast over
MPI). ``PORTACNN_GPU_ALLREDUCE`` picks the GPU method: ``nccl`` (the default
where CuPy has NCCL), ``mpi`` (hand the device buffer to a CUDA-aware MPI) or
``host`` (copy through host memory). Other GPU arrays (PyTorch on CUDA, JAX on
GPU) go through host memory.

Without a launcher, or without mpi4py installed, everything here is a no-op
for a single process (rank 0 of 1), so one script runs either way. Only this
module imports mpi4py, and only when :func:`init` is called.

A failure on one rank must not leave the others waiting forever in the next
collective call: run the work inside :func:`guard`, which prints
``rank N failed: ...`` on stderr and ends the whole job with ``MPI_Abort``.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import sys
import time
import traceback

import numpy

from .backends import placement_of, to_device, to_numpy
from .errors import ArgumentError, DTypeError, PortacnnError

__all__ = [
    "DistributedError", "GPU_ALLREDUCE_VAR", "init", "rank", "world_size", "local_rank", "is_distributed",
    "launched_size", "shard_bounds", "shard", "allreduce_gradients", "broadcast_parameters", "check_parameters",
    "allgather", "barrier", "guard", "abort", "local_device_spec", "launcher_is_tty", "mpiexec_command",
]

#: Environment variable that picks how CuPy gradients are reduced: nccl, mpi or host.
GPU_ALLREDUCE_VAR = "PORTACNN_GPU_ALLREDUCE"

# What MPI launchers put in each process's environment: the number of processes.
_LAUNCH_SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "MPI_LOCALNRANKS")


class DistributedError(PortacnnError, RuntimeError):
    """The processes of a distributed job cannot work together (setup, or they disagree)."""


class _State:
    initialised = False
    comm = None  # a duplicate of MPI.COMM_WORLD when there is more than one process
    MPI = None
    rank = 0
    size = 1
    local_rank = 0
    gpu_method = None  # decided at the first CuPy reduction
    nccl_comms: dict = {}  # CUDA device id -> cupy.cuda.nccl.NcclCommunicator


_state = _State()


# --------------------------------------------------------------------------
# set-up and identity


def launched_size() -> int:
    """How many processes an MPI launcher says it started (1 when there is no launcher); reads only the environment."""
    for name in _LAUNCH_SIZE_VARS:
        value = os.environ.get(name, "").strip()
        if value.isdigit():
            return int(value)
    return 1


def init() -> int:
    """Join the MPI job this process belongs to; returns the number of processes (``world_size()``).

    Safe to call more than once. Without mpi4py, or started without a
    launcher, this is a single process: rank 0 of 1. Raises
    ``DistributedError`` when a launcher started several processes but mpi4py
    is missing (they would each train alone and overwrite each other's files).
    """
    if _state.initialised:
        return _state.size
    try:
        from mpi4py import MPI
    except ImportError:
        launched = launched_size()
        if launched > 1:
            raise DistributedError(
                f"this is one of {launched} processes started by an MPI launcher, but mpi4py is not installed, so "
                "they cannot work together; install it with: pip install 'portacnn[mpi]'") from None
        _state.initialised = True
        return 1
    size = MPI.COMM_WORLD.Get_size()
    if size > 1:
        _state.MPI = MPI
        # Our own communicator, so our messages never meet the user's on COMM_WORLD.
        _state.comm = MPI.COMM_WORLD.Dup()
        _state.rank, _state.size = _state.comm.Get_rank(), size
        node = _state.comm.Split_type(MPI.COMM_TYPE_SHARED, key=_state.rank)
        _state.local_rank = node.Get_rank()
        node.Free()
    _state.initialised = True
    return _state.size


def rank() -> int:
    """This process's rank, 0 .. world_size() - 1 (0 before ``init()`` and in a single process)."""
    return _state.rank


def world_size() -> int:
    """The number of processes training together (1 before ``init()`` and in a single process)."""
    return _state.size


def local_rank() -> int:
    """This process's rank among those on the same machine (picks its GPU)."""
    return _state.local_rank


def is_distributed() -> bool:
    """True when ``init()`` found more than one process."""
    return _state.size > 1


def local_device_spec(spec: str | None) -> str | None:
    """Give each rank its own GPU: ``"cupy"`` becomes ``"cupy:<local rank mod GPUs>"``, and
    ``"torch:cuda"`` likewise ``"torch:cuda:<...>"``. Any other spec (with an explicit device,
    or a CPU backend) is returned unchanged."""
    if spec is None or not is_distributed():
        return spec
    name, _, device = spec.strip().partition(":")
    name = name.strip().lower()
    from .backends import get_backend

    if name == "cupy" and not device.strip():
        count = len(get_backend("cupy").device_names()) if get_backend("cupy").is_available() else 0
        return f"cupy:{_state.local_rank % count}" if count else spec
    if name == "torch" and device.strip() == "cuda":
        import torch

        count = torch.cuda.device_count()
        return f"torch:cuda:{_state.local_rank % count}" if count else spec
    return spec


# --------------------------------------------------------------------------
# sharding


def shard_bounds(n: int, rank_: int | None = None, size: int | None = None) -> tuple[int, int]:
    """``(start, stop)`` of rank ``rank_``'s part of ``n`` items (default: this rank's).

    Contiguous, disjoint parts that together cover ``range(n)``, in rank
    order; their lengths differ by at most one.
    """
    rank_ = _state.rank if rank_ is None else rank_
    size = _state.size if size is None else size
    if not 0 <= rank_ < size:
        raise ArgumentError(f"rank must be in [0, {size}), got {rank_}")
    return n * rank_ // size, n * (rank_ + 1) // size


def shard(items):
    """This rank's contiguous part of ``items`` (anything sliceable with a length), e.g. a batch's indices."""
    start, stop = shard_bounds(len(items))
    return items[start:stop]


# --------------------------------------------------------------------------
# collectives


def _parameters(model) -> list:
    return model.parameters() if hasattr(model, "parameters") else list(model)


def _flatten(arrays):
    """One flat array of ``arrays`` (same namespace, device and dtype), and the namespace."""
    xp = placement_of(arrays[0]).namespace
    dtypes = {str(a.dtype) for a in arrays}
    if len(dtypes) > 1:
        raise DTypeError(f"all parameters must share one dtype to travel in one buffer, got {sorted(dtypes)}")
    return xp.concat([xp.reshape(a, (-1,)) for a in arrays]), xp


def _unflatten(xp, flat, like) -> list:
    out, offset = [], 0
    for array in like:
        count = math.prod(array.shape)
        out.append(xp.reshape(flat[offset:offset + count], tuple(array.shape)))
        offset += count
    return out


def _host(flat) -> numpy.ndarray:
    # A fresh concatenation on NumPy is already ours to overwrite; anything else is copied once.
    return flat if type(flat) is numpy.ndarray and flat.flags.writeable else to_numpy(flat)


def allreduce_gradients(model, weight: float | None = None) -> None:
    """Replace every parameter's gradient with the sum over ranks of ``weight * gradient``.

    ``model`` is a module (or a list of parameters). ``weight`` defaults to
    ``1 / world_size()``, the plain average. When the loss is a mean over
    shards of different sizes, pass ``len(local) / len(global_batch)`` to get
    the gradient of the mean over the whole batch. A parameter without a
    gradient on a rank (that rank had no data this step) counts as zeros;
    afterwards every parameter has the reduced gradient. All gradients travel
    in one flat buffer. In a single process this does nothing.
    """
    if _state.size <= 1:
        return
    params = _parameters(model)
    if not params:
        return
    placement = placement_of(params[0].data)
    xp = placement.namespace
    grads = [p.grad if p.grad is not None else xp.zeros_like(p.data) for p in params]
    flat, xp = _flatten(grads)
    scale = 1.0 / _state.size if weight is None else float(weight)
    if placement.backend == "cupy" and _gpu_method() != "host":
        flat = _allreduce_cupy(flat * scale)
    else:
        host = _host(flat)
        host *= scale
        _state.comm.Allreduce(_state.MPI.IN_PLACE, host, op=_state.MPI.SUM)
        flat = host if placement.backend == "numpy" else to_device(host, placement)
    for param, grad in zip(params, _unflatten(xp, flat, grads)):
        param.grad = grad


def _gpu_method() -> str:
    if _state.gpu_method is None:
        wanted = os.environ.get(GPU_ALLREDUCE_VAR, "").strip().lower()
        if wanted and wanted not in ("nccl", "mpi", "host"):
            raise DistributedError(f"{GPU_ALLREDUCE_VAR} must be nccl, mpi or host, got {wanted!r}")
        if not wanted:
            try:
                from cupy.cuda import nccl

                wanted = "nccl" if nccl.available else "host"
            except ImportError:
                wanted = "host"
        _state.gpu_method = wanted
    return _state.gpu_method


def _nccl_communicator(device_id: int):
    communicator = _state.nccl_comms.get(device_id)
    if communicator is None:
        import cupy
        from cupy.cuda import nccl

        unique_id = nccl.get_unique_id() if _state.rank == 0 else None
        unique_id = _state.comm.bcast(unique_id, root=0)
        with cupy.cuda.Device(device_id):
            communicator = nccl.NcclCommunicator(_state.size, unique_id, _state.rank)
        _state.nccl_comms[device_id] = communicator
    return communicator


def _allreduce_cupy(flat):
    """Sum ``flat`` (a CuPy array) over ranks without leaving the GPU; returns the result."""
    import cupy

    flat = cupy.ascontiguousarray(flat)
    if _gpu_method() == "nccl":
        from cupy.cuda import nccl

        types = {"float16": nccl.NCCL_FLOAT16, "float32": nccl.NCCL_FLOAT32, "float64": nccl.NCCL_FLOAT64}
        with cupy.cuda.Device(flat.device.id):
            stream = cupy.cuda.get_current_stream()
            _nccl_communicator(flat.device.id).allReduce(
                flat.data.ptr, flat.data.ptr, flat.size, types[str(flat.dtype)], nccl.NCCL_SUM, stream.ptr)
        return flat
    # CUDA-aware MPI reads the device memory itself: the kernels that wrote it must be done.
    flat.device.synchronize()
    _state.comm.Allreduce(_state.MPI.IN_PLACE, flat, op=_state.MPI.SUM)
    return flat


def broadcast_parameters(model, root: int = 0) -> None:
    """Overwrite every rank's parameters (and buffers, such as batch-norm statistics) with rank ``root``'s.

    One flat buffer per dtype through host memory; meant for start-up. In a single process this does nothing.
    """
    if _state.size <= 1:
        return
    holders = _parameters(model)
    if hasattr(model, "named_buffers"):
        holders = holders + [buffer for _, buffer in model.named_buffers()]
    # One flat buffer per dtype: batch norm's num_batches_tracked is an integer.
    by_dtype: dict[str, list] = {}
    for holder in holders:
        by_dtype.setdefault(str(holder.data.dtype), []).append(holder)
    for group in by_dtype.values():
        arrays = [holder.data for holder in group]
        placement = placement_of(arrays[0])
        flat, xp = _flatten(arrays)
        host = _host(flat)
        _state.comm.Bcast(host, root=root)
        flat = host if placement.backend == "numpy" else to_device(host, placement)
        for holder, data in zip(group, _unflatten(xp, flat, arrays)):
            holder.data = data


def _digest(model, extra: bytes) -> str:
    digest = hashlib.sha256()
    for name, param in (model.named_parameters() if hasattr(model, "named_parameters")
                        else enumerate(_parameters(model))):
        host = numpy.ascontiguousarray(to_numpy(param.data))
        digest.update(f"{name}:{host.dtype}:{host.shape};".encode())
        digest.update(host.tobytes())
    digest.update(extra)
    return digest.hexdigest()


def check_parameters(model, extra: bytes | str = b"") -> str:
    """Check that every rank has rank 0's parameters (and ``extra``, e.g. settings); returns the checksum.

    Rank 0 broadcasts a SHA-256 of its parameters and ``extra``; every rank
    compares its own. When any rank differs, *every* rank raises the same
    ``DistributedError`` naming the ranks that differ.
    """
    if isinstance(extra, str):
        extra = extra.encode("utf-8")
    mine = _digest(model, extra)
    if _state.size <= 1:
        return mine
    reference = _state.comm.bcast(mine, root=0)
    differ = [r for r, same in enumerate(_state.comm.allgather(mine == reference)) if not same]
    if differ:
        raise DistributedError(
            f"rank(s) {', '.join(map(str, differ))} start from other parameters or settings than rank 0 (checksum "
            f"{reference[:12]}); start every rank with the same command, seed and checkpoint")
    return reference


def allgather(value) -> list:
    """Every rank's ``value`` (any picklable object), in rank order, on every rank (``[value]`` alone)."""
    if _state.size <= 1:
        return [value]
    return _state.comm.allgather(value)


def barrier() -> None:
    """Wait until every rank gets here."""
    if _state.size > 1:
        _state.comm.Barrier()


# --------------------------------------------------------------------------
# failures


def abort(error: BaseException, code: int = 1) -> None:
    """Print ``rank N failed: <error>`` on stderr and end every process of the job (``MPI_Abort``).

    A deliberate portacnn error prints its message alone; anything else also
    prints its traceback first. In a single process the error is re-raised.
    """
    if _state.size <= 1:
        raise error
    if not isinstance(error, (PortacnnError, KeyboardInterrupt)):
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    detail = str(error) if isinstance(error, PortacnnError) else f"{type(error).__name__}: {error}"
    try:
        sys.stdout.flush()
    except Exception:  # noqa: BLE001 - a closed stdout must not stop the abort
        pass
    print(f"rank {_state.rank} failed: {detail}", file=sys.stderr, flush=True)
    # MPI_Abort tears the job down at once; when several ranks fail together, a
    # moment's grace lets the launcher forward every rank's message first.
    time.sleep(0.2)
    _state.MPI.COMM_WORLD.Abort(code)


@contextlib.contextmanager
def guard(collective: tuple = ()):
    """Run a block on every rank; an exception on any one rank ends the whole job instead of a hang.

    Exceptions of the types in ``collective`` are ones the caller knows every
    rank raises together (after agreeing through a collective call); they
    propagate normally. Any other exception goes to :func:`abort`. In a single
    process this changes nothing.
    """
    try:
        yield
    except collective:
        raise
    except (Exception, KeyboardInterrupt) as error:
        if _state.size <= 1:
            raise
        abort(error, 130 if isinstance(error, KeyboardInterrupt) else 1)


# --------------------------------------------------------------------------
# terminal


_LAUNCHERS = {"mpiexec", "mpirun", "mpiexec.hydra", "orterun", "prterun", "prte"}
_PROXIES = {"hydra_pmi_proxy", "orted", "prted", "python", "python3"}


def launcher_is_tty() -> bool:
    """True when this process's stdout is a terminal, or (Linux) when the launcher that started it writes to one.

    MPI launchers hand their processes pipes, so ``isatty()`` is always false
    there; the launcher's own stdout tells whether a person is watching.
    """
    if hasattr(sys.stdout, "isatty") and sys.stdout.isatty():
        return True
    pid = os.getpid()
    try:
        for _ in range(4):
            with open(f"/proc/{pid}/stat") as handle:
                stat = handle.read()
            pid = int(stat.rsplit(")", 1)[1].split()[1])  # the parent's pid
            if pid <= 1:
                return False
            with open(f"/proc/{pid}/comm") as handle:
                name = handle.read().strip()
            if name in _LAUNCHERS:
                return os.readlink(f"/proc/{pid}/fd/1").startswith(("/dev/pts/", "/dev/tty"))
            if name not in _PROXIES:
                return False
    except (OSError, ValueError, IndexError):
        return False
    return False


# --------------------------------------------------------------------------
# launching (tests, benchmarks)


def mpiexec_command(processes: int) -> list[str] | None:
    """``[mpiexec, "-n", N, ...]`` for the MPI launcher found here, or None when there is none.

    Looks beside the running Python first (the MPICH wheel of the ``mpi``
    extra installs it there), then on ``PATH``. Open MPI gets
    ``--oversubscribe`` (more processes than cores is fine for tests), and
    ``--allow-run-as-root`` when running as root; MPICH needs neither.
    """
    import shutil
    import subprocess
    from pathlib import Path

    beside = Path(sys.executable).parent / "mpiexec"
    launcher = str(beside) if beside.is_file() else shutil.which("mpiexec")
    if launcher is None:
        return None
    command = [launcher, "-n", str(processes)]
    try:
        version = subprocess.run([launcher, "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return command
    if "Open MPI" in version or "OpenRTE" in version or "PRRTE" in version or "prterun" in version:
        command.append("--oversubscribe")
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            command.append("--allow-run-as-root")
    return command
