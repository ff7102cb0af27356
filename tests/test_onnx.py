"""Tests for portacnn.onnx: the exported graph passes onnx.checker and onnxruntime reproduces the model.

Every comparison runs the same exported file at batch 1 and batch 37 (the
trace runs at batch 2), so a batch size baked into the graph fails. Batch
norms get random running statistics and affine parameters first: with the
defaults (mean 0, variance 1, scale 1, shift 0) folding them into the conv
would be nearly the identity and a wrong fold could pass.
"""

import math
import os
from collections import Counter

import numpy as np
import pytest

import portacnn
from portacnn import nn
from portacnn.autograd import Function, no_grad
from portacnn.errors import ArgumentError, ExportError, PortacnnError
from portacnn.models import available, create, lenet

if not os.environ.get("CI"):  # CI installs the onnx extra: a missing package there must fail, not skip
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
import onnxruntime  # noqa: E402

from portacnn.onnx import export  # noqa: E402

BATCHES = (1, 37)


def natural_shape(name):
    return (1, 28, 28) if name.startswith("lenet") else (3, 32, 32)


def randomize_batch_norms(model, seed=0):
    """Random statistics and affine maps whose overall scale gamma / sqrt(var) stays in [0.7, 1]: a deep net's
    activations then keep the size they have (a 1e-5 tolerance means something), while a fold that mixed
    up var and sqrt(var), or dropped the mean or the shift, is far off."""
    rng = np.random.default_rng(seed)
    for _, module in model.named_modules():
        if isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
            c = module.num_features
            var = rng.uniform(0.4, 2.5, c)
            module.running_mean.data = rng.normal(0.0, 0.3, c).astype("float32")
            module.running_var.data = var.astype("float32")
            if module.weight is not None:
                module.weight.data = (rng.uniform(0.7, 1.0, c) * np.sqrt(var)).astype("float32")
                module.bias.data = rng.normal(0.0, 0.3, c).astype("float32")
    return model


def forward(model, x):
    model.eval()
    with no_grad():
        out = model(portacnn.to_device(x, "numpy"))
    return portacnn.to_numpy(out.data)


def exported(model, tmp_path, shape, **options):
    """Export to a file, check it, and compare onnxruntime with portacnn at every batch size; the proto."""
    path = tmp_path / "model.onnx"
    export(model, path, shape, **options)
    onnx.checker.check_model(str(path), full_check=True)
    proto = onnx.load(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(1)
    for batch in BATCHES:
        x = rng.standard_normal((batch, *shape[-3:])).astype("float32")
        expected = forward(model, x)
        (got,) = session.run(None, {"input": x})
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5, err_msg=f"batch {batch}")
    return proto


def op_counts(proto):
    return Counter(node.op_type for node in proto.graph.node)


def dims(value_info):
    return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]


# --------------------------------------------------------------------------
# models


def test_lenet_is_two_convs_two_pools_and_gemms(tmp_path):
    model = lenet(seed=0)
    proto = exported(model, tmp_path, (1, 28, 28))
    assert op_counts(proto) == {"Conv": 2, "MaxPool": 2, "Relu": 3, "Flatten": 1, "Gemm": 2}
    # Weights are initializers under their state_dict names, with the model's values.
    initializers = {init.name: onnx.numpy_helper.to_array(init) for init in proto.graph.initializer}
    state = model.state_dict()
    assert set(initializers) == set(state)
    for name, value in state.items():
        np.testing.assert_array_equal(initializers[name], portacnn.to_numpy(value))
    assert dims(proto.graph.input[0]) == ["batch", 1, 28, 28]
    assert dims(proto.graph.output[0]) == ["batch", 10]
    assert proto.opset_import[0].version == 17


# The zoo: the architectures portacnn.models itself registers (other test files register their own).
ZOO = [name for name in available() if name in portacnn.models.__all__]


@pytest.mark.parametrize("name", ZOO)
def test_every_zoo_model_matches_onnxruntime(name, tmp_path):
    model = randomize_batch_norms(create(name, seed=0))
    proto = exported(model, tmp_path, natural_shape(name))
    counts = op_counts(proto)
    convs = sum(isinstance(m, nn.Conv2d) for _, m in model.named_modules())
    assert counts["Conv"] == convs
    # Every batch norm of the zoo follows a conv that nothing else reads: all are folded.
    assert "BatchNormalization" not in counts


