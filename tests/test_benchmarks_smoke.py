"""The benchmark scripts run end to end on tiny settings and write their JSON.

No timing is asserted: these only check that the scripts work.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def run_script(name: str, tmp_path: Path, *options: str) -> dict:
    out = tmp_path / f"{name}.json"
    command = [sys.executable, str(BENCHMARKS / name), "--quick", "--backends", "numpy", "--threads", "1",
               "--repeats", "1", "--json", str(out), *options]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{name} failed:\n{result.stdout}\n{result.stderr}"
    return json.loads(out.read_text())


def test_bench_train_quick(tmp_path):
    data = run_script(
        "bench_train.py", tmp_path, "--batch-sizes", "5", "--steps", "2", "--warmup", "1",
        "--infer-batch", "20", "--memory-batch", "5", "--epochs", "2", "--epoch-steps", "1",
    )
    assert {"benchmark", "machine", "threads", "settings", "train", "inference", "memory",
            "seed_preset", "skipped", "seconds"} <= set(data)
    assert {"cpu_model", "cpu_count", "numpy", "torch", "date"} <= set(data["machine"])
    assert data["threads"]["torch_num_threads"] == 1
    (train,) = data["train"]
    assert train["backend"] == "numpy" and train["reference"] == "torch"
    assert train["batch_size"] == 5 and train["dtype"] == "float32"
    assert {"portacnn_images_per_s", "reference_images_per_s", "ratio"} <= set(train)
    (infer,) = data["inference"]
    assert infer["batch_size"] == 20
    (memory,) = data["memory"]
    assert len(memory["epoch_current_bytes"]) == 2
    assert {"train_step_peak_bytes", "infer_peak_bytes", "epoch_growth_fraction", "epoch_growth_flag"} <= set(memory)
    (seed,) = data["seed_preset"]
    assert seed["estimated_seconds"] > 0


def test_bench_train_resnet8_against_the_same_torch_resnet(tmp_path):
    data = run_script("bench_train.py", tmp_path, "--model", "resnet8", "--sections", "train,inference",
                      "--batch-sizes", "4", "--steps", "1", "--warmup", "1", "--infer-batch", "6")
    assert data["settings"]["model"] == "resnet8"
    (train,) = data["train"]
    assert train["batch_size"] == 4 and train["ratio"] > 0


def test_bench_train_seed_preset_only(tmp_path):
    data = run_script("bench_train.py", tmp_path, "--seed-preset", "--steps", "2")
    assert data["train"] == [] and data["inference"] == [] and data["memory"] == []
    assert data["seed_preset"][0]["train_images_per_s"] > 0


def test_bench_ops_quick(tmp_path):
    data = run_script("bench_ops.py", tmp_path, "--cases", "lenet", "--min-time", "0.001")
    assert {"benchmark", "machine", "threads", "settings", "ops", "skipped", "seconds"} <= set(data)
    cases = {row["case"] for row in data["ops"]}
    assert cases == {"conv1", "pool1", "conv2", "pool2", "fc1", "fc2"}
    assert {row["pass"] for row in data["ops"]} == {"forward", "backward"}
    for row in data["ops"]:
        assert {"portacnn_ms", "reference_ms", "time_ratio", "speed_ratio", "dtype", "backend"} <= set(row)
