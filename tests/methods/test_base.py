"""The base class's registration of trained networks, its metrics and its hyperparameters."""

from __future__ import annotations

import csv
import functools
import inspect
from pathlib import Path

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from conftest import NUM_CLASSES, SyntheticDataModule, TinyNet, tiny_trainer
from torch import nn

from kdlightning import DeepMutualLearning, DistillationModule, MultiTeacherKD, StudentOnly, VanillaKD
from kdlightning.methods import base


class WithHelper(DistillationModule):
    """Trains a helper beside the student (in the student's optimizer), evaluated as ``helper`` or not at all."""

    def __init__(self, student: nn.Module, helper: nn.Module, num_classes: int, evaluate: bool = True) -> None:
        super().__init__(student=student, num_classes=num_classes)
        self.add_trainable("helper", helper, evaluated_as="helper" if evaluate else None)

    def training_losses(self, batch):
        y = self.labels(batch)
        loss = F.cross_entropy(self.logits("student", batch), y) + F.cross_entropy(self.logits("helper", batch), y)
        return {"loss": loss}

    def trainable_parameters(self):
        return [*self.student.parameters(), *self.helper.parameters()]


@pytest.mark.parametrize("evaluate", [True, False])
def test_add_trainable_registers_checkpoints_and_evaluates_in_one_call(evaluate: bool, tmp_path: Path) -> None:
    model = WithHelper(TinyNet(), TinyNet(), NUM_CLASSES, evaluate=evaluate)
    assert list(model.trainable_modules()) == ["student", "helper"]
    assert model.evaluated_networks() == ({"student": "", "helper": "_helper"} if evaluate else {"student": ""})
    assert set(model.metrics["val"]) == set(model.metrics["test"]) == set(model.evaluated_networks())
    trainer = tiny_trainer(tmp_path, limit_train_batches=2, limit_val_batches=1, limit_test_batches=1)
    trainer.fit(model, datamodule=SyntheticDataModule())
    trainer.test(model, datamodule=SyntheticDataModule())
    logged = set(trainer.logged_metrics)
    assert {"test/acc", "test/loss"} <= logged
    assert ({"test/acc_helper", "test/loss_helper"} <= logged) == evaluate
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    roots = {key.split(".", 1)[0] for key in torch.load(path, weights_only=True)["state_dict"]}
    assert roots == {"student", "helper"}


def test_a_network_is_either_trained_or_frozen() -> None:
    model = VanillaKD(TinyNet(), TinyNet(), NUM_CLASSES)
    with pytest.raises(ValueError, match="'teacher' is a frozen reference"):
        model.add_trainable("teacher", TinyNet())
    with pytest.raises(ValueError, match="'student' is a trained network"):
        model.add_frozen("student", TinyNet())


def test_dml_registers_its_peer_with_one_call() -> None:
    model = DeepMutualLearning(TinyNet(), TinyNet(), NUM_CLASSES)
    assert model.trainable_modules() == {"student": model.student, "peer": model.peer}
    assert model.evaluated_networks() == {"student": "", "peer": "_peer"}
    assert set(model.metrics["val"]) == set(model.metrics["test"]) == {"student", "peer"}
    assert list(model.metrics["val"]["peer"].keys(keep_base=False)) == ["val/acc_peer"]
    assert list(model.metrics["test"]["student"].keys(keep_base=False)) == ["test/acc"]


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: StudentOnly(TinyNet(), NUM_CLASSES), {"num_classes": NUM_CLASSES, "lr_scheduler": None}),
        (
            lambda: VanillaKD(TinyNet(), TinyNet(), NUM_CLASSES, temperature=2.0, alpha=0.3),
            {"num_classes": NUM_CLASSES, "lr_scheduler": None, "temperature": 2.0, "alpha": 0.3},
        ),
        (
            lambda: DeepMutualLearning(
                TinyNet(), TinyNet(), NUM_CLASSES, peer_optimizer=functools.partial(torch.optim.SGD, lr=0.1)
            ),
            {
                "num_classes": NUM_CLASSES,
                "lr_scheduler": None,
                "temperature": 1.0,
                "alpha": 0.5,
                "alternate": False,
                "gradient_clip_val": None,
            },
        ),
        (
            lambda: MultiTeacherKD(
                TinyNet(),
                [TinyNet(), TinyNet()],
                NUM_CLASSES,
                weights=[1.0, 3.0],
                lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1),
            ),
            {"num_classes": NUM_CLASSES, "temperature": 4.0, "alpha": 1.0, "weights": [1.0, 3.0]},
        ),
    ],
    ids=["StudentOnly", "VanillaKD", "DML", "MultiTeacherKD"],
)
def test_hyperparameters_leave_out_networks_and_callables(build, expected: dict) -> None:
    """Networks and callables stay out of hparams; a scheduler left None is kept, as None."""
    model = build()
    assert dict(model.hparams) == expected
    assert dict(model.hparams_initial) == expected


def test_the_arguments_left_out_come_from_the_signatures() -> None:
    """No call-stack walk: the base reads the constructors' signatures."""
    assert "currentframe" not in inspect.getsource(base)

    class Unannotated(StudentOnly):
        def __init__(self, student: nn.Module, scale: float = 2.0, make=torch.optim.SGD) -> None:
            super().__init__(student, NUM_CLASSES)
            self.scale = scale

    assert dict(Unannotated(TinyNet()).hparams) == {"num_classes": NUM_CLASSES, "lr_scheduler": None, "scale": 2.0}


@pytest.mark.parametrize("method", [StudentOnly, DeepMutualLearning], ids=lambda cls: cls.__name__)
def test_train_logs_count_batches_across_epochs(method, tmp_path: Path) -> None:
    """5 batches per epoch, logging every 3rd: batches 3, 6 and 9 of 10, under automatic and manual optimization."""
    nets = [TinyNet()] if method is StudentOnly else [TinyNet(), TinyNet()]
    logger = L.pytorch.loggers.CSVLogger(tmp_path)
    trainer = tiny_trainer(
        tmp_path, max_epochs=2, logger=logger, log_every_n_steps=3, limit_train_batches=5, limit_val_batches=0
    )
    trainer.fit(method(*nets, NUM_CLASSES), datamodule=SyntheticDataModule())
    with open(Path(logger.log_dir) / "metrics.csv") as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle) if row.get("train/loss")]
    assert steps == [2, 5, 8]
