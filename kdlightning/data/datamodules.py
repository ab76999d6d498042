"""LightningDataModules for classification data."""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from kdlightning.data.datasets import load_digits_arrays

__all__ = ["ClassificationDataModule", "DigitsDataModule", "EpochShuffleSampler"]


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


class ClassificationDataModule(L.LightningDataModule):
    """Train / validation / test loaders over in-memory ``(inputs, labels)`` data sets.

    Subclasses build ``self.train_set``, ``self.val_set``, ``self.test_set`` in ``setup`` and set
    ``num_classes``, which the CLI links into the method.

    Args:
        batch_size: samples per batch.
        num_workers: data loader worker processes.
        seed: seed of the split and of the shuffling.
    """

    train_set: Dataset
    val_set: Dataset
    test_set: Dataset

    def __init__(self, batch_size: int = 64, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size!r}.")
        if num_workers < 0:
            raise ValueError(f"`num_workers` must be >= 0, got {num_workers!r}.")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed

    @property
    def num_classes(self) -> int:
        """Number of classes (linked to ``model.init_args.num_classes`` by the CLI)."""
        raise NotImplementedError

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        sampler = EpochShuffleSampler(len(dataset), self.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (order fixed by ``seed`` and the epoch)."""
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches."""
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        """Test batches."""
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test set, for ``kdl predict``."""
        return self._loader(self.test_set, shuffle=False)


class DigitsDataModule(ClassificationDataModule):
    """scikit-learn's bundled 8×8 digits (1,797 images, 10 classes), split by stratified sampling.

    The embedded default data set: it needs no download and no file.

    Args:
        batch_size: samples per batch.
        val_fraction: share of the data held out for validation.
        test_fraction: share of the data held out for testing.
        num_workers: data loader worker processes.
        seed: seed of the split and of the shuffling.
    """

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0.0 < value < 1.0:
                raise ValueError(f"`{name}` must lie in (0, 1), got {value!r}.")
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(
                f"`val_fraction + test_fraction` must be < 1 to leave training data, got {val_fraction + test_fraction}"
            )
        self.val_fraction = val_fraction
        self.test_fraction = test_fraction

    @property
    def num_classes(self) -> int:
        """10 digit classes."""
        return 10

    def setup(self, stage: str | None = None) -> None:
        """Split the digits into train / validation / test (same split in every process)."""
        from sklearn.model_selection import train_test_split

        images, labels = load_digits_arrays()
        index = np.arange(len(labels))
        rest, test = train_test_split(index, test_size=self.test_fraction, stratify=labels, random_state=self.seed)
        train, val = train_test_split(
            rest,
            test_size=self.val_fraction / (1.0 - self.test_fraction),
            stratify=labels[rest],
            random_state=self.seed,
        )
        x, y = torch.from_numpy(images), torch.from_numpy(labels)
        self.train_set = TensorDataset(x[np.sort(train)], y[np.sort(train)])
        self.val_set = TensorDataset(x[np.sort(val)], y[np.sort(val)])
        self.test_set = TensorDataset(x[np.sort(test)], y[np.sort(test)])
