"""`kdl tune` with `tune.batched`: the grid as batched members gives the search the sequential path gives, in fewer fits."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from planted import FlippedTeacher, KillAt, Killed, Planted, planted_args, states

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
    datamodule = PartitionedDataModule(Planted(), num_parties=1, val_fraction=0.3)
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


def test_a_caller_that_trains_the_grid_itself_gets_the_search_run_would_give(tmp_path: Path) -> None:
    """A study trains a cell's grid beside its own methods: the search offers its points and records their fits."""
    import functools

    from kdlightning.batching import fit_members

    whole = tune(planted_args(tmp_path, {"grid": GRID, "batched": True}, name="whole"), verbose=False)
    search = Search.from_args(planted_args(tmp_path, {"grid": GRID, "batched": True}, name="steps"), verbose=False)
    search.open()
    points = search.pending_points()
    assert points == search.grid_points() and len(points) == 4
    members = {search.member_name(point): functools.partial(search.member, point) for point in points}
    assert all(name.count("=") == 2 for name in members)  # temperature=...,alpha=... (in the search's key order)

    def trainer(callbacks):  # the trials' own trainer (the configs' settings), with the fit's callbacks
        return search.build({}, search.seed, list(callbacks)).trainer

    for chunk in fit_members(members, search.datamodule, trainer, max_members=None):
        search.record({point: chunk[search.member_name(point)] for point in points})
    assert search.pending_points() == []
    result = search.finish()
    assert result.best_params == whole.best_params
    assert [row["val/acc"] for row in result.trials] == pytest.approx([row["val/acc"] for row in whole.trials])
