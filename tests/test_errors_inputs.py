"""Bad inputs to functions, layers, models and optimizers: each is a portacnn error with a clear message.

Covered elsewhere (not repeated here):

* ``tests/test_functional.py``: ``test_shape_errors`` (wrong ndim, channels, bias, empty
  conv batch, label shape, batch-norm shapes, grad_out shapes, mask shape),
  ``test_kernel_too_large_states_output_size``, ``test_dtype_errors`` (x vs
  weight/bias/running stats, float labels), ``test_integer_input_is_a_dtype_error``
  (every op, with the ``/ 255`` hint for uint8), ``test_argument_errors`` (stride,
  dilation, pair types, lp ``p``, dropout ``p``, lists), ``test_mixing_backends_names_both``
  and ``test_strict_default_device_vs_device1`` (two backends / two devices).
* ``tests/test_nn.py``: ``test_batch_from_another_backend_is_refused_with_both_sides_named``,
  ``test_module_backward_says_to_call_loss_backward``, ``test_load_state_dict_lists_every_mismatch``.
* ``tests/test_optim.py``: ``test_bad_hyperparameters_are_rejected``, ``test_empty_parameter_list_is_rejected``.

Here: layer and model level messages (which layer, what to do), constructors,
bool/complex data, grad_out dtypes, label values, lists and scalars in layers,
empty batches everywhere, softmax axes, optimizers and schedulers, and
property-based tests that valid calls never fail and invalid ones always
raise ``PortacnnError`` (never an error from deep inside an array library).
"""

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import portacnn
from portacnn import functional as F
from portacnn import nn
from portacnn.errors import (ArgumentError, ArgumentTypeError, BackendMismatchError, DTypeError, PortacnnError,
                             ShapeError, UsageError)
from portacnn.models import lenet
from portacnn.optim import SGD, Adam, ExponentialLR, StepLR

PROPERTY = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def zeros(*shape, dtype=np.float32):
    return np.zeros(shape, dtype)


def raises(exc, *fragments):
    """pytest.raises that also checks the message contains every fragment (plain text, not a regex)."""
    class _Check:
        def __enter__(self):
            self._ctx = pytest.raises(exc)
            self._info = self._ctx.__enter__()
            return self._info

        def __exit__(self, *exc_info):
            suppressed = self._ctx.__exit__(*exc_info)
            message = str(self._info.value)
            assert isinstance(self._info.value, PortacnnError), type(self._info.value)
            for fragment in fragments:
                assert fragment in message, f"{fragment!r} not in {message!r}"
            return suppressed

    return _Check()


# --------------------------------------------------------------------------
# wrong number of dimensions: the message says what to do


def test_flattened_mnist_batch_into_conv2d_says_how_to_reshape():
    with raises(ShapeError, "4-D", "(N, C, H, W)", "(8, 784)", "flattened", "reshape(-1, 1, 28, 28)"):
        nn.Conv2d(1, 4, 3)(zeros(8, 784))


def test_3d_image_batch_says_which_axis_to_add(backend):
    with raises(ShapeError, "(5, 28, 28)", "x[:, None]", "x[None]"):
        lenet(device=backend.spec)(backend.asarray(zeros(5, 28, 28)))


def test_linear_without_flatten_says_to_flatten():
    with raises(ShapeError, "2-D", "(2, 50, 4, 4)", "Flatten()"):
        nn.Linear(800, 10)(zeros(2, 50, 4, 4))


def test_single_sample_without_batch_axis():
    with raises(ShapeError, "(10,)", "x[None]"):
        F.cross_entropy(zeros(10), np.zeros(1, np.int64))


# --------------------------------------------------------------------------
# channels and spatial size, named at the layer of a model that refused them


def test_channel_mismatch_in_a_model_names_the_layer():
    with raises(ShapeError, "layer 0 (Conv2d)", "x has 3 channels but weight expects 1", "in_channels"):
        lenet()(zeros(2, 3, 28, 28))


def test_batchnorm_channel_mismatch_names_num_features():
    with raises(ShapeError, "x has 5 channels", "num_features"):
        nn.BatchNorm2d(3)(zeros(2, 5, 4, 4))


def test_linear_feature_mismatch_names_in_features():
    with raises(ShapeError, "layer 7 (Linear)", "x has 200 features", "in_features"):
        lenet()(zeros(2, 1, 20, 20))  # 20x20 images leave 50x2x2 = 200 features, not 800


