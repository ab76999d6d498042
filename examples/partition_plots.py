"""Plot how each partitioning strategy splits Fashion-MNIST's 60,000 training labels.

Writes one PNG per strategy (the docs' Partitioning page shows them) and prints each party's size::

    python examples/partition_plots.py --out docs/images [--parties 10] [--only shards_2 sized_linear ...]

Fashion-MNIST has no natural id (no author or source per image): for the natural partition each image is given
one of 200 simulated sources, of unequal sizes and each with a class mix of its own (see ``simulated_sources``).
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import numpy as np

from kdlightning.data import (
    DirichletPartitioner,
    FashionMNIST,
    FeatureSkewPartitioner,
    IIDPartitioner,
    InnerDirichletPartitioner,
    LabelSkewPartitioner,
    NaturalPartitioner,
    Partitioner,
    QuantitySkewPartitioner,
    ShardPartitioner,
    SizeRulePartitioner,
    plot_partition,
)


def simulated_sources(labels: np.ndarray, num_sources: int = 200, seed: int = 0) -> np.ndarray:
    """A source id per sample: source s has a weight w_s (lognormal) and a class mix m_s ~ Dirichlet(0.3); a
    sample of class c comes from source s with probability proportional to w_s * m_s[c]."""
    rng = np.random.default_rng(seed)
    weight = rng.lognormal(0.0, 1.0, num_sources)
    mix = rng.dirichlet(np.full(int(labels.max()) + 1, 0.3), num_sources)  # (S, C)
    source = np.empty(labels.size, dtype=np.int64)
    for c in np.unique(labels):
        p = weight * mix[:, c]
        source[labels == c] = rng.choice(num_sources, int((labels == c).sum()), p=p / p.sum())
    return source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("docs/images"))
    parser.add_argument("--parties", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="draw only these plots (default: all)")
    args = parser.parse_args()
    data = FashionMNIST().load()
    labels = data.train_labels
    data = dataclasses.replace(data, train_columns={"source": simulated_sources(labels)})
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
        "natural_grouped": NaturalPartitioner(column="source"),
        "featureskew_0.5": FeatureSkewPartitioner(feature="mean_intensity", strictness=0.5),
        "featureskew_1.0": FeatureSkewPartitioner(feature="mean_intensity", strictness=1.0),
    }
    # Titles too long for the figure, shortened.
    titles = {
        "labelskew_2_deterministic": "Fashion-MNIST, label_skew(2), deterministic",
        "labelskew_2_first-deterministic": "Fashion-MNIST, label_skew(2), first-deterministic",
        "innerdirichlet_0.5": f"Fashion-MNIST, inner_dirichlet(alpha=0.5), {base:,} or so per party",
        "natural_grouped": "Fashion-MNIST, natural(column=source), 200 simulated sources",
        "featureskew_0.5": "Fashion-MNIST, feature_skew(mean_intensity, strictness=0.5)",
        "featureskew_1.0": "Fashion-MNIST, feature_skew(mean_intensity, strictness=1)",
    }
    unknown = set(args.only or ()) - set(strategies)
    if unknown:
        parser.error(f"--only: unknown plots {sorted(unknown)}; known: {sorted(strategies)}")
    args.out.mkdir(parents=True, exist_ok=True)
    width = max(map(len, strategies))
    for name, partitioner in strategies.items():
        if args.only and name not in args.only:
            continue
        parts = partitioner.partition_data(data, np.arange(labels.size), args.parties, args.seed)
        title = titles.get(name, f"Fashion-MNIST, {partitioner}")
        path = plot_partition(labels, parts, args.out / f"partition_{name}.png", title=title)
        print(f"{name:>{width}}: sizes {[len(p) for p in parts]} -> {path}")


if __name__ == "__main__":
    main()
