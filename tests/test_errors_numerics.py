"""Bad numbers: divergence is reported precisely and loses nothing; extreme and degenerate values stay finite.

Covered elsewhere (not repeated here):

* ``tests/test_training.py::test_divergence_is_a_clear_error_and_keeps_the_checkpoint``: lr=1e5
  diverges, the error names the epoch and step, suggests a lower learning rate
  and the previous ``last.npz`` stays byte-identical.
* ``tests/test_cli.py::test_divergence_exits_2_with_advice``: the CLI prints it without a traceback.
* ``tests/test_functional.py::test_extreme_logits_stay_finite``: ``sigmoid``, ``softmax``,
  ``log_softmax``, ``cross_entropy`` and their backwards at logits of exactly +-1e4,
  float32 and float64, on every backend, including the exact limiting values.

Here: a NaN injected at a known step is reported at exactly that epoch and
step, with the previous epoch's checkpoint of the same run intact; random
logits up to +-1e4 (property-based); non-finite logits are not hidden; and
degenerate inputs (constant batches, all-zero pooling windows, zero
gradients) keep gradients finite.
"""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from support import offline_environment, write_fake_mnist

import portacnn.training as training
from portacnn import functional as F
from portacnn.checkpoint import load_checkpoint
from portacnn.nn import Parameter
from portacnn.optim import SGD, Adam
from portacnn.training import TrainConfig, TrainingDivergedError, train


@pytest.fixture
def fake_mnist(tmp_path, monkeypatch):
    offline_environment(monkeypatch, tmp_path / "home", md5s="none")
    return write_fake_mnist(tmp_path / "mnist", n_train=60, n_test=10)


def test_nan_at_a_known_step_is_reported_there_and_the_last_good_checkpoint_survives(fake_mnist, tmp_path,
                                                                                      monkeypatch):
    """3 steps per epoch; a NaN image in epoch 2, step 2: the epoch-1 checkpoint of this very run is kept."""
    real_prepare = training.prepare_images
    training_batches = []

    def poisoned(images, dtype):
        out = real_prepare(images, dtype)
        if len(images) == 20:  # a training batch (the 10 test images are evaluated in one batch of 10)
            training_batches.append(len(training_batches))
            if len(training_batches) == 5:  # epoch 2, step 2
                out = out.copy()
                out[0, 0, 0, 0] = np.nan
        return out

    monkeypatch.setattr(training, "prepare_images", poisoned)
    folder = tmp_path / "ck"
    config = TrainConfig(epochs=3, train_size=60, test_size=10, batch_size=20, lr=0.01, momentum=0.9, lr_step=1,
                         lr_gamma=0.5, data_dir=str(fake_mnist), checkpoint_dir=str(folder), quiet=True)
    with pytest.raises(TrainingDivergedError) as info:
        train(config)
    message = str(info.value)
    assert "the loss became nan at epoch 2, step 2 " in message, message
    assert "lower learning rate" in message and str(folder / "last.npz") in message
    saved = load_checkpoint(folder / "last.npz")
    assert saved["epoch"] == 1 and len(saved["history"]) == 1
    assert all(np.all(np.isfinite(value)) for value in saved["model"].values())
    assert sorted(p.name for p in folder.iterdir()) == ["last.npz"]  # no temp file left by the failed epoch


@settings(max_examples=30, deadline=None)
@given(dtype=st.sampled_from([np.float32, np.float64]), data=st.data(),
       shape=st.tuples(st.integers(1, 6), st.integers(2, 12)))
def test_random_logits_up_to_1e4_stay_finite(dtype, data, shape):
    values = st.one_of(st.sampled_from([1e4, -1e4, 0.0]), st.floats(-1e4, 1e4, width=32))
    logits = data.draw(hnp.arrays(dtype, shape, elements=values))
    labels = data.draw(hnp.arrays(np.int64, shape[:1], elements=st.integers(0, shape[1] - 1)))
    grad = np.ones(shape, dtype)
    results = {
        "cross_entropy": F.cross_entropy(logits, labels),
        "cross_entropy_backward": F.cross_entropy_backward(logits, labels),
        "softmax": F.softmax(logits), "softmax_backward": F.softmax_backward(grad, logits),
        "log_softmax": F.log_softmax(logits), "log_softmax_backward": F.log_softmax_backward(grad, logits),
        "sigmoid": F.sigmoid(logits), "sigmoid_backward": F.sigmoid_backward(grad, logits),
    }
    for name, value in results.items():
        assert value.dtype == dtype, name
        assert np.all(np.isfinite(value)), (name, logits, value)
    np.testing.assert_allclose(results["softmax"].sum(axis=1), 1.0, rtol=1e-5)
    assert float(results["cross_entropy"]) >= 0.0
    assert np.all((results["sigmoid"] >= 0) & (results["sigmoid"] <= 1))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_logits_are_not_hidden(bad):
    """A NaN/inf logit must give a non-finite loss, so the training loop's divergence check sees it."""
    logits = np.array([[bad, 0.0, 1.0], [0.0, 1.0, 2.0]])
    labels = np.array([1, 2])
    with np.errstate(invalid="ignore", over="ignore"):
        assert not math.isfinite(float(F.cross_entropy(logits, labels)))


def test_degenerate_inputs_keep_gradients_finite():
    # a constant batch: zero variance, normalised through eps
    constant = np.full((4, 3, 2, 2), 7.0, dtype=np.float32)
    y, mean, var = F.batch_norm(constant, np.zeros(3, np.float32), np.ones(3, np.float32), training=True)
    grads = F.batch_norm_backward(np.ones_like(constant), constant, None, None, training=True)
    assert np.all(np.isfinite(y)) and all(np.all(np.isfinite(g)) for g in grads)
    # all-zero power-mean windows (and zero inputs with p < 1): gradient zero, never NaN
    x = np.zeros((1, 2, 4, 4))
    x[0, 1, 0, 0] = 0.5
    for p in (0.5, 1.0, 2.0, 3.5):
        grad = F.lp_pool2d_backward(np.ones((1, 2, 2, 2)), x, p, 2)
        assert np.all(np.isfinite(grad)), (p, grad)
        assert np.all(grad[0, 0] == 0.0)
    # zero gradients do not make the optimizers divide by zero
    for make in (lambda ps: Adam(ps, lr=0.1), lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True)):
        param = Parameter(np.ones(3))
        optimizer = make([param])
        for _ in range(3):
            param.grad = np.zeros(3)
            optimizer.step()
        np.testing.assert_array_equal(param.data, np.ones(3))