def test_image_too_small_for_a_model_names_the_layer_and_the_output_size():
    with raises(ShapeError, "layer 5 (MaxPool2d)", "(1, 1)", "the output would be 0x0"):
        lenet()(zeros(2, 1, 14, 14))


# --------------------------------------------------------------------------
# hyper-parameters of the functions


BAD_HYPERPARAMETERS = [
    # (call, exception, fragments the message must contain)
    (lambda x, w: F.conv2d(x, w, stride=0), ArgumentError, ["stride", ">= 1", "0"]),
    (lambda x, w: F.conv2d(x, w, stride=(1, -2)), ArgumentError, ["stride", "(1, -2)"]),
    (lambda x, w: F.conv2d(x, w, dilation=0), ArgumentError, ["dilation", ">= 1"]),
    (lambda x, w: F.conv2d(x, w, padding=-1), ArgumentError, ["padding", ">= 0", "-1"]),
    (lambda x, w: F.conv2d(x, w, padding="same"), ArgumentTypeError, ["padding", "'same'", "k // 2"]),
    (lambda x, w: F.conv2d(x, w, stride=1.5), ArgumentTypeError, ["stride", "1.5", "whole numbers"]),
    (lambda x, w: F.conv2d(x, w[:, :, :0]), ShapeError, ["weight", "empty axis"]),
    (lambda x, w: F.max_pool2d(x, 0), ArgumentError, ["kernel_size", ">= 1"]),
    (lambda x, w: F.max_pool2d(x, -3), ArgumentError, ["kernel_size", "-3"]),
    (lambda x, w: F.avg_pool2d(x, 2, stride=0), ArgumentError, ["stride", ">= 1"]),
    (lambda x, w: F.max_pool2d(x, 3, padding=2), ArgumentError, ["padding (2, 2)", "at most half", "(1, 1)"]),
    (lambda x, w: F.avg_pool2d(x, 2, padding=-1), ArgumentError, ["padding", ">= 0"]),
    (lambda x, w: F.lp_pool2d(x, 0, 2), ArgumentError, ["p must be a positive number", "0"]),
    (lambda x, w: F.dropout(x, 1.5, rng=0), ArgumentError, ["p", "[0, 1)", "1.5"]),
    (lambda x, w: F.dropout(x, "half", rng=0), ArgumentTypeError, ["p", "'half'"]),
    (lambda x, w: F.dropout(x, 0.5, rng="seed"), ArgumentTypeError, ["rng", "str"]),
    (lambda x, w: F.batch_norm(x, None, None, training=True, momentum=1.5), ArgumentError, ["momentum", "1.5"]),
    (lambda x, w: F.batch_norm(x, None, None, training=True, eps=0.0), ArgumentError, ["eps", "> 0"]),
]


@pytest.mark.parametrize("call, exception, fragments", BAD_HYPERPARAMETERS,
                         ids=[f"{i}-{c[1].__name__}-{c[2][0]}" for i, c in enumerate(BAD_HYPERPARAMETERS)])
def test_bad_hyperparameters_name_the_argument_and_the_value(call, exception, fragments):
    with raises(exception, *fragments):
        call(zeros(1, 2, 6, 6), zeros(3, 2, 2, 2))


def test_argument_errors_are_the_builtin_exceptions_users_expect():
    assert issubclass(ArgumentError, ValueError) and issubclass(ArgumentError, PortacnnError)
    assert issubclass(ArgumentTypeError, TypeError) and issubclass(ArgumentTypeError, ValueError)
    assert issubclass(UsageError, RuntimeError)


# --------------------------------------------------------------------------
# layer constructors fail at construction


