"""Losses.

``reduction`` ('mean', 'sum' or 'none') is keyword-only: in PyTorch the
positional slots before it belong to the deprecated ``size_average`` and
``reduce`` (and to class ``weight``), which portacnn does not have, so a call
valid here means the same in PyTorch.
"""

from __future__ import annotations

from .. import functional as F
from .._checks import check_reduction, is_real_number
from ..errors import ArgumentError, ArgumentTypeError
from .module import Buffer, Module


class CrossEntropyLoss(Module):
    """Cross-entropy of integer labels, as PyTorch's: ``loss = CrossEntropyLoss()(logits, labels); loss.backward()``.

    ``weight`` (C,) rescales each class (kept as a buffer, so it moves with
    the model); ``reduction`` and ``label_smoothing`` are keyword-only (see
    above) and mean what they do in PyTorch. ``check_labels`` (default True)
    makes it refuse labels outside ``[0, num_classes)``; see
    ``functional.cross_entropy`` for its cost (one reduction, and a device
    sync on GPUs).
    """

    def __init__(self, weight=None, *, reduction: str = "mean", label_smoothing: float = 0.0,
                 check_labels: bool = True):
        self.reduction = check_reduction(reduction, "CrossEntropyLoss")
        if isinstance(label_smoothing, bool) or not is_real_number(label_smoothing):
            raise ArgumentTypeError(f"CrossEntropyLoss: label_smoothing must be a number in [0, 1], "
                                    f"got {label_smoothing!r}")
        if not 0.0 <= label_smoothing <= 1.0:
            raise ArgumentError(f"CrossEntropyLoss: label_smoothing must be in [0, 1], got {label_smoothing!r}")
        self.weight = None if weight is None else Buffer(weight)
        self.label_smoothing = float(label_smoothing)
        self.check_labels = bool(check_labels)

    def forward(self, logits, labels):
        return F.cross_entropy(logits, labels, weight=None if self.weight is None else self.weight.data,
                               reduction=self.reduction, label_smoothing=self.label_smoothing,
                               check_labels=self.check_labels)


class _Loss(Module):
    def __init__(self, *, reduction: str = "mean"):
        self.reduction = check_reduction(reduction, type(self).__name__)


class NLLLoss(_Loss):
    """Negative log-likelihood of integer labels given log-probabilities (N, C), e.g. after ``LogSoftmax(dim=1)``.

    ``check_labels`` is as in ``CrossEntropyLoss``.
    """

    def __init__(self, *, reduction: str = "mean", check_labels: bool = True):
        super().__init__(reduction=reduction)
        self.check_labels = bool(check_labels)

    def forward(self, input, target):
        return F.nll_loss(input, target, reduction=self.reduction, check_labels=self.check_labels)


class MSELoss(_Loss):
    def forward(self, input, target):
        return F.mse_loss(input, target, reduction=self.reduction)


class L1Loss(_Loss):
    def forward(self, input, target):
        return F.l1_loss(input, target, reduction=self.reduction)


class BCEWithLogitsLoss(_Loss):
    """Binary cross-entropy of logits: sigmoid and the loss in one numerically stable formula."""

    def forward(self, input, target):
        return F.binary_cross_entropy_with_logits(input, target, reduction=self.reduction)
