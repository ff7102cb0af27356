"""Weights from and to PyTorch: each zoo model written again in ``torch.nn`` shares its state dict with the
portacnn model, both ways, and both compute the same outputs and gradients from it; ``load_state_dict``'s
``strict=False`` reports the keys as PyTorch does."""

from __future__ import annotations

import sys

import numpy as np
import pytest

import portacnn
from portacnn import nn
from portacnn.errors import ArgumentTypeError, BackendError, CheckpointError
from portacnn.interop import to_torch_state_dict
from portacnn.models import lenet5, mobilenet, resnet8, resnet20, resnet32, vgg
from portacnn.nn.module import IncompatibleKeys

torch = pytest.importorskip("torch")
tnn, TF = torch.nn, torch.nn.functional

# ---------------------------------------------------------------- the zoo in torch.nn


def torch_lenet5(in_channels=1, num_classes=10, input_size=28):
    return tnn.Sequential(
        tnn.Conv2d(in_channels, 6, 5, padding=(32 - input_size) // 2), tnn.Tanh(), tnn.AvgPool2d(2),
        tnn.Conv2d(6, 16, 5), tnn.Tanh(), tnn.AvgPool2d(2),
        tnn.Conv2d(16, 120, 5), tnn.Tanh(), tnn.Flatten(),
        tnn.Linear(120, 84), tnn.Tanh(), tnn.Linear(84, num_classes))


class TorchPad(tnn.Module):
    """Option A as in Idelbayev's resnet_cifar10: ``F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, p, p))``."""

    def __init__(self, extra):
        super().__init__()
        self.extra = extra

    def forward(self, x):
        return TF.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))


class TorchBlock(tnn.Module):
    def __init__(self, cin, cout, stride, shortcut):
        super().__init__()
        self.conv1 = tnn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(cout)
        self.conv2 = tnn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(cout)
        if stride == 1 and cin == cout:
            self.shortcut = tnn.Sequential()
        elif shortcut == "A":
            self.shortcut = TorchPad(cout - cin)
        else:
            self.shortcut = tnn.Sequential(tnn.Conv2d(cin, cout, 1, stride, bias=False), tnn.BatchNorm2d(cout))

    def forward(self, x):
        out = TF.relu(self.bn1(self.conv1(x)))
        return TF.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class TorchResNet(tnn.Module):
    def __init__(self, n, in_channels=3, num_classes=10, shortcut="A"):
        super().__init__()
        self.conv1 = tnn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(16)
        cin = 16
        for stage, width in enumerate((16, 32, 64), start=1):
            blocks = []
            for index in range(n):
                blocks.append(TorchBlock(cin, width, 2 if index == 0 and stage > 1 else 1, shortcut))
                cin = width
            setattr(self, f"layer{stage}", tnn.Sequential(*blocks))
        self.linear = tnn.Linear(64, num_classes)

    def forward(self, x):
        out = TF.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(TF.adaptive_avg_pool2d(out, 1).flatten(1))


