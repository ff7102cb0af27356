"""Losses."""

from __future__ import annotations

from .. import functional as F
from .module import Module


class CrossEntropyLoss(Module):
    """Mean cross-entropy of integer labels: ``loss = CrossEntropyLoss()(logits, labels); loss.backward()``.

    ``check_labels`` (default True) makes it refuse labels outside
    ``[0, num_classes)``; see ``functional.cross_entropy`` for its cost (one
    reduction, and a device sync on GPUs).
    """

    def __init__(self, *, check_labels: bool = True):
        self.check_labels = bool(check_labels)

    def forward(self, logits, labels):
        return F.cross_entropy(logits, labels, check_labels=self.check_labels)
