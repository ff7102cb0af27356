"""LeNet (or ResNet-8) training and inference throughput: portacnn vs the same network in PyTorch.

``--model resnet8`` measures the zoo's smallest ResNet (option-A shortcuts, BatchNorm) on 1x28x28
inputs instead of LeNet: there the convolutions' GEMMs dominate, so its ratio shows how much time
the rest still costs.

Sections (``--sections``, default all):

train      images/s of forward + backward + SGD (momentum) step, synthetic
           1x28x28 data, portacnn and torch interleaved (A B A B ...), median
           of ``--repeats`` timed repeats of ``--steps`` steps each.
inference  images/s of eval-mode forward passes at batch ``--infer-batch``
           (torch under ``torch.no_grad()``), interleaved the same way.
memory     tracemalloc peak of host (NumPy) arrays during one training step and
           one inference batch, CuPy pool bytes on GPU, and tracemalloc's
           current size after each of a few short "epochs" (growth flagged).
seed       estimated wall time of ``portacnn train --preset seed``.

Examples::

    python benchmarks/bench_train.py --quick
    python benchmarks/bench_train.py --backends numpy,torch --dtypes float32 --json out.json
    python benchmarks/bench_train.py --seed-preset
    python benchmarks/bench_train.py --model resnet8 --sections train --batch-sizes 64 --dtypes float32
    python benchmarks/bench_train.py --backends cupy --reference torch:cuda      # on a GPU machine
    python benchmarks/bench_train.py --backends jax,numpy --sections train        # JAX compiled, as portacnn train runs it

Both libraries get the same number of threads (``--threads``; torch's
intra-op threads and the BLAS threads of NumPy), reported in the header.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import sys
import time
import tracemalloc

import _common as common

SEED = 0
LR, MOMENTUM = 0.01, 0.9
NUM_BATCHES = 8  # distinct synthetic batches cycled through, so nothing is memorised quickly
# Flag memory growth from the first to the last short "epoch" above this fraction and this many bytes.
GROWTH_TOLERANCE, GROWTH_FLOOR_BYTES = 0.05, 1 << 20
SECTIONS = ("train", "inference", "memory", "seed")

MNIST_TEST_SIZE = 10_000  # `portacnn train` evaluates the whole test split after every epoch


# --------------------------------------------------------------------------
# arguments


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", type=common.str_list,
                        help="portacnn backend specs, comma-separated (default: numpy, plus cupy with a GPU)")
    parser.add_argument("--reference",
                        help="torch or torch:cuda[:N] (default: torch:cuda for GPU backends, else torch on the CPU)")
    parser.add_argument("--model", choices=("lenet", "resnet8"), default="lenet",
                        help="the network to time (default: lenet)")
    parser.add_argument("--batch-sizes", type=common.int_list, default=[5, 64, 256])
    parser.add_argument("--dtypes", type=common.str_list, help="default float32,float64 (--quick: float32)")
    parser.add_argument("--repeats", type=int, help="timed repeats per contender (default 5, --quick 3)")
    parser.add_argument("--steps", type=int,
                        help="training steps per timed repeat (default max(10, 1280 // batch); --quick max(2, 128 // batch))")
    parser.add_argument("--warmup", type=int, help="untimed steps before timing (default 3, --quick 1)")
    parser.add_argument("--infer-batch", type=int, default=1000, help="inference batch size (default 1000)")
    parser.add_argument("--infer-steps", type=int, help="inference batches per timed repeat (default 3, --quick 1)")
    parser.add_argument("--memory-batch", type=int, default=64, help="training batch for the memory section")
    parser.add_argument("--epochs", type=int, default=3, help="short 'epochs' in the memory-growth check")
    parser.add_argument("--epoch-steps", type=int, help="steps per memory 'epoch' (default 20, --quick 3)")
    parser.add_argument("--threads", type=int, default=common.usable_cpus(),
                        help="threads for torch and BLAS (default: the usable CPUs, here %(default)s)")
    parser.add_argument("--sections", type=common.str_list, default=list(SECTIONS),
                        help=f"which sections to run (default: {','.join(SECTIONS)})")
    parser.add_argument("--seed-preset", action="store_true", help="only estimate `portacnn train --preset seed`")
    parser.add_argument("--quick", action="store_true", help="small settings that finish in under a minute")
    parser.add_argument("--no-compile", action="store_true",
                        help="run JAX eagerly too (by default its steps are compiled, as `portacnn train` does)")
    parser.add_argument("--split-threads", type=common.int_list, default=[1], metavar="N[,N...]",
                        help="also time the numpy training step with its batch split across N threads "
                             "(portacnn.threaded.ThreadedTrainStep, as `portacnn train --threads N` runs it); "
                             "e.g. 1,2 gives a row for each (default: 1, the plain step)")
    parser.add_argument("--host-allocator", choices=("portacnn", "default"), default="portacnn",
                        help="'portacnn' (the default) keeps freed host memory in the process as `portacnn train` "
                             "does on the numpy backend (portacnn.host_allocator; the reference runs in the same "
                             "process, so it gets the same allocator); 'default' leaves glibc's settings alone")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)

    if args.seed_preset:
        args.sections = ["seed"]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    quick = args.quick
    if args.dtypes is None:
        args.dtypes = ["float32"] if quick else ["float32", "float64"]
    if args.repeats is None:
        args.repeats = 3 if quick else 5
    if args.warmup is None:
        args.warmup = 1 if quick else 3
    if args.infer_steps is None:
        args.infer_steps = 1 if quick else 3
    if args.epoch_steps is None:
        args.epoch_steps = 3 if quick else 20
    return args


def steps_for(args, batch: int) -> int:
    """Training steps per timed repeat: about the same number of images at every batch size."""
    if args.steps is not None:
        return args.steps
    return max(2, 128 // batch) if args.quick else max(10, 1280 // batch)


# --------------------------------------------------------------------------
# the two contenders


def synthetic_batches(batch: int, dtype: str, count: int = NUM_BATCHES):
    """``count`` fixed (images, labels) host batches: images uniform in [0, 1), int32 labels."""
    import numpy

    rng = numpy.random.default_rng(SEED)
    return [(rng.random((batch, 1, 28, 28)).astype(dtype), rng.integers(0, 10, batch).astype(numpy.int32))
            for _ in range(count)]


def cycler(items):
    """A function returning items[0], items[1], ... round and round."""
    state = {"i": -1}

    def next_item():
        state["i"] = (state["i"] + 1) % len(items)
        return items[state["i"]]

    return next_item


def portacnn_model(spec: str, dtype: str, model: str = "lenet"):
    from portacnn.models import lenet, resnet8

    if model == "resnet8":
        return resnet8(in_channels=1, seed=SEED, dtype=dtype, device=spec)
    return lenet(seed=SEED, dtype=dtype, device=spec)


def torch_model(portacnn_model_, dtype: str, device: str, model: str = "lenet"):
    """The same network in PyTorch, starting from portacnn's weights."""
    if model == "lenet":
        return torch_lenet(portacnn_model_, dtype, device)
    import torch

    from portacnn.interop import to_torch_state_dict

    reference = torch_resnet(blocks=1, in_channels=1)
    reference.load_state_dict(to_torch_state_dict(portacnn_model_))
    return reference.to(device=device, dtype=getattr(torch, dtype))


