"""`DataPartitioningKD`: Roth et al. (ICLR 2024) "KL-Dist + DP" transfer between pre-trained models."""

from __future__ import annotations

import copy
from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from kdlightning.errors import ConfigurationError
from kdlightning.losses import check_alpha, check_temperature, dp_kd_terms
from kdlightning.methods.base import Batch, DistillationModule

__all__ = ["DataPartitioningKD"]


class DataPartitioningKD(DistillationModule):
    r"""Data-partitioning KD (Roth et al., "Fantastic Gains and Where to Find Them", ICLR 2024).

    A frozen copy of the initial (pre-trained) student is kept. Per sample the distillation target is
    the teacher's :math:`p_t^T` where the teacher is more confident, else the initial student's,
    so the student only learns from the teacher where the teacher knows better and keeps its own
    knowledge elsewhere:

    .. math::
        \mathcal{L} = (1 - \alpha)\,\mathrm{CE}(z_s, y) + \alpha\, T^2\, \mathrm{KL}(q^T \,\|\, p_s^T)

    ``selection="supervised"`` compares the probability of the true class; ``"unsupervised"`` the
    maximum probability. ``alpha=1, selection="unsupervised"`` is the label-free transfer of the paper.
    Logs ``train/teacher_fraction``, the share of samples routed to the teacher.

    Args:
        student: the pre-trained network being trained; a frozen copy of it is taken at construction.
        teacher: the frozen teacher.
        num_classes: number of classes ``C``.
        temperature: softening temperature ``T > 0``.
        alpha: weight of the distillation term, in ``[0, 1]``.
        selection: confidence rule, ``"supervised"`` or ``"unsupervised"``.
        optimizer: builds the student's optimizer (default Adam, lr 1e-3).
        lr_scheduler: optional scheduler builder.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        num_classes: int,
        temperature: float = 1.0,
        alpha: float = 0.5,
        selection: Literal["supervised", "unsupervised"] = "supervised",
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        if selection not in ("supervised", "unsupervised"):
            raise ConfigurationError(f"`selection` must be 'supervised' or 'unsupervised', got {selection!r}.")
        self.temperature = check_temperature(temperature)
        self.alpha = check_alpha(alpha)
        self.selection = selection
        super().__init__(student=student, num_classes=num_classes, optimizer=optimizer, lr_scheduler=lr_scheduler)
        self.add_frozen("teacher", teacher)
        # Taken before any training step: on resume the configured (pre-trained) student is rebuilt
        # first, so the copy is the same initial student and is never read from the checkpoint.
        self.add_frozen("initial_student", copy.deepcopy(student))

    def training_losses(self, batch: Batch) -> dict[str, Tensor]:
        """``{"loss", "loss_ce", "loss_kd", "teacher_fraction"}`` of :func:`kdlightning.losses.dp_kd_terms`."""
        return dp_kd_terms(
            self.logits("student", batch),
            self.logits("teacher", batch),
            self.logits("initial_student", batch),
            self.labels(batch),
            self.temperature,
            self.alpha,
            self.selection,
        )
