"""Resuming: mid-epoch checkpoints continue exactly, and a resume never distils from other frozen references."""

from __future__ import annotations

import copy

import lightning as L
import pytest
import torch
from conftest import NUM_CLASSES, SyntheticDataModule, TinyNet, tiny_trainer

from kdlightning import DataPartitioningKD, DeepMutualLearning, StudentOnly, VanillaKD

OPTIONS = {"limit_train_batches": 6, "limit_val_batches": 2}


class SaveAt(L.Callback):
    """Write a checkpoint after batch ``batch`` of epoch ``epoch``: a run killed mid-epoch."""

    def __init__(self, path, epoch: int, batch: int) -> None:
        self.path, self.epoch, self.batch = path, epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            trainer.save_checkpoint(self.path)


def make(cls):
    torch.manual_seed(0)
    networks = {"student": TinyNet(), ("peer" if cls is DeepMutualLearning else "teacher"): TinyNet()}
    if cls is StudentOnly:
        networks.pop("teacher")
    return cls(num_classes=NUM_CLASSES, **networks)


@pytest.mark.parametrize("cls", [StudentOnly, VanillaKD, DeepMutualLearning], ids=lambda cls: cls.__name__)
def test_resume_from_a_mid_epoch_checkpoint_continues_identically(cls, tmp_path) -> None:
    """Killed after batch 3 of epoch 2 and resumed to epoch 3: the same weights as one uninterrupted run.

    Without a resumable loader the resumed epoch trains its first batches twice and never sees its last.
    """
    straight = make(cls)
    path = tmp_path / "mid.ckpt"
    tiny_trainer(tmp_path / "a", max_epochs=3, callbacks=[SaveAt(path, epoch=1, batch=2)], **OPTIONS).fit(
        straight, datamodule=SyntheticDataModule()
    )
    assert torch.load(path, weights_only=False)["loops"]["fit_loop"]["state_dict"]["combined_loader"] == [
        {"epoch": 1, "batches": 3}
    ]

    resumed = make(cls)
    tiny_trainer(tmp_path / "b", max_epochs=3, **OPTIONS).fit(resumed, datamodule=SyntheticDataModule(), ckpt_path=path)
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_resume_from_an_epoch_end_checkpoint_skips_nothing(tmp_path) -> None:
    straight = make(VanillaKD)
    path = tmp_path / "end.ckpt"
    tiny_trainer(tmp_path / "a", max_epochs=2, callbacks=[SaveAt(path, epoch=0, batch=5)], **OPTIONS).fit(
        straight, datamodule=SyntheticDataModule()
    )
    resumed = make(VanillaKD)
    tiny_trainer(tmp_path / "b", max_epochs=2, **OPTIONS).fit(resumed, datamodule=SyntheticDataModule(), ckpt_path=path)
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)


def _pretrained() -> TinyNet:
    torch.manual_seed(1)
    network = TinyNet()
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(0.5)  # far from any fresh initialisation
    return network


def test_dp_kd_resumed_with_a_fresh_student_is_refused(tmp_path) -> None:
    """load_from_checkpoint(student=fresh) would make the initial student a copy of the fresh network."""
    pretrained, teacher = _pretrained(), TinyNet()
    model = DataPartitioningKD(copy.deepcopy(pretrained), teacher, NUM_CLASSES)
    trainer = tiny_trainer(tmp_path, max_epochs=1, **OPTIONS)
    trainer.fit(model, datamodule=SyntheticDataModule())
    trainer.save_checkpoint(tmp_path / "dpkd.ckpt")

    wrong = DataPartitioningKD.load_from_checkpoint(tmp_path / "dpkd.ckpt", student=TinyNet(), teacher=teacher)
    assert tiny_trainer(tmp_path / "test").test(wrong, datamodule=SyntheticDataModule(), verbose=False)  # may evaluate
    with pytest.raises(ValueError, match=r"`initial_student`.*pass the pre-trained student"):
        tiny_trainer(tmp_path / "wrong", max_epochs=2, **OPTIONS).fit(wrong, datamodule=SyntheticDataModule())

    right = DataPartitioningKD.load_from_checkpoint(
        tmp_path / "dpkd.ckpt", student=copy.deepcopy(pretrained), teacher=teacher
    )
    for key, value in pretrained.state_dict().items():
        assert torch.equal(right.initial_student.state_dict()[key], value), key
    for key, value in model.student.state_dict().items():
        assert torch.equal(right.student.state_dict()[key], value), key
    tiny_trainer(tmp_path / "right", max_epochs=2, **OPTIONS).fit(right, datamodule=SyntheticDataModule())


def test_resume_with_another_teacher_is_refused(tmp_path) -> None:
    model = make(VanillaKD)
    trainer = tiny_trainer(tmp_path, max_epochs=1, **OPTIONS)
    trainer.fit(model, datamodule=SyntheticDataModule())
    trainer.save_checkpoint(tmp_path / "kd.ckpt")
    other = make(VanillaKD)
    other.add_frozen("teacher", _pretrained())
    with pytest.raises(ValueError, match="`teacher`"):
        tiny_trainer(tmp_path / "b", max_epochs=2, **OPTIONS).fit(
            other, datamodule=SyntheticDataModule(), ckpt_path=tmp_path / "kd.ckpt"
        )
