"""``python -m benchmarks [--quick] [--json PATH]``: every SPEC §8 figure, as ratios of units timed in one run.

Each part runs its units interleaved over 5 (``--quick``) or 9 rounds of the same units (see
:mod:`benchmarks.measure`), and each figure with a target gets a verdict: ``met``, ``not met`` or
``within noise``. ``--quick`` keeps to about 5 minutes on 2 CPU cores and leaves out the reference
figures, the pre-training and the end-to-end demo.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from benchmarks import members, partitioning, text, training, tuning
from benchmarks.measure import as_json


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds instead of 9, no reference figures or demo")
    parser.add_argument("--json", type=Path, help="write every figure, every round's value included, to this file")
    parser.add_argument("--no-flwr", action="store_true", help="skip flwr-datasets (and its virtual environment)")
    parser.add_argument(
        "--fashion-study", type=Path, metavar="DIR", help="also time the shipped Fashion-MNIST study, its files in DIR"
    )
    args = parser.parse_args(argv)
    start = time.perf_counter()
    took: dict[str, float] = {}

    def timed_part(name: str, run: Callable[[], dict[str, Any]], table: Callable[[dict[str, Any]], str]) -> dict:
        began = time.perf_counter()
        figures = run()
        took[name] = time.perf_counter() - began
        print(f"{table(figures)}\n({name}: {took[name]:.0f} s)", end="\n\n", flush=True)
        return figures

    train = timed_part("training", lambda: training.run(quick=args.quick), training.format_table)
    on_text = timed_part("text", lambda: text.run(quick=args.quick), text.format_table)
    parts = timed_part(
        "partitioning", lambda: partitioning.run(quick=args.quick, flwr=not args.no_flwr), partitioning.format_table
    )
    search = timed_part("tuning", lambda: tuning.run(quick=args.quick), tuning.format_table)
    batched = timed_part(
        "members", lambda: members.run(quick=args.quick, fashion_study=args.fashion_study), members.format_table
    )
    verdicts = {
        **training.targets_met(train),
        **text.targets_met(on_text),
        **partitioning.targets_met(parts),
        **tuning.targets_met(search),
        **members.targets_met(batched),
    }
    print("SPEC §8 targets:")
    for name, verdict in verdicts.items():
        print(f"- {name}: {verdict}")
    seconds = time.perf_counter() - start
    print(f"wall time {seconds:.0f} s")
    if args.json:
        report = {
            "quick": args.quick,
            "wall_seconds": seconds,
            "part_seconds": took,
            "verdicts": verdicts,
            "training": train,
            "text": on_text,
            "partitioning": parts,
            "tuning": search,
            "members": batched,
        }
        args.json.write_text(json.dumps(report, indent=2, default=as_json))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
