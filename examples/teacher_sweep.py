"""Set studies beside teachers of different strength side by side: what tuning gains against the teacher's lead.

Each folder is a finished ``kdl study`` (the same student and seeds, another teacher: e.g. made with
``--teacher_pretrain_epochs``). Writes ``sweep.md`` (a table per study) and ``sweep.png`` (the improvement of the
best tuned run over the best untuned method against the teacher's lead, per study and scenario) into ``--out``::

    python examples/teacher_sweep.py docs/results/teacher_strength_digits/teacher_epochs_{60,8,2} \
        --out docs/results/teacher_strength_digits
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kdlightning.atomic import write_text_atomic
from kdlightning.reporting import read_csv
from kdlightning.reporting.teachers import plot_teacher_sweep, render_teacher_sweep, teacher_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("studies", type=Path, nargs="+", help="the studies' --out folders, in the table's order")
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    studies, tuned, untuned, controls = {}, set(), set(), set()
    for folder in args.studies:
        record = json.loads((folder / "study.json").read_text())
        controls.add(record["settings"]["control"])
        epochs = record["settings"].get("teacher_pretrain_epochs") or record["settings"]["pretrain_epochs"]
        studies[f"{epochs} epochs"] = read_csv(folder / "results.csv")
        for name, method in record["methods"].items():
            (tuned if "tuning" in method else untuned).add(name)
    if len(controls) != 1:
        parser.error(f"the studies have different controls {sorted(controls)}: compare studies of one control")
    (control,) = controls
    untuned.discard(control)
    roles = {"tuned": sorted(tuned), "untuned": sorted(untuned), "control": control}
    write_text_atomic(args.out / "sweep.md", render_teacher_sweep(studies, **roles))
    plot_teacher_sweep(teacher_sweep(studies, **roles), args.out / "sweep.png", "the teacher pre-trained for")
    print((args.out / "sweep.md").read_text(), end="")


if __name__ == "__main__":
    main()
