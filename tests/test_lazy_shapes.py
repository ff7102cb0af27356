"""Every functional op on a lazy library's arrays whose batch size is unknown (issue 13, part 3).

ndonnx implements the array API by building an ONNX graph; an input made
with ``ndx.argument(shape=("N", ...))`` reports its batch size as None, as
the standard allows. Each case runs an op on NumPy and on such arguments
(the batch inputs; weights and other constants enter the graph as
constants), builds the graph, evaluates it with onnxruntime at two batch
sizes, and compares with NumPy float32 (rtol 1e-5, atol 1e-6 x scale: the
project's rule, ``portacnn.testing.compare``). One graph serving batches 11
and 1 shows no op read the batch size; each output must also state every
size but the batch, so the next op can read the sizes it needs.

Without ndonnx the file skips, except in CI, where the test extra installs it
and a missing package must fail.
"""

import math
import os

import numpy as np
import pytest

import portacnn
from portacnn import functional as F
from portacnn.errors import ArgumentError, ShapeError
from portacnn.testing.compare import close_report

if os.environ.get("CI"):
    import ndonnx as ndx
    import onnxruntime as ort
else:
    ndx = pytest.importorskip("ndonnx")
    ort = pytest.importorskip("onnxruntime")

#: The batch the references are computed at (no other size in the cases is 11, so an output axis of
#: that size is the batch, which the graph must leave unknown), and a second one the graph must serve.
BATCH, OTHER_BATCH = 11, 1
RTOL, ATOL = 1e-5, 1e-6

_rng = np.random.default_rng(13)


def r(*shape, positive=False):
    """float32 normal samples (absolute values with ``positive``)."""
    x = _rng.standard_normal(shape).astype(np.float32)
    return np.abs(x) + np.float32(0.1) if positive else x


def labels(classes=7):
    return _rng.integers(0, classes, BATCH).astype(np.int64)


def scalar(value=0.7):
    return np.asarray(value, dtype=np.float32)


class Case:
    """``fn(*batch, *consts)`` on NumPy and on ndonnx: ``batch`` arrays become arguments whose axis 0
    is the symbolic "N"; ``consts`` (None allowed) become graph constants. ``ops`` names the
    ``portacnn.functional`` functions the case exercises."""

    def __init__(self, ops, fn, batch, consts=()):
        self.ops, self.fn, self.batch, self.consts = ops.split(), fn, batch, consts


X = r(BATCH, 4, 9, 9)
X2 = r(BATCH, 7)
MASK = _rng.random(X.shape) >= 0.25  # a dropout keep-mask, a symbolic boolean input

