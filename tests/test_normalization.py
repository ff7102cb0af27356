"""BatchNorm1d, LayerNorm and GroupNorm, and BatchNorm's ``num_batches_tracked`` (issue 11).

Each op is checked against PyTorch (forward, and input and parameter
gradients through ``torch.autograd``, float64, rtol 1e-9) over odd,
non-square shapes, by central finite differences, and on every backend case
of conftest.py through the layers and the tape (the functional ops also sit
in test_functional.py's ``PARITY_OPS``). State dicts are compared with
torch's after a few training forwards, and bad arguments must raise clear
``PortacnnError``s.
"""

import numpy as np
import pytest
from portacnn.backends import to_numpy
from support import directional_check, t64, torch_forward_backward

import portacnn
from portacnn import functional as F
from portacnn import nn
from portacnn.errors import CheckpointError, PortacnnError, ShapeError
from portacnn.testing import gradcheck

torch = pytest.importorskip("torch")
TF = torch.nn.functional

RTOL, ATOL = 1e-9, 1e-12


def close64(actual, expected):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(expected), rtol=RTOL, atol=ATOL)


# ---------------------------------------------------------------- functional vs torch


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_3d_vs_torch(training):
    rng = np.random.default_rng(0)
    x, g = rng.standard_normal((5, 3, 7)) * 2 + 0.5, rng.standard_normal((5, 3, 7))
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2.0, 3)
    w, b = rng.uniform(0.5, 1.5, 3), rng.standard_normal(3)
    t_rm, t_rv = t64(rm), t64(rv)
    want, (twx, tww, twb) = torch_forward_backward(
        lambda x_, w_, b_: TF.batch_norm(x_, t_rm, t_rv, w_, b_, training=training, momentum=0.3, eps=1e-4),
        [x, w, b], g)
    y, new_rm, new_rv = F.batch_norm(x, rm, rv, w, b, training=training, momentum=0.3, eps=1e-4)
    close64(y, want)
    close64(new_rm, t_rm.numpy())
    close64(new_rv, t_rv.numpy())
    gx, gw, gb = F.batch_norm_backward(g, x, rm, rv, w, training=training, eps=1e-4)
    close64(gx, twx)
    close64(gw, tww)
    close64(gb, twb)


LAYER_NORM_CASES = [((7,), 7), ((3, 5), 5), ((2, 3, 5, 7), (5, 7)), ((2, 3, 5), (2, 3, 5)), ((4, 3, 2, 5), [3, 2, 5])]


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape, normalized_shape", LAYER_NORM_CASES)
def test_layer_norm_vs_torch(shape, normalized_shape, affine):
    rng = np.random.default_rng(1)
    norm = (normalized_shape,) if isinstance(normalized_shape, int) else tuple(normalized_shape)
    x, g = rng.standard_normal(shape) * 2 + 0.3, rng.standard_normal(shape)
    w, b = (rng.standard_normal(norm), rng.standard_normal(norm)) if affine else (None, None)
    arrays = [x, w, b] if affine else [x]
    want, grads = torch_forward_backward(
        lambda x_, *wb: TF.layer_norm(x_, norm, *(wb if affine else (None, None)), eps=1e-3), arrays, g)
    close64(F.layer_norm(x, normalized_shape, w, b, eps=1e-3), want)
    gx, gw, gb = F.layer_norm_backward(g, x, normalized_shape, w, eps=1e-3)
    close64(gx, grads[0])
    if affine:
        close64(gw, grads[1])
        close64(gb, grads[2])
    assert gw.shape == norm and gb.shape == norm


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shape, groups", [((3, 6), 2), ((2, 6, 5), 3), ((3, 4, 5, 7), 2), ((2, 5, 3, 4), 5),
                                           ((2, 4, 3, 2, 3), 1)])
def test_group_norm_vs_torch(shape, groups, affine):
    rng = np.random.default_rng(2)
    c = shape[1]
    x, g = rng.standard_normal(shape) * 2 - 0.4, rng.standard_normal(shape)
    w, b = (rng.standard_normal(c), rng.standard_normal(c)) if affine else (None, None)
    arrays = [x, w, b] if affine else [x]
    want, grads = torch_forward_backward(
        lambda x_, *wb: TF.group_norm(x_, groups, *(wb if affine else (None, None)), eps=1e-4), arrays, g)
    close64(F.group_norm(x, groups, w, b, eps=1e-4), want)
    gx, gw, gb = F.group_norm_backward(g, x, groups, w, eps=1e-4)
    close64(gx, grads[0])
    if affine:
        close64(gw, grads[1])
        close64(gb, grads[2])


