"""One seeded LeNet, a few SGD steps on every backend and device available here, same losses everywhere.

The weights and the batches are drawn on the host, so every backend starts
from bit-identical values; the losses then agree with NumPy up to float
rounding (float32 here, as some devices have no float64).

    python examples/same_model_any_backend.py --steps 5
"""

import argparse

import numpy

from portacnn.backends import available_backends, to_device
from portacnn.models import lenet
from portacnn.nn import CrossEntropyLoss
from portacnn.optim import SGD

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--steps", type=int, default=3)
parser.add_argument("--batch-size", type=int, default=16)
parser.add_argument("--rtol", type=float, default=1e-4, help="allowed relative difference from NumPy")
args = parser.parse_args()


def train_steps(spec):
    model = lenet(seed=0, dtype="float32", device=spec)
    loss_fn = CrossEntropyLoss()
    optimizer = SGD(model.parameters(), lr=0.01, momentum=0.9)
    rng = numpy.random.default_rng(1)
    losses = []
    for _ in range(args.steps):
        images = rng.random((args.batch_size, 1, 28, 28), dtype=numpy.float32)
        labels = rng.integers(0, 10, args.batch_size, dtype=numpy.int32)  # int32: some devices lack int64
        loss = loss_fn(model(to_device(images, spec)), to_device(labels, spec))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return numpy.array(losses)


reference = train_steps("numpy")
all_agree = True
for info in available_backends():
    for spec in info.devices:
        try:
            losses = train_steps(spec)
        except Exception as error:  # noqa: BLE001 - report the device and go on
            print(f"{spec:<34} failed: {type(error).__name__}: {error}")
            all_agree = False
            continue
        agree = numpy.allclose(losses, reference, rtol=args.rtol, atol=0.0)
        all_agree &= agree
        shown = " ".join(f"{v:.6f}" for v in losses)
        difference = numpy.max(numpy.abs(losses - reference) / numpy.abs(reference))
        print(f"{spec:<34} losses {shown}  max rel diff vs numpy {difference:.1e}  {'agree' if agree else 'DIFFER'}")

print("all backends agree with numpy" if all_agree else "some backends differ from numpy")
raise SystemExit(0 if all_agree else 1)
