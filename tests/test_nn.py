"""Layers, models and their parameters: against PyTorch, finite differences, and across backends."""

import numpy as np
import pytest
from support import directional_check

import portacnn
from portacnn import functional as F
from portacnn import nn
from portacnn.backends import to_numpy
from portacnn.errors import BackendMismatchError, CheckpointError, UsageError
from portacnn.models import lenet
from portacnn.parity import check_training
from portacnn.testing import gradcheck

torch = pytest.importorskip("torch")


def _torch_copy(layer, torch_layer):
    """Give a torch layer exactly our layer's parameters."""
    with torch.no_grad():
        for name, parameter in layer.named_parameters():
            getattr(torch_layer, name).copy_(torch.tensor(to_numpy(parameter.data)))
    return torch_layer


def _compare_with_torch(layer, torch_layer, x, rtol=1e-10, atol=1e-12):
    """Forward, input gradient and parameter gradients of ``layer`` equal ``torch_layer``'s."""
    rng = np.random.default_rng(5)
    x_in = portacnn.tensor(x, requires_grad=True)
    out = layer(x_in)
    grad = rng.standard_normal(out.shape)
    out.backward(grad)

    xt = torch.tensor(x, requires_grad=True)
    out_t = torch_layer(xt)
    out_t.backward(torch.tensor(grad))
    np.testing.assert_allclose(out.data, out_t.detach().numpy(), rtol=rtol, atol=atol)
    np.testing.assert_allclose(x_in.grad, xt.grad.numpy(), rtol=rtol, atol=atol)
    for name, parameter in layer.named_parameters():
        np.testing.assert_allclose(parameter.grad, getattr(torch_layer, name).grad.numpy(), rtol=rtol, atol=atol,
                                   err_msg=name)


