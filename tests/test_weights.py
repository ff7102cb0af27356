"""Tests for portacnn.save_weights / load_weights: safetensors files PyTorch reads and writes too."""

import os
import sys

import numpy as np
import pytest

import portacnn
from portacnn import nn
from portacnn.autograd import no_grad
from portacnn.errors import CheckpointError
from portacnn.models import create, lenet

if not os.environ.get("CI"):  # CI installs the safetensors extra: a missing package there must fail, not skip
    pytest.importorskip("safetensors")
import safetensors  # noqa: E402
import safetensors.numpy  # noqa: E402


class ConvBN(nn.Module):
    """conv - BN - ReLU - pool - linear, with PyTorch's attribute names (see TorchConvBN)."""

    def __init__(self, seed=0, dtype="float32", device=None):
        rng = np.random.default_rng(seed)
        self.conv = nn.Conv2d(3, 4, 3, padding=1, rng=rng, dtype=dtype, device=device)
        self.bn = nn.BatchNorm2d(4, dtype=dtype, device=device)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(16, 5, rng=rng, dtype=dtype, device=device)

    def forward(self, x):
        x = self.pool(nn.ReLU()(self.bn(self.conv(x))))
        return self.fc(x.reshape(x.shape[0], -1))


def trained(model, steps=2, seed=0):
    """A few training-mode forwards: running statistics move and num_batches_tracked counts (not 0 any more)."""
    rng = np.random.default_rng(seed)
    model.train()
    with no_grad():
        for _ in range(steps):
            model(rng.standard_normal((6, 3, 8, 8)).astype(str(model.conv.weight.dtype).rsplit(".")[-1]))
    model.eval()
    return model


def host_state(model):
    return {name: np.array(portacnn.to_numpy(value)) for name, value in model.state_dict().items()}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_round_trip_is_bit_exact(tmp_path, dtype):
    model = trained(ConvBN(seed=0, dtype=dtype))
    path = portacnn.save_weights(model, tmp_path / "sub" / "w.safetensors")
    assert path == tmp_path / "sub" / "w.safetensors" and path.is_file()
    other = ConvBN(seed=1, dtype=dtype)
    result = portacnn.load_weights(other, path)
    assert result.missing_keys == [] and result.unexpected_keys == []
    saved, loaded = host_state(model), host_state(other)
    assert saved.keys() == loaded.keys()
    for name in saved:
        assert loaded[name].dtype == saved[name].dtype and loaded[name].shape == saved[name].shape, name
        np.testing.assert_array_equal(loaded[name], saved[name], err_msg=name)
    assert int(loaded["bn.num_batches_tracked"]) == 2


def test_file_layout_is_torch_style(tmp_path):
    path = portacnn.save_weights(trained(ConvBN()), tmp_path / "w.safetensors")
    with safetensors.safe_open(str(path), framework="numpy") as f:
        assert f.metadata() == {"format": "pt"}
        assert sorted(f.keys()) == sorted(ConvBN().state_dict())
        counter = f.get_tensor("bn.num_batches_tracked")
    assert counter.dtype == np.int64 and counter.shape == ()  # a 0-d int64, as PyTorch's


def test_the_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "w.safetensors"
    portacnn.save_weights(lenet(seed=0), path)
    before = path.read_bytes()

    # The write itself fails half-way (here: safetensors hands over something that is not bytes).
    monkeypatch.setattr(safetensors.numpy, "save", lambda tensors, metadata=None: object())
    with pytest.raises(TypeError):
        portacnn.save_weights(lenet(seed=1), path)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]


def test_strict_mismatch_lists_every_problem(tmp_path):
    path = portacnn.save_weights(lenet(), tmp_path / "lenet.safetensors")
    with pytest.raises(CheckpointError, match=r"lenet\.safetensors.*missing: .*conv\.weight.*unexpected: 0\.bias"):
        portacnn.load_weights(ConvBN(), path)


def test_lax_load_reports_missing_and_unexpected(tmp_path):
    model = trained(ConvBN(seed=0))
    state = host_state(model)
    partial = {k: v for k, v in state.items() if not k.startswith("fc.")} | {"extra.weight": np.ones(3, "float32")}
    path = tmp_path / "partial.safetensors"
    safetensors.numpy.save_file(partial, str(path), metadata={"format": "pt"})
    other = ConvBN(seed=1)
    fc_before = host_state(other)["fc.weight"]
    with pytest.raises(CheckpointError, match=r"missing: fc\.bias, fc\.weight \| unexpected: extra\.weight"):
        portacnn.load_weights(other, path)
    result = portacnn.load_weights(other, path, strict=False)
    assert sorted(result.missing_keys) == ["fc.bias", "fc.weight"] and result.unexpected_keys == ["extra.weight"]
    loaded = host_state(other)
    np.testing.assert_array_equal(loaded["conv.weight"], state["conv.weight"])
    np.testing.assert_array_equal(loaded["fc.weight"], fc_before)  # left as it was


