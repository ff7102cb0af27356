"""Losses: cross-entropy and negative log-likelihood of integer class labels, MSE, L1, and binary
cross-entropy of logits.

``reduction`` is PyTorch's: ``'mean'`` (the default), ``'sum'`` or
``'none'`` (the per-element, or per-sample, losses). Each ``<loss>_backward``
takes the upstream gradient, shaped like the loss's result (0-d unless
``reduction='none'``). Class labels are picked out with a one-hot comparison
rather than integer indexing, which the array rules forbid in the backward.
"""

from __future__ import annotations

from .._arrays import count, describe_array, device_of, namespace_of
from .._checks import (
    check_grad,
    check_reduction,
    is_real_number,
    require_float,
    require_ndim,
    require_same_dtype,
)
from .._dispatch import tape_aware
from ..errors import ArgumentError, ArgumentTypeError, DTypeError, ShapeError
from ._precision import narrow, restore, widen
from .activation import log_softmax, sigmoid, softmax


def _class_setup(x, labels, check_labels: bool, op: str, names: tuple[str, str], layout: str, grad_out=None):
    """Checks shared by the losses of integer class labels; ``names`` are the op's argument names."""
    x_name, labels_name = names
    xp = namespace_of(x, labels, grad_out, names=(*names, "grad_out"))
    require_float(xp, x, f"{op} {x_name}")
    require_ndim(x, 2, f"{op} {x_name}", layout)
    if not xp.isdtype(labels.dtype, "integral"):
        raise DTypeError(
            f"{op} {labels_name} must be integer class indices (e.g. int64), got dtype {labels.dtype}; "
            "one-hot or probability targets are not supported: pass the class numbers, e.g. argmax(targets, axis=1)")
    if tuple(labels.shape) != (x.shape[0],):
        raise ShapeError(
            f"{op} {labels_name} must have shape ({x.shape[0]},) to match {x_name} {tuple(x.shape)}, "
            f"got {tuple(labels.shape)}"
        )
    num_classes = x.shape[1]
    if num_classes == 0:
        verb = "have" if x_name.endswith("s") else "has"
        raise ShapeError(f"{op} {x_name} {verb} no classes (shape {tuple(x.shape)})")
    if check_labels:
        _check_label_range(xp, labels, num_classes, op, labels_name, x_name)
    return xp


def _cross_entropy_setup(logits, labels, check_labels: bool):
    return _class_setup(logits, labels, check_labels, "cross_entropy", ("logits", "labels"), "(N, num_classes)")


def _check_label_range(xp, labels, num_classes: int, op: str, labels_name: str, x_name: str) -> None:
    """One reduction over the labels; reading its answer waits for the device (a sync on GPUs)."""
    info = xp.iinfo(labels.dtype)
    too_small = labels < 0 if info.min < 0 else None
    too_large = labels >= num_classes if num_classes <= info.max else None
    bad = too_small if too_large is None else too_large if too_small is None else too_small | too_large
    if bad is None:
        return
    try:
        found = bool(xp.any(bad))
    except (TypeError, ValueError) as error:  # a lazy array (jax.jit's tracer, ndonnx's graph) has no values yet
        raise ArgumentError(
            f"{op}: check_labels=True reads the {labels_name}' values, and these {labels_name} "
            f"({describe_array(labels)}) have none to read yet; check them where they are known and pass "
            "check_labels=False") from error
    if not found:
        return
    low, high = int(xp.min(labels)), int(xp.max(labels))
    raise ArgumentError(
        f"{op} {labels_name} must be class indices in [0, {num_classes - 1}] for {x_name} with {num_classes} "
        f"classes, got {labels_name} from {low} to {high}; check the {labels_name}, or give the last layer as "
        "many outputs as there are classes")


def _class_mask(xp, labels, num_classes: int):
    """(N, num_classes) booleans, True at each sample's class."""
    # The default integer dtype, not the labels': uint8 class numbers would wrap past 255.
    classes = xp.arange(num_classes, device=device_of(labels))
    return xp.reshape(labels, (-1, 1)) == classes