def test_inputs_are_not_written():
    rng = np.random.default_rng(3)
    x, g, w = rng.standard_normal((2, 4, 3)), rng.standard_normal((2, 4, 3)), rng.standard_normal(4)
    for a in (x, g, w):
        a.flags.writeable = False
    F.group_norm(x, 2, w, w)
    F.group_norm_backward(g, x, 2, w)
    F.layer_norm(x, (4, 3))
    F.layer_norm_backward(g, x, 3)


# ---------------------------------------------------------------- finite differences


def test_functional_backwards_finite_differences():
    rng = np.random.default_rng(4)
    x, g = rng.standard_normal((3, 4, 5)), rng.standard_normal((3, 4, 5))
    w, b = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    gx, gw, gb = F.layer_norm_backward(g, x, (4, 5), w)
    directional_check(lambda x_, w_, b_: F.layer_norm(x_, (4, 5), w_, b_), [x, w, b], {0: gx, 1: gw, 2: gb}, g,
                      rng, name="layer_norm")
    w, b = rng.standard_normal(4), rng.standard_normal(4)
    gx, gw, gb = F.group_norm_backward(g, x, 2, w)
    directional_check(lambda x_, w_, b_: F.group_norm(x_, 2, w_, b_), [x, w, b], {0: gx, 1: gw, 2: gb}, g, rng,
                      name="group_norm")
    rm, rv = rng.standard_normal(4), rng.uniform(0.5, 2.0, 4)
    gx, gw, gb = F.batch_norm_backward(g, x, rm, rv, w, training=True)
    directional_check(lambda x_, w_, b_: F.batch_norm(x_, rm, rv, w_, b_, training=True)[0], [x, w, b],
                      {0: gx, 1: gw, 2: gb}, g, rng, name="batch_norm 3-D")


@pytest.mark.parametrize("make, shape", [
    (lambda: nn.LayerNorm((3, 5), dtype="float64"), (2, 4, 3, 5)),
    (lambda: nn.LayerNorm(5, elementwise_affine=False, dtype="float64"), (3, 5)),
    (lambda: nn.GroupNorm(2, 6, dtype="float64"), (2, 6, 3, 2)),
    (lambda: nn.GroupNorm(3, 3, affine=False, dtype="float64"), (3, 3, 5)),
    (lambda: nn.BatchNorm1d(3, dtype="float64"), (5, 3, 4)),
    (lambda: nn.BatchNorm1d(4, dtype="float64"), (6, 4)),
])
def test_layers_gradcheck(make, shape):
    rng = np.random.default_rng(5)
    layer = make()
    for p in layer.parameters():  # away from the initial ones and zeros
        p.data = p.data + rng.standard_normal(p.shape) * 0.3
    assert gradcheck(layer, rng.standard_normal(shape) * 1.5 + 0.2)


# ---------------------------------------------------------------- every backend, through the tape


