"""Data-parallel LeNet training on MPI: images/s with 1 and 2 ranks, and what the allreduce costs.

For each rank count (``--ranks``, default 1,2) the script launches
``mpiexec -n R python bench_distributed.py --worker ...`` with one BLAS
thread per rank (OPENBLAS_NUM_THREADS=1, OMP_NUM_THREADS=1), so 2 ranks use 2
cores where 1 rank uses one. Each rank runs the training loop of
``portacnn train --distributed``: its shard of every global batch of
``--batch-sizes`` synthetic 1x28x28 uint8 images, ``prepare_images``, forward,
``CrossEntropyLoss``, ``loss.backward()``, ``distributed.allreduce_gradients`` (one flat
buffer), SGD with momentum.

Columns:

- ``img/s``: global images per second (the slowest rank's time), median of ``--repeats``.
- ``speedup``: img/s over the 1-rank img/s at the same batch size.
- ``step ms``: wall time of one step.
- ``allreduce ms``: one ``allreduce_gradients`` call on its own (after a barrier, so no waiting for the
  other rank is included): the transport's cost.
- ``allreduce %``: that over the step time; the aim is under 5 % at batch 256.
- ``in-step %``: the time spent inside ``allreduce_gradients`` during the training steps, waiting for the
  slower rank included (load imbalance, a busy machine), over the step time.

Examples::

    python benchmarks/bench_distributed.py --quick
    python benchmarks/bench_distributed.py --json distributed.json
    python benchmarks/bench_distributed.py --ranks 1,2,4 --batch-sizes 256 --backend torch

Needs mpi4py and an ``mpiexec`` (``pip install -e ".[mpi]"``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import _common as common

SEED = 0
LR, MOMENTUM = 0.01, 0.9
NUM_BATCHES = 4  # distinct synthetic batches cycled through


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", type=common.int_list, default=[1, 2], help="rank counts (default 1,2)")
    parser.add_argument("--batch-sizes", type=common.int_list, help="global batch sizes (default 256,64)")
    parser.add_argument("--backend", default="numpy", help="portacnn backend spec of every rank (default numpy)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--steps", type=int, help="training steps per timed repeat (default 20, --quick 3)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 3, --quick 1)")
    parser.add_argument("--repeats", type=int, help="timed repeats (default 3, --quick 1)")
    parser.add_argument("--allreduce-calls", type=int, help="calls timed on their own (default 20, --quick 3)")
    parser.add_argument("--timeout", type=float, default=600, help="seconds allowed per mpiexec run (default 600)")
    parser.add_argument("--quick", action="store_true", help="batch 64, few steps: a smoke test")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--worker", metavar="OUT", help=argparse.SUPPRESS)  # one rank, run by mpiexec
    args = parser.parse_args(argv)
    quick = args.quick
    if args.batch_sizes is None:
        args.batch_sizes = [64] if quick else [256, 64]
    args.steps = args.steps or (3 if quick else 20)
    args.warmup = args.warmup if args.warmup is not None else (1 if quick else 3)
    args.repeats = args.repeats or (1 if quick else 3)
    args.allreduce_calls = args.allreduce_calls or (3 if quick else 20)
    return args


# --------------------------------------------------------------------------
# one rank


def run_worker(args) -> None:
    from portacnn import distributed
    from portacnn.backends import parse_spec

    distributed.init()
    placement = parse_spec(distributed.local_device_spec(args.backend))
    rows = [bench_batch(args, placement, batch) for batch in args.batch_sizes]
    if distributed.rank() == 0:
        Path(args.worker).write_text(json.dumps(rows))


def bench_batch(args, placement, batch: int) -> dict:
    """Time training steps at global batch ``batch`` on every rank; returns rank 0's row (the same on all)."""
    import numpy

    from portacnn import distributed
    from portacnn.backends import synchronize, to_device
    from portacnn.models import lenet
    from portacnn.nn import CrossEntropyLoss
    from portacnn.optim import SGD
    from portacnn.training import LABEL_DTYPE, prepare_images

    rng = numpy.random.default_rng(SEED)
    images = rng.integers(0, 256, (NUM_BATCHES * batch, 1, 28, 28), dtype=numpy.uint8)
    labels = rng.integers(0, 10, NUM_BATCHES * batch)
    model = lenet(seed=SEED, dtype=args.dtype, device=placement)
    distributed.check_parameters(model)
    loss_fn = CrossEntropyLoss(check_labels=False)  # as `portacnn train`: a label check syncs a GPU every step
    optimizer = SGD(model.parameters(), lr=LR, momentum=MOMENTUM)
    in_allreduce = [0.0]

    def step(number):
        start = (number % NUM_BATCHES) * batch
        local = distributed.shard(numpy.arange(start, start + batch))
        x = to_device(prepare_images(images[local], args.dtype), placement)
        y = to_device(labels[local].astype(LABEL_DTYPE), placement)
        loss_fn(model(x), y).backward()
        began = time.perf_counter()
        distributed.allreduce_gradients(model, weight=len(local) / batch)
        in_allreduce[0] += time.perf_counter() - began
        optimizer.step()
        optimizer.zero_grad()

    for number in range(args.warmup):
        step(number)
    synchronize([p.data for p in model.parameters()])
    seconds, waits = [], []
    for _ in range(args.repeats):
        distributed.barrier()
        in_allreduce[0] = 0.0
        began = time.perf_counter()
        for number in range(args.steps):
            step(number)
        synchronize([p.data for p in model.parameters()])
        elapsed = time.perf_counter() - began
        seconds.append(max(distributed.allgather(elapsed)))  # the job goes at its slowest rank's pace
        waits.append(statistics.mean(distributed.allgather(in_allreduce[0])))
    # The allreduce on its own: after a barrier, so no rank waits for another inside it.
    xp = placement.namespace
    alone = 0.0
    for _ in range(args.allreduce_calls):
        for param in model.parameters():
            param.grad = xp.ones_like(param.data)
        distributed.barrier()
        began = time.perf_counter()
        distributed.allreduce_gradients(model)
        synchronize([p.grad for p in model.parameters()])
        alone += time.perf_counter() - began
    alone = max(distributed.allgather(alone / args.allreduce_calls))
    best = statistics.median(seconds)
    step_seconds = best / args.steps
    wait_seconds = statistics.median(waits) / args.steps
    return {
        "ranks": distributed.world_size(), "batch_size": batch, "backend": args.backend, "dtype": args.dtype,
        "images_per_s": batch * args.steps / best, "step_ms": 1e3 * step_seconds,
        "allreduce_ms": 1e3 * alone, "allreduce_share": alone / step_seconds,
        "in_step_allreduce_ms": 1e3 * wait_seconds, "in_step_allreduce_share": wait_seconds / step_seconds,
        "gradient_values": sum(int(numpy.prod(p.data.shape)) for p in model.parameters()),
        "repeat_seconds": seconds,
    }


