"""BatchedMembers of DeepMutualLearning: each member is a pair (student and peer), and each pair is its own DML fit."""

from __future__ import annotations

import copy
import functools

import lightning as L
import pytest
import torch
from conftest import NUM_CLASSES, SyntheticDataModule, TinyNet, tiny_trainer

from kdlightning import BatchedMembers, DeepMutualLearning, StudentOnly, VanillaKD
from kdlightning.batching import fit_members
from kdlightning.errors import NotFoundError
from kdlightning.methods import member_error

OPTIMIZERS = {
    "adam": functools.partial(torch.optim.Adam, lr=0.01, weight_decay=1e-4),
    "sgd": functools.partial(torch.optim.SGD, lr=0.05, momentum=0.9),
}
POINTS = [(1.0, 0.1), (4.0, 0.5), (16.0, 0.9)]


def members(student, peer, optimizer, scheduler=None) -> dict[str, L.LightningModule]:
    """DML at several (T, alpha) beside a control and a KD member; the peer is another architecture."""
    s, p = functools.partial(copy.deepcopy, student), functools.partial(copy.deepcopy, peer)
    found = {
        f"dml_T{t:g}_a{a:g}": DeepMutualLearning(
            s(), p(), NUM_CLASSES, temperature=t, alpha=a, optimizer=optimizer, peer_optimizer=optimizer
        )
        for t, a in POINTS
    }
    found["control"] = StudentOnly(s(), NUM_CLASSES, optimizer=optimizer)
    found["kd"] = VanillaKD(s(), p(), NUM_CLASSES, temperature=2.0, alpha=0.5, optimizer=optimizer)
    for method in found.values():
        method.lr_scheduler = scheduler
    return found


def fit(tmp_path, model: L.LightningModule, epochs: int = 2) -> None:
    L.seed_everything(0, verbose=False)
    tiny_trainer(tmp_path, max_epochs=epochs, precision="64-true").fit(
        model, datamodule=SyntheticDataModule(num_samples=96)
    )


def assert_same(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], where: str) -> None:
    assert set(got) == set(expected), where
    for key, value in expected.items():  # weights and batch norm's running statistics
        assert (got[key].double() - value.double()).abs().max() <= 1e-9, (where, key)


@pytest.mark.parametrize(
    ("optimizer", "scheduler"),
    [("adam", None), ("sgd", functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1, gamma=0.5))],
)
def test_each_dml_pair_has_the_weights_of_its_own_fit_in_float64(tmp_path, optimizer, scheduler) -> None:
    torch.manual_seed(3)
    student, peer = TinyNet().double(), TinyNet(hidden=24).double()
    separate = members(student, peer, OPTIMIZERS[optimizer], scheduler)
    for name, method in separate.items():
        fit(tmp_path / name, method)
    batched = BatchedMembers(members(student, peer, OPTIMIZERS[optimizer], scheduler))
    assert batched.stacks["peer"] == tuple(name for name in batched.member_names if name.startswith("dml"))
    fit(tmp_path / "batched", batched)
    for name, method in separate.items():
        assert_same(batched.member_state_dict(name), method.student.state_dict(), f"{name}.student")
        if isinstance(method, DeepMutualLearning):
            assert_same(batched.member_state_dict(name, "peer"), method.peer.state_dict(), f"{name}.peer")
    # the pairs trained apart from each other: the peers moved, each its own way
    peers = [batched.member_state_dict(name, "peer")["net.0.weight"] for name in batched.stacks["peer"]]
    assert not torch.equal(peers[0], peer.state_dict()["net.0.weight"])
    assert not torch.equal(peers[0], peers[1])
    with pytest.raises(NotFoundError, match="Member 'control' trains no `peer`; it trains \\['student'\\]"):
        batched.member_state_dict("control", "peer")


def test_fit_members_hands_each_dml_member_its_trained_peer(tmp_path) -> None:
    torch.manual_seed(5)
    student, peer = TinyNet().double(), TinyNet(hidden=24).double()
    build = members(student, peer, OPTIMIZERS["adam"])
    alone = build.pop("dml_T4_a0.5")
    fit(tmp_path / "alone", alone, epochs=1)
    chunks = list(
        fit_members(
            {"dml": functools.partial(lambda: members(student, peer, OPTIMIZERS["adam"])["dml_T4_a0.5"])},
            SyntheticDataModule(num_samples=96),
            lambda callbacks: tiny_trainer(
                tmp_path / "members", max_epochs=1, precision="64-true", callbacks=callbacks
            ),
            test=["dml"],
        )
    )
    fitted = chunks[0]["dml"]
    assert fitted.batched and fitted.error is None
    assert_same(fitted.model.peer.state_dict(), alone.peer.state_dict(), "peer")
    assert_same(fitted.model.student.state_dict(), alone.student.state_dict(), "student")


def test_a_dml_member_that_would_not_train_as_in_its_own_fit_is_refused() -> None:
    student, peer = TinyNet(), TinyNet()
    sgd = functools.partial(torch.optim.SGD, lr=0.1)
    cases = {
        "alternate=True steps the student before the peer": {"alternate": True},
        "clips each network's gradients itself": {"gradient_clip_val": 1.0},
        "`peer_optimizer` builds another optimizer": {"peer_optimizer": sgd},
    }
    for reason, arguments in cases.items():
        dml = DeepMutualLearning(copy.deepcopy(student), copy.deepcopy(peer), NUM_CLASSES, **arguments)
        assert reason in (member_error(dml) or ""), arguments
    assert member_error(DeepMutualLearning(student, peer, NUM_CLASSES)) is None
