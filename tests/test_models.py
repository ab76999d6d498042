"""Loading pre-trained networks: a file that is not a checkpoint is reported with its path."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from kdlightning.models import MLP, load_network


def mlp() -> MLP:
    return MLP(num_classes=3, in_features=4, hidden_sizes=(5,))


def test_a_checkpoint_round_trips(tmp_path: Path) -> None:
    trained = mlp()
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"student.{key}": value for key, value in trained.state_dict().items()}}, path)
    loaded = load_network(path, mlp())
    for key, value in trained.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_an_unreadable_checkpoint_is_named_with_what_was_expected(damage: str, tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    torch.save({"state_dict": {f"student.{key}": value for key, value in mlp().state_dict().items()}}, path)
    path.write_bytes(b"not a checkpoint at all" if damage == "garbage" else path.read_bytes()[:64])
    expected = rf"Could not read '{re.escape(str(path))}' as a checkpoint\. Expected a Lightning checkpoint \(\.ckpt\)"
    with pytest.raises(ValueError, match=expected):
        load_network(path, mlp())


def test_a_file_holding_no_state_dict_is_named(tmp_path: Path) -> None:
    path = tmp_path / "last.ckpt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(ValueError, match=rf"'{re.escape(str(path))}' holds a Tensor, not a state dict\. Expected"):
        load_network(path, mlp())
