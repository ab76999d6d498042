"""Study summaries recomputed from the rows, and atomic writes."""

from __future__ import annotations

import json
import math
from collections import Counter
from pathlib import Path

import pytest

from kdlightning.atomic import atomic_path, write_text_atomic
from kdlightning.reporting import (
    add_gains,
    hyperparameters_of,
    is_failed,
    paired_gains,
    read_csv,
    render_guidance_page,
    render_summary,
    summarize,
    tuned_improvement,
    tuned_validation,
    write_csv,
)
from kdlightning.stats import bootstrap_average_improvement, rank

CONTROL = "student_only"
TUNED = ("tuned_kd", "tuned_kd_public")
UNTUNED = ("vanilla_kd", "dml", "dpkd")
SETTINGS = ("temperature", "alpha")
"""The methods of these tests' rows as a study names them, and the settings its tuned methods search."""

T_975_1 = 12.706205  # Student t quantile 0.975 with 1 degree of freedom (tables)

NO_WINNER = "none: no method beats the control here"
"""The guidance's recommendation where no method's gain over the control is shown above 0."""

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


def cells(line: str) -> list[str]:
    """The cells of a Markdown table row."""
    return [cell.strip() for cell in line.strip().strip("|").split(" | ")]


def seed_gains(rows: list[dict], scenario: str, method: str) -> list[float]:
    """The gains (pp) of ``method`` in ``scenario``, one per seed in the order of the rows."""
    gains = add_gains(rows, control=CONTROL)
    return [row["gain_pp"] for row in gains if row["scenario"] == scenario and row["method"] == method]


def test_gains_and_gains_over_the_control() -> None:
    table = {(r["scenario"], r["seed"], r["method"]): r for r in add_gains(rows(), control=CONTROL)}
    assert table[("iid", 1, "vanilla_kd")]["gain_pp"] == pytest.approx(5.0)
    assert table[("iid", 1, "vanilla_kd")]["gain_over_control_pp"] == pytest.approx(3.0)
    assert table[("dirichlet(alpha=0.1)", 0, "vanilla_kd")]["gain_over_control_pp"] == pytest.approx(-2.0)


def test_the_summary_is_a_mean_and_t_interval_over_seeds() -> None:
    summary = summarize(add_gains(rows(), control=CONTROL))
    cell = summary[("iid", "vanilla_kd")]  # gains 3 and 5: mean 4, sd sqrt(2), standard error 1
    assert cell.mean == pytest.approx(4.0)
    assert (cell.low, cell.high) == (pytest.approx(4.0 - T_975_1, abs=1e-5), pytest.approx(4.0 + T_975_1, abs=1e-5))
    assert cell.n == 2
    assert not summary[("dirichlet(alpha=0.1)", "dml")].has_bounds  # one seed


def test_the_gain_over_the_control_is_paired_by_seed() -> None:
    paired = paired_gains(rows(), control=CONTROL)
    assert ("iid", "student_only") not in paired
    result = paired[("iid", "vanilla_kd")]  # seed 0: 3 - 1 = 2; seed 1: 5 - 2 = 3
    assert result.difference.mean == pytest.approx(2.5)
    assert result.difference.high == pytest.approx(2.5 + T_975_1 * 0.5, abs=1e-5)  # sd sqrt(0.5), n 2
    assert result.p_value == pytest.approx(0.5)  # two positive differences: exact p = 2 / 2**2
    assert result.win_rate == 1.0
    assert paired[("iid", "dml")].win_rate == 0.5  # seed 0: +1 over the control; seed 1: -1


