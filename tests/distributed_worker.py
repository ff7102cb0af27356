"""One rank of the multi-process checks in test_distributed.py.

Run as ``mpiexec -n 2 python tests/distributed_worker.py MODE ...``.

Modes (each rank writes ``<out>/rank<N>.json`` with what it saw, when it gets that far):

``train CONFIG_JSON OUT``   ``train(TrainConfig(**config, distributed=True))`` with the checkpoint, metrics and
                            plot paths under ``OUT/rank<N>/`` (so the test can see which ranks wrote files);
                            records the final parameters (``OUT/params-rank<N>.npz``), the metrics and every
                            step's shard of the batch. ``CONFIG_JSON`` may hold ``"rank1": {...}``: settings
                            for rank 1 alone.
``cli ARGS...``             ``portacnn train --distributed ARGS`` (``cli.main``).
``fail ARGS...``            the same with an exception injected on rank 1 at its second step: the job must
                            end (not hang) with ``rank 1 failed: ...``.
``nan ARGS...``             the same with rank 1's loss turned into NaN at its second step: every rank must stop
                            with the same ``training diverged on rank 1`` error.
``primitives OUT``          init / rank / shard / allgather / check_parameters / broadcast_parameters /
                            allreduce_gradients on every host backend installed (numpy, array_api_strict, torch),
                            or on CuPy with ``PORTACNN_WORKER_BACKENDS=cupy``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from support import capture_lenets, offline_datasets  # tests/ is this script's folder, so on its path

from portacnn import datasets, distributed


def _offline():
    """As the tests' fixtures do: no downloads, and generated (uncompressed) files skip the md5 check."""
    for name, value in offline_datasets("gz").items():
        setattr(datasets, name, value)


def _record(out: Path, data: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / f"rank{distributed.rank()}.json").write_text(json.dumps(data, indent=1, default=str))


def run_train(config_json: str, out: str) -> None:
    from portacnn.backends import to_numpy
    from portacnn.training import TrainConfig, train

    out = Path(out)
    distributed.init()
    rank = distributed.rank()
    shards = []
    real_shard = distributed.shard

    def recording_shard(items):
        local = real_shard(items)
        shards.append({"batch": np.asarray(items).tolist(), "local": np.asarray(local).tolist()})
        return local

    models = capture_lenets(pytest.MonkeyPatch())  # never undone: the process ends after this run
    distributed.shard = recording_shard
    mine = out / f"rank{rank}"
    options = json.loads(config_json)
    options.update(options.pop(f"rank{rank}", {}))  # e.g. {"rank1": {"seed": 1}}: one rank's own settings
    options.pop("rank0", None), options.pop("rank1", None)
    config = TrainConfig(**options, distributed=True, checkpoint_dir=str(mine / "checkpoints"),
                         metrics_out=str(mine / "metrics.json"), plot=str(mine / "curve.png"))
    metrics = train(config)
    (model,) = models
    np.savez(out / f"params-rank{rank}.npz",
             **{name: to_numpy(param.data) for name, param in model.named_parameters()})
    _record(out, {"rank": rank, "world_size": distributed.world_size(), "metrics": metrics, "shards": shards})


def run_cli(kind: str, args: list[str]) -> int:
    from portacnn import cli
    from portacnn.nn import CrossEntropyLoss

    distributed.init()
    if kind != "cli" and distributed.rank() == 1:
        real_forward = CrossEntropyLoss.forward
        calls = [0]

        def faulty_forward(self, logits, labels):
            loss = real_forward(self, logits, labels)
            calls[0] += 1
            if calls[0] == 2:
                if kind == "fail":
                    raise RuntimeError("injected failure")
                # A NaN loss value whose gradient is the real loss's (d(loss + c)/d(loss) = 1), as the
                # injection was when the loss value and its backward were separate: only the loss diverges,
                # the gradients (and so the other rank) stay finite.
                return loss + float("nan")
            return loss

        CrossEntropyLoss.forward = faulty_forward
    return cli.main(["train", "--distributed", *args])


def _check(condition, message):
    if not condition:
        raise AssertionError(message)


