"""The model zoo: every model builds for MNIST- and CIFAR-shaped inputs, trains (gradients reach every
parameter), draws bit-identical weights on every backend, and has the paper's size; ResNet's option-A
shortcut has an exact gradient. Agreement with the same models written in ``torch.nn`` is in
``test_interop.py``."""

from __future__ import annotations

import numpy as np
import pytest

import portacnn
from portacnn import nn
from portacnn.checkpoint import build_model, load_checkpoint, save_checkpoint
from portacnn.errors import PortacnnError, ShapeError
from portacnn.models import architecture_of, available, create, lenet5, mobilenet, resnet8, resnet20, resnet32, vgg
from portacnn.models.resnets import BasicBlock, PadShortcut
from portacnn.testing import gradcheck

ZOO = {"lenet5": lenet5, "resnet8": resnet8, "resnet20": resnet20, "resnet32": resnet32, "vgg": vgg,
       "mobilenet": mobilenet}
#: Input (channels, size) and class count; LeNet-5 is told its input size, the rest pool globally.
INPUTS = [(1, 28, 10), (3, 32, 7), (1, 28, 1)]


def build(name, channels, size, **kwargs):
    if name == "lenet5":
        kwargs["input_size"] = size
    return ZOO[name](in_channels=channels, **kwargs)


@pytest.mark.parametrize("channels, size, num_classes", INPUTS, ids=lambda v: str(v))
@pytest.mark.parametrize("name", list(ZOO))
def test_builds_for_mnist_and_cifar_shapes_and_gradients_reach_every_parameter(name, channels, size, num_classes):
    model = build(name, channels, size, num_classes=num_classes)
    x = np.random.default_rng(0).standard_normal((2, channels, size, size)).astype(np.float32)
    out = model(x)
    assert out.shape == (2, num_classes) and out.dtype == np.float32
    # With one class the cross-entropy is constant: its gradient would be zero everywhere.
    loss = nn.CrossEntropyLoss()(out, np.arange(2) % num_classes) if num_classes > 1 else (out * out).sum()
    loss.backward()
    for parameter_name, parameter in model.named_parameters():
        grad = parameter.grad
        assert grad is not None, f"{name}: no gradient reached {parameter_name}"
        assert grad.shape == parameter.shape and np.all(np.isfinite(grad)), parameter_name
        assert np.any(grad != 0), f"{name}: the gradient of {parameter_name} is all zero"
    model.eval()
    with portacnn.no_grad():
        assert model(x[:1]).shape == (1, num_classes)


@pytest.mark.parametrize("name", list(ZOO))
def test_same_seed_gives_bit_identical_weights_on_every_backend(name, case):
    reference = ZOO[name](seed=3, dtype=case.dtype, device="numpy").state_dict()
    state = ZOO[name](seed=3, dtype=case.dtype, device=case.spec).state_dict()
    assert list(state) == list(reference)
    for key, value in state.items():
        case.check(value, dtype=case.dtype if key.endswith(("weight", "bias", "running_mean", "running_var"))
                   else "int64")
        np.testing.assert_array_equal(case.to_numpy(value), reference[key], err_msg=key)


@pytest.mark.parametrize("name", list(ZOO))
def test_the_seed_decides_the_weights(name):
    first, again, other = (ZOO[name](seed=seed).state_dict() for seed in (0, 0, 1))
    for key, value in first.items():
        np.testing.assert_array_equal(value, again[key], err_msg=key)
    # Every layer draws its own weights: no two weight tensors of one model are equal, and seed 1 differs.
    weights = [v for k, v in first.items() if k.endswith("weight") and v.ndim > 1]
    assert all(not np.array_equal(weights[i], weights[j]) for i in range(len(weights))
               for j in range(i) if weights[i].shape == weights[j].shape)
    assert all(not np.array_equal(first[k], other[k]) for k in first if k.endswith("weight") and first[k].ndim > 1)


def test_initialisation_follows_the_papers():
    model = resnet20(seed=0)
    state = model.state_dict()
    # He normal (fan in) for convolutions: std sqrt(2 / (in * 3 * 3)); 36,864 draws in layer3.1.conv1.
    weight = state["layer3.1.conv1.weight"]
    assert abs(weight.std() / np.sqrt(2 / (64 * 9)) - 1) < 0.02 and abs(weight.mean()) < 0.01 * weight.std()
    for key, value in state.items():
        if key.endswith(("bn1.weight", "bn2.weight")):
            np.testing.assert_array_equal(value, 1, err_msg=key)
        if key.endswith(("bn1.bias", "bn2.bias", "running_mean")):
            np.testing.assert_array_equal(value, 0, err_msg=key)
    depthwise = mobilenet(seed=0).state_dict()["features.5.depthwise.weight"]  # 256 filters of 1x3x3
    assert depthwise.shape == (256, 1, 3, 3)
    assert abs(depthwise.std() / np.sqrt(2 / 9) - 1) < 0.05
    limit = np.sqrt(6 / (120 + 84))  # LeNet-5's F6: Glorot uniform
    f6 = lenet5(seed=0).state_dict()["9.weight"]
    assert f6.shape == (84, 120) and np.abs(f6).max() <= limit and np.abs(f6).max() > 0.95 * limit


