"""Distil with the teacher-output cache on your own LightningDataModule: its batches carry sample indices.

A plain ``LightningDataModule`` over scikit-learn's bundled digits yields training batches
``(x, y, index)``: that is all the cache needs. It names its data with ``cache_key()`` (a hash of the
arrays), so a cache directory shared with other data keeps their stores apart. A teacher is pre-trained,
then ``VanillaKD`` runs three ways: without the cache, with it in memory, and again on the store saved to
disk. The teacher's forward passes are counted. About a minute on 2 CPU cores, with no download::

    python examples/cache_own_datamodule.py [--epochs 5] [--cache-dir runs/cache_own_datamodule]
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import logging
import warnings

import lightning as L
import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from kdlightning import StudentOnly, VanillaKD
from kdlightning.cache import CacheReferenceOutputs
from kdlightning.models import MLP, SmallCNN
from kdlightning.trainers import quiet_trainer


class MyDigits(L.LightningDataModule):
    """Digits, 8x8 images scaled to [0, 1]; training batches are ``(x, y, index)``."""

    def __init__(self, batch_size: int = 64, seed: int = 0) -> None:
        super().__init__()
        self.batch_size, self.seed = batch_size, seed

    def setup(self, stage: str | None = None) -> None:
        x, y = load_digits(return_X_y=True)
        x = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0  # (1797, 1, 8, 8)
        y = torch.tensor(y, dtype=torch.int64)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.seed))
        train, test = order[:1400], order[1400:]
        self.x_train, self.y_train = x[train], y[train]
        # The index is the sample's row in the training data: the same number for it in every epoch.
        self.train_set = TensorDataset(self.x_train, self.y_train, torch.arange(len(train)))
        self.test_set = TensorDataset(x[test], y[test])

    def cache_key(self) -> str:
        """Names the training data: another split or another data set gives another key."""
        digest = hashlib.sha256(self.x_train.numpy().tobytes())
        digest.update(self.y_train.numpy().tobytes())
        return f"my-digits-{digest.hexdigest()[:16]}"

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True, generator=generator)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(self.test_set, batch_size=256)


class Counting(nn.Module):
    """Wraps the teacher and counts the samples it runs on."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.samples = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.samples += x.shape[0]
        return self.network(x)


def distil(student: nn.Module, teacher: nn.Module, epochs: int, callbacks: list[L.Callback]) -> tuple[float, int]:
    """Fit VanillaKD from copies of ``student`` and ``teacher``; return the test accuracy and the teacher's samples."""
    L.seed_everything(0, verbose=False)
    counted = Counting(copy.deepcopy(teacher))
    model = VanillaKD(copy.deepcopy(student), counted, num_classes=10)
    data = MyDigits()
    trainer = quiet_trainer(epochs, callbacks=callbacks, accelerator="cpu", limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    accuracy = trainer.test(model, datamodule=data, verbose=False)[0]["test/acc"]
    return accuracy, counted.samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5, help="epochs of distillation")
    parser.add_argument("--cache-dir", default="runs/cache_own_datamodule", help="where the stores are saved")
    args = parser.parse_args()
    quiet = r".*(module\(s\) in eval mode|does not have many workers|LeafSpec|no `val_dataloader`).*"
    warnings.filterwarnings("ignore", message=quiet)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)

    L.seed_everything(0, verbose=False)
    teacher = SmallCNN(num_classes=10, channels=(16, 32))
    quiet_trainer(8, accelerator="cpu", limit_val_batches=0).fit(StudentOnly(teacher, 10), datamodule=MyDigits())
    student = MLP(num_classes=10, in_features=64, hidden_sizes=(32,))

    runs = {
        "no cache": [],
        "cache in memory": [CacheReferenceOutputs()],
        "cache on disk": [CacheReferenceOutputs(cache_dir=args.cache_dir)],
        "cache on disk, again": [CacheReferenceOutputs(cache_dir=args.cache_dir)],
    }
    print(f"{'run':<28}{'test acc':>10}{'teacher forwards (samples)':>30}")
    for name, callbacks in runs.items():
        accuracy, samples = distil(student, teacher, args.epochs, callbacks)
        print(f"{name:<28}{accuracy:>10.4f}{samples:>30}")


if __name__ == "__main__":
    main()
