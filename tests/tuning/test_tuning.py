"""`kdl tune`: chosen on validation, resumable, teacher once, files written, bad input refused early."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import optuna
import pytest
import yaml
from planted import CountedPlanted, FlippedTeacher, KillAt, Killed, Planted, planted_args, states

from kdlightning.cli import main
from kdlightning.data import PartitionedDataModule
from kdlightning.tuning import DEFAULT_GRID, Search, TuneOptions, tune
from kdlightning.tuning.trials import share_dataset

ROOT = Path(__file__).resolve().parents[2]
TRAINER = ROOT / "configs" / "_base" / "trainer.yaml"
VANILLA_KD = ROOT / "configs" / "digits" / "vanilla_kd.yaml"
TUNE_CONFIGS = sorted((ROOT / "configs" / "tune").glob("*.yaml"))


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A 2 x 2 grid on the planted data: alpha 0.1 wins on validation, alpha 0.9 would win on test."""
    tmp_path = tmp_path_factory.mktemp("planted")
    FlippedTeacher.seen = 0
    grid = {"model.init_args.temperature": [1.0, 4.0], "model.init_args.alpha": [0.1, 0.9]}
    result = tune(planted_args(tmp_path, {"grid": grid}), verbose=False)
    datamodule = PartitionedDataModule(Planted(), num_parties=1, val_fraction=0.3)
    datamodule.setup()
    return {
        "result": result,
        "out": tmp_path / "search",
        "seen": FlippedTeacher.seen,
        "train": len(datamodule.train_set),
    }


def test_search_chooses_by_validation_never_by_test(planted: dict) -> None:
    result = planted["result"]
    assert result.best_params["model.init_args.alpha"] == 0.1
    by_alpha = {a: [r["val/acc"] for r in result.trials if r["alpha"] == a] for a in (0.1, 0.9)}
    assert min(by_alpha[0.1]) > max(by_alpha[0.9]) + 0.3  # the planted gap, on validation
    # the chosen point is the worse one on the (flipped) test set: the search never looked at it
    assert result.test_metrics["test/acc"] < 0.5
    assert result.test_model == "checkpoint"
    best = json.loads((planted["out"] / "best.json").read_text())
    assert best["params"] == result.best_params and best["test_acc"] == result.test_metrics["test/acc"]
    assert best["value"] == pytest.approx(max(by_alpha[0.1]))


def test_teacher_runs_in_the_first_trial_only(planted: dict) -> None:
    # one pass over the transfer set in trial 0's first epoch; the other 3 trials x 3 epochs read the cache
    assert planted["seen"] == planted["train"]
    assert len(list((planted["out"] / "cache").glob("*.pt"))) == 1


