"""The ``portacnn`` command line: train, evaluate, predict, backends, parity, export.

Run ``portacnn COMMAND --help`` (or ``python -m portacnn COMMAND --help``)
for each command's flags. Errors portacnn raises on purpose print as
``error: <message>`` on stderr with exit status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy

from .errors import PortacnnError

__all__ = ["main", "build_parser", "load_digit_image", "load_image"]


# --------------------------------------------------------------------------
# train


def _add_train(subparsers) -> None:
    from .datasets import DATASETS
    from .models import available, recipe_of
    from .training import DEFAULT_PRESET, OPTIMIZERS, PRESETS, SCHEDULES

    def describe(values):
        return ", ".join(f"{name.replace('_', ' ')} {'all' if value is None else value}" for name, value in values.items())

    recipes = [f"{name}: {describe(recipe_of(name))}" for name in available() if recipe_of(name)]
    parser = subparsers.add_parser(
        "train", help="train a model (LeNet by default) on a dataset (MNIST by default)",
        description="Train a model on a dataset. Flags left out take the recipe's value: --preset's if given, "
                    f"else the model's own recipe, else the {DEFAULT_PRESET!r} preset.\nPresets:\n  "
                    + "\n  ".join(f"{name}: {describe(values)}" for name, values in PRESETS.items())
                    + ("\nModel recipes:\n  " + "\n  ".join(recipes) if recipes else ""),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="lenet", help=f"architecture: {', '.join(available())} (default: lenet)")
    parser.add_argument("--dataset", default="mnist", help=f"dataset: {', '.join(DATASETS)} (default: mnist)")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help=f"hyperparameter preset (default: the model's recipe, else {DEFAULT_PRESET})")
    parser.add_argument("--backend", help="backend spec, e.g. numpy, torch:cuda:0, cupy:0, jax:cpu "
                                          "(default: $PORTACNN_BACKEND or numpy)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--optimizer", choices=tuple(OPTIMIZERS), help="optimizer (default: sgd)")
    parser.add_argument("--lr", type=float, help="initial (peak) learning rate")
    parser.add_argument("--momentum", type=float, help="momentum (sgd, rmsprop)")
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--lr-schedule", dest="scheduler", choices=SCHEDULES,
                        help="step: x --lr-gamma every --lr-step epochs; cosine: anneal to 0, step by step; "
                             "onecycle: PyTorch's OneCycleLR; constant (default: step)")
    parser.add_argument("--lr-step", type=int, help="with --lr-schedule step: multiply the rate by --lr-gamma "
                                                    "every N epochs")
    parser.add_argument("--lr-gamma", type=float)
    parser.add_argument("--warmup", type=int, metavar="EPOCHS", help="epochs of linear learning-rate warm-up")
    parser.add_argument("--label-smoothing", type=float, help="cross-entropy label smoothing in [0, 1)")
    parser.add_argument("--augment", action=argparse.BooleanOptionalAction,
                        help="random crops with padding (and horizontal flips on CIFAR) of every training batch")
    parser.add_argument("--normalize", action=argparse.BooleanOptionalAction,
                        help="standardise each channel with the dataset's mean and std")
    parser.add_argument("--train-size", type=int, help="use the first N training images")
    parser.add_argument("--test-size", type=int, help="evaluate on the first N test images (default: all)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the shuffling (default: 0)")
    parser.add_argument("--data-dir", help="the dataset's folder; it must exist unless --download is given "
                                           "(default: the dataset's cache folder, e.g. $PORTACNN_DATA or "
                                           "~/.cache/portacnn/mnist for MNIST, downloaded into if missing)")
    parser.add_argument("--download", action="store_true",
                        help="create --data-dir if needed and download missing dataset files into it")
    parser.add_argument("--checkpoint-dir", default="checkpoints",
                        help="write <dir>/last.npz after every epoch (default: ./checkpoints)")
    parser.add_argument("--resume", action="store_true", help="continue from <checkpoint-dir>/last.npz")
    parser.add_argument("--plot", metavar="PATH", help="write loss/accuracy curves as a PNG (needs matplotlib)")
    parser.add_argument("--metrics-out", metavar="PATH", help="write the metrics as JSON")
    parser.add_argument("--quiet", action="store_true",
                        help="no progress bar or per-epoch lines: only the final result line")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="run every step eagerly, op by op, even where the backend can compile a whole step "
                             "into one function (JAX compiles by default)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="split each training batch across N threads (NumPy releases the GIL in its kernels, "
                             "so the threads share the cores' elementwise work); default: one per usable CPU on "
                             "the numpy backend while each gets at least 32 images, else 1")
    parser.add_argument("--distributed", action="store_true",
                        help="data-parallel across the processes of an MPI job: mpiexec -n N portacnn train "
                             "--distributed ... (needs mpi4py: pip install 'portacnn[mpi]'); --batch-size stays the "
                             "global batch; rank 0 alone prints and writes files")
    parser.set_defaults(handler=_run_train)


def _run_train(args) -> int:
    from .training import TrainConfig, train

    config = TrainConfig(
        model=args.model, dataset=args.dataset, optimizer=args.optimizer, scheduler=args.scheduler,
        backend=args.backend, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, lr_step=args.lr_step, lr_gamma=args.lr_gamma, warmup=args.warmup,
        label_smoothing=args.label_smoothing, augment=args.augment, normalize=args.normalize,
        train_size=args.train_size, test_size=args.test_size, dtype=args.dtype, seed=args.seed,
        data_dir=args.data_dir, download=True if args.download else None, checkpoint_dir=args.checkpoint_dir,
        resume=args.resume, plot=args.plot, metrics_out=args.metrics_out, quiet=args.quiet, preset=args.preset,
        distributed=args.distributed, compile=args.compile, threads=args.threads)
    metrics = train(config)
    if _lead():
        accuracy, epochs = metrics["test_accuracy"], len(metrics["history"])
        if accuracy is None:
            print("no epoch was trained")
        else:
            print(f"final test accuracy: {accuracy:.4f} ({config.model_name} on {config.dataset}, "
                  f"{epochs} epoch{'' if epochs == 1 else 's'}, {metrics['wall_seconds']:.1f}s)")
        if not args.quiet:
            for label, path in (("checkpoint", config.checkpoint_path), ("metrics", args.metrics_out),
                                ("plot", args.plot)):
                if path:
                    print(f"{label}: {path}")
    return 0


# --------------------------------------------------------------------------
# evaluate


def _checkpoint_file(path: str) -> Path:
    from .checkpoint import LAST

    candidate = Path(path)
    return candidate / LAST if candidate.is_dir() else candidate


def _load_model(args):
    from .checkpoint import build_model, load_checkpoint

    checkpoint = load_checkpoint(_checkpoint_file(args.checkpoint))
    return checkpoint, build_model(checkpoint, device=args.backend)


def _add_evaluate(subparsers) -> None:
    from .datasets import DATASETS
    from .training import EVAL_BATCH_SIZE

    parser = subparsers.add_parser("evaluate", help="test accuracy, per-class accuracy and confusion matrix",
                                   description="Evaluate a checkpoint on the test split of the dataset it was "
                                               "trained on (or --dataset).")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="a .npz checkpoint (or a checkpoint folder: its last.npz)")
    parser.add_argument("--backend", help="backend spec (default: $PORTACNN_BACKEND or numpy)")
    parser.add_argument("--dataset", help=f"dataset to test on: {', '.join(DATASETS)} (default: the one the "
                                          "checkpoint was trained on, else mnist)")
    parser.add_argument("--data-dir", help="the dataset's folder; it must exist unless --download is given "
                                           "(default: its cache folder, e.g. $PORTACNN_DATA or ~/.cache/portacnn/mnist)")
    parser.add_argument("--download", action="store_true", help="download missing dataset files (into --data-dir)")
    parser.add_argument("--test-size", type=int, help="use the first N test images (default: all)")
    parser.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE,
                        help=f"images per forward pass (default {EVAL_BATCH_SIZE})")
    parser.set_defaults(handler=_run_evaluate)


def confusion_matrix(labels, predictions, num_classes: int = 10) -> numpy.ndarray:
    """Counts of (true class, predicted class) pairs: rows are true classes."""
    matrix = numpy.zeros((num_classes, num_classes), dtype=numpy.int64)
    numpy.add.at(matrix, (numpy.asarray(labels), numpy.asarray(predictions)), 1)
    return matrix


def _trained_on(checkpoint) -> dict:
    """What the checkpoint's training fed the model: dataset, input shape (C, H, W) and normalization."""
    config = checkpoint.get("config") or {}
    dataset = config.get("dataset") or "mnist"
    from .datasets import dataset_info

    info = dataset_info(dataset)
    return {"dataset": dataset, "info": info, "normalization": config.get("normalization"),
            "input_shape": tuple(config.get("input_shape") or (info.in_channels, *info.image_size))}


