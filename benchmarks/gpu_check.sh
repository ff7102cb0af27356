#!/usr/bin/env bash
# One command for a GPU machine: the gpu-marked tests, then the benchmarks on
# CuPy with torch:cuda as the reference (LeNet, the ops, ResNet-8), and JAX on
# the GPU compiled and eager where a CUDA jaxlib is installed. Everything (logs, JSON, summary) goes
# into one folder:
#
#     bash benchmarks/gpu_check.sh [OUT_DIR]        # default: gpu-results/
#
# Sized for under 5 minutes. A failing stage is recorded and the next one still
# runs; the exit status is non-zero if any stage failed.
#
# Overrides (environment): PYTHON (default python), BACKENDS (default cupy),
# REFERENCE (default torch:cuda), TEST_TIMEOUT / TRAIN_TIMEOUT / OPS_TIMEOUT
# (seconds per stage). A CPU-only dry run of this script:
#     BACKENDS=numpy REFERENCE=torch bash benchmarks/gpu_check.sh /tmp/gpu-dry-run
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-gpu-results}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
PYTHON="${PYTHON:-python}"
BACKENDS="${BACKENDS:-cupy}"
REFERENCE="${REFERENCE:-torch:cuda}"
TEST_TIMEOUT="${TEST_TIMEOUT:-120}"
TRAIN_TIMEOUT="${TRAIN_TIMEOUT:-100}"
OPS_TIMEOUT="${OPS_TIMEOUT:-60}"
cd "$REPO"
export PYTHONUNBUFFERED=1  # a stage cut off by its timeout still leaves its output so far

declare -A STATUS=()
say() { echo "[gpu_check] $*" | tee -a "$OUT/gpu_check.log"; }

# Run a stage with a time limit; record its exit status instead of stopping.
stage() {
    local name="$1" limit="$2"
    shift 2
    say "$name: $*"
    local rc=0
    timeout --kill-after=10 "$limit" "$@" >"$OUT/$name.log" 2>"$OUT/$name.err" || rc=$?
    STATUS[$name]=$rc
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then
        say "$name: TIMED OUT after ${limit}s (output: $OUT/$name.log, $name.err)"
    else
        say "$name: exit $rc (output: $OUT/$name.log, $name.err)"
    fi
}

# --- environment ------------------------------------------------------------
{
    date -u +"%Y-%m-%dT%H:%M:%SZ"
    git -C "$REPO" rev-parse HEAD 2>/dev/null || true
    nvidia-smi 2>&1 || echo "nvidia-smi: not available"
} >"$OUT/environment.txt"

# portacnn must be importable as a package (pyproject maps backends/ to
# portacnn.backends, so a plain PYTHONPATH=repo does not work).
if ! "$PYTHON" -c "import portacnn.backends" 2>/dev/null \
        || { [[ "$BACKENDS" == *cupy* ]] && ! "$PYTHON" -c "import cupy" 2>/dev/null; }; then
    say "installing: pip install -e .[cuda12] (log: $OUT/pip-install.log)"
    if ! "$PYTHON" -m pip install -e ".[cuda12]" >"$OUT/pip-install.log" 2>&1; then
        say "pip install failed (no network or wheels?); see $OUT/pip-install.log"
    fi
