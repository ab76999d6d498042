"""`StudentOnly`: cross-entropy training of the student alone, the no-KD reference."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from kdlightning.losses import at_least_float32
from kdlightning.methods.base import Batch, DistillationModule

__all__ = ["StudentOnly"]


class StudentOnly(DistillationModule):
    r"""Train the student on its labels alone: :math:`\mathcal{L} = \mathrm{CE}(z_s, y)`.

    The reference every KD method is compared with, the control that continues a student for as many
    epochs as a KD method, and the way each party pre-trains its own model.

    Args:
        student: the network being trained.
        num_classes: number of classes ``C``.
        optimizer: builds the optimizer from the student's parameters (default Adam, lr 1e-3).
        lr_scheduler: optional scheduler builder.
    """

    def __init__(
        self,
        student: nn.Module,
        num_classes: int,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(student=student, num_classes=num_classes, optimizer=optimizer, lr_scheduler=lr_scheduler)

    def training_losses(self, batch: Batch) -> dict[str, Tensor]:
        """``{"loss": CE(z_s, y)}``."""
        return {"loss": F.cross_entropy(at_least_float32(self.logits("student", batch)), self.labels(batch))}
