"""`BatchedMembers`: K students of one architecture, each trained by its own method, in one fit.

The members' parameters are stacked (one tensor of shape ``(K, ...)`` per parameter) and their
forward is ``torch.func.vmap`` over ``functional_call``; each member's loss is its method's own
:meth:`~kdlightning.methods.DistillationModule.training_losses`, evaluated (vmapped again) with the
member's hyperparameters as tensors over members. One forward of each frozen reference serves every
member, and the teacher-output cache works as for one student.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any, cast

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torch.func import functional_call, vmap

from kdlightning.errors import ConfigurationError, DivergedError, NotFoundError
from kdlightning.losses import at_least_float32
from kdlightning.methods.base import Batch, DistillationModule, logits_of
from kdlightning.methods.member_groups import MemberGroup, grouped, member_groups
from kdlightning.methods.member_metrics import MemberMetrics, computed
from kdlightning.methods.stacking import (
    ELEMENTWISE_OPTIMIZERS,
    builds_the_same,
    check_uncoupled,
    optimizer_over_members,
    shared_factory,
    shared_references,
    stack_networks,
    unstacked,
)

__all__ = ["ELEMENTWISE_OPTIMIZERS", "BatchedMembers", "NotBatchable", "member_error"]

_MEMBERS_KEY = "kdlightning_members"
"""Checkpoint key of the members' training record (validation histories, failed members)."""

_MEMBER_NAME = re.compile(r"^[A-Za-z0-9_.,=+\-\[\]]+$")
"""A member's name ends its metric keys (``val/acc_<name>``)."""


class NotBatchable(RuntimeError):
    """``torch.func`` cannot vmap the members' network (data-dependent control flow, ``.item()``, ...)."""


def member_error(method: Any, like: DistillationModule | None = None) -> str | None:
    """Why ``method`` cannot be a member of :class:`BatchedMembers` (beside ``like``), or None if it can.

    A member is a :class:`~kdlightning.methods.DistillationModule` whose training step is one optimizer step on
    its :meth:`~kdlightning.methods.DistillationModule.training_losses` (its
    :meth:`~kdlightning.methods.DistillationModule.objective_error` is None); it may train several networks
    (DML's student and peer). Members of one fit also share one optimizer and scheduler: with ``like``,
    ``method`` must build the same ones as ``like``.
    """
    if not isinstance(method, DistillationModule):
        return f"{type(method).__name__} is not a DistillationModule"
    if isinstance(method, BatchedMembers):
        return "it is itself a BatchedMembers"
    reason = method.objective_error()
    if reason is not None:
        return reason
    if like is not None:
        for attribute in ("optimizer", "lr_scheduler"):
            mine, theirs = getattr(method, attribute), getattr(like, attribute)
            if not builds_the_same(mine, theirs, attribute):
                return f"{type(method).__name__} has another `{attribute}` than the members it would train with"
    return None


