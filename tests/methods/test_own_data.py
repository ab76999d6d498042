"""OwnDataMembers on MemberStreams: several parties' networks in one fit, each as its own fit would train it."""

from __future__ import annotations

import copy
import functools

import pytest
import torch
from conftest import NUM_CLASSES, SyntheticDataModule, TinyNet, tiny_trainer
from test_members import OPTIMIZERS, TinyCNN

from kdlightning import StudentOnly, VanillaKD
from kdlightning.data import MemberStreams
from kdlightning.methods import OwnDataMembers

SIZES = {"small": 40, "exact": 96, "odd": 70}
"""Parties of different sizes: 2 and 3 batches of 32 an epoch, short last batches of 8 and 6 (one without)."""


def parties(network: type, optimizer) -> tuple[dict[str, StudentOnly], list[SyntheticDataModule]]:
    torch.manual_seed(1)
    methods = {name: StudentOnly(network().double(), NUM_CLASSES, optimizer=optimizer) for name in SIZES}
    data = [SyntheticDataModule(num_samples=n, seed=k) for k, n in enumerate(SIZES.values())]
    return methods, data


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
@pytest.mark.parametrize("network", [TinyNet, TinyCNN])
def test_each_party_has_the_weights_of_its_own_fit_in_float64(tmp_path, network, optimizer) -> None:
    epochs = 3
    separate, data = parties(network, OPTIMIZERS[optimizer])
    together = OwnDataMembers({name: copy.deepcopy(method) for name, method in separate.items()})
    for (name, method), datamodule in zip(separate.items(), data, strict=True):
        trainer = tiny_trainer(tmp_path / name, max_epochs=epochs, precision="64-true", limit_val_batches=0)
        trainer.fit(method, datamodule=datamodule)
    streams = MemberStreams([SyntheticDataModule(num_samples=n, seed=k) for k, n in enumerate(SIZES.values())], epochs)
    trainer = tiny_trainer(tmp_path / "together", max_epochs=1, precision="64-true")
    trainer.fit(together, datamodule=streams)
    assert trainer.global_step == 3 * epochs  # the longest party's steps, one fit
    assert set(together.finished) == set(SIZES)
    for name, method in separate.items():
        expected = method.student.state_dict()
        got = together.member_network(name).state_dict()
        assert set(got) == set(expected)
        for key, value in expected.items():  # weights and batch norm's running statistics
            assert (got[key].double() - value.double()).abs().max() <= 1e-9, (name, key)
    key = "net.0.weight" if network is TinyNet else "head.weight"
    small = list(SIZES).index("small")
    stack = together.student.state_dict()[key][together.member_names.index("small")]
    assert small == together.member_names.index("small")
    assert not torch.equal(together.member_state_dict("small")[key], stack)  # it stopped; the stack went on


def test_member_streams_give_each_member_its_own_batches_per_step_grouped_by_shape() -> None:
    data = [SyntheticDataModule(num_samples=n, seed=k) for k, n in enumerate(SIZES.values())]
    steps = MemberStreams(data, epochs=2).train_dataloader()
    assert len(steps) == 6
    seen = {k: [] for k in range(3)}
    lasts = {}
    for step, parts in enumerate(steps):
        for part in parts:
            inputs, labels = part["batch"]
            assert inputs.shape[0] == labels.shape[0] == part["members"].numel()
            assert len({tuple(x.shape) for x in inputs}) == 1
            for row, (k, last) in enumerate(zip(part["members"].tolist(), part["last"].tolist(), strict=True)):
                seen[k].append(labels[row])
                if last:
                    lasts[k] = step
    assert lasts == {0: 3, 1: 5, 2: 5}
    for k, datamodule in enumerate(SyntheticDataModule(num_samples=n, seed=k) for k, n in enumerate(SIZES.values())):
        datamodule.setup("fit")
        loader = datamodule.train_dataloader()
        expected = []
        for epoch in range(2):
            loader.sampler.set_epoch(epoch)
            expected += [labels for _, labels in loader]
        assert len(seen[k]) == len(expected)
        assert all(torch.equal(a, b) for a, b in zip(seen[k], expected, strict=True))


def test_what_own_data_members_cannot_do_is_refused(tmp_path) -> None:
    student = TinyNet()
    with pytest.raises(ValueError, match="frozen references"):
        OwnDataMembers({"kd": VanillaKD(student, TinyNet(), NUM_CLASSES)})
    with pytest.raises(ValueError, match="lr_scheduler"):
        OwnDataMembers(
            {
                "a": StudentOnly(
                    TinyNet(), NUM_CLASSES, lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1)
                )
            }
        )
    with pytest.raises(ValueError, match="epochs"):
        MemberStreams([SyntheticDataModule()], epochs=0)
    with pytest.raises(ValueError, match="datamodules"):
        MemberStreams([], epochs=1)
    members = OwnDataMembers({"a": StudentOnly(TinyNet(), NUM_CLASSES)})
    trainer = tiny_trainer(tmp_path, max_epochs=1, accumulate_grad_batches=2)
    with pytest.raises(ValueError, match="accumulate_grad_batches"):
        trainer.fit(members, datamodule=MemberStreams([SyntheticDataModule()], 1))
