"""`kdl tune` with `tune.batched`: the grid as batched members gives the search the sequential path gives, in fewer fits."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from planted import FlippedTeacher, KillAt, Killed, planted_args, states

from kdlightning.data import PartitionedDataModule
from kdlightning.tuning import Search, tune

GRID = {"temperature": [1.0, 4.0], "alpha": [0.1, 0.9]}


def test_a_batched_grid_is_the_sequential_search_in_one_fit(tmp_path: Path) -> None:
    sequential = tune(planted_args(tmp_path, {"grid": GRID}, name="sequential"), verbose=False)
    FlippedTeacher.seen = 0
    fits = KillAt(0)  # counts fits
    batched = tune(
        planted_args(tmp_path, {"grid": GRID, "batched": True}, name="batched"), callbacks=[fits], verbose=False
    )
    assert fits.fits == 1
    datamodule = PartitionedDataModule(__import__("test_tuning").Planted(), num_parties=1, val_fraction=0.3)
    datamodule.setup()
    assert FlippedTeacher.seen == len(datamodule.train_set)  # the teacher ran once, in the first epoch
    assert batched.best_params == sequential.best_params
    assert batched.test_metrics["test/acc"] == pytest.approx(sequential.test_metrics["test/acc"], abs=0.02)
    assert batched.test_model == "checkpoint"
    by_point = {(r["temperature"], r["alpha"]): r for r in sequential.trials}
    for row in batched.trials:
        expected = by_point[(row["temperature"], row["alpha"])]
        assert row["state"] == "COMPLETE" and row["epochs"] == expected["epochs"] == 3
        assert row["val/acc"] == pytest.approx(expected["val/acc"], abs=0.02)
        assert row["val_gain"] == pytest.approx(row["val/acc"] - batched.val_before)
    out = tmp_path / "batched"
    best = json.loads((out / "best.json").read_text())
    assert best["params"] == batched.best_params and best["trials"] == {"COMPLETE": 4}
    assert (out / "heatmap.png").read_bytes().startswith(b"\x89PNG")
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{out / 'study.db'}")
    assert all(len(t.user_attrs["val_curve"]) == 3 and t.user_attrs["batched"] for t in study.trials)


def test_a_killed_batched_search_redoes_only_its_unfinished_chunk(tmp_path: Path) -> None:
    args = planted_args(tmp_path, {"grid": GRID, "batched": True, "max_members": 2}, max_epochs=2)
    with pytest.raises(Killed):
        tune(args, callbacks=[KillAt(2)], verbose=False)
    out = tmp_path / "search"
    assert states(out) == ["COMPLETE", "COMPLETE"]  # the first chunk's two points
    fits = KillAt(0)
    result = tune(args, callbacks=[fits], verbose=False)
    assert fits.fits == 1  # the second chunk only
    assert sorted((r["temperature"], r["alpha"]) for r in result.trials) == [(1, 0.1), (1, 0.9), (4, 0.1), (4, 0.9)]
    again = KillAt(0)
    tune(args, callbacks=[again], verbose=False)
    assert again.fits == 0


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"batched": True, "sampler": "tpe"}, "`tune.batched` .* needs `tune.sampler: grid`"),
        ({"batched": True, "pruner": "successive_halving"}, "set `tune.pruner: none`"),
        ({"batched": True, "metric": "val/acc_peer"}, r"`tune.metric` must be one of \['val/acc', 'val/loss'\]"),
        ({"max_members": 0}, "`tune.max_members` must be >= 1"),
    ],
)
def test_batched_options_that_cannot_hold_are_refused(tmp_path: Path, section: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        tune(planted_args(tmp_path, {"grid": GRID, **section}), verbose=False)


@pytest.mark.parametrize(
    "other",
    [
        {"grid": GRID, "batched": True},  # validates on the same split
        {"grid": {"temperature": [2.0], "alpha": [0.5]}, "batched": True},  # another space
    ],
)
def test_a_search_beside_another_must_differ_only_in_its_validation(tmp_path: Path, other: dict) -> None:
    first = Search.from_args(planted_args(tmp_path, {"grid": GRID, "batched": True}, name="first"), verbose=False)
    second = Search.from_args(planted_args(tmp_path, other, name="second"), verbose=False)
    with pytest.raises(ValueError, match=r"must differ from it only in `tune.validation`"):
        first.run(beside=[second])
    assert not (tmp_path / "first" / "trials.csv").exists()  # refused before any training
    sequential = Search.from_args(planted_args(tmp_path, {"grid": GRID}, name="sequential"), verbose=False)
    with pytest.raises(ValueError, match=r"need `tune.batched: true`"):
        sequential.run(beside=[second])