def test_resnet_sizes_match_the_paper():
    # He et al. 2015, Table 6: ResNet-20 0.27M, ResNet-32 0.46M parameters (option A, 10 classes).
    counts = {name: ZOO[name]().num_parameters() for name in ("resnet8", "resnet20", "resnet32")}
    assert counts == {"resnet8": 75_290, "resnet20": 269_722, "resnet32": 464_154}
    assert round(counts["resnet20"] / 1e6, 2) == 0.27 and round(counts["resnet32"] / 1e6, 2) == 0.46
    # 6n + 2 weighted layers: 3 x 2n convolutions plus the first conv and the classifier.
    for name, n in (("resnet8", 1), ("resnet20", 3), ("resnet32", 5)):
        convs = [k for k in ZOO[name]().state_dict() if k.endswith(("conv1.weight", "conv2.weight"))]
        assert len(convs) == 6 * n + 1, name
    # Option B adds a 1x1 conv + BN where the width doubles (16 -> 32, 32 -> 64), nothing elsewhere.
    projection = 16 * 32 + 32 * 64 + 2 * (32 + 64)
    assert resnet20(shortcut="B").num_parameters() == counts["resnet20"] + projection
    assert resnet32(shortcut="B").num_parameters() == counts["resnet32"] + projection
    assert not any("shortcut" in key for key in resnet20().state_dict())


def test_option_a_shortcut_subsamples_and_zero_pads_the_new_channels():
    x = np.random.default_rng(1).standard_normal((2, 4, 5, 5))
    out = PadShortcut(4, 8, 2)(x).data
    assert out.shape == (2, 8, 3, 3)
    np.testing.assert_array_equal(out[:, 2:6], x[:, :, ::2, ::2])
    np.testing.assert_array_equal(out[:, :2], 0)
    np.testing.assert_array_equal(out[:, 6:], 0)
    assert PadShortcut(4, 8, 2).num_parameters() == 0


def test_option_a_shortcut_gradient_is_exact():
    x = np.random.default_rng(2).standard_normal((2, 3, 5, 4))  # odd and even sizes, odd channel padding
    gradcheck(PadShortcut(3, 6, 2), x)
    gradcheck(PadShortcut(3, 3, 1), x)
    block = BasicBlock(3, 6, 2, "A", dict(rng=4, dtype="float64", device=None)).eval()
    gradcheck(block, x)


def test_option_a_shortcut_gradient_on_jax_and_torch():
    x = np.random.default_rng(3).standard_normal((1, 2, 4, 4))
    for spec in ("torch", "jax"):
        pytest.importorskip(spec)
    gradcheck(PadShortcut(2, 4, 2), x, backends=["torch", "jax"])


# JAX is left out: it compiles every op of every shape, half a minute for a model; the shortcut's gradcheck
# above runs there, and the layers' parity is checked op by op elsewhere.
@pytest.mark.parametrize("spec", ["torch", "array_api_strict:device1"])
def test_a_zoo_model_runs_on_other_backends_and_matches_numpy(spec):
    pytest.importorskip(spec.split(":")[0])
    x = np.random.default_rng(4).standard_normal((2, 3, 8, 8))
    for name in ("resnet8", "mobilenet"):
        expected = ZOO[name](dtype="float64")(x).data
        model = ZOO[name](dtype="float64", device=spec)
        out = model(portacnn.to_device(x, spec))
        out.sum().backward()
        assert portacnn.backends.placement_of(out.data) == portacnn.backends.parse_spec(spec)
        assert all(portacnn.backends.placement_of(p.grad) == portacnn.backends.parse_spec(spec)
                   for p in model.parameters())
        np.testing.assert_allclose(portacnn.to_numpy(out), expected, rtol=1e-10, atol=1e-12, err_msg=name)


def test_registered_and_rebuilt_from_a_checkpoint(tmp_path):
    assert set(ZOO) <= set(available())
    assert architecture_of(resnet20(shortcut="B", num_classes=100)) == (
        "resnet20", {"num_classes": 100, "in_channels": 3, "shortcut": "B"})
    assert architecture_of(lenet5(input_size=32, in_channels=3))[1]["input_size"] == 32
    model = create("vgg", widths=(8, 16), convs_per_stage=1, num_classes=5, in_channels=1, seed=2)
    x = np.random.default_rng(5).standard_normal((3, 1, 28, 28)).astype(np.float32)
    model(x)  # moves the BN running statistics away from their start
    model.eval()
    path = save_checkpoint(tmp_path / "vgg.npz", model)
    again = build_model(load_checkpoint(path))
    assert type(again) is type(model) and again.num_parameters() == model.num_parameters()
    again.eval()
    np.testing.assert_array_equal(again(x).data, model(x).data)


@pytest.mark.parametrize("call, words", [
    (lambda: resnet20(shortcut="C"), ["shortcut", "'A'", "'B'"]),
    (lambda: resnet8(num_classes=0), ["num_classes", "positive"]),
    (lambda: vgg(in_channels=2.5), ["in_channels", "int"]),
    (lambda: vgg(widths=[]), ["widths"]),
    (lambda: mobilenet(width_mult=0), ["width_mult"]),
    (lambda: lenet5(input_size=31), ["input_size", "28", "32"]),
    (lambda: lenet5(input_size=40), ["input_size"]),
    (lambda: resnet32(seed="zero"), ["seed"]),
])
def test_bad_options_raise_one_clear_error(call, words):
    with pytest.raises(PortacnnError) as error:
        call()
    assert all(word in str(error.value) for word in words), str(error.value)


def test_factories_are_keyword_only():
    for factory in ZOO.values():
        with pytest.raises(TypeError):
            factory(10)


def test_lenet5_built_for_28_refuses_32x32_images_at_its_first_fully_connected_layer():
    with pytest.raises(ShapeError, match="layer 9 .Linear."):
        lenet5(input_size=28)(np.zeros((1, 1, 32, 32), np.float32))
