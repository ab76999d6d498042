"""`MultiTeacherKD`: distil several frozen teachers, possibly of different architectures, into one student."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from kdlightning.errors import ConfigurationError
from kdlightning.losses import check_alpha, check_temperature, multi_teacher_terms
from kdlightning.methods.base import Batch, DistillationModule

__all__ = ["MultiTeacherKD"]


class MultiTeacherKD(DistillationModule):
    r"""Multi-teacher KD: the student imitates the (weighted) average of the teachers' softened predictions.

    .. math::
        \mathcal{L} = (1 - \alpha)\,\mathrm{CE}(z_s, y) + \alpha\, T^2\,
        \mathrm{KL}\Big(\textstyle\sum_k w_k\, p_k^T \,\Big\|\, p_s^T\Big)

    It consolidates many parties' models into one, for instance the starting point of federated
    learning (``kdl federate``), on a transfer set such as a public split no party owns. Each teacher
    is a frozen reference (``teacher_0``, ``teacher_1``, ...): no gradients, eval mode, not
    checkpointed, and cached by :class:`~kdlightning.cache.CacheReferenceOutputs` like any other, so
    each teacher's outputs on the transfer set are computed once. The teachers may have different
    architectures; they must all output ``num_classes`` logits.

    Args:
        student: the network being trained.
        teachers: the frozen networks whose predictions are averaged (at least one).
        num_classes: number of classes ``C``.
        temperature: softening temperature ``T > 0``.
        alpha: weight of the distillation term, in ``[0, 1]``; 1 (the default) uses no labels.
        weights: one non-negative weight per teacher (e.g. its data size), normalised to sum to 1;
            None for equal weights.
        optimizer: builds the student's optimizer (default Adam, lr 1e-3).
        lr_scheduler: optional scheduler builder.
    """

    def __init__(
        self,
        student: nn.Module,
        teachers: Sequence[nn.Module],
        num_classes: int,
        temperature: float = 4.0,
        alpha: float = 1.0,
        weights: Sequence[float] | None = None,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        self.temperature = check_temperature(temperature)
        self.alpha = check_alpha(alpha)
        teachers = list(teachers)
        if not teachers:
            raise ConfigurationError("`teachers` is empty: give at least one teacher network.")
        if weights is not None:
            weights = [float(w) for w in weights]
            if len(weights) != len(teachers) or any(w < 0 for w in weights) or sum(weights) <= 0:
                raise ConfigurationError(
                    f"`weights` must be {len(teachers)} non-negative numbers (one per teacher), not all zero, "
                    f"got {weights}."
                )
        self.weights = weights
        super().__init__(student=student, num_classes=num_classes, optimizer=optimizer, lr_scheduler=lr_scheduler)
        self.teacher_names = [f"teacher_{k}" for k in range(len(teachers))]
        for name, teacher in zip(self.teacher_names, teachers, strict=True):
            self.add_frozen(name, teacher)

    def training_losses(self, batch: Batch) -> dict[str, Tensor]:
        """``{"loss", "loss_ce", "loss_kd"}`` of :func:`kdlightning.losses.multi_teacher_terms`."""
        logits = self.logits("student", batch)
        teacher_logits = [self.logits(name, batch) for name in self.teacher_names]
        return multi_teacher_terms(
            logits, teacher_logits, self.labels(batch), self.temperature, self.alpha, self.weights
        )

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Log ``val/loss`` and ``val/acc``, and ``val/loss_kd``: the distillation term alone, which needs no label.

        ``val/loss_kd`` measures how far the student is from the teachers' ensemble on the validation split (e.g.
        a held-out share of unlabelled transfer data, to stop the distillation early).
        """
        super().validation_step(batch, batch_idx)
        logits = self.logits("student", batch)
        teacher_logits = [self.logits(name, batch) for name in self.teacher_names]
        labels = self.labels(batch)
        terms = multi_teacher_terms(logits, teacher_logits, labels, self.temperature, 1.0, self.weights)
        self.log("val/loss_kd", terms["loss_kd"], batch_size=labels.shape[0], sync_dist=True)
