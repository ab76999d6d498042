"""``python -m benchmarks [--quick] [--json PATH]``: every SPEC §8 figure, measured as ratios in one run."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks import members, partitioning, training, tuning

KEYS = (
    *training.HEADLINE_KEYS,
    "dirichlet_1m_1000_s",
    "dirichlet_speedup_vs_flwr",
    "label_skew_1m_1000_s",
    "label_skew_speedup_vs_flwr",
    "grid_over_25_student_runs",
    "pruned_over_25_student_runs",
    "pruned_best_gap_pp",
    "grid_batched_over_one_run",
    "grid_batched_speedup",
    "pretraining_speedup",
    "demo_seconds",
    "fashion_study_seconds",
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batches, epochs and repeats (under 2 minutes)")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    parser.add_argument("--no-flwr", action="store_true", help="skip flwr-datasets (and its virtual environment)")
    parser.add_argument(
        "--fashion-study", type=Path, metavar="DIR", help="also time the shipped Fashion-MNIST study, its files in DIR"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    train = training.run(quick=args.quick)
    print(training.format_table(train), end="\n\n")
    parts = partitioning.run(quick=args.quick, flwr=not args.no_flwr)
    print(partitioning.format_table(parts), end="\n\n")
    search = tuning.run(quick=args.quick)
    print(tuning.format_table(search), end="\n\n")
    batched = members.run(quick=args.quick, fashion_study=args.fashion_study)
    print(members.format_table(batched), end="\n\n")
    figures = {key: source[key] for source in (train, parts, search, batched) for key in KEYS if key in source}
    met = training.targets_met(train)
    met.update(tuning.targets_met(search))
    met.update(members.targets_met(batched))
    met["dirichlet < 1 s and faster than flwr-datasets"] = bool(parts["dirichlet_target_met"])
    print("SPEC §8 targets: " + "; ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in met.items()))
    print(f"wall time {time.perf_counter() - start:.0f} s")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    **figures,
                    "targets_met": met,
                    "training": train,
                    "partitioning": parts,
                    "tuning": search,
                    "members": batched,
                },
                indent=2,
                default=str,
            )
        )
    return 0 if all(met.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