def _one_hot(xp, labels, num_classes: int, dtype):
    return xp.astype(_class_mask(xp, labels, num_classes), dtype)


def _cross_entropy_options(xp, logits, weight, reduction, label_smoothing, op: str):
    reduction = check_reduction(reduction, op)
    if weight is not None:
        namespace_of(logits, weight, names=("logits", "weight"))
        if not xp.isdtype(weight.dtype, "real floating") or weight.dtype != logits.dtype:
            raise DTypeError(f"{op} weight must have the logits' dtype {logits.dtype}, got {weight.dtype}")
        if tuple(weight.shape) != (logits.shape[1],):
            raise ShapeError(f"{op} weight must have one entry per class, shape ({logits.shape[1]},), "
                             f"got {tuple(weight.shape)}")
    if isinstance(label_smoothing, bool) or not is_real_number(label_smoothing):
        raise ArgumentTypeError(f"{op} label_smoothing must be a number in [0, 1], got {label_smoothing!r}")
    if not 0.0 <= label_smoothing <= 1.0:
        raise ArgumentError(f"{op} label_smoothing must be in [0, 1] (as in PyTorch), got {label_smoothing!r}")
    return reduction, float(label_smoothing)


def _cross_entropy_targets(xp, logits, labels, weight, label_smoothing):
    """(target distribution q, per-sample weight of the label w[y]); the loss of sample n is
    -sum_c q[n, c] log_softmax(logits)[n, c], with q = (1 - eps) w[y] onehot(y) + (eps / C) w."""
    num_classes = logits.shape[1]
    mask = _class_mask(xp, labels, num_classes)
    one_hot = xp.astype(mask, logits.dtype)
    if weight is None:
        target, label_weight = one_hot, None
    else:
        target = one_hot * weight
        label_weight = xp.sum(target, axis=1)
    if label_smoothing:
        uniform = (label_smoothing / num_classes) * (
            xp.ones_like(logits) if weight is None else xp.reshape(weight, (1, -1)) * xp.ones_like(logits))
        target = (1.0 - label_smoothing) * target + uniform
    return target, label_weight


@tape_aware
def cross_entropy(logits, labels, *, weight=None, reduction: str = "mean", label_smoothing: float = 0.0,
                  check_labels: bool = True):
    """Cross-entropy of integer ``labels`` under softmax(``logits``), as PyTorch's.

    ``weight`` (C,) rescales each class (a weighted 'mean' divides by the sum
    of the labels' weights); ``label_smoothing`` mixes the uniform
    distribution into the target, ``(1 - eps) onehot + eps / C`` (weighted by
    class with ``weight``, as PyTorch does). ``reduction`` is 'mean', 'sum'
    or 'none' (the (N,) per-sample losses).

    With ``check_labels`` (the default) a label outside ``[0, num_classes)``
    raises ``ArgumentError`` instead of silently counting as no class. The
    check is one reduction over the labels, but reading its answer waits for
    the device: on a GPU that is a host sync per call, so a loop whose labels
    are already known to be valid (checked once on the host) may pass
    ``check_labels=False``.
    """
    xp = _cross_entropy_setup(logits, labels, check_labels)
    reduction, label_smoothing = _cross_entropy_options(xp, logits, weight, reduction, label_smoothing,
                                                        "cross_entropy")
    if narrow(xp, logits):  # float16/bfloat16: computed in float32, returned in the logits' dtype, as PyTorch does
        return restore(xp, cross_entropy(widen(xp, logits), labels, weight=widen(xp, weight), reduction=reduction,
                                         label_smoothing=label_smoothing, check_labels=False), logits.dtype)
    target, label_weight = _cross_entropy_targets(xp, logits, labels, weight, label_smoothing)
    if reduction == "mean" and label_weight is None:
        # ``or``: a lazy library's unknown batch (None) is counted from the data
        return -xp.sum(target * log_softmax(logits)) / (logits.shape[0] or count(xp, logits, (0,)))
    losses = -xp.sum(target * log_softmax(logits), axis=1)
    if reduction == "mean":
        return xp.sum(losses) / xp.sum(label_weight)
    return _reduce(xp, losses, reduction)