def test_resnet_option_a_shortcut_is_slice_and_pad(tmp_path):
    proto = exported(randomize_batch_norms(create("resnet8")), tmp_path, (3, 32, 32))
    counts = op_counts(proto)
    # Two down-sampling blocks: each subsamples with a strided Slice and zero-pads the new channels.
    assert counts["Slice"] == 2 and counts["Pad"] == 2 and counts["Add"] == 3
    assert "Expand" not in counts and "Concat" not in counts


class BranchyResNet(nn.Module):
    """conv-BN stem, a residual block, two branches joined with portacnn.cat, a classifier: forward only."""

    def __init__(self, rng):
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False, rng=rng)
        self.stem_bn = nn.BatchNorm2d(8)
        self.conv1 = nn.Conv2d(8, 8, 3, padding=1, rng=rng)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, rng=rng)
        self.bn2 = nn.BatchNorm2d(8)
        self.left = nn.Conv2d(8, 4, 1, rng=rng)
        self.right = nn.Conv2d(8, 6, 3, padding=2, dilation=2, rng=rng)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(10, 5, rng=rng)
        self.relu = nn.ReLU()

    def forward(self, x):
        x = self.relu(self.stem_bn(self.stem(x)))
        x = self.relu(self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x))))) + x)
        x = portacnn.cat([self.left(x), self.relu(self.right(x))], axis=1)
        return self.fc(self.pool(x).reshape(x.shape[0], -1))


def test_residual_net_with_batch_norm_and_cat(tmp_path):
    model = randomize_batch_norms(BranchyResNet(np.random.default_rng(0)))
    proto = exported(model, tmp_path, (3, 16, 16))
    counts = op_counts(proto)
    assert "BatchNormalization" not in counts  # all three folded, and the outputs still agree
    assert counts["Conv"] == 5 and counts["Add"] == 1 and counts["Concat"] == 1
    assert counts["GlobalAveragePool"] == 1 and counts["Gemm"] == 1
    names = {init.name for init in proto.graph.initializer}
    assert "stem.weight+stem_bn" in names and "conv1.weight+bn1" in names and "conv1.bias+bn1" in names
    assert "bn1.running_mean" not in names  # the folded batch norm's own arrays are not stored


class SharedConvOutput(nn.Module):
    """The conv's output feeds the batch norm *and* the residual sum, so folding would change the sum."""

    def __init__(self, rng):
        self.conv = nn.Conv2d(3, 3, 3, padding=1, rng=rng)
        self.bn = nn.BatchNorm2d(3)

    def forward(self, x):
        y = self.conv(x)
        return self.bn(y) + y


def test_batch_norm_is_not_folded_into_a_conv_whose_output_is_read_elsewhere(tmp_path):
    model = randomize_batch_norms(SharedConvOutput(np.random.default_rng(0)))
    proto = exported(model, tmp_path, (3, 8, 8))
    assert op_counts(proto) == {"Conv": 1, "BatchNormalization": 1, "Add": 1}


# --------------------------------------------------------------------------
# every built-in layer


class Layers1(nn.Module):
    """Convolutions (grouped, dilated, transposed), pools with ceil_mode and padding, activations, dropout."""

    def __init__(self, rng):
        self.conv = nn.Conv2d(3, 8, (3, 5), stride=(2, 1), padding=(1, 2), dilation=(1, 2), rng=rng)
        self.grouped = nn.Conv2d(8, 8, 3, padding=1, groups=4, rng=rng)
        self.bn = nn.BatchNorm2d(8)
        self.up = nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1, groups=2, rng=rng)
        self.up_bn = nn.BatchNorm2d(6)
        self.max = nn.MaxPool2d(3, 2, padding=1, ceil_mode=True)
        self.avg = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True)
        self.avg_no_pad = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False)
        self.avg2 = nn.AvgPool2d(2, ceil_mode=True)
        self.after_sum = nn.BatchNorm2d(6)
        self.activations = nn.Sequential(nn.ReLU(), nn.LeakyReLU(0.2), nn.ELU(0.7), nn.GELU(), nn.GELU("tanh"),
                                         nn.SiLU(), nn.Hardswish(), nn.Sigmoid(), nn.Tanh(), nn.Identity())
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        x = self.up_bn(self.up(self.bn(self.grouped(self.conv(x)))))  # (N, 6, 12, 14)
        n = x.shape[0]
        # Each ceil_mode pool has a last window hanging past the (padded) input, and all of it is in the output.
        pooled = [self.max(x), self.avg(x), self.avg_no_pad(x), self.avg2(x[:, :, :11, :13])]
        y = self.after_sum(pooled[0] + pooled[1] - pooled[2])
        for activation in self.activations:
            y = activation(y) * 0.9 + y / 3.0
        return portacnn.cat([self.drop(y).reshape(n, -1)] + [p.reshape(n, -1) for p in pooled[1:]], axis=1)


