"""Per-op timings: portacnn.functional vs torch.nn.functional, forward and backward.

For each op and shape (LeNet's layers at batch 64, and a few larger ones),
portacnn and torch are timed interleaved (A B A B ...), ``--repeats`` times;
the table shows the median time per call and

    time ratio  = portacnn time / torch time   (> 1: portacnn is slower)
    speed ratio = torch time / portacnn time   (portacnn's throughput as a fraction of torch's)

Backward is ``portacnn.functional.*_backward`` (conv2d_backward rebuilds the
patch matrix from x, as the functional API must) against ``torch.autograd.grad``
of the same output, for the gradients of every input (x, weight, bias).

    python benchmarks/bench_ops.py --quick
    python benchmarks/bench_ops.py --backends numpy,torch --dtypes float32 --json ops.json
    python benchmarks/bench_ops.py --backends cupy --reference torch:cuda   # on a GPU machine
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field

import _common as common

SEED = 0


@dataclass(frozen=True)
class OpCase:
    name: str
    op: str  # conv2d, max_pool2d or linear
    group: str  # lenet or large
    x: tuple
    weight: tuple = ()
    options: dict = field(default_factory=dict)  # conv padding, pool kernel size

    @property
    def shape(self) -> str:
        text = "x".join(map(str, self.x))
        if self.weight:
            text += " w " + "x".join(map(str, self.weight))
        return text + "".join(f" {k}={v}" for k, v in self.options.items())


CASES = (
    OpCase("conv1", "conv2d", "lenet", (64, 1, 28, 28), (20, 1, 5, 5)),
    OpCase("pool1", "max_pool2d", "lenet", (64, 20, 24, 24), options={"kernel_size": 2}),
    OpCase("conv2", "conv2d", "lenet", (64, 20, 12, 12), (50, 20, 5, 5)),
    OpCase("pool2", "max_pool2d", "lenet", (64, 50, 8, 8), options={"kernel_size": 2}),
    OpCase("fc1", "linear", "lenet", (64, 800), (500, 800)),
    OpCase("fc2", "linear", "lenet", (64, 500), (10, 500)),
    OpCase("conv3x3", "conv2d", "large", (32, 64, 32, 32), (128, 64, 3, 3), {"padding": 1}),
    OpCase("pool-large", "max_pool2d", "large", (32, 128, 32, 32), options={"kernel_size": 2}),
    OpCase("fc-large", "linear", "large", (256, 2048), (1024, 2048)),
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", type=common.str_list,
                        help="portacnn backend specs, comma-separated (default: numpy, plus cupy with a GPU)")
    parser.add_argument("--reference",
                        help="torch or torch:cuda[:N] (default: torch:cuda for GPU backends, else torch on the CPU)")
    parser.add_argument("--dtypes", type=common.str_list, help="default float32,float64 (--quick: float32)")
    parser.add_argument("--cases", type=common.str_list,
                        help=f"case names or groups (lenet, large); default all: {','.join(c.name for c in CASES)}")
    parser.add_argument("--repeats", type=int, help="timed repeats per contender (default 7, --quick 3)")
    parser.add_argument("--min-time", type=float,
                        help="seconds each timed repeat aims for (default 0.2, --quick 0.02)")
    parser.add_argument("--threads", type=int, default=common.usable_cpus(),
                        help="threads for torch and BLAS (default: the usable CPUs, here %(default)s)")
    parser.add_argument("--quick", action="store_true", help="small settings that finish in well under a minute")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.dtypes is None:
        args.dtypes = ["float32"] if args.quick else ["float32", "float64"]
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    if args.min_time is None:
        args.min_time = 0.02 if args.quick else 0.2
    wanted = args.cases or [c.name for c in CASES]
    args.selected = [c for c in CASES if c.name in wanted or c.group in wanted]
    unknown = set(wanted) - {c.name for c in CASES} - {c.group for c in CASES}
    if unknown:
        parser.error(f"unknown case(s) {sorted(unknown)}")
    return args


# --------------------------------------------------------------------------
# the calls being timed


def host_inputs(case: OpCase, dtype: str) -> dict:
    """x, weight, bias and the output gradient as host arrays (fixed seed)."""
    import numpy

    rng = numpy.random.default_rng(SEED)
    arrays = {"x": rng.standard_normal(case.x)}
    if case.weight:
        arrays["weight"] = rng.standard_normal(case.weight) / numpy.sqrt(numpy.prod(case.weight[1:]))
        arrays["bias"] = rng.standard_normal(case.weight[0])
    out_shape = tuple(reference_forward(case, {k: _torch_cpu(v) for k, v in arrays.items()}).shape)
    arrays["grad_out"] = rng.standard_normal(out_shape)
    return {k: v.astype(dtype) for k, v in arrays.items()}


def _torch_cpu(array):
    import torch

    return torch.from_numpy(array)


def portacnn_forward(case: OpCase, a: dict):
    from portacnn import functional as F

    if case.op == "conv2d":
        return F.conv2d(a["x"], a["weight"], a["bias"], **case.options)
    if case.op == "max_pool2d":
        return F.max_pool2d(a["x"], **case.options)
    return F.linear(a["x"], a["weight"], a["bias"])


def portacnn_backward(case: OpCase, a: dict):
    from portacnn import functional as F

    if case.op == "conv2d":
        return F.conv2d_backward(a["grad_out"], a["x"], a["weight"], **case.options)
    if case.op == "max_pool2d":
        return F.max_pool2d_backward(a["grad_out"], a["x"], **case.options)
    return F.linear_backward(a["grad_out"], a["x"], a["weight"])


def reference_forward(case: OpCase, t: dict):
    import torch.nn.functional as F

    if case.op == "conv2d":
        return F.conv2d(t["x"], t["weight"], t["bias"], **case.options)
    if case.op == "max_pool2d":
        return F.max_pool2d(t["x"], **case.options)
    return F.linear(t["x"], t["weight"], t["bias"])


def portacnn_calls(case: OpCase, host: dict, spec: str):
    """(forward, backward) contenders ``(fn, sync)`` for portacnn on ``spec``."""
    from portacnn.backends import synchronize, to_device

    a = {k: to_device(v, spec) for k, v in host.items()}

    def contender(compute):
        last = []

        def fn():
            last[:] = [compute(case, a)]

        def sync():
            if last:
                result = last[0] if isinstance(last[0], tuple) else (last[0],)
                synchronize([r for r in result if r is not None])

        return fn, sync

    return contender(portacnn_forward), contender(portacnn_backward)


def reference_calls(case: OpCase, host: dict, device: str):
    """(forward, backward) contenders for torch: no_grad forward, and autograd.grad of a kept graph."""
    import torch

    t = {k: torch.from_numpy(v).to(device) for k, v in host.items()}
    sync = common.torch_sync(device)

    def forward():
        with torch.no_grad():
            reference_forward(case, t)

    inputs = [t[k].requires_grad_() for k in ("x", "weight", "bias") if k in t]
    out = reference_forward(case, t)

    def backward():
        torch.autograd.grad(out, inputs, t["grad_out"], retain_graph=True)

    return (forward, sync), (backward, sync)


# --------------------------------------------------------------------------


def measure(case: OpCase, spec: str, reference: str, dtype: str, args) -> list[dict]:
    host = host_inputs(case, dtype)
    ours = portacnn_calls(case, host, spec)
    theirs = reference_calls(case, host, common.torch_device(reference))
    rows = []
    for pass_name, mine, ref in (("forward", ours[0], theirs[0]), ("backward", ours[1], theirs[1])):
        contenders = {"portacnn": mine, "reference": ref}
        for fn, sync in contenders.values():
            common.time_calls(fn, 1, sync)  # warm-up
        calls = {name: common.calls_for(fn, sync, args.min_time) for name, (fn, sync) in contenders.items()}
        times = common.interleaved(contenders, args.repeats, calls)
        per_call = {name: common.median(t) / calls[name] for name, t in times.items()}
        rows.append({
            "case": case.name, "op": case.op, "group": case.group, "shape": case.shape,
            "backend": spec, "reference": reference, "dtype": dtype, "pass": pass_name,
            "portacnn_ms": per_call["portacnn"] * 1e3, "reference_ms": per_call["reference"] * 1e3,
            "time_ratio": per_call["portacnn"] / per_call["reference"],
            "speed_ratio": per_call["reference"] / per_call["portacnn"],
            "calls": calls, "repeats": args.repeats,
        })
    return rows


def table(rows: list[dict]) -> str:
    headers = ["op", "case", "shape", "backend", "dtype", "pass", "portacnn ms", "torch ms",
               "time pc/torch", "speed pc/torch"]
    cells = [[r["op"], r["case"], r["shape"], r["backend"], r["dtype"], r["pass"], r["portacnn_ms"],
              r["reference_ms"], r["time_ratio"], r["speed_ratio"]] for r in rows]
    return ("Ops: median time per call. time pc/torch = portacnn time / torch time (> 1: portacnn slower); "
            "speed pc/torch = its inverse (portacnn throughput / torch throughput)\n"
            + common.format_table(headers, cells))


def main(argv=None) -> int:
    args = parse_args(argv)
    prepared = common.prepare_run(args, "bench_ops", "portacnn op benchmark (vs torch.nn.functional)")
    if prepared is None:
        return 2
    machine, threads = prepared

    from portacnn.backends import parse_spec

    started = time.perf_counter()
    rows, skipped = [], []
    for spec in args.backends:
        reference = common.reference_for(spec, args.reference)
        for dtype in args.dtypes:
            if dtype == "float64" and not parse_spec(spec).supports_float64:
                skipped.append(f"{spec} {dtype}: the backend has no {dtype}")
                continue
            for case in args.selected:
                rows.extend(measure(case, spec, reference, dtype, args))
                print(f"  {case.name} {spec} {dtype}: done", file=sys.stderr)
    print(table(rows))
    for note in skipped:
        print(f"skipped: {note}")
    seconds = time.perf_counter() - started
    print(f"\ntotal {seconds:.1f} s")
    if args.json:
        settings = {k: v for k, v in vars(args).items() if k != "selected"}
        settings["cases"] = [c.name for c in args.selected]
        common.write_json(args.json, {"benchmark": "bench_ops", "machine": machine, "threads": threads,
                                      "settings": settings, "ops": rows, "skipped": skipped, "seconds": seconds})
    return 0


if __name__ == "__main__":
    sys.exit(main())
