"""Half precision: float16 (NumPy) and bfloat16 (torch) layers, float32 accumulation, and GradScaler."""

from __future__ import annotations

import numpy as np
import pytest

import portacnn
from portacnn import functional as F
from portacnn.amp import GradScaler
from portacnn.errors import DTypeError
from portacnn.models import lenet
from portacnn.optim import SGD
from portacnn.testing.compare import TOLERANCES


def _batch(n=4, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, 28, 28)), rng.integers(0, 10, n)


def _forward_backward(model, x, labels):
    model.zero_grad() if hasattr(model, "zero_grad") else None
    for p in model.parameters():
        p.grad = None
    logits = model(portacnn.tensor(x))
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    return logits.data, loss.data, [p.grad for p in model.parameters()]


def _host32(a):
    if "bfloat16" in str(a.dtype):
        a = a.float()
    return np.asarray(portacnn.to_numpy(a), dtype=np.float64)


def _assert_close(actual, expected, dtype):
    rtol, atol = TOLERANCES[dtype]
    actual, expected = _host32(actual), _host32(expected)
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    np.testing.assert_allclose(actual, expected, rtol=rtol * 5, atol=atol * 5 * scale)


def test_lenet_numpy_float16_matches_float32():
    x, labels = _batch()
    reference = _forward_backward(lenet(seed=0), x.astype(np.float32), labels)
    model = lenet(seed=0, dtype="float16")
    assert all(p.data.dtype == np.float16 for p in model.parameters())
    logits, loss, grads = _forward_backward(model, x.astype(np.float16), labels)
    assert logits.dtype == np.float16 and loss.dtype == np.float16
    assert all(g.dtype == np.float16 for g in grads)
    _assert_close(logits, reference[0], "float16")
    _assert_close(loss, reference[1], "float16")
    for g, r in zip(grads, reference[2]):
        _assert_close_to_scale(g, r, 0.05)


def test_module_to_float16_and_back():
    model = lenet(seed=0).to("numpy", dtype="float16")
    assert {p.data.dtype for p in model.parameters()} == {np.dtype(np.float16)}
    model.to("numpy", dtype="float32")
    expected = lenet(seed=0)
    for p, q in zip(model.parameters(), expected.parameters()):
        np.testing.assert_allclose(p.data, q.data, rtol=1e-3, atol=1e-3)


def test_bfloat16_on_numpy_is_a_clear_error():
    with pytest.raises(DTypeError, match="torch and jax"):
        lenet(seed=0, dtype="bfloat16")
    with pytest.raises(DTypeError, match="torch and jax"):
        lenet(seed=0).to("numpy", dtype="bfloat16")
    with pytest.raises(DTypeError, match="float16"):
        lenet(seed=0, dtype="int8")


def test_lenet_torch_bfloat16_matches_float32():
    torch = pytest.importorskip("torch")
    x, labels = _batch()
    reference = _forward_backward(lenet(seed=0), x.astype(np.float32), labels)
    model = lenet(seed=0, dtype="bfloat16", device="torch:cpu")
    assert all(p.data.dtype == torch.bfloat16 for p in model.parameters())
    xt = torch.from_numpy(x.astype(np.float32)).to(torch.bfloat16)
    lt = torch.from_numpy(labels)
    logits, loss, grads = _forward_backward(model, xt, lt)
    assert logits.dtype == torch.bfloat16 and loss.dtype == torch.bfloat16
    assert all(g.dtype == torch.bfloat16 for g in grads)
    _assert_close(logits, reference[0], "bfloat16")
    _assert_close(loss, reference[1], "bfloat16")
    for g, r in zip(grads, reference[2]):
        _assert_close_to_scale(g, r, 0.1)
    # .to casts bfloat16 <-> float32 on the device, and state dicts load across the two.
    back = lenet(seed=0, dtype="bfloat16", device="torch:cpu").to("torch:cpu", dtype="float32")
    assert all(p.data.dtype == torch.float32 for p in back.parameters())
    again = lenet(seed=1, dtype="bfloat16", device="torch:cpu")
    again.load_state_dict(lenet(seed=0, device="torch:cpu").state_dict())
    for p, q in zip(again.parameters(), model.parameters()):
        assert p.data.dtype == torch.bfloat16 and torch.equal(p.data, q.data)


def _assert_close_to_scale(actual, expected, fraction):
    """Gradients in the norm: summed over many half-precision products, and a max-pool winner or a ReLU sign
    near a tie may flip, so single entries can differ by more than the dtype's tolerance."""
    actual, expected = _host32(actual), _host32(expected)
    assert np.linalg.norm(actual - expected) <= fraction * np.linalg.norm(expected)


def _rounded(a32):
    return np.asarray(a32, dtype=np.float32).astype(np.float16)


def test_softmax_and_log_softmax_accumulate_in_float32():
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((6, 300)) * 4).astype(np.float16)
    before = x.copy()
    for op in (F.softmax, F.log_softmax):
        out = op(x, axis=-1)
        assert out.dtype == np.float16
        np.testing.assert_array_equal(out, _rounded(op(x.astype(np.float32), axis=-1)))
    g = rng.standard_normal((6, 300)).astype(np.float16)
    for op in (F.softmax_backward, F.log_softmax_backward):
        out = op(g, x)
        assert out.dtype == np.float16
        np.testing.assert_array_equal(out, _rounded(op(g.astype(np.float32), x.astype(np.float32))))
    np.testing.assert_array_equal(x, before)


