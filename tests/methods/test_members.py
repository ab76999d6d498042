"""BatchedMembers: each member of one batched fit is its own separate fit (SPEC §11), and what would couple members is refused."""

from __future__ import annotations

import copy
import csv
import functools
import math

import lightning as L
import pytest
import torch
from conftest import NUM_CLASSES, NUM_FEATURES, SyntheticDataModule, TinyNet, tiny_trainer
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from kdlightning import BatchedMembers, DataPartitioningKD, DeepMutualLearning, StudentOnly, VanillaKD
from kdlightning.methods import NotBatchable, member_error


class TinyCNN(nn.Module):
    """Conv-BN-ReLU over the 8 features seen as a 2 x 4 image, then a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, 3, kernel_size=2, padding=1), nn.BatchNorm2d(3), nn.ReLU())
        self.head = nn.Linear(3 * 3 * 5, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x.view(-1, 1, 2, 4)).flatten(1))


OPTIMIZERS = {
    "adam": functools.partial(torch.optim.Adam, lr=0.01, weight_decay=1e-4),
    "adamw": functools.partial(torch.optim.AdamW, lr=0.01, weight_decay=0.05),
    "sgd": functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
}


def methods(student: nn.Module, teacher: nn.Module, optimizer) -> dict[str, L.LightningModule]:
    """Every kind of member, each from its own copy of the same student."""
    s = functools.partial(copy.deepcopy, student)
    return {
        "control": StudentOnly(s(), NUM_CLASSES, optimizer=optimizer),
        "kd_T2_a0.3": VanillaKD(s(), teacher, NUM_CLASSES, temperature=2.0, alpha=0.3, optimizer=optimizer),
        "kd_T4_a0.8": VanillaKD(s(), teacher, NUM_CLASSES, temperature=4.0, alpha=0.8, optimizer=optimizer),
        "dpkd": DataPartitioningKD(s(), teacher, NUM_CLASSES, optimizer=optimizer),
        "dpkd_free": DataPartitioningKD(
            s(), teacher, NUM_CLASSES, temperature=2.0, alpha=1.0, selection="unsupervised", optimizer=optimizer
        ),
    }


def fit(tmp_path, model: L.LightningModule, epochs: int = 2, **trainer) -> L.Trainer:
    L.seed_everything(0, verbose=False)
    t = tiny_trainer(tmp_path, max_epochs=epochs, **trainer)
    t.fit(model, datamodule=SyntheticDataModule(num_samples=96))
    return t


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("network", [TinyNet, TinyCNN])
def test_each_member_has_the_weights_of_its_own_fit_in_float64(tmp_path, network, optimizer) -> None:
    torch.manual_seed(1)
    student, teacher = network().double(), TinyNet().double()
    separate = methods(student, teacher, OPTIMIZERS[optimizer])
    for name, method in separate.items():
        fit(tmp_path / name, method, precision="64-true")
    batched = BatchedMembers(methods(student, teacher, OPTIMIZERS[optimizer]))
    fit(tmp_path / "batched", batched, precision="64-true")
    for name, method in separate.items():
        expected = method.student.state_dict()
        got = batched.member_state_dict(name)
        assert set(got) == set(expected)
        for key, value in expected.items():  # weights and batch norm's running statistics
            assert (got[key].double() - value.double()).abs().max() <= 1e-9, (name, key)
    start = student.state_dict()
    assert any(not torch.equal(batched.member_state_dict("control")[k], v) for k, v in start.items())


def assert_members_match(batched: BatchedMembers, separate: dict, tolerance: float = 1e-9) -> None:
    """Each member of ``batched`` holds the weights (and buffers) of its own fit in ``separate``."""
    for name, method in separate.items():
        got = batched.member_state_dict(name)
        for key, value in method.student.state_dict().items():
            assert (got[key].double() - value.double()).abs().max() <= tolerance, (name, key)


@pytest.mark.parametrize("algorithm", ["norm", None])  # None: Lightning's default, which is "norm"
def test_gradient_norm_clipping_is_per_member(tmp_path, algorithm) -> None:
    torch.manual_seed(2)
    student, teacher = TinyNet().double(), TinyNet().double()
    clip = {"gradient_clip_val": 0.05, "gradient_clip_algorithm": algorithm, "precision": "64-true"}
    separate = methods(student, teacher, OPTIMIZERS["sgd"])
    for name, method in separate.items():
        fit(tmp_path / name, method, epochs=1, **clip)
    batched = BatchedMembers(methods(student, teacher, OPTIMIZERS["sgd"]))
    fit(tmp_path / "batched", batched, epochs=1, **clip)
    assert_members_match(batched, separate, tolerance=1e-12)  # the norms in float64, as in each member's own fit


def first_layer_frozen_by_its_group(optimizer):
    """An optimizer factory whose first parameter group (the first layer) has learning rate 0."""

    def build(parameters):
        parameters = list(parameters)
        return optimizer([{"params": parameters[:2], "lr": 0.0}, {"params": parameters[2:]}])

    return build


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_the_optimizer_s_parameter_groups_and_their_settings_are_kept(tmp_path, optimizer) -> None:
    torch.manual_seed(4)
    student, teacher = TinyNet().double(), TinyNet().double()
    factory = first_layer_frozen_by_its_group(OPTIMIZERS[optimizer])
    separate = methods(student, teacher, factory)
    for name, method in separate.items():
        fit(tmp_path / name, method, epochs=1, precision="64-true")
    batched = BatchedMembers(methods(student, teacher, factory))
    fit(tmp_path / "batched", batched, epochs=1, precision="64-true")
    assert_members_match(batched, separate)
    for name in separate:  # the group with lr 0 did not move; the rest did
        trained = batched.member_state_dict(name)
        assert torch.equal(trained["net.0.weight"], student.state_dict()["net.0.weight"]), name
        assert not torch.equal(trained["net.3.weight"], student.state_dict()["net.3.weight"]), name


class RampedKD(VanillaKD):
    """VanillaKD whose weight on distillation ramps up with the epoch, and whose temperature follows the step."""

    def training_losses(self, batch):
        alpha, temperature = self.alpha, self.temperature
        ramp = min(1.0, (self.current_epoch + 1) / self.trainer.max_epochs)
        with self.given({}, alpha=alpha * ramp, temperature=temperature + 0.01 * self.global_step):
            return super().training_losses(batch)


def test_members_read_the_trainer_s_epoch_and_step_as_their_own_fits_do(tmp_path) -> None:
    torch.manual_seed(5)
    student, teacher = TinyNet().double(), TinyNet().double()

    def members():
        s = functools.partial(copy.deepcopy, student)
        sgd = OPTIMIZERS["sgd"]
        return {
            "ramp_a0.9": RampedKD(s(), teacher, NUM_CLASSES, temperature=2.0, alpha=0.9, optimizer=sgd),
            "ramp_a0.5": RampedKD(s(), teacher, NUM_CLASSES, temperature=4.0, alpha=0.5, optimizer=sgd),
        }

    separate = members()
    for name, method in separate.items():
        fit(tmp_path / name, method, epochs=3, precision="64-true")
    batched = BatchedMembers(members())
    fit(tmp_path / "batched", batched, epochs=3, precision="64-true")
    assert_members_match(batched, separate)
    with pytest.raises(RuntimeError, match="not attached to a `Trainer`"):  # detached once the fit is over
        _ = batched._groups[0].prototype.trainer


def test_a_member_on_its_own_data_may_not_read_the_fit_s_progress(tmp_path) -> None:
    from kdlightning.data import MemberStreams
    from kdlightning.methods import OwnDataMembers

    class EpochAware(StudentOnly):
        def training_losses(self, batch):
            return {"loss": super().training_losses(batch)["loss"] * (1 + self.current_epoch)}

    parties = OwnDataMembers({f"p{k}": EpochAware(TinyNet(), NUM_CLASSES) for k in range(2)})
    streams = MemberStreams([SyntheticDataModule(num_samples=32), SyntheticDataModule(num_samples=48)], epochs=1)
    with pytest.raises(ValueError, match=r"reads the trainer's `current_epoch`.*Fit that method on its own"):
        tiny_trainer(tmp_path, max_epochs=1).fit(parties, datamodule=streams)


def test_float32_members_reach_the_accuracy_of_their_own_fits(tmp_path) -> None:
    torch.manual_seed(3)
    student, teacher = TinyNet(), TinyNet()
    separate = methods(student, teacher, OPTIMIZERS["adam"])
    accuracy = {name: float(fit(tmp_path / name, m).callback_metrics["val/acc"]) for name, m in separate.items()}
    batched = BatchedMembers(methods(student, teacher, OPTIMIZERS["adam"]))
    metrics = fit(tmp_path / "batched", batched, logger=CSVLogger(tmp_path)).callback_metrics
    last = batched.validation_history[-1]
    for name, value in accuracy.items():
        assert math.isclose(last[name][0], value, abs_tol=2 / 64), name
    assert float(metrics["val/acc_best"]) == pytest.approx(max(acc for acc, _ in last.values()))
    assert [sorted(epoch) for epoch in batched.validation_history] == [sorted(accuracy)] * 2
    with open(batched.logger.log_dir + "/metrics.csv") as handle:
        logged = list(csv.DictReader(handle))
    columns = set(logged[0])
    for name in accuracy:  # every member's figures reach the logger
        assert {f"val/acc_{name}", f"val/loss_{name}", f"train/loss_{name}"} <= columns
    assert {"train/loss_kd_kd_T2_a0.3", "train/teacher_fraction_dpkd"} <= columns
    assert "train/loss_kd_control" not in columns  # StudentOnly has no such component
    val = [row for row in logged if row["val/acc_control"]]
    assert float(val[-1]["val/acc_control"]) == pytest.approx(last["control"][0])


def test_dropout_draws_per_member(tmp_path) -> None:
    student = nn.Sequential(nn.Linear(NUM_FEATURES, 32), nn.Dropout(0.5), nn.Linear(32, NUM_CLASSES))
    batched = BatchedMembers({name: StudentOnly(copy.deepcopy(student), NUM_CLASSES) for name in ("a", "b")})
    fit(tmp_path, batched, epochs=1, limit_train_batches=1, limit_val_batches=0)
    a, b = batched.member_state_dict("a"), batched.member_state_dict("b")
    assert not torch.equal(a["0.weight"], b["0.weight"])


class Diverging(StudentOnly):
    def training_losses(self, batch):
        return {"loss": super().training_losses(batch)["loss"] * math.inf}


def test_a_diverging_member_is_set_aside_and_the_others_train_on(tmp_path) -> None:
    student = TinyNet().double()
    members = {"ok": StudentOnly(copy.deepcopy(student), NUM_CLASSES), "bad": Diverging(student, NUM_CLASSES)}
    alone = StudentOnly(copy.deepcopy(student), NUM_CLASSES)
    fit(tmp_path / "alone", alone, epochs=1, precision="64-true")
    batched = BatchedMembers(members)
    fit(tmp_path / "batched", batched, epochs=1, precision="64-true")
    assert list(batched.failed) == ["bad"] and "global step 0" in batched.failed["bad"]
    for key, value in alone.student.state_dict().items():
        assert (batched.member_state_dict("ok")[key] - value).abs().max() <= 1e-9, key
    with pytest.raises(FloatingPointError, match="Every member diverged"):
        fit(tmp_path / "all", BatchedMembers({"bad": Diverging(TinyNet(), NUM_CLASSES)}), epochs=1)


def test_member_network_is_a_standalone_copy_of_one_member(tmp_path) -> None:
    batched = BatchedMembers(methods(TinyNet(), TinyNet(), OPTIMIZERS["adam"]))
    fit(tmp_path, batched, epochs=1)
    batched.eval()
    x = torch.randn(5, NUM_FEATURES)
    network = batched.member_network("kd_T2_a0.3").eval()
    torch.testing.assert_close(network(x), batched(x)[batched.member_index("kd_T2_a0.3")])
    assert isinstance(network, TinyNet) and network.net[0].weight.shape == (16, NUM_FEATURES)


def test_the_teacher_output_cache_serves_batched_members_as_one_student(tmp_path) -> None:
    from kdlightning.cache import CacheReferenceOutputs
    from kdlightning.data import DigitsDataModule
    from kdlightning.models import MLP

    def members():
        torch.manual_seed(0)
        student, teacher = MLP(in_features=64, num_classes=10), MLP(in_features=64, num_classes=10)
        return BatchedMembers(
            {
                "control": StudentOnly(copy.deepcopy(student), 10),
                "kd": VanillaKD(copy.deepcopy(student), teacher, 10),
            }
        )

    def run(model, callbacks):
        L.seed_everything(0, verbose=False)
        tiny_trainer(tmp_path, max_epochs=2, callbacks=callbacks).fit(model, datamodule=DigitsDataModule())
        return model

    plain = run(members(), [])
    cache = CacheReferenceOutputs(cache_dir=str(tmp_path / "cache"))
    cached = run(members(), [cache])
    assert any((tmp_path / "cache").iterdir())
    for key, value in plain.member_state_dict("kd").items():
        torch.testing.assert_close(cached.member_state_dict("kd")[key], value)


def test_what_would_couple_members_or_cannot_be_one_is_refused(tmp_path) -> None:
    student, teacher = TinyNet(), TinyNet()
    with pytest.raises(ValueError, match="`members` is empty"):
        BatchedMembers({})
    with pytest.raises(ValueError, match="name 'a b' cannot end a metric key"):
        BatchedMembers({"a b": StudentOnly(student, NUM_CLASSES)})
    dml = DeepMutualLearning(copy.deepcopy(student), copy.deepcopy(teacher), NUM_CLASSES, alternate=True)
    assert "alternate=True steps the student before the peer" in member_error(dml)
    with pytest.raises(ValueError, match=r"`members.dml` cannot be a batched member: DeepMutualLearning with alt"):
        BatchedMembers({"dml": dml})
    other = nn.Sequential(nn.Linear(NUM_FEATURES, 5), nn.Linear(5, NUM_CLASSES))
    with pytest.raises(ValueError, match=r"`members.b`'s student differs from `members.a`'s in architecture"):
        BatchedMembers({"a": StudentOnly(student, NUM_CLASSES), "b": StudentOnly(other, NUM_CLASSES)})
    with pytest.raises(ValueError, match=r"`members.b`'s `teacher` differs from `members.a`'s"):
        BatchedMembers({"a": VanillaKD(student, teacher, NUM_CLASSES), "b": VanillaKD(student, TinyNet(), NUM_CLASSES)})
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="`members` have different `optimizer`s"):
        BatchedMembers({"a": StudentOnly(student, NUM_CLASSES), "b": StudentOnly(student, NUM_CLASSES, optimizer=sgd)})
    lbfgs = BatchedMembers({"a": StudentOnly(student, NUM_CLASSES)}, optimizer=torch.optim.LBFGS)
    with pytest.raises(ValueError, match="LBFGS is not known to update each parameter element on its own"):
        fit(tmp_path, lbfgs, epochs=1)
    plateau = functools.partial(torch.optim.lr_scheduler.ReduceLROnPlateau)
    with pytest.raises(ValueError, match="ReduceLROnPlateau, which would step every member on one shared metric"):
        fit(tmp_path, BatchedMembers({"a": StudentOnly(student, NUM_CLASSES)}, lr_scheduler=plateau), epochs=1)


def test_a_network_vmap_cannot_batch_raises_not_batchable() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = nn.Linear(NUM_FEATURES, NUM_CLASSES)

        def forward(self, x):
            out = self.linear(x)
            return out if out.sum() > 0 else -out  # data-dependent control flow

    batched = BatchedMembers({"a": StudentOnly(Branchy(), NUM_CLASSES)})
    with pytest.raises(NotBatchable, match=r"torch.func cannot vmap the members' network Branchy"):
        batched(torch.randn(3, NUM_FEATURES))


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_a_hugging_face_classifier_can_be_a_batched_member(attention: str) -> None:
    from transformers import AutoModelForSequenceClassification, BertConfig

    config = BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=3
    )
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation=attention).eval()
    batched = BatchedMembers({"a": StudentOnly(model, 3), "b": StudentOnly(copy.deepcopy(model), 3)}).eval()
    batch = {"input_ids": torch.randint(0, 50, (4, 7)), "attention_mask": torch.ones(4, 7, dtype=torch.long)}
    batch["attention_mask"][0, 5:] = 0
    with torch.no_grad():
        expected = model(**batch).logits
        logits = batched.member_logits({**batch, "labels": torch.zeros(4, dtype=torch.long)})
    assert logits.shape == (2, 4, 3)
    torch.testing.assert_close(logits[0], expected)
    torch.testing.assert_close(logits[1], expected)


def test_batched_members_train_under_bf16_mixed(tmp_path) -> None:
    """Lightning's bf16-mixed applies: the members train, their losses in float32, their weights float32.

    (Under vmap, torch autocasts a Linear's matmul but adds its bias in float32, so the logits come out
    float32: pytorch/pytorch#192617.)
    """
    batched = BatchedMembers(methods(TinyNet(), TinyNet(), OPTIMIZERS["adam"]))
    start = batched.member_state_dict("kd_T2_a0.3")
    trainer = fit(tmp_path, batched, epochs=1, precision="bf16-mixed")
    assert math.isfinite(float(trainer.callback_metrics["train/loss"]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = batched.training_losses((torch.randn(3, NUM_FEATURES), torch.tensor([0, 1, 2])))
    assert losses["loss"].dtype == torch.float32 and losses["loss"].shape == (5,)
    trained = batched.member_state_dict("kd_T2_a0.3")["net.0.weight"]
    assert trained.dtype == torch.float32 and not torch.equal(trained, start["net.0.weight"])
    assert all(math.isfinite(acc) for acc, _ in batched.validation_history[-1].values())


def test_a_resumed_fit_continues_the_members_history_and_failures(tmp_path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.manual_seed(6)
    student = TinyNet()

    def members():
        return BatchedMembers(
            {"ok": StudentOnly(copy.deepcopy(student), NUM_CLASSES), "bad": Diverging(student, NUM_CLASSES)}
        )

    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1, every_n_epochs=1)
    whole = members()
    fit(tmp_path / "whole", whole, epochs=3, callbacks=[checkpoints], enable_checkpointing=True)
    first = sorted((tmp_path / "ckpt").glob("epoch=0-*.ckpt"))
    assert len(first) == 1 and len(whole.validation_history) == 3
    resumed = members()
    L.seed_everything(0, verbose=False)
    tiny_trainer(tmp_path / "resumed", max_epochs=3).fit(
        resumed, datamodule=SyntheticDataModule(num_samples=96), ckpt_path=first[0]
    )
    assert str(resumed.validation_history) == str(whole.validation_history)  # nan: the diverged member's loss
    assert resumed.failed == whole.failed and "global step 0" in resumed.failed["bad"]