BAD_CONSTRUCTORS = [
    (lambda: nn.Conv2d(in_channels=0, out_channels=4, kernel_size=3), ArgumentError, ["Conv2d", "in_channels", "0"]),
    (lambda: nn.Conv2d(1, -4, 3), ArgumentError, ["out_channels", "-4"]),
    (lambda: nn.Conv2d(1.0, 4, 3), ArgumentTypeError, ["in_channels", "1.0"]),
    (lambda: nn.Conv2d(1, 4, 0), ArgumentError, ["kernel_size", ">= 1"]),
    (lambda: nn.Conv2d(1, 4, 3, stride=0), ArgumentError, ["stride", ">= 1"]),
    (lambda: nn.Conv2d(1, 4, 3, padding=-1), ArgumentError, ["padding", ">= 0"]),
    (lambda: nn.Conv2d(1, 4, 3, dilation=(0, 1)), ArgumentError, ["dilation"]),
    (lambda: nn.Conv2d(1, 4, 3, init="xavier"), ArgumentError, ["init", "'xavier'", "'he'"]),
    (lambda: nn.Conv2d(1, 4, 3, dtype="int32"), DTypeError, ["dtype", "int32", "'float16', 'bfloat16', 'float32' or 'float64'"]),
    (lambda: nn.Linear(-1, 3), ArgumentError, ["Linear", "in_features", "-1"]),
    (lambda: nn.Linear(3, 2.5), ArgumentTypeError, ["out_features", "2.5"]),
    (lambda: nn.Linear(3, 2, rng="seed"), ArgumentTypeError, ["rng", "'seed'"]),
    (lambda: nn.Dropout(p=1.5), ArgumentError, ["Dropout", "p", "[0, 1)", "1.5"]),
    (lambda: nn.Dropout(p=-0.1), ArgumentError, ["p", "-0.1"]),
    (lambda: nn.Dropout(p=True), ArgumentTypeError, ["p", "True"]),
    (lambda: nn.BatchNorm2d(0), ArgumentError, ["BatchNorm2d", "num_features", "0"]),
    (lambda: nn.BatchNorm2d(3, eps=-1e-5), ArgumentError, ["eps"]),
    (lambda: nn.BatchNorm2d(3, momentum=2.0), ArgumentError, ["momentum", "2.0"]),
    (lambda: nn.MaxPool2d(0), ArgumentError, ["MaxPool2d", "kernel_size"]),
    (lambda: nn.MaxPool2d(2, padding=2), ArgumentError, ["MaxPool2d", "at most half"]),
    (lambda: nn.AvgPool2d(3, stride=-1), ArgumentError, ["AvgPool2d", "stride"]),
    (lambda: nn.LPPool2d(0, 2), ArgumentError, ["p must be a positive number"]),
    (lambda: nn.LPPool2d(2, (2, 2, 2)), ArgumentTypeError, ["kernel_size", "pair"]),
    (lambda: nn.Sequential(nn.ReLU), ArgumentTypeError, ["Sequential", "ReLU() rather than ReLU"]),
    (lambda: lenet(num_classes=0), ArgumentError, ["out_features", "0"]),
]


@pytest.mark.parametrize("make, exception, fragments", BAD_CONSTRUCTORS,
                         ids=[f"{i}-{c[2][0]}" for i, c in enumerate(BAD_CONSTRUCTORS)])
def test_layer_constructors_fail_early_with_clear_messages(make, exception, fragments):
    with raises(exception, *fragments):
        make()


def test_model_to_an_unsupported_dtype():
    with raises(DTypeError, "int8", "'float16', 'bfloat16', 'float32' or 'float64'"):
        lenet().to("numpy", dtype="int8")
    with raises(DTypeError, "numpy has no bfloat16", "torch and jax"):
        lenet().to("numpy", dtype="bfloat16")


# --------------------------------------------------------------------------
# dtypes: bool, complex, uint8 images, grad_out


def test_bool_and_complex_images_are_refused_with_a_hint(backend):
    x = backend.asarray(np.zeros((1, 1, 6, 6), dtype=bool))
    with raises(DTypeError, "bool", "astype(float32)"):
        F.max_pool2d(x, 2)
    if backend.module not in ("array_api_strict", "jax", "torch", "numpy"):
        pytest.skip(f"{backend.module} is not checked with complex input")
    c = backend.asarray(np.zeros((1, 1, 6, 6), dtype=np.complex128))
    with raises(DTypeError, "complex", "real part"):
        F.max_pool2d(c, 2)


def test_uint8_images_need_an_explicit_conversion():
    images = np.full((2, 1, 28, 28), 255, dtype=np.uint8)
    with raises(DTypeError, "layer 0 (Conv2d)", "uint8", "/ 255", "prepare_images"):
        lenet()(images)
    from portacnn.training import prepare_images  # the documented conversion

    assert lenet()(prepare_images(images, "float32")).shape == (2, 10)


