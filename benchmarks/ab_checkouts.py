"""A/B two checkouts of portacnn on LeNet training steps, in one run.

Each checkout gets its own worker process; the workers take turns running
bursts of training steps (A B A B ... with the order swapped every round), so
both see the same machine load. Both run with one BLAS thread by default
(``--threads``), so a waiting worker's spinning BLAS threads cannot steal
the other's core. The result per
batch size is the median images/s of each side and the ratio new/old, with
the range of the per-round ratios.

    git worktree add /tmp/portacnn-old HEAD~3
    python benchmarks/ab_checkouts.py /tmp/portacnn-old . --batch-sizes 5,64

A worker imports ``portacnn`` and ``portacnn.backends`` from its checkout,
whatever is installed. The training step is written the way each
checkout's API asks: ``loss.backward()`` where ``portacnn.Tensor`` exists,
else the layer-by-layer ``model.backward(loss_fn.backward())``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

NUM_BATCHES = 8


def _import_from(checkout: Path) -> None:
    """Make ``import portacnn`` (and ``portacnn.backends``, which lives in ``backends/``) load ``checkout``."""
    import importlib.abc
    import importlib.util

    class BackendsFinder(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name != "portacnn.backends":
                return None
            return importlib.util.spec_from_file_location(
                name, checkout / "backends" / "__init__.py", submodule_search_locations=[str(checkout / "backends")])

    sys.meta_path.insert(0, BackendsFinder())
    sys.path.insert(0, str(checkout))


def worker(checkout: str, batch: int) -> None:
    _import_from(Path(checkout).resolve())
    import numpy

    import portacnn
    from portacnn.models import lenet
    from portacnn.nn import CrossEntropyLoss
    from portacnn.optim import SGD

    assert Path(portacnn.__file__).resolve().is_relative_to(Path(checkout).resolve()), portacnn.__file__
    model = lenet(seed=0, dtype="float32")
    loss_fn = CrossEntropyLoss(check_labels=False)
    optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = numpy.random.default_rng(0)
    batches = [(rng.standard_normal((batch, 1, 28, 28)).astype(numpy.float32),
                rng.integers(0, 10, batch).astype(numpy.int32)) for _ in range(NUM_BATCHES)]
    tape = hasattr(portacnn, "Tensor")

    def step(x, y):
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        if tape:
            loss.backward()
        else:
            model.backward(loss_fn.backward(), input_grad=False)
        optimizer.step()

    print("ready", flush=True)
    for line in sys.stdin:
        steps = int(line)
        began = time.perf_counter()
        for i in range(steps):
            step(*batches[i % NUM_BATCHES])
        print(time.perf_counter() - began, flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("old", nargs="?", help="checkout A (the reference)")
    parser.add_argument("new", nargs="?", help="checkout B")
    parser.add_argument("--batch-sizes", default="5,64")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--images-per-burst", type=int, default=1280)
    parser.add_argument("--threads", type=int, default=1,
                        help="BLAS threads per worker (default 1: a waiting worker's spinning threads would steal "
                             "the other's cores)")
    parser.add_argument("--worker", nargs=2, metavar=("CHECKOUT", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker[0], int(args.worker[1]))
        return 0

    threads = str(args.threads)
    env = dict(os.environ, OPENBLAS_NUM_THREADS=threads, OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads)
    print(f"A = {args.old}   B = {args.new}   ({threads} BLAS thread(s) each, {args.rounds} rounds)")
    print(f"{'batch':>5} {'A img/s':>9} {'B img/s':>9} {'B/A':>6}  range of B/A per round")
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        steps = max(5, args.images_per_burst // batch)
        workers = [subprocess.Popen([sys.executable, __file__, "--worker", path, str(batch)], env=env, text=True,
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE) for path in (args.old, args.new)]
        try:
            for w in workers:
                assert w.stdout.readline().strip() == "ready"

            def burst(w):
                w.stdin.write(f"{steps}\n")
                w.stdin.flush()
                return float(w.stdout.readline())

            for w in workers:  # warm-up
                burst(w)
            times = [[], []]
            for round_ in range(args.rounds):
                order = (0, 1) if round_ % 2 == 0 else (1, 0)
                for side in order:
                    times[side].append(burst(workers[side]))
        finally:
            for w in workers:
                w.stdin.close()
                w.wait()
        rates = [[steps * batch / t for t in side] for side in times]
        ratios = [b / a for a, b in zip(*rates)]
        a, b = statistics.median(rates[0]), statistics.median(rates[1])
        print(f"{batch:>5} {a:>9.0f} {b:>9.0f} {b / a:>6.3f}  {min(ratios):.3f}-{max(ratios):.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