def _run_evaluate(args) -> int:
    from .datasets import dataset_info, load_dataset
    from .training import evaluate

    checkpoint, model = _load_model(args)
    trained_on = _trained_on(checkpoint)
    info = dataset_info(args.dataset) if args.dataset else trained_on["info"]
    images, labels = load_dataset(info.name, "test", root=args.data_dir, download=True if args.download else None)
    if args.test_size is not None:
        if args.test_size < 1:
            raise PortacnnError(f"--test-size must be positive, got {args.test_size}")
        images, labels = images[:args.test_size], labels[:args.test_size]
    loss, accuracy, predictions = evaluate(model, images, labels, batch_size=args.batch_size,
                                           normalization=trained_on["normalization"])
    matrix = confusion_matrix(labels, predictions, max(info.num_classes, int(predictions.max()) + 1))
    parameters = model.parameters()[0].data
    from .backends import dtype_name, placement_of

    dtype = dtype_name(parameters)

    print(f"checkpoint: {checkpoint['path']} ({checkpoint['architecture']}, epoch {checkpoint['epoch']}, {dtype}) "
          f"on {placement_of(parameters).spec}")
    print(f"test images: {len(labels)} ({info.name})")
    print(f"test loss: {loss:.4f}")
    print(f"test accuracy: {accuracy:.4f} ({int(numpy.trace(matrix))}/{len(labels)})")
    print()
    names = list(info.class_names) + [str(i) for i in range(len(info.class_names), matrix.shape[0])]
    name_width = max(5, *(len(name) for name in names))
    print("per-class accuracy:")
    print(f"  {'class':>{name_width}}  {'accuracy':>8}  {'correct':>7}  {'count':>5}")
    for digit in range(matrix.shape[0]):
        count = int(matrix[digit].sum())
        right = int(matrix[digit, digit])
        shown = f"{right / count:.4f}" if count else "-"
        print(f"  {names[digit]:>{name_width}}  {shown:>8}  {right:>7}  {count:>5}")
    print()
    print("confusion matrix (rows: true class, columns: predicted class, by index):")
    width = max(4, len(str(int(matrix.max()))) + 1)
    print("  true\\pred" + "".join(f"{d:>{width}}" for d in range(matrix.shape[1])))
    for digit in range(matrix.shape[0]):
        print(f"  {digit:>9}" + "".join(f"{int(v):>{width}}" for v in matrix[digit]))
    return 0


