"""`DeepMutualLearning`: Zhang et al. (CVPR 2018), two networks taught by each other."""

from __future__ import annotations

from typing import Any, cast

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn

from kdlightning.errors import ConfigurationError
from kdlightning.losses import check_alpha, check_temperature, distillation_terms
from kdlightning.methods.base import Batch, DistillationModule
from kdlightning.methods.stacking import builds_the_same

__all__ = ["DeepMutualLearning"]


class DeepMutualLearning(DistillationModule):
    r"""Deep mutual learning (Zhang, Xiang, Hospedales and Lu, CVPR 2018, arXiv:1706.00384).

    The student and the peer are both trained, each with its own optimizer, each minimising

    .. math::
        \mathcal{L}_k = (1 - \alpha)\,\mathrm{CE}(z_k, y) + \alpha\, T^2\,
        \mathrm{KL}(p_{other}^T \,\|\, p_k^T)

    with the other network's logits detached. With ``alternate=True`` (Alg. 1 of the paper) the
    student steps first and the peer then learns from the student's refreshed predictions; with
    ``alternate=False`` both learn from the same forward pass in one backward (identical gradients
    to two separate backwards). Both run under plain ``ddp``. Without ``alternate`` (and with one optimizer
    for both networks), DML is a :class:`~kdlightning.methods.BatchedMembers` member: a pair, its student and
    its peer each stacked with the other members' (a grid of DML points in one fit).

    Manual optimization: ``trainer.global_step`` advances twice per batch, so express budgets in
    epochs; trainer-level ``gradient_clip_val`` / ``accumulate_grad_batches`` are not allowed, use
    this class's ``gradient_clip_val``. Epoch-interval schedulers are stepped at each epoch end.
    Logs ``train/loss`` (the sum of both objectives), ``train/loss_student``, ``train/loss_peer`` and
    ``val/acc_peer`` beside ``val/acc``.

    Args:
        student: the first trained network (its metrics are the method's).
        peer: the second trained network (may start from a teacher's weights; it is trained).
        num_classes: number of classes ``C``.
        temperature: softening temperature ``T > 0``.
        alpha: weight of the mutual (distillation) term, in ``[0, 1]``.
        optimizer: builds the student's optimizer (default Adam, lr 1e-3).
        peer_optimizer: builds the peer's optimizer (default Adam, lr 1e-3).
        lr_scheduler: optional scheduler builder, applied to both optimizers.
        alternate: refresh the student's predictions after its step before the peer's (Alg. 1).
        gradient_clip_val: clip each network's gradient norm to this value; None for no clipping.
    """

    peer: nn.Module
    """The second trained network (evaluated as ``val/acc_peer``)."""

    def __init__(
        self,
        student: nn.Module,
        peer: nn.Module,
        num_classes: int,
        temperature: float = 1.0,
        alpha: float = 0.5,
        optimizer: OptimizerCallable = torch.optim.Adam,
        peer_optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
        alternate: bool = False,
        gradient_clip_val: float | None = None,
    ) -> None:
        if gradient_clip_val is not None and not gradient_clip_val > 0:
            raise ConfigurationError(f"`gradient_clip_val` must be > 0 or None, got {gradient_clip_val!r}.")
        self.temperature = check_temperature(temperature)
        self.alpha = check_alpha(alpha)
        super().__init__(student=student, num_classes=num_classes, optimizer=optimizer, lr_scheduler=lr_scheduler)
        self.automatic_optimization = False
        self.add_trainable("peer", peer, evaluated_as="peer")
        self.peer_optimizer = peer_optimizer
        self.alternate = alternate
        self.gradient_clip_val = gradient_clip_val
        self._monitors: list[str] = []

    def use_optimizer(self, optimizer: OptimizerCallable) -> DeepMutualLearning:
        """Train the student and the peer with ``optimizer`` (see :meth:`DistillationModule.use_optimizer`)."""
        super().use_optimizer(optimizer)
        self.peer_optimizer = optimizer
        return self

    def configure_optimizers(self) -> Any:
        """One optimizer (and scheduler) per network: the student's first, the peer's second."""
        configs = [
            self.build_optimizer(self.optimizer, self.student.parameters()),
            self.build_optimizer(self.peer_optimizer, self.peer.parameters(), monitor="val/loss_peer"),
        ]
        # Under manual optimization Lightning ignores a scheduler's `monitor` (and warns); this method steps
        # the schedulers itself, each plateau scheduler on its own network's validation loss.
        self._monitors = [config["lr_scheduler"].pop("monitor") for config in configs if "lr_scheduler" in config]
        return configs

    def objective_error(self) -> str | None:
        """None unless ``alternate`` or ``gradient_clip_val`` is set or the two optimizers differ.

        Without ``alternate``, a step is one backward of :meth:`training_losses`' ``loss`` (each network's
        gradient is its own objective's: the other's logits are detached) and a step of each network's
        optimizer; with the same element-wise optimizer for both, that is one optimizer over both networks,
        so DML trains as a :class:`~kdlightning.methods.BatchedMembers` member (a pair per member).
        """
        if self.alternate:
            return "DeepMutualLearning with alternate=True steps the student before the peer learns from it"
        if self.gradient_clip_val is not None:
            return "DeepMutualLearning clips each network's gradients itself (`gradient_clip_val`)"
        if not builds_the_same(self.peer_optimizer, self.optimizer, "optimizer"):
            return "DeepMutualLearning's `peer_optimizer` builds another optimizer than its student's `optimizer`"
        return None

    @staticmethod
    def _combine(student: dict[str, Tensor], peer: dict[str, Tensor]) -> dict[str, Tensor]:
        return {
            "loss": student["loss"] + peer["loss"],
            "loss_student": student["loss"],
            "loss_ce": student["loss_ce"],
            "loss_kd": student["loss_kd"],
            "loss_peer": peer["loss"],
        }

    def training_losses(self, batch: Batch) -> dict[str, Tensor]:
        """Both objectives from one forward pass; ``loss`` is their sum (``alternate=False``)."""
        y = self.labels(batch)
        logits, peer_logits = self.logits("student", batch), self.logits("peer", batch)
        return self._combine(
            distillation_terms(logits, peer_logits, y, self.temperature, self.alpha),
            distillation_terms(peer_logits, logits, y, self.temperature, self.alpha),
        )

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        """One step of each optimizer; logs ``train/loss`` (the sum), ``train/loss_student``, ``train/loss_peer``."""
        opt_student, opt_peer = cast(list[Any], self.optimizers())  # two optimizers: a list of them
        if self.alternate:
            y = self.labels(batch)
            logits, peer_logits = self.logits("student", batch), self.logits("peer", batch)
            student = distillation_terms(logits, peer_logits, y, self.temperature, self.alpha)
            self.check_finite(student)
            self._update(opt_student, student["loss"], self.peer)
            logits = self._refreshed_student_logits(batch)
            peer = distillation_terms(peer_logits, logits, y, self.temperature, self.alpha)
            self.check_finite({f"{name}_peer": value for name, value in peer.items()})
            self._update(opt_peer, peer["loss"], self.student)
            losses = self._combine(student, peer)
        else:
            losses = self.training_losses(batch)
            self.check_finite(losses)
            opt_student.zero_grad()
            opt_peer.zero_grad()
            self.manual_backward(losses["loss"])
            self._clip_and_step(opt_student)
            self._clip_and_step(opt_peer)
        self.log_losses(losses, batch, batch_idx)

    @torch.no_grad()
    def _refreshed_student_logits(self, batch: Batch) -> Tensor:
        """Alg. 1: the student's predictions after its step, for the peer to learn from.

        The forward runs in the student's current mode (batch statistics in training), but its
        buffers are restored afterwards so batch-norm statistics count each batch once.
        """
        saved = [buffer.clone() for buffer in self.student.buffers()]
        logits = self.logits("student", batch)
        for buffer, value in zip(self.student.buffers(), saved, strict=True):
            buffer.copy_(value)
        return logits

    def _update(self, optimizer: torch.optim.Optimizer, loss: Tensor, other: nn.Module) -> None:
        optimizer.zero_grad()
        if self.trainer.world_size > 1:
            # DDP's reducer expects every parameter in each backward; an exact-zero term over the other
            # network marks its parameters used, so plain `ddp` needs no unused-parameter search.
            loss = loss + 0.0 * sum(p.sum() for p in other.parameters() if p.requires_grad)
        self.manual_backward(loss)
        self._clip_and_step(optimizer)

    def _clip_and_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.gradient_clip_val is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_val, gradient_clip_algorithm="norm")
        optimizer.step()

    def on_train_epoch_end(self) -> None:
        """Step epoch-interval schedulers (manual optimization leaves this to the method).

        A plateau scheduler steps on its own network's validation loss: the student's on ``val/loss``,
        the peer's on ``val/loss_peer``.
        """
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return
        schedulers = schedulers if isinstance(schedulers, list) else [schedulers]
        for scheduler, monitor in zip(schedulers, self._monitors, strict=True):
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                metric = self.trainer.callback_metrics.get(monitor)
                if metric is not None:
                    scheduler.step(metric)
            else:
                scheduler.step()