fi
if ! "$PYTHON" -c "import portacnn.backends" 2>/dev/null; then
    # Last resort without pip: a folder of links laid out like the installed package.
    SHIM="$OUT/.portacnn-path"
    rm -rf "$SHIM" && mkdir -p "$SHIM/portacnn"
    for f in "$REPO"/portacnn/*.py; do ln -s "$f" "$SHIM/portacnn/"; done
    ln -s "$REPO/backends" "$SHIM/portacnn/backends"
    export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
    say "portacnn not installed: using links in $SHIM on PYTHONPATH"
fi
"$PYTHON" -m pip freeze >"$OUT/pip-freeze.txt" 2>&1 || true
"$PYTHON" - >>"$OUT/environment.txt" 2>&1 <<'EOF' || true
import portacnn
print("backends:", [(b.name, b.version, b.devices) for b in portacnn.available_backends()])
try:
    import torch
    print("torch", torch.__version__, "cuda available:", torch.cuda.is_available())
except ImportError:
    print("torch: not installed")
EOF
if [[ "$REFERENCE" == torch:cuda* ]] && ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    say "torch has no CUDA here: using the CPU torch reference instead of $REFERENCE"
    REFERENCE=torch
fi

# --- tests ------------------------------------------------------------------
stage tests "$TEST_TIMEOUT" "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider --junitxml="$OUT/tests.xml"

# --- benchmarks -------------------------------------------------------------
stage bench_train "$TRAIN_TIMEOUT" "$PYTHON" benchmarks/bench_train.py \
    --backends "$BACKENDS" --reference "$REFERENCE" --batch-sizes 5,64,256 --dtypes float32,float64 \
    --repeats 3 --warmup 3 --json "$OUT/bench_train.json"
stage bench_ops "$OPS_TIMEOUT" "$PYTHON" benchmarks/bench_ops.py \
    --backends "$BACKENDS" --reference "$REFERENCE" --dtypes float32,float64 \
    --repeats 5 --min-time 0.05 --json "$OUT/bench_ops.json"
# The zoo's smallest ResNet (BatchNorm, residual adds): GEMM-bound, so it shows what the rest costs on a GPU.
stage bench_resnet8 "$TRAIN_TIMEOUT" "$PYTHON" benchmarks/bench_train.py --model resnet8 \
    --backends "$BACKENDS" --reference "$REFERENCE" --sections train --batch-sizes 64,256 --dtypes float32 \
    --repeats 3 --warmup 3 --json "$OUT/bench_resnet8.json"
# JAX on the GPU, where a CUDA jaxlib is installed: each step compiled (as `portacnn train` runs it), then eager.
STAGES=(tests bench_train bench_ops bench_resnet8)
if "$PYTHON" -c "import jax, sys; sys.exit(not jax.devices('gpu'))" 2>/dev/null; then
    stage bench_jax_compiled "$TRAIN_TIMEOUT" "$PYTHON" benchmarks/bench_train.py \
        --backends jax:gpu --reference "$REFERENCE" --sections train,inference --batch-sizes 5,64,256 \
        --dtypes float32 --repeats 3 --warmup 3 --json "$OUT/bench_jax_compiled.json"
    stage bench_jax_eager "$TRAIN_TIMEOUT" "$PYTHON" benchmarks/bench_train.py --no-compile \
        --backends jax:gpu --reference "$REFERENCE" --sections train --batch-sizes 64 --steps 5 \
        --dtypes float32 --repeats 3 --warmup 2 --json "$OUT/bench_jax_eager.json"
    STAGES+=(bench_jax_compiled bench_jax_eager)
else
    say "jax has no GPU here (a CUDA jaxlib is not installed): the JAX stages are skipped"
fi

# --- summary ----------------------------------------------------------------
{
    echo "== gpu_check summary ($(date -u +"%Y-%m-%dT%H:%M:%SZ")) =="
    grep -E "NVIDIA|Driver|backends:|torch " "$OUT/environment.txt" || true
    for name in "${STAGES[@]}"; do
        case "${STATUS[$name]}" in
            0) echo "$name: ok" ;;
            124|137) echo "$name: TIMED OUT (partial output below)" ;;
            *) echo "$name: FAILED (exit ${STATUS[$name]})" ;;
        esac
    done
    echo
    echo "-- tests --"
    tail -n 3 "$OUT/tests.log"
    [[ "${STATUS[tests]}" -eq 0 ]] || tail -n 15 "$OUT/tests.err"
    for name in "${STAGES[@]:1}"; do
        echo
        echo "-- $name --"
        cat "$OUT/$name.log"
        [[ "${STATUS[$name]}" -eq 0 ]] || tail -n 15 "$OUT/$name.err"
    done
    echo
    echo "all results in $OUT"
} | tee "$OUT/summary.txt"

failed=0
for name in "${STAGES[@]}"; do
    [[ "${STATUS[$name]}" -eq 0 ]] || failed=1
done
exit $failed