def test_tuned_improvement_over_the_best_untuned_method() -> None:
    improvement = tuned_improvement(
        add_gains(rows(), control=CONTROL), untuned=("vanilla_kd", "dml"), tuned="tuned_kd", control=CONTROL
    )
    assert improvement["iid"].best == "vanilla_kd"
    assert improvement["iid"].relative.mean == pytest.approx(100 * (5.0 - 4.0) / 4.0)  # tuned 5.0 pp vs vanilla 4.0
    assert improvement["iid"].difference.difference.mean == pytest.approx(1.0)
    low, high = improvement["iid"].relative.low, improvement["iid"].relative.high
    assert low <= 25.0 <= high
    dirichlet = improvement["dirichlet(alpha=0.1)"]
    assert dirichlet.best == "dml"
    assert dirichlet.relative.mean == pytest.approx(100 * (3.0 - 1.0) / 1.0)  # vs dml 1.0 pp
    assert not dirichlet.relative.has_bounds  # one seed
    assert tuned_improvement(rows(), tuned="absent", untuned=UNTUNED, control=CONTROL)["iid"] is None


def test_summary_markdown_is_recomputed_from_the_csv(tmp_path: Path) -> None:
    write_csv(tmp_path / "results.csv", add_gains(rows(), control=CONTROL))
    again = read_csv(tmp_path / "results.csv")
    assert len(again) == len(AFTER)
    text = render_summary(again, untuned=("vanilla_kd", "dml"), tuned=TUNED, control=CONTROL, settings=SETTINGS)
    assert text == render_summary(
        rows(), untuned=("vanilla_kd", "dml"), tuned=TUNED, control=CONTROL, settings=SETTINGS
    )
    gains = summarize(again)  # the gains read back from the CSV
    kd = gains[("iid", "vanilla_kd")]  # gains 3 and 5 pp: mean 4, standard error 1
    assert (kd.mean, kd.low, kd.high) == pytest.approx((4.0, 4.0 - T_975_1, 4.0 + T_975_1), abs=1e-5)
    assert kd.n == 2
    one_seed = gains[("dirichlet(alpha=0.1)", "vanilla_kd")]
    assert (one_seed.mean, one_seed.n, one_seed.has_bounds) == (pytest.approx(-2.0), 1, False)
    paired = paired_gains(again, control=CONTROL)
    over = paired[("iid", "vanilla_kd")]  # seed 0: 3 - 1 = 2; seed 1: 5 - 2 = 3
    difference = over.difference
    expected = (2.5, 2.5 - T_975_1 * 0.5, 2.5 + T_975_1 * 0.5)
    assert (difference.mean, difference.low, difference.high) == pytest.approx(expected, abs=1e-5)
    assert (over.n, over.p_value, over.win_rate) == (2, pytest.approx(0.5), 1.0)
    dml = paired[("iid", "dml")]  # seed 0: +1; seed 1: -1
    assert (dml.difference.mean, dml.difference.low, dml.difference.high) == pytest.approx(
        (0.0, -T_975_1, T_975_1), abs=1e-5
    )
    assert (dml.n, dml.p_value, dml.win_rate) == (2, pytest.approx(1.0), 0.5)
    improvement = tuned_improvement(again, "tuned_kd", untuned=("vanilla_kd", "dml"), control=CONTROL)
    iid = improvement["iid"]  # tuned_kd 5.0 pp against vanilla_kd's 4.0 (dml's 1.5)
    assert iid.best == "vanilla_kd"
    assert (iid.difference.difference.mean, iid.relative.mean) == pytest.approx((1.0, 25.0))
    dirichlet = improvement["dirichlet(alpha=0.1)"]  # tuned_kd 3.0 pp against dml's 1.0 (vanilla_kd's -2.0), one seed
    assert (dirichlet.best, dirichlet.relative.mean) == ("dml", pytest.approx(200.0))
    assert not dirichlet.relative.has_bounds
    assert f"| iid | vanilla_kd | {over.n} | {difference} | {over.p_value:#.3g} | {over.win_rate:.0%} |" in text


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