# --------------------------------------------------------------------------
# predict


def _require_pillow():
    try:
        import PIL  # noqa: F401
    except ImportError:
        raise PortacnnError("predict needs Pillow to read images, which is not installed; install it with: "
                            "pip install 'portacnn[image]' (or pip install pillow)") from None


def load_digit_image(path) -> numpy.ndarray:
    """One image file as a (28, 28) float64 array in [0, 1], white digit on black like MNIST.

    The image is converted to grayscale and resized to 28x28 (Lanczos). When
    its mean brightness is above 0.5 it is taken to be a dark digit on a light
    background and inverted. No cropping or centring is done: for good
    results the digit should fill roughly the middle 20x20 pixels, as in MNIST.
    """
    return load_image(path, (1, 28, 28))[0]


def load_image(path, shape) -> numpy.ndarray:
    """One image file as a float64 array of ``shape`` (C, H, W) in [0, 1].

    One channel: grayscale, inverted when mostly light (as :func:`load_digit_image`);
    three: RGB as it is. Resized to H x W (Lanczos).
    """
    _require_pillow()
    from PIL import Image

    channels, height, width = shape
    if channels not in (1, 3):
        raise PortacnnError(f"predict reads grayscale or RGB images, but the model takes {channels} channels")
    with Image.open(path) as image:
        converted = image.convert("L" if channels == 1 else "RGB")
        if converted.size != (width, height):
            converted = converted.resize((width, height), Image.Resampling.LANCZOS)
        pixels = numpy.asarray(converted, dtype=numpy.float64) / 255.0
    if channels == 1:
        return (1.0 - pixels if pixels.mean() > 0.5 else pixels)[None]
    return pixels.transpose(2, 0, 1).copy()


