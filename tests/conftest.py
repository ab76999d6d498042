"""Shared fixtures: tiny networks, a synthetic datamodule; and the offline environment, set first."""

from __future__ import annotations

import os

# Before anything imports huggingface_hub (lightning does), datasets or wandb: tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from kdlightning.data import ClassificationDataModule
from kdlightning.trainers import quiet_trainer

NUM_CLASSES = 4
NUM_FEATURES = 8
ONE_CELL_STUDY = {
    "methods": {"vanilla_kd": {"class_path": "kdlightning.VanillaKD"}},
    "tuned_kd": False,
    "scenarios": [{"class_path": "kdlightning.data.IIDPartitioner"}],
    "seeds": [0],
    "num_parties": 2,
    "pretrain_epochs": 1,
}
"""A `kdl study` config's one cell (IID, seed 0, two parties, vanilla KD against the control), as YAML reads it."""


class TinyNet(nn.Module):
    """Linear-BN-ReLU-Linear: small, and with batch norm so eval-mode mistakes show."""

    def __init__(self, num_classes: int = NUM_CLASSES, in_features: int = NUM_FEATURES, hidden: int = 16) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class SyntheticDataModule(ClassificationDataModule):
    """Gaussian blobs, one per class: a few hundred CPU samples."""

    def __init__(self, batch_size: int = 32, num_samples: int = 256, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, seed=seed)
        self.num_samples = num_samples

    @property
    def num_classes(self) -> int:
        return NUM_CLASSES

    def setup(self, stage: str | None = None) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        centers = torch.randn(NUM_CLASSES, NUM_FEATURES, generator=generator) * 2

        def make(n: int) -> TensorDataset:
            y = torch.randint(0, NUM_CLASSES, (n,), generator=generator)
            return TensorDataset(centers[y] + torch.randn(n, NUM_FEATURES, generator=generator), y)

        self.train_set, self.val_set, self.test_set = make(self.num_samples), make(64), make(64)


@pytest.fixture
def datamodule() -> SyntheticDataModule:
    return SyntheticDataModule()


@pytest.fixture(autouse=True)
def _seed() -> None:
    L.seed_everything(0, verbose=False)


def tiny_trainer(tmp_path, **kwargs) -> L.Trainer:
    """A quiet CPU trainer writing under ``tmp_path``."""
    return quiet_trainer(kwargs.pop("max_epochs", 1), accelerator="cpu", default_root_dir=tmp_path, **kwargs)
