"""Helpers shared by the benchmark scripts: threads, machine info, timing, tables.

Only the standard library is imported at module level; numpy/torch/cupy are
imported inside the functions that need them.
"""

from __future__ import annotations

import ctypes
import datetime
import json
import os
import platform
import statistics
import sys
import time

# --------------------------------------------------------------------------
# argument parsing


def int_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def str_list(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def usable_cpus() -> int:
    from portacnn.threaded import default_threads  # the count `portacnn train` splits batches by

    return default_threads()


# --------------------------------------------------------------------------
# backends and references


def gpu_available() -> bool:
    """True when portacnn's cupy backend sees a GPU."""
    from portacnn.backends import get_backend

    return get_backend("cupy").is_available()


def default_backends() -> list[str]:
    return ["numpy", "cupy"] if gpu_available() else ["numpy"]


def is_gpu_spec(spec: str) -> bool:
    return spec.startswith("cupy") or ":cuda" in spec or (spec.startswith("jax:") and "gpu" in spec)


def reference_for(spec: str, requested: str | None) -> str:
    """The torch reference for a portacnn backend spec: ``--reference`` if
    given, else ``torch:cuda`` for GPU backends and ``torch`` (CPU) otherwise."""
    if requested:
        return requested
    return "torch:cuda" if is_gpu_spec(spec) else "torch"


def torch_device(reference: str) -> str:
    """``torch`` -> ``cpu``; ``torch:cuda`` / ``torch:cuda:1`` -> ``cuda`` / ``cuda:1``."""
    if reference == "torch":
        return "cpu"
    if not reference.startswith("torch:"):
        raise SystemExit(f"--reference must be torch or torch:cuda[:N], got {reference!r}")
    return reference.split(":", 1)[1]


def check_backends(specs) -> None:
    """Exit with portacnn's own message (what to install) for a backend spec not usable here."""
    from portacnn.backends import parse_spec
    from portacnn.errors import BackendError

    for spec in specs:
        try:
            parse_spec(spec)
        except BackendError as error:
            raise SystemExit(f"--backends {spec}: {error}") from None


def check_references(specs, requested: str | None) -> None:
    """Exit with a clear message when a torch reference device is not usable here."""
    import torch

    for spec in specs:
        device = torch_device(reference_for(spec, requested))
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise SystemExit(f"the reference for {spec} is torch on {device}, but this torch has no CUDA; "
                             "pass --reference torch or install a CUDA build of torch")


def torch_sync(device: str):
    """A function that waits for queued torch work on ``device`` (no-op on CPU)."""
    import torch

    if device.startswith("cuda"):
        return lambda: torch.cuda.synchronize(device)  # that device, not the current one
    return lambda: None


# --------------------------------------------------------------------------
# threads


def _openblas_libraries():
    """OpenBLAS libraries loaded in this process (NumPy's, SciPy's), via /proc/self/maps."""
    try:
        with open("/proc/self/maps") as maps:
            paths = sorted({line.split()[-1] for line in maps
                            if "openblas" in line.lower() and line.split()[-1].startswith("/")})
    except OSError:
        return []
    libraries = []
    for path in paths:
        try:
            libraries.append((path, ctypes.CDLL(path)))
        except OSError:
            pass
    return libraries


def _openblas_function(library, name: str):
    # Plain OpenBLAS, and the scipy-openblas builds NumPy wheels ship (prefixed, 64-bit ints).
    for symbol in (f"openblas_{name}", f"scipy_openblas_{name}64_", f"openblas_{name}64_"):
        if hasattr(library, symbol):
            return getattr(library, symbol)
    return None


def set_threads(n: int) -> None:
    """Use ``n`` threads in torch and in the BLAS NumPy calls (threadpoolctl if
    importable, else OpenBLAS's own setter through ctypes)."""
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[variable] = str(n)  # for libraries not loaded yet
    import numpy  # noqa: F401 - load NumPy's BLAS so it can be limited

    try:
        import threadpoolctl

        # Kept alive for the whole run on purpose.
        set_threads._limiter = threadpoolctl.threadpool_limits(limits=n)
    except ImportError:
        for _, library in _openblas_libraries():
            setter = _openblas_function(library, "set_num_threads")
            if setter is not None:
                setter(n)
    try:
        import torch

        torch.set_num_threads(n)
    except ImportError:
        pass


def thread_info() -> dict:
    """Thread counts actually in force: torch's, and each BLAS library's."""
    info: dict = {}
    try:
        import torch

        info["torch_num_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch_num_threads"] = None
    blas = []
    try:
        import threadpoolctl

        for pool in threadpoolctl.threadpool_info():
            blas.append({"library": pool.get("internal_api"), "path": pool.get("filepath"),
                         "num_threads": pool.get("num_threads"), "source": "threadpoolctl"})
    except ImportError:
        for path, library in _openblas_libraries():
            getter = _openblas_function(library, "get_num_threads")
            blas.append({"library": "openblas", "path": path,
                         "num_threads": getter() if getter is not None else None, "source": "ctypes"})
    info["blas"] = blas
    return info


def describe_threads(info: dict) -> str:
    blas = ", ".join(f"{b['library']}={b['num_threads']}" for b in info["blas"]) or "unknown"
    return f"torch threads {info['torch_num_threads']}, BLAS threads {blas}"


# --------------------------------------------------------------------------
# machine description


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def gpu_name() -> str | None:
    if not gpu_available():
        return None
    import cupy

    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"]
    return name.decode() if isinstance(name, bytes) else str(name)


def backend_versions(specs) -> dict:
    """Library version of each selected portacnn backend (without importing the others)."""
    from portacnn.backends import get_backend

    names = {spec.split(":")[0].strip().lower().replace("-", "_") for spec in specs}
    return {name: get_backend(name).version() for name in sorted(names)}


def machine_info(specs=()) -> dict:
    import numpy

    import portacnn

    try:
        import torch

        torch_version = torch.__version__
    except ImportError:
        torch_version = None
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "hostname": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "load_average": load,
        "numpy": numpy.__version__,
        "torch": torch_version,
        "portacnn": portacnn.__version__,
        "backends": backend_versions(specs),
        "gpu": gpu_name(),
    }


