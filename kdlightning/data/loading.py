"""How the datamodules' loaders read their data: in-memory samples, whole batches, an epoch's order, resuming.

A loader over numeric in-memory data reads each batch whole (:class:`WholeBatches`); its samples, its
shuffling (:class:`EpochShuffleSampler`) and its mid-epoch resume (:class:`ResumableDataLoader`) are the
same as sample by sample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

__all__ = ["ArrayDataset", "EpochShuffleSampler", "ResumableDataLoader", "WholeBatches", "as_read"]


class EpochShuffleSampler(Sampler[int]):
    """Shuffles with a permutation that depends only on ``(seed, epoch)``.

    Lightning calls ``set_epoch`` before each epoch, so a run resumed from a checkpoint sees the same
    order as an uninterrupted one (a stateful ``torch.Generator`` would restart its sequence).
    """

    def __init__(self, num_samples: int, seed: int = 0) -> None:
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation of ``epoch``."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())

    def __len__(self) -> int:
        return self.num_samples


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` that a checkpoint taken mid-epoch resumes exactly (Lightning's ``state_dict`` protocol).

    Lightning saves ``state_dict()`` in every checkpoint and gives it back to ``load_state_dict`` on resume.
    The state is the epoch and how many of its batches were trained (``position()``, read when the checkpoint
    is written). The resumed epoch then skips
    those batches instead of training on the epoch's first batches twice. Skipping works on batches, not
    sample indices, so it holds for any sampler, a distributed one included.

    Args:
        *args: ``DataLoader``'s arguments.
        position: returns ``(epoch, trained batches of that epoch)``; None keeps no state (resumes replay).
        **kwargs: ``DataLoader``'s keyword arguments.
    """

    def __init__(self, *args: Any, position: Callable[[], tuple[int, int]] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.position = position
        self._resume: tuple[int, int] | None = None

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batches"}``: the epoch and how many of its batches were trained."""
        epoch, batches = self.position() if self.position is not None else (0, 0)
        return {"epoch": int(epoch), "batches": int(batches)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        """Skip the trained batches when that epoch's iteration starts."""
        self._resume = (int(state_dict["epoch"]), int(state_dict["batches"]))

    def __iter__(self) -> Any:  # the batches, from the resumed one on
        resume, self._resume = self._resume, None
        iterator = super().__iter__()
        return iterator if resume is None else self._skipping(iterator, *resume)

    def _skipping(self, iterator: Iterator[Any], epoch: int, batches: int) -> Iterator[Any]:
        # A generator: the epoch is compared at the first batch, after Lightning's `set_epoch`.
        if epoch == getattr(self.sampler, "epoch", epoch):
            for _ in range(min(batches, len(self))):
                next(iterator)
        yield from iterator


class ArrayDataset(Dataset):
    """Samples ``index`` of in-memory arrays, as ``(input, label)`` or ``(input, label, pool_index)``.

    Numeric inputs are shared with the data set's arrays (no copy per split); strings stay strings
    (tokenized in the collate). ``pool_index`` is the sample's index in the training pool, the key of
    the teacher-output cache.
    """

    def __init__(
        self,
        inputs: np.ndarray,
        labels: np.ndarray,
        index: np.ndarray | None = None,
        transform: Callable[[Any], Any] | None = None,
        with_index: bool = False,
    ) -> None:
        self.text = inputs.dtype.kind in "OUS"
        self.inputs = inputs if self.text else torch.from_numpy(np.ascontiguousarray(inputs))
        self.labels = torch.from_numpy(labels)
        self.index = np.arange(len(labels)) if index is None else np.asarray(index)
        self.transform = transform
        self.with_index = with_index

    def __len__(self) -> int:
        return len(self.index)

    @property
    def gathers(self) -> bool:
        """Whether a batch can be read whole (:meth:`gather`): numeric inputs with no per-sample transform."""
        return not self.text and self.transform is None

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        j = int(self.index[i])
        x = self.inputs[j]
        if self.transform is not None:
            x = self.transform(x)
        return (x, self.labels[j], j) if self.with_index else (x, self.labels[j])

    def gather(self, indices: Sequence[int]) -> list[Tensor]:
        """The batch of samples ``indices`` as PyTorch's ``default_collate`` builds it, in one gather per field.

        For numeric inputs with no transform (:attr:`gathers`).
        """
        rows = torch.from_numpy(self.index[np.asarray(indices, dtype=np.int64)])
        batch = [self.inputs[rows], self.labels[rows], rows]
        return batch if self.with_index else batch[:2]


class WholeBatches(Dataset):
    """An :class:`ArrayDataset` whose loader reads each batch whole (it must :attr:`~ArrayDataset.gathers`).

    With :func:`as_read` as the loader's collate, ``DataLoader`` hands ``__getitems__`` a batch's indices and
    takes the batch as it is read.
    """

    def __init__(self, dataset: ArrayDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple[Any, ...]:
        return self.dataset[i]

    def __getitems__(self, indices: Sequence[int]) -> list[Tensor]:
        return self.dataset.gather(indices)


def as_read(batch: list[Tensor]) -> list[Tensor]:
    """The collate of :class:`WholeBatches`: the batch is already whole."""
    return batch
