"""Tests for portacnn.distributed and ``portacnn train --distributed``.

The single-process parts (no-op behaviour, sharding, no mpi4py) run in the
pytest process, with mpi4py hidden so pytest itself never starts MPI. The
multi-process checks launch ``mpiexec -n 2 python tests/distributed_worker.py
...`` themselves, each with a timeout so a hung MPI job cannot hang the run;
they are skipped, with the reason, where mpi4py or ``mpiexec`` is missing
(``pip install -e ".[mpi]"`` brings both).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from support import SHARED_MNIST, capture_lenets, offline_environment, write_fake_mnist

from portacnn import distributed
from portacnn.cli import build_parser, main
from portacnn.errors import PortacnnError
from portacnn.models import lenet
from portacnn.training import ConfigError, TrainConfig, train

WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
TIMEOUT = 120  # seconds for any one MPI job; a hang fails the test instead of the whole run
HISTORY_VALUES = ("train_loss", "train_accuracy", "test_loss", "test_accuracy")


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No network, no real home, no launcher variables; a fresh (uninitialised) distributed state."""
    offline_environment(monkeypatch, tmp_path / "home")
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "MPI_LOCALNRANKS"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(distributed, "_state", distributed._State())
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def no_mpi4py(monkeypatch):
    """Make ``import mpi4py`` fail, as where it is not installed."""
    monkeypatch.setitem(sys.modules, "mpi4py", None)
    monkeypatch.setitem(sys.modules, "mpi4py.MPI", None)


def tiny(data_dir, **overrides):
    options = dict(epochs=2, train_size=61, test_size=40, batch_size=15, lr=0.01, momentum=0.9, lr_step=1,
                   lr_gamma=0.5, dtype="float64", data_dir=str(data_dir), quiet=True)
    options.update(overrides)
    return TrainConfig(**options)


# ---------------------------------------------------------------- single process


def test_single_process_without_mpi4py_is_a_no_op(no_mpi4py):
    assert distributed.init() == 1 and distributed.init() == 1
    assert (distributed.rank(), distributed.world_size(), distributed.local_rank()) == (0, 1, 0)
    assert not distributed.is_distributed()
    assert distributed.shard([3, 1, 2]) == [3, 1, 2]
    assert distributed.allgather({"a": 1}) == [{"a": 1}]
    distributed.barrier()
    model = lenet(seed=0, dtype="float64")
    data = [p.data for p in model.parameters()]
    grads = [np.ones(p.data.shape) for p in model.parameters()]
    for param, grad in zip(model.parameters(), grads):
        param.grad = grad
    distributed.allreduce_gradients(model, weight=0.5)
    distributed.broadcast_parameters(model)
    assert all(p.grad is g and p.data is d for p, g, d in zip(model.parameters(), grads, data))
    checksum = distributed.check_parameters(model, extra="settings")
    assert len(checksum) == 64 and checksum == distributed.check_parameters(lenet(seed=0, dtype="float64"), "settings")
    assert checksum != distributed.check_parameters(lenet(seed=1, dtype="float64"), "settings")
    assert checksum != distributed.check_parameters(model, extra="other settings")
    with pytest.raises(ValueError, match="boom"):
        with distributed.guard():
            raise ValueError("boom")
    assert distributed.local_device_spec("cupy") == "cupy"


