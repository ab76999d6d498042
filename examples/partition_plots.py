"""Plot how each partitioning strategy splits Fashion-MNIST's 60,000 training labels.

Writes one PNG per strategy (the docs' Partitioning page shows them) and prints each party's size::

    python examples/partition_plots.py --out docs/images [--parties 10] [--only shards_2 sized_linear ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kdlightning.data import (
    DirichletPartitioner,
    FashionMNIST,
    IIDPartitioner,
    InnerDirichletPartitioner,
    LabelSkewPartitioner,
    Partitioner,
    QuantitySkewPartitioner,
    ShardPartitioner,
    SizeRulePartitioner,
    plot_partition,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--parties", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="draw only these plots (default: all)")
    args = parser.parse_args()
    labels = FashionMNIST().load().train_labels
    base, extra = divmod(len(labels), args.parties)
    equal_sizes = [base + (party < extra) for party in range(args.parties)]
    strategies: dict[str, Partitioner] = {
        "iid": IIDPartitioner(),
        "dirichlet_1.0": DirichletPartitioner(alpha=1.0),
        "dirichlet_0.5": DirichletPartitioner(alpha=0.5),
        "dirichlet_0.1": DirichletPartitioner(alpha=0.1),
        "labelskew_2": LabelSkewPartitioner(classes_per_party=2),
        "quantityskew_0.5": QuantitySkewPartitioner(beta=0.5),
        "shards_2": ShardPartitioner(shards_per_party=2),
        "labelskew_2_deterministic": LabelSkewPartitioner(classes_per_party=2, assignment="deterministic"),
        "labelskew_2_first-deterministic": LabelSkewPartitioner(classes_per_party=2, assignment="first-deterministic"),
        "sized_linear": SizeRulePartitioner(rule="linear"),
        "sized_exponential": SizeRulePartitioner(rule="exponential"),
        "innerdirichlet_0.5": InnerDirichletPartitioner(sizes=equal_sizes, alpha=0.5),
    }
    # Titles too long for the figure, shortened.
    titles = {
        "labelskew_2_deterministic": "Fashion-MNIST, label_skew(2), deterministic",
        "labelskew_2_first-deterministic": "Fashion-MNIST, label_skew(2), first-deterministic",
        "innerdirichlet_0.5": f"Fashion-MNIST, inner_dirichlet(alpha=0.5), {base:,} or so per party",
    }
    unknown = set(args.only or ()) - set(strategies)
    if unknown:
        parser.error(f"--only: unknown plots {sorted(unknown)}; known: {sorted(strategies)}")
    args.out.mkdir(parents=True, exist_ok=True)
    width = max(map(len, strategies))
    for name, partitioner in strategies.items():
        if args.only and name not in args.only:
            continue
        parts = partitioner.partition(labels, args.parties, args.seed)
        title = titles.get(name, f"Fashion-MNIST, {partitioner}")
        path = plot_partition(labels, parts, args.out / f"partition_{name}.png", title=title)
        print(f"{name:>{width}}: sizes {[len(p) for p in parts]} -> {path}")


if __name__ == "__main__":
    main()