def cross_entropy_backward(logits, labels, *, weight=None, reduction: str = "mean", label_smoothing: float = 0.0,
                           check_labels: bool = True, grad_out=None):
    """Gradient of ``cross_entropy`` (same options) with respect to ``logits``.

    ``grad_out`` is the upstream gradient, shaped like the loss (0-d, or (N,)
    for ``reduction='none'``); None means ones. Per sample it is
    ``(softmax * sum(q) - q) * scale`` with ``q`` the target distribution.
    """
    xp = _cross_entropy_setup(logits, labels, check_labels)
    reduction, label_smoothing = _cross_entropy_options(xp, logits, weight, reduction, label_smoothing,
                                                        "cross_entropy_backward")
    if grad_out is not None:
        check_grad(grad_out, logits, (logits.shape[0],) if reduction == "none" else (), "cross_entropy_backward")
    if narrow(xp, logits):
        grad = cross_entropy_backward(widen(xp, logits), labels, weight=widen(xp, weight), reduction=reduction,
                                      label_smoothing=label_smoothing, check_labels=False,
                                      grad_out=widen(xp, grad_out))
        return restore(xp, grad, logits.dtype)
    target, label_weight = _cross_entropy_targets(xp, logits, labels, weight, label_smoothing)
    if weight is None and not label_smoothing:
        grad = softmax(logits) - target  # each row of the target sums to 1
    else:
        grad = softmax(logits) * xp.sum(target, axis=1, keepdims=True) - target
    if reduction == "mean":
        grad = grad / ((logits.shape[0] or count(xp, logits, (0,))) if label_weight is None else xp.sum(label_weight))
    if grad_out is None:
        return grad
    return grad * (xp.reshape(grad_out, (-1, 1)) if reduction == "none" else grad_out)


# --------------------------------------------------------------------------
# reductions


def _reduce(xp, losses, reduction: str):
    if reduction == "mean":
        return xp.mean(losses)
    if reduction == "sum":
        return xp.sum(losses)
    return losses


def _per_element_grad(grad_out, elements, reduction: str):
    """The upstream gradient each element's loss receives: a 0-d array, or ``grad_out`` itself for 'none'.
    ``elements`` is an int, or a 0-d array where a lazy library does not know the batch size."""
    return grad_out / elements if reduction == "mean" else grad_out


def _zero(xp, x):
    return xp.zeros((), dtype=x.dtype, device=device_of(x))


# --------------------------------------------------------------------------
# negative log-likelihood


def _nll_setup(input, target, reduction, check_labels: bool, op: str, grad_out=None):
    reduction = check_reduction(reduction, op)
    xp = _class_setup(input, target, check_labels, op, ("input", "target"), "(N, C) of log-probabilities",
                      grad_out)
    if grad_out is not None:
        check_grad(grad_out, input, (input.shape[0],) if reduction == "none" else (), op)
    return xp, reduction


@tape_aware
def nll_loss(input, target, *, reduction: str = "mean", check_labels: bool = True):
    """Negative log-likelihood of integer class ``target`` under log-probabilities ``input`` (N, C).

    ``log_softmax`` then ``nll_loss`` is ``cross_entropy``. ``check_labels``
    is as in ``cross_entropy`` (one reduction, and a device sync on GPUs).
    The class is picked with ``where``, not a product with a one-hot array, so
    a -inf log-probability of another class cannot turn the loss into nan.
    """
    xp, reduction = _nll_setup(input, target, reduction, check_labels, "nll_loss")
    picked = xp.where(_class_mask(xp, target, input.shape[1]), input, _zero(xp, input))
    return _reduce(xp, -xp.sum(picked, axis=1), reduction)


def nll_loss_backward(grad_out, input, target, *, reduction: str = "mean", check_labels: bool = True):
    """Gradient with respect to ``input`` (the target is integer: it has none)."""
    xp, reduction = _nll_setup(input, target, reduction, check_labels, "nll_loss_backward", grad_out)
    per_sample = _per_element_grad(grad_out, count(xp, input, (0,)), reduction)
    if reduction == "none":
        per_sample = xp.reshape(per_sample, (-1, 1))
    return -xp.where(_class_mask(xp, target, input.shape[1]), per_sample, _zero(xp, input))


