"""Study summaries recomputed from the rows, and atomic writes."""

from __future__ import annotations

import statistics
from pathlib import Path

import pytest

from kdlightning.atomic import atomic_path, write_text_atomic
from kdlightning.reporting import add_gains, read_csv, render_summary, summarize, tuned_improvement, write_csv

AFTER = {  # (scenario, seed, method) -> accuracy after; every run starts from 0.80
    ("iid", 0, "student_only"): 0.81,
    ("iid", 0, "vanilla_kd"): 0.83,
    ("iid", 0, "tuned_kd"): 0.84,
    ("iid", 0, "dml"): 0.82,
    ("iid", 1, "student_only"): 0.82,
    ("iid", 1, "vanilla_kd"): 0.85,
    ("iid", 1, "tuned_kd"): 0.86,
    ("iid", 1, "dml"): 0.81,
    ("dirichlet(alpha=0.1)", 0, "student_only"): 0.80,
    ("dirichlet(alpha=0.1)", 0, "vanilla_kd"): 0.78,
    ("dirichlet(alpha=0.1)", 0, "tuned_kd"): 0.83,
    ("dirichlet(alpha=0.1)", 0, "dml"): 0.81,
}


def rows() -> list[dict]:
    return [
        {"scenario": s, "seed": seed, "method": m, "acc_before": 0.80, "acc_after": a}
        for (s, seed, m), a in AFTER.items()
    ]


def test_gains_and_gains_over_the_control() -> None:
    table = {(r["scenario"], r["seed"], r["method"]): r for r in add_gains(rows())}
    assert table[("iid", 1, "vanilla_kd")]["gain_pp"] == pytest.approx(5.0)
    assert table[("iid", 1, "vanilla_kd")]["gain_over_control_pp"] == pytest.approx(3.0)
    assert table[("dirichlet(alpha=0.1)", 0, "vanilla_kd")]["gain_over_control_pp"] == pytest.approx(-2.0)


def test_summary_matches_statistics_module() -> None:
    summary = summarize(add_gains(rows()))
    cell = summary[("iid", "vanilla_kd")]
    assert cell.mean == pytest.approx(statistics.mean([3.0, 5.0]))
    assert cell.std == pytest.approx(statistics.stdev([3.0, 5.0]))
    assert cell.n == 2
    assert summary[("dirichlet(alpha=0.1)", "dml")].std == 0.0


def test_tuned_improvement_over_the_best_untuned_method() -> None:
    improvement = tuned_improvement(summarize(add_gains(rows())), untuned=("vanilla_kd", "dml"))
    assert improvement["iid"] == pytest.approx(100 * (5.0 - 4.0) / 4.0)  # tuned 5.0 pp vs vanilla 4.0 pp
    assert improvement["dirichlet(alpha=0.1)"] == pytest.approx(100 * (3.0 - 1.0) / 1.0)  # vs dml 1.0 pp


def test_summary_markdown_is_recomputed_from_the_csv(tmp_path: Path) -> None:
    write_csv(tmp_path / "results.csv", add_gains(rows()))
    again = read_csv(tmp_path / "results.csv")
    assert len(again) == len(AFTER)
    text = render_summary(again, untuned=("vanilla_kd", "dml"))
    assert text == render_summary(rows(), untuned=("vanilla_kd", "dml"))
    assert "| vanilla_kd | +4.00 ± 1.41 | -2.00 ± 0.00 |" in text
    assert "IID: +25.0%" in text
    assert "Non-IID average: +200.0%" in text


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path: Path) -> None:
    target = tmp_path / "summary.md"
    write_text_atomic(target, "old")

    def killed_mid_write() -> None:
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        killed_mid_write()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.md"]


def test_failed_runs_are_counted_listed_and_left_out_of_the_statistics(tmp_path: Path) -> None:
    failed = {"scenario": "iid", "seed": 2, "method": "vanilla_kd", "acc_before": 0.80, "acc_after": None}
    failed["error"] = "FloatingPointError: Non-finite training loss at global step 3"
    failed_control = {**failed, "method": "student_only", "seed": 3}
    kept = {"scenario": "iid", "seed": 3, "method": "dml", "acc_before": 0.80, "acc_after": 0.90}
    write_csv(tmp_path / "results.csv", add_gains([*rows(), failed, failed_control, kept]))
    again = read_csv(tmp_path / "results.csv")  # failed rows read back with "" where a value is missing
    gains = add_gains(again)
    assert [r["gain_pp"] for r in gains[-3:-1]] == [None, None]
    assert gains[-1]["gain_over_control_pp"] is None  # its control failed
    assert summarize(gains)[("iid", "vanilla_kd")].n == 2  # the failed seed is left out
    text = render_summary(again, untuned=("vanilla_kd", "dml"))
    assert "| vanilla_kd | +4.00 ± 1.41 (1 failed) | -2.00 ± 0.00 |" in text
    assert "| student_only | +1.50 ± 0.71 (1 failed) |" in text
    assert "2 of 15 runs failed" in text
    assert "| iid | 2 | vanilla_kd | FloatingPointError: Non-finite training loss at global step 3 |" in text


def test_the_tuning_heatmap_frames_the_chosen_points_and_counts_them() -> None:
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from kdlightning.tuning.options import Param
    from kdlightning.tuning.reports import draw_heatmap

    space = {"model.init_args.temperature": Param((1.0, 4.0)), "model.init_args.alpha": Param((0.1, 0.5, 0.9))}
    rows = [
        {"temperature": t, "alpha": a, "state": "COMPLETE", "val_gain": 0.01 * t * a}
        for t in (1.0, 4.0)
        for a in (0.1, 0.5, 0.9)
    ]
    axes = Figure().add_subplot()
    chosen = [
        {"temperature": 4.0, "alpha": 0.5},
        {"temperature": 4.0, "alpha": 0.5},
        {"temperature": 1.0, "alpha": 0.9},
    ]
    draw_heatmap(axes, rows, space, "val/acc", chosen=chosen)
    frames = sorted((p.get_x() + 0.5, p.get_y() + 0.5) for p in axes.patches if isinstance(p, Rectangle))
    assert frames == [(1.0, 1.0), (2.0, 0.0)]  # (alpha index, temperature index) of each chosen cell
    assert "2 seeds" in [text.get_text() for text in axes.texts]


def test_the_gains_plot_names_the_data_and_the_seeds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import matplotlib.figure

    from kdlightning.reporting import plot_gains

    rows = [
        {"scenario": "iid", "seed": seed, "method": method, "acc_before": 0.5, "acc_after": 0.6 + 0.01 * seed}
        for seed in (0, 3)
        for method in ("student_only", "vanilla_kd")
    ]
    titles = []
    suptitle = matplotlib.figure.Figure.suptitle
    monkeypatch.setattr(
        matplotlib.figure.Figure, "suptitle", lambda self, text, **kw: titles.append(text) or suptitle(self, text, **kw)
    )
    plot_gains(rows, tmp_path / "gains.png", title="Digits, 5 parties")
    assert titles == ["Digits, 5 parties: accuracy gain, mean ± std over 2 seeds [0, 3]"]
    assert (tmp_path / "gains.png").read_bytes().startswith(b"\x89PNG")
