"""`VanillaKD`: Hinton et al. (2015) knowledge distillation from a frozen teacher."""

from __future__ import annotations

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from kdlightning.losses import check_alpha, check_temperature, distillation_terms
from kdlightning.methods.base import Batch, DistillationModule

__all__ = ["VanillaKD"]


class VanillaKD(DistillationModule):
    r"""Vanilla knowledge distillation (Hinton, Vinyals and Dean, 2015, arXiv:1503.02531).

    .. math::
        \mathcal{L} = (1 - \alpha)\,\mathrm{CE}(z_s, y) + \alpha\, T^2\, \mathrm{KL}(p_t^T \,\|\, p_s^T)

    The teacher is frozen (no gradients, eval mode, not checkpointed). "Tuned KD" is this class
    with ``temperature`` and ``alpha`` chosen by a search on the validation split.

    Args:
        student: the network being trained.
        teacher: the frozen network to imitate.
        num_classes: number of classes ``C``; both networks must output ``C`` logits.
        temperature: softening temperature ``T > 0``.
        alpha: weight of the distillation term, in ``[0, 1]``.
        optimizer: builds the student's optimizer (default Adam, lr 1e-3).
        lr_scheduler: optional scheduler builder.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        num_classes: int,
        temperature: float = 4.0,
        alpha: float = 0.5,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        self.temperature = check_temperature(temperature)
        self.alpha = check_alpha(alpha)
        super().__init__(student=student, num_classes=num_classes, optimizer=optimizer, lr_scheduler=lr_scheduler)
        self.add_frozen("teacher", teacher)

    def training_losses(self, batch: Batch) -> dict[str, Tensor]:
        """``{"loss", "loss_ce", "loss_kd"}`` of :func:`kdlightning.losses.distillation_terms`."""
        logits = self.logits("student", batch)
        teacher_logits = self.logits("teacher", batch)
        return distillation_terms(logits, teacher_logits, self.labels(batch), self.temperature, self.alpha)
