"""Plot how each partitioning strategy splits Fashion-MNIST's 60,000 training labels.

Writes one PNG per strategy (the docs' Partitioning page shows them) and prints each party's size::

    python examples/partition_plots.py --out docs/images [--parties 10]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kdlightning.data import (
    DirichletPartitioner,
    FashionMNIST,
    IIDPartitioner,
    LabelSkewPartitioner,
    QuantitySkewPartitioner,
    plot_partition,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--parties", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    labels = FashionMNIST().load().train_labels
    strategies = {
        "iid": IIDPartitioner(),
        "dirichlet_1.0": DirichletPartitioner(alpha=1.0),
        "dirichlet_0.5": DirichletPartitioner(alpha=0.5),
        "dirichlet_0.1": DirichletPartitioner(alpha=0.1),
        "labelskew_2": LabelSkewPartitioner(classes_per_party=2),
        "quantityskew_0.5": QuantitySkewPartitioner(beta=0.5),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name, partitioner in strategies.items():
        parts = partitioner.partition(labels, args.parties, args.seed)
        path = plot_partition(labels, parts, args.out / f"partition_{name}.png", title=f"Fashion-MNIST, {partitioner}")
        print(f"{name:>18}: sizes {[len(p) for p in parts]} -> {path}")


if __name__ == "__main__":
    main()