def test_wrong_shape_is_an_error_even_when_lax(tmp_path):
    state = host_state(ConvBN())
    state["conv.weight"] = np.zeros((4, 3, 5, 5), "float32")
    path = tmp_path / "w.safetensors"
    safetensors.numpy.save_file(state, str(path))
    with pytest.raises(CheckpointError, match=r"wrong shape: conv\.weight: checkpoint \(4, 3, 5, 5\) vs model"):
        portacnn.load_weights(ConvBN(), path, strict=False)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_a_damaged_file_is_a_clear_error(tmp_path, damage):
    path = portacnn.save_weights(lenet(), tmp_path / "w.safetensors")
    data = path.read_bytes()
    path.write_bytes({"truncated": data[:len(data) // 2], "garbage": b"not a safetensors file at all",
                      "empty": b""}[damage])
    model = lenet(seed=1)
    before = host_state(model)
    with pytest.raises(CheckpointError, match=r"cannot read .*w\.safetensors.*truncated, corrupt or not a safetensors"):
        portacnn.load_weights(model, path)
    for name, value in host_state(model).items():  # nothing half-loaded
        np.testing.assert_array_equal(value, before[name])


def test_missing_file_and_wrong_arguments(tmp_path):
    with pytest.raises(CheckpointError, match="no weights file at"):
        portacnn.load_weights(lenet(), tmp_path / "nope.safetensors")
    with pytest.raises(TypeError, match="save_weights takes a portacnn Module"):
        portacnn.save_weights({"a": np.zeros(2)}, tmp_path / "w.safetensors")


def test_missing_package_gives_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "safetensors.numpy", None)
    with pytest.raises(CheckpointError, match=r'pip install "portacnn\[safetensors\]"'):
        portacnn.save_weights(lenet(), tmp_path / "w.safetensors")


# --------------------------------------------------------------------------
# PyTorch


def torch_conv_bn(torch):
    class TorchConvBN(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.bn = torch.nn.BatchNorm2d(4)
            self.pool = torch.nn.AdaptiveAvgPool2d(2)
            self.fc = torch.nn.Linear(16, 5)

        def forward(self, x):
            return self.fc(self.pool(torch.relu(self.bn(self.conv(x)))).flatten(1))

    return TorchConvBN()


def test_torch_loads_what_portacnn_saves(tmp_path):
    torch = pytest.importorskip("torch")
    import safetensors.torch

    model = trained(ConvBN(seed=0))
    path = portacnn.save_weights(model, tmp_path / "w.safetensors")
    torch_model = torch_conv_bn(torch)
    torch_model.load_state_dict(safetensors.torch.load_file(str(path)))  # strict
    assert torch_model.bn.num_batches_tracked.dtype == torch.int64 and int(torch_model.bn.num_batches_tracked) == 2
    x = np.random.default_rng(5).standard_normal((3, 3, 8, 8)).astype("float32")
    with torch.no_grad():
        expected = torch_model.eval()(torch.from_numpy(x)).numpy()
    with no_grad():
        got = portacnn.to_numpy(model(x).data)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_portacnn_loads_what_torch_saves(tmp_path):
    torch = pytest.importorskip("torch")
    import safetensors.torch

    torch.manual_seed(0)
    torch_model = torch_conv_bn(torch)
    torch_model.train()
    with torch.no_grad():
        for _ in range(3):
            torch_model(torch.randn(6, 3, 8, 8))  # running statistics and the batch count move
    path = tmp_path / "torch.safetensors"
    safetensors.torch.save_file(torch_model.state_dict(), str(path), metadata={"format": "pt"})
    model = ConvBN(seed=9)
    portacnn.load_weights(model, path)
    for name, value in torch_model.state_dict().items():
        np.testing.assert_array_equal(portacnn.to_numpy(model.state_dict()[name]), value.numpy(), err_msg=name)
    x = np.random.default_rng(6).standard_normal((2, 3, 8, 8)).astype("float32")
    with torch.no_grad():
        expected = torch_model.eval()(torch.from_numpy(x)).numpy()
    model.eval()
    with no_grad():
        np.testing.assert_allclose(portacnn.to_numpy(model(x).data), expected, rtol=1e-5, atol=1e-6)


def test_bfloat16_weights_round_trip_exactly(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("ml_dtypes")
    import safetensors.torch

    model = create("lenet", seed=0, device="torch", dtype="bfloat16")
    path = portacnn.save_weights(model, tmp_path / "bf16.safetensors")
    stored = safetensors.torch.load_file(str(path))
    assert stored["0.weight"].dtype == torch.bfloat16  # stored as BF16, not widened
    for name, value in model.state_dict().items():
        assert torch.equal(stored[name], value.cpu()), name
    again = create("lenet", seed=1, device="torch", dtype="bfloat16")
    portacnn.load_weights(again, path)
    for name, value in model.state_dict().items():
        assert torch.equal(again.state_dict()[name], value), name
    widened = lenet(seed=1)  # a float32 NumPy model takes the bfloat16 values exactly
    portacnn.load_weights(widened, path)
    np.testing.assert_array_equal(portacnn.to_numpy(widened.state_dict()["0.weight"]),
                                  stored["0.weight"].float().numpy())


def test_bfloat16_without_ml_dtypes_is_refused_clearly(tmp_path, monkeypatch):
    pytest.importorskip("torch")
    model = create("lenet", seed=0, device="torch", dtype="bfloat16")
    monkeypatch.setitem(sys.modules, "ml_dtypes", None)
    with pytest.raises(CheckpointError, match="bfloat16.*pip install ml_dtypes.*model.to\\(dtype='float32'\\)"):
        portacnn.save_weights(model, tmp_path / "bf16.safetensors")
    assert not (tmp_path / "bf16.safetensors").exists()
