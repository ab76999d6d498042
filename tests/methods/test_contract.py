"""One contract, checked for every method exported by `kdlightning.methods`."""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable

import pytest
import torch
from conftest import NUM_CLASSES, SyntheticDataModule, TinyNet, tiny_trainer
from torch import nn

import kdlightning.methods as methods
from kdlightning.methods import DistillationModule

METHODS = [
    getattr(methods, name)
    for name in methods.__all__
    if inspect.isclass(getattr(methods, name))
    and issubclass(getattr(methods, name), DistillationModule)
    and not issubclass(getattr(methods, name), methods.BatchedMembers)  # members: test_members.py, test_own_data.py
    and getattr(methods, name) is not DistillationModule
]


def network_arguments(cls: type[DistillationModule]) -> list[str]:
    """Constructor arguments that take a network."""
    return [
        name for name, param in inspect.signature(cls.__init__).parameters.items() if "Module" in str(param.annotation)
    ]


def is_many(cls: type[DistillationModule], name: str) -> bool:
    """Whether argument ``name`` takes several networks (``Sequence[nn.Module]``)."""
    return "Sequence" in str(inspect.signature(cls.__init__).parameters[name].annotation)


def networks_for(cls: type[DistillationModule], make: Callable[[], nn.Module] = TinyNet) -> dict:
    """A network from ``make`` in every network role; two where a role takes several."""
    return {name: [make(), make()] if is_many(cls, name) else make() for name in network_arguments(cls)}


def build(cls: type[DistillationModule], seed: int = 0, **kwargs) -> DistillationModule:
    """The method with a TinyNet in every network role (same seed, same networks)."""
    torch.manual_seed(seed)
    return cls(num_classes=NUM_CLASSES, **networks_for(cls), **kwargs)


def test_every_method_is_covered() -> None:
    assert {cls.__name__ for cls in METHODS} == {
        "StudentOnly",
        "VanillaKD",
        "DeepMutualLearning",
        "DataPartitioningKD",
        "MultiTeacherKD",
    }


@pytest.fixture(params=METHODS, ids=lambda cls: cls.__name__)
def method_cls(request: pytest.FixtureRequest) -> type[DistillationModule]:
    return request.param


def test_fit_runs_with_finite_loss_and_trains(method_cls, tmp_path) -> None:
    model = build(method_cls)
    before = {name: copy.deepcopy(module.state_dict()) for name, module in model.trainable_modules().items()}
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=4, limit_val_batches=2)
    trainer.fit(model, datamodule=SyntheticDataModule())
    metrics = trainer.callback_metrics
    assert math.isfinite(metrics["train/loss"].item())
    assert 0.0 <= metrics["val/acc"].item() <= 1.0
    for name, module in model.trainable_modules().items():
        changed = [not torch.equal(v, module.state_dict()[k]) for k, v in before[name].items() if v.is_floating_point()]
        assert any(changed), f"{name} did not train"


def test_frozen_references_stay_frozen(method_cls, tmp_path) -> None:
    model = build(method_cls)
    frozen = {name: copy.deepcopy(getattr(model, name).state_dict()) for name in model.frozen_names}
    trainer = tiny_trainer(tmp_path, max_epochs=2, limit_train_batches=4, limit_val_batches=2, num_sanity_val_steps=1)
    trainer.fit(model, datamodule=SyntheticDataModule())
    model.train()  # an explicit train() must not flip a reference back to training mode
    for name, state in frozen.items():
        module = getattr(model, name)
        assert all(not m.training for m in module.modules()), f"{name} left eval mode"
        for key, value in module.state_dict().items():  # weights and BN running stats alike
            assert torch.equal(value, state[key]), f"{name}.{key} changed"
        assert all(p.grad is None and not p.requires_grad for p in module.parameters())
    assert all(m.training for m in model.trainable_modules()["student"].modules())


def test_optimizers_see_only_trainable_parameters(method_cls) -> None:
    model = build(method_cls)
    config = model.configure_optimizers()
    optimizers = [entry["optimizer"] for entry in (config if isinstance(config, list) else [config])]
    optimized = {id(p) for opt in optimizers for group in opt.param_groups for p in group["params"]}
    trainable = {id(p) for module in model.trainable_modules().values() for p in module.parameters()}
    assert optimized == trainable
    assert len(optimizers) == len(model.trainable_modules())