class BatchedMembers(DistillationModule):
    r"""K students of one architecture, each trained by its own method, in one Lightning fit.

    Each member is a method (:class:`~kdlightning.StudentOnly`, :class:`~kdlightning.VanillaKD` at any
    ``(temperature, alpha)``, :class:`~kdlightning.DataPartitioningKD`, :class:`~kdlightning.DeepMutualLearning`
    without ``alternate``, or your own subclass whose step is one on its
    :meth:`~kdlightning.methods.DistillationModule.training_losses`). Their students must share an
    architecture; their frozen references (teacher, DP-KD's initial student) must be the same networks. The
    students' parameters are stacked, the forward is ``vmap`` over ``functional_call`` (dropout draws per
    member; batch norm keeps running statistics per member), and the loss summed over members gives every
    member exactly the gradient of its own loss. A member that trains other networks (DML's ``peer``) has them
    stacked with the same network of the other members that train one: a DML member is a pair, each network's
    loss against its own peer. One optimizer over the stacked parameters is K independent optimizers for
    element-wise optimizers (:data:`ELEMENTWISE_OPTIMIZERS`); gradient-norm clipping
    (``Trainer(gradient_clip_val=...)``) is applied per member and network.

    Logged: ``train/loss`` (the members' mean), ``train/<component>_<member>``, and per member (its student)
    ``val/acc_<member>``, ``val/loss_<member>`` (``test/...`` alike); ``val/acc_best`` is the best member's.
    A member whose loss turns non-finite is recorded in :attr:`failed` and the others go on (their parameters
    never meet its gradients); when every member has failed, ``FloatingPointError`` is raised.

    Args:
        members: the methods, by name (names end metric keys: letters, digits and ``_.,=+-[]``). Each
            is only read here: its student's weights are copied into the stack and its hyperparameters
            kept; train this module, then read a member back with :meth:`member_network`.
        optimizer: builds the optimizer of the stacked parameters; default: the members' own optimizer,
            which must then be the same for every member.
        lr_scheduler: optional; default: the members' own, which must then be the same. A plateau scheduler
            would step every member on one shared metric and is refused.

    Raises:
        ValueError: no members, a bad name, a member that cannot be one (:func:`member_error`), students of
            different architectures, members with different frozen references, optimizers or numbers of
            classes.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from kdlightning import StudentOnly, VanillaKD
        >>> student, teacher = nn.Linear(4, 3), nn.Linear(4, 3)
        >>> batched = BatchedMembers({
        ...     "control": StudentOnly(student, num_classes=3),
        ...     "kd": VanillaKD(student, teacher, num_classes=3, temperature=2.0, alpha=0.5),
        ... })
        >>> batched(torch.zeros(5, 4)).shape  # (members, samples, classes)
        torch.Size([2, 5, 3])
    """

    def __init__(
        self,
        members: Mapping[str, DistillationModule],
        optimizer: OptimizerCallable | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        members = dict(members)
        if not members:
            raise ConfigurationError("`members` is empty: give at least one method to train.")
        for name, method in members.items():
            if not isinstance(name, str) or not _MEMBER_NAME.match(name):
                raise ConfigurationError(
                    f"`members` name {name!r} cannot end a metric key: use letters, digits and `_.,=+-[]`."
                )
            reason = member_error(method)
            if reason is not None:
                raise ConfigurationError(f"`members.{name}` cannot be a batched member: {reason}. Fit it on its own.")
        members = grouped(members)
        methods = list(members.values())
        num_classes = {method.num_classes for method in methods}
        if len(num_classes) > 1:
            raise ConfigurationError(f"`members` disagree on `num_classes`: {sorted(num_classes)}.")
        optimizer = shared_factory(members, "optimizer", optimizer)
        lr_scheduler = shared_factory(members, "lr_scheduler", lr_scheduler)
        self.stacks: dict[str, tuple[str, ...]] = {
            network: tuple(name for name, method in members.items() if network in method.trainable_modules())
            for network in dict.fromkeys(n for method in methods for n in method.trainable_modules())
        }
        """The members in each trained network's stack, in its order: every member in ``student``'s."""
        stacked = {
            network: stack_networks([getattr(members[name], network) for name in names], list(names), network)
            for network, names in self.stacks.items()
        }
        super().__init__(stacked["student"], num_classes.pop(), optimizer=optimizer, lr_scheduler=lr_scheduler)
        for network, module in stacked.items():  # members are evaluated together, below
            self.add_trainable(network, module, evaluated_as=None)
        self.member_names: tuple[str, ...] = tuple(members)
        """The members' names, in the order of the stacked dimension (members of one class and settings together)."""
        self.failed: dict[str, str] = {}
        """Members whose loss turned non-finite, with the error (step, components)."""
        self.validation_history: list[dict[str, tuple[float, float]]] = []
        """Per validation of ``fit``: each member's ``(val/acc, val/loss)`` (on the first validation loader)."""
        self.validation_histories: list[list[dict[str, tuple[float, float]]]] = [self.validation_history]
        """:attr:`validation_history` of each validation loader, in order (several when the datamodule
        validates on several splits, e.g. ``PartitionedDataModule(validation=["own", "public"])``)."""
        self._split_metrics: dict[int, MemberMetrics] = {}  # validation loaders after the first
        self._test_split_metrics: dict[int, MemberMetrics] = {}  # test loaders after the first
        for reference, module in shared_references(members).items():
            self.add_frozen(reference, module)
        self._groups = member_groups(members, self.stacks)
        for stage in self.metrics:
            self.metrics_of(stage)["student"] = MemberMetrics(len(members))
        self.hparams["members"] = {
            name: {"class_path": f"{type(m).__module__}.{type(m).__qualname__}", "init_args": dict(m.hparams)}
            for name, m in members.items()
        }

    # ------------------------------------------------------------------ members
    @property
    def num_members(self) -> int:
        """K, the number of members."""
        return len(self.member_names)

    def member_logits(self, batch: Batch) -> Tensor:
        """Logits ``(K, N, C)`` of every member's student on ``batch`` (one vmapped forward)."""
        return self.stacked_logits("student", batch)

    def stacked_logits(self, network: str, batch: Batch) -> Tensor:
        """Logits ``(K, N, C)`` of trained network ``network`` of each member in its stack (one vmapped forward)."""
        module = getattr(self, network)
        inputs = self.network_inputs(batch, network)
        params = dict(module.named_parameters())
        buffers = dict(module.named_buffers())

        def one(p: dict[str, Tensor], b: dict[str, Tensor]) -> Tensor:
            if isinstance(inputs, Mapping):
                return logits_of(functional_call(module, (p, b), args=(), kwargs=dict(inputs)))
            return logits_of(functional_call(module, (p, b), (inputs,)))

        logits = self.vmapped(one, params, buffers)
        self.check_logits(network, logits)
        return logits

    def vmapped(self, function: Any, *args: Any) -> Any:
        """``vmap(function)(*args)`` over members (dropout draws per member); :class:`NotBatchable` if it cannot."""
        try:
            return vmap(function, randomness="different")(*args)
        except (RuntimeError, NotImplementedError) as error:
            text = str(error)
            if "vmap" in text or "Batching rule" in text or "batched" in text.lower():
                raise NotBatchable(
                    f"torch.func cannot vmap the members' network {type(self.student).__name__}: "
                    f"{text.splitlines()[0] if text else type(error).__name__}"
                ) from error
            raise

    def forward(self, inputs: Any) -> Tensor:
        """Every member's logits ``(K, N, C)``."""
        return self.member_logits((inputs, None) if not isinstance(inputs, Mapping) else inputs)

    def member_index(self, name: str, network: str = "student") -> int:
        """Position of member ``name`` in the stack of its trained network ``network``."""
        if name not in self.member_names:
            raise NotFoundError(f"No member {name!r}; the members are {list(self.member_names)}.")
        if name not in self.stacks.get(network, ()):
            trained = [stack for stack, names in self.stacks.items() if name in names]
            raise NotFoundError(f"Member {name!r} trains no `{network}`; it trains {trained}.")
        return self.stacks[network].index(name)

    def member_state_dict(self, name: str, network: str = "student") -> dict[str, Tensor]:
        """Member ``name``'s weights of ``network`` (its student; DML's ``peer``), as its own network holds them."""
        k = self.member_index(name, network)
        return {key: value[k].detach().clone() for key, value in getattr(self, network).state_dict().items()}

    def member_network(self, name: str, network: str = "student") -> nn.Module:
        """A standalone copy of member ``name``'s ``network`` (its student; its own parameters and buffers)."""
        return unstacked(getattr(self, network), self.member_index(name, network))

    # ------------------------------------------------------------------ trainer state and checkpoints
    def setup(self, stage: str) -> None:
        """Attach the members' methods to the trainer: they read its ``current_epoch``, ``global_step``."""
        for group in self._groups:
            group.prototype.trainer = self.members_trainer()

    def teardown(self, stage: str) -> None:
        """Detach the members' methods from the trainer."""
        for group in self._groups:
            group.prototype.trainer = None

    def members_trainer(self) -> Any:
        """What the members' methods see as their trainer: this fit's, whose epochs and steps are each member's own."""
        return self.trainer

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Save the members' validation histories and failures beside the weights (a resume continues them)."""
        super().on_save_checkpoint(checkpoint)
        checkpoint[_MEMBERS_KEY] = self.members_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the members' validation histories and failures saved by :meth:`on_save_checkpoint`."""
        super().on_load_checkpoint(checkpoint)
        if _MEMBERS_KEY in checkpoint:
            self.load_members_state(checkpoint[_MEMBERS_KEY])

    def members_state(self) -> dict[str, Any]:
        """The training record a checkpoint keeps: validation histories (of every loader) and failed members."""
        return {"validation_histories": [list(h) for h in self.validation_histories], "failed": dict(self.failed)}

    def load_members_state(self, state: Mapping[str, Any]) -> None:
        """Restore :meth:`members_state`."""
        histories = [list(history) for history in state.get("validation_histories", [[]])] or [[]]
        self.validation_history[:] = histories[0]
        self.validation_histories[:] = [self.validation_history, *histories[1:]]
        self.failed.clear()
        self.failed.update(state.get("failed", {}))

    # ------------------------------------------------------------------ training
    def training_losses(self, batch: Batch) -> dict[str, Tensor]:
        """Every member's loss components, each ``(K,)`` (NaN where a member's method has no such component)."""
        logits = {network: self.stacked_logits(network, batch) for network in self.stacks}
        references = {name: self.logits(name, batch) for name in self.frozen_names}
        parts = []
        for group in self._groups:
            values = group.values_on(logits["student"].device)
            prototype = group.prototype

            def losses_of(
                z: dict[str, Tensor], *hyper: Tensor, prototype: DistillationModule = prototype, g: MemberGroup = group
            ) -> dict[str, Tensor]:
                with prototype.given({**references, **z}, **dict(zip(g.varying, hyper, strict=True))):
                    return prototype.training_losses(batch)

            trained = {network: logits[network][where] for network, where in group.slices.items()}
            parts.append((group, vmap(losses_of)(trained, *values)))
        if len(parts) == 1:
            return dict(parts[0][1])
        components = dict.fromkeys(component for _, result in parts for component in result)
        student = at_least_float32(logits["student"])
        device, dtype = student.device, student.dtype
        return {
            component: torch.cat(
                [
                    result[component].to(dtype)
                    if component in result
                    else torch.full((group.stop - group.start,), math.nan, device=device, dtype=dtype)
                    for group, result in parts
                ]
            )
            for component in components
        }

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        """Sum the members' losses (each member's gradient is its own loss's); set aside members that diverge."""
        losses = self.training_losses(batch)
        per_member = losses["loss"]
        finite = torch.isfinite(per_member.detach())
        if self.failed:
            finite &= torch.tensor([name not in self.failed for name in self.member_names], device=finite.device)
        if not bool(finite.all()):  # one device sync per step, as the base class's check
            self._fail_members(finite, losses)
        total = torch.where(finite, per_member, torch.zeros_like(per_member)).sum()
        if batch_idx == 0 or self._loggers_write(batch_idx):
            mean = total.detach() / finite.sum().clamp(min=1)
            size = self.labels(batch).shape[0]
            self.log("train/loss", mean, on_step=True, on_epoch=False, prog_bar=True, batch_size=size)
            self._log_members("train", {name: value.detach() for name, value in losses.items()})
        return total

    def _log_members(self, stage: str, values: Mapping[str, Tensor]) -> None:
        """Write ``<stage>/<component>_<member>`` of every member straight to the loggers.

        Through ``self.log`` each of K x components keys would cost a pass over every key logged before it.
        """
        if not self.loggers or self.trainer.sanity_checking:
            return
        metrics = {
            f"{stage}/{component}_{name}": value
            for component, tensor in values.items()
            for name, value in zip(self.member_names, tensor.float().tolist(), strict=True)
            if math.isfinite(value)
        }
        for logger in self.loggers:
            logger.log_metrics(metrics, step=self.global_step)

    def _fail_members(self, finite: Tensor, losses: Mapping[str, Tensor]) -> None:
        for k in (~finite).nonzero().flatten().tolist():
            name = self.member_names[k]
            if name not in self.failed:
                components = ", ".join(f"{c}={v[k].item()}" for c, v in losses.items() if not math.isnan(v[k].item()))
                self.failed[name] = (
                    f"Non-finite training loss at global step {self.global_step} (epoch {self.current_epoch}): "
                    + components
                )
        if len(self.failed) == self.num_members:
            raise DivergedError("Every member diverged; " + next(iter(self.failed.values())))

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip by value as configured; clip by norm (Lightning's default algorithm) per member.

        One norm over the stacked parameters would couple the members: each member's gradients of each network
        are scaled by their own norm, as ``torch.nn.utils.clip_grad_norm_`` scales a network's in its own fit, in
        the gradients' dtype.
        """
        if not gradient_clip_val:
            return
        if (gradient_clip_algorithm or "norm").lower() != "norm":
            self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            return
        for module in self.trainable_modules().values():
            grads = [p.grad for p in module.parameters() if p.requires_grad and p.grad is not None]
            if not grads:
                continue
            per_tensor = torch.stack([torch.linalg.vector_norm(g.detach().flatten(1), dim=1) for g in grads])
            norms = torch.linalg.vector_norm(per_tensor, dim=0)  # (K_network,)
            scale = (float(gradient_clip_val) / (norms + 1e-6)).clamp(max=1.0)
            for g in grads:
                g.mul_(scale.to(g.dtype).view(-1, *([1] * (g.dim() - 1))))

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The stacked parameters of every trained network (the students', and DML members' peers')."""
        return (p for module in self.trainable_modules().values() for p in module.parameters() if p.requires_grad)

    def configure_optimizers(self) -> Any:
        """One optimizer over the stacked parameters, fused where it may be.

        See :func:`~kdlightning.methods.stacking.optimizer_over_members`; refused if the optimizer or the
        scheduler would couple the members (:func:`~kdlightning.methods.stacking.check_uncoupled`).
        """
        config = self.build_optimizer(
            lambda parameters: optimizer_over_members(self.optimizer, list(parameters)),
            list(self.trainable_parameters()),
        )
        check_uncoupled(config["optimizer"], config.get("lr_scheduler", {}).get("scheduler"))
        return config

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Accumulate every member's accuracy and loss (per validation loader)."""
        self._val_metric(dataloader_idx).update(self.member_logits(batch), self.labels(batch))

    def _val_metric(self, dataloader_idx: int) -> MemberMetrics:
        """The validation metric of loader ``dataloader_idx`` (the logged one for the first)."""
        if dataloader_idx == 0:
            return self._members_metric("val")
        if dataloader_idx not in self._split_metrics:
            self._split_metrics[dataloader_idx] = MemberMetrics(self.num_members).to(self.device)
        return self._split_metrics[dataloader_idx]

    def _members_metric(self, stage: str) -> MemberMetrics:
        """The members' metric of ``stage`` (on the first validation loader for ``val``)."""
        return cast(MemberMetrics, self.metrics_of(stage)["student"])

    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Accumulate every member's accuracy and loss (per test loader)."""
        if dataloader_idx == 0:
            metric = self._members_metric("test")
        else:
            if dataloader_idx not in self._test_split_metrics:
                self._test_split_metrics[dataloader_idx] = MemberMetrics(self.num_members).to(self.device)
            metric = self._test_split_metrics[dataloader_idx]
        metric.update(self.member_logits(batch), self.labels(batch))

    def on_validation_epoch_end(self) -> None:
        """Log each member's ``val/acc_<member>`` and ``val/loss_<member>``, and ``val/acc_best``; keep the history."""
        values = [self._log_stage("val")]
        # further loaders: kept in the history, not logged
        values += [self._by_member(*computed(self._split_metrics[index])) for index in sorted(self._split_metrics)]
        if not self.trainer.sanity_checking and self.trainer.state.fn == "fit":
            while len(self.validation_histories) < len(values):
                self.validation_histories.append([])
            for history, epoch in zip(self.validation_histories, values, strict=False):
                history.append(epoch)

    def on_test_epoch_end(self) -> None:
        """Log ``test/acc_<member>`` and ``test/loss_<member>``, and those of further test loaders.

        A further loader ``i`` (a datamodule's ``party_test``) logs ``test/acc_<member>/dataloader_idx_<i>`` and
        ``test/loss_<member>/dataloader_idx_<i>``.
        """
        self._log_stage("test")
        for index in sorted(self._test_split_metrics):
            metric = self._test_split_metrics.pop(index)
            accuracy, loss = computed(metric)
            logged = {
                f"test/{c}_{name}/dataloader_idx_{index}": v[k].float()
                for c, v in (("acc", accuracy), ("loss", loss))
                for k, name in enumerate(self.member_names)
            }
            self.log_dict(logged, add_dataloader_idx=False)

    def _log_stage(self, stage: str) -> dict[str, tuple[float, float]]:
        accuracy, loss = computed(self._members_metric(stage))
        live = [k for k, name in enumerate(self.member_names) if name not in self.failed]
        if live:
            self.log(f"{stage}/acc_best", accuracy[live].max().float(), prog_bar=stage == "val")
        if stage == "test":  # once: through self.log, so that trainer.test returns them
            logged = {
                f"test/{c}_{name}": v[k].float()
                for c, v in (("acc", accuracy), ("loss", loss))
                for k, name in enumerate(self.member_names)
            }
            self.log_dict(logged)
        else:
            self._log_members(stage, {"acc": accuracy, "loss": loss})
        return self._by_member(accuracy, loss)

    def _by_member(self, accuracy: Tensor, loss: Tensor) -> dict[str, tuple[float, float]]:
        return {name: (float(accuracy[k]), float(loss[k])) for k, name in enumerate(self.member_names)}

    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Every member's class probabilities ``(K, N, C)``."""
        return self.member_logits(batch).softmax(dim=-1)