def test_cross_entropy_accumulates_in_float32():
    rng = np.random.default_rng(2)
    logits = (rng.standard_normal((64, 10)) * 3).astype(np.float16)
    labels = rng.integers(0, 10, 64)
    weight = rng.uniform(0.5, 2.0, 10).astype(np.float16)
    for kwargs in ({}, {"reduction": "none"}, {"weight": weight, "label_smoothing": 0.1}):
        wide = {k: (v.astype(np.float32) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}
        loss = F.cross_entropy(logits, labels, **kwargs)
        assert loss.dtype == np.float16
        np.testing.assert_array_equal(loss, _rounded(F.cross_entropy(logits.astype(np.float32), labels, **wide)))
        grad = F.cross_entropy_backward(logits, labels, **kwargs)
        assert grad.dtype == np.float16
        np.testing.assert_array_equal(
            grad, _rounded(F.cross_entropy_backward(logits.astype(np.float32), labels, **wide)))


@pytest.mark.parametrize("training", [True, False])
def test_batch_norm_statistics_in_float32(training):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((8, 3, 5, 5)) * 3 + 100).astype(np.float16)  # a large mean: float16 sums lose it
    mean, var = np.full(3, 99.0, np.float16), np.full(3, 8.0, np.float16)
    w, b = np.array([1.0, 0.5, 2.0], np.float16), np.array([0.0, 0.1, -0.2], np.float16)
    y, new_mean, new_var = F.batch_norm(x, mean, var, w, b, training=training)
    assert y.dtype == new_mean.dtype == new_var.dtype == np.float16
    y32, m32, v32 = F.batch_norm(*(a.astype(np.float32) for a in (x, mean, var, w, b)), training=training)
    np.testing.assert_array_equal(y, _rounded(y32))
    np.testing.assert_array_equal(new_mean, _rounded(m32))
    np.testing.assert_array_equal(new_var, _rounded(v32))
    g = rng.standard_normal(x.shape).astype(np.float16)
    grads = F.batch_norm_backward(g, x, mean, var, w, training=training)
    wide = F.batch_norm_backward(*(a.astype(np.float32) for a in (g, x, mean, var, w)), training=training)
    for got, want in zip(grads, wide):
        assert got.dtype == np.float16
        np.testing.assert_array_equal(got, _rounded(want))


def test_batchnorm_layer_float16():
    layer = portacnn.nn.BatchNorm2d(3, dtype="float16")
    assert layer.running_mean.data.dtype == np.float16
    assert layer.num_batches_tracked.data.dtype == np.int64
    y = layer(portacnn.tensor(np.ones((2, 3, 4, 4), np.float16)))
    assert y.data.dtype == np.float16 and layer.running_var.data.dtype == np.float16


class _OneParam:
    """A stand-in optimizer over one float32 parameter, counting its steps."""

    def __init__(self):
        self.params = [portacnn.nn.Parameter(np.zeros(3, np.float32))]
        self.steps = 0

    def step(self):
        self.steps += 1


def test_grad_scaler_matches_torch_scale_sequence():
    torch = pytest.importorskip("torch")
    ours = GradScaler(init_scale=8.0, growth_interval=3)
    theirs = torch.amp.GradScaler("cpu", init_scale=8.0, growth_interval=3)
    opt = _OneParam()
    tp = torch.nn.Parameter(torch.zeros(3))
    topt = torch.optim.SGD([tp], lr=0.1)
    bad_steps = {2, 9}
    ours_scales, theirs_scales, steps_taken = [], [], []
    for i in range(12):
        grad = np.array([1.0, np.inf if i in bad_steps else 2.0, 3.0], np.float32)
        opt.params[0].grad = grad * ours.get_scale()
        theirs.scale(torch.ones(()))  # torch initialises its scale lazily here
        tp.grad = torch.from_numpy(grad) * theirs.get_scale()
        before = opt.steps
        ours.step(opt)
        theirs.step(topt)
        steps_taken.append(opt.steps - before)
        if i not in bad_steps:
            np.testing.assert_array_equal(opt.params[0].grad, grad)  # unscaled
        ours.update()
        theirs.update()
        ours_scales.append(ours.get_scale())
        theirs_scales.append(theirs.get_scale())
    assert ours_scales == theirs_scales
    assert steps_taken == [0 if i in bad_steps else 1 for i in range(12)]
    assert ours.state_dict() == {k: v for k, v in theirs.state_dict().items()}
    restored = GradScaler()
    restored.load_state_dict(ours.state_dict())
    assert restored.state_dict() == ours.state_dict()


def test_grad_scaler_usage_errors_and_disabled():
    from portacnn.errors import UsageError

    scaler, opt = GradScaler(), _OneParam()
    opt.params[0].grad = np.ones(3, np.float32)
    scaler.unscale_(opt)
    with pytest.raises(UsageError, match="once per step"):
        scaler.unscale_(opt)
    off = GradScaler(enabled=False)
    assert off.get_scale() == 1.0 and off.state_dict() == {}
    loss = portacnn.tensor(np.float32(2.0))
    assert off.scale(loss) is loss
    assert float(GradScaler(init_scale=4.0).scale(loss).data) == 8.0


def test_float16_lenet_training_with_grad_scaler_reduces_loss():
    x, labels = _batch(16, seed=4)
    x = x.astype(np.float16)
    model = lenet(seed=0, dtype="float16")
    optimizer = SGD(model.parameters(), lr=0.05)
    scaler = GradScaler(init_scale=2.0 ** 10)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(portacnn.tensor(x)), labels)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        losses.append(float(loss.data))
    assert all(p.data.dtype == np.float16 for p in model.parameters())
    assert np.isfinite(losses).all() and losses[-1] < losses[0]