class Layers2(nn.Module):
    """Adaptive and power-mean pools, upsampling, group/layer/1-d batch norms, softmaxes, slicing, flatten."""

    def __init__(self, rng):
        self.conv = nn.Conv2d(3, 4, 3, rng=rng)
        self.pools = nn.ModuleList([nn.AdaptiveAvgPool2d(3), nn.AdaptiveMaxPool2d((2, None)),
                                    nn.AdaptiveAvgPool2d((5, 6)), nn.AdaptiveMaxPool2d(5), nn.LPPool2d(2, 2),
                                    nn.LPPool2d(math.inf, 3, 2)])
        self.upsamples = nn.ModuleList([
            nn.Upsample(scale_factor=2), nn.Upsample(size=(7, 9)),
            nn.Upsample(scale_factor=1.7, mode="bilinear"),
            nn.Upsample(size=(11, 5), mode="bilinear", align_corners=True)])
        self.group_norm, self.plain_group_norm = nn.GroupNorm(2, 4), nn.GroupNorm(2, 4, affine=False)
        self.layer_norm, self.plain_layer_norm = nn.LayerNorm((4, 5)), nn.LayerNorm(5, elementwise_affine=False)
        self.bn_ncl = nn.BatchNorm1d(4)
        self.fc1 = nn.Linear(20, 24, rng=rng)
        self.flatten = nn.Flatten(2)
        self.fc2 = nn.Linear(24, 10, rng=rng)
        self.fc2_bn = nn.BatchNorm1d(10)
        self.bn_nc = nn.BatchNorm1d(10)
        self.softmax, self.log_softmax = nn.Softmax(1), nn.LogSoftmax(-1)

    def forward(self, x):
        x = self.conv(x)  # (N, 4, 10, 10)
        n = x.shape[0]
        parts = [pool(x * x if isinstance(pool, nn.LPPool2d) else x).reshape(n, -1) for pool in self.pools]
        parts += [upsample(x).mean(axis=(2, 3)) for upsample in self.upsamples]
        parts.append((self.group_norm(x) + self.plain_group_norm(x)).sum(axis=1).reshape(n, -1))
        z = self.layer_norm(x[:, :, 2:6, ::2]) + self.plain_layer_norm(x[:, :, -4:, 1::2])  # (N, 4, 4, 5)
        z = self.bn_ncl(self.plain_layer_norm(z[:, :, 0]))  # (N, 4, 5)
        z = self.fc1(z.reshape(n, -1)).reshape(n, 4, 6)
        z = self.flatten(z[:, :, None, :]).reshape(n, -1)  # (N, 24)
        z = self.fc2_bn(self.fc2(z))  # folded into the Gemm
        z = self.bn_nc(-z + 1.0) ** 2
        parts += [self.softmax(z), self.log_softmax(z), x[:, ::-1, 3, ::-2].reshape(n, -1)]
        return portacnn.cat(parts, axis=1)


@pytest.mark.parametrize("opset", [17, 18, 20, 21])
def test_every_built_in_layer_exports_and_matches(tmp_path, opset):
    rng = np.random.default_rng(0)
    first = exported(randomize_batch_norms(Layers1(rng), 1), tmp_path, (3, 12, 11), opset=opset)
    second = exported(randomize_batch_norms(Layers2(rng), 2), tmp_path, (3, 12, 12), opset=opset)
    counts = op_counts(first) + op_counts(second)
    assert counts["Conv"] == 3 and counts["ConvTranspose"] == 1  # grouped conv and transposed conv keep their BN folded
    assert counts["BatchNormalization"] == 3  # after a sum, and the two 1-d ones not after a layer
    for op in ("MaxPool", "AveragePool", "LeakyRelu", "Elu", "HardSwish", "Sigmoid", "Tanh", "Softmax", "LogSoftmax",
               "LayerNormalization", "InstanceNormalization", "Resize", "Gemm", "Flatten", "Slice"):
        assert counts[op] >= 1, op
    assert (counts["Gelu"] == 2) == (opset >= 20)  # Gelu is an operator from opset 20; before, Erf and Tanh
    assert "Dropout" not in counts


