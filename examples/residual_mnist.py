"""A residual network defined with ``__init__`` and ``forward`` only, trained on MNIST with ``loss.backward()``.

The skip connection (``... + x``) is an ordinary addition of Tensors: the
tape records it, and ``loss.backward()`` sends the gradient down both paths.
No layer has a hand-written backward. The same script runs on any backend:

    python examples/residual_mnist.py                          # NumPy, 60,000 images, 1 epoch: 0.98 in 30 s on 2 cores
    python examples/residual_mnist.py --backend torch --train-size 6000
    python examples/residual_mnist.py --backend jax --train-size 1000 --test-size 1000
"""

import argparse

import numpy

import portacnn
from portacnn import nn
from portacnn.backends import to_device
from portacnn.datasets import find_shared_mnist, load_mnist
from portacnn.optim import SGD
from portacnn.training import LABEL_DTYPE, evaluate


class ResidualBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, plus the block's input, then ReLU (He et al., 2016)."""

    def __init__(self, channels, rng, **options):
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False, rng=rng, **options)
        self.bn1 = nn.BatchNorm2d(channels, **options)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False, rng=rng, **options)
        self.bn2 = nn.BatchNorm2d(channels, **options)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + x)


class SmallResNet(nn.Module):
    """28x28 → 16 channels at 14x14 → a residual block → 32 channels at 7x7 → a residual block → 10 classes."""

    def __init__(self, seed=0, device=None, dtype="float32"):
        rng = numpy.random.default_rng(seed)
        options = dict(device=device, dtype=dtype)
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False, rng=rng, **options),
                                  nn.BatchNorm2d(16, **options), nn.ReLU(), nn.MaxPool2d(2))
        self.block1 = ResidualBlock(16, rng, **options)
        self.down = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False, rng=rng, **options),
                                  nn.BatchNorm2d(32, **options), nn.ReLU())
        self.block2 = ResidualBlock(32, rng, **options)
        self.head = nn.Sequential(nn.AvgPool2d(7), nn.Flatten(), nn.Linear(32, 10, init="glorot", rng=rng, **options))

    def forward(self, x):
        return self.head(self.block2(self.down(self.block1(self.stem(x)))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default=None, help="e.g. numpy, torch, jax, cupy:0 (default: $PORTACNN_BACKEND "
                                                        "or numpy)")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-size", type=int, default=60_000)
    parser.add_argument("--test-size", type=int, default=10_000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--data-dir", default=find_shared_mnist(),
                        help="MNIST folder (default: a shared copy next to this checkout if there is one)")
    args = parser.parse_args(argv)

    images, labels = load_mnist("train", root=args.data_dir, dtype="float32")
    images, labels = images[:args.train_size], labels[:args.train_size].astype(LABEL_DTYPE)
    test_images, test_labels = load_mnist("test", root=args.data_dir, dtype="float32")
    test_images, test_labels = test_images[:args.test_size], test_labels[:args.test_size]

    model = SmallResNet(seed=0, device=args.backend)
    loss_fn = nn.CrossEntropyLoss(check_labels=False)  # the labels are checked once, on the host, by load_mnist
    optimizer = SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    rng = numpy.random.default_rng(0)
    for epoch in range(1, args.epochs + 1):
        model.train()
        losses = []
        for batch in numpy.array_split(rng.permutation(len(labels)), max(1, len(labels) // args.batch_size)):
            x, y = to_device(images[batch], args.backend), to_device(labels[batch], args.backend)
            loss = loss_fn(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.data)
        train_loss = float(numpy.mean([portacnn.to_numpy(value) for value in losses]))
        test_loss, test_accuracy, _ = evaluate(model, test_images, test_labels)
        print(f"epoch {epoch}  train loss {train_loss:.4f}  test loss {test_loss:.4f}  "
              f"test accuracy {test_accuracy:.4f}")


if __name__ == "__main__":
    main()