# --------------------------------------------------------------------------
# losses between an input and a target of the same shape


def _paired_setup(input, target, reduction, op: str, grad_out=None):
    reduction = check_reduction(reduction, op)
    xp = namespace_of(input, target, grad_out, names=("input", "target", "grad_out"))
    require_float(xp, input, f"{op} input")
    if not xp.isdtype(target.dtype, "real floating"):
        raise DTypeError(
            f"{op} target must be a real floating-point array like the input ({input.dtype}), got {target.dtype}; "
            "cast it, e.g. target.astype(input.dtype) (for integer class labels use cross_entropy or nll_loss)")
    require_same_dtype(input, target, "input", "target")
    if tuple(target.shape) != tuple(input.shape):
        # PyTorch broadcasts here (with a warning); an (N, 1) input against an (N,) target then gives an
        # (N, N) loss, which is never what was meant.
        raise ShapeError(f"{op}: target has shape {tuple(target.shape)} but input has shape {tuple(input.shape)}; "
                         "they must be equal: reshape one, e.g. target.reshape(input.shape)")
    if reduction == "mean" and 0 in input.shape:  # an unknown size (None, a lazy library's) is not read
        raise ShapeError(f"{op}: the mean over an empty input (shape {tuple(input.shape)}) is undefined; pass at "
                         "least one element, or use reduction='sum'")
    if grad_out is not None:
        check_grad(grad_out, input, input.shape if reduction == "none" else (), op)
    return xp, reduction


@tape_aware
def mse_loss(input, target, *, reduction: str = "mean"):
    xp, reduction = _paired_setup(input, target, reduction, "mse_loss")
    difference = input - target
    return _reduce(xp, difference * difference, reduction)


def mse_loss_backward(grad_out, input, target, *, reduction: str = "mean"):
    """Gradients with respect to ``(input, target)``."""
    xp, reduction = _paired_setup(input, target, reduction, "mse_loss_backward", grad_out)
    grad_input = 2.0 * (input - target) * _per_element_grad(grad_out, count(xp, input), reduction)
    return grad_input, -grad_input


@tape_aware
def l1_loss(input, target, *, reduction: str = "mean"):
    xp, reduction = _paired_setup(input, target, reduction, "l1_loss")
    return _reduce(xp, xp.abs(input - target), reduction)


def l1_loss_backward(grad_out, input, target, *, reduction: str = "mean"):
    """Gradients with respect to ``(input, target)``; 0 where they are equal, as in PyTorch."""
    xp, reduction = _paired_setup(input, target, reduction, "l1_loss_backward", grad_out)
    grad_input = xp.sign(input - target) * _per_element_grad(grad_out, count(xp, input), reduction)
    return grad_input, -grad_input


@tape_aware
def binary_cross_entropy_with_logits(input, target, *, reduction: str = "mean"):
    """-[t log sigmoid(x) + (1 - t) log(1 - sigmoid(x))], as max(x, 0) - x t + log(1 + exp(-|x|)).

    That form never takes exp of a positive number nor log of 0, so it is
    finite for any logits, where log(sigmoid(x)) would give -inf.
    """
    xp, reduction = _paired_setup(input, target, reduction, "binary_cross_entropy_with_logits")
    losses = xp.maximum(input, _zero(xp, input)) - input * target + xp.log1p(xp.exp(-xp.abs(input)))
    return _reduce(xp, losses, reduction)


def binary_cross_entropy_with_logits_backward(grad_out, input, target, *, reduction: str = "mean"):
    """Gradients with respect to ``(input, target)``."""
    xp, reduction = _paired_setup(input, target, reduction, "binary_cross_entropy_with_logits_backward", grad_out)
    scale = _per_element_grad(grad_out, count(xp, input), reduction)
    return (sigmoid(input) - target) * scale, -input * scale