@pytest.mark.parametrize(
    "failure",
    [
        OSError(28, "No space left on device"),  # what Python's own writes raise
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534"),  # torch.save's
    ],
)
def test_a_write_to_a_full_device_says_so_and_keeps_the_old_file(tmp_path: Path, monkeypatch, failure) -> None:
    import shutil

    import torch

    target = tmp_path / "weights.pt"
    torch.save({"w": torch.zeros(2)}, target)
    full = shutil.disk_usage(tmp_path)._replace(free=0)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: full)

    def full_device_mid_write() -> None:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise failure

    with pytest.raises(OSError, match=rf"No space left on the device at '{tmp_path}' to write 'weights.pt'") as error:
        full_device_mid_write()
    assert error.value.errno == 28
    assert torch.equal(torch.load(target)["w"], torch.zeros(2))
    assert [p.name for p in tmp_path.iterdir()] == ["weights.pt"]
    monkeypatch.undo()  # with free space, another RuntimeError is what it was
    with pytest.raises(RuntimeError, match="killed"), atomic_path(target):
        raise RuntimeError("killed")


def test_failed_runs_are_counted_listed_and_left_out_of_the_statistics(tmp_path: Path) -> None:
    failed = {"scenario": "iid", "seed": 2, "method": "vanilla_kd", "acc_before": 0.80, "acc_after": None}
    failed["error"] = "FloatingPointError: Non-finite training loss at global step 3"
    failed_control = {**failed, "method": "student_only", "seed": 3}
    kept = {"scenario": "iid", "seed": 3, "method": "dml", "acc_before": 0.80, "acc_after": 0.90}
    write_csv(tmp_path / "results.csv", add_gains([*rows(), failed, failed_control, kept], control=CONTROL))
    again = read_csv(tmp_path / "results.csv")  # failed rows read back with "" where a value is missing
    gains = add_gains(again, control=CONTROL)
    assert [r["gain_pp"] for r in gains[-3:-1]] == [None, None]
    assert gains[-1]["gain_over_control_pp"] is None  # its control failed
    failed_runs = [r for r in again if is_failed(r)]
    assert [(r["scenario"], r["seed"], r["method"]) for r in failed_runs] == [
        ("iid", "2", "vanilla_kd"),
        ("iid", "3", "student_only"),
    ]
    summary = summarize(gains)
    kd, control = summary[("iid", "vanilla_kd")], summary[("iid", "student_only")]
    assert (kd.n, kd.mean) == (2, pytest.approx(4.0))  # the failed seed is left out
    assert (control.n, control.mean) == (2, pytest.approx(1.5))  # gains 1 and 2: standard error 0.5
    assert (control.low, control.high) == pytest.approx((1.5 - T_975_1 * 0.5, 1.5 + T_975_1 * 0.5), abs=1e-5)
    paired = paired_gains(again, control=CONTROL)
    over = paired[("iid", "vanilla_kd")]
    assert (over.n, over.difference.mean, over.win_rate) == (2, pytest.approx(2.5), 1.0)
    assert paired[("iid", "dml")].n == 2  # seed 3 of dml has no control to pair with
    assert paired[("iid", "dml")].difference.mean == pytest.approx(0.0, abs=1e-9)
    text = render_summary(again, untuned=("vanilla_kd", "dml"), tuned=TUNED, control=CONTROL, settings=SETTINGS)
    failed_in_cell = Counter((r["scenario"], r["method"]) for r in failed_runs)[("iid", "vanilla_kd")]
    assert f"| iid | vanilla_kd | {over.n} ({failed_in_cell} failed) | {over.difference} |" in text
    listed = [f"| {r['scenario']} | {r['seed']} | {r['method']} | {r['error']} |" for r in failed_runs]
    assert f"{len(failed_runs)} of {len(again)} runs failed" in text and set(listed) <= set(text.splitlines())


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
    titles, bars = [], []
    suptitle, bar = matplotlib.figure.Figure.suptitle, matplotlib.axes.Axes.bar
    monkeypatch.setattr(
        matplotlib.figure.Figure, "suptitle", lambda self, text, **kw: titles.append(text) or suptitle(self, text, **kw)
    )
    monkeypatch.setattr(
        matplotlib.axes.Axes,
        "bar",
        lambda self, x, height, *a, **kw: bars.append((height, kw["yerr"])) or bar(self, x, height, *a, **kw),
    )
    plot_gains(rows, tmp_path / "gains.png", title="Digits, 5 parties", control=CONTROL)
    assert titles == ["Digits, 5 parties: accuracy gain, mean and 95% interval over 2 seeds [0, 3]"]
    # gains 10 and 13 pp: mean 11.5, standard error 1.5; over the control 0 on both seeds
    (height, (below, above)) = bars[1]  # vanilla_kd's gain
    assert height == pytest.approx([11.5]) and below == above == pytest.approx([T_975_1 * 1.5], abs=1e-4)
    assert bars[3] == ([0.0], [[0.0], [0.0]])  # vanilla_kd over the control, paired: no spread
    assert (tmp_path / "gains.png").read_bytes().startswith(b"\x89PNG")