def test_outputs_are_written_and_parse(planted: dict) -> None:
    out = planted["out"]
    with open(out / "trials.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4  # the grid's size
    assert {(float(r["temperature"]), float(r["alpha"])) for r in rows} == {(1, 0.1), (1, 0.9), (4, 0.1), (4, 0.9)}
    assert all(r["state"] == "COMPLETE" and float(r["duration_s"]) > 0 for r in rows)
    before = planted["result"].val_before
    assert all(float(r["val_gain"]) == pytest.approx(float(r["val/acc"]) - before) for r in rows)
    best = json.loads((out / "best.json").read_text())
    assert {"params", "value", "val_before", "val_gain", "test_acc", "trial", "trials"} <= set(best)
    png = (out / "heatmap.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 1000
    assert yaml.safe_load((out / "config.yaml").read_text())["tune"]["sampler"] == "grid"
    assert not list(out.rglob("*.ckpt")) and not list(out.rglob(".*.tmp"))  # no checkpoints, no half-written files


def test_an_output_directory_holds_one_search(planted: dict) -> None:
    args = planted_args(planted["out"].parent, {"grid": {"alpha": [0.1, 0.9]}}, name="search")
    with pytest.raises(ValueError, match="another configuration"):
        tune(args, verbose=False)


def test_killed_search_resumes_without_rerunning_finished_trials(tmp_path: Path, capsys) -> None:
    args = planted_args(tmp_path, {"grid": {"temperature": [1.0, 2.0], "alpha": [0.1, 0.9]}}, max_epochs=2)
    with pytest.raises(Killed):
        tune(args, callbacks=[KillAt(3)], verbose=False)
    out = tmp_path / "search"
    assert states(out) == ["COMPLETE", "COMPLETE"]  # written after each finished trial
    study = optuna.load_study(study_name="tune", storage=f"sqlite:///{out / 'study.db'}")
    before = {t.number: (t.params, t.value) for t in study.trials if t.state.name == "COMPLETE"}
    killed = [t for t in study.trials if t.state.name == "RUNNING"]
    assert len(before) == 2 and len(killed) == 1

    counter = KillAt(0)  # counts fits, kills none
    result = tune(args, callbacks=[counter], verbose=True)
    assert "kdl tune: 2 trials to run (2 finished)" in capsys.readouterr().out  # in one round
    assert counter.fits == 2  # the killed point again, and the one never started
    rows = {row["number"]: row for row in result.trials}
    assert rows[killed[0].number]["state"] == "FAIL"
    assert sum(row["retry_of"] == killed[0].number for row in rows.values()) == 1
    for number, (params, value) in before.items():
        assert rows[number]["state"] == "COMPLETE" and rows[number]["val/acc"] == value
        assert rows[number]["temperature"] == params["model.init_args.temperature"]
        assert rows[number]["alpha"] == params["model.init_args.alpha"]
    complete = [(r["temperature"], r["alpha"]) for r in rows.values() if r["state"] == "COMPLETE"]
    assert sorted(complete) == [(1, 0.1), (1, 0.9), (2, 0.1), (2, 0.9)]  # the grid, each point once

    again = KillAt(0)
    assert tune(args, callbacks=[again], verbose=False).best_params == result.best_params
    assert again.fits == 0  # a finished search trains nothing

    # without the chosen trial's weights, the point is retrained with its seed: the same student on CPU
    (out / "best_model.pt").unlink()
    retrained = tune(args, verbose=False)
    assert retrained.test_model == "retrained" and result.test_model == "checkpoint"
    assert retrained.test_metrics == pytest.approx(result.test_metrics, abs=1e-6)


def test_tpe_with_successive_halving_prunes_trailing_trials(tmp_path: Path) -> None:
    section = {
        "sampler": "tpe",
        "n_trials": 6,
        "n_startup_trials": 3,
        "grid": {"temperature": [2.0]},
        "ranges": {"alpha": [0.05, 0.95]},
        "pruner": "successive_halving",
        "min_resource": 1,
        "reduction_factor": 2,
    }
    result = tune(planted_args(tmp_path, section, max_epochs=4), verbose=False)
    assert len(result.trials) == 6
    pruned = [row for row in result.trials if row["state"] == "PRUNED"]
    assert pruned and all(row["epochs"] < 4 for row in pruned)
    assert result.best_params["model.init_args.alpha"] < 0.5  # the teacher is wrong: little weight on it
    assert (tmp_path / "search" / "heatmap.png").stat().st_size > 0  # a scatter, for continuous alpha


def test_tpe_does_not_retrain_values_it_draws_again(tmp_path: Path) -> None:
    section = {"sampler": "tpe", "n_trials": 5, "n_startup_trials": 5, "grid": {"alpha": [0.1, 0.9]}}
    counter = KillAt(0)
    result = tune(planted_args(tmp_path, section, max_epochs=1), callbacks=[counter], verbose=False)
    twins = [row for row in result.trials if row["same_as"] is not None]
    assert counter.fits + len(twins) == 5 and counter.fits <= 2
    originals = {row["number"]: row for row in result.trials}
    assert all(row["val/acc"] == originals[row["same_as"]]["val/acc"] for row in twins)


def test_a_search_loads_the_data_set_once(tmp_path: Path) -> None:
    CountedPlanted.loads = 0
    grid = {"temperature": [1.0, 4.0], "alpha": [0.1, 0.9]}
    args = planted_args(tmp_path, {"grid": grid}, max_epochs=1)
    result = tune([*args, '--data.init_args.dataset={"class_path": "planted.CountedPlanted"}'], verbose=False)
    assert len(result.trials) == 4 and result.test_model == "checkpoint"
    assert CountedPlanted.loads == 1  # by the probe; its source serves the 4 trials and the test of the chosen one


def test_a_trial_gets_the_held_source_only_when_it_is_the_same() -> None:
    held = Planted(seed=0)
    for source, shared in [(Planted(seed=0), True), (Planted(seed=1), False), (CountedPlanted(seed=0), False)]:
        built = SimpleNamespace(datamodule=PartitionedDataModule(source, num_parties=1))
        assert share_dataset(built, held) is held
        assert (built.datamodule.dataset is held) == shared
    first = SimpleNamespace(datamodule=PartitionedDataModule(Planted(), num_parties=1))
    assert share_dataset(first, None) is first.datamodule.dataset  # the first trial's source is the one held
    arrays = Planted()
    arrays.weights = np.ones(3)  # attributes that do not compare to one bool: not the same
    held.weights = np.ones(3)
    built = SimpleNamespace(datamodule=PartitionedDataModule(arrays, num_parties=1))
    assert share_dataset(built, held) is held and built.datamodule.dataset is arrays


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--tune.grid={}", "empty"),
        ('--tune.grid={"alpha": []}', "no values"),
        ('--tune.grid={"model.init_args.beta": [1.0]}', "no float argument 'beta'"),
        ('--tune.grid={"num_classes": [2.0]}', "no float argument 'num_classes'"),
        ('--tune.grid={"model.init_args.student.init_args.dropout": [0.1]}', "own float arguments"),
        ('--tune.grid={"alpha": [0.5, 1.5]}', r"`tune\.grid\.alpha` must lie in \[0, 1\].*1\.5"),
        ('--tune.grid={"temperature": [0.0, 2.0]}', r"`tune\.grid\.temperature` must be a finite number > 0"),
        ('--tune.ranges={"alpha": [0.1, 0.9]}', "tpe"),
        ("--tune.metric=test/acc", "validation"),
        ("--tune.validation=public", "public_fraction"),
        ("--tune.validation=[own, public]", "one search"),
    ],
)
def test_bad_search_input_fails_before_any_training(override: str, message: str, tmp_path: Path) -> None:
    FlippedTeacher.seen = 0
    with pytest.raises(ValueError, match=message):
        tune([*planted_args(tmp_path, {}), override], verbose=False)
    assert not (tmp_path / "search").exists() and FlippedTeacher.seen == 0


