"""What the methods log, and when."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import pytest
from conftest import NUM_CLASSES, SyntheticDataModule, TinyNet, tiny_trainer

from kdlightning import DataPartitioningKD, DeepMutualLearning, StudentOnly, VanillaKD

KEYS = {
    StudentOnly: {"train/loss"},
    VanillaKD: {"train/loss", "train/loss_ce", "train/loss_kd"},
    DeepMutualLearning: {"train/loss", "train/loss_ce", "train/loss_kd", "train/loss_student", "train/loss_peer"},
    DataPartitioningKD: {"train/loss", "train/loss_ce", "train/loss_kd", "train/teacher_fraction"},
}


@pytest.mark.parametrize("method", list(KEYS), ids=lambda cls: cls.__name__)
def test_train_keys_reach_the_logger_at_its_cadence(method, tmp_path: Path) -> None:
    nets = [TinyNet()] if method is StudentOnly else [TinyNet(), TinyNet()]
    model = method(*nets, NUM_CLASSES)
    logger = L.pytorch.loggers.CSVLogger(tmp_path)
    trainer = tiny_trainer(tmp_path, logger=logger, log_every_n_steps=2, limit_train_batches=6, limit_val_batches=1)
    trainer.fit(model, datamodule=SyntheticDataModule())
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    train_rows = [row for row in rows if row.get("train/loss")]
    assert len(train_rows) == 3  # batches 2, 4 and 6 of 6, with log_every_n_steps=2
    assert KEYS[method] <= {key for row in train_rows for key, value in row.items() if value}
    assert not any(key.endswith(("_step", "_epoch")) for key in rows[0])  # the exact keys, not renamed
    assert {"val/acc", "val/loss"} <= set(rows[0])
