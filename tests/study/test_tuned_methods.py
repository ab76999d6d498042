"""Every method tuned: the study searches any listed method's float arguments, in rows ``tuned_<method>``."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch
from test_study import SMALL_GRID, study

from kdlightning import DataPartitioningKD, DeepMutualLearning, VanillaKD
from kdlightning.data import DirichletPartitioner, IIDPartitioner
from kdlightning.models import MLP
from kdlightning.reporting import read_csv
from kdlightning.tuning import TuneOptions

ONE_CELL = {"scenarios": [DirichletPartitioner(alpha=0.5)], "seeds": [1], "tuning": SMALL_GRID}
GRID = {(t, a) for t in (1.0, 4.0) for a in (0.1, 0.9)}


def trials(out: Path, folder: str) -> dict[tuple[float, float], dict]:
    """A search's trials by point (temperature, alpha)."""
    return {(float(t["temperature"]), float(t["alpha"])): t for t in read_csv(out / "tuning" / folder / "trials.csv")}


def test_a_tuned_method_is_searched_over_its_own_arguments_in_a_row_of_its_own(tmp_path: Path) -> None:
    methods = {"vanilla_kd": VanillaKD, "dpkd": partial(DataPartitioningKD, selection="unsupervised")}
    made = study(tmp_path, methods=methods, tuned=["dpkd"], **ONE_CELL)
    rows = made.run(progress=False)
    assert [r["method"] for r in rows] == ["student_only", "vanilla_kd", "dpkd", "tuned_dpkd"]
    tuned = rows[-1]
    chosen = json.loads(tuned["hyperparameters"])
    assert tuned["class"] == "DataPartitioningKD" and tuned["validation"] == "own"
    assert (chosen["temperature"], chosen["alpha"]) in GRID and chosen["trials"] == 4
    searched = trials(tmp_path, "dpkd/dirichlet-alpha-0.5-seed1")
    assert set(searched) == GRID
    best = max(searched.values(), key=lambda t: float(t["val/acc"]))
    assert chosen["val_acc"] == pytest.approx(float(best["val/acc"]))  # the point the search ranked first
    recorded = json.loads((tmp_path / "study.json").read_text())["methods"]["tuned_dpkd"]
    assert recorded["class"] == "DataPartitioningKD" and recorded["method"] == "dpkd"
    assert (tmp_path / "tuning_dpkd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = (tmp_path / "summary.md").read_text()
    assert "Relative improvement of tuned_dpkd over the best untuned method" in summary
    gain = float(tuned["gain_pp"]) - float(rows[2]["gain_pp"])  # what tuning DP-KD gained on the one seed
    # every row of the cell carries its teacher's test accuracy, and the summary sets it beside the student's
    scenario = ONE_CELL["scenarios"][0]
    teacher = made.pretraining.pretrained("teacher", scenario, 1)
    data = made.config.datamodule(scenario, 1, made.config.student_party)
    data.setup("test")
    inputs = torch.stack([x for x, _ in data.test_set])
    labels = torch.tensor([int(y) for _, y in data.test_set])
    with torch.no_grad():
        expected = (teacher(inputs).argmax(1) == labels).float().mean().item()
    assert [float(row["acc_teacher"]) for row in rows] == pytest.approx([expected] * len(rows))
    gap = 100 * (expected - float(rows[0]["acc_before"]))
    assert f"| dirichlet(alpha=0.5) | 1 | {gap:+.2f} [no interval] |" in summary
    assert f"| dirichlet(alpha=0.5) | tuned_dpkd | dpkd | 1 | {gain:+.2f} [no interval] |" in summary


def double(hidden: int):
    """A network factory of a float64 MLP."""
    return lambda num_classes: MLP(in_features=64, hidden_sizes=(hidden,), num_classes=num_classes).double()


@pytest.mark.parametrize(("name", "method"), [("dpkd", DataPartitioningKD), ("dml", DeepMutualLearning)])
def test_a_batched_tuned_grid_equals_its_separate_fits_in_float64(tmp_path: Path, name: str, method) -> None:
    """Tuned DP-KD's points as batched members, tuned DML's as batched pairs: each point is its own fit."""
    options = {
        "student": double(8),
        "teacher": double(32),
        "methods": {name: method},
        "tuned": [name],
        "trainer": {"precision": "64-true"},
        **ONE_CELL,
    }
    apart = study(tmp_path / "apart", batched=False, **options).run(progress=False)
    made = study(tmp_path / "batched", **options)
    assert made.cells().batched_runs(["student_only", name, f"tuned_{name}"]) == ["student_only", name, f"tuned_{name}"]
    together = made.run(progress=False)
    assert [r["method"] for r in together] == [r["method"] for r in apart] == ["student_only", name, f"tuned_{name}"]
    searched = [trials(tmp_path / run, f"{name}/dirichlet-alpha-0.5-seed1") for run in ("apart", "batched")]
    assert set(searched[0]) == set(searched[1]) == GRID
    for point in GRID:  # each member validated as its own trial (Lightning logs a separate fit's loss in float32)
        assert float(searched[1][point]["val_loss"]) == pytest.approx(float(searched[0][point]["val_loss"]), rel=1e-6)
        assert float(searched[1][point]["val/acc"]) == pytest.approx(float(searched[0][point]["val/acc"]), abs=1e-6)
    assert [r["acc_after"] for r in together] == [r["acc_after"] for r in apart]
    alone, joint = (json.loads(rows[-1]["hyperparameters"]) for rows in (apart, together))
    assert {key: joint[key] for key in ("temperature", "alpha", "trials")} == {
        key: alone[key] for key in ("temperature", "alpha", "trials")
    }
    assert joint["val_acc"] == pytest.approx(alone["val_acc"], abs=1e-6)
    best = [
        torch.load(tmp_path / run / "tuning" / name / "dirichlet-alpha-0.5-seed1" / "best_model.pt")["state_dict"]
        for run in ("apart", "batched")
    ]
    assert set(best[0]) == set(best[1])
    assert any(key.startswith("peer.") for key in best[0]) == (name == "dml")  # DML's chosen pair: both networks
    for key, value in best[0].items():  # the chosen point's weights, as its own fit left them
        assert value.dtype == torch.float64 and (best[1][key] - value).abs().max() <= 1e-9, key


def test_tuned_dml_trains_its_points_once_validated_on_both_splits(tmp_path: Path) -> None:
    tuning = TuneOptions(grid={"temperature": [1.0, 4.0], "alpha": [0.1, 0.9]}, validation=["own", "public"])
    options = {**ONE_CELL, "tuning": tuning, "public_fraction": 0.1}
    rows = study(tmp_path, methods={"dml": DeepMutualLearning}, tuned=["dml"], **options).run(progress=False)
    assert [r["method"] for r in rows] == ["student_only", "dml", "tuned_dml", "tuned_dml_public"]
    assert [r["class"] for r in rows[2:]] == ["DeepMutualLearning"] * 2
    assert [r["validation"] for r in rows[2:]] == ["own", "public"]
    own, public = (trials(tmp_path, f"dml/dirichlet-alpha-0.5-seed1{s}") for s in ("", "-public"))
    assert set(own) == set(public) == GRID
    assert [own[p]["val_loss"] for p in sorted(GRID)] != [public[p]["val_loss"] for p in sorted(GRID)]


class NoFloats(VanillaKD):
    """A method without float arguments to search."""

    def __init__(self, student, teacher, num_classes: int) -> None:
        super().__init__(student, teacher, num_classes)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tuned": ["nope"]}, r"`tuned` names \['nope'\], which are not methods of the study: choose among \['dpkd'"),
        ({"tuned": ["dpkd", "dpkd"]}, r"`tuned` repeats \['dpkd'\]"),
        (
            {"methods": {"none": NoFloats}, "tuned": ["none"]},
            r"`tuned` lists 'none', which cannot be searched: .*NoFloats has no float argument 'temperature'.*none",
        ),
        (
            {"tuned": ["dpkd"], "tuning": TuneOptions(grid={"gamma": [0.1, 0.2]})},
            r"`tuned` lists 'dpkd', which cannot be searched: .*DataPartitioningKD has no float argument 'gamma'",
        ),
        (
            {"methods": {"kd": lambda s, t, c: VanillaKD(s, t, c)}, "tuned": ["kd"]},
            r"`tuned` lists 'kd', whose factory does not take the searched values \['alpha', 'temperature'\]",
        ),
        ({"methods": {"tuned_x": VanillaKD}}, r"`methods` must not use the name 'tuned_x'"),
    ],
)
def test_a_method_that_cannot_be_tuned_is_refused_before_any_training(
    tmp_path: Path, kwargs: dict, message: str
) -> None:
    options = {"methods": {"dpkd": DataPartitioningKD}, "tuning": SMALL_GRID, "scenarios": [IIDPartitioner()]}
    with pytest.raises(ValueError, match=message):
        study(tmp_path / "out", **{**options, **kwargs}).run(progress=False)
    assert not (tmp_path / "out").exists()