class TorchVGG(tnn.Module):
    def __init__(self, in_channels=3, num_classes=10, widths=(32, 64, 128), convs_per_stage=2):
        super().__init__()
        layers, cin = [], in_channels
        for width in widths:
            for _ in range(convs_per_stage):
                layers += [tnn.Conv2d(cin, width, 3, padding=1, bias=False), tnn.BatchNorm2d(width), tnn.ReLU()]
                cin = width
            layers.append(tnn.MaxPool2d(2))
        self.features = tnn.Sequential(*layers)
        self.classifier = tnn.Linear(cin, num_classes)

    def forward(self, x):
        return self.classifier(TF.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


class TorchSeparable(tnn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.depthwise = tnn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False)
        self.bn1 = tnn.BatchNorm2d(cin)
        self.pointwise = tnn.Conv2d(cin, cout, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(cout)

    def forward(self, x):
        return TF.relu(self.bn2(self.pointwise(TF.relu(self.bn1(self.depthwise(x))))))


class TorchMobileNet(tnn.Module):
    def __init__(self, in_channels=3, num_classes=10):
        super().__init__()
        layers = [tnn.Sequential(tnn.Conv2d(in_channels, 32, 3, padding=1, bias=False), tnn.BatchNorm2d(32),
                                 tnn.ReLU())]
        cin = 32
        for width, stride in ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1)):
            layers.append(TorchSeparable(cin, width, stride))
            cin = width
        self.features = tnn.Sequential(*layers)
        self.classifier = tnn.Linear(cin, num_classes)

    def forward(self, x):
        return self.classifier(TF.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


#: name -> (portacnn factory, torch builder, options both take); the options vary the shapes where they can.
ZOO = {
    "lenet5": (lenet5, torch_lenet5, dict(in_channels=1, num_classes=10, input_size=28)),
    "lenet5_32": (lenet5, torch_lenet5, dict(in_channels=3, num_classes=7, input_size=32)),
    "resnet8": (resnet8, lambda **o: TorchResNet(1, **o), dict(in_channels=3, num_classes=10)),
    "resnet20": (resnet20, lambda **o: TorchResNet(3, **o), dict(in_channels=1, num_classes=5)),
    "resnet32": (resnet32, lambda **o: TorchResNet(5, **o), dict(in_channels=3, num_classes=10)),
    "resnet20_B": (resnet20, lambda **o: TorchResNet(3, **o), dict(in_channels=3, num_classes=10, shortcut="B")),
    "vgg": (vgg, TorchVGG, dict(in_channels=3, num_classes=10)),
    "mobilenet": (mobilenet, TorchMobileNet, dict(in_channels=1, num_classes=4)),
}
HAS_BATCH_NORM = {name for name in ZOO if not name.startswith("lenet5")}


def input_for(options, batch=3, seed=0, size=None):
    size = size or options.get("input_size", 32 if options["in_channels"] == 3 else 28)
    return np.random.default_rng(seed).standard_normal((batch, options["in_channels"], size, size)).astype(np.float32)


def scrambled(module):
    """A torch model whose BN layers have non-trivial weights and running statistics (a trained model's look),
    so that a statistic loaded into the wrong place changes the output."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in module.modules():
            if isinstance(layer, tnn.BatchNorm2d):
                c = layer.num_features
                layer.weight.copy_(1 + 0.3 * torch.randn(c, generator=generator))
                layer.bias.copy_(0.2 * torch.randn(c, generator=generator))
                layer.running_mean.copy_(0.1 * torch.randn(c, generator=generator))
                layer.running_var.copy_(0.5 + torch.rand(c, generator=generator))
                layer.num_batches_tracked.fill_(7)
    return module


def assert_same(ours, theirs, what):
    """float32 agreement by the parity suite's rule: rtol 1e-5, atol 1e-6 times max(1, max|expected|) (see
    portacnn.testing.TOLERANCES). Logits of the deep ResNets reach 30 with trained-looking BN statistics, and
    float32 rounding alone differs there by 6e-5."""
    expected = theirs.detach().numpy()
    np.testing.assert_allclose(portacnn.to_numpy(ours), expected, rtol=1e-5,
                               atol=1e-6 * max(1.0, float(np.abs(expected).max())), err_msg=what)


# ---------------------------------------------------------------- from PyTorch


@pytest.mark.parametrize("name", list(ZOO))
def test_torch_state_dict_loads_as_is_and_gives_torch_outputs(name):
    factory, torch_model, options = ZOO[name]
    torch.manual_seed(1)
    theirs = scrambled(torch_model(**options))
    ours = factory(seed=5, **options)
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())  # the names are PyTorch's
    assert ours.load_state_dict(theirs.state_dict()) == IncompatibleKeys([], [])
    for key, value in theirs.state_dict().items():
        np.testing.assert_array_equal(portacnn.to_numpy(ours.state_dict()[key]), value.numpy(), err_msg=key)
    x = input_for(options)
    theirs.eval(), ours.eval()
    with portacnn.no_grad():
        assert_same(ours(x).data, theirs(torch.from_numpy(x)), f"{name} eval")
    if name in HAS_BATCH_NORM:
        theirs.train(), ours.train()
        assert_same(ours(x).data, theirs(torch.from_numpy(x)), f"{name} train")
        # the batch statistics the training forward folded into the running ones
        for key, value in theirs.state_dict().items():
            np.testing.assert_allclose(portacnn.to_numpy(ours.state_dict()[key]), value.numpy(), rtol=1e-5,
                                       atol=1e-7, err_msg=key)
        # The gradients too, by name: the backward of every layer, the shortcut included. In float64: through
        # 30 layers of batch statistics of 3 images, float32 rounding alone moves some gradients by 0.5%.
        # (16x16 images: float64 is exact at any size, and the backward is the slow part)
        ours.to("numpy", dtype="float64"), theirs.double()
        x = input_for(options, seed=1, size=16).astype(np.float64)
        out, expected = ours(x), theirs(torch.from_numpy(x))
        weights = np.random.default_rng(1).standard_normal(expected.shape)
        (out * weights).sum().backward()
        (expected * torch.from_numpy(weights)).sum().backward()
        grads = dict(theirs.named_parameters())
        for key, parameter in ours.named_parameters():
            np.testing.assert_allclose(parameter.grad, grads[key].grad.numpy(), rtol=1e-9, atol=1e-12,
                                       err_msg=f"{name} grad {key}")


def test_torch_tensors_that_require_grad_load():
    theirs = scrambled(TorchVGG(in_channels=1, widths=(4, 8), convs_per_stage=1))
    state = dict(theirs.named_parameters())  # Parameters: requires_grad=True
    state.update(theirs.named_buffers())
    ours = vgg(in_channels=1, widths=(4, 8), convs_per_stage=1)
    ours.load_state_dict(state)
    assert ours.features[1].num_batches_tracked.data.dtype == np.int64
    assert int(ours.features[1].num_batches_tracked.data) == 7
    np.testing.assert_array_equal(ours.classifier.weight.data, theirs.classifier.weight.detach().numpy())


def test_a_torch_bfloat16_state_dict_loads_into_a_numpy_model_as_numpy_arrays():
    theirs = TorchVGG(in_channels=1, widths=(4,), convs_per_stage=1).to(torch.bfloat16)
    ours = vgg(in_channels=1, widths=(4,), convs_per_stage=1)
    ours.load_state_dict(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        mine = ours.state_dict()[key]
        assert isinstance(mine, np.ndarray), f"{key} became a {type(mine).__name__}"
        if value.is_floating_point():
            assert mine.dtype == np.float32
            np.testing.assert_array_equal(mine, value.float().numpy(), err_msg=key)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device for torch")
def test_torch_cuda_state_dict_loads_into_a_host_model():
    theirs = scrambled(TorchResNet(1)).cuda()
    ours = resnet8()
    ours.load_state_dict(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        np.testing.assert_array_equal(portacnn.to_numpy(ours.state_dict()[key]), value.cpu().numpy(), err_msg=key)


def test_torch_state_dict_loads_into_a_torch_backend_model_in_float64():
    theirs = scrambled(TorchResNet(1)).double()
    ours = resnet8(device="torch", dtype="float64")
    ours.load_state_dict(theirs.state_dict())
    x = torch.from_numpy(input_for({"in_channels": 3}).astype(np.float64))
    theirs.eval(), ours.eval()
    out = ours(x).data
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float64
    np.testing.assert_allclose(out.numpy(), theirs(x).detach().numpy(), rtol=1e-12, atol=1e-12)


# ---------------------------------------------------------------- to PyTorch


@pytest.mark.parametrize("name", list(ZOO))
def test_to_torch_state_dict_loads_into_the_torch_model_and_gives_our_outputs(name):
    factory, torch_model, options = ZOO[name]
    ours = factory(seed=2, **options)
    x = input_for(options, seed=3)
    if name in HAS_BATCH_NORM:
        ours(x)  # running statistics and counts that differ from a fresh torch model's
    state = to_torch_state_dict(ours)
    theirs = torch_model(**options)
    assert list(state) == list(theirs.state_dict())  # in PyTorch's order too
    theirs.load_state_dict(state)  # strict: every name and shape fits
    for key, value in theirs.state_dict().items():
        assert value.dtype == (torch.int64 if key.endswith("num_batches_tracked") else torch.float32), key
        np.testing.assert_array_equal(value.numpy(), portacnn.to_numpy(ours.state_dict()[key]), err_msg=key)
    for mode in ("eval", "train") if name in HAS_BATCH_NORM else ("eval",):
        getattr(ours, mode)(), getattr(theirs, mode)()
        with portacnn.no_grad():
            assert_same(ours(x).data, theirs(torch.from_numpy(x)), f"{name} {mode}")


def test_to_torch_state_dict_gives_contiguous_cpu_copies_in_order():
    for device in ("numpy", "torch"):
        model = mobilenet(width_mult=0.25, device=device)
        state = to_torch_state_dict(model)
        assert type(state).__name__ == "OrderedDict" and sorted(state) == sorted(model.state_dict())
        for key, value in state.items():
            assert isinstance(value, torch.Tensor) and value.device.type == "cpu" and value.is_contiguous(), key
            assert not value.requires_grad
        before = portacnn.to_numpy(model.features[0][0].weight.data)
        state["features.0.0.weight"].add_(1.0)  # writes into the copy only
        np.testing.assert_array_equal(portacnn.to_numpy(model.features[0][0].weight.data), before)
        assert state["features.0.1.num_batches_tracked"].dtype == torch.int64
        assert state["features.0.1.num_batches_tracked"].shape == ()


def test_to_torch_state_dict_keeps_float64_and_bfloat16():
    double = to_torch_state_dict(lenet5(dtype="float64"))
    assert all(v.dtype == torch.float64 for v in double.values())
    model = lenet5(dtype="bfloat16", device="torch")
    brain = to_torch_state_dict(model)
    assert all(v.dtype == torch.bfloat16 for v in brain.values())
    assert torch.equal(brain["0.weight"], model[0].weight.data)
    assert brain["0.weight"].data_ptr() != model[0].weight.data.data_ptr()


def test_to_torch_state_dict_without_torch_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # as if it were not installed
    with pytest.raises(BackendError, match="pip install torch"):
        to_torch_state_dict(lenet5())


# ---------------------------------------------------------------- strict=False


def test_strict_false_loads_what_fits_and_reports_the_rest():
    theirs = scrambled(TorchResNet(1, num_classes=100))  # another head: fine-tuning on 10 classes
    state = {k: v for k, v in theirs.state_dict().items() if not k.startswith("linear.")}
    state["fc.weight"] = torch.zeros(10, 64)
    ours = resnet8(num_classes=10)
    head = ours.linear.weight.data.copy()
    result = ours.load_state_dict(state, strict=False)
    assert result.missing_keys == ["linear.weight", "linear.bias"]
    assert result.unexpected_keys == ["fc.weight"]
    assert isinstance(result, tuple) and result == (["linear.weight", "linear.bias"], ["fc.weight"])
    np.testing.assert_array_equal(ours.linear.weight.data, head)  # a missing entry keeps its value
    np.testing.assert_array_equal(ours.bn1.running_var.data, theirs.bn1.running_var.numpy())
    assert repr(result) == ("IncompatibleKeys(missing_keys=['linear.weight', 'linear.bias'], "
                            "unexpected_keys=['fc.weight'])")
    assert repr(resnet8(num_classes=100).load_state_dict(theirs.state_dict())) == "<All keys matched successfully>"


def test_strict_false_still_refuses_wrong_shapes_and_strict_true_lists_every_key():
    theirs = TorchResNet(1, num_classes=100).state_dict()
    ours = resnet8(num_classes=10)
    before = {k: portacnn.to_numpy(v) for k, v in ours.state_dict().items()}
    for strict in (False, True):
        with pytest.raises(CheckpointError, match=r"wrong shape: linear.weight: checkpoint \(100, 64\) vs model "
                                                  r"\(10, 64\)"):
            ours.load_state_dict(theirs, strict=strict)
    for key, value in ours.state_dict().items():  # a refused load changes nothing
        np.testing.assert_array_equal(portacnn.to_numpy(value), before[key], err_msg=key)
    partial = {k: v for k, v in theirs.items() if not k.startswith("linear.")}
    with pytest.raises(CheckpointError, match="missing: linear.bias, linear.weight"):
        ours.load_state_dict(partial)
    with pytest.raises(CheckpointError, match="not integer: bn1.num_batches_tracked"):
        ours.load_state_dict(partial | {"bn1.num_batches_tracked": torch.zeros(())}, strict=False)
    with pytest.raises(ArgumentTypeError, match="strict must be True or False"):
        ours.load_state_dict(partial, strict="no")


def test_strict_false_ignores_unexpected_entries_that_are_not_arrays():
    model = nn.Linear(3, 2)
    state = {k: portacnn.to_numpy(v) for k, v in model.state_dict().items()}
    result = model.load_state_dict(state | {"epoch": 3}, strict=False)
    assert result == ([], ["epoch"])
    with pytest.raises(CheckpointError, match="not arrays: epoch"):
        model.load_state_dict(state | {"epoch": 3})