def print_header(title: str, machine: dict, threads: dict) -> None:
    print(f"== {title} ==")
    print(f"{machine['date']}  {machine['cpu_model']}  ({machine['usable_cpus']} usable CPUs)")
    if machine["gpu"]:
        print(f"GPU: {machine['gpu']}")
    print(f"numpy {machine['numpy']}, torch {machine['torch']}, portacnn {machine['portacnn']}; "
          + describe_threads(threads))
    load = machine["load_average"]
    if load:
        note = ""
        if load[0] > machine["usable_cpus"] - 0.5:
            note = ("  ** busy machine: other processes compete for the CPUs, timings are noisy "
                    "(multi-threaded ones most: compare with --threads 1) **")
        print(f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}{note}")
    print()


# --------------------------------------------------------------------------
# timing


def time_calls(fn, calls: int, sync) -> float:
    """Seconds for ``calls`` calls of ``fn``, synchronising before each clock read."""
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync()
    return time.perf_counter() - start


def interleaved(contenders: dict, repeats: int, calls) -> dict:
    """Time contenders A B A B ... ``repeats`` times; returns name -> list of seconds.

    ``contenders`` maps a name to ``(fn, sync)``; each timed repeat is
    ``calls`` calls of ``fn`` (an int, or a dict name -> int). Interleaving
    spreads slow drifts of the machine (other load, clock changes) over all
    contenders alike.
    """
    counts = calls if isinstance(calls, dict) else {name: calls for name in contenders}
    times = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, (fn, sync) in contenders.items():
            times[name].append(time_calls(fn, counts[name], sync))
    return times


def median(values) -> float:
    return statistics.median(values)


def calls_for(fn, sync, target_seconds: float, limit: int = 10_000) -> int:
    """How many calls of ``fn`` take about ``target_seconds`` (at least 1)."""
    one = max(time_calls(fn, 1, sync), 1e-7)
    return max(1, min(limit, int(target_seconds / one)))


# --------------------------------------------------------------------------
# output


def format_table(headers: list[str], rows: list[list]) -> str:
    def cell(value):
        if isinstance(value, float):
            return f"{value:,.3f}" if abs(value) < 10 else f"{value:,.1f}"
        return "-" if value is None else str(value)

    cells = [[cell(v) for v in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(headers, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def write_json(path: str, data: dict) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    with open(path, "w") as out:
        json.dump(data, out, indent=2, default=str)
        out.write("\n")
    print(f"wrote {path}")


def prepare_run(args, name: str, title: str):
    """The set-up both benchmarks share: torch present, threads, backends checked, header printed.

    Returns ``(machine, threads)`` for the report, or ``None`` (after saying
    why on stderr) when PyTorch, the reference, is missing.
    """
    try:
        import torch  # noqa: F401
    except ImportError:
        print(f"{name} needs PyTorch for the reference: pip install torch", file=sys.stderr)
        return None
    set_threads(args.threads)
    if args.backends is None:
        args.backends = default_backends()
    check_backends(args.backends)
    check_references(args.backends, args.reference)
    machine, threads = machine_info(args.backends), thread_info()
    print_header(title, machine, threads)
    return machine, threads