def _image(shape=(3, 4, 9, 8), seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


@pytest.mark.parametrize("options", [
    dict(kernel_size=3),
    dict(kernel_size=(3, 2), stride=2, padding=1),
    dict(kernel_size=(2, 3), stride=(1, 2), padding=(2, 0), dilation=(2, 1), bias=False),
])
def test_conv2d_layer_matches_torch(options):
    layer = nn.Conv2d(4, 5, rng=0, dtype="float64", **options)
    _compare_with_torch(layer, _torch_copy(layer, torch.nn.Conv2d(4, 5, **options).double()), _image())


@pytest.mark.parametrize("bias", [True, False])
def test_linear_layer_matches_torch(bias):
    layer = nn.Linear(7, 3, bias=bias, rng=0, dtype="float64")
    _compare_with_torch(layer, _torch_copy(layer, torch.nn.Linear(7, 3, bias=bias).double()), _image((4, 7)))


@pytest.mark.parametrize("make, make_torch", [
    (lambda: nn.MaxPool2d(3, 2, 1), lambda: torch.nn.MaxPool2d(3, 2, 1)),
    (lambda: nn.AvgPool2d(2), lambda: torch.nn.AvgPool2d(2)),
    (lambda: nn.AvgPool2d((3, 2), (1, 2), (1, 0)), lambda: torch.nn.AvgPool2d((3, 2), (1, 2), (1, 0))),
    (nn.ReLU, torch.nn.ReLU),
    (nn.Sigmoid, torch.nn.Sigmoid),
    (nn.Tanh, torch.nn.Tanh),
    (nn.Flatten, torch.nn.Flatten),
])
def test_parameter_free_layers_match_torch(make, make_torch):
    _compare_with_torch(make(), make_torch(), _image())


def test_lppool_layer_is_torch_lppool_scaled_to_a_mean():
    x = np.abs(_image()) + 0.1
    layer = nn.LPPool2d(2.0, 2)
    out = layer(x)
    expected = torch.nn.LPPool2d(2.0, 2)(torch.tensor(x)).numpy() / 4 ** 0.5
    np.testing.assert_allclose(out.data, expected, rtol=1e-10)


@pytest.mark.parametrize("training", [True, False])
def test_batchnorm2d_matches_torch_including_running_statistics(training):
    layer = nn.BatchNorm2d(4, momentum=0.2, dtype="float64")
    reference = torch.nn.BatchNorm2d(4, momentum=0.2).double()
    rng = np.random.default_rng(3)
    layer.weight.data, layer.bias.data = rng.standard_normal(4), rng.standard_normal(4)
    layer.running_mean.data, layer.running_var.data = rng.standard_normal(4), rng.uniform(0.5, 2, 4)
    _torch_copy(layer, reference)
    with torch.no_grad():
        reference.running_mean.copy_(torch.tensor(layer.running_mean.data))
        reference.running_var.copy_(torch.tensor(layer.running_var.data))
    layer.train(training)
    reference.train(training)
    _compare_with_torch(layer, reference, _image(seed=4) * 3 + 1)
    np.testing.assert_allclose(layer.running_mean.data, reference.running_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(layer.running_var.data, reference.running_var.numpy(), rtol=1e-12)


def test_cross_entropy_loss_layer_matches_torch():
    logits, labels = _image((6, 10)), np.arange(6) % 10
    loss_fn = nn.CrossEntropyLoss()
    logits_in = portacnn.tensor(logits, requires_grad=True)
    loss = loss_fn(logits_in, labels)
    loss.backward()
    logits_t = torch.tensor(logits, requires_grad=True)
    loss_t = torch.nn.functional.cross_entropy(logits_t, torch.tensor(labels))
    loss_t.backward()
    assert loss.item() == pytest.approx(loss_t.item(), rel=1e-12)
    np.testing.assert_allclose(logits_in.grad, logits_t.grad.numpy(), rtol=1e-10, atol=1e-14)


# --------------------------------------------------------------------------
# finite differences: every entry of each layer's input and parameter gradients (portacnn.testing.gradcheck),
# and LeNet's parameters along one random direction each


def _gradcheck_every_entry(layer, x):
    """The tape's gradients of ``layer`` (its input and every parameter) against central differences, entry by entry.

    rtol 1e-6 and atol 1e-8 per entry, in float64; a step of 1e-5 keeps the
    rounding error of the difference quotient well under atol (these layers are
    linear, or smooth at the inputs used, so the step adds no truncation error
    of note).
    """
    assert all(p.data.size <= x.size for p in layer.parameters())  # so max_checks reaches every entry
    gradcheck(layer, x, eps=1e-5, rtol=1e-6, atol=1e-8, max_checks=x.size)


@pytest.mark.parametrize("make", [
    lambda: nn.Conv2d(4, 3, (3, 2), stride=2, padding=1, dilation=(1, 2), rng=1, dtype="float64"),
    lambda: nn.MaxPool2d(2),
    lambda: nn.AvgPool2d(3, 2, 1),
    lambda: nn.LPPool2d(3.0, 2),
    lambda: nn.ReLU(),
    lambda: nn.Sigmoid(),
    lambda: nn.Tanh(),
    lambda: nn.Flatten(),
    lambda: nn.BatchNorm2d(4, dtype="float64"),
    lambda: nn.BatchNorm2d(4, dtype="float64").eval(),
], ids=["conv2d", "maxpool", "avgpool", "lppool", "relu", "sigmoid", "tanh", "flatten", "batchnorm-train",
        "batchnorm-eval"])
def test_layer_gradients_match_finite_differences(make):
    layer = make()
    x = np.random.default_rng(2).permutation(3 * 4 * 8 * 8).reshape(3, 4, 8, 8) / 40.0 - 2.0123  # distinct, none at a kink
    if isinstance(layer, nn.LPPool2d):
        x = np.abs(x) + 0.1
    _gradcheck_every_entry(layer, x)


def test_linear_and_dropout_gradients_match_finite_differences():
    _gradcheck_every_entry(nn.Linear(6, 4, rng=3, dtype="float64"), _image((5, 6)))
    dropout = nn.Dropout(0.4, rng=0)
    x = portacnn.tensor(_image((5, 6)), requires_grad=True)
    out = dropout(x)
    out.backward(np.ones_like(out.data))
    np.testing.assert_allclose(x.grad, np.where(out.data == 0, 0.0, 1 / 0.6), rtol=1e-15)  # same mask, same scale


def test_lenet_gradients_match_finite_differences():
    model = lenet(seed=3, dtype="float64")
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((2, 1, 28, 28)), np.array([3, 7])
    loss_fn(model(x), y).backward()
    # One random direction per parameter: gradcheck would sample 32 of the 400,000 entries of the first
    # linear layer's weight, or need 800,000 forward passes to check them all.
    for name, parameter in model.named_parameters():
        def loss_at(value, parameter=parameter):
            original, parameter.data = parameter.data, value
            try:
                return loss_fn(model(x), y).item()
            finally:
                parameter.data = original

        directional_check(loss_at, [parameter.data], {0: parameter.grad}, 1.0, rng, h=1e-6, rtol=1e-5, atol=1e-9,
                          name=name)


# --------------------------------------------------------------------------
# behaviour of the module machinery


def test_gradients_accumulate_until_zero_grad():
    layer = nn.Linear(3, 2, rng=0, dtype="float64")
    x, g = _image((4, 3)), _image((4, 2), seed=1)
    layer(x).backward(g)
    first = layer.weight.grad.copy()
    layer(x).backward(g)
    np.testing.assert_allclose(layer.weight.grad, 2 * first)
    layer.zero_grad()
    assert layer.weight.grad is None


def test_module_backward_says_to_call_loss_backward():
    """Layers have no backward of their own any more: each old call form says what to do instead."""
    calls = [
        lambda: nn.Conv2d(1, 1, 3).backward(np.zeros((1, 1, 1, 1), dtype=np.float32)),
        lambda: lenet().backward(np.zeros((1, 10), dtype=np.float32), input_grad=False),
        lambda: nn.CrossEntropyLoss().backward(),
    ]
    for call in calls:
        with pytest.raises(UsageError, match=r"loss\.backward\(\)"):
            call()


def test_dropout_is_identity_in_eval_and_reproducible_from_its_seed():
    x = np.ones((4, 100), dtype=np.float32)
    first, second = nn.Dropout(0.5, rng=7), nn.Dropout(0.5, rng=7)
    np.testing.assert_array_equal(first(x).data, second(x).data)
    out = first(x).data
    assert 0.3 < (out != 0).mean() < 0.7
    np.testing.assert_array_equal(out[out != 0], 2.0)
    assert not np.array_equal(out, first(x).data), "each forward draws a fresh mask"
    assert first.eval()(x).data is x


def test_train_and_eval_reach_every_sublayer():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Sequential(nn.BatchNorm2d(2), nn.Dropout(0.1)))
    model.eval()
    assert not any(m.training for m in model.modules())
    model.train()
    assert all(m.training for m in model.modules())


def test_state_dict_names_and_round_trip():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, rng=0), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3, rng=1))
    names = list(model.state_dict())
    assert names == ["0.weight", "0.bias", "1.weight", "1.bias", "3.weight", "3.bias",
                     "1.running_mean", "1.running_var", "1.num_batches_tracked"]
    other = nn.Sequential(nn.Conv2d(1, 2, 3, rng=5), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3, rng=6))
    other.load_state_dict({k: to_numpy(v) for k, v in model.state_dict().items()})
    for (name, a), b in zip(model.state_dict().items(), other.state_dict().values()):
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_load_state_dict_lists_every_mismatch():
    model = lenet()
    state = {k: to_numpy(v) for k, v in model.state_dict().items()}
    del state["0.bias"]
    state["extra.weight"] = np.zeros(3)
    state["7.weight"] = np.zeros((500, 801), dtype=np.float32)
    with pytest.raises(CheckpointError) as error:
        model.load_state_dict(state)
    message = str(error.value)
    assert "missing: 0.bias" in message
    assert "unexpected: extra.weight" in message
    assert "7.weight" in message and "(500, 801)" in message and "(500, 800)" in message


