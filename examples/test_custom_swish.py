"""Testing your own layer on every backend: a pytest file to copy.

A Swish written by hand as a ``portacnn.Function`` (forward and backward on
plain arrays), a layer that uses it, and the three checks that catch what goes
wrong in such code:

* ``gradcheck``: the backward against finite differences (a sign error, a
  missing factor, a transposed weight gradient);
* ``assert_backends_agree``: every backend against NumPy float64, in float64
  and float32 (a NumPy-only call, float64 math on float32 inputs, an output
  on the wrong device, a write into an input);
* the ``backend``/``case`` fixtures from portacnn's pytest plugin, for your
  own assertions on each backend.

Run it with ``python -m pytest examples/test_custom_swish.py`` (add
``--portacnn-backends=numpy,torch`` to pick backends).
"""

import numpy as np

import portacnn
from portacnn import functional as F
from portacnn import nn
from portacnn.testing import assert_backends_agree, default_backend_specs, gradcheck


class Swish(portacnn.Function):
    """x * sigmoid(x), with its derivative written out."""

    def forward(self, x):
        self.x = x  # the one array backward needs
        return x * F.sigmoid(x)

    def backward(self, grad):
        s = F.sigmoid(self.x)
        return grad * (s + self.x * s * (1.0 - s))


class SwishMLP(nn.Module):
    """Linear → Swish → Linear, for checking the Function inside a model with parameters."""

    def __init__(self, device=None, dtype="float32"):
        self.first = nn.Linear(6, 8, rng=0, device=device, dtype=dtype)
        self.second = nn.Linear(8, 3, rng=1, device=device, dtype=dtype)

    def forward(self, x):
        return self.second(Swish.apply(self.first(x)))


def inputs(shape=(4, 6)):
    return np.random.default_rng(0).standard_normal(shape)


def test_swish_backward_matches_finite_differences_on_every_backend():
    gradcheck(Swish, inputs(), backends=default_backend_specs())


def test_swish_model_gradients_match_finite_differences():
    gradcheck(SwishMLP(dtype="float64"), inputs())  # the input and every parameter


def test_swish_agrees_on_every_backend():
    assert_backends_agree(Swish, inputs())


def test_swish_model_agrees_on_every_backend():
    assert_backends_agree(SwishMLP, inputs())  # called as SwishMLP(device=..., dtype=...) on each


def test_swish_is_x_sigmoid_x(case):
    x = inputs()
    out = Swish.apply(portacnn.tensor(case.put(x)))
    reference = case.ref(x)
    case.assert_close(out.data, reference / (1.0 + np.exp(-reference)))