LAYERS = {
    "layer_norm": (lambda dt: nn.LayerNorm((3, 5), eps=1e-3, dtype=dt), (2, 4, 3, 5),
                   lambda x, w, b: F.layer_norm(x, (3, 5), w, b, 1e-3),
                   lambda g, x, w: F.layer_norm_backward(g, x, (3, 5), w, 1e-3)),
    "group_norm": (lambda dt: nn.GroupNorm(2, 6, dtype=dt), (3, 6, 5, 2),
                   lambda x, w, b: F.group_norm(x, 2, w, b),
                   lambda g, x, w: F.group_norm_backward(g, x, 2, w)),
    "batch_norm1d": (lambda dt: nn.BatchNorm1d(3, dtype=dt), (5, 3, 4),
                     lambda x, w, b: F.batch_norm(x, None, None, w, b, training=True)[0],
                     lambda g, x, w: F.batch_norm_backward(g, x, None, None, w, training=True)),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_layers_on_every_backend(case, name):
    make, shape, forward, backward = LAYERS[name]
    rng = np.random.default_rng(6)
    layer = make("float64")
    host_w = np.asarray(layer.weight.data) + rng.standard_normal(layer.weight.shape) * 0.3
    host_b = rng.standard_normal(layer.bias.shape)
    layer = make(case.dtype).to(case.backend.spec)
    layer.weight.data, layer.bias.data = case.put(host_w), case.put(host_b)
    x_host, g_host = rng.standard_normal(shape) * 2 + 0.5, rng.standard_normal(shape)
    x = portacnn.tensor(case.put(x_host), requires_grad=True)
    out = layer(x)
    out.backward(case.put(g_host))
    case.check(out.data)
    w, b = case.ref(host_w), case.ref(host_b)
    case.assert_close(out.data, forward(case.ref(x_host), w, b), err_msg="forward")
    gx, gw, gb = backward(case.ref(g_host), case.ref(x_host), w)
    case.assert_close(x.grad, gx, err_msg="input gradient")
    case.assert_close(layer.weight.grad, gw, err_msg="weight gradient")
    case.assert_close(layer.bias.grad, gb, err_msg="bias gradient")


def test_num_batches_tracked_on_every_backend(case):
    layer = nn.BatchNorm1d(3, dtype=case.dtype).to(case.backend.spec)
    x = case.put(np.random.default_rng(7).standard_normal((4, 3)))
    for _ in range(3):
        layer(x)
    layer.eval()
    layer(x)
    count = layer.num_batches_tracked.data
    case.backend.check(count)
    assert tuple(count.shape) == () and "int64" in str(count.dtype)
    assert int(case.to_numpy(count)) == 3


# ---------------------------------------------------------------- state dicts vs torch


def _torch_state(module):
    return {k: v.detach().numpy() for k, v in module.state_dict().items()}


@pytest.mark.parametrize("ours, theirs, shape", [
    (lambda: nn.BatchNorm1d(3, momentum=0.2, dtype="float64"), lambda: torch.nn.BatchNorm1d(3, momentum=0.2),
     (5, 3)),
    (lambda: nn.BatchNorm1d(3, dtype="float64"), lambda: torch.nn.BatchNorm1d(3), (4, 3, 7)),
    (lambda: nn.BatchNorm2d(2, affine=False, dtype="float64"), lambda: torch.nn.BatchNorm2d(2, affine=False),
     (3, 2, 5, 4)),
    (lambda: nn.LayerNorm((3, 5), dtype="float64"), lambda: torch.nn.LayerNorm((3, 5)), (2, 4, 3, 5)),
    (lambda: nn.GroupNorm(2, 4, dtype="float64"), lambda: torch.nn.GroupNorm(2, 4), (3, 4, 5)),
])
def test_state_dict_matches_torch_after_training_forwards(ours, theirs, shape):
    rng = np.random.default_rng(8)
    mine, ref = ours(), theirs().double()
    for _ in range(3):
        x = rng.standard_normal(shape) * 2 + 1
        close64(mine(x).data, ref(t64(x)).detach().numpy())
    mine_state, torch_state = {k: to_numpy(v) for k, v in mine.state_dict().items()}, _torch_state(ref)
    assert list(mine_state) == list(torch_state)
    for key, value in torch_state.items():
        assert mine_state[key].dtype == value.dtype, key
        assert mine_state[key].shape == value.shape, key
        close64(mine_state[key], value)
    # and back: torch's state loads into a fresh layer, and ours into torch
    fresh = ours()
    fresh.load_state_dict(torch_state)
    for key, value in fresh.state_dict().items():
        np.testing.assert_array_equal(to_numpy(value), torch_state[key])
    theirs().double().load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in mine_state.items()})


def test_num_batches_tracked_counts_training_forwards_only():
    layer = nn.BatchNorm2d(2)
    x = np.random.default_rng(9).standard_normal((2, 2, 3, 3)).astype(np.float32)
    layer(x)
    layer(portacnn.tensor(x, requires_grad=True))
    layer.eval()
    layer(x)
    assert layer.num_batches_tracked.data.dtype == np.int64 and int(layer.num_batches_tracked.data) == 2
    assert isinstance(layer.num_batches_tracked.data, np.ndarray)