def _add_predict(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict", help="classify image files with a checkpoint",
        description="Classify images. Each is resized to the model's input (28x28 for MNIST-trained models) and "
                    "scaled to [0, 1]; for a one-channel model it is made grayscale, and an image brighter than 0.5 "
                    "on average (dark digit on white) is inverted to match MNIST's white digit on black. Prints "
                    "'path: class (probability)', plus the class name where the dataset has names. Needs Pillow.")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="a .npz checkpoint (or a checkpoint folder: its last.npz)")
    parser.add_argument("--backend", help="backend spec (default: $PORTACNN_BACKEND or numpy)")
    parser.add_argument("images", nargs="+", metavar="IMAGE")
    parser.set_defaults(handler=_run_predict)


def _run_predict(args) -> int:
    from . import functional as F
    from .autograd import no_grad
    from .backends import to_device, to_numpy

    _require_pillow()
    from .training import prepare_images

    checkpoint, model = _load_model(args)
    trained_on = _trained_on(checkpoint)
    model.eval()
    first = model.parameters()[0].data
    from .backends import dtype_name

    dtype = dtype_name(first)
    loaded, failures = [], 0
    for path in args.images:
        try:
            loaded.append((path, load_image(path, trained_on["input_shape"])))
        except Exception as error:  # noqa: BLE001 - any unreadable file is reported and skipped
            failures += 1
            detail = str(error) or type(error).__name__
            print(f"error: {path}: cannot read image ({detail})", file=sys.stderr)
    if loaded:
        from .backends import placement_of

        batch = prepare_images(numpy.stack([pixels for _, pixels in loaded]), dtype, trained_on["normalization"])
        with no_grad():
            probabilities = to_numpy(F.softmax(model(to_device(batch, placement_of(first))), axis=1).data)
        names = trained_on["info"].class_names
        for (path, _), row in zip(loaded, probabilities):
            label = int(numpy.argmax(row))
            name = f" {names[label]}" if label < len(names) and names[label] != str(label) else ""
            print(f"{path}: {label} ({float(row[label]):.4f}){name}")
    return 1 if failures else 0


# --------------------------------------------------------------------------
# backends and parity


def _add_backends(subparsers) -> None:
    parser = subparsers.add_parser("backends", help="list the backends and devices usable here",
                                   description="List the array libraries portacnn can use here, with their devices.")
    parser.set_defaults(handler=_run_backends)


def _run_backends(args) -> int:
    from .backends import KNOWN_BACKENDS, available_backends, default_spec, get_backend, plugin_failures

    found = available_backends()
    failures = plugin_failures()  # plugins that did not load: shown below, never fatal
    print(f"{'backend':<18} {'version':<14} devices")
    for info in found:
        origin = "" if info.source == "built-in" else f"  ({info.source})"
        print(f"{info.name:<18} {info.version:<14} {', '.join(info.devices)}{origin}")
    listed = {info.name for info in found} | {failure.name for failure in failures}
    missing = [name for name in KNOWN_BACKENDS if name not in listed]
    if missing:
        print()
        print("not usable here:")
        for name in missing:
            print(f"  {name}: {get_backend(name).install_hint}")
    if failures:
        print()
        print("plugins that failed to load:")
        for failure in failures:
            print(f"  {failure.message()}")
    print()
    print(f"default backend: {default_spec()} (set PORTACNN_BACKEND or pass --backend to change)")
    return 0


def _add_parity(subparsers) -> None:
    parser = subparsers.add_parser(
        "parity", help="check every op and a short training run against NumPy float64",
        description="Run every op and a few LeNet SGD steps on each backend and compare with NumPy float64. "
                    "Exit status 0 when everything agrees.")
    parser.add_argument("--backends", help="comma-separated backend specs (default: every available device)")
    parser.add_argument("--dtypes", default="float64,float32", help="comma-separated dtypes (default: float64,float32)")
    parser.add_argument("--module", action="append", default=[], metavar="MODULE",
                        help="import MODULE (e.g. my_pkg.my_ops) and check the parity cases it registers, with "
                             "@portacnn.parity.case or a CASES dict, instead of portacnn's own; repeatable")
    parser.set_defaults(handler=_run_parity)


def _split(text):
    return [item.strip() for item in text.split(",") if item.strip()] if text else []