# --------------------------------------------------------------------------
# across backends


def test_same_seed_gives_bit_identical_initial_weights_on_every_backend(case):
    reference = lenet(seed=11, dtype=case.dtype, device="numpy").state_dict()
    model = lenet(seed=11, dtype=case.dtype, device=case.spec)
    for name, value in model.state_dict().items():
        case.check(value)
        np.testing.assert_array_equal(case.to_numpy(value), reference[name], err_msg=name)


def test_model_to_moves_every_parameter_and_keeps_values(case):
    model = lenet(seed=2, dtype=case.dtype, device="numpy")
    before = {k: v.copy() for k, v in model.state_dict().items()}
    model.to(case.spec)
    for name, value in model.state_dict().items():
        case.check(value)
        np.testing.assert_array_equal(case.to_numpy(value), before[name], err_msg=name)


def test_lenet_trained_three_sgd_steps_matches_numpy_float64(case):
    result = check_training(case.spec, case.dtype)
    assert result.passed, f"{result.case} on {result.backend}: max abs diff {result.max_abs:.3e} {result.error}"


def test_batch_from_another_backend_is_refused_with_both_sides_named():
    pytest.importorskip("array_api_strict")
    model = lenet(device="array_api_strict:device1")
    batch = np.zeros((2, 1, 28, 28), dtype=np.float32)
    with pytest.raises(BackendMismatchError) as error:
        model(batch)
    message = str(error.value)
    assert "numpy" in message and "array_api_strict" in message and "to_device" in message


def test_model_dtype_cast_with_to():
    model = lenet(dtype="float32").to("numpy", dtype="float64")
    assert all(p.data.dtype == np.float64 for p in model.parameters())


def test_dropout_output_stays_on_the_input_device(case):
    x = case.put(np.ones((3, 5)))
    out = nn.Dropout(0.5, rng=0)(x)
    case.check(out.data)
    expected = np.where(F.dropout_mask((3, 5), 0.5, np.random.default_rng(0)), 2.0, 0.0)
    case.assert_close(out.data, expected)


def test_a_constant_input_gives_the_same_parameter_gradients_as_one_that_requires_grad():
    """A plain array input (a constant: no input gradient is computed) leaves the parameter gradients unchanged."""
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((3, 1, 28, 28)), np.array([1, 2, 3])
    grads = []
    for input_grad in (True, False):
        model, loss_fn = lenet(seed=1, dtype="float64"), nn.CrossEntropyLoss()
        x_in = portacnn.tensor(x, requires_grad=True) if input_grad else x
        loss_fn(model(x_in), y).backward()
        if input_grad:
            assert x_in.grad is not None and x_in.grad.shape == x.shape
        grads.append([p.grad for p in model.parameters()])
    for with_input, without in zip(*grads):
        np.testing.assert_array_equal(with_input, without)


def test_conv2d_backward_after_an_eval_forward_matches_training_mode():
    x, grad = _image((2, 4, 9, 8)), _image((2, 3, 7, 6), seed=1)
    results = []
    for training in (True, False):
        layer = nn.Conv2d(4, 3, 3, rng=0, dtype="float64").train(training)
        x_in = portacnn.tensor(x, requires_grad=True)
        layer(x_in).backward(grad)
        results.append((x_in.grad, layer.weight.grad, layer.bias.grad))
    for trained, evaluated in zip(*results):
        np.testing.assert_array_equal(trained, evaluated)
