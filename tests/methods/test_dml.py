"""DeepMutualLearning: two trained networks, two optimizers, manual optimization."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import NUM_CLASSES, SyntheticDataModule, TinyNet, tiny_trainer

from kdlightning import DeepMutualLearning
from kdlightning.losses import distillation_loss


def _dml(**kwargs) -> DeepMutualLearning:
    torch.manual_seed(0)
    return DeepMutualLearning(TinyNet(), TinyNet(), NUM_CLASSES, **kwargs)


@pytest.mark.parametrize("alternate", [True, False])
def test_both_networks_train_and_global_step_counts_both_optimizers(alternate: bool, tmp_path) -> None:
    model = _dml(alternate=alternate)
    student, peer = copy.deepcopy(model.student.state_dict()), copy.deepcopy(model.peer.state_dict())
    trainer = tiny_trainer(tmp_path, limit_train_batches=4, limit_val_batches=2)
    trainer.fit(model, datamodule=SyntheticDataModule())
    assert any(not torch.equal(v, model.student.state_dict()[k]) for k, v in student.items())
    assert any(not torch.equal(v, model.peer.state_dict()[k]) for k, v in peer.items())
    assert trainer.global_step == 8  # one step per optimizer per batch
    assert {"val/acc", "val/acc_peer", "train/loss_peer", "train/loss_student"} <= set(trainer.callback_metrics)


def test_each_optimizer_updates_only_its_own_network() -> None:
    model = _dml()
    opt_student, opt_peer = (entry["optimizer"] for entry in model.configure_optimizers())
    x, y = torch.randn(16, 8), torch.randint(0, NUM_CLASSES, (16,))
    for network, other, optimizer in ((model.student, model.peer, opt_student), (model.peer, model.student, opt_peer)):
        mine = copy.deepcopy(dict(network.named_parameters()))
        theirs = copy.deepcopy(dict(other.named_parameters()))
        loss = model.training_losses((x, y))["loss"]
        optimizer.zero_grad()
        model.student.zero_grad()
        model.peer.zero_grad()
        loss.backward()
        optimizer.step()
        assert any(not torch.equal(v, dict(network.named_parameters())[k]) for k, v in mine.items())
        assert all(torch.equal(v, dict(other.named_parameters())[k]) for k, v in theirs.items())


def test_joint_backward_equals_two_separate_backwards() -> None:
    """With the other network's logits detached, grad(L_s + L_p) is exactly (grad L_s, grad L_p)."""
    model = _dml(temperature=2.0, alpha=0.7)
    x, y = torch.randn(16, 8), torch.randint(0, NUM_CLASSES, (16,))
    model.training_losses((x, y))["loss"].backward()
    joint = [p.grad.clone() for p in [*model.student.parameters(), *model.peer.parameters()]]
    model.zero_grad()
    logits, peer_logits = model.student(x), model.peer(x)
    distillation_loss(logits, peer_logits, y, 2.0, 0.7).backward()
    distillation_loss(peer_logits, logits, y, 2.0, 0.7).backward()
    separate = [p.grad for p in [*model.student.parameters(), *model.peer.parameters()]]
    for a, b in zip(joint, separate, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_alternate_peer_learns_from_the_updated_student(tmp_path) -> None:
    """Alg. 1: after the student's step the peer's target is the refreshed student prediction."""
    results = {}
    for alternate in (True, False):
        model = _dml(alternate=alternate, optimizer=lambda p: torch.optim.SGD(p, lr=0.5))
        tiny_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0).fit(model, datamodule=SyntheticDataModule())
        results[alternate] = model
    torch.testing.assert_close(  # same student update either way
        results[True].student.state_dict(), results[False].student.state_dict(), rtol=0, atol=0
    )
    peer_true, peer_false = results[True].peer.state_dict(), results[False].peer.state_dict()
    assert any(not torch.equal(peer_true[k], peer_false[k]) for k in peer_true if peer_true[k].is_floating_point())


def test_gradient_clipping_is_the_methods_own(tmp_path) -> None:
    model = _dml(gradient_clip_val=1e-6, optimizer=lambda p: torch.optim.SGD(p, lr=1.0))
    before = copy.deepcopy(model.student.state_dict())
    tiny_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0).fit(model, datamodule=SyntheticDataModule())
    step = torch.cat(
        [
            (model.student.state_dict()[k] - v).flatten()
            for k, v in before.items()
            if "running" not in k and v.is_floating_point()
        ]
    )
    assert 0 < step.norm() <= 1.01e-6
    with pytest.raises(ValueError, match="gradient_clip_val"):
        _dml(gradient_clip_val=0.0)


def test_epoch_schedulers_step_under_manual_optimization(tmp_path) -> None:
    model = _dml(lr_scheduler=lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5))
    trainer = tiny_trainer(tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, datamodule=SyntheticDataModule())
    for optimizer in trainer.optimizers:
        assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3 * 0.25)


class RecordingPlateau(torch.optim.lr_scheduler.ReduceLROnPlateau):
    """A plateau scheduler that keeps the metric values it was stepped with."""

    def __init__(self, optimizer) -> None:
        super().__init__(optimizer)
        self.seen: list[float] = []

    def step(self, metrics, *args, **kwargs) -> None:
        self.seen.append(float(metrics))
        super().step(metrics, *args, **kwargs)


def test_each_plateau_scheduler_steps_on_its_own_networks_validation_loss(tmp_path) -> None:
    """The student's scheduler reads `val/loss`, the peer's `val/loss_peer` (not the student's loss)."""
    model = _dml(lr_scheduler=RecordingPlateau)
    torch.manual_seed(5)
    model.peer = TinyNet()  # a different peer, so the two validation losses differ
    trainer = tiny_trainer(tmp_path, max_epochs=2, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, datamodule=SyntheticDataModule())
    student, peer = (config.scheduler for config in trainer.lr_scheduler_configs)
    metrics = trainer.callback_metrics
    assert float(metrics["val/loss"]) != pytest.approx(float(metrics["val/loss_peer"]))
    assert len(student.seen) == len(peer.seen) == 2
    assert student.seen[-1] == pytest.approx(float(metrics["val/loss"]))
    assert peer.seen[-1] == pytest.approx(float(metrics["val/loss_peer"]))


def test_a_peer_without_trainable_parameters_is_refused_before_training(tmp_path) -> None:
    peer = TinyNet().requires_grad_(False)  # e.g. a copy taken after a teacher was frozen
    model = DeepMutualLearning(TinyNet(), peer, NUM_CLASSES)
    with pytest.raises(ValueError, match="`peer` has no parameter with requires_grad=True"):
        tiny_trainer(tmp_path, limit_train_batches=1, limit_val_batches=0).fit(model, datamodule=SyntheticDataModule())