def test_checkpoint_holds_trained_networks_only(method_cls, tmp_path) -> None:
    model = build(method_cls)
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, datamodule=SyntheticDataModule())
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=False)
    roots = {key.split(".", 1)[0] for key in checkpoint["state_dict"]}
    assert roots == set(model.trainable_modules())
    assert not set(model.frozen_names) & roots
    assert len(checkpoint["optimizer_states"]) == len(model.trainable_modules())
    assert "student" not in checkpoint["hyper_parameters"]

    networks = networks_for(method_cls)
    restored = method_cls.load_from_checkpoint(path, **networks)
    for key, value in model.state_dict().items():
        assert torch.equal(value, restored.state_dict()[key]), key


def test_resume_continues_identically(method_cls, tmp_path) -> None:
    """Stopping after epoch 1 and resuming to epoch 3 equals one uninterrupted 3-epoch run."""
    options = {"limit_train_batches": 5, "limit_val_batches": 2}

    straight = build(method_cls)
    tiny_trainer(tmp_path / "a", max_epochs=3, **options).fit(straight, datamodule=SyntheticDataModule())

    first = build(method_cls)
    trainer = tiny_trainer(tmp_path / "b", max_epochs=1, **options)
    trainer.fit(first, datamodule=SyntheticDataModule())
    trainer.save_checkpoint(tmp_path / "epoch1.ckpt")
    resumed = build(method_cls)  # a fresh process would rebuild the method from its config
    tiny_trainer(tmp_path / "c", max_epochs=3, **options).fit(
        resumed, datamodule=SyntheticDataModule(), ckpt_path=tmp_path / "epoch1.ckpt"
    )

    assert straight.state_dict().keys() == resumed.state_dict().keys()
    for key, value in straight.state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=0, atol=0, msg=key)
    assert not all(torch.equal(value, first.state_dict()[key]) for key, value in straight.state_dict().items())


def test_predict_returns_probabilities(method_cls, tmp_path) -> None:
    model = build(method_cls)
    trainer = tiny_trainer(tmp_path, limit_predict_batches=2)
    batches = trainer.predict(model, datamodule=SyntheticDataModule())
    probs = torch.cat(batches)
    assert probs.shape[1] == NUM_CLASSES
    torch.testing.assert_close(probs.sum(1), torch.ones(len(probs)))


BAD_VALUES = {"temperature": [0.0, -2.0, float("nan")], "alpha": [1.01, -0.5]}


@pytest.mark.parametrize(
    ("cls", "name", "value"),
    [
        (cls, name, value)
        for cls in METHODS
        for name, values in BAD_VALUES.items()
        if name in inspect.signature(cls.__init__).parameters
        for value in values
    ],
    ids=str,
)
def test_out_of_range_hyperparameters_raise(cls, name: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"`{name}`"):
        build(cls, **{name: value})


def test_hyperparameters_are_validated_in_every_method_that_has_them() -> None:
    assert {cls.__name__ for cls in METHODS if "alpha" in inspect.signature(cls.__init__).parameters} == {
        "VanillaKD",
        "DeepMutualLearning",
        "DataPartitioningKD",
        "MultiTeacherKD",
    }


@pytest.mark.parametrize("method_cls", [cls for cls in METHODS if len(network_arguments(cls)) > 1], ids=str)
def test_class_count_mismatch_is_reported_before_any_update(method_cls, tmp_path) -> None:
    references = [name for name in network_arguments(method_cls) if name != "student"]
    networks = networks_for(method_cls)
    wrong = TinyNet(num_classes=NUM_CLASSES + 3)
    if is_many(method_cls, references[0]):  # the first of several: registered as `teacher_0`
        networks[references[0]][0], name = wrong, references[0].rstrip("s") + "_0"
    else:
        networks[references[0]], name = wrong, references[0]
    model = method_cls(num_classes=NUM_CLASSES, **networks)
    student_before = copy.deepcopy(model.student.state_dict())
    trainer = tiny_trainer(tmp_path, limit_train_batches=2, limit_val_batches=0)
    with pytest.raises(ValueError, match=rf"{name}.*\(32, {NUM_CLASSES + 3}\).*num_classes={NUM_CLASSES}"):
        trainer.fit(model, datamodule=SyntheticDataModule())
    assert_weights_unchanged(model.student, student_before)


def assert_weights_unchanged(network: nn.Module, before: dict) -> None:
    """No trained weight moved (batch-norm running statistics may: the forward ran)."""
    for key, value in network.state_dict().items():
        if value.is_floating_point() and "running" not in key:
            assert torch.equal(value, before[key]), "the student was updated before the error"


