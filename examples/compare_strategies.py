"""Read federated experiments of several server strategies side by side, seed by seed.

Each ``--run NAME=PATH`` is an experiment's ``rounds.csv`` (``kdl federate`` across scenarios and seeds, the same
clients, partitions and rounds); its starts become arms ``"NAME <start>"``. The comparison's ``summary.md`` and
``accuracy.png`` go to ``--out`` (see :class:`kdlightning.federated.comparison.StrategyComparison`).

    python examples/compare_strategies.py \
        --run FedAvg=docs/results/fashion_mnist_federated/scenarios/rounds.csv \
        --run FedDF=runs/federated/fashion_mnist_feddf/rounds.csv \
        --arms "FedAvg fresh" "FedAvg consolidated" "FedDF fresh" "FedDF consolidated" \
        --pair "FedDF fresh" "FedAvg fresh" --pair "FedDF consolidated" "FedAvg consolidated" \
        --pair "FedDF fresh" "FedAvg consolidated" --rounds 30 --out docs/results/fashion_mnist_federated/feddf
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kdlightning.federated.comparison import StrategyComparison
from kdlightning.reporting import read_csv


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", action="append", required=True, metavar="NAME=PATH", help="a strategy's rounds.csv")
    parser.add_argument("--rounds", type=int, required=True, help="the rounds every start ran")
    parser.add_argument("--arms", nargs="+", help="the arms to keep (default: every one)")
    parser.add_argument("--reference", default="FedAvg fresh", help="the arm reductions are against")
    parser.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A", "B"), help="compare A - B")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    runs = {}
    for given in args.run:
        name, _, path = given.partition("=")
        if not name or not path:
            parser.error(f"--run takes NAME=PATH, got {given!r}")
        rows = read_csv(path)
        if not rows:
            parser.error(f"--run {given}: {path} holds no rows")
        runs[name] = [r for r in rows if args.arms is None or f"{name} {r['start']}" in args.arms]
    comparison = StrategyComparison(runs, args.rounds, args.reference, [tuple(p) for p in args.pair])
    comparison.write(args.out)
    print(comparison.summary())


if __name__ == "__main__":
    main()