def _run_parity(args) -> int:
    from .parity import run_parity

    dtypes = _split(args.dtypes)
    bad = [d for d in dtypes if d not in ("float32", "float64")]
    if bad or not dtypes:
        raise PortacnnError(f"--dtypes takes float32 and/or float64, got {args.dtypes!r}")
    specs = _split(args.backends) or None
    if specs:
        from .backends import parse_spec

        for spec in specs:
            parse_spec(spec)  # a clear BackendError for a typo, before any work
    if not args.module:
        return int(run_parity(specs=specs, dtypes=tuple(dtypes)))
    from .parity import load_cases

    names = [name for module in args.module for name in load_cases(module)]
    return int(run_parity(specs=specs, dtypes=tuple(dtypes), include_training=False, cases=names))


# --------------------------------------------------------------------------
# export


def _add_export(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="write a checkpoint's model as an ONNX file",
        description="Rebuild the model a checkpoint holds and write its inference graph as ONNX, with a dynamic "
                    "batch axis (batch norm folded into the convolutions). Prints the nodes written, by type. "
                    'Needs the onnx package: pip install "portacnn[onnx]".')
    parser.add_argument("checkpoint", metavar="CHECKPOINT",
                        help="a .npz checkpoint (or a checkpoint folder: its last.npz)")
    parser.add_argument("output", metavar="OUTPUT", help="the .onnx file to write")
    parser.add_argument("--input-shape", metavar="C,H,W",
                        help="one input's shape (default: the shape the checkpoint's training recorded, else 1,28,28)")
    parser.add_argument("--opset", type=int, help="ONNX operator set, 17 to 21 (default: 17)")
    parser.set_defaults(handler=_run_export)


def _export_input_shape(args, checkpoint) -> tuple:
    from .errors import ArgumentError, CheckpointError

    if args.input_shape is not None:
        try:
            shape = tuple(int(part) for part in args.input_shape.split(","))
        except ValueError:
            shape = ()
        if len(shape) != 3 or min(shape) < 1:
            raise ArgumentError(f"--input-shape takes one input's C,H,W as three positive ints, e.g. 3,32,32, "
                                f"got {args.input_shape!r}")
        return shape
    recorded = (checkpoint.get("config") or {}).get("input_shape")
    if recorded is None:
        return (1, 28, 28)
    if (not isinstance(recorded, (list, tuple)) or len(recorded) != 3
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in recorded)):
        raise CheckpointError(f"the checkpoint's config records input_shape {recorded!r}, which is not [C, H, W]; "
                              "pass --input-shape C,H,W")
    return tuple(recorded)


def _run_export(args) -> int:
    from collections import Counter

    from .checkpoint import build_model, load_checkpoint
    from .onnx import DEFAULT_OPSET, export

    checkpoint = load_checkpoint(_checkpoint_file(args.checkpoint))
    shape = _export_input_shape(args, checkpoint)
    opset = DEFAULT_OPSET if args.opset is None else args.opset
    proto = export(build_model(checkpoint), args.output, shape, opset=opset)
    counts = Counter(node.op_type for node in proto.graph.node)
    print(f"wrote {args.output} ({checkpoint['architecture']}, ONNX opset {opset}, input [batch, "
          f"{', '.join(map(str, shape))}]): {len(proto.graph.node)} nodes, {len(proto.graph.initializer)} initializers")
    for op, count in sorted(counts.items(), key=lambda item: (-item[1], item[0])):
        print(f"  {op:<20} {count}")
    return 0


# --------------------------------------------------------------------------
# entry point


def _lead() -> bool:
    """False on the ranks after the first of a distributed job (they print nothing)."""
    distributed = sys.modules.get("portacnn.distributed")
    return distributed is None or distributed.rank() == 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="portacnn",
        description="A readable CNN library on the Python array API: NumPy, CuPy, PyTorch, JAX, array-api-strict.")
    parser.add_argument("--version", action="version", version=f"portacnn {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_train(subparsers)
    _add_evaluate(subparsers)
    _add_predict(subparsers)
    _add_backends(subparsers)
    _add_parity(subparsers)
    _add_export(subparsers)
    return parser


def main(argv=None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or a usage error (argparse printed it)
        return exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 2)
    try:
        return args.handler(args)
    except PortacnnError as error:
        if _lead():  # in a distributed job every rank raises the same error: say it once
            print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