def torch_resnet(blocks: int, in_channels: int, num_classes: int = 10):
    """He et al.'s CIFAR ResNet with option-A shortcuts, named as portacnn's (and Idelbayev's resnet_cifar10)."""
    import torch.nn.functional as F
    from torch import nn

    class PadShortcut(nn.Module):
        def __init__(self, extra):
            super().__init__()
            self.extra = extra

        def forward(self, x):
            return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.shortcut = nn.Sequential() if stride == 1 and cin == cout else PadShortcut(cout - cin)

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            cin = 16
            for stage, width in enumerate((16, 32, 64), start=1):
                layers = []
                for index in range(blocks):
                    layers.append(Block(cin, width, 2 if index == 0 and stage > 1 else 1))
                    cin = width
                setattr(self, f"layer{stage}", nn.Sequential(*layers))
            self.linear = nn.Linear(64, num_classes)

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.layer3(self.layer2(self.layer1(out)))
            return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))

    return ResNet()


def portacnn_train_step(model, spec: str, host_batches, lr=LR, momentum=MOMENTUM, weight_decay=0.0,
                        compile_steps=True, split_threads=1):
    """(step, sync) for the training step exactly as a user writes it; compiled where
    ``portacnn train`` compiles it (JAX), unless ``compile_steps`` is False; with
    ``split_threads`` > 1, its batch split across that many threads."""
    from portacnn.backends import synchronize, to_device
    from portacnn.compiled import CompiledTrainStep, can_compile
    from portacnn.nn import CrossEntropyLoss
    from portacnn.optim import SGD
    from portacnn.threaded import ThreadedTrainStep

    loss_fn = CrossEntropyLoss(check_labels=False)  # as `portacnn train`: a label check syncs a GPU every step
    optimizer = SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    next_batch = cycler([(to_device(x, spec), to_device(y, spec)) for x, y in host_batches])
    model.train()
    # One call does forward, backward and update, as in portacnn.training (compiled, or split across threads).
    whole_step = CompiledTrainStep(model, loss_fn, optimizer) if compile_steps and can_compile(model) else None
    if whole_step is None and split_threads > 1:
        whole_step = ThreadedTrainStep(model, loss_fn, optimizer, threads=split_threads)

    def step():
        x, y = next_batch()
        if whole_step is not None:
            whole_step(x, y)
            return
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def sync():
        synchronize([p.data for p in model.parameters()])

    return step, sync