def study_rows(spread: float) -> list[dict]:
    """Four seeds: dpkd gains 3 pp over the control, dml 2 pp, both ± ``spread`` from seed to seed."""
    out = []
    for seed, noise in enumerate((-1.0, 1.0, -0.5, 0.5)):
        control = 1.0 + 0.3 * seed  # the seeds differ; pairing takes that out
        gains = {"student_only": control, "dpkd": control + 3.0 + spread * noise, "dml": control + 2.0 - spread * noise}
        for method, gain in gains.items():
            out.append(
                {"scenario": "iid", "seed": seed, "method": method, "acc_before": 0.5, "acc_after": 0.5 + gain / 100}
            )
    return out


@pytest.mark.parametrize("spread", [0.1, 2.0])
def test_no_clear_difference_is_said_exactly_where_the_intervals_overlap(spread: float) -> None:
    paired = paired_gains(study_rows(spread), control=CONTROL)
    top, runner = rank({m: p.difference for (_, m), p in paired.items()})
    assert (top.name, runner.name) == ("dpkd", "dml")
    assert (top.interval.mean, runner.interval.mean) == pytest.approx((3.0, 2.0))
    assert top.interval.is_evidence and runner.interval.is_evidence
    overlap = top.interval.overlaps(runner.interval)
    assert overlap == (spread == 2.0)  # the data is built so; the text must follow the intervals
    assert top.clearly_ahead_of_next == (not overlap)
    text = render_summary(study_rows(spread), tuned=TUNED, untuned=UNTUNED, control=CONTROL, settings=SETTINGS)
    ranking_line = next(line for line in text.splitlines() if line.startswith("- iid: "))
    assert ("no clear difference" in text) == overlap
    sign = "≈" if overlap else ">"
    assert ranking_line.startswith(f"- iid: {top.name} {top.interval} {sign} {runner.name} {runner.interval}")
    guidance = text.splitlines()[-1]  # the guidance table's one row
    relation = "no clear difference from" if overlap else "clearly ahead of"
    assert f"{relation} {runner.name} ({runner.interval.mean:+.2f})" in guidance


def tuned_rows(validation: bool = True) -> list[dict]:
    """Two scenarios, three seeds: tuned_kd validated on the party's own split, tuned_kd_public on a public split."""
    chosen = [(1.0, 0.1), (4.0, 0.5), (1.0, 0.1)]
    out = []
    for scenario, public_gain in (("iid", 1.0), ("dirichlet(alpha=0.1)", 4.0)):
        for seed, (temperature, alpha) in enumerate(chosen):
            gains = {
                "student_only": 1.0,
                "vanilla_kd": 1.5 + 0.1 * seed,
                "tuned_kd": 1.9 + 0.1 * seed,
                "tuned_kd_public": 1.0 + public_gain + 0.2 * seed,
            }
            for method, gain in gains.items():
                row = {"scenario": scenario, "seed": seed, "method": method, "acc_before": 0.5}
                row["acc_after"] = 0.5 + gain / 100
                if method.startswith("tuned_kd"):
                    row["hyperparameters"] = json.dumps({"temperature": temperature, "alpha": alpha, "trials": 4})
                    if validation:
                        row["validation"] = "public" if method == "tuned_kd_public" else "own"
                out.append(row)
    return out


