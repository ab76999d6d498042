"""`OwnDataMembers`: batched members that each train on their own data (several parties' networks in one fit).

A :class:`~kdlightning.methods.BatchedMembers` whose members do not share batches: member ``k`` trains on the
``k``-th data module of a :class:`~kdlightning.data.MemberStreams`, so K parties of one architecture pre-train
in one Lightning fit instead of K. Each step vmaps every member over its own stacked batch; a member whose
data run out is set aside with the weights of its last step (its own fit's final weights).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import Tensor, nn
from torch.func import functional_call

from kdlightning.errors import ConfigurationError
from kdlightning.methods.base import DistillationModule, logits_of
from kdlightning.methods.members import BatchedMembers

__all__ = ["OwnDataMembers"]


class OwnDataMembers(BatchedMembers):
    """K networks of one architecture, each trained by its own method on its own data, in one fit.

    Train it on a :class:`~kdlightning.data.MemberStreams` of the members' data modules (in the order of
    ``members``) with ``Trainer(max_epochs=1)``. Member ``k`` then sees exactly the batches of its own fit of
    ``epochs`` epochs and gets the same updates (one optimizer over stacked parameters is K optimizers, as in
    :class:`BatchedMembers`); batches of different sizes (a party's short last batch) are never padded, so
    batch norm sees only the member's samples. Read a member back with :meth:`member_network`: a member that
    finished before the longest keeps the weights of its last step.

    Members are methods without frozen references (:class:`~kdlightning.StudentOnly` or your own subclass
    whose objective reads only the student), all of one class and non-numeric settings; numeric
    hyperparameters may differ. No learning-rate scheduler: an epoch of a member is not an epoch of the fit.
    Nothing is validated during the fit (each member's data module validates it on its own).

    Args:
        members: the methods, by name (see :class:`BatchedMembers`).
        optimizer: builds the optimizer of the stacked parameters; default: the members' own.

    Raises:
        ValueError: what :class:`BatchedMembers` refuses; a member with a frozen reference; members of different
            classes or settings; a learning-rate scheduler.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from kdlightning import StudentOnly
        >>> parties = OwnDataMembers({f"party{k}": StudentOnly(nn.Linear(4, 3), num_classes=3) for k in range(2)})
        >>> parties.num_members
        2
    """

    def __init__(self, members: Mapping[str, DistillationModule], optimizer: OptimizerCallable | None = None) -> None:
        for name, method in members.items():
            if isinstance(method, DistillationModule) and method.frozen_names:
                raise ConfigurationError(
                    f"`members.{name}` has frozen references {list(method.frozen_names)}: members training on their "
                    "own data would each need their forward on their own batches; use BatchedMembers on shared ones."
                )
        super().__init__(members, optimizer=optimizer)
        if list(self.stacks) != ["student"]:
            raise ConfigurationError(
                f"`members` train {list(self.stacks)}: members on their own data train their student alone."
            )
        if len(self._groups) > 1:
            kinds = sorted({type(group.prototype).__name__ for group in self._groups})
            raise ConfigurationError(
                f"`members` are of several classes or settings ({kinds}): members on their own data are of one "
                "method, with only numeric hyperparameters differing."
            )
        if self.lr_scheduler is not None:
            raise ConfigurationError(
                "OwnDataMembers takes no `lr_scheduler`: the fit's one epoch holds every member's epochs, so a "
                "schedule would not step with them. Fit members that need one apart."
            )
        self.finished: dict[str, dict[str, Tensor]] = {}
        """Members whose data ran out, with the student weights of their last step."""

    def on_fit_start(self) -> None:
        """Refuse gradient accumulation: a member's last step must be an optimizer step."""
        if self.trainer.accumulate_grad_batches != 1:
            raise ConfigurationError(
                "OwnDataMembers trains with `accumulate_grad_batches=1` only: members end at different steps."
            )
        if self.trainer.ckpt_path is None:  # a resumed fit keeps the members that had finished
            self.finished = {}

    def members_trainer(self) -> Any:
        """A trainer the members' methods may not read: here a member's epochs and steps are its own, not the fit's."""
        return _OwnProgress()

    def members_state(self) -> dict[str, Any]:
        """:meth:`BatchedMembers.members_state`, and the weights of the members whose data had run out."""
        return {**super().members_state(), "finished": {name: dict(state) for name, state in self.finished.items()}}

    def load_members_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`members_state`."""
        super().load_members_state(state)
        self.finished = {name: dict(weights) for name, weights in state.get("finished", {}).items()}

    def part_losses(self, members: Tensor, batch: Any) -> dict[str, Tensor]:
        """The loss components of the members at positions ``members``, each on its own batch (stacked, member 1st)."""
        group = self._groups[0]
        every = members.numel() == self.num_members  # a part lists distinct members in order: all of them, as stacked
        params = {n: p if every else p[members] for n, p in self.student.named_parameters()}
        buffers = {n: b if every else b[members] for n, b in self.student.named_buffers()}
        values = [value[members.to(value.device)] for value in group.values_on(members.device)]
        prototype, varying = group.prototype, group.varying

        def one(p: dict[str, Tensor], b: dict[str, Tensor], own: Any, *hyper: Tensor) -> dict[str, Tensor]:
            inputs = self.network_inputs(own, "student")
            if isinstance(inputs, Mapping):
                output = functional_call(self.student, (p, b), args=(), kwargs=dict(inputs))
            else:
                output = functional_call(self.student, (p, b), (inputs,))
            with prototype.given({"student": logits_of(output)}, **dict(zip(varying, hyper, strict=True))):
                return prototype.training_losses(own)

        losses = self.vmapped(one, params, buffers, batch, *values)
        if not every:  # batch norm's running statistics of these members, updated on their copies
            with torch.no_grad():
                for name, buffer in self.student.named_buffers():
                    buffer.index_copy_(0, members, buffers[name])
        return losses

    def training_step(self, batch: Sequence[Mapping[str, Any]], batch_idx: int) -> Tensor | None:
        """Sum the losses of every member with data at this step (each member's gradient is its own loss's)."""
        total: Tensor | None = None
        summed: Tensor | None = None
        trained = 0
        for part in batch:
            members = part["members"]
            live = torch.tensor([self.member_names[k] not in self.failed for k in members.tolist()])
            if not bool(live.any()):
                continue
            losses = self.part_losses(members, part["batch"])
            per_member = losses["loss"]
            finite = torch.isfinite(per_member.detach()) & live.to(per_member.device)
            if not bool(finite.all()):
                self._fail_part(members, finite, losses)
            part_total = torch.where(finite, per_member, torch.zeros_like(per_member)).sum()
            total = part_total if total is None else total + part_total
            trained += int(finite.sum())
            summed = part_total.detach() if summed is None else summed + part_total.detach()
        if total is None or summed is None or trained == 0:
            return None  # every member with data here has failed: no step
        if batch_idx == 0 or self._loggers_write(batch_idx):
            self.log("train/loss", summed / trained, on_step=True, on_epoch=False, prog_bar=True, batch_size=1)
        return total

    def _fail_part(self, members: Tensor, finite: Tensor, losses: Mapping[str, Tensor]) -> None:
        everyone = torch.ones(self.num_members, dtype=torch.bool, device=finite.device)
        everyone[members.to(finite.device)] = finite
        self._fail_members(everyone, {c: _spread(v, members, self.num_members) for c, v in losses.items()})

    def on_train_batch_end(self, outputs: Any, batch: Sequence[Mapping[str, Any]], batch_idx: int) -> None:
        """Set aside the members whose data ended at this step, with the weights of this (their last) step."""
        for part in batch:
            for k, last in zip(part["members"].tolist(), part["last"].tolist(), strict=True):
                if last:
                    name = self.member_names[k]
                    self.finished[name] = super().member_state_dict(name)

    def member_state_dict(self, name: str, network: str = "student") -> dict[str, Tensor]:
        """Member ``name``'s student weights: those of its last step if its data ran out before the fit ended."""
        if name in self.finished and network == "student":
            return {key: value.clone() for key, value in self.finished[name].items()}
        return super().member_state_dict(name, network)

    def member_network(self, name: str, network: str = "student") -> nn.Module:
        """A standalone copy of member ``name``'s student, with :meth:`member_state_dict`'s weights."""
        module = super().member_network(name, network)
        module.load_state_dict(self.member_state_dict(name, network))
        return module

    # nothing to validate here: see the class's docstring
    validation_step = L.LightningModule.validation_step  # type: ignore[assignment]
    """Not defined: members have no shared validation data (validate each on its own data module)."""


class _OwnProgress:
    """The trainer of members on their own data: reading it is an error (the fit's progress is not theirs)."""

    def __bool__(self) -> bool:
        return True

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        raise ConfigurationError(
            f"A member of OwnDataMembers reads the trainer's `{name}` in its training_losses, but members on their own "
            "data each have their own epochs and steps, not the fit's. Fit that method on its own."
        )


def _spread(values: Tensor, members: Tensor, total: int) -> Tensor:
    """``values`` of the members at ``members`` in a ``(total,)`` tensor, NaN elsewhere."""
    out = torch.full((total,), float("nan"), device=values.device, dtype=torch.float32)
    out[members.to(values.device)] = values.detach().float()
    return out
