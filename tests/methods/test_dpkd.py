"""DataPartitioningKD: the frozen initial student and the confidence routing."""

from __future__ import annotations

import torch
from conftest import NUM_CLASSES, SyntheticDataModule, TinyNet, tiny_trainer

from kdlightning import DataPartitioningKD
from kdlightning.losses import dp_kd_terms


def test_initial_student_is_a_frozen_copy_of_the_starting_student(tmp_path) -> None:
    student = TinyNet()
    model = DataPartitioningKD(student, TinyNet(), NUM_CLASSES)
    assert model.initial_student is not model.student
    start = {k: v.clone() for k, v in student.state_dict().items()}
    tiny_trainer(tmp_path, limit_train_batches=3, limit_val_batches=0).fit(model, datamodule=SyntheticDataModule())
    for key, value in model.initial_student.state_dict().items():
        assert torch.equal(value, start[key])
    assert any(not torch.equal(v, start[k]) for k, v in model.student.state_dict().items() if v.is_floating_point())


def test_training_losses_route_by_confidence_and_log_the_teacher_fraction(tmp_path) -> None:
    model = DataPartitioningKD(TinyNet(), TinyNet(), NUM_CLASSES, temperature=2.0, selection="unsupervised")
    model.eval()
    x, y = torch.randn(32, 8), torch.randint(0, NUM_CLASSES, (32,))
    terms = model.training_losses((x, y))
    with torch.no_grad():
        expected = dp_kd_terms(
            model.student(x), model.teacher(x), model.initial_student(x), y, 2.0, 0.5, "unsupervised"
        )
    for key in ("loss", "loss_ce", "loss_kd", "teacher_fraction"):
        torch.testing.assert_close(terms[key], expected[key])

    trainer = tiny_trainer(tmp_path, limit_train_batches=2, limit_val_batches=0)
    trainer.fit(model, datamodule=SyntheticDataModule())
    assert 0.0 <= trainer.callback_metrics["train/teacher_fraction"].item() <= 1.0


def test_a_better_teacher_takes_most_samples() -> None:
    """A teacher that knows the labels is chosen wherever it is more confident of the true class."""

    class Oracle(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.one_hot(x[:, 0].long(), NUM_CLASSES).float() * 10

    y = torch.randint(0, NUM_CLASSES, (64,))
    x = torch.randn(64, 8)
    x[:, 0] = y.float()
    model = DataPartitioningKD(TinyNet(), Oracle(), NUM_CLASSES)
    assert model.training_losses((x, y))["teacher_fraction"].item() == 1.0
