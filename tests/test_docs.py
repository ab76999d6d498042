"""The docs work offline, and the results they show are what their committed data give."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_every_script_and_style_of_the_docs_is_served_with_them() -> None:
    config = (ROOT / "mkdocs.yml").read_text()
    block = re.search(r"^extra_javascript:\n((?:  - .*\n)+)", config, re.MULTILINE)
    assert block is not None
    scripts = [line.split("- ", 1)[1].split("#")[0].strip() for line in block[1].splitlines()]
    assert any("mathjax" in script and script.endswith(".js") for script in scripts[1:])  # after its configuration
    for script in scripts:
        assert not script.startswith(("http:", "https:", "//")), f"{script} needs the network"
        assert (ROOT / "docs" / script).is_file(), script
    assert "https://" not in (ROOT / "docs" / "javascripts" / "mathjax.js").read_text()


def test_the_shipped_study_s_summary_and_guidance_are_what_its_results_give() -> None:
    """``summary.md`` and ``guidance.md`` in the docs are generated from the committed ``results.csv``, not edited."""
    from kdlightning.reporting import read_csv, render_guidance_page, render_summary

    folder = ROOT / "docs" / "results" / "fashion_mnist_study"
    rows = read_csv(folder / "results.csv")
    # the untuned run of the method each tuned run tuned, every method tuned on both validation splits
    pairs = {
        f"tuned_{m}{s}": u for m, u in (("kd", "vanilla_kd"), ("dpkd", "dpkd"), ("dml", "dml")) for s in ("", "_public")
    }
    tuned = list(pairs)
    assert {row["method"] for row in rows} == {"student_only", "vanilla_kd", "dpkd", "dml", *tuned}
    assert len({row["seed"] for row in rows}) >= 10  # the study's conclusions need 10 seeds
    roles = {"tuned": tuned, "control": "student_only", "settings": ["temperature", "alpha"]}
    assert (folder / "guidance.md").read_text() == render_guidance_page(rows, **roles)
    summary = render_summary(rows, untuned=["vanilla_kd", "dml", "dpkd"], pairs=pairs, **roles)
    assert (folder / "summary.md").read_text().endswith(summary)


@pytest.mark.parametrize("epochs", [60, 8, 2])
def test_the_teacher_strength_summaries_are_what_their_results_give(epochs: int) -> None:
    """The digits studies beside a teacher pre-trained for fewer epochs: their committed reports, regenerated."""
    from kdlightning.reporting import read_csv, render_guidance_page, render_summary

    folder = ROOT / "docs" / "results" / "teacher_strength_digits" / f"teacher_epochs_{epochs}"
    rows = read_csv(folder / "results.csv")
    assert len({row["seed"] for row in rows}) == 10 and all(row["acc_teacher"] for row in rows)
    roles = {"tuned": ["tuned_kd"], "control": "student_only", "settings": ["temperature", "alpha"]}
    assert (folder / "guidance.md").read_text() == render_guidance_page(rows, **roles)
    summary = render_summary(rows, untuned=["vanilla_kd", "dml", "dpkd"], pairs={"tuned_kd": "vanilla_kd"}, **roles)
    assert (folder / "summary.md").read_text().endswith(summary) and "## The teacher against the student" in summary
    assert f"({epochs} for the teacher)" in (folder / "summary.md").read_text()


def test_the_teacher_sweep_table_is_what_the_three_studies_give() -> None:
    """The docs' table of the teacher's strength against what tuning gains, regenerated from the studies."""
    from kdlightning.reporting import read_csv
    from kdlightning.reporting.teachers import render_teacher_sweep

    folder = ROOT / "docs" / "results" / "teacher_strength_digits"
    studies = {f"{e} epochs": read_csv(folder / f"teacher_epochs_{e}" / "results.csv") for e in (60, 8, 2)}
    roles = {"tuned": ["tuned_kd"], "untuned": ["dml", "dpkd", "vanilla_kd"], "control": "student_only"}
    assert (folder / "sweep.md").read_text() == render_teacher_sweep(studies, **roles)
    assert (folder / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert '--8<-- "docs/results/teacher_strength_digits/sweep.md"' in (ROOT / "docs" / "study.md").read_text()


@pytest.mark.parametrize(
    ("name", "args"), [("scenarios", []), ("heterogeneous", ["--seeds=[0, 1, 2, 3, 4]"])], ids=["scenarios", "hetero"]
)
def test_the_federated_summaries_in_the_docs_are_what_their_rounds_give(tmp_path, name: str, args: list) -> None:
    """Each committed federated ``summary.md`` is generated from its ``rounds.csv`` by its config's experiment."""
    from kdlightning.federated import load_experiment
    from kdlightning.reporting import read_csv

    folder = ROOT / "docs" / "results" / "fashion_mnist_federated" / name
    config = ROOT / "configs" / "federated" / f"fashion_mnist_{name}.yaml"
    experiment = load_experiment(["-c", str(config), *args, "--out", str(tmp_path)])
    experiment.check()
    rows = read_csv(folder / "rounds.csv")
    assert len({row["seed"] for row in rows}) >= 2
    assert (folder / "summary.md").read_text() == experiment.records.summary(rows)


@pytest.mark.parametrize(
    ("fedavg", "feddf", "cells"), [("scenarios", "feddf", 25), ("heterogeneous", "feddf_heterogeneous", 3)]
)
def test_the_feddf_comparison_in_the_docs_is_what_the_two_experiments_rounds_give(
    fedavg: str, feddf: str, cells: int
) -> None:
    """A committed FedDF-against-FedAvg ``summary.md`` is generated from the two experiments' ``rounds.csv``."""
    from kdlightning.federated.comparison import StrategyComparison
    from kdlightning.reporting import read_csv

    folder = ROOT / "docs" / "results" / "fashion_mnist_federated"
    arms = ["FedAvg fresh", "FedAvg consolidated", "FedDF fresh", "FedDF consolidated"]
    runs = {
        name: [row for row in read_csv(folder / path / "rounds.csv") if f"{name} {row['start']}" in arms]
        for name, path in (("FedAvg", fedavg), ("FedDF", feddf))
    }
    pairs = [("FedDF fresh", "FedAvg fresh"), ("FedDF consolidated", "FedAvg consolidated")]
    pairs.append(("FedDF consolidated", "FedAvg fresh"))
    comparison = StrategyComparison(runs, 30, pairs=pairs)
    assert len(comparison.cells) == cells
    assert (folder / feddf / "summary.md").read_text() == comparison.summary()