def test_each_tuned_row_states_its_validation_and_its_improvement(tmp_path: Path) -> None:
    write_csv(tmp_path / "results.csv", tuned_rows())
    written = read_csv(tmp_path / "results.csv")
    assert [tuned_validation(written, name) for name in TUNED] == ["own", "public"]
    text = render_summary(
        written,
        untuned=("vanilla_kd", "tuned_kd_public"),
        tuned=TUNED,
        control=CONTROL,
        settings=SETTINGS,
    )
    assert "## Relative improvement of tuned_kd over the best untuned method" in text
    assert "## Relative improvement of tuned_kd_public over the best untuned method" in text
    assert "tuned_kd's search validated on own (a split of the student party's own data)." in text
    assert "tuned_kd_public's search validated on public (a labelled split held out before partitioning" in text
    # the other tuned row is no untuned method: tuned_kd is measured against vanilla_kd alone
    own = tuned_improvement(written, "tuned_kd", untuned=("vanilla_kd",), control=CONTROL)["iid"]
    assert (own.best, own.difference.n) == ("vanilla_kd", 3)
    assert (own.best_gain.mean, own.tuned_gain.mean, own.relative.mean) == pytest.approx((1.6, 2.0, 25.0))
    assert f"| iid | {own.difference.n} | {own.best} | {own.best_gain} | {own.tuned_gain} |" in text
    seeds = own.difference.n
    improvements, best = text.split("## The best tuned method against the best untuned one")
    assert f"| {seeds} | tuned_kd_public |" not in improvements and f"| {seeds} | tuned_kd |" not in improvements
    # the best of both tuned rows against vanilla_kd, the one untuned method
    assert f"| iid | {seeds} | tuned_kd_public | +2.20 [" in best and "| vanilla_kd | +1.60 [" in best
    iid = tuned_improvement(tuned_rows(), "tuned_kd_public", untuned=("vanilla_kd",), control=CONTROL)["iid"]
    assert iid.relative.mean == pytest.approx(100 * (2.2 - 1.6) / 1.6)
    assert "| tuned_kd (own validation): chosen settings | tuned_kd_public (public validation): chosen settings |" in (
        text
    )
    # only the tuned rows present are reported, and a single name is accepted
    alone = render_summary(
        [r for r in tuned_rows() if r["method"] != "tuned_kd_public"],
        tuned="tuned_kd",
        untuned=UNTUNED,
        control=CONTROL,
        settings=SETTINGS,
    )
    assert "tuned_kd_public" not in alone and "tuned_kd's search validated on own" in alone


def test_results_without_a_validation_column_were_validated_on_the_own_split() -> None:
    rows = tuned_rows(validation=False)
    assert [tuned_validation(rows, name) for name in TUNED] == ["own", "own"]
    text = render_summary(rows, tuned=TUNED, untuned=UNTUNED, control=CONTROL, settings=SETTINGS)
    assert "tuned_kd's search validated on own" in text
    assert "tuned_kd_public's search validated on own" in text


