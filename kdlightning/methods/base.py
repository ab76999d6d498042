"""`DistillationModule`: the base class every kdlightning method subclasses.

It owns what all methods share: the trained ``student``, frozen references (teachers) and their
guarantees, metrics, evaluation, optimizer wiring and the checkpoint policy. A method implements
one thing, :meth:`DistillationModule.training_losses`.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, cast

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy

from kdlightning.errors import ConfigurationError, DivergedError, InputTypeError, NotFoundError, RunError
from kdlightning.fingerprint import module_fingerprint

__all__ = ["Batch", "DistillationModule", "logits_of"]

_REFERENCES_KEY = "kdlightning_frozen_references"
"""Checkpoint key of the frozen references' fingerprints (their weights are not saved)."""

_STAGES = ("val", "test")
"""The stages whose metrics the base class computes."""

_NETWORK_OR_CALLABLE = re.compile(r"Module\b|Callable")
"""An annotation naming a network (``nn.Module``, ``Sequence[nn.Module]``) or a callable (``OptimizerCallable``)."""

Batch = Any
"""A batch: ``(inputs, labels)`` or ``(inputs, labels, index)``, or a dict with ``"labels"`` (and, for
training batches, ``"index"``) and either the model's keyword inputs
(``{"input_ids": ..., "attention_mask": ..., "labels": ...}``) or one input dict per network
(``{"student": {...}, "teacher": {...}, "labels": ...}``), as :class:`~kdlightning.data.TokenizeCollate`
makes them."""