def test_the_layer_tests_cover_every_built_in_layer():
    """A layer added to portacnn.nn must be added to Layers1/Layers2 (and so given an ONNX form)."""
    rng = np.random.default_rng(0)
    used = {type(m) for model in (Layers1(rng), Layers2(rng)) for _, m in model.named_modules()}
    not_layers = {nn.Module, nn.Sequential, nn.ModuleList, nn.ModuleDict, nn.Parameter, nn.Buffer}
    layers = {getattr(nn, name) for name in nn.__all__}
    layers = {cls for cls in layers if isinstance(cls, type) and issubclass(cls, nn.Module) and cls not in not_layers
              and not cls.__name__.endswith("Loss")}
    assert layers - used == set()


# --------------------------------------------------------------------------
# batch handling, modes, other backends


def test_static_batch_is_fixed(tmp_path):
    path = tmp_path / "static.onnx"
    proto = export(lenet(), path, (4, 1, 28, 28), dynamic_batch=False)
    assert dims(proto.graph.input[0]) == [4, 1, 28, 28]
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert session.run(None, {"input": np.zeros((4, 1, 28, 28), "float32")})[0].shape == (4, 10)
    with pytest.raises(Exception, match="(?i)dimension|shape"):
        session.run(None, {"input": np.zeros((3, 1, 28, 28), "float32")})


def test_export_leaves_the_model_as_it_was(tmp_path):
    model = randomize_batch_norms(create("resnet8"))
    model.train()
    model.layer1.eval()  # a mixed state, restored exactly
    before = {k: portacnn.to_numpy(v).copy() for k, v in model.state_dict().items()}
    export(model, tmp_path / "m.onnx", (3, 32, 32))
    assert model.training and not model.layer1.training and model.layer2.training
    for name, value in model.state_dict().items():
        np.testing.assert_array_equal(portacnn.to_numpy(value), before[name], err_msg=name)


def test_detached_intermediate_exports_as_the_same_value(tmp_path):
    class Detaching(nn.Module):
        def __init__(self):
            self.conv = nn.Conv2d(1, 2, 3, rng=np.random.default_rng(0))

        def forward(self, x):
            y = self.conv(x)
            return y + y.detach() * 2.0  # .detach() shares y's array: it must not become a constant

    proto = exported(Detaching(), tmp_path, (1, 6, 6))
    assert op_counts(proto) == {"Conv": 1, "Mul": 1, "Add": 1}