# --------------------------------------------------------------------------
# launcher


def launch(args, ranks: int, mpiexec: list[str]) -> list[dict]:
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "rows.json"
        command = [*mpiexec[:1], "-n", str(ranks), *mpiexec[3:], sys.executable, os.path.abspath(__file__),
                   "--worker", str(out), "--batch-sizes", ",".join(map(str, args.batch_sizes)),
                   "--backend", args.backend, "--dtype", args.dtype, "--steps", str(args.steps),
                   "--warmup", str(args.warmup), "--repeats", str(args.repeats),
                   "--allreduce-calls", str(args.allreduce_calls)]
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        # Its own process group, so a hung job can be ended whole (mpiexec and every rank).
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                   start_new_session=True)
        try:
            stdout, stderr = process.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.communicate()
            raise SystemExit(f"{ranks} ranks: still running after {args.timeout:.0f}s: {' '.join(command)}") from None
        if process.returncode != 0 or not out.exists():
            raise SystemExit(f"{ranks} ranks failed (exit {process.returncode}):\n{stdout}\n{stderr}")
        return json.loads(out.read_text())


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        from portacnn import distributed

        distributed.init()
        with distributed.guard():
            run_worker(args)
        return 0
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        raise SystemExit("this benchmark needs mpi4py and an mpiexec: pip install -e '.[mpi]'") from None
    from portacnn import distributed

    mpiexec = distributed.mpiexec_command(1)
    if mpiexec is None:
        raise SystemExit("no mpiexec found beside Python or on PATH: pip install -e '.[mpi]'")
    common.check_backends([args.backend])
    started = time.perf_counter()
    machine = common.machine_info([args.backend])
    threads = {"blas_threads_per_rank": 1}
    common.print_header("portacnn data-parallel training on MPI (1 BLAS thread per rank)", machine,
                        {"torch_num_threads": None, "blas": [{"library": "per rank", "num_threads": 1}]})
    rows = []
    for ranks in args.ranks:
        rows.extend(launch(args, ranks, mpiexec))
    single = {row["batch_size"]: row["images_per_s"] for row in rows if row["ranks"] == 1}
    for row in rows:
        row["speedup"] = row["images_per_s"] / single[row["batch_size"]] if row["batch_size"] in single else None
    rows.sort(key=lambda row: (-row["batch_size"], row["ranks"]))
    print(common.format_table(
        ["ranks", "batch", "img/s", "speedup", "step ms", "allreduce ms", "allreduce %", "in-step %"],
        [[row["ranks"], row["batch_size"], row["images_per_s"], row["speedup"], row["step_ms"],
          row["allreduce_ms"] if row["ranks"] > 1 else None,
          100 * row["allreduce_share"] if row["ranks"] > 1 else None,
          100 * row["in_step_allreduce_share"] if row["ranks"] > 1 else None] for row in rows]))
    print(f"\n{args.backend} {args.dtype}; {rows[0]['gradient_values']:,} gradient values in one buffer per step; "
          f"mpiexec: {mpiexec[0]}")
    if args.json:
        common.write_json(args.json, {
            "benchmark": "bench_distributed", "machine": machine, "threads": threads,
            "settings": {k: v for k, v in vars(args).items() if k not in ("json", "worker")},
            "results": rows, "seconds": time.perf_counter() - started,
        })
    return 0


if __name__ == "__main__":
    sys.exit(main())