GRAD_DTYPE_CALLS = {
    "conv2d_backward": lambda g, x: F.conv2d_backward(g(1, 2, 5, 5), x(1, 3, 6, 6), x(2, 3, 2, 2)),
    "max_pool2d_backward": lambda g, x: F.max_pool2d_backward(g(1, 3, 3, 3), x(1, 3, 6, 6), 2),
    "avg_pool2d_backward": lambda g, x: F.avg_pool2d_backward(g(1, 3, 3, 3), x(1, 3, 6, 6), 2),
    "lp_pool2d_backward": lambda g, x: F.lp_pool2d_backward(g(1, 3, 3, 3), x(1, 3, 6, 6), 2, 2),
    "linear_backward": lambda g, x: F.linear_backward(g(4, 2), x(4, 3), x(2, 3)),
    "relu_backward": lambda g, x: F.relu_backward(g(4, 3), x(4, 3)),
    "softmax_backward": lambda g, x: F.softmax_backward(g(4, 3), x(4, 3)),
    "batch_norm_backward": lambda g, x: F.batch_norm_backward(g(4, 3), x(4, 3), None, None, training=True),
}


@pytest.mark.parametrize("op", list(GRAD_DTYPE_CALLS))
def test_grad_out_dtype_must_match_x(backend, op):
    def x(*shape):
        return backend.asarray(np.ones(shape, np.float32))

    def g(*shape):
        return backend.asarray(np.ones(shape, np.float64))

    with raises(DTypeError, op, "grad_out has dtype", "float64", "float32"):
        GRAD_DTYPE_CALLS[op](g, x)


def test_backward_of_a_layer_output_checks_grad_dtype_and_backend():
    out = nn.Conv2d(3, 2, 3)(zeros(1, 3, 6, 6))
    with raises(DTypeError, "grad has dtype float64 but the Tensor has float32"):
        out.backward(zeros(1, 2, 4, 4, dtype=np.float64))
    with raises(DTypeError, "grad must be an array, got list"):
        out.backward([[0.0]])
    strict = pytest.importorskip("array_api_strict")
    with raises(BackendMismatchError, "backward grad", "array_api_strict", "numpy"):
        out.backward(strict.asarray(zeros(1, 2, 4, 4)))


# --------------------------------------------------------------------------
# labels


@pytest.mark.parametrize("labels, shown", [([0, 10], "from 0 to 10"), ([-1, 3], "from -1 to 3"),
                                           ([12, 11], "from 11 to 12")])
def test_labels_out_of_range(backend, labels, shown):
    logits = backend.asarray(np.zeros((2, 10), np.float32))
    y = backend.asarray(np.array(labels, dtype=np.int64))
    for call in (F.cross_entropy, F.cross_entropy_backward, nn.CrossEntropyLoss()):
        with raises(ArgumentError, "class indices in [0, 9]", "10 classes", shown, "last layer"):
            call(logits, y)


def test_labels_at_the_edges_of_the_range_are_fine(backend):
    logits = backend.asarray(np.zeros((3, 10), np.float32))
    for dtype in (np.uint8, np.int32, np.int64):
        loss = F.cross_entropy(logits, backend.asarray(np.array([0, 9, 5], dtype=dtype)))
        assert np.isclose(float(backend.to_numpy(loss)), math.log(10))


def test_label_check_can_be_switched_off_when_labels_are_known_good():
    logits, labels = zeros(2, 3), np.array([0, 7])
    # an invalid label silently matches no class: only sample 0 contributes log(3), to a mean over 2
    assert float(F.cross_entropy(logits, labels, check_labels=False)) == pytest.approx(math.log(3) / 2)
    assert float(nn.CrossEntropyLoss(check_labels=False)(logits, labels)) == pytest.approx(math.log(3) / 2)


def test_one_hot_labels_get_a_hint():
    with raises(DTypeError, "integer class indices", "argmax"):
        F.cross_entropy(zeros(2, 3), np.eye(3, dtype=np.float32)[[0, 2]])
    with raises(ShapeError, "labels must have shape (2,)", "(2, 3)"):
        F.cross_entropy(zeros(2, 3), np.eye(3, dtype=np.int64)[[0, 2]])


# --------------------------------------------------------------------------
# Python lists and scalars where arrays are needed


@pytest.mark.parametrize("layer", [nn.Conv2d(1, 2, 3), nn.Linear(3, 2), nn.MaxPool2d(2), nn.BatchNorm2d(1),
                                   nn.Flatten(), nn.Dropout(0.5), nn.ReLU(), lenet()],
                         ids=lambda layer: type(layer).__name__)