CASES = {
    # convolution
    "conv2d": Case("conv2d", lambda x, w, b: F.conv2d(x, w, b), [X], [r(6, 4, 3, 3), r(6)]),
    "conv2d-stride-pad-dilation-groups": Case(
        "conv2d", lambda x, w: F.conv2d(x, w, stride=2, padding=(1, 2), dilation=2, groups=2), [X], [r(6, 2, 3, 3)]),
    "conv2d-depthwise": Case("conv2d", lambda x, w, b: F.conv2d(x, w, b, padding=1, groups=4), [X],
                             [r(8, 1, 3, 3), r(8)]),
    "conv_transpose2d": Case("conv_transpose2d", lambda x, w, b: F.conv_transpose2d(x, w, b), [X],
                             [r(4, 3, 2, 2), r(3)]),
    "conv_transpose2d-options": Case(
        "conv_transpose2d",
        lambda x, w, b: F.conv_transpose2d(x, w, b, stride=2, padding=1, output_padding=1, groups=2, dilation=1),
        [X], [r(4, 3, 2, 3), r(6)]),
    # pooling
    "max_pool2d": Case("max_pool2d", lambda x: F.max_pool2d(x, 2), [X]),
    "max_pool2d-ceil-pad": Case("max_pool2d", lambda x: F.max_pool2d(x, 3, 2, 1, ceil_mode=True), [X]),
    "avg_pool2d": Case("avg_pool2d", lambda x: F.avg_pool2d(x, 2), [X]),
    "avg_pool2d-pad": Case("avg_pool2d", lambda x: F.avg_pool2d(x, 3, 1, 1), [X]),
    "avg_pool2d-ceil-exclude-pad": Case(
        "avg_pool2d", lambda x: F.avg_pool2d(x, 3, 2, 1, ceil_mode=True, count_include_pad=False), [X]),
    "lp_pool2d": Case("lp_pool2d", lambda x: F.lp_pool2d(x, 2, 2), [X]),
    "lp_pool2d-p1.5-stride": Case("lp_pool2d", lambda x: F.lp_pool2d(x, 1.5, 3, 2), [np.abs(X)]),
    "lp_pool2d-inf": Case("lp_pool2d", lambda x: F.lp_pool2d(x, math.inf, 3), [X]),
    "adaptive_avg_pool2d": Case("adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, (4, 5)), [X]),
    "adaptive_avg_pool2d-1": Case("adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, 1), [X]),
    "adaptive_max_pool2d": Case("adaptive_max_pool2d", lambda x: F.adaptive_max_pool2d(x, (2, 4)), [X]),
    "adaptive_max_pool2d-keep": Case("adaptive_max_pool2d", lambda x: F.adaptive_max_pool2d(x, (None, 2)),
                                     [r(BATCH, 2, 2, 3)]),
    # resizing
    "interpolate-nearest-scale": Case("interpolate", lambda x: F.interpolate(x, scale_factor=2), [X]),
    "interpolate-nearest-size": Case("interpolate", lambda x: F.interpolate(x, size=(5, 13)), [X]),
    "interpolate-bilinear": Case("interpolate", lambda x: F.interpolate(x, scale_factor=1.5, mode="bilinear"), [X]),
    "interpolate-bilinear-corners": Case(
        "interpolate", lambda x: F.interpolate(x, size=(5, 13), mode="bilinear", align_corners=True), [X]),
    # linear
    "linear": Case("linear", lambda x, w, b: F.linear(x, w, b), [X2], [r(3, 7), r(3)]),
    "linear-no-bias": Case("linear", lambda x, w: F.linear(x, w), [X2], [r(3, 7)]),
    # activations
    "relu": Case("relu", F.relu, [X]),
    "sigmoid": Case("sigmoid", F.sigmoid, [X]),
    "tanh": Case("tanh", F.tanh, [X]),
    "leaky_relu": Case("leaky_relu", lambda x: F.leaky_relu(x, 0.2), [X]),
    "elu": Case("elu", lambda x: F.elu(x, 1.3), [X]),
    "gelu": Case("gelu", F.gelu, [X]),
    "gelu-tanh": Case("gelu", lambda x: F.gelu(x, approximate="tanh"), [X]),
    "silu": Case("silu", F.silu, [X]),
    "hardswish": Case("hardswish", lambda x: F.hardswish(4 * x), [X]),
    "softmax": Case("softmax", F.softmax, [X2]),
    "softmax-channels": Case("softmax", lambda x: F.softmax(x, 1), [X]),
    "softmax-batch-axis": Case("softmax", lambda x: F.softmax(x, 0), [X2]),
    "log_softmax": Case("log_softmax", F.log_softmax, [X2]),
    "log_softmax-batch-axis": Case("log_softmax", lambda x: F.log_softmax(x, 0), [X]),
    # losses: integer labels are a second symbolic input
    "cross_entropy": Case("cross_entropy", lambda x, y: F.cross_entropy(x, y, check_labels=False), [X2, labels()]),
    "cross_entropy-sum": Case(
        "cross_entropy", lambda x, y: F.cross_entropy(x, y, reduction="sum", check_labels=False), [X2, labels()]),
    "cross_entropy-none": Case(
        "cross_entropy", lambda x, y: F.cross_entropy(x, y, reduction="none", check_labels=False), [X2, labels()]),
    "cross_entropy-weight-smoothing": Case(
        "cross_entropy",
        lambda x, y, w: F.cross_entropy(x, y, weight=w, label_smoothing=0.1, check_labels=False),
        [X2, labels()], [r(7, positive=True)]),
    "cross_entropy-smoothing": Case(
        "cross_entropy", lambda x, y: F.cross_entropy(x, y, label_smoothing=0.2, check_labels=False), [X2, labels()]),
    "nll_loss": Case("nll_loss", lambda x, y: F.nll_loss(x, y, check_labels=False), [X2, labels()]),
    "nll_loss-sum": Case("nll_loss", lambda x, y: F.nll_loss(x, y, reduction="sum", check_labels=False),
                         [X2, labels()]),
    "nll_loss-none": Case("nll_loss", lambda x, y: F.nll_loss(x, y, reduction="none", check_labels=False),
                          [X2, labels()]),
    "mse_loss": Case("mse_loss", F.mse_loss, [X, r(BATCH, 4, 9, 9)]),
    "mse_loss-none": Case("mse_loss", lambda x, t: F.mse_loss(x, t, reduction="none"), [X2, r(BATCH, 7)]),
    "l1_loss": Case("l1_loss", F.l1_loss, [X2, r(BATCH, 7)]),
    "l1_loss-sum": Case("l1_loss", lambda x, t: F.l1_loss(x, t, reduction="sum"), [X2, r(BATCH, 7)]),
    "bce_with_logits": Case("binary_cross_entropy_with_logits", F.binary_cross_entropy_with_logits,
                            [X2, np.abs(r(BATCH, 7)) % 1]),
    "bce_with_logits-none": Case(
        "binary_cross_entropy_with_logits",
        lambda x, t: F.binary_cross_entropy_with_logits(x, t, reduction="none"), [X2, np.abs(r(BATCH, 7)) % 1]),
    # normalisation (batch_norm returns y and the running statistics)
    "batch_norm-eval": Case("batch_norm", lambda x, m, v, w, b: F.batch_norm(x, m, v, w, b), [X],
                            [r(4), r(4, positive=True), r(4), r(4)]),
    "batch_norm-train": Case("batch_norm", lambda x, m, v, w, b: F.batch_norm(x, m, v, w, b, training=True), [X],
                             [r(4), r(4, positive=True), r(4), r(4)]),
    "batch_norm-train-2d": Case("batch_norm", lambda x, m, v: F.batch_norm(x, m, v, training=True, momentum=0.3),
                                [X2], [r(7), r(7, positive=True)]),
    "batch_norm-train-no-running": Case("batch_norm", lambda x: F.batch_norm(x, None, None, training=True),
                                        [r(BATCH, 3, 5)]),
    "layer_norm": Case("layer_norm", lambda x, w, b: F.layer_norm(x, (9, 9), w, b), [X], [r(9, 9), r(9, 9)]),
    "layer_norm-last": Case("layer_norm", lambda x: F.layer_norm(x, 7), [X2]),
    "group_norm": Case("group_norm", lambda x, w, b: F.group_norm(x, 2, w, b), [X], [r(4), r(4)]),
    "group_norm-3d": Case("group_norm", lambda x: F.group_norm(x, 3), [r(BATCH, 6, 5)]),
    "dropout-eval": Case("dropout", lambda x: F.dropout(x, 0.5, training=False), [X]),
    "dropout-p0": Case("dropout", lambda x: F.dropout(x, 0.0, rng=0), [X]),
    "dropout-mask": Case("dropout", lambda x, m: F.dropout(x, 0.25, mask=m), [X, MASK]),
}

_G = {"pool": r(BATCH, 4, 5, 5), "x2": r(BATCH, 7)}

BACKWARD_CASES = {
    "conv2d_backward": Case("conv2d_backward", lambda g, x, w: F.conv2d_backward(g, x, w), [r(BATCH, 6, 8, 7), X],
                            [r(6, 4, 2, 3)]),
    "conv2d_backward-options": Case(
        "conv2d_backward", lambda g, x, w: F.conv2d_backward(g, x, w, stride=2, padding=1, dilation=2, groups=2),
        [r(BATCH, 6, 5, 5), X], [r(6, 2, 2, 2)]),
    "conv_transpose2d_backward": Case(
        "conv_transpose2d_backward",
        lambda g, x, w: F.conv_transpose2d_backward(g, x, w, stride=2, padding=1, output_padding=1, groups=2),
        [r(BATCH, 6, 18, 18), X], [r(4, 3, 3, 3)]),
    "max_pool2d_backward": Case("max_pool2d_backward", lambda g, x: F.max_pool2d_backward(g, x, 3, 2, 1, ceil_mode=True),
                                [_G["pool"], X]),
    "max_pool2d_backward-forward-output": Case(
        "max_pool2d_backward", lambda g, x, y: F.max_pool2d_backward(g, x, 2, forward_output=y),
        [r(BATCH, 4, 4, 4), X, F.max_pool2d(X, 2)]),
    "avg_pool2d_backward": Case("avg_pool2d_backward", lambda g, x: F.avg_pool2d_backward(g, x, 2),
                                [r(BATCH, 4, 4, 4), X]),
    "avg_pool2d_backward-ceil-exclude-pad": Case(
        "avg_pool2d_backward",
        lambda g, x: F.avg_pool2d_backward(g, x, 3, 2, 1, ceil_mode=True, count_include_pad=False), [_G["pool"], X]),
    "lp_pool2d_backward": Case("lp_pool2d_backward", lambda g, x: F.lp_pool2d_backward(g, x, 2, (2, 3)),
                               [r(BATCH, 4, 4, 3), X]),
    "adaptive_avg_pool2d_backward": Case(
        "adaptive_avg_pool2d_backward", lambda g, x: F.adaptive_avg_pool2d_backward(g, x, (4, 5)),
        [r(BATCH, 4, 4, 5), X]),
    "adaptive_max_pool2d_backward": Case(
        "adaptive_max_pool2d_backward", lambda g, x: F.adaptive_max_pool2d_backward(g, x, (2, 3)),
        [r(BATCH, 2, 2, 3), r(BATCH, 2, 5, 4)]),
    "interpolate_backward": Case(
        "interpolate_backward", lambda g, x: F.interpolate_backward(g, x, size=(5, 13), mode="bilinear"),
        [r(BATCH, 4, 5, 13), X]),
    "interpolate_backward-nearest": Case(
        "interpolate_backward", lambda g, x: F.interpolate_backward(g, x, scale_factor=2), [r(BATCH, 4, 18, 18), X]),
    "linear_backward": Case("linear_backward", F.linear_backward, [r(BATCH, 3), X2], [r(3, 7)]),
    "relu_backward": Case("relu_backward", F.relu_backward, [r(BATCH, 4, 9, 9), X]),
    "sigmoid_backward": Case("sigmoid_backward", F.sigmoid_backward, [_G["x2"], X2]),
    "tanh_backward": Case("tanh_backward", F.tanh_backward, [_G["x2"], X2]),
    "leaky_relu_backward": Case("leaky_relu_backward", lambda g, x: F.leaky_relu_backward(g, x, 0.2), [_G["x2"], X2]),
    "elu_backward": Case("elu_backward", F.elu_backward, [_G["x2"], X2]),
    "gelu_backward": Case("gelu_backward", F.gelu_backward, [_G["x2"], X2]),
    "gelu_backward-tanh": Case("gelu_backward", lambda g, x: F.gelu_backward(g, x, approximate="tanh"),
                               [_G["x2"], X2]),
    "silu_backward": Case("silu_backward", F.silu_backward, [_G["x2"], X2]),
    "hardswish_backward": Case("hardswish_backward", lambda g, x: F.hardswish_backward(g, 4 * x), [_G["x2"], X2]),
    "softmax_backward": Case("softmax_backward", F.softmax_backward, [_G["x2"], X2]),
    "log_softmax_backward": Case("log_softmax_backward", lambda g, x: F.log_softmax_backward(g, x, 0),
                                 [_G["x2"], X2]),
    "cross_entropy_backward": Case(
        "cross_entropy_backward", lambda x, y: F.cross_entropy_backward(x, y, check_labels=False), [X2, labels()]),
    "cross_entropy_backward-none-weight": Case(
        "cross_entropy_backward",
        lambda x, y, g, w: F.cross_entropy_backward(x, y, weight=w, reduction="none", check_labels=False, grad_out=g),
        [X2, labels(), r(BATCH)], [r(7, positive=True)]),
    "cross_entropy_backward-smoothing": Case(
        "cross_entropy_backward",
        lambda x, y, g: F.cross_entropy_backward(x, y, label_smoothing=0.1, check_labels=False, grad_out=g),
        [X2, labels()], [scalar()]),
    "nll_loss_backward": Case("nll_loss_backward", lambda x, y, g: F.nll_loss_backward(g, x, y, check_labels=False),
                              [X2, labels()], [scalar()]),
    "nll_loss_backward-none": Case(
        "nll_loss_backward", lambda g, x, y: F.nll_loss_backward(g, x, y, reduction="none", check_labels=False),
        [r(BATCH), X2, labels()]),
    "mse_loss_backward": Case("mse_loss_backward", lambda x, t, g: F.mse_loss_backward(g, x, t),
                              [X, r(BATCH, 4, 9, 9)], [scalar()]),
    "l1_loss_backward": Case("l1_loss_backward", lambda x, t, g: F.l1_loss_backward(g, x, t),
                             [X2, r(BATCH, 7)], [scalar()]),
    "bce_with_logits_backward": Case(
        "binary_cross_entropy_with_logits_backward",
        lambda x, t, g: F.binary_cross_entropy_with_logits_backward(g, x, t), [X2, np.abs(r(BATCH, 7)) % 1],
        [scalar()]),
    "bce_with_logits_backward-none": Case(
        "binary_cross_entropy_with_logits_backward",
        lambda g, x, t: F.binary_cross_entropy_with_logits_backward(g, x, t, reduction="none"),
        [_G["x2"], X2, np.abs(r(BATCH, 7)) % 1]),
    "batch_norm_backward-train": Case(
        "batch_norm_backward", lambda g, x, w: F.batch_norm_backward(g, x, None, None, w, training=True),
        [r(BATCH, 4, 9, 9), X], [r(4)]),
    "batch_norm_backward-eval": Case(
        "batch_norm_backward", lambda g, x, m, v, w: F.batch_norm_backward(g, x, m, v, w), [r(BATCH, 4, 9, 9), X],
        [r(4), r(4, positive=True), r(4)]),
    "layer_norm_backward": Case("layer_norm_backward", lambda g, x, w: F.layer_norm_backward(g, x, (9, 9), w),
                                [r(BATCH, 4, 9, 9), X], [r(9, 9)]),
    "group_norm_backward": Case("group_norm_backward", lambda g, x, w: F.group_norm_backward(g, x, 2, w),
                                [r(BATCH, 4, 9, 9), X], [r(4)]),
    "dropout_backward": Case("dropout_backward", lambda g, m: F.dropout_backward(g, m, 0.25), [X, MASK]),
}


def _outputs(result):
    return result if isinstance(result, tuple) else (result,)


def _graph(case):
    """The graph of ``case`` on symbolic-batch arguments "in0", "in1", ... → (onnxruntime session,
    {result position: ndonnx output}); result ``i`` is the graph's output "out{i}" (None results are left out)."""
    args = [ndx.argument(shape=("N", *a.shape[1:]), dtype=ndx.from_numpy_dtype(a.dtype)) for a in case.batch]
    consts = [None if c is None else ndx.asarray(c) for c in case.consts]
    outs = _outputs(case.fn(*args, *consts))
    kept = {i: out for i, out in enumerate(outs) if out is not None}
    model = ndx.build({f"in{i}": a for i, a in enumerate(args)}, {f"out{i}": out for i, out in kept.items()})
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]), kept


