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


@pytest.mark.parametrize("method", list(KEYS), ids=lambda cls: cls.__name__)
def test_the_progress_bar_shows_the_loss_and_the_validation_accuracy(method, tmp_path: Path) -> None:
    nets = [TinyNet()] if method is StudentOnly else [TinyNet(), TinyNet()]
    trainer = tiny_trainer(tmp_path, log_every_n_steps=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(method(*nets, NUM_CLASSES), datamodule=SyntheticDataModule())
    shown = set(trainer.progress_bar_metrics)
    assert {"train/loss", "val/acc"} <= shown
    assert not {"train/loss_kd", "val/acc_peer", "val/loss"} & shown  # the rest goes to the loggers only


def test_a_fit_ends_with_a_line_on_its_best_score_and_checkpoints(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    from kdlightning.callbacks import FitSummary
    from kdlightning.lightning_cli import KDLightningCLI

    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val/acc", mode="max", save_last=True)
    trainer = tiny_trainer(
        tmp_path,
        max_epochs=2,
        callbacks=[checkpoint],
        enable_checkpointing=True,
        limit_train_batches=2,
        limit_val_batches=1,
    )
    trainer.fit(StudentOnly(TinyNet(), NUM_CLASSES), datamodule=SyntheticDataModule())
    line = FitSummary().line(trainer)
    assert line.startswith("fit ended after 2 epochs; best val/acc ")
    assert f"{float(checkpoint.best_model_score):.4f} ({checkpoint.best_model_path})" in line
    assert line.endswith(f"last checkpoint {checkpoint.last_model_path}")
    assert Path(checkpoint.best_model_path).is_file()

    bare = tiny_trainer(tmp_path / "bare", limit_train_batches=2, limit_val_batches=1)
    bare.fit(StudentOnly(TinyNet(), NUM_CLASSES), datamodule=SyntheticDataModule())
    assert FitSummary().line(bare) == f"fit ended after 1 epochs; val/acc {float(bare.callback_metrics['val/acc']):.4f}"

    cli = KDLightningCLI(
        args=[
            "--model=kdlightning.StudentOnly",
            "--model.student=kdlightning.models.MLP",
            "--model.student.init_args.num_classes=10",
            "--model.student.init_args.in_features=64",
            "--data=kdlightning.data.DigitsDataModule",
            "--trainer.logger=false",
        ],
        run=False,
    )
    assert any(isinstance(callback, FitSummary) for callback in cli.trainer.callbacks)  # every kdl fit reports


def test_lightning_tips_are_not_shown_and_come_back_after(caplog) -> None:
    import logging

    from kdlightning.trainers import quiet

    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    with caplog.at_level(logging.INFO, logger=logger.name):
        with quiet(logs=False):
            logger.info("💡 Tip: For seamless cloud logging, try installing another service")
            logger.info("GPU available: False, used: False")
        logger.info("💡 Tip: after the block")
    assert "seamless" not in caplog.text
    assert "GPU available" in caplog.text and "after the block" in caplog.text


def test_the_model_summary_leaves_out_metric_containers_and_an_empty_flops_column(tmp_path: Path, caplog) -> None:
    import logging

    from kdlightning.callbacks import ModelSummary

    with caplog.at_level(logging.INFO):
        trainer = tiny_trainer(
            tmp_path, enable_model_summary=True, callbacks=[ModelSummary()], limit_train_batches=1, limit_val_batches=0
        )
        trainer.fit(VanillaKD(TinyNet(), TinyNet(), NUM_CLASSES), datamodule=SyntheticDataModule())
    (table,) = [r.getMessage() for r in caplog.records if "Trainable params" in r.getMessage()]
    rows = [line.split("|")[1].strip() for line in table.splitlines() if line.count("|") >= 3]
    assert rows == ["Name", "student", "teacher"]  # no `metrics` row
    assert "FLOPs" not in table and "Flops" not in table
    assert "Non-trainable params" in table and "Modules in eval mode" in table
