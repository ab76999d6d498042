"""`MemberMetrics`: accuracy and cross-entropy of K members on the same samples, one state per member."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

__all__ = ["MemberMetrics", "computed"]


class MemberMetrics(Metric):
    """Accuracy and cross-entropy of K members on the same samples (one state per member, summed across ranks)."""

    full_state_update = False

    def __init__(self, members: int) -> None:
        super().__init__()
        self.add_state("correct", default=torch.zeros(members, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("loss", default=torch.zeros(members, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros((), dtype=torch.float64), dist_reduce_fx="sum")

    correct: Tensor
    loss: Tensor
    count: Tensor

    def update(self, logits: Tensor, target: Tensor) -> None:
        """Add a batch: ``logits`` ``(K, N, C)``, ``target`` ``(N,)``."""
        members, n = logits.shape[0], logits.shape[1]
        self.correct += (logits.argmax(dim=-1) == target).sum(dim=-1).double()
        ce = F.cross_entropy(logits.flatten(0, 1).float(), target.repeat(members), reduction="none")
        self.loss += ce.view(members, n).sum(dim=-1).double()
        self.count += n

    def compute(self) -> tuple[Tensor, Tensor]:
        """``(accuracy, mean cross-entropy)``, each ``(K,)``."""
        return self.correct / self.count, self.loss / self.count


def computed(metric: MemberMetrics) -> tuple[Tensor, Tensor]:
    """``metric``'s ``(accuracy, loss)`` per member, each ``(K,)``; the metric is reset."""
    accuracy, loss = (value.reshape(-1) for value in metric.compute())  # torchmetrics squeezes one member's
    metric.reset()
    return accuracy, loss