def check(case):
    session, kept = _graph(case)
    reference = _outputs(case.fn(*case.batch, *case.consts))
    assert sorted(kept) == [i for i, ref in enumerate(reference) if ref is not None]
    # Every size but the batch is stated, so the next op can read the ones it needs.
    for i, out in kept.items():
        want = tuple(None if axis == 0 and size == BATCH else size for axis, size in enumerate(np.shape(reference[i])))
        assert tuple(out.shape) == want, f"output {i}: static shape {tuple(out.shape)}, expected {want}"
    for n in (BATCH, OTHER_BATCH):
        inputs = [a[:n] for a in case.batch]
        try:
            want = reference if n == BATCH else _outputs(case.fn(*inputs, *case.consts))
        except ShapeError:  # NumPy refuses that batch (e.g. batch-norm of one value)
            continue
        got = session.run([f"out{i}" for i in kept], {f"in{i}": a for i, a in enumerate(inputs)})
        for value, i in zip(got, kept):
            report = close_report(value, np.asarray(want[i]), rtol=RTOL, atol=ATOL, name=f"batch {n}, output {i}")
            assert report is None, report


@pytest.mark.parametrize("name", CASES)
def test_forward_with_unknown_batch(name):
    check(CASES[name])


@pytest.mark.parametrize("name", BACKWARD_CASES)
def test_backward_with_unknown_batch(name):
    check(BACKWARD_CASES[name])


