"""The write-up's experiment with the Python API: LeNet on the first 10,000 MNIST images.

SGD (lr 0.005, weight decay 1e-4, no momentum), batch 5, learning rate x0.9
every 10 epochs, 50 epochs. The same recipe is ``portacnn train --preset seed``.

    python examples/train_mnist.py --epochs 2 --backend torch
"""

import argparse

import numpy

from portacnn.backends import to_device
from portacnn.datasets import find_shared_mnist, load_mnist
from portacnn.models import lenet
from portacnn.nn import CrossEntropyLoss
from portacnn.optim import SGD, StepLR
from portacnn.training import LABEL_DTYPE, evaluate

parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--epochs", type=int, default=50)
parser.add_argument("--backend", default=None, help="e.g. numpy, torch:cuda:0, cupy:0 (default: $PORTACNN_BACKEND or numpy)")
parser.add_argument("--data-dir", default=find_shared_mnist(),
                    help="MNIST folder (default: a shared copy next to this checkout if there is one, else the loader's default)")
args = parser.parse_args()

images, labels = load_mnist("train", root=args.data_dir, dtype="float32")
images, labels = images[:10_000], labels[:10_000].astype(LABEL_DTYPE)  # int32: every device has it
test_images, test_labels = load_mnist("test", root=args.data_dir, dtype="float32")

model = lenet(seed=0, device=args.backend)
loss_fn = CrossEntropyLoss()
optimizer = SGD(model.parameters(), lr=0.005, weight_decay=1e-4)
scheduler = StepLR(optimizer, step_size=10, gamma=0.9)
rng = numpy.random.default_rng(0)

for epoch in range(1, args.epochs + 1):
    model.train()
    for batch in numpy.array_split(rng.permutation(len(labels)), len(labels) // 5):
        x, y = to_device(images[batch], args.backend), to_device(labels[batch], args.backend)
        loss_fn(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad()
    lr = optimizer.lr  # this epoch's rate, before the scheduler moves it on
    scheduler.step()
    test_loss, test_accuracy, _ = evaluate(model, test_images, test_labels)
    print(f"epoch {epoch:2d}  lr {lr:.5f}  test loss {test_loss:.4f}  test accuracy {test_accuracy:.4f}")