def logits_of(output: Any) -> Tensor:
    """Return the logits of a network's output: a tensor, an object with ``.logits``, or a dict."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, Mapping) and "logits" in output:
        return output["logits"]
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise InputTypeError(
        f"A network returned {type(output).__name__}; kdlightning expects a logits tensor (N, C), "
        "an object with a `.logits` tensor, or a dict with a 'logits' key."
    )


class DistillationModule(L.LightningModule):
    """Base class of every kdlightning method.

    The student is the network whose metrics are reported. Frozen references registered with
    :meth:`add_frozen` (a teacher, DP-KD's initial student) never get gradients, stay in eval
    mode through every ``train()`` call, run under ``torch.no_grad()`` and are left out of
    checkpoints: on resume they are rebuilt from the configuration. Trained networks are registered
    with :meth:`add_trainable` (the student by this class; DML adds its peer), which also decides
    whether they are evaluated.

    Subclasses implement :meth:`training_losses`, returning their loss components with the total
    under ``"loss"``; everything else (logging ``train/<name>``, the non-finite check, evaluation
    of ``val/acc`` and ``test/acc``, optimizers) is shared.

    The constructor's arguments are saved as hyperparameters (``hparams``, the checkpoint's
    ``hyper_parameters``) except networks and callables (optimizers, schedulers): they are configuration,
    rebuilt from the run's config or passed to ``load_from_checkpoint``. Which arguments those are is read
    from the constructors' signatures, so annotate a subclass's network arguments (``nn.Module``,
    ``Sequence[nn.Module]``) and callables (``OptimizerCallable``).

    Args:
        student: the network being trained; returns logits ``(N, C)`` or an object with ``.logits``.
        num_classes: number of classes ``C`` (linked from the datamodule by the CLI).
        optimizer: builds the student's optimizer from its parameters.
        lr_scheduler: optional; builds a scheduler from the optimizer.
    """

    student: nn.Module
    """The network being trained, whose metrics are the method's."""

    def __init__(
        self,
        student: nn.Module,
        num_classes: int,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        if int(num_classes) < 2:
            raise ConfigurationError(f"`num_classes` must be >= 2, got {num_classes!r}.")
        self.num_classes = int(num_classes)
        self.optimizer = optimizer
        self.lr_scheduler = lr_scheduler
        self._frozen: list[str] = []
        self._trainable: dict[str, str | None] = {}
        self._fingerprints: dict[str, str] = {}
        self._reference_mismatch: list[str] = []
        self._output_stores: dict[str, Any] = {}
        self._given: dict[str, Tensor] = {}
        self.metrics = nn.ModuleDict({stage: nn.ModuleDict() for stage in _STAGES})
        """Metric collections by stage and evaluated network: ``metrics["val"]["student"]`` logs ``val/acc``."""
        self.add_trainable("student", student, evaluated_as="")
        self.save_hyperparameters(
            ignore=self._unsaved_arguments({"student": student, "optimizer": optimizer, "lr_scheduler": lr_scheduler})
        )

    # ------------------------------------------------------------------ networks
    def add_trainable(self, name: str, module: nn.Module, evaluated_as: str | None = None) -> nn.Module:
        """Register ``module`` as a trained network under ``name`` (the student; DML's ``peer``).

        It is listed by :meth:`trainable_modules` (checked for trainable parameters before ``fit``), and
        saved in checkpoints. The method still builds its optimizers (:meth:`configure_optimizers`).

        Args:
            name: attribute name of the network.
            module: the network.
            evaluated_as: evaluate it in validation and test under metric keys with the suffix
                ``_<evaluated_as>`` (``"peer"``: ``val/acc_peer``, ``val/loss_peer``); ``""`` for no suffix
                (the student's ``val/acc``); None to not evaluate it.
        """
        if name in self._frozen:
            raise ConfigurationError(f"{name!r} is a frozen reference; a network is either trained or frozen.")
        self.check_labels(name, module)
        setattr(self, name, module)
        self._trainable[name] = evaluated_as
        for stage in _STAGES:
            collections = self.metrics_of(stage)
            if evaluated_as is not None:
                collections[name] = self.stage_metrics(stage, f"_{evaluated_as}" if evaluated_as else "")
            elif name in collections:
                del collections[name]
        return module

    def add_frozen(self, name: str, module: nn.Module) -> nn.Module:
        """Register ``module`` as a frozen reference under ``name``.

        It gets ``requires_grad=False`` and eval mode now and after every ``train()`` call, and its
        parameters and buffers are not saved in checkpoints.
        """
        if name in self._trainable:
            raise ConfigurationError(f"{name!r} is a trained network; a network is either trained or frozen.")
        self.check_labels(name, module)
        module.requires_grad_(False)
        module.eval()
        setattr(self, name, module)
        self._fingerprints.pop(name, None)
        if name not in self._frozen:
            self._frozen.append(name)
        return module

    def check_labels(self, name: str, module: nn.Module) -> None:
        """Refuse a classifier that declares another number of classes than the method's (before any training).

        A Hugging Face sequence classifier declares its head's outputs as ``num_labels``; other networks are
        checked by the shape of their first logits (:meth:`check_logits`).

        Raises:
            ConfigurationError: ``module.num_labels`` differs from ``num_classes``, naming both.
        """
        declared = getattr(module, "num_labels", None)
        if isinstance(declared, int) and declared != self.num_classes:
            raise ConfigurationError(
                f"`num_labels` of the {name} is {declared}, but the data set has {self.num_classes} classes "
                f"(`num_classes`): build the {name} with num_labels={self.num_classes}."
            )

    @property
    def frozen_names(self) -> tuple[str, ...]:
        """Names of the registered frozen references."""
        return tuple(self._frozen)

    def train(self, mode: bool = True) -> DistillationModule:
        """Set train/eval mode on the trained networks; frozen references always stay in eval.

        Batch norm in train mode updates its running statistics even under ``no_grad``, which
        would silently corrupt a pretrained teacher.
        """
        super().train(mode)
        for name in self._frozen:
            getattr(self, name).eval()
        return self

    def state_dict(self, *args: Any, **kwargs: Any) -> dict[str, Any]:  # type: ignore[override]  # torch's overloads
        """The module's state without the frozen references (they come from the configuration)."""
        state = super().state_dict(*args, **kwargs)
        prefix = kwargs.get("prefix", args[1] if len(args) > 1 else "")
        dropped = tuple(f"{prefix}{name}." for name in self._frozen)
        for key in [key for key in state if key.startswith(dropped)]:
            del state[key]
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """Load trained networks strictly; only the frozen references may be missing."""
        result = super().load_state_dict(state_dict, strict=False, assign=assign)
        frozen = tuple(f"{name}." for name in self._frozen)
        missing = [key for key in result.missing_keys if not key.startswith(frozen)]
        if strict and (missing or result.unexpected_keys):
            raise RunError(
                f"Error loading state into {type(self).__name__}: missing keys {missing}, "
                f"unexpected keys {list(result.unexpected_keys)}."
            )
        return result

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Record a fingerprint of each frozen reference, so a resume can tell it was given the same ones."""
        checkpoint[_REFERENCES_KEY] = {name: self._reference_fingerprint(name) for name in self._frozen}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Note the frozen references that differ from the ones the checkpoint was trained against.

        Frozen references are not in checkpoints: they are rebuilt from the configuration (or the
        arguments of ``load_from_checkpoint``). Evaluating with other references is fine; continuing to
        train with them would silently distil from the wrong network, so :meth:`on_train_start` refuses.
        """
        saved = checkpoint.get(_REFERENCES_KEY) or {}
        self._reference_mismatch = sorted(
            name
            for name, digest in saved.items()
            if name in self._frozen and digest != self._reference_fingerprint(name)
        )

    def on_train_start(self) -> None:
        """Refuse to continue training from a checkpoint against other frozen references than it was trained with."""
        if self._reference_mismatch:
            names = ", ".join(f"`{name}`" for name in self._reference_mismatch)
            raise ConfigurationError(
                f"{type(self).__name__} was loaded from a checkpoint trained against another {names} than the one it "
                "holds now. Frozen references are not saved in checkpoints; they are rebuilt from the configuration, "
                "so give the same networks the run started with (DataPartitioningKD's `initial_student` is a copy of "
                "the `student` argument: pass the pre-trained student, and the checkpoint then loads the trained "
                "weights over it)."
            )

    def _reference_fingerprint(self, name: str) -> str:
        """SHA-256 of frozen reference ``name`` (computed once: a frozen reference does not change)."""
        if name not in self._fingerprints:
            self._fingerprints[name] = module_fingerprint(getattr(self, name))
        return self._fingerprints[name]

    # ------------------------------------------------------------------ forward passes
    def network_inputs(self, batch: Batch, name: str) -> Any:
        """The inputs of network ``name`` in ``batch`` (see :data:`Batch`)."""
        if isinstance(batch, Mapping):
            if name in batch:
                return batch[name]
            if "student" in batch:  # per-network inputs; DP-KD's initial student reads the student's
                return batch["student"]
            return {key: value for key, value in batch.items() if key not in ("labels", "index")}
        return batch[0]

    @staticmethod
    def labels(batch: Batch) -> Tensor:
        """The ``(N,)`` labels of ``batch``."""
        return batch["labels"] if isinstance(batch, Mapping) else batch[1]

    @staticmethod
    def sample_index(batch: Batch) -> Tensor | None:
        """The ``(N,)`` sample indices of ``batch`` (``(x, y, index)`` or ``{"index": ...}``), if it has them."""
        if isinstance(batch, Mapping):
            return batch.get("index")
        return batch[2] if len(batch) > 2 else None

    def attach_output_store(self, name: str, store: Any) -> None:
        """Serve frozen reference ``name``'s logits from ``store`` (an ``OutputStore``); None detaches it."""
        if name not in self._frozen:
            raise ConfigurationError(
                f"Only frozen references can be cached; {name!r} is not one of {self.frozen_names}."
            )
        if store is None:
            self._output_stores.pop(name, None)
        else:
            self._output_stores[name] = store

    @contextlib.contextmanager
    def given(self, logits: Mapping[str, Tensor], **attributes: Any) -> Iterator[None]:
        """Serve the given logits and attribute values within the block; restore them afterwards.

        :meth:`logits` returns ``logits[name]`` for each network named, and each attribute (a hyperparameter
        such as ``temperature``) takes the value given. This is how :class:`~kdlightning.methods.BatchedMembers`
        evaluates a method's own :meth:`training_losses` on one member's logits, with that member's
        hyperparameters.
        """
        saved_logits, saved = self._given, {name: getattr(self, name) for name in attributes}
        self._given = {**self._given, **logits}
        for name, value in attributes.items():
            object.__setattr__(self, name, value)
        try:
            yield
        finally:
            self._given = saved_logits
            for name, value in saved.items():
                object.__setattr__(self, name, value)

    def logits(self, name: str, batch: Batch) -> Tensor:
        """Logits ``(N, C)`` of network ``name`` on ``batch``; frozen references run under ``no_grad``.

        Logits given with :meth:`given` are returned as they are. A frozen reference with an attached output
        store (see :mod:`kdlightning.cache`) is read from it when the batch carries sample indices and training
        is on; missing rows are computed, checked (:meth:`check_logits`) and stored.
        """
        if name in self._given:
            return self._given[name]
        store = self._output_stores.get(name) if self.training else None
        index = self.sample_index(batch) if store is not None else None
        if store is not None and index is not None:
            cached = store.get(index)
            if cached is not None:
                return cached
        network = getattr(self, name)
        inputs = self.network_inputs(batch, name)
        # Trained networks keep the caller's grad mode (no graph during validation); references never build one.
        with torch.no_grad() if name in self._frozen else contextlib.nullcontext():
            output = network(**inputs) if isinstance(inputs, Mapping) else network(inputs)
        logits = logits_of(output)
        self.check_logits(name, logits)
        if store is not None and index is not None:
            store.put(index, logits)
        return logits

    def check_logits(self, name: str, logits: Tensor) -> None:
        """Check freshly computed logits of network ``name`` before they are stored or used.

        Raises:
            ValueError: the logits are not ``(N, num_classes)``, the shape the student gives.
            FloatingPointError: a frozen reference's logits hold NaN or inf (checked with one device
                sync per computation; a trained network's non-finite output shows in the loss check).
        """
        if logits.shape[-1] != self.num_classes:
            expected = (*logits.shape[:-1], self.num_classes)
            raise ConfigurationError(
                f"The {name} returns logits of shape {tuple(logits.shape)} but the method expects {expected}: "
                f"(N, num_classes) with num_classes={self.num_classes}, the shape the student gives. Student and "
                f"references must agree on the number of classes (check the {name}'s output layer / num_labels)."
            )
        if name in self._frozen and not bool(torch.isfinite(logits).all()):
            raise DivergedError(
                f"The frozen {name} returned non-finite logits (NaN or inf) at global step {self.global_step} "
                f"(epoch {self.current_epoch}). Check the {name}'s weights (the checkpoint it was loaded from) "
                "and the inputs; the training precision may overflow it."
            )

    def forward(self, inputs: Any) -> Tensor:
        """Student logits ``(N, C)``."""
        output = self.student(**inputs) if isinstance(inputs, Mapping) else self.student(inputs)
        return logits_of(output)

    # ------------------------------------------------------------------ training
    def training_losses(self, batch: Batch) -> dict[str, Tensor]:
        """Return the loss components for one batch; must include the total under ``"loss"``."""
        raise NotImplementedError(f"{type(self).__name__} must implement `training_losses(batch)`.")

    def objective_error(self) -> str | None:
        """Why a training step of this method is not one optimizer step on ``training_losses(batch)["loss"]``, or None.

        :class:`~kdlightning.methods.BatchedMembers` trains a member by its :meth:`training_losses` alone, every
        network it trains (:meth:`trainable_modules`) under one optimizer built by ``self.optimizer``: a method
        whose step is that descent trains as a member exactly as in its own fit. Here: automatic optimization
        and this class's :meth:`training_step`. A method that steps its networks itself overrides this where
        its step is still that descent (:class:`~kdlightning.DeepMutualLearning` without ``alternate``).
        """
        if not self.automatic_optimization:
            return f"{type(self).__name__} optimizes manually (it trains networks against each other)"
        if type(self).training_step is not DistillationModule.training_step:
            return f"{type(self).__name__} overrides training_step (its objective is not its training_losses)"
        return None

    def training_step(self, batch: Batch, batch_idx: int) -> Tensor | None:
        """Compute :meth:`training_losses`, check they are finite, log them as ``train/<name>``."""
        losses = self.training_losses(batch)
        if "loss" not in losses:
            raise NotFoundError(f"{type(self).__name__}.training_losses must return the total under 'loss'.")
        self.check_finite(losses)
        self.log_losses(losses, batch, batch_idx)
        return losses["loss"]

    def log_losses(self, losses: dict[str, Tensor], batch: Batch, batch_idx: int) -> None:
        """Log every component as ``train/<name>`` on the steps the loggers write (and each epoch's first).

        ``self.log`` costs a few hundred microseconds per key and step, as much as a small network's
        whole step; values the loggers would drop (``log_every_n_steps``) are not logged at all.
        """
        if batch_idx > 0 and not self._loggers_write(batch_idx):
            return
        # Per step, under the exact keys `train/<name>` (logging on_epoch too would rename them
        # `train/<name>_step` / `_epoch` in every logger).
        values = {f"train/{name}": value.detach() for name, value in losses.items()}
        size = self.labels(batch).shape[0]
        # The total on the progress bar; every component in the loggers.
        self.log("train/loss", values.pop("train/loss"), on_step=True, on_epoch=False, prog_bar=True, batch_size=size)
        if values:
            self.log_dict(values, on_step=True, on_epoch=False, batch_size=size)

    def _loggers_write(self, batch_idx: int) -> bool:
        """Whether the loggers write this training step: every ``log_every_n_steps``-th, and when stopping.

        The loggers count the batches that stepped the optimizers, over all epochs: optimizer steps under
        automatic optimization, batches under manual optimization (which cannot accumulate gradients).
        """
        trainer = self.trainer
        every = int(getattr(trainer, "log_every_n_steps", 50))  # set on the trainer by Lightning's logger connector
        if every == 0:
            return False
        if self.automatic_optimization:
            stepped = self.global_step
        elif trainer.current_epoch and math.isfinite(trainer.num_training_batches):
            stepped = trainer.current_epoch * int(trainer.num_training_batches) + batch_idx
        else:
            stepped = batch_idx
        return (stepped + 1) % every == 0 or trainer.should_stop

    def check_finite(self, losses: dict[str, Tensor]) -> None:
        """Raise ``FloatingPointError`` naming the step and the component if a loss is not finite."""
        values = torch.stack([value.detach().float().reshape(()) for value in losses.values()])
        if not bool(torch.isfinite(values).all()):  # one device sync for all components
            bad = [name for name, value in losses.items() if not torch.isfinite(value.detach()).all()]
            raise DivergedError(
                f"Non-finite training loss at global step {self.global_step} (epoch {self.current_epoch}): "
                + ", ".join(f"{name}={losses[name].item()}" for name in bad)
                + ". Lower the learning rate, check the inputs, or raise the temperature."
            )

    # ------------------------------------------------------------------ evaluation
    def evaluated_networks(self) -> dict[str, str]:
        """Map each evaluated network to its metric-key suffix (``""`` for the student, ``"_peer"`` for DML's peer).

        Networks are evaluated when registered with :meth:`add_trainable` and ``evaluated_as``.
        """
        return {
            name: f"_{evaluated_as}" if evaluated_as else ""
            for name, evaluated_as in self._trainable.items()
            if evaluated_as is not None
        }

    def metrics_of(self, stage: str) -> nn.ModuleDict:
        """The metric collections of ``stage`` (``val``, ``test``) by evaluated network: :attr:`metrics` ``[stage]``."""
        return cast(nn.ModuleDict, self.metrics[stage])

    def stage_metrics(self, stage: str, suffix: str = "") -> MetricCollection:
        """A fresh metric collection logging ``<stage>/<metric><suffix>``."""
        accuracy = MulticlassAccuracy(num_classes=self.num_classes, average="micro")
        return MetricCollection({"acc": accuracy}, prefix=f"{stage}/", postfix=suffix or None)

    def _evaluate(self, batch: Batch, stage: str) -> None:
        y = self.labels(batch)
        for name, suffix in self.evaluated_networks().items():
            logits = self.logits(name, batch)
            metrics = cast(MetricCollection, self.metrics_of(stage)[name])
            metrics.update(logits, y)
            # Averaged over ranks: val/loss may drive a scheduler, which must decide alike on every rank.
            self.log(f"{stage}/loss{suffix}", F.cross_entropy(logits.float(), y), batch_size=y.shape[0], sync_dist=True)
            self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage == "val" and not suffix)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        """Log ``val/loss`` and ``val/acc`` of the student (and of every evaluated network)."""
        self._evaluate(batch, "val")

    def test_step(self, batch: Batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        """Log ``test/loss`` and ``test/acc`` of the student (and of every evaluated network).

        With several test loaders (a :class:`~kdlightning.data.PartitionedDataModule` with ``party_test``),
        Lightning adds the loader to each key: ``test/acc/dataloader_idx_0``, ``test/acc/dataloader_idx_1``.
        """
        if dataloader_idx == 0:
            self._evaluate(batch, "test")
            return
        # A further loader: its accuracy as the batch-size-weighted mean of batch accuracies, which is its
        # accuracy over the loader; the metric objects keep the first loader's state alone.
        y = self.labels(batch)
        for name, suffix in self.evaluated_networks().items():
            logits = self.logits(name, batch)
            size = y.shape[0]
            self.log(f"test/loss{suffix}", F.cross_entropy(logits.float(), y), batch_size=size, sync_dist=True)
            accuracy = (logits.argmax(dim=-1) == y).float().mean()
            self.log(f"test/acc{suffix}", accuracy, on_step=False, on_epoch=True, batch_size=size, sync_dist=True)

    def predict_step(self, batch: Batch, batch_idx: int) -> Tensor:
        """Student class probabilities ``(N, C)``."""
        return self.logits("student", batch).softmax(dim=-1)

    # ------------------------------------------------------------------ optimizers
    def trainable_modules(self) -> dict[str, nn.Module]:
        """The networks this method trains, by name (registered with :meth:`add_trainable`)."""
        return {name: getattr(self, name) for name in self._trainable}

    def on_fit_start(self) -> None:
        """Fail early if a trained network has nothing to train (e.g. a copy of a frozen teacher)."""
        for name, module in self.trainable_modules().items():
            if not any(p.requires_grad for p in module.parameters()):
                raise ConfigurationError(
                    f"`{name}` has no parameter with requires_grad=True, so it cannot be trained. If it is a copy of "
                    f"a frozen teacher, copy it before the teacher is frozen or call `{name}.requires_grad_(True)`."
                )

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the student's optimizer updates (never a frozen reference's)."""
        return (p for p in self.student.parameters() if p.requires_grad)

    def build_optimizer(
        self, optimizer: OptimizerCallable, parameters: Iterable[nn.Parameter], monitor: str = "val/loss"
    ) -> Any:
        """Build one optimizer (and the scheduler, if configured) in Lightning's dict form.

        ``monitor`` is the metric a plateau scheduler steps on: the validation loss of the network the
        optimizer trains (``val/loss`` for the student, ``val/loss_peer`` for DML's peer).
        """
        opt = optimizer(parameters)
        if self.lr_scheduler is None:
            return {"optimizer": opt}
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.lr_scheduler(opt), "monitor": monitor}}

    def configure_optimizers(self) -> Any:
        """The student's optimizer (and scheduler)."""
        return self.build_optimizer(self.optimizer, self.trainable_parameters())

    def use_optimizer(self, optimizer: OptimizerCallable) -> DistillationModule:
        """Train every network of this method with ``optimizer`` (a pipeline's one optimizer for all its fits).

        Replaces the ``optimizer`` given to the constructor (and, in methods that train other networks, theirs:
        DML's ``peer_optimizer``); takes effect when the fit builds its optimizers. Returns ``self``.
        """
        self.optimizer = optimizer
        return self

    # ------------------------------------------------------------------ helpers
    def _unsaved_arguments(self, known: Mapping[str, Any]) -> list[str]:
        """Constructor arguments (of this class and its subclasses) that stay out of ``hparams``.

        Networks are large and are configuration (rebuilt from the run's config or passed to
        ``load_from_checkpoint``); callables would make the checkpoint unreadable with
        ``torch.load(weights_only=True)``. They are found from the signatures: an argument annotated with
        a network or callable type, or with a callable default. An argument whose value is ``known`` to be
        None (an ``lr_scheduler`` left out) is kept, as None.
        """
        names: set[str] = set()
        for cls in type(self).__mro__:
            if not issubclass(cls, DistillationModule) or "__init__" not in vars(cls):
                continue
            for name, param in inspect.signature(cls.__init__).parameters.items():
                annotation = "" if param.annotation is param.empty else str(param.annotation)
                default = None if param.default is param.empty else param.default
                if _NETWORK_OR_CALLABLE.search(annotation) or callable(default):
                    names.add(name)
        return sorted(name for name in names if not (name in known and known[name] is None))
