"""portacnn.summary / Module.summary and num_parameters."""

import numpy as np
import pytest

import portacnn
from portacnn import nn
from portacnn.errors import ArgumentTypeError
from portacnn.models import lenet

torch = pytest.importorskip("torch")


def test_lenet_summary_lists_every_layer_with_shapes_and_counts():
    model = lenet()
    text = portacnn.summary(model, (2, 1, 28, 28))
    lines = text.splitlines()
    rows = [line.split() for line in lines[2:12]]
    assert [row[1] for row in rows] == ["Conv2d", "ReLU", "MaxPool2d", "Conv2d", "ReLU", "MaxPool2d", "Flatten",
                                        "Linear", "ReLU", "Linear"]
    assert rows[0][2:6] == ["(2,", "20,", "24,", "24)"] and rows[0][-1] == "520"
    assert rows[7][-1] == "400,500"
    reference = torch.nn.Sequential(torch.nn.Conv2d(1, 20, 5), torch.nn.Conv2d(20, 50, 5), torch.nn.Linear(800, 500),
                                    torch.nn.Linear(500, 10))
    total = sum(p.numel() for p in reference.parameters())
    assert model.num_parameters() == total
    assert lines[-1] == f"parameters: {total:,} ({total:,} trainable)"
    assert model.summary((2, 1, 28, 28)) == text


def test_summary_counts_a_shared_layer_once_and_leaves_the_model_as_it_was():
    conv = nn.Conv2d(2, 2, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv).train()
    text = model.summary((1, 2, 5, 5))
    assert text.count("Conv2d") == 2, "called twice, listed twice"
    assert model.num_parameters() == 2 * 2 * 9 + 2
    assert text.endswith(f"parameters: {model.num_parameters():,} ({model.num_parameters():,} trainable)")
    assert model.training and "forward" not in vars(conv)
    model[0].requires_grad_(False)
    assert model.num_parameters(trainable_only=True) == 0


def test_summary_refuses_a_shape_that_is_not_a_tuple_of_ints():
    with pytest.raises(ArgumentTypeError, match="batch axis"):
        portacnn.summary(lenet(), 28)


def test_named_modules_are_dotted_and_each_listed_once():
    inner = nn.Linear(2, 2)
    model = nn.Sequential(nn.Sequential(inner, nn.ReLU()), inner)
    assert [name for name, _ in model.named_modules()] == ["", "0", "0.0", "0.1"]
    np.testing.assert_equal(len(list(model.modules())), 4)