def test_integer_buffer_survives_dtype_casts_and_loads():
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    model(np.ones((2, 3), np.float32))
    model.to(dtype="float64")
    assert model[1].num_batches_tracked.data.dtype == np.int64
    assert model[1].running_mean.data.dtype == np.float64
    state = model.state_dict()
    assert "1.num_batches_tracked" in state
    copy = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    copy.load_state_dict(state)
    assert copy[1].num_batches_tracked.data.dtype == np.int64 and int(copy[1].num_batches_tracked.data) == 1
    assert copy[1].running_mean.data.dtype == np.float32  # cast to the model's dtype, as before


def test_load_state_dict_keeps_dtype_kinds_apart():
    layer = nn.BatchNorm1d(3)
    state = {k: to_numpy(v) for k, v in layer.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"not integer: num_batches_tracked: float"):
        layer.load_state_dict(dict(state, num_batches_tracked=np.zeros((), np.float32)))
    with pytest.raises(CheckpointError, match=r"not floating point: running_mean: int64"):
        layer.load_state_dict(dict(state, running_mean=np.zeros(3, np.int64)))
    with pytest.raises(CheckpointError, match=r"not floating point: weight: int32"):
        layer.load_state_dict(dict(state, weight=np.ones(3, np.int32)))
    with pytest.raises(CheckpointError, match="missing: num_batches_tracked"):
        layer.load_state_dict({k: v for k, v in state.items() if k != "num_batches_tracked"})


# ---------------------------------------------------------------- errors


def test_bad_arguments_raise_clear_errors():
    x = np.zeros((2, 3, 5))
    with pytest.raises(PortacnnError, match="num_features must equal the channels"):
        nn.BatchNorm1d(4)(x)
    with pytest.raises(PortacnnError, match=r"BatchNorm1d expects \(N, C\) or \(N, C, L\) input"):
        nn.BatchNorm1d(3)(np.zeros((2, 3, 4, 4)))
    with pytest.raises(PortacnnError, match=r"BatchNorm2d expects \(N, C, H, W\)"):
        nn.BatchNorm2d(3)(x)
    with pytest.raises(PortacnnError, match="num_channels=6 must be divisible by num_groups=4"):
        nn.GroupNorm(4, 6)
    with pytest.raises(PortacnnError, match="not divisible by num_groups=2"):
        F.group_norm(x, 2)
    with pytest.raises(PortacnnError, match=r"GroupNorm expects \(N, 4, \*\) input"):
        nn.GroupNorm(2, 4)(x)
    with pytest.raises(ShapeError, match="must equal the trailing shape of the input"):
        nn.LayerNorm((3, 4))(x)
    with pytest.raises(ShapeError, match="must equal the trailing shape of the input"):
        F.layer_norm(x, 3)
    with pytest.raises(ShapeError, match="must equal the trailing shape of the input"):
        F.layer_norm(x, (1, 2, 3, 5))
    with pytest.raises(PortacnnError, match="normalized_shape must be a positive int"):
        nn.LayerNorm(())
    with pytest.raises(PortacnnError, match="normalized_shape must be a positive int"):
        nn.LayerNorm((3, 0))
    with pytest.raises(PortacnnError, match="weight has shape"):
        F.layer_norm(x, 5, np.ones(4))
    with pytest.raises(PortacnnError, match="eps"):
        nn.LayerNorm(5, eps=0.0)
    with pytest.raises(PortacnnError, match="num_groups"):
        nn.GroupNorm(0, 4)
    with pytest.raises(PortacnnError):
        F.layer_norm(np.zeros((2, 5), np.int64), 5)


def test_reprs_and_exports():
    assert repr(nn.BatchNorm1d(3)) == "BatchNorm1d(3, eps=1e-05, momentum=0.1, affine=True)"
    assert repr(nn.LayerNorm(5)) == "LayerNorm((5,), eps=1e-05, elementwise_affine=True)"
    assert repr(nn.GroupNorm(2, 4)) == "GroupNorm(2, 4, eps=1e-05, affine=True)"
    for name in ("layer_norm", "layer_norm_backward", "group_norm", "group_norm_backward"):
        assert name in F.__all__
    for name in ("BatchNorm1d", "LayerNorm", "GroupNorm"):
        assert name in nn.__all__