def test_the_iid_figure_and_the_non_iid_average_beside_the_median_with_intervals() -> None:
    rows = tuned_rows() + [
        {**row, "scenario": "label_skew(classes_per_party=2)"} for row in tuned_rows() if row["scenario"] == "iid"
    ]
    text = render_summary(rows, tuned=["tuned_kd"], untuned=UNTUNED, control=CONTROL, settings=SETTINGS)
    improvement = tuned_improvement(rows, "tuned_kd", untuned=UNTUNED, control=CONTROL)
    assert list(improvement) == ["iid", "dirichlet(alpha=0.1)", "label_skew(classes_per_party=2)"]
    # tuned_kd gains 2.0 pp on average against vanilla_kd's 1.6 in every scenario: +25%
    assert [result.best for result in improvement.values()] == ["vanilla_kd"] * 3
    assert [result.relative.mean for result in improvement.values()] == pytest.approx([25.0] * 3)
    data = {
        s: (seed_gains(rows, s, "tuned_kd"), {"vanilla_kd": seed_gains(rows, s, "vanilla_kd")}) for s in improvement
    }
    iid = bootstrap_average_improvement([data["iid"]])
    relative = improvement["iid"].relative
    assert (iid.mean, iid.low, iid.high) == pytest.approx((relative.mean, relative.low, relative.high))
    non_iid = [data["dirichlet(alpha=0.1)"], data["label_skew(classes_per_party=2)"]]
    mean, median = (bootstrap_average_improvement(non_iid, average) for average in ("mean", "median"))
    assert (mean.mean, median.mean, mean.n) == (pytest.approx(25.0), pytest.approx(25.0), 2)
    assert mean.low <= 25.0 <= mean.high and median.low <= 25.0 <= median.high
    assert (
        f"IID: {iid.format(1, '%')} (the study reports +16%).\n"
        f"Non-IID average: {mean.format(1, '%')}, median {median.format(1, '%')} over {mean.n} scenarios "
    ) in text


def test_guidance_recommends_the_highest_gain_over_the_control_with_the_settings_chosen_most() -> None:
    page = render_guidance_page(tuned_rows(), tuned=TUNED, control=CONTROL, settings=SETTINGS)
    lines = page.splitlines()
    assert lines[0] == "# Guidance: which method for which distribution"
    seeds = sorted({row["seed"] for row in tuned_rows()})
    assert "`kdlightning.reporting.render_guidance_page`" in page and f"{len(seeds)} seeds {seeds}" in page
    paired = paired_gains(tuned_rows(), control=CONTROL)
    ranked = {
        scenario: rank({m: p.difference for (s, m), p in paired.items() if s == scenario})
        for scenario in ("iid", "dirichlet(alpha=0.1)")
    }
    # gains over the control: iid tuned_kd_public +1.2, tuned_kd +1.0, vanilla_kd +0.6; dirichlet public +4.2
    iid = ranked["iid"]
    assert [place.name for place in iid] == ["tuned_kd_public", "tuned_kd", "vanilla_kd"]
    assert [place.interval.mean for place in iid] == pytest.approx([1.2, 1.0, 0.6])
    top, runner = iid[0], iid[1]
    assert top.interval.is_evidence and top.interval.low > 0  # recommended
    assert top.clearly_ahead_of_next is False  # its interval overlaps tuned_kd's
    result = paired[("iid", top.name)]
    assert (result.win_rate, result.n) == (1.0, len(seeds))
    dirichlet = ranked["dirichlet(alpha=0.1)"][0]
    assert (dirichlet.name, dirichlet.interval.mean) == ("tuned_kd_public", pytest.approx(4.2))
    assert dirichlet.interval.is_evidence and dirichlet.interval.low > 0 and dirichlet.clearly_ahead_of_next

    def chosen_most(method: str) -> str:  # the settings the search chose on most seeds of iid, from the rows
        points = [hyperparameters_of(r) for r in tuned_rows() if r["scenario"] == "iid" and r["method"] == method]
        (temperature, alpha), count = Counter((p["temperature"], p["alpha"]) for p in points).most_common(1)[0]
        return f"temperature {temperature:g}, alpha {alpha:g} ({count} of {len(points)} seeds)"

    how_sure = (
        f"interval above 0; no clear difference from {runner.name} ({runner.interval.mean:+.2f}); "
        f"wins {result.win_rate:.0%} of {result.n} seeds"
    )
    row = next(cells(line) for line in lines if line.startswith("| iid |"))
    recommended = f"{top.name} ({chosen_most(top.name)})"  # a recommended tuned run with the settings it chose
    assert row == ["iid", recommended, str(top.interval), how_sure, *(chosen_most(name) for name in TUNED)]
    # summary.md holds the same table
    table = [line for line in lines if line.startswith("|")]
    summary = render_summary(
        tuned_rows(), tuned=TUNED, untuned=UNTUNED, control=CONTROL, settings=SETTINGS
    ).splitlines()
    start = summary.index(table[0])
    assert summary[start : start + len(table)] == table


