"""`MemberStreams`: several datamodules' training batches, step by step, for members that each train on their own data.

Member ``k`` of a fit sees exactly the batches a fit of ``epochs`` epochs on ``datamodules[k]`` alone would see
(each epoch's order selected with the sampler's ``set_epoch``, as Lightning does), one batch a step, until its
``epochs`` are done. Members whose data differ in size finish at different steps; one step's batches are
stacked per shape, so a member's short last batch of an epoch is never padded (batch norm sees only its
samples).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, default_collate

from kdlightning.errors import ConfigurationError

__all__ = ["MemberStreams", "batch_shapes"]


def batch_shapes(batch: Any) -> Any:
    """The shapes of ``batch``'s tensors, in its structure: batches of equal shapes can be stacked."""
    if isinstance(batch, Tensor):
        return tuple(batch.shape)
    if isinstance(batch, Mapping):
        return tuple((key, batch_shapes(value)) for key, value in batch.items())
    if isinstance(batch, (list, tuple)):
        return tuple(batch_shapes(value) for value in batch)
    return None


def _set_epoch(loader: DataLoader, epoch: int) -> None:
    """Select ``epoch``'s order, as Lightning does before each epoch of a fit."""
    for holder in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        if holder is not None and callable(getattr(holder, "set_epoch", None)):
            holder.set_epoch(epoch)


class _Steps:
    """The iterable a fit trains on: per step, a list of ``{"members", "last", "batch"}`` parts."""

    def __init__(self, loaders: Sequence[DataLoader], epochs: int) -> None:
        self.loaders, self.epochs = list(loaders), epochs
        self.lengths = [len(loader) * epochs for loader in self.loaders]

    def __len__(self) -> int:
        return max(self.lengths)

    def _stream(self, loader: DataLoader) -> Iterator[Any]:
        for epoch in range(self.epochs):
            _set_epoch(loader, epoch)
            yield from loader

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        streams = [self._stream(loader) for loader in self.loaders]
        for step in range(len(self)):
            parts: dict[Any, list[tuple[int, Any]]] = {}
            for k, stream in enumerate(streams):
                if step < self.lengths[k]:
                    batch = next(stream)
                    parts.setdefault(batch_shapes(batch), []).append((k, batch))
            yield [
                {
                    "members": torch.tensor([k for k, _ in part]),
                    "last": torch.tensor([self.lengths[k] == step + 1 for k, _ in part]),
                    "batch": default_collate([batch for _, batch in part]),
                }
                for part in parts.values()
            ]


class MemberStreams(L.LightningDataModule):
    """The training data of members that each train on their own data module (several parties in one fit).

    Train :class:`~kdlightning.methods.OwnDataMembers` on it with ``Trainer(max_epochs=1)``: the fit's one epoch
    runs every member's ``epochs`` epochs, ``max(len(train_dataloader_k)) * epochs`` steps. Each step's batch is
    a list of parts, one per shape of the members' batches: ``members`` (their positions), ``last`` (whether
    this step ends that member's training) and ``batch`` (their batches stacked, member first).

    Args:
        datamodules: member ``k``'s data is ``datamodules[k]``'s ``train_dataloader()``; a datamodule is set up
            here (stage ``fit``) unless it has been.
        epochs: epochs of every member.

    Raises:
        ValueError: no datamodules, or ``epochs`` < 1.
    """

    def __init__(self, datamodules: Sequence[L.LightningDataModule], epochs: int) -> None:
        super().__init__()
        if not datamodules:
            raise ConfigurationError("`datamodules` is empty: give each member's data module.")
        if int(epochs) < 1:
            raise ConfigurationError(f"`epochs` must be >= 1, got {epochs!r}.")
        self.datamodules, self.epochs = list(datamodules), int(epochs)

    def train_dataloader(self) -> _Steps:
        """Every member's batches, step by step."""
        loaders = []
        for datamodule in self.datamodules:
            datamodule.setup("fit")
            loaders.append(datamodule.train_dataloader())
        return _Steps(loaders, self.epochs)