@pytest.mark.parametrize("value", [[[0.0, 1.0]], 1.0], ids=["list", "scalar"])
def test_layers_refuse_lists_and_scalars(layer, value):
    with raises(DTypeError, "must be an array", type(value).__name__, "to_device"):
        layer(value)


def test_loss_refuses_list_labels():
    with raises(DTypeError, "labels must be an array, got list"):
        nn.CrossEntropyLoss()(zeros(2, 3), [0, 1])


# --------------------------------------------------------------------------
# empty batches


EMPTY_BATCH = {
    "Conv2d": (lambda: nn.Conv2d(1, 2, 3), (0, 1, 6, 6)),
    "Linear": (lambda: nn.Linear(3, 2), (0, 3)),
    "MaxPool2d": (lambda: nn.MaxPool2d(2), (0, 1, 6, 6)),
    "AvgPool2d": (lambda: nn.AvgPool2d(2), (0, 1, 6, 6)),
    "LPPool2d": (lambda: nn.LPPool2d(2, 2), (0, 1, 6, 6)),
    "BatchNorm2d": (lambda: nn.BatchNorm2d(1), (0, 1, 6, 6)),
    "Flatten": (lambda: nn.Flatten(), (0, 1, 6, 6)),
    "lenet": (lambda: lenet(), (0, 1, 28, 28)),
}


@pytest.mark.parametrize("name", list(EMPTY_BATCH))
def test_empty_batches_are_refused(name):
    make, shape = EMPTY_BATCH[name]
    with raises(ShapeError, "empty batch", str(shape), "at least one sample"):
        make()(zeros(*shape))


def test_empty_batch_for_the_loss():
    with raises(ShapeError, "empty batch"):
        nn.CrossEntropyLoss()(zeros(0, 10), np.zeros(0, np.int64))


# --------------------------------------------------------------------------
# softmax axes, optimizers, schedulers, state dicts


def test_softmax_axis_must_exist_and_not_be_empty():
    with raises(ArgumentError, "axis 2", "(4, 3)", "axis=-1"):
        F.softmax(zeros(4, 3), axis=2)
    with raises(ArgumentTypeError, "axis must be an int", "1.0"):
        F.log_softmax(zeros(4, 3), axis=1.0)
    with raises(ShapeError, "empty"):
        F.log_softmax(zeros(4, 0))


OPTIMIZER_ERRORS = [
    (lambda m: SGD(m, lr=0.1), ArgumentTypeError, ["not the model", "model.parameters()"]),
    (lambda m: SGD([np.zeros(3)], lr=0.1), ArgumentTypeError, ["Parameters", "item 0", "ndarray"]),
    (lambda m: SGD(m.parameters(), lr="0.1"), ArgumentTypeError, ["lr", "'0.1'"]),
    (lambda m: SGD(m.parameters(), lr=float("nan")), ArgumentError, ["lr", "> 0", "nan"]),
    (lambda m: SGD(m.parameters(), lr=0.1, weight_decay=-1), ArgumentError, ["weight_decay", ">= 0"]),
    (lambda m: Adam(m.parameters(), betas=0.9), ArgumentTypeError, ["betas", "pair"]),
    (lambda m: Adam(m.parameters(), betas=(0.9, 1.0)), ArgumentError, ["betas", "[0, 1)"]),
    (lambda m: Adam(m.parameters(), eps=0), ArgumentError, ["eps", "> 0"]),
    (lambda m: StepLR("sgd", 2), ArgumentTypeError, ["StepLR takes an optimizer", "str"]),
    (lambda m: StepLR(SGD(m.parameters(), lr=0.1), 0), ArgumentError, ["step_size", ">= 1"]),
    (lambda m: StepLR(SGD(m.parameters(), lr=0.1), 1.5), ArgumentTypeError, ["step_size", "1.5"]),
    (lambda m: ExponentialLR(SGD(m.parameters(), lr=0.1), gamma=0), ArgumentError, ["gamma", "> 0"]),
]


@pytest.mark.parametrize("make, exception, fragments", OPTIMIZER_ERRORS,
                         ids=[f"{i}-{c[2][0]}" for i, c in enumerate(OPTIMIZER_ERRORS)])
