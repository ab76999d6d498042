"""`kdl study` on Weights & Biases: one offline run per row (per batched member), grouped by the study, read
back with W&B's own records (:mod:`wandb_records`)."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import pytest

from kdlightning import VanillaKD
from kdlightning.data import IIDPartitioner
from kdlightning.models import MLP
from kdlightning.reporting import read_csv
from kdlightning.study import Study

pytest.importorskip("wandb")

from wandb_records import offline_wandb, read_runs

EPOCHS = 3


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """W&B offline, every file of it under ``tmp_path``, no account."""
    return offline_wandb(tmp_path, monkeypatch)


def test_a_study_logs_one_grouped_run_per_member_and_its_summary(offline: Path) -> None:
    out = offline / "digits-wandb"
    study = Study(
        student=partial(MLP, in_features=64, hidden_sizes=(8,)),
        teacher=partial(MLP, in_features=64, hidden_sizes=(16,)),
        methods={"vanilla_kd": partial(VanillaKD, temperature=2.0, alpha=0.7)},
        tuned_kd=False,
        scenarios=[IIDPartitioner()],
        seeds=[3],
        num_parties=3,
        pretrain_epochs=1,
        epochs=EPOCHS,
        out=str(out),
        logger={"project": "kdl-test", "mode": "offline"},
    )
    rows = study.run(progress=False)
    assert {row["method"] for row in rows} == {"student_only", "vanilla_kd"}

    runs = {run.name: run for run in read_runs(out)}
    assert set(runs) == {"iid/seed3/student_only", "iid/seed3/vanilla_kd", "summary"}, sorted(runs)
    assert {run.group for run in runs.values()} == {"digits-wandb"}  # grouped by the study
    assert {run.project for run in runs.values()} == {"kdl-test"}
    assert all(run.exit_code == 0 for run in runs.values())

    results = {row["method"]: row for row in read_csv(out / "results.csv")}
    for method in ("student_only", "vanilla_kd"):
        run = runs[f"iid/seed3/{method}"]
        assert run.job_type == "study"
        config = run.config
        assert config["method"] == method
        assert (config["student"], config["teacher"]) == ("MLP", "MLP")
        assert config["partition"] == "iid" and config["seed"] == 3
        assert config["method_class"] == results[method]["class"]
        assert config["study"]["epochs"] == EPOCHS
        assert not any("_instantiator" in key for key in config)
        # each member's validation per epoch, as its own fit would log it
        accs = [row["val/acc"] for row in run.history if "val/acc" in row]
        assert len(accs) == EPOCHS and all(0.0 <= acc <= 1.0 for acc in accs)
        assert [row["epoch"] for row in run.history] == list(range(EPOCHS))
        # the summary keeps the best validation accuracy, not the last
        assert run.summary["val/acc"] == {"max": max(accs)}
        assert math.isclose(run.summary["test/acc"], float(results[method]["acc_after"]))
        assert math.isclose(run.summary["acc_before"], float(results[method]["acc_before"]))
    kd = runs["iid/seed3/vanilla_kd"].config
    assert (kd["temperature"], kd["alpha"]) == (2.0, 0.7)  # the method's hyperparameters, flat

    summary = runs["summary"]
    assert summary.job_type == "study-summary"
    tables = {
        key for key, value in summary.summary.items() if isinstance(value, dict) and value.get("_type") == "table-file"
    }
    images = {
        key for key, value in summary.summary.items() if isinstance(value, dict) and value.get("_type") == "image-file"
    }
    assert "results" in tables and any(key.startswith("summary/") for key in tables), sorted(summary.summary)
    assert "gains" in images, sorted(summary.summary)