def test_guidance_says_when_no_method_beats_the_control() -> None:
    rows = [
        {"scenario": "iid", "seed": seed, "method": method, "acc_before": 0.5, "acc_after": after + seed / 1000}
        for seed in range(3)
        for method, after in (("student_only", 0.60), ("vanilla_kd", 0.55 - seed / 500))
    ]
    result = paired_gains(rows, control=CONTROL)[("iid", "vanilla_kd")]  # -5.0, -5.2 and -5.4 pp
    assert result.difference.mean == pytest.approx(-5.2)
    assert result.difference.is_evidence and result.difference.high < 0
    assert math.isclose(result.win_rate, 0.0) and result.n == 3
    line = render_guidance_page(rows, tuned=TUNED, control=CONTROL, settings=SETTINGS).splitlines()[-1]
    assert cells(line) == [
        "iid",
        NO_WINNER,
        f"best: vanilla_kd {result.difference}",
        f"interval below 0 (the control does better); wins {result.win_rate:.0%} of {result.n} seeds",
    ]


def _gains_rows(gains: dict[str, dict[str, list[float]]]) -> list[dict]:
    """Rows from per scenario, per method, one gain (pp) per seed; the control is ``student_only``, gaining 1 pp."""
    out = []
    for scenario, methods in gains.items():
        seeds = len(next(iter(methods.values())))
        for method, values in {"student_only": [1.0] * seeds, **methods}.items():
            out += [
                {"scenario": scenario, "seed": seed, "method": method, "acc_before": 0.5, "acc_after": 0.5 + g / 100}
                for seed, g in enumerate(values)
            ]
    return out


def test_guidance_recommends_no_method_whose_gain_over_the_control_is_not_shown_above_0() -> None:
    rows = _gains_rows(
        {
            "quantity": {  # the best mean is below the control's: -0.04 pp
                "tuned_kd": [1.1, 0.9, 1.0, 0.88, 0.92, 1.05, 0.95, 1.0, 0.9, 1.0],
                "dpkd": [0.9, 0.7, 0.8, 0.85, 0.75, 0.8, 0.9, 0.7, 0.8, 0.8],
            },
            "dirichlet": {  # above the control's on average, but its interval holds 0
                "dpkd": [1.5, 0.8, 1.6, 0.7, 1.4, 0.9, 1.3, 0.6, 1.2, 1.0],
                "dml": [1.0, 0.9, 1.1, 1.0, 0.9, 1.1, 1.0, 0.9, 1.1, 1.0],
            },
            "iid": {"dpkd": [2.0, 2.5, 1.8, 2.2, 2.4, 2.1, 1.9, 2.3, 2.0, 2.2], "dml": [1.0] * 10},
        }
    )
    paired = paired_gains(rows, control=CONTROL)
    tops = {
        scenario: rank({m: p.difference for (s, m), p in paired.items() if s == scenario})[0]
        for scenario in ("quantity", "dirichlet", "iid")
    }
    assert {s: top.name for s, top in tops.items()} == {"quantity": "tuned_kd", "dirichlet": "dpkd", "iid": "dpkd"}
    quantity, dirichlet, iid = (tops[s].interval for s in ("quantity", "dirichlet", "iid"))
    assert [quantity.mean, dirichlet.mean, iid.mean] == pytest.approx([-0.03, 0.10, 1.14])
    assert quantity.is_evidence and dirichlet.is_evidence and iid.is_evidence
    assert quantity.low < 0 < quantity.high and dirichlet.low < 0 < dirichlet.high and iid.low > 0
    page = render_guidance_page(rows, tuned=TUNED, control=CONTROL, settings=SETTINGS)
    table = {row[0]: row for row in (cells(line) for line in page.splitlines() if line.startswith("| "))}
    assert {s: [*table[s][1:3], table[s][3].split("; ")[0]] for s in tops} == {
        "quantity": [NO_WINNER, f"best: tuned_kd {quantity}", "interval includes 0"],
        "dirichlet": [NO_WINNER, f"best: dpkd {dirichlet}", "interval includes 0"],
        "iid": ["dpkd", str(iid), "interval above 0"],
    }
    assert "recommended only where that interval lies above 0 and is evidence" in page


