"""What `kdl study` ends with: one line per scenario (the recommended method and its gain), then the files to read."""

from __future__ import annotations

from pathlib import Path

from kdlightning.reporting import recommendations, render_guidance_page, render_guidance_text


def _rows() -> list[dict]:
    rows = []
    for seed in (0, 1, 2):
        for method, after in (("student_only", 0.60), ("dpkd", 0.62 + seed / 100), ("dml", 0.60 + seed / 200)):
            rows.append({"scenario": "iid", "seed": seed, "method": method, "acc_before": 0.5, "acc_after": after})
        for method, after in (("student_only", 0.30), ("dpkd", 0.30 - seed / 100), ("dml", 0.30 + seed / 100)):
            rows.append({"scenario": "skewed", "seed": seed, "method": method, "acc_before": 0.2, "acc_after": after})
    return rows


def test_the_terminal_table_is_the_guidance_one_line_per_scenario() -> None:
    rows = _rows()
    lines = render_guidance_text(rows, tuned=[], control="student_only").splitlines()
    assert lines[0].split() == ["scenario", "recommended", "gain", "over", "student_only", "(pp)"]
    assert len(lines) == 1 + 2  # a header, one line per scenario
    assert lines[1].split(None, 2) == ["iid", "dpkd", "+3.00 [+0.52, +5.48]"]
    assert lines[2].startswith("skewed") and "none (best: dml)" in lines[2]  # its interval includes 0
    (iid, skewed) = recommendations(rows, tuned=[], control="student_only")
    page = render_guidance_page(rows, tuned=[], control="student_only")
    assert f"| iid | dpkd | {iid.gain} |" in page  # the page's numbers
    assert skewed.method is None and f"best: dml {skewed.gain}" in page
    assert all(len(line) <= 100 for line in lines)  # fits a terminal


def test_kdl_study_ends_with_the_table_and_the_three_files(tmp_path: Path, capsys) -> None:
    from kdlightning.cli import run

    quick = ["--seeds=[0]", "--pretrain_epochs=1", "--epochs=1", "--progress=false", "--tuned_kd=false"]
    scenarios = "--scenarios=[{class_path: kdlightning.data.IIDPartitioner}]"
    methods = "--methods={vanilla_kd: {class_path: kdlightning.VanillaKD}}"
    run(["study", "--out", str(tmp_path), *quick, scenarios, methods])
    out = capsys.readouterr().out
    lines = out.rstrip().splitlines()
    assert lines[-3:] == [
        f"summary:  {tmp_path / 'summary.md'}  (every method's gain with its interval, tuned against untuned)",
        f"guidance: {tmp_path / 'guidance.md'}  (the recommendation per scenario, how sure, the tuned settings)",
        f"plot:     {tmp_path / 'gains.png'}  (the gains per method and scenario)",
    ]
    header = next(i for i, line in enumerate(lines) if line.startswith("scenario "))
    assert [line.split()[0] for line in lines[header + 1 : -4]] == ["iid"]  # one line per scenario
    assert "| scenario |" not in out and len(lines) < 15  # no Markdown tables: the files hold them
    assert all((tmp_path / name).is_file() for name in ("summary.md", "guidance.md", "gains.png"))
