"""Many fits as one: methods of one student as batched members, parties' networks each on its own data.

:func:`fit_members` fits many methods of one student as batched members, in chunks, or apart when they cannot
be; :func:`pretrain_together` pre-trains many parties' networks of one architecture, each on its own data, in
one fit.

The pipelines (``kdl tune``'s grid, ``kdl study``'s cells) train what shares a student, its data and its
epochs as :class:`~kdlightning.methods.BatchedMembers`: ``max_members`` at a time, each member trained as
its own separate fit would be. A network ``torch.func`` cannot vmap falls back, with one warning, to a
separate fit per member; the results have the same form either way.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import lightning as L
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from kdlightning.data import ClassificationDataModule, MemberStreams
from kdlightning.errors import ConfigurationError
from kdlightning.methods import (
    BatchedMembers,
    DistillationModule,
    NotBatchable,
    OwnDataMembers,
    StudentOnly,
    member_error,
)
from kdlightning.reporting import error_line

__all__ = ["MemberFit", "ValidationHistory", "fit_members", "pretrain_together"]


@dataclass
class MemberFit:
    """One member's fit.

    Attributes:
        model: the member's method, trained (its student, and DML's peer, hold the member's weights).
        history: per validation of ``fit`` (one per epoch): ``{"val/acc": ..., "val/loss": ...}``.
        histories: the ``history`` of each validation loader (the first is ``history``), when the datamodule
            validates on several splits.
        test: the member's test metrics (``{"test/acc": ..., "test/loss": ...}``) if it was tested.
        error: why the member failed (its loss turned non-finite), or None.
        seconds: its share of the fit's wall time.
        batched: whether it was trained as a batched member.
        epochs: epochs it was trained.
    """

    model: DistillationModule
    history: list[dict[str, float]] = field(default_factory=list)
    test: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0
    batched: bool = True
    epochs: int = 0
    histories: list[list[dict[str, float]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.histories:  # one validation loader
            self.histories = [self.history]


class ValidationHistory(L.Callback):
    """Record ``val/acc`` and ``val/loss`` after each validation of ``fit`` (a separate fit's history)."""

    def __init__(self) -> None:
        self.history: list[dict[str, float]] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Record the epoch's metrics (final here, not in ``on_validation_epoch_end``)."""
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = trainer.callback_metrics
        self.history.append({k: float(metrics[k]) for k in ("val/acc", "val/loss") if k in metrics})


def fit_members(
    members: Mapping[str, Callable[[], DistillationModule]],
    datamodule: L.LightningDataModule,
    trainer: Callable[[Sequence[L.Callback]], L.Trainer],
    *,
    max_members: int | None = 32,
    test: Sequence[str] = (),
    batched: bool = True,
    fallback: bool = True,
) -> Iterator[dict[str, MemberFit]]:
    """Fit ``members`` as batched members, ``max_members`` per fit; yield each chunk's results as it ends.

    Args:
        members: builds each member's method, by name; a chunk's members are built when it starts.
        datamodule: the data every member trains on.
        trainer: builds a fresh trainer with extra callbacks (the pipeline's settings and epochs).
        max_members: members per fit (memory grows with it); None for all in one.
        test: members to evaluate on the test set after training.
        batched: False fits every member apart (the sequential path).
        fallback: fit members apart, with one warning, when they cannot be batched; False raises
            :class:`~kdlightning.methods.NotBatchable` instead (a caller with its own way out).

    Raises:
        ValueError: ``max_members`` below 1.
    """
    if max_members is not None and max_members < 1:
        raise ConfigurationError(f"`max_members` must be >= 1 (or None for no limit), got {max_members!r}.")
    names = list(members)
    size = len(names) if max_members is None else max_members
    for start in range(0, len(names), max(size, 1)):
        chunk = {name: members[name] for name in names[start : start + size]}
        if batched:
            try:
                yield _fit_batched(chunk, datamodule, trainer, test)
                continue
            except NotBatchable as error:
                if not fallback:
                    raise
                warnings.warn(
                    f"{error}. These members are fitted one at a time instead (the same results, without batching).",
                    stacklevel=2,
                )
                batched = False
        yield {name: _fit_alone(name, build, datamodule, trainer, test) for name, build in chunk.items()}


def _fit_batched(
    chunk: Mapping[str, Callable[[], DistillationModule]],
    datamodule: L.LightningDataModule,
    trainer: Callable[[Sequence[L.Callback]], L.Trainer],
    test: Sequence[str],
) -> dict[str, MemberFit]:
    models = {name: build() for name, build in chunk.items()}
    for name, member in models.items():
        reason = member_error(member)
        if reason is not None:
            raise NotBatchable(f"`{name}` cannot be a batched member: {reason}")
    model = BatchedMembers(models)
    start = time.perf_counter()
    fitting = trainer([])
    try:
        fitting.fit(model, datamodule=datamodule)
    except FloatingPointError as error:  # every member diverged
        return {name: MemberFit(member, error=error_line(error)) for name, member in models.items()}
    tested: Mapping[str, float] = {}
    if any(name in models for name in test):
        tested = trainer([]).test(model, datamodule=datamodule, verbose=False)[0]
    share = (time.perf_counter() - start) / len(models)
    fits = {}
    for name, member in models.items():
        for network, module in member.trainable_modules().items():  # the student; DML's peer
            module.load_state_dict(model.member_state_dict(name, network))
        histories = [
            [{"val/acc": epoch[name][0], "val/loss": epoch[name][1]} for epoch in split]
            for split in model.validation_histories
        ]
        results = {
            f"test/{metric}": float(tested[f"test/{metric}_{name}"])
            for metric in ("acc", "loss")
            if name in test and f"test/{metric}_{name}" in tested
        }
        failure = model.failed.get(name)
        fits[name] = MemberFit(member, histories[0], results, failure, share, True, fitting.current_epoch, histories)
    return fits


def _fit_alone(
    name: str,
    build: Callable[[], DistillationModule],
    datamodule: L.LightningDataModule,
    trainer: Callable[[Sequence[L.Callback]], L.Trainer],
    test: Sequence[str],
) -> MemberFit:
    model = build()
    history = ValidationHistory()
    start = time.perf_counter()
    fitting = trainer([history])
    try:
        fitting.fit(model, datamodule=datamodule)
    except FloatingPointError as error:
        return MemberFit(model, history.history, error=error_line(error), batched=False)
    results: dict[str, float] = {}
    if name in test:
        metrics = trainer([]).test(model, datamodule=datamodule, verbose=False)[0]
        results = {key: float(value) for key, value in metrics.items() if key.startswith("test/")}
    seconds = time.perf_counter() - start
    return MemberFit(model, history.history, results, None, seconds, False, fitting.current_epoch)


def pretrain_together(
    parties: Mapping[str, tuple[nn.Module, ClassificationDataModule]],
    epochs: int,
    trainer: Callable[[], L.Trainer],
    *,
    max_members: int | None = 32,
    optimizer: OptimizerCallable | None = None,
) -> Iterator[list[str]]:
    """Pre-train networks of one architecture, each with :class:`~kdlightning.StudentOnly` on its own data, together.

    ``max_members`` networks a fit (:class:`~kdlightning.methods.OwnDataMembers` on a
    :class:`~kdlightning.data.MemberStreams`), each trained as its own fit of ``epochs`` epochs would train it.
    Each network is trained in place; after each fit, the names of those that trained are yielded. A network whose
    loss turned non-finite is left out (its own fit reports the divergence). A network ``torch.func`` cannot
    vmap ends the pre-training here with one warning: fit the rest apart.

    Args:
        parties: by name, a fresh network and the data module it trains on.
        epochs: epochs of each network.
        trainer: builds a fresh trainer of one epoch (the fit's epoch holds every network's ``epochs``).
        max_members: networks per fit (memory grows with it); None for all in one.
        optimizer: builds each network's optimizer; None for :class:`~kdlightning.StudentOnly`'s default.
    """
    names = list(parties)
    size = len(names) if max_members is None else max(int(max_members), 1)
    for start in range(0, len(names), size):
        chunk = names[start : start + size]
        members = {name: StudentOnly(parties[name][0], parties[name][1].num_classes) for name in chunk}
        if optimizer is not None:
            for member in members.values():
                member.use_optimizer(optimizer)
        try:
            model = OwnDataMembers(members)
            trainer().fit(model, datamodule=MemberStreams([parties[name][1] for name in chunk], epochs))
        except NotBatchable as error:
            warnings.warn(f"{error}. These networks pre-train one at a time instead.", stacklevel=2)
            return
        except FloatingPointError:  # every member diverged
            yield []
            continue
        for name in chunk:
            parties[name][0].load_state_dict(model.member_state_dict(name))
        yield [name for name in chunk if name not in model.failed]