def test_kdl_study_tunes_the_methods_listed_in_tuned(tmp_path: Path) -> None:
    from kdlightning.cli import main

    grid = "--tuning.grid={temperature: [1.0, 4.0], alpha: [0.5]}"
    one = ["--seeds=[0]", "--pretrain_epochs=1", "--epochs=1", "--progress=false", "--tuned_kd=false"]
    scenario = "--scenarios=[{class_path: kdlightning.data.IIDPartitioner}]"
    main(["study", "--out", str(tmp_path), *one, scenario, grid, "--tuned=[dpkd]"])
    rows = {row["method"]: row for row in read_csv(tmp_path / "results.csv")}
    assert set(rows) == {"student_only", "vanilla_kd", "dml", "dpkd", "tuned_dpkd"}
    assert json.loads(rows["tuned_dpkd"]["hyperparameters"])["trials"] == 2


def test_a_weaker_teacher_is_its_own_pretraining_and_the_student_s_is_shared(tmp_path: Path) -> None:
    """``teacher_pretrain_epochs`` sweeps the teacher's strength: only the teacher's pre-training changes."""
    options = {
        "methods": {"vanilla_kd": VanillaKD},
        "scenarios": [IIDPartitioner()],
        "seeds": [0],
        "pretrain_epochs": 3,
    }
    strong = study(tmp_path / "strong", **options)
    weak = study(tmp_path / "weak", teacher_pretrain_epochs=1, **options)
    rows = {name: made.run(progress=False) for name, made in (("strong", strong), ("weak", weak))}
    files = {name: sorted(p.name for p in (tmp_path / name / "pretrained").iterdir()) for name in rows}
    students, teachers = (
        [[f for f in files[n] if f.startswith(role)] for n in files] for role in ("student", "teacher")
    )
    assert students[0] == students[1] and teachers[0] != teachers[1]  # the same student file, another teacher's
    weights = [made.pretraining.pretrained("teacher", IIDPartitioner(), 0).state_dict() for made in (strong, weak)]
    assert any(not torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    assert rows["strong"][0]["acc_before"] == rows["weak"][0]["acc_before"]  # the same pre-trained student
    recorded = json.loads((tmp_path / "weak" / "study.json").read_text())["settings"]
    assert recorded["teacher_pretrain_epochs"] == 1
    assert "3 pre-training epochs (1 for the teacher)" in (tmp_path / "weak" / "summary.md").read_text()
    with pytest.raises(ValueError, match="`teacher_pretrain_epochs` must be >= 1"):
        study(tmp_path / "bad", teacher_pretrain_epochs=0, **options)