def test_torch_backend_model_exports(tmp_path):
    pytest.importorskip("torch")
    model = lenet(seed=0, device="torch")
    path = tmp_path / "torch.onnx"
    export(model, path, (1, 28, 28))
    x = np.random.default_rng(0).standard_normal((3, 1, 28, 28)).astype("float32")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with no_grad():
        expected = portacnn.to_numpy(model(portacnn.to_device(x, "torch")).data)
    np.testing.assert_allclose(session.run(None, {"input": x})[0], expected, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------
# errors


class Swish(Function):
    def forward(self, x):
        self.x = x
        return x / (1.0 + np.exp(-x))

    def backward(self, grad):  # pragma: no cover - never differentiated here
        raise NotImplementedError


class WithCustomOp(nn.Module):
    def __init__(self):
        self.conv = nn.Conv2d(1, 2, 3, rng=np.random.default_rng(0))

    def forward(self, x):
        return Swish.apply(self.conv(x))


def test_an_op_without_onnx_form_is_named_and_the_old_file_survives(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"previous file")
    with pytest.raises(ExportError, match=r"cannot export op Swish \(.*test_onnx\.Swish\).*no ONNX form"):
        export(WithCustomOp(), path, (1, 8, 8))
    assert path.read_bytes() == b"previous file"  # nothing half-written
    assert [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_a_loss_in_forward_is_refused_clearly(tmp_path):
    class WithLoss(nn.Module):
        def __init__(self):
            self.fc = nn.Linear(4, 3, rng=np.random.default_rng(0))

        def forward(self, x):
            return nn.MSELoss()(self.fc(x.reshape(x.shape[0], -1)), np.zeros((x.shape[0], 3), "float32"))

    with pytest.raises(ExportError, match="computes a loss.*MSELoss.*compute the loss outside"):
        export(WithLoss(), tmp_path / "m.onnx", (1, 2, 2))


def test_batch_mixing_reshape_needs_a_static_batch(tmp_path):
    class MixesBatch(nn.Module):
        def forward(self, x):
            return (x.reshape(-1) * 2.0).reshape(1, -1)  # the whole batch in one row

    with pytest.raises(ExportError, match="mixes the batch axis.*dynamic_batch=False"):
        export(MixesBatch(), tmp_path / "m.onnx", (1, 2, 2))
    path = tmp_path / "static.onnx"
    export(MixesBatch(), path, (3, 1, 2, 2), dynamic_batch=False)
    x = np.arange(12, dtype="float32").reshape(3, 1, 2, 2)
    got = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_array_equal(got, 2.0 * x.reshape(1, -1))


def test_a_constant_that_varies_along_the_batch_is_refused(tmp_path):
    class UsesData(nn.Module):
        def forward(self, x):
            return x + x.data * 0.5  # computed outside the tape: frozen, and different per sample

    with pytest.raises(ExportError, match="rows differ along the batch axis.*dynamic_batch=False"):
        export(UsesData(), tmp_path / "m.onnx", (1, 2, 2))


@pytest.mark.parametrize("options, message", [
    (dict(input_shape=(28, 28)), r"input_shape must be \(C, H, W\) or \(N, C, H, W\)"),
    (dict(input_shape=(1, 0, 28)), "positive sizes"),
    (dict(input_shape="1,28,28"), "tuple of ints"),
    (dict(opset=13), "opset must be an int from 17 to 21"),
    (dict(dynamic_batch="yes"), "dynamic_batch must be True or False"),
])
def test_argument_errors(tmp_path, options, message):
    arguments = dict(input_shape=(1, 28, 28)) | options
    with pytest.raises(ArgumentError, match=message):
        export(lenet(), tmp_path / "m.onnx", arguments.pop("input_shape"), **arguments)


# --------------------------------------------------------------------------
# the command line


def test_cli_export_writes_a_runnable_file(tmp_path, capsys):
    from portacnn.checkpoint import save_checkpoint
    from portacnn.cli import main

    model = lenet(seed=3)
    checkpoint = tmp_path / "last.npz"
    save_checkpoint(checkpoint, model)
    out = tmp_path / "exported" / "lenet.onnx"
    assert main(["export", str(checkpoint), str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "input [batch, 1, 28, 28]" in printed
    assert {line.split()[0]: int(line.split()[1]) for line in printed.splitlines()[1:]} == {
        "Conv": 2, "MaxPool": 2, "Relu": 3, "Flatten": 1, "Gemm": 2}
    x = np.random.default_rng(0).standard_normal((5, 1, 28, 28)).astype("float32")
    got = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(got, forward(model, x), rtol=1e-5, atol=1e-5)


def test_cli_export_takes_the_recorded_input_shape_and_flags(tmp_path, capsys):
    from portacnn.checkpoint import save_checkpoint
    from portacnn.cli import main

    checkpoint = tmp_path / "resnet.npz"
    save_checkpoint(checkpoint, create("resnet8"), config={"input_shape": [3, 32, 32]})
    out = tmp_path / "resnet.onnx"
    assert main(["export", str(checkpoint), str(out), "--opset", "18"]) == 0
    proto = onnx.load(str(out))
    assert dims(proto.graph.input[0]) == ["batch", 3, 32, 32] and proto.opset_import[0].version == 18
    assert main(["export", str(checkpoint), str(out), "--input-shape", "3,16,16"]) == 0
    assert dims(onnx.load(str(out)).graph.input[0]) == ["batch", 3, 16, 16]
    capsys.readouterr()
    assert main(["export", str(checkpoint), str(out), "--input-shape", "3,16"]) == 2
    assert "--input-shape takes one input's C,H,W" in capsys.readouterr().err


def test_missing_onnx_package_gives_the_install_hint(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    with pytest.raises(PortacnnError, match=r'pip install "portacnn\[onnx\]"'):
        export(lenet(), tmp_path / "m.onnx", (1, 28, 28))