def test_options_default_to_the_spec_grid() -> None:
    options = TuneOptions()
    assert options.grid == DEFAULT_GRID and options.sampler == "grid" and options.metric == "val/acc"
    assert TuneOptions(grid={"alpha": [0.5]}).grid == {"model.init_args.alpha": [0.5]}
    with pytest.raises(ValueError, match="n_trials"):
        TuneOptions(sampler="tpe", n_trials=0)


@pytest.mark.parametrize("path", TUNE_CONFIGS, ids=lambda p: p.name)
def test_every_tune_config_parses(path: Path) -> None:
    search = Search.from_args(["-c", str(TRAINER), "-c", str(VANILLA_KD), "-c", str(path)], verbose=False)
    assert set(search.space) == set(DEFAULT_GRID)
    assert search.options.sampler in ("grid", "tpe")
    if search.options.sampler == "grid":
        assert len(search.grid_points()) == 25
    else:
        assert search.options.pruner == "successive_halving" and search.options.n_trials < 25


def test_tune_configs_are_found() -> None:
    assert {p.name for p in TUNE_CONFIGS} >= {"grid.yaml", "tpe_pruned.yaml"}


def test_kdl_tune_help_lists_the_tune_options() -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(["tune", "--help"])
    assert exit_info.value.code in (0, None)
    assert "--tune.sampler" in out.getvalue() and "--out" in out.getvalue()


def test_kdl_tune_end_to_end_on_digits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    fast = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2"]
    teacher = ROOT / "configs" / "digits" / "teacher.yaml"
    main(["fit", "-c", str(TRAINER), "-c", str(teacher), *fast, "--trainer.log_every_n_steps=1"])
    grid = '--tune.grid={"temperature": [1.0, 4.0], "alpha": [0.5]}'
    main(
        [
            "tune",
            "-c",
            str(TRAINER),
            "-c",
            str(VANILLA_KD),
            "-c",
            str(ROOT / "configs" / "tune" / "grid.yaml"),
            *fast,
            grid,
        ]
    )
    printed = capsys.readouterr().out
    assert "best: trial" in printed and "test (checkpoint)" in printed
    best = json.loads((tmp_path / "runs" / "tune" / "best.json").read_text())
    assert set(best["params"]) == set(DEFAULT_GRID) and 0.0 <= best["test_acc"] <= 1.0
    assert not (tmp_path / "runs" / "digits" / "vanilla_kd").exists()  # the config's checkpoint callback is dropped


class SeesValidation(L.Callback):
    """Records, at each fit's start, which split the trial's datamodule validates on and how large it is."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, int]] = []

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        data = trainer.datamodule
        self.seen.append((data.validation, len(data.val_set), len(data.public_index)))


@pytest.mark.parametrize("validation", ["theirs", [], ["own", "own"]])
def test_bad_tune_validation_names_itself(validation: object) -> None:
    with pytest.raises(ValueError, match=r"tune\.validation"):
        TuneOptions(validation=validation)


def test_tune_validation_public_validates_every_trial_on_the_held_out_split(tmp_path: Path) -> None:
    grid = {"temperature": [1.0], "alpha": [0.1, 0.9]}
    seen = SeesValidation()
    args = [*planted_args(tmp_path, {"grid": grid, "validation": "public"}), "--data.init_args.public_fraction=0.2"]
    result = tune(args, callbacks=[seen], verbose=False)
    assert len(result.trials) == 2
    assert seen.seen and all(v == "public" and n == public > 0 for v, n, public in seen.seen)


def test_a_teacher_the_cache_cannot_key_turns_the_cache_off_with_a_warning() -> None:
    import threading
    from types import SimpleNamespace

    from kdlightning import VanillaKD
    from kdlightning.data import PartitionedDataModule
    from kdlightning.models import MLP
    from kdlightning.tuning.trials import cache_supported

    teacher = MLP(in_features=64, num_classes=10)
    built = SimpleNamespace(model=VanillaKD(MLP(in_features=64, num_classes=10), teacher, 10), datamodule=None)
    built.datamodule = PartitionedDataModule(num_parties=2)
    assert cache_supported(built)
    built.datamodule = L.LightningDataModule()  # a datamodule of the user's own: the cache checks its batches
    assert cache_supported(built)
    teacher.guard = threading.Lock()  # a public attribute whose state cannot be read
    with pytest.warns(UserWarning, match="cache is off.*guard"):
        assert not cache_supported(built)
