"""The teacher sweep: per study and scenario, the teacher's lead over the student beside what tuning gains."""

from __future__ import annotations

import pytest

from kdlightning.reporting.teachers import plot_teacher_sweep, render_teacher_sweep, teacher_sweep

ROLES = {"tuned": ["tuned_kd"], "untuned": ["vanilla_kd"], "control": "student_only"}


def study(teacher: float, tuned: tuple[float, ...]) -> list[dict]:
    """Rows of one study: two scenarios, three seeds; the student starts at 0.80, vanilla KD gains 1 pp."""
    rows = []
    for scenario in ("iid", "dirichlet(alpha=0.5)"):
        for seed, gain in enumerate(tuned):
            lead = teacher + (0.01 * seed if scenario == "iid" else 0.02 * seed)
            for method, after in (("student_only", 0.80), ("vanilla_kd", 0.81), ("tuned_kd", 0.80 + gain / 100)):
                row = {"scenario": scenario, "seed": seed, "method": method, "acc_before": 0.80}
                rows.append({**row, "acc_after": after, "acc_teacher": 0.80 + lead})
    return rows


def test_each_study_and_scenario_gives_the_teacher_s_lead_and_the_improvement_of_tuning(tmp_path) -> None:
    studies = {"strong": study(0.05, (1.0, 1.0, 1.0)), "weak": study(-0.30, (2.0, 3.0, 4.0))}
    points = teacher_sweep(studies, **ROLES)
    assert [(p.study, p.scenario) for p in points] == [
        ("strong", "iid"),
        ("strong", "dirichlet(alpha=0.5)"),
        ("weak", "iid"),
        ("weak", "dirichlet(alpha=0.5)"),
    ]
    by = {(p.study, p.scenario): p for p in points}
    assert by["strong", "iid"].gap.mean == pytest.approx(6.0)  # +5, +6, +7 pp
    assert by["weak", "dirichlet(alpha=0.5)"].gap.mean == pytest.approx(-28.0)  # -30, -28, -26 pp
    assert by["strong", "iid"].improvement.mean == pytest.approx(0.0)  # tuned KD gains what vanilla KD gains
    assert by["weak", "iid"].improvement.mean == pytest.approx(200.0)  # 100 * (3 - 1) / 1
    assert by["weak", "iid"].tuned == "tuned_kd" and by["weak", "iid"].untuned == "vanilla_kd"
    table = render_teacher_sweep(studies, **ROLES)
    assert "| strong | +6.00 [+3.52, +8.48] | +7.00 to +7.00 | +0.0% [+0.0%, +0.0%] | +0.0% [+0.0%, +0.0%] |" in table
    assert "| weak | -29.00 [-31.48, -26.52] | -28.00 to -28.00 | +200.0%" in table
    path = plot_teacher_sweep(points, tmp_path / "sweep.png", "teachers")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_study_without_teacher_accuracies_gives_no_points() -> None:
    rows = [{key: value for key, value in row.items() if key != "acc_teacher"} for row in study(0.05, (1.0, 2.0, 3.0))]
    assert teacher_sweep({"old": rows}, **ROLES) == []
    assert render_teacher_sweep({"old": rows}, **ROLES).splitlines()[-1].startswith("| old | - | - | +")
