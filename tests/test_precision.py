"""``bf16-mixed`` on CPU: every method trains under autocast, with finite fp32 losses and fp32 weights."""

from __future__ import annotations

import math
import warnings

import lightning as L
import pytest
import torch
from torch import nn

from kdlightning import DataPartitioningKD, DeepMutualLearning, StudentOnly, VanillaKD
from kdlightning.data import DigitsDataModule
from kdlightning.models import MLP, SmallCNN
from kdlightning.trainers import quiet_trainer

METHODS = ["StudentOnly", "VanillaKD", "DeepMutualLearning", "DataPartitioningKD"]


def _mlp() -> nn.Module:
    return MLP(num_classes=10, in_features=64, hidden_sizes=(16,))


def _cnn() -> nn.Module:
    return SmallCNN(num_classes=10, channels=(4, 8))


def _build(name: str) -> L.LightningModule:
    adam = lambda params: torch.optim.Adam(params, lr=1e-2)  # noqa: E731
    if name == "StudentOnly":
        return StudentOnly(student=_mlp(), num_classes=10, optimizer=adam)
    if name == "VanillaKD":
        return VanillaKD(student=_mlp(), teacher=_cnn(), num_classes=10, optimizer=adam)
    if name == "DeepMutualLearning":
        return DeepMutualLearning(student=_mlp(), peer=_cnn(), num_classes=10, optimizer=adam, peer_optimizer=adam)
    return DataPartitioningKD(student=_mlp(), teacher=_cnn(), num_classes=10, optimizer=adam)


class _Recorder(L.Callback):
    """Record the dtype of every network output during training and of each step's returned loss."""

    def __init__(self) -> None:
        self.output_dtypes: dict[str, set[torch.dtype]] = {}
        self.loss_dtypes: set[torch.dtype] = set()
        self._handles: list = []

    def on_train_start(self, trainer, pl_module) -> None:
        for name in ("student", "teacher", "peer", "initial_student"):
            network = getattr(pl_module, name, None)
            if isinstance(network, nn.Module):
                self.output_dtypes[name] = set()
                hook = lambda module, args, output, name=name: self.output_dtypes[name].add(output.dtype)  # noqa: E731
                self._handles.append(network.register_forward_hook(hook))

    def on_train_end(self, trainer, pl_module) -> None:
        for handle in self._handles:
            handle.remove()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if outputs and "loss" in outputs:  # automatic optimization; DML (manual) returns nothing
            self.loss_dtypes.add(outputs["loss"].dtype)


def _params(module: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in module.state_dict().items()}


@pytest.mark.parametrize("name", METHODS)
def test_bf16_mixed_cpu_fit(name: str) -> None:
    L.seed_everything(0, verbose=False)
    model = _build(name)
    trained = ["student", "peer"] if name == "DeepMutualLearning" else ["student"]
    frozen = list(model.frozen_names)
    before = {net: _params(getattr(model, net)) for net in trained + frozen}
    recorder = _Recorder()
    trainer = quiet_trainer(
        1, [recorder], accelerator="cpu", precision="bf16-mixed", limit_train_batches=5, limit_val_batches=2
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=DigitsDataModule(batch_size=64))

    assert trainer.global_step == (10 if name == "DeepMutualLearning" else 5)  # one per optimizer step
    # It really ran under bf16 autocast: every network produced bf16 logits during training...
    for net, dtypes in recorder.output_dtypes.items():
        assert dtypes == {torch.bfloat16}, f"{net} outputs were {dtypes} under bf16-mixed"
    # ... while the losses are computed in float32 and are finite.
    if name != "DeepMutualLearning":
        assert recorder.loss_dtypes == {torch.float32}
    metrics = trainer.callback_metrics
    for key in ["train/loss", "val/loss"] + (["train/loss_peer"] if name == "DeepMutualLearning" else []):
        assert key in metrics, f"{key} not logged; logged: {sorted(metrics)}"
        assert math.isfinite(float(metrics[key])), f"{key} = {float(metrics[key])}"

    # Evaluation is logged, in [0, 1].
    acc_keys = ["val/acc", "val/acc_peer"] if name == "DeepMutualLearning" else ["val/acc"]
    for key in acc_keys:
        assert key in metrics, f"{key} not logged; logged: {sorted(metrics)}"
        assert 0.0 <= float(metrics[key]) <= 1.0
    if name == "DataPartitioningKD":
        assert 0.0 <= float(metrics["train/teacher_fraction"]) <= 1.0

    # Trained networks moved and kept float32 master weights.
    for net in trained:
        after = getattr(model, net).state_dict()
        changed = [key for key in before[net] if not torch.equal(before[net][key], after[key])]
        params = dict(getattr(model, net).named_parameters())
        assert set(params) <= set(changed), f"{net}: parameters not updated: {set(params) - set(changed)}"
        for key, value in params.items():
            assert value.dtype == torch.float32, f"{net}.{key} is {value.dtype}"
            assert torch.isfinite(value).all(), f"{net}.{key} is not finite"
    # Frozen references did not move (BatchNorm statistics included) and stayed float32.
    for net in frozen:
        after = getattr(model, net).state_dict()
        for key, value in before[net].items():
            assert torch.equal(value, after[key]), f"frozen {net}.{key} changed"
        assert all(p.dtype == torch.float32 for p in getattr(model, net).parameters())