def test_an_interval_from_two_seeds_or_without_spread_is_said_to_be_no_evidence() -> None:
    for seeds, why in ((2, "2 seeds: too few for an interval"), (3, "no spread across seeds: not evidence")):
        rows = [  # every seed: dpkd 2 pp above the control, vanilla_kd 1 pp
            {"scenario": "iid", "seed": seed, "method": method, "acc_before": 0.5, "acc_after": after + seed / 100}
            for seed in range(seeds)
            for method, after in (("student_only", 0.60), ("dpkd", 0.62), ("vanilla_kd", 0.61))
        ]
        paired = paired_gains(rows, control=CONTROL)
        top, runner = rank({m: p.difference for (_, m), p in paired.items()})
        assert (top.name, runner.name) == ("dpkd", "vanilla_kd")
        assert (top.interval.mean, top.interval.low, top.interval.high) == pytest.approx((2.0, 2.0, 2.0))
        assert (runner.interval.mean, top.interval.n) == (pytest.approx(1.0), seeds)
        assert top.interval.why_not_evidence == why and not top.interval.excludes_zero
        assert top.clearly_ahead_of_next is False  # no evidence tells the two apart
        result = paired[("iid", top.name)]
        text = render_summary(rows, tuned=[], untuned=UNTUNED, control=CONTROL, settings=SETTINGS)
        how_sure = (
            f"{why}; no clear difference from {runner.name} ({runner.interval.mean:+.2f}); "
            f"wins {result.win_rate:.0%} of {result.n} seeds"
        )
        assert cells(text.splitlines()[-1]) == ["iid", NO_WINNER, f"best: {top.name} {top.interval}", how_sure]
        ranking = next(line for line in text.splitlines() if line.startswith("- iid: "))
        assert ranking.startswith(f"- iid: {top.name} {top.interval} ({why}) ≈ {runner.name} {runner.interval}")


def test_the_average_over_a_single_non_iid_scenario_shows_that_scenario_s_interval() -> None:
    rows = [row for row in tuned_rows() if row["method"] != "tuned_kd_public"]
    scenario = "dirichlet(alpha=0.1)"
    relative = tuned_improvement(rows, "tuned_kd", untuned=UNTUNED, control=CONTROL)[scenario].relative
    assert relative.mean == pytest.approx(25.0) and relative.has_bounds and relative.low < 25.0 < relative.high
    data = (seed_gains(rows, scenario, "tuned_kd"), {"vanilla_kd": seed_gains(rows, scenario, "vanilla_kd")})
    for average in ("mean", "median"):  # the average over one scenario is that scenario's figure, with its interval
        alone = bootstrap_average_improvement([data], average)
        assert (alone.mean, alone.low, alone.high) == pytest.approx((relative.mean, relative.low, relative.high))
    text = render_summary(rows, tuned=["tuned_kd"], untuned=UNTUNED, control=CONTROL, settings=SETTINGS)
    figure = relative.format(1, "%")
    assert f"Non-IID average: {figure}, median {figure} over 1 scenario " in text