class NaNNet(TinyNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * torch.tensor(float("nan"))


def test_non_finite_loss_stops_training_naming_step_and_component(method_cls, tmp_path) -> None:
    model = build(method_cls)
    # Swapped in after construction: DP-KD's frozen copy of a NaN student would be reported as a reference.
    model.student = NaNNet()
    trainer = tiny_trainer(tmp_path, limit_train_batches=2, limit_val_batches=0)
    with pytest.raises(FloatingPointError, match=r"global step 0.*loss\w*=nan"):
        trainer.fit(model, datamodule=SyntheticDataModule())


@pytest.mark.parametrize(
    ("method_cls", "reference"),
    [
        (methods.VanillaKD, "teacher"),
        (methods.DataPartitioningKD, "teacher"),
        (methods.DataPartitioningKD, "initial_student"),
    ],
    ids=lambda value: getattr(value, "__name__", value),
)
def test_a_non_finite_frozen_reference_stops_training_naming_it_and_the_step(method_cls, reference, tmp_path) -> None:
    model = build(method_cls)
    model.add_frozen(reference, NaNNet())
    student_before = copy.deepcopy(model.student.state_dict())
    trainer = tiny_trainer(tmp_path, limit_train_batches=2, limit_val_batches=0)
    with pytest.raises(FloatingPointError, match=rf"\b{reference}\b.*global step 0"):
        trainer.fit(model, datamodule=SyntheticDataModule())
    assert_weights_unchanged(model.student, student_before)


def test_dict_batches_and_output_objects(method_cls, tmp_path) -> None:
    """Batches as dicts of keyword inputs, networks returning objects with `.logits`."""

    class Output:
        def __init__(self, logits: torch.Tensor) -> None:
            self.logits = logits

    class KeywordNet(TinyNet):
        def forward(self, features: torch.Tensor) -> Output:  # type: ignore[override]
            return Output(super().forward(features))

    class DictLoader:
        def __init__(self, loader) -> None:
            self.loader = loader

        def __iter__(self):
            return ({"features": x, "labels": y} for x, y in self.loader)

        def __len__(self) -> int:
            return len(self.loader)

    class DictData(SyntheticDataModule):
        def _loader(self, dataset, shuffle):
            return DictLoader(super()._loader(dataset, shuffle))

    torch.manual_seed(0)
    networks = networks_for(method_cls, KeywordNet)
    model = method_cls(num_classes=NUM_CLASSES, **networks)
    trainer = tiny_trainer(tmp_path, limit_train_batches=3, limit_val_batches=2)
    trainer.fit(model, datamodule=DictData())
    assert math.isfinite(trainer.callback_metrics["train/loss"].item())
    assert "val/acc" in trainer.callback_metrics


def test_subclass_with_one_method(tmp_path) -> None:
    """A user's method: subclass, register a frozen teacher, implement `training_losses`."""

    class HalfKD(DistillationModule):
        def __init__(self, student: nn.Module, teacher: nn.Module, num_classes: int) -> None:
            super().__init__(student=student, num_classes=num_classes)
            self.add_frozen("teacher", teacher)

        def training_losses(self, batch):
            from kdlightning.losses import kd_loss

            kd = kd_loss(self.logits("student", batch), self.logits("teacher", batch), 2.0)
            return {"loss": 0.5 * kd, "loss_kd": kd}

    model = HalfKD(TinyNet(), TinyNet(), NUM_CLASSES)
    trainer = tiny_trainer(tmp_path, limit_train_batches=2, limit_val_batches=1)
    trainer.fit(model, datamodule=SyntheticDataModule())
    assert {"train/loss", "train/loss_kd", "val/acc"} <= set(trainer.callback_metrics)
    assert not model.teacher.training


def test_evaluation_builds_no_graph(method_cls, tmp_path) -> None:
    """Validation without inference mode: the student's logits must not carry a graph."""
    seen = []

    class Probe(TinyNet):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = super().forward(x)
            seen.append((self.training, out.requires_grad))
            return out

    networks = networks_for(method_cls)
    networks["student"] = Probe()
    model = method_cls(num_classes=NUM_CLASSES, **networks)
    trainer = tiny_trainer(tmp_path, inference_mode=False)
    trainer.validate(model, datamodule=SyntheticDataModule())
    assert seen
    assert not any(requires_grad for _, requires_grad in seen)