def run_primitives(out: str) -> None:
    from portacnn.backends import get_backend, to_device, to_numpy
    from portacnn.models import lenet

    size = distributed.init()
    rank = distributed.rank()
    _check(size == 2 and distributed.is_distributed(), f"expected 2 ranks, got {size}")
    _check(distributed.allgather(rank * 10) == [0, 10], "allgather")
    _check(distributed.shard(list(range(7))) == [[0, 1, 2], [3, 4, 5, 6]][rank], "shard")
    wanted = os.environ.get("PORTACNN_WORKER_BACKENDS", "numpy,array_api_strict,torch").split(",")
    done = []
    for spec in wanted:
        if not get_backend(spec).is_available():
            continue
        # Different seeds: the checksum must notice, on every rank.
        model = lenet(seed=rank, dtype="float64", device=spec)
        try:
            distributed.check_parameters(model)
            raise AssertionError("check_parameters missed different parameters")
        except distributed.DistributedError as error:
            _check("rank(s) 1 start from other parameters" in str(error), str(error))
        # Same extras but different settings text: noticed too.
        try:
            distributed.check_parameters([], extra=f"settings {rank}")
            raise AssertionError("check_parameters missed different settings")
        except distributed.DistributedError:
            pass
        distributed.broadcast_parameters(model)
        checksum = distributed.check_parameters(model, extra="same settings")
        _check(distributed.allgather(checksum) == [checksum, checksum], "checksums after broadcast")
        for name, param in model.named_parameters():
            reference = dict(lenet(seed=0, dtype="float64").named_parameters())[name].data
            np.testing.assert_array_equal(to_numpy(param.data), reference, err_msg=f"{spec} broadcast {name}")
        # Buffers of another dtype (batch norm's integer num_batches_tracked) travel too, keeping their dtype.
        from portacnn import nn

        normed = nn.Sequential(nn.Conv2d(1, 2, 3, rng=rank, dtype="float64", device=spec),
                               nn.BatchNorm2d(2, dtype="float64", device=spec))
        if rank == 0:
            normed(to_device(np.random.default_rng(0).standard_normal((2, 1, 5, 5)), spec))
        distributed.broadcast_parameters(normed)
        state = {name: to_numpy(value) for name, value in normed.state_dict().items()}
        _check(state["1.num_batches_tracked"].dtype.kind == "i", f"{spec} counter dtype {state['1.num_batches_tracked'].dtype}")
        summary = [float(np.sum(value)) for value in state.values()]
        _check(distributed.allgather(summary)[0] == summary and int(state["1.num_batches_tracked"]) == 1,
               f"{spec} batch-norm state after broadcast: {summary}")

        # Weighted sum of each rank's gradient; rank 1 has no gradient for the last parameter (counts as zero).
        def gradient(r, index, shape):
            return np.random.default_rng(100 * r + index).standard_normal(shape)

        params = model.parameters()
        for index, param in enumerate(params):
            shape = tuple(param.data.shape)
            missing = rank == 1 and index == len(params) - 1
            param.grad = None if missing else to_device(gradient(rank, index, shape), spec)
        weights = (0.25, 0.75)
        distributed.allreduce_gradients(model, weight=weights[rank])
        for index, param in enumerate(params):
            shape = tuple(param.data.shape)
            expected = weights[0] * gradient(0, index, shape)
            if index != len(params) - 1:
                expected = expected + weights[1] * gradient(1, index, shape)
            got = to_numpy(param.grad)
            _check(got.shape == shape, f"{spec} gradient {index} shape {got.shape}")
            np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14, err_msg=f"{spec} gradient {index}")
            # the reduced gradient lives where the parameter does
            _check(type(param.grad) is type(param.data), f"{spec} gradient type {type(param.grad)}")
        # Default weight: the plain average.
        for param in params:
            param.grad = to_device(np.full(tuple(param.data.shape), float(rank + 1)), spec)
        distributed.allreduce_gradients(model)
        for param in params:
            np.testing.assert_allclose(to_numpy(param.grad), 1.5, err_msg=f"{spec} mean")
        done.append(spec)
    _record(Path(out), {"rank": rank, "backends": done})


def main(argv: list[str]) -> int:
    mode, *rest = argv
    _offline()
    if mode in ("cli", "fail", "nan"):
        return run_cli(mode, rest)
    distributed.init()
    # An assertion on one rank must end both, not leave the other waiting in a collective call;
    # a DistributedError is raised by every rank together and ends each normally, with its message.
    with distributed.guard(collective=(distributed.DistributedError,)):
        if mode == "train":
            run_train(*rest)
        elif mode == "primitives":
            run_primitives(*rest)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