def test_optimizer_and_scheduler_arguments(make, exception, fragments):
    with raises(exception, *fragments):
        make(nn.Linear(3, 2))


def test_load_state_dict_refuses_non_arrays_and_non_float_arrays():
    from portacnn.errors import CheckpointError

    model = nn.Linear(3, 2)
    with raises(CheckpointError, "dict of arrays", "list"):
        model.load_state_dict([np.zeros((2, 3)), np.zeros(2)])
    with raises(CheckpointError, "not arrays", "weight"):
        model.load_state_dict({"weight": [[0.0] * 3] * 2, "bias": np.zeros(2)})
    with raises(CheckpointError, "not floating point", "weight", "<U"):
        model.load_state_dict({"weight": np.full((2, 3), "a"), "bias": np.zeros(2)})


# --------------------------------------------------------------------------
# property-based: valid calls never fail, invalid ones always raise PortacnnError


def out_size(size, kernel, stride, padding, dilation=1):
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@st.composite
def conv_configs(draw):
    n, c, o = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    oh = out_size(h, kh, stride[0], padding[0], dilation[0])
    ow = out_size(w, kw, stride[1], padding[1], dilation[1])
    assume(oh >= 1 and ow >= 1)
    return dict(x=(n, c, h, w), weight=(o, c, kh, kw), stride=stride, padding=padding, dilation=dilation,
                out=(n, o, oh, ow))