def portacnn_infer_step(model, spec: str, host_batches, compile_steps=True):
    from portacnn import no_grad
    from portacnn.backends import synchronize, to_device
    from portacnn.compiled import can_compile, compiled_forward

    next_batch = cycler([to_device(x, spec) for x, _ in host_batches])
    model.eval()
    last = []
    forward = compiled_forward(model) if compile_steps and can_compile(model) else None

    def step():
        if forward is not None:
            last[:] = [forward(next_batch())]
            return
        with no_grad():  # as torch's reference
            last[:] = [model(next_batch()).data]

    def sync():
        if last:
            synchronize(last[0])  # JAX can only wait for arrays, not devices

    return step, sync


def torch_lenet(portacnn_model_, dtype: str, device: str):
    """The same LeNet in PyTorch, starting from portacnn's weights."""
    import torch
    from torch import nn

    from portacnn.backends import to_numpy

    model = nn.Sequential(
        nn.Conv2d(1, 20, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(20, 50, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(800, 500), nn.ReLU(), nn.Linear(500, 10),
    )
    # Both Sequentials number their layers alike, so the state-dict names match.
    state = {name: torch.from_numpy(to_numpy(value)) for name, value in portacnn_model_.state_dict().items()}
    model.load_state_dict(state)
    return model.to(device=device, dtype=getattr(torch, dtype))


def torch_batches(host_batches, device: str):
    import torch

    return [(torch.from_numpy(x).to(device), torch.from_numpy(y).long().to(device)) for x, y in host_batches]


def torch_train_step(model, device: str, host_batches, lr=LR, momentum=MOMENTUM):
    import torch
    import torch.nn.functional as F

    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    next_batch = cycler(torch_batches(host_batches, device))
    model.train()

    def step():
        x, y = next_batch()
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step, common.torch_sync(device)


def torch_infer_step(model, device: str, host_batches):
    import torch

    next_batch = cycler([x for x, _ in torch_batches(host_batches, device)])
    model.eval()

    def step():
        with torch.no_grad():
            model(next_batch())

    return step, common.torch_sync(device)


# --------------------------------------------------------------------------
# sections


def supports(spec: str, dtype: str) -> bool:
    from portacnn.backends import parse_spec

    return dtype != "float64" or parse_spec(spec).supports_float64


def compare(spec, reference, dtype, batch, calls, args, kind: str, split_threads: int = 1) -> dict:
    """One interleaved portacnn-vs-torch measurement (``kind``: train or inference)."""
    device = common.torch_device(reference)
    host = synthetic_batches(batch, dtype)
    model = portacnn_model(spec, dtype, args.model)
    ref_model = torch_model(model, dtype, device, args.model)
    if kind == "train":
        ours = portacnn_train_step(model, spec, host, compile_steps=not args.no_compile,
                                   split_threads=split_threads)
        theirs = torch_train_step(ref_model, device, host)
    else:
        ours = portacnn_infer_step(model, spec, host, compile_steps=not args.no_compile)
        theirs = torch_infer_step(ref_model, device, host)
    from portacnn.compiled import can_compile

    compiled = not args.no_compile and can_compile(model)
    label = spec + (" (compiled)" if compiled else f" ({split_threads} threads)" if split_threads > 1 else "")
    # Inference batches are large: a second warm-up call lets the allocator settle.
    warmup = args.warmup if kind == "train" else max(2, args.warmup)
    for fn, sync in (ours, theirs):
        common.time_calls(fn, warmup, sync)
    times = common.interleaved({"portacnn": ours, "reference": theirs}, args.repeats, calls)
    rate = {name: batch * calls / common.median(t) for name, t in times.items()}
    return {
        "backend": label, "reference": reference, "dtype": dtype, "batch_size": batch,
        "steps_per_repeat": calls, "repeats": args.repeats,
        "portacnn_images_per_s": rate["portacnn"], "reference_images_per_s": rate["reference"],
        "ratio": rate["portacnn"] / rate["reference"],
        "portacnn_seconds": times["portacnn"], "reference_seconds": times["reference"],
    }


def run_throughput(args, kind: str, skipped: list) -> list[dict]:
    from portacnn.backends import parse_spec

    batches = args.batch_sizes if kind == "train" else [args.infer_batch]
    rows = []
    for spec in args.backends:
        reference = common.reference_for(spec, args.reference)
        for dtype in args.dtypes:
            if not supports(spec, dtype):
                skipped.append(f"{kind} {spec} {dtype}: the backend has no {dtype}")
                continue
            splits = args.split_threads if kind == "train" and parse_spec(spec).backend == "numpy" else [1]
            for batch, split in itertools.product(batches, splits):
                calls = steps_for(args, batch) if kind == "train" else args.infer_steps
                row = compare(spec, reference, dtype, batch, calls, args, kind, split)
                rows.append(row)
                print(f"  {kind} {row['backend']} {dtype} batch {batch}: portacnn "
                      f"{row['portacnn_images_per_s']:,.0f} img/s, {reference} {row['reference_images_per_s']:,.0f} img/s",
                      file=sys.stderr)
    return rows


def throughput_table(rows: list[dict], title: str) -> str:
    headers = ["backend", "reference", "dtype", "batch", "portacnn img/s", "reference img/s",
               "ratio portacnn/ref"]
    table = [[r["backend"], r["reference"], r["dtype"], r["batch_size"], r["portacnn_images_per_s"],
              r["reference_images_per_s"], r["ratio"]] for r in rows]
    return f"{title}  (ratio > 1: portacnn faster)\n" + common.format_table(headers, table)


def traced_now() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def cupy_pool(spec: str) -> dict | None:
    if not spec.startswith("cupy"):
        return None
    import cupy

    pool = cupy.get_default_memory_pool()
    return {"used_bytes": pool.used_bytes(), "total_bytes": pool.total_bytes()}


def growth_fraction(sizes: list[int]) -> float:
    return (sizes[-1] - sizes[0]) / max(sizes[0], 1) if sizes else 0.0


def grows(sizes: list[int]) -> bool:
    return bool(sizes) and sizes[-1] - sizes[0] > GROWTH_FLOOR_BYTES and growth_fraction(sizes) > GROWTH_TOLERANCE


def measure_memory(spec: str, dtype: str, args) -> dict:
    """tracemalloc (host arrays) around one training step, a few short epochs and one inference batch."""
    gc.collect()
    tracemalloc.start()
    try:
        model = portacnn_model(spec, dtype)
        step, sync = portacnn_train_step(model, spec, synthetic_batches(args.memory_batch, dtype))
        step(); sync()  # the first step creates the gradients and momentum buffers
        before = traced_now()
        tracemalloc.reset_peak()
        step(); sync()
        train_peak = tracemalloc.get_traced_memory()[1]
        train_gpu = cupy_pool(spec)

        per_epoch, gpu_per_epoch = [], []
        for _ in range(args.epochs):
            for _ in range(args.epoch_steps):
                step()
            sync()
            per_epoch.append(traced_now())
            pool = cupy_pool(spec)
            if pool:
                gpu_per_epoch.append(pool["used_bytes"])

        infer_step, infer_sync = portacnn_infer_step(model, spec, synthetic_batches(args.infer_batch, dtype, 1))
        infer_before = traced_now()
        tracemalloc.reset_peak()
        infer_step(); infer_sync()
        infer_peak = tracemalloc.get_traced_memory()[1]
        infer_after = traced_now()
        infer_gpu = cupy_pool(spec)
    finally:
        tracemalloc.stop()
    return {
        "backend": spec, "dtype": dtype, "train_batch_size": args.memory_batch,
        "infer_batch_size": args.infer_batch,
        "host_traced": spec.split(":")[0] in ("numpy", "array_api_strict"),
        "train_step_peak_bytes": train_peak, "train_step_extra_bytes": train_peak - before,
        "train_baseline_bytes": before,
        "epoch_current_bytes": per_epoch, "epoch_growth_fraction": growth_fraction(per_epoch),
        "epoch_growth_flag": grows(per_epoch),
        "epoch_gpu_used_bytes": gpu_per_epoch, "epoch_gpu_growth_flag": grows(gpu_per_epoch),
        "infer_peak_bytes": infer_peak, "infer_extra_bytes": infer_peak - infer_before,
        "infer_retained_bytes": infer_after - infer_before,
        "gpu_pool_after_train_step": train_gpu, "gpu_pool_after_inference": infer_gpu,
    }


def memory_table(rows: list[dict]) -> str:
    mib = 1 / 2**20
    headers = ["backend", "dtype", "train batch", "step peak MiB", "step extra MiB",
               "epochs current MiB", "growth", "infer batch", "infer extra MiB", "kept after infer MiB"]
    table = []
    for r in rows:
        epochs = " ".join(f"{b * mib:.1f}" for b in r["epoch_current_bytes"])
        growth = f"{r['epoch_growth_fraction']:+.1%}" + (" GROWS" if r["epoch_growth_flag"] else "")
        table.append([r["backend"], r["dtype"], r["train_batch_size"], r["train_step_peak_bytes"] * mib,
                      r["train_step_extra_bytes"] * mib, epochs, growth, r["infer_batch_size"],
                      r["infer_extra_bytes"] * mib, r["infer_retained_bytes"] * mib])
    text = ("Memory: tracemalloc of host arrays (NumPy-backed backends only; torch/jax/cupy memory is not traced)\n"
            + common.format_table(headers, table))
    for r in rows:
        if r["epoch_gpu_used_bytes"]:
            used = " ".join(f"{b * mib:.1f}" for b in r["epoch_gpu_used_bytes"])
            flag = " GROWS" if r["epoch_gpu_growth_flag"] else ""
            text += f"\n  {r['backend']} cupy pool used after each epoch: {used} MiB{flag}"
        if not r["host_traced"]:
            text += f"\n  note: {r['backend']} keeps its arrays outside tracemalloc; its numbers are Python objects only"
        for label in ("gpu_pool_after_train_step", "gpu_pool_after_inference"):
            pool = r[label]
            if pool:
                text += (f"\n  {r['backend']} {label}: cupy pool used {pool['used_bytes'] * mib:.1f} MiB, "
                         f"total {pool['total_bytes'] * mib:.1f} MiB")
    return text


def estimate_seed_preset(spec: str, args) -> dict:
    """Time the seed preset's training step (float32, batch 5, host data moved per step as
    `portacnn train` does) and its per-epoch evaluation; extrapolate to the whole run."""
    import numpy

    from portacnn.backends import synchronize, to_device
    from portacnn.nn import CrossEntropyLoss
    from portacnn.optim import SGD
    from portacnn.training import EVAL_BATCH_SIZE, LABEL_DTYPE, PRESETS, evaluate, prepare_images

    preset, dtype = dict(PRESETS["seed"]), "float32"
    batch, train_size = preset["batch_size"], preset.get("train_size") or 60_000
    rng = numpy.random.default_rng(SEED)
    pool = max(args.infer_batch, 20 * batch)  # host uint8 images, like MNIST
    images = rng.integers(0, 256, (pool, 1, 28, 28), dtype=numpy.uint8)
    labels = rng.integers(0, 10, pool).astype(LABEL_DTYPE)
    model = portacnn_model(spec, dtype)
    loss_fn = CrossEntropyLoss(check_labels=False)  # as `portacnn train`: a label check syncs a GPU every step
    optimizer = SGD(model.parameters(), lr=preset["lr"], momentum=preset["momentum"],
                    weight_decay=preset["weight_decay"])
    position = {"i": 0}

    def train_step():
        i = position["i"] = (position["i"] + batch) % (len(labels) - batch)
        x = to_device(prepare_images(images[i:i + batch], dtype), spec)
        y = to_device(labels[i:i + batch], spec)
        loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def eval_batch():  # what `portacnn train` runs after each epoch, on --infer-batch images
        evaluate(model, images[:args.infer_batch], labels[:args.infer_batch])

    def train_sync():
        synchronize([p.data for p in model.parameters()])

    steps = steps_for(args, batch)
    model.train()
    common.time_calls(train_step, args.warmup, train_sync)
    train_time = common.median([common.time_calls(train_step, steps, train_sync) for _ in range(args.repeats)])
    model.eval()
    eval_batch()
    eval_time = common.median([common.time_calls(eval_batch, 1, lambda: None) for _ in range(args.repeats)])
    train_rate, eval_rate = batch * steps / train_time, args.infer_batch / eval_time
    epoch_seconds = train_size / train_rate + MNIST_TEST_SIZE / eval_rate
    return {
        "backend": spec, "dtype": dtype, "preset": preset, "train_images_per_s": train_rate,
        "eval_images_per_s": eval_rate, "eval_batch_size": EVAL_BATCH_SIZE, "epoch_seconds": epoch_seconds,
        "estimated_seconds": preset["epochs"] * epoch_seconds,
    }


def describe_seed(row: dict) -> str:
    p = row["preset"]
    total = row["estimated_seconds"]
    return (f"`portacnn train --preset seed` on {row['backend']} ({row['dtype']}): "
            f"train {row['train_images_per_s']:,.0f} img/s at batch {p['batch_size']}, "
            f"eval {row['eval_images_per_s']:,.0f} img/s at batch {row['eval_batch_size']} -> "
            f"{p['epochs']} x ({p.get('train_size') or 60_000:,} / train + {MNIST_TEST_SIZE:,} / eval) "
            f"= {row['epoch_seconds']:.1f} s/epoch, about {total / 60:.1f} min ({total / 3600:.2f} h) "
            "without data loading and checkpoints")


# --------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    name = {"lenet": "LeNet", "resnet8": "ResNet-8"}[args.model]
    prepared = common.prepare_run(args, "bench_train", f"portacnn {name} training benchmark")
    if prepared is None:
        return 2
    machine, threads = prepared
    if args.host_allocator == "portacnn" and any(spec.split(":")[0] == "numpy" for spec in args.backends):
        from portacnn.host_allocator import keep_freed_host_memory

        tuned = keep_freed_host_memory()
        print("host allocator: " + ("freed memory kept in the process, as `portacnn train` on numpy does "
                                    "(--host-allocator default for glibc's own settings)" if tuned else
                                    "the C library's defaults (not glibc, or PORTACNN_HOST_ALLOCATOR=default)"))
    machine["host_allocator"] = args.host_allocator

    started = time.perf_counter()
    results: dict = {"benchmark": "bench_train", "machine": machine, "threads": threads,
                     "settings": vars(args), "train": [], "inference": [], "memory": [],
                     "seed_preset": [], "skipped": []}
    if "train" in args.sections:
        results["train"] = run_throughput(args, "train", results["skipped"])
        print(throughput_table(results["train"], f"{name} training: forward + backward + SGD(momentum) step") + "\n")
    if "inference" in args.sections:
        results["inference"] = run_throughput(args, "inference", results["skipped"])
        print(throughput_table(results["inference"], f"{name} inference: eval-mode forward (torch.no_grad)") + "\n")
    if "memory" in args.sections:
        results["memory"] = [measure_memory(spec, args.dtypes[0], args) for spec in args.backends]
        print(memory_table(results["memory"]) + "\n")
    if "seed" in args.sections:
        results["seed_preset"] = [estimate_seed_preset(spec, args) for spec in args.backends]
        print("\n".join(describe_seed(row) for row in results["seed_preset"]) + "\n")
    for note in results["skipped"]:
        print(f"skipped: {note}")

    results["seconds"] = time.perf_counter() - started
    print(f"total {results['seconds']:.1f} s")
    if args.json:
        common.write_json(args.json, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
