"""Cross-entropy of integer class labels."""

from __future__ import annotations

from .._arrays import device_of, namespace_of
from .._checks import require_float, require_ndim
from .._dispatch import tape_aware
from ..errors import ArgumentError, DTypeError, ShapeError
from .activation import log_softmax, softmax


def _cross_entropy_setup(logits, labels, check_labels: bool):
    xp = namespace_of(logits, labels, names=("logits", "labels"))
    require_float(xp, logits, "cross_entropy logits")
    require_ndim(logits, 2, "cross_entropy logits", "(N, num_classes)")
    if not xp.isdtype(labels.dtype, "integral"):
        raise DTypeError(
            f"cross_entropy labels must be integer class indices (e.g. int64), got dtype {labels.dtype}; "
            "one-hot or probability targets are not supported: pass the class numbers, e.g. argmax(targets, axis=1)")
    if tuple(labels.shape) != (logits.shape[0],):
        raise ShapeError(
            f"cross_entropy labels must have shape ({logits.shape[0]},) to match logits {tuple(logits.shape)}, "
            f"got {tuple(labels.shape)}"
        )
    num_classes = logits.shape[1]
    if num_classes == 0:
        raise ShapeError(f"cross_entropy logits have no classes (shape {tuple(logits.shape)})")
    if check_labels:
        _check_label_range(xp, labels, num_classes)
    return xp


def _check_label_range(xp, labels, num_classes: int) -> None:
    """One reduction over the labels; reading its answer waits for the device (a sync on GPUs)."""
    info = xp.iinfo(labels.dtype)
    too_small = labels < 0 if info.min < 0 else None
    too_large = labels >= num_classes if num_classes <= info.max else None
    bad = too_small if too_large is None else too_large if too_small is None else too_small | too_large
    if bad is None or not bool(xp.any(bad)):
        return
    low, high = int(xp.min(labels)), int(xp.max(labels))
    raise ArgumentError(
        f"cross_entropy labels must be class indices in [0, {num_classes - 1}] for logits with {num_classes} "
        f"classes, got labels from {low} to {high}; check the labels, or give the last layer as many outputs "
        "as there are classes")


def _one_hot(xp, labels, num_classes: int, dtype):
    # The default integer dtype, not the labels': uint8 class numbers would wrap past 255.
    classes = xp.arange(num_classes, device=device_of(labels))
    return xp.astype(xp.reshape(labels, (-1, 1)) == classes, dtype)


@tape_aware
def cross_entropy(logits, labels, *, check_labels: bool = True):
    """Mean negative log-likelihood of integer ``labels`` under softmax(``logits``); a 0-d array.

    With ``check_labels`` (the default) a label outside ``[0, num_classes)``
    raises ``ArgumentError`` instead of silently counting as no class. The
    check is one reduction over the labels, but reading its answer waits for
    the device: on a GPU that is a host sync per call, so a loop whose labels
    are already known to be valid (checked once on the host) may pass
    ``check_labels=False``.
    """
    xp = _cross_entropy_setup(logits, labels, check_labels)
    target = _one_hot(xp, labels, logits.shape[1], logits.dtype)
    return -xp.sum(target * log_softmax(logits)) / logits.shape[0]


def cross_entropy_backward(logits, labels, *, check_labels: bool = True):
    """Gradient of the mean ``cross_entropy`` with respect to ``logits`` (``check_labels`` as there)."""
    xp = _cross_entropy_setup(logits, labels, check_labels)
    target = _one_hot(xp, labels, logits.shape[1], logits.dtype)
    return (softmax(logits) - target) / logits.shape[0]
