"""The ``portacnn`` command line: train, evaluate, predict, backends, parity.

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

__all__ = ["main", "build_parser", "load_digit_image"]


# --------------------------------------------------------------------------
# train


def _add_train(subparsers) -> None:
    from .training import DEFAULT_PRESET, PRESETS

    def describe(name):
        values = PRESETS[name]
        size = "all" if values["train_size"] is None else f"{values['train_size']:,}"
        return (f"{name}: {values['epochs']} epochs, {size} images, batch {values['batch_size']}, lr {values['lr']:g}, "
                f"momentum {values['momentum']:g}, weight decay {values['weight_decay']:g}, "
                f"lr x{values['lr_gamma']:g} every {values['lr_step']} epochs")

    parser = subparsers.add_parser(
        "train", help="train LeNet on MNIST",
        description="Train LeNet on MNIST. Flags left out take the preset's value.\nPresets:\n  "
                    + "\n  ".join(describe(name) for name in PRESETS),
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default=DEFAULT_PRESET,
                        help=f"hyperparameter preset (default: {DEFAULT_PRESET})")
    parser.add_argument("--backend", help="backend spec, e.g. numpy, torch:cuda:0, cupy:0, jax:cpu "
                                          "(default: $PORTACNN_BACKEND or numpy)")
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--lr", type=float, help="initial learning rate (SGD)")
    parser.add_argument("--momentum", type=float)
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--lr-step", type=int, help="multiply the learning rate by --lr-gamma every N epochs")
    parser.add_argument("--lr-gamma", type=float)
    parser.add_argument("--train-size", type=int, help="use the first N training images")
    parser.add_argument("--test-size", type=int, help="evaluate on the first N test images (default: all 10,000)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the shuffling (default: 0)")
    parser.add_argument("--data-dir", help="MNIST folder (default: $PORTACNN_DATA or ~/.cache/portacnn/mnist; "
                                           "downloaded if missing)")
    parser.add_argument("--checkpoint-dir", default="checkpoints",
                        help="write <dir>/last.npz after every epoch (default: ./checkpoints)")
    parser.add_argument("--resume", action="store_true", help="continue from <checkpoint-dir>/last.npz")
    parser.add_argument("--plot", metavar="PATH", help="write loss/accuracy curves as a PNG (needs matplotlib)")
    parser.add_argument("--metrics-out", metavar="PATH", help="write the metrics as JSON")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="run every step eagerly, op by op, even where the backend can compile a whole step "
                             "into one function (JAX compiles by default)")
    parser.add_argument("--distributed", action="store_true",
                        help="data-parallel across the processes of an MPI job: mpiexec -n N portacnn train "
                             "--distributed ... (needs mpi4py: pip install 'portacnn[mpi]'); --batch-size stays the "
                             "global batch; rank 0 alone prints and writes files")
    parser.set_defaults(handler=_run_train)


def _run_train(args) -> int:
    from .training import TrainConfig, train

    config = TrainConfig(
        backend=args.backend, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, lr_step=args.lr_step, lr_gamma=args.lr_gamma, train_size=args.train_size,
        test_size=args.test_size, dtype=args.dtype, seed=args.seed, data_dir=args.data_dir,
        checkpoint_dir=args.checkpoint_dir, resume=args.resume, plot=args.plot, metrics_out=args.metrics_out,
        quiet=args.quiet, preset=args.preset, distributed=args.distributed, compile=args.compile)
    metrics = train(config)
    if not args.quiet and _lead():
        accuracy = metrics["test_accuracy"]
        print(f"final test accuracy: {accuracy:.4f}" if accuracy is not None else "no epoch was trained")
        print(f"wall time: {metrics['wall_seconds']:.1f}s")
        for label, path in (("checkpoint", config.checkpoint_path), ("metrics", args.metrics_out), ("plot", args.plot)):
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
    from .training import EVAL_BATCH_SIZE

    parser = subparsers.add_parser("evaluate", help="test accuracy, per-class accuracy and confusion matrix",
                                   description="Evaluate a checkpoint on the MNIST test split.")
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="a .npz checkpoint (or a checkpoint folder: its last.npz)")
    parser.add_argument("--backend", help="backend spec (default: $PORTACNN_BACKEND or numpy)")
    parser.add_argument("--data-dir", help="MNIST folder (default: $PORTACNN_DATA or ~/.cache/portacnn/mnist)")
    parser.add_argument("--test-size", type=int, help="use the first N test images (default: all)")
    parser.add_argument("--batch-size", type=int, default=EVAL_BATCH_SIZE,
                        help=f"images per forward pass (default {EVAL_BATCH_SIZE})")
    parser.set_defaults(handler=_run_evaluate)


def confusion_matrix(labels, predictions, num_classes: int = 10) -> numpy.ndarray:
    """Counts of (true class, predicted class) pairs: rows are true classes."""
    matrix = numpy.zeros((num_classes, num_classes), dtype=numpy.int64)
    numpy.add.at(matrix, (numpy.asarray(labels), numpy.asarray(predictions)), 1)
    return matrix


def _run_evaluate(args) -> int:
    from .datasets import load_mnist
    from .training import evaluate

    checkpoint, model = _load_model(args)
    images, labels = load_mnist("test", root=args.data_dir)
    if args.test_size is not None:
        if args.test_size < 1:
            raise PortacnnError(f"--test-size must be positive, got {args.test_size}")
        images, labels = images[:args.test_size], labels[:args.test_size]
    loss, accuracy, predictions = evaluate(model, images, labels, batch_size=args.batch_size)
    matrix = confusion_matrix(labels, predictions)
    parameters = model.parameters()[0].data
    dtype = str(parameters.dtype).rsplit(".", 1)[-1]
    from .backends import placement_of

    print(f"checkpoint: {checkpoint['path']} ({checkpoint['architecture']}, epoch {checkpoint['epoch']}, {dtype}) "
          f"on {placement_of(parameters).spec}")
    print(f"test images: {len(labels)}")
    print(f"test loss: {loss:.4f}")
    print(f"test accuracy: {accuracy:.4f} ({int(numpy.trace(matrix))}/{len(labels)})")
    print()
    print("per-class accuracy:")
    print(f"  {'digit':>5}  {'accuracy':>8}  {'correct':>7}  {'count':>5}")
    for digit in range(matrix.shape[0]):
        count = int(matrix[digit].sum())
        right = int(matrix[digit, digit])
        shown = f"{right / count:.4f}" if count else "-"
        print(f"  {digit:>5}  {shown:>8}  {right:>7}  {count:>5}")
    print()
    print("confusion matrix (rows: true digit, columns: predicted digit):")
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
    _require_pillow()
    from PIL import Image

    with Image.open(path) as image:
        gray = image.convert("L")
        if gray.size != (28, 28):
            gray = gray.resize((28, 28), Image.Resampling.LANCZOS)
        pixels = numpy.asarray(gray, dtype=numpy.float64) / 255.0
    if pixels.mean() > 0.5:
        pixels = 1.0 - pixels
    return pixels


def _add_predict(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict", help="classify image files with a checkpoint",
        description="Classify digit images. Each is converted to grayscale, resized to 28x28 and scaled to [0, 1]; "
                    "an image brighter than 0.5 on average (dark digit on white) is inverted to match MNIST's white "
                    "digit on black. Prints 'path: digit (probability)'. Needs Pillow.")
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
    checkpoint, model = _load_model(args)
    model.eval()
    first = model.parameters()[0].data
    dtype = str(first.dtype).rsplit(".", 1)[-1]
    loaded, failures = [], 0
    for path in args.images:
        try:
            loaded.append((path, load_digit_image(path)))
        except Exception as error:  # noqa: BLE001 - any unreadable file is reported and skipped
            failures += 1
            detail = str(error) or type(error).__name__
            print(f"error: {path}: cannot read image ({detail})", file=sys.stderr)
    if loaded:
        from .backends import placement_of

        batch = numpy.stack([pixels for _, pixels in loaded])[:, None, :, :].astype(dtype)
        with no_grad():
            probabilities = to_numpy(F.softmax(model(to_device(batch, placement_of(first))), axis=1).data)
        for (path, _), row in zip(loaded, probabilities):
            digit = int(numpy.argmax(row))
            print(f"{path}: {digit} ({float(row[digit]):.4f})")
    return 1 if failures else 0


# --------------------------------------------------------------------------
# backends and parity


def _add_backends(subparsers) -> None:
    parser = subparsers.add_parser("backends", help="list the backends and devices usable here",
                                   description="List the array libraries portacnn can use here, with their devices.")
    parser.set_defaults(handler=_run_backends)


def _run_backends(args) -> int:
    from .backends import KNOWN_BACKENDS, available_backends, default_spec, get_backend

    found = available_backends()
    print(f"{'backend':<18} {'version':<14} devices")
    for info in found:
        print(f"{info.name:<18} {info.version:<14} {', '.join(info.devices)}")
    missing = [name for name in KNOWN_BACKENDS if name not in {info.name for info in found}]
    if missing:
        print()
        print("not usable here:")
        for name in missing:
            print(f"  {name}: {get_backend(name).install_hint}")
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