def test_a_launched_job_without_mpi4py_says_what_to_install(no_mpi4py, monkeypatch):
    monkeypatch.setenv("PMI_SIZE", "2")
    assert distributed.launched_size() == 2
    with pytest.raises(distributed.DistributedError, match=r"one of 2 processes.*pip install 'portacnn\[mpi\]'"):
        distributed.init()


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7])
def test_shards_are_disjoint_contiguous_and_cover(size):
    for n in range(0, 40):
        bounds = [distributed.shard_bounds(n, r, size) for r in range(size)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(bounds[r][1] == bounds[r + 1][0] for r in range(size - 1))
        lengths = [stop - start for start, stop in bounds]
        assert max(lengths) - min(lengths) <= 1
    with pytest.raises(ValueError, match="rank"):
        distributed.shard_bounds(10, 2, 2)


def test_train_distributed_in_one_process_is_plain_training(no_mpi4py, tmp_path):
    data = write_fake_mnist(tmp_path / "mnist")
    plain = train(tiny(data, epochs=1))
    alone = train(tiny(data, epochs=1, distributed=True))
    assert len(plain["history"]) == len(alone["history"]) == 1
    for a, b in zip(plain["history"], alone["history"]):
        assert {k: a[k] for k in HISTORY_VALUES} == {k: b[k] for k in HISTORY_VALUES}


def test_train_refuses_an_mpi_launch_without_distributed(monkeypatch, tmp_path):
    monkeypatch.setenv("PMI_SIZE", "2")
    with pytest.raises(ConfigError, match="--distributed"):
        train(tiny(tmp_path / "nothing-needed"))


def test_cli_has_the_distributed_flag():
    args = build_parser().parse_args(["train", "--distributed", "--batch-size", "64"])
    assert args.distributed is True and args.batch_size == 64
    assert build_parser().parse_args(["train"]).distributed is False


def test_the_library_never_imports_mpi4py():
    code = ("import sys, portacnn, portacnn.training, portacnn.cli, portacnn.nn, portacnn.functional, "
            "portacnn.optim, portacnn.checkpoint, portacnn.distributed; "
            "from portacnn.models import lenet; lenet(); assert 'mpi4py' not in sys.modules, 'imported'; print('ok')")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


# ---------------------------------------------------------------- several processes

HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None


@pytest.fixture(scope="module")
def mpiexec():
    if not HAVE_MPI4PY:
        pytest.skip("mpi4py is not installed (pip install -e '.[mpi]')")
    command = distributed.mpiexec_command(2)
    if command is None:
        pytest.skip("no mpiexec found beside Python or on PATH (pip install -e '.[mpi]' brings MPICH's)")
    return command


def run_mpi(mpiexec, *args, timeout=TIMEOUT, env=None) -> subprocess.CompletedProcess:
    """Run ``mpiexec -n 2 ARGS`` in its own process group; kill the whole group if it outlives ``timeout``."""
    environment = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                       **(env or {}))
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE", "MPI_LOCALNRANKS", "PORTACNN_BACKEND"):
        environment.pop(name, None)
    command = [*mpiexec, *map(str, args)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        stdout, stderr = process.communicate()
        pytest.fail(f"MPI job still running after {timeout}s (killed): {' '.join(command)}\n{stdout}\n{stderr}")
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def worker(mpiexec, *args, **options):
    return run_mpi(mpiexec, sys.executable, WORKER, *args, **options)


TWO_RANK_CONFIG = dict(epochs=2, train_size=61, test_size=40, batch_size=15, lr=0.01, momentum=0.9, lr_step=1,
                       lr_gamma=0.5, dtype="float64", quiet=True)


@pytest.fixture(scope="module")
def two_rank_run(mpiexec, tmp_path_factory):
    """Two ranks train 2 epochs (61 images, global batch 15: shards of 7 and 8, and a last batch of 1, so one
    rank sits a step out) and one process trains the same; both in float64."""
    root = tmp_path_factory.mktemp("two_ranks")
    data = write_fake_mnist(root / "mnist")
    config = dict(TWO_RANK_CONFIG, data_dir=str(data))
    result = worker(mpiexec, "train", json.dumps(config), root / "out")
    assert result.returncode == 0, f"2-rank training failed:\n{result.stdout}\n{result.stderr}"

    with pytest.MonkeyPatch.context() as monkeypatch:
        offline_environment(monkeypatch, root / "home")
        models = capture_lenets(monkeypatch)
        single = train(TrainConfig(**config))
    ranks = [json.loads((root / "out" / f"rank{r}.json").read_text()) for r in (0, 1)]
    params = [dict(np.load(root / "out" / f"params-rank{r}.npz")) for r in (0, 1)]
    return dict(root=root, ranks=ranks, params=params, single=single, single_model=models[0], stdout=result.stdout)


def test_two_ranks_end_with_the_parameters_of_one_process(two_rank_run):
    expected = {name: param.data for name, param in two_rank_run["single_model"].named_parameters()}
    for rank, params in enumerate(two_rank_run["params"]):
        assert params.keys() == expected.keys()
        for name, value in expected.items():
            np.testing.assert_allclose(params[name], value, rtol=1e-10, atol=1e-13, err_msg=f"rank {rank} {name}")
    for name in expected:  # and both ranks hold exactly the same numbers
        np.testing.assert_array_equal(two_rank_run["params"][0][name], two_rank_run["params"][1][name])


def test_two_ranks_report_the_metrics_of_one_process(two_rank_run):
    single = two_rank_run["single"]["history"]
    for report in two_rank_run["ranks"]:
        assert report["world_size"] == 2
        history = report["metrics"]["history"]
        assert len(history) == len(single) == 2
        for got, want in zip(history, single):
            assert got["train_accuracy"] == want["train_accuracy"]
            assert got["test_accuracy"] == want["test_accuracy"]
            np.testing.assert_allclose([got["train_loss"], got["test_loss"]], [want["train_loss"], want["test_loss"]],
                                       rtol=1e-10)


def test_shards_are_disjoint_and_cover_every_epoch(two_rank_run):
    steps = [report["shards"] for report in two_rank_run["ranks"]]
    assert len(steps[0]) == len(steps[1]) == 2 * 5  # 2 epochs of ceil(61 / 15) steps
    seen = []
    for rank0, rank1 in zip(*steps):
        assert rank0["batch"] == rank1["batch"]  # every rank walks the same global batches
        assert not set(rank0["local"]) & set(rank1["local"])
        assert rank0["local"] + rank1["local"] == rank0["batch"]
        seen.extend(rank0["batch"])
    for epoch in (seen[:61], seen[61:]):
        assert sorted(epoch) == list(range(61))
    assert [len(s["local"]) for s in steps[0][:5]] == [7, 7, 7, 7, 0]
    assert [len(s["local"]) for s in steps[1][:5]] == [8, 8, 8, 8, 1]


def test_only_rank_zero_writes_files(two_rank_run):
    out = two_rank_run["root"] / "out"
    assert sorted(p.name for p in (out / "rank0").iterdir()) == ["checkpoints", "curve.png", "metrics.json"]
    assert (out / "rank0" / "checkpoints" / "last.npz").is_file()
    assert not (out / "rank1").exists()
    written = json.loads((out / "rank0" / "metrics.json").read_text())
    assert written["test_accuracy"] == two_rank_run["single"]["test_accuracy"]


@pytest.mark.parametrize("different", [{"seed": 1}, {"epochs": 3}, {"train_size": 50}])
def test_ranks_that_would_train_differently_are_stopped_at_start(mpiexec, tmp_path, different):
    data = write_fake_mnist(tmp_path / "mnist")
    config = dict(TWO_RANK_CONFIG, data_dir=str(data), epochs=1, rank1=different)
    result = worker(mpiexec, "train", json.dumps(config), tmp_path / "out")
    assert result.returncode != 0
    assert "rank(s) 1 start from other parameters or settings than rank 0" in result.stderr
    assert not (tmp_path / "out" / "rank0" / "checkpoints").exists()


def test_collectives_on_host_backends(mpiexec, tmp_path):
    result = worker(mpiexec, "primitives", tmp_path)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    for rank in (0, 1):
        report = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert "numpy" in report["backends"]


def _cli_args(data, tmp_path, *extra):
    return ["--data-dir", data, "--epochs", "1", "--train-size", "60", "--test-size", "20", "--batch-size", "10",
            "--checkpoint-dir", tmp_path / "ck", *extra]


def test_a_failure_on_one_rank_ends_every_rank(mpiexec, tmp_path):
    data = write_fake_mnist(tmp_path / "mnist", n_train=60, n_test=20)
    # Every rank must end promptly, not wait for the failed one: a hang fails inside run_mpi.
    result = worker(mpiexec, "fail", *_cli_args(data, tmp_path, "--quiet"), timeout=TIMEOUT / 2)
    assert result.returncode != 0
    assert "rank 1 failed: RuntimeError: injected failure" in result.stderr
    assert not (tmp_path / "ck" / "last.npz").exists()


def test_a_nan_on_one_rank_stops_every_rank_with_one_message(mpiexec, tmp_path):
    data = write_fake_mnist(tmp_path / "mnist", n_train=60, n_test=20)
    result = worker(mpiexec, "nan", *_cli_args(data, tmp_path, "--quiet"))
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("error: training diverged on rank 1: the loss became nan at epoch 1, step 2") == 1
    assert not (tmp_path / "ck" / "last.npz").exists()


def test_portacnn_train_distributed_prints_once_and_matches_one_process(mpiexec, tmp_path):
    """The real entry point on real MNIST when it is here (else the same CLI on generated data)."""
    if SHARED_MNIST.is_dir():
        data, size = SHARED_MNIST, "300"
        command = [sys.executable, "-m", "portacnn", "train"]
    else:
        data, size = write_fake_mnist(tmp_path / "mnist", n_train=120, n_test=40), "120"
        command = [sys.executable, WORKER, "cli"]
    options = ["--data-dir", data, "--epochs", "1", "--train-size", size, "--test-size", "200", "--batch-size", "32",
               "--lr", "0.05", "--dtype", "float64", "--checkpoint-dir", tmp_path / "ck"]
    result = run_mpi(mpiexec, *command, *([] if command[-1] == "cli" else ["--distributed"]), *options,
                     "--metrics-out", tmp_path / "metrics.json")
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    assert result.stdout.count("final test accuracy:") == 1
    assert result.stdout.count("epoch 1/1:") == 1
    assert "training lenet on mnist on 2 MPI processes" in result.stdout
    assert (tmp_path / "ck" / "last.npz").is_file()
    two = json.loads((tmp_path / "metrics.json").read_text())

    assert main(["train", *map(str, options), "--metrics-out", str(tmp_path / "single.json"), "--quiet"]) == 0
    one = json.loads((tmp_path / "single.json").read_text())
    assert two["test_accuracy"] == one["test_accuracy"]
    np.testing.assert_allclose(two["history"][0]["train_loss"], one["history"][0]["train_loss"], rtol=1e-10)


def test_two_ranks_resume_like_one_process(mpiexec, tmp_path):
    """1 epoch on 2 ranks, then --resume for the 2nd on 2 ranks == 2 epochs in one process."""
    data = write_fake_mnist(tmp_path / "mnist", n_train=60, n_test=20)
    options = ["--data-dir", data, "--train-size", "45", "--test-size", "20", "--batch-size", "10", "--lr", "0.05",
               "--lr-step", "1", "--dtype", "float64", "--quiet"]
    first = worker(mpiexec, "cli", *options, "--epochs", "1", "--checkpoint-dir", tmp_path / "ck")
    assert first.returncode == 0, first.stderr
    second = worker(mpiexec, "cli", *options, "--epochs", "2", "--checkpoint-dir", tmp_path / "ck", "--resume",
                    "--metrics-out", tmp_path / "two.json")
    assert second.returncode == 0, second.stderr
    assert main(["train", *map(str, options), "--epochs", "2", "--checkpoint-dir", str(tmp_path / "ck1"),
                 "--metrics-out", str(tmp_path / "one.json")]) == 0
    two, one = (json.loads((tmp_path / name).read_text())["history"] for name in ("two.json", "one.json"))
    assert [h["test_accuracy"] for h in two] == [h["test_accuracy"] for h in one]
    np.testing.assert_allclose([h["train_loss"] for h in two], [h["train_loss"] for h in one], rtol=1e-10)
    from portacnn.checkpoint import load_checkpoint

    resumed, single = load_checkpoint(tmp_path / "ck" / "last.npz"), load_checkpoint(tmp_path / "ck1" / "last.npz")
    for name, value in single["model"].items():
        np.testing.assert_allclose(resumed["model"][name], value, rtol=1e-10, atol=1e-13, err_msg=name)


def test_bench_distributed_quick(mpiexec, tmp_path):
    """The benchmark runs end to end (no timing is asserted)."""
    script = Path(__file__).resolve().parent.parent / "benchmarks" / "bench_distributed.py"
    command = [sys.executable, script, "--quick", "--batch-sizes", "8", "--steps", "1", "--warmup", "0",
               "--allreduce-calls", "1", "--timeout", str(TIMEOUT), "--json", tmp_path / "bench.json"]
    result = subprocess.run(list(map(str, command)), capture_output=True, text=True, timeout=2 * TIMEOUT + 30)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    data = json.loads((tmp_path / "bench.json").read_text())
    assert [(row["ranks"], row["batch_size"]) for row in data["results"]] == [(1, 8), (2, 8)]
    assert all(row["images_per_s"] > 0 and row["speedup"] > 0 for row in data["results"])
    assert data["results"][1]["allreduce_ms"] > 0 and "allreduce %" in result.stdout


# ---------------------------------------------------------------- GPU (NCCL)


def _gpu_count() -> int:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount()
    except Exception:  # noqa: BLE001 - no CuPy, driver or GPU
        return 0


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["nccl", "host"])
def test_collectives_on_cupy(mpiexec, tmp_path, method):
    """CuPy gradients reduced on the GPUs with NCCL (one GPU per rank), or through host memory."""
    if method == "nccl" and _gpu_count() < 2:
        pytest.skip("NCCL needs a GPU per rank: 2 GPUs")
    result = worker(mpiexec, "primitives", tmp_path,
                    env={"PORTACNN_WORKER_BACKENDS": "cupy", distributed.GPU_ALLREDUCE_VAR: method})
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    for rank in (0, 1):
        assert json.loads((tmp_path / f"rank{rank}.json").read_text())["backends"] == ["cupy"]


@pytest.mark.gpu
def test_two_ranks_on_gpus_match_one_process(mpiexec, tmp_path):
    if _gpu_count() < 2:
        pytest.skip("needs 2 GPUs (one per rank)")
    data = write_fake_mnist(tmp_path / "mnist")
    config = dict(TWO_RANK_CONFIG, data_dir=str(data), backend="cupy")
    result = worker(mpiexec, "train", json.dumps(config), tmp_path / "out")
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    with pytest.MonkeyPatch.context() as monkeypatch:
        models = capture_lenets(monkeypatch)
        train(TrainConfig(**dict(config, backend="numpy")))
    for rank in (0, 1):
        params = np.load(tmp_path / "out" / f"params-rank{rank}.npz")
        for name, param in models[0].named_parameters():
            np.testing.assert_allclose(params[name], param.data, rtol=1e-9, atol=1e-12, err_msg=f"rank {rank} {name}")


def test_errors_are_portacnn_errors():
    assert issubclass(distributed.DistributedError, PortacnnError)