def test_every_op_is_covered():
    covered = {op for case in (*CASES.values(), *BACKWARD_CASES.values()) for op in case.ops}
    assert covered <= set(F.__all__), covered - set(F.__all__)
    assert set(F.__all__) <= covered, f"ops without a case here: {sorted(set(F.__all__) - covered)}"


def test_label_check_on_lazy_labels_says_what_to_do():
    logits = ndx.argument(shape=("N", 7), dtype=ndx.float32)
    targets = ndx.argument(shape=("N",), dtype=ndx.int64)
    with pytest.raises(ArgumentError, match="check_labels=False"):
        F.cross_entropy(logits, targets)


def test_lenet_forward_on_a_symbolic_batch():
    from portacnn.models import lenet

    model = lenet(seed=0).eval()
    images = _rng.standard_normal((37, 1, 28, 28)).astype(np.float32)
    with portacnn.no_grad():
        reference = model(images).data
        for parameter in model.parameters():
            parameter.data = ndx.asarray(parameter.data)
        x = ndx.argument(shape=("N", 1, 28, 28), dtype=ndx.float32)
        logits = model(x).data
    assert tuple(logits.shape) == (None, 10)
    session = ort.InferenceSession(ndx.build({"x": x}, {"logits": logits}).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    for n in (1, 37):
        (got,) = session.run(None, {"x": images[:n]})
        report = close_report(got, reference[:n], rtol=RTOL, atol=ATOL, name=f"LeNet logits, batch {n}")
        assert report is None, report


def test_lenet_training_gradients_on_a_symbolic_batch():
    """loss.backward() through the tape builds a graph of every parameter's gradient for any batch size."""
    from portacnn.models import lenet
    from portacnn.nn import CrossEntropyLoss

    images = _rng.standard_normal((9, 1, 28, 28)).astype(np.float32)
    targets = _rng.integers(0, 10, 9)
    reference_model = lenet(seed=0)
    CrossEntropyLoss()(reference_model(images), targets).backward()
    model = lenet(seed=0)
    for parameter in model.parameters():
        parameter.data = ndx.asarray(parameter.data)
    x = ndx.argument(shape=("N", 1, 28, 28), dtype=ndx.float32)
    y = ndx.argument(shape=("N",), dtype=ndx.int64)
    CrossEntropyLoss(check_labels=False)(model(x), y).backward()
    names = [name for name, _ in model.named_parameters()]
    graph = ndx.build({"x": x, "y": y}, {name.replace(".", "_"): p.grad for name, p in model.named_parameters()})
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": images, "y": targets.astype(np.int64)})
    for name, value, parameter in zip(names, got, reference_model.parameters()):
        report = close_report(value, parameter.grad, rtol=RTOL, atol=ATOL, name=f"LeNet d{name}")
        assert report is None, report