@st.composite
def pool_configs(draw):
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    kernel = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    stride = draw(st.one_of(st.none(), st.tuples(st.integers(1, 3), st.integers(1, 3))))
    padding = (draw(st.integers(0, kernel[0] // 2)), draw(st.integers(0, kernel[1] // 2)))
    s = kernel if stride is None else stride
    oh, ow = out_size(h, kernel[0], s[0], padding[0]), out_size(w, kernel[1], s[1], padding[1])
    assume(oh >= 1 and ow >= 1)
    return dict(x=(n, c, h, w), kernel=kernel, stride=stride, padding=padding, out=(n, c, oh, ow))


@PROPERTY
@given(cfg=conv_configs(), dtype=st.sampled_from([np.float32, np.float64]))
def test_valid_conv2d_calls_never_fail(cfg, dtype):
    rng = np.random.default_rng(0)
    x, w = rng.standard_normal(cfg["x"]).astype(dtype), rng.standard_normal(cfg["weight"]).astype(dtype)
    options = {k: cfg[k] for k in ("stride", "padding", "dilation")}
    out = F.conv2d(x, w, np.zeros(cfg["weight"][0], dtype), **options)
    assert out.shape == cfg["out"] and out.dtype == dtype
    gx, gw, gb = F.conv2d_backward(np.ones(cfg["out"], dtype), x, w, **options)
    assert gx.shape == x.shape and gw.shape == w.shape and gb.shape == (w.shape[0],)
    layer = nn.Conv2d(cfg["x"][1], cfg["weight"][0], cfg["weight"][2:], dtype=np.dtype(dtype).name, **options)
    x_in = portacnn.tensor(x, requires_grad=True)
    out = layer(x_in)
    assert out.shape == cfg["out"]
    out.backward(np.ones(cfg["out"], dtype))
    assert x_in.grad.shape == x.shape


@PROPERTY
@given(cfg=pool_configs(), op=st.sampled_from(["max", "avg", "lp"]))
def test_valid_pooling_calls_never_fail(cfg, op):
    x = np.random.default_rng(1).random(cfg["x"]) + 0.1
    g = np.ones(cfg["out"])
    if op == "lp":
        assume(cfg["padding"] == (0, 0))
        out, gx = F.lp_pool2d(x, 2, cfg["kernel"], cfg["stride"]), F.lp_pool2d_backward(g, x, 2, cfg["kernel"],
                                                                                         cfg["stride"])
        layer = nn.LPPool2d(2, cfg["kernel"], cfg["stride"])
    else:
        forward, backward = getattr(F, f"{op}_pool2d"), getattr(F, f"{op}_pool2d_backward")
        args = (cfg["kernel"], cfg["stride"], cfg["padding"])
        out, gx = forward(x, *args), backward(g, x, *args)
        layer = (nn.MaxPool2d if op == "max" else nn.AvgPool2d)(*args)
    assert out.shape == cfg["out"] and gx.shape == x.shape
    assert np.all(np.isfinite(out)) and np.all(np.isfinite(gx))
    x_in = portacnn.tensor(x, requires_grad=True)
    layer_out = layer(x_in)
    assert layer_out.shape == cfg["out"]
    layer_out.backward(g)
    assert x_in.grad.shape == x.shape


@PROPERTY
@given(n=st.integers(1, 4), fin=st.integers(1, 6), fout=st.integers(1, 6), classes_ok=st.booleans())
def test_valid_linear_and_loss_calls_never_fail(n, fin, fout, classes_ok):
    rng = np.random.default_rng(2)
    layer, loss_fn = nn.Linear(fin, fout, rng=0, dtype="float64"), nn.CrossEntropyLoss()
    x_in = portacnn.tensor(rng.standard_normal((n, fin)), requires_grad=True)
    logits = layer(x_in)
    labels = rng.integers(0, fout, n).astype(np.uint8 if classes_ok else np.int64)
    loss = loss_fn(logits, labels)
    assert np.isfinite(loss.item())
    loss.backward()
    assert x_in.grad.shape == (n, fin)


# Each mutation turns a valid conv2d / pooling / linear call into an invalid one.
INVALID_MUTATIONS = [
    "ndim", "channels", "too_small", "kernel_zero", "stride_zero", "stride_negative", "dilation_zero",
    "padding_negative", "float_argument", "string_argument", "pool_padding", "integer_x", "bool_x",
    "list_x", "empty_batch", "weight_dtype", "grad_shape", "grad_dtype", "grad_list", "bias_shape",
]


def _invalid_call(mutation, cfg, draw):
    """A zero-argument callable performing one invalid call derived from the valid conv config ``cfg``."""
    x_shape, w_shape = cfg["x"], cfg["weight"]
    options = {k: cfg[k] for k in ("stride", "padding", "dilation")}
    x, w = np.ones(x_shape, np.float32), np.ones(w_shape, np.float32)
    grad = np.ones(cfg["out"], np.float32)
    kernel = w_shape[2:]
    op = draw(st.sampled_from(["conv2d", "max_pool2d", "avg_pool2d", "conv_layer", "pool_layer"]))

    # pooling uses the conv config's input with a kernel that fits it, no padding, and the same stride
    pool_kernel = (min(kernel[0], x_shape[2]), min(kernel[1], x_shape[3]))

    def run(x=x, w=w, grad=None, **changes):
        opts = {**options, **changes}
        if op == "conv2d":
            return F.conv2d(x, w, **opts) if grad is None else F.conv2d_backward(grad, x, w, **opts)
        if op == "conv_layer":
            opts.pop("kernel_size", None)
            layer = nn.Conv2d(x_shape[1], w_shape[0], kernel, **opts)
            out = layer(x)
            return out if grad is None else out.backward(grad)
        kernel_size = changes.get("kernel_size", pool_kernel)
        pool_opts = dict(stride=opts["stride"], padding=changes.get("padding", 0))
        if grad is not None:  # a gradient for the pooled shape (or a deliberately wrong one)
            return F.max_pool2d_backward(grad, x, kernel_size, **pool_opts)
        if op == "max_pool2d":
            return F.max_pool2d(x, kernel_size, **pool_opts)
        if op == "avg_pool2d":
            return F.avg_pool2d(x, kernel_size, **pool_opts)
        layer = nn.MaxPool2d(kernel_size, **pool_opts)
        return layer(x)

    if mutation == "ndim":
        bad = draw(st.sampled_from([x.reshape(x_shape[0], -1), x[0], x[None], x.reshape(-1)]))
        return lambda: run(x=bad)
    if mutation == "channels":
        if op in ("conv2d", "conv_layer"):
            return lambda: run(x=np.ones((x_shape[0], x_shape[1] + 1, *x_shape[2:]), np.float32))
        return lambda: F.linear(np.ones((2, 3), np.float32), np.ones((4, 5), np.float32))
    if mutation == "too_small":
        big = max(x_shape[2:]) + 2 * max(cfg["padding"]) + 1
        if op in ("conv2d", "conv_layer"):
            return lambda: F.conv2d(x, np.ones((*w_shape[:2], big, big), np.float32), stride=options["stride"],
                                    padding=options["padding"])
        return lambda: run(kernel_size=big, padding=0)
    if mutation == "kernel_zero":
        if op in ("conv2d", "conv_layer"):
            return lambda: nn.Conv2d(x_shape[1], w_shape[0], (0, kernel[1]))
        return lambda: run(kernel_size=draw(st.sampled_from([0, -1, (1, 0)])))
    if mutation == "stride_zero":
        return lambda: run(stride=(0, 1))
    if mutation == "stride_negative":
        return lambda: run(stride=-draw(st.integers(1, 3)))
    if mutation == "dilation_zero":
        return lambda: F.conv2d(x, w, dilation=draw(st.sampled_from([0, (1, 0), -1])))
    if mutation == "padding_negative":
        return lambda: run(padding=(-draw(st.integers(1, 2)), 0))
    if mutation == "float_argument":
        name = draw(st.sampled_from(["stride", "padding"]))
        return lambda: run(**{name: draw(st.sampled_from([1.0, 2.5, (1, 1.0)]))})
    if mutation == "string_argument":
        name = draw(st.sampled_from(["stride", "padding"]))
        return lambda: run(**{name: draw(st.sampled_from(["same", "1", ""]))})
    if mutation == "pool_padding":
        k = draw(st.integers(1, 4))
        return lambda: F.max_pool2d(np.ones((1, 1, 9, 9), np.float32), k, padding=k // 2 + 1)
    if mutation == "integer_x":
        return lambda: run(x=x.astype(draw(st.sampled_from([np.uint8, np.int32, np.int64]))))
    if mutation == "bool_x":
        return lambda: run(x=x.astype(bool))
    if mutation == "list_x":
        return lambda: run(x=x.tolist())
    if mutation == "empty_batch":
        return lambda: run(x=x[:0])
    if mutation == "weight_dtype":
        return lambda: F.conv2d(x, w.astype(np.float64), **options)
    if mutation == "grad_shape":
        return lambda: run(grad=np.ones((*grad.shape[:-1], grad.shape[-1] + 7), np.float32))
    if mutation == "grad_dtype":
        if op in ("conv2d", "conv_layer"):
            return lambda: run(grad=grad.astype(np.float64))
        return lambda: F.max_pool2d_backward(np.ones((1, 1, 2, 2)), np.ones((1, 1, 4, 4), np.float32), 2)
    if mutation == "grad_list":
        return lambda: run(grad=grad.tolist())
    if mutation == "bias_shape":
        return lambda: F.conv2d(x, w, np.zeros(w_shape[0] + 1, np.float32), **options)
    raise AssertionError(mutation)


@PROPERTY
@given(cfg=conv_configs(), mutation=st.sampled_from(INVALID_MUTATIONS), data=st.data())
def test_invalid_calls_always_raise_a_portacnn_error(cfg, mutation, data):
    call = _invalid_call(mutation, cfg, data.draw)
    with pytest.raises(PortacnnError) as info:
        call()
    assert isinstance(info.value, (ValueError, TypeError)), type(info.value).__mro__
    assert len(str(info.value)) > 20


@PROPERTY
@given(layer=st.sampled_from(["Conv2d", "Linear", "BatchNorm2d", "Dropout", "MaxPool2d", "LPPool2d"]),
       value=st.one_of(st.integers(-5, 0), st.floats(allow_nan=True), st.text(max_size=3), st.booleans(),
                       st.none(), st.lists(st.integers(-2, 2), max_size=3)))
def test_invalid_constructor_arguments_always_raise_a_portacnn_error(layer, value):
    make = {
        "Conv2d": lambda v: nn.Conv2d(v, 2, 3),
        "Linear": lambda v: nn.Linear(3, v),
        "BatchNorm2d": lambda v: nn.BatchNorm2d(v),
        "Dropout": lambda v: nn.Dropout(v if not isinstance(v, int) or isinstance(v, bool) else v - 1),
        "MaxPool2d": lambda v: nn.MaxPool2d(v),
        "LPPool2d": lambda v: nn.LPPool2d(v, 2),
    }[layer]
    if layer == "Dropout" and isinstance(value, float) and 0.0 <= value < 1.0:
        value = value + 1.0  # a valid probability otherwise
    if layer == "LPPool2d" and isinstance(value, float) and value > 0:
        value = -value
    if layer == "MaxPool2d" and isinstance(value, list) and len(value) == 2 and min(value) >= 1:
        value = [0, *value]
    with pytest.raises(PortacnnError):
        make(value)
