"""MultiTeacherKD's label-free validation loss, and a fit that ends at its best validation (RestoreBest)."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import tiny_trainer
from torch.utils.data import DataLoader, TensorDataset

from kdlightning import MultiTeacherKD
from kdlightning.callbacks import RestoreBest
from kdlightning.losses import multi_teacher_terms
from kdlightning.models import MLP


def batches(seed: int, n: int = 48) -> DataLoader:
    generator = torch.Generator().manual_seed(seed)
    inputs, labels = torch.randn(n, 6, generator=generator), torch.randint(0, 3, (n,), generator=generator)
    return DataLoader(TensorDataset(inputs, labels), batch_size=n)


def consolidation(seed: int = 0, lr: float = 1e-3) -> MultiTeacherKD:
    torch.manual_seed(seed)
    teachers = [MLP(in_features=6, hidden_sizes=(4,), num_classes=3) for _ in range(2)]
    student = MLP(in_features=6, hidden_sizes=(4,), num_classes=3)
    return MultiTeacherKD(
        student, teachers, 3, temperature=2.0, weights=[1.0, 3.0], optimizer=lambda p: torch.optim.SGD(p, lr=lr)
    )


def test_the_validation_logs_the_distillation_term_which_needs_no_label(tmp_path: Path) -> None:
    model = consolidation()
    loader = batches(1)
    logged = tiny_trainer(tmp_path).validate(model, loader, verbose=False)[0]
    inputs, labels = next(iter(loader))
    with torch.no_grad():
        teachers = [getattr(model, name)(inputs) for name in model.teacher_names]
        expected = multi_teacher_terms(model.student(inputs), teachers, labels, 2.0, 1.0, [1.0, 3.0])["loss_kd"]
        other_labels = multi_teacher_terms(model.student(inputs), teachers, 2 - labels, 2.0, 1.0, [1.0, 3.0])
    assert logged["val/loss_kd"] == pytest.approx(float(expected), rel=1e-5)
    assert float(other_labels["loss_kd"]) == pytest.approx(float(expected))  # the labels play no part


class Snapshots(L.Callback):
    """The student's weights at every validation."""

    def __init__(self) -> None:
        self.states: list[dict] = []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.states.append(copy.deepcopy(pl_module.student.state_dict()))


def test_restore_best_ends_the_fit_at_its_best_validation_not_its_last(tmp_path: Path) -> None:
    model = consolidation(lr=40.0)  # a lively optimizer: the validation loss rises and falls
    best, snapshots = RestoreBest("val/loss_kd"), Snapshots()
    trainer = tiny_trainer(tmp_path, max_epochs=8, callbacks=[snapshots, best], limit_val_batches=None)
    trainer.fit(model, batches(2), batches(3))
    assert len(best.history) == 8 and best.best == min(best.history)
    at = best.history.index(best.best)
    assert at < 7, f"the best validation was the last one: {best.history}"
    kept = snapshots.states[at]
    assert all(torch.equal(model.student.state_dict()[key], kept[key]) for key in kept)
    last = snapshots.states[-1]
    assert not all(torch.equal(model.student.state_dict()[key], last[key]) for key in last)


def test_restore_best_refuses_a_module_that_is_not_a_kdlightning_method(tmp_path: Path) -> None:
    class Plain(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = torch.nn.Linear(6, 3)

        def training_step(self, batch, batch_idx):
            return self.layer(batch[0]).sum()

        def validation_step(self, batch, batch_idx):
            self.log("val/loss", self.layer(batch[0]).sum())

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = tiny_trainer(tmp_path, max_epochs=1, callbacks=[RestoreBest()], limit_val_batches=None)
    with pytest.raises(TypeError, match=r"RestoreBest restores a kdlightning method's trained networks; Plain has"):
        trainer.fit(Plain(), batches(2), batches(3))
