"""Time flwr-datasets' partitioners on labels from a .npy file; print one JSON object.

Runs inside its own virtualenv (``.venv-flwr``, see ``benchmarks/requirements-flwr.txt``) because
flwr-datasets 0.6.1 needs ``datasets<5`` and the project pins ``datasets==5.2.0``. It imports
nothing from kdlightning. Called by ``python -m benchmarks.partitioning``; usable alone:

    .venv-flwr/bin/python benchmarks/flwr_partition.py --labels labels.npy --parties 1000

The strategies: ``DirichletPartitioner`` and ``PathologicalPartitioner``; with ``--more`` also ``ShardPartitioner``
and ``LinearPartitioner`` (on the same labels) and ``InnerDirichletPartitioner`` (on the first ``--inner-samples``
labels into ``--inner-parties`` parties of equal size: one sample at a time in Python, it is too slow for
1,000,000); with ``--more`` and ``--columns`` (an ``.npz`` of ``natural_id`` and ``property``, one per label) also
``NaturalIdPartitioner`` and ``GroupedNaturalIdPartitioner`` (``natural_id``, ``--group-size`` ids a party) and
``ContinuousPartitioner`` (``property``, ``--strictness``), on a dataset of those columns and the labels. What is
timed, per strategy, each run on a fresh partitioner given the same ``datasets.Dataset``:

- ``index_s`` (best of ``--repeats``; with ``--calls N``, the total of N runs, each on a fresh partitioner):
  computing every party's indices. flwr does this lazily, on
  first use, in ``_determine_partition_id_to_indices_if_needed``; the public ``num_partitions``
  property triggers it without selecting rows. The natural-id partitioners' ``num_partitions`` only numbers the
  ids: their indices are computed by ``_create_partition_id_to_indices``, which ``load_partition`` calls first.
  The dataset is Arrow-formatted (``with_format("arrow")``), so flwr's ``np.array(dataset["label"])`` is a
  zero-copy read: this is flwr's best case.
- ``index_default_format_s`` (once, ``--default-format``): the same on the default-format dataset
  that ``Dataset.from_dict`` returns. With datasets 4 ``dataset["label"]`` is a lazy ``Column``
  that numpy reads element by element; ``default_column_s`` is that read alone.
- ``load_all_s`` (once, ``--load-all``): ``load_partition(i)`` for every party, the index
  computation included, on the Arrow-formatted dataset: what it takes to get every party's data
  through flwr's API.

Building the ``Dataset`` from the labels (``Dataset.from_dict``) is never timed; it is reported as
``build_s``. With ``--serve`` it first times one unit (``--calls`` index computations of each partitioner, or N
for a line ``go N``, or as many as a line ``go {"dirichlet": N, ...}`` gives each) per line read from standard
input, writing each unit's seconds as a JSON line, so that a caller interleaves its own units with flwr's in one
process's lifetime; the figures above follow when standard input closes.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np


def best_time(make: Callable[[], Any], action: Callable[[Any], Any], repeats: int, calls: int = 1) -> tuple[float, Any]:
    """Best over ``repeats`` of the wall time of ``calls`` runs of ``action(make())``; ``make`` is not timed."""
    best, last = float("inf"), None
    for _ in range(repeats):
        total = 0.0
        for _ in range(calls):
            obj = make()
            start = time.perf_counter()
            action(obj)
            total += time.perf_counter() - start
            last = obj
        best = min(best, total)
    return best, last


def check(partitioner: Any, num_parties: int) -> dict[str, Any]:
    """Untimed sanity check of flwr's split: disjoint, covering, party sizes and classes per party.

    The labels are read from the partitioner's dataset, which ``ShardPartitioner`` replaces by a sorted copy that
    its indices refer to.
    """
    labels = np.asarray(partitioner.dataset["label"])
    parts = [np.asarray(partitioner._partition_id_to_indices[i], dtype=np.int64) for i in range(num_parties)]
    everything = np.concatenate(parts)
    sizes = np.array([len(part) for part in parts])
    classes = np.array([len(np.unique(labels[part])) for part in parts])
    return {
        "disjoint": bool(np.unique(everything).size == everything.size),
        "covers_all": bool(np.array_equal(np.sort(everything), np.arange(labels.size))),
        "min_size": int(sizes.min()),
        "max_size": int(sizes.max()),
        "classes_per_party_min": int(classes.min()),
        "classes_per_party_max": int(classes.max()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", required=True, help="path of a 1-D integer .npy array")
    parser.add_argument("--parties", type=int, default=1000)
    parser.add_argument("--alpha", type=float, default=0.5)
    parser.add_argument("--classes-per-party", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--more", action="store_true", help="also shards, the linear size rule and inner Dirichlet")
    parser.add_argument("--shards-per-party", type=int, default=2)
    parser.add_argument("--inner-samples", type=int, default=100_000, help="labels inner Dirichlet splits")
    parser.add_argument("--inner-parties", type=int, default=100)
    parser.add_argument("--columns", help="with --more: .npz of natural_id and property, one per label")
    parser.add_argument("--group-size", type=int, default=10, help="ids a party of GroupedNaturalIdPartitioner")
    parser.add_argument("--strictness", type=float, default=0.5, help="ContinuousPartitioner's strictness")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs (Arrow-format dataset)")
    parser.add_argument("--calls", type=int, default=1, help="runs in one timed unit (each on a fresh partitioner)")
    parser.add_argument(
        "--serve",
        action="store_true",
        help="after the set-up, time one unit of --calls runs (N for a line 'go N', or per partitioner for a line "
        "'go {\"dirichlet\": N, ...}') of each partitioner for each line read from stdin, printing its seconds as one "
        "JSON line (a caller interleaves its own units with these)",
    )
    parser.add_argument("--default-format", action="store_true", help="also time the default-format dataset once")
    parser.add_argument("--load-all", action="store_true", help="also time load_partition for every party, once")
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    import datasets
    import flwr_datasets
    from flwr_datasets.partitioner import (
        ContinuousPartitioner,
        DirichletPartitioner,
        GroupedNaturalIdPartitioner,
        InnerDirichletPartitioner,
        LinearPartitioner,
        NaturalIdPartitioner,
        PathologicalPartitioner,
        ShardPartitioner,
    )

    labels = np.load(args.labels)
    start = time.perf_counter()
    plain = datasets.Dataset.from_dict({"label": labels})
    arrow = plain.with_format("arrow")
    inner_plain = datasets.Dataset.from_dict({"label": labels[: args.inner_samples]})
    inner_arrow = inner_plain.with_format("arrow")
    if args.more and args.columns:
        columns = np.load(args.columns)
        columns_plain = datasets.Dataset.from_dict(
            {"label": labels, "natural_id": columns["natural_id"], "property": columns["property"]}
        )
        columns_arrow = columns_plain.with_format("arrow")
    build_s = time.perf_counter() - start

    # name -> (class, its arguments); datasets_of[name]: its datasets (Arrow-formatted, default format) and parties
    settings: dict[str, tuple[Any, dict[str, Any]]] = {
        "dirichlet": (
            DirichletPartitioner,
            {
                "num_partitions": args.parties,
                "partition_by": "label",
                "alpha": args.alpha,
                "min_partition_size": 0,
                "self_balancing": False,
                "shuffle": False,
                "seed": args.seed,
            },
        ),
        "label_skew": (
            PathologicalPartitioner,
            {
                "num_partitions": args.parties,
                "partition_by": "label",
                "num_classes_per_partition": args.classes_per_party,
                "class_assignment_mode": "first-deterministic",
                "shuffle": False,
                "seed": args.seed,
            },
        ),
    }
    datasets_of = dict.fromkeys(settings, (arrow, plain, args.parties))
    if args.more:
        inner_size = args.inner_samples // args.inner_parties
        settings["shards"] = (
            ShardPartitioner,
            {
                "num_partitions": args.parties,
                "partition_by": "label",
                "num_shards_per_partition": args.shards_per_party,
                "shuffle": False,
                "seed": args.seed,
            },
        )
        settings["sized_linear"] = (LinearPartitioner, {"num_partitions": args.parties})
        settings["inner_dirichlet"] = (
            InnerDirichletPartitioner,
            {
                "partition_sizes": [inner_size] * args.inner_parties,
                "partition_by": "label",
                "alpha": args.alpha,
                "shuffle": False,
                "seed": args.seed,
            },
        )
        datasets_of["shards"] = datasets_of["sized_linear"] = (arrow, plain, args.parties)
        datasets_of["inner_dirichlet"] = (inner_arrow, inner_plain, args.inner_parties)
    if args.more and args.columns:
        num_ids = len(np.unique(columns["natural_id"]))
        settings["natural"] = (NaturalIdPartitioner, {"partition_by": "natural_id"})
        settings["natural_grouped"] = (
            GroupedNaturalIdPartitioner,
            {"partition_by": "natural_id", "group_size": args.group_size, "mode": "allow-bigger"},
        )
        settings["feature_skew"] = (
            ContinuousPartitioner,
            {
                "num_partitions": args.parties,
                "partition_by": "property",
                "strictness": args.strictness,
                "shuffle": False,
                "seed": args.seed,
            },
        )
        datasets_of["natural"] = (columns_arrow, columns_plain, num_ids)
        datasets_of["natural_grouped"] = (columns_arrow, columns_plain, num_ids // args.group_size)
        datasets_of["feature_skew"] = (columns_arrow, columns_plain, args.parties)
    results: dict[str, Any] = {
        "flwr_datasets": getattr(flwr_datasets, "__version__", "?"),
        "datasets": datasets.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "build_s": build_s,
        "repeats": args.repeats,
        "calls": args.calls,
    }
    if args.default_format:
        start = time.perf_counter()
        np.array(plain["label"])
        results["default_column_s"] = time.perf_counter() - start

    def compute_indices(partitioner: Any) -> None:
        # The num_partitions property runs _determine_partition_id_to_indices_if_needed (every
        # party's indices) without selecting any rows: the cheapest public trigger.
        assert partitioner.num_partitions >= 1
        if isinstance(partitioner, NaturalIdPartitioner | GroupedNaturalIdPartitioner):
            # there it only numbers the ids; load_partition computes the indices this way before selecting rows
            partitioner._create_partition_id_to_indices()

    def load_all(partitioner: Any) -> None:
        for partition_id in range(partitioner.num_partitions):
            partitioner.load_partition(partition_id)

    def make(name: str, dataset: Any) -> Any:
        cls, kwargs = settings[name]
        partitioner = cls(**kwargs)
        partitioner.dataset = dataset
        return partitioner

    if args.serve:
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            # "go", "go N" or 'go {"dirichlet": N, ...}'
            given = line.split(maxsplit=1)[1] if len(line.split()) > 1 else str(args.calls)
            calls = json.loads(given)
            unit = {}
            for name in settings:
                count = calls if isinstance(calls, int) else calls.get(name, args.calls)
                unit[name], _ = best_time(lambda name=name: make(name, datasets_of[name][0]), compute_indices, 1, count)
            print(json.dumps(unit), flush=True)

    for name, (cls, kwargs) in settings.items():
        fast, slow, parties = datasets_of[name]
        index_s, partitioner = best_time(lambda n=name, d=fast: make(n, d), compute_indices, args.repeats, args.calls)
        entry: dict[str, Any] = {
            "class": cls.__name__,
            "settings": {key: value for key, value in kwargs.items() if key != "partition_sizes"},
            "index_s": index_s,
            "check": check(partitioner, parties),
        }
        if "partition_sizes" in kwargs:
            entry["settings"]["partition_sizes"] = f"[{kwargs['partition_sizes'][0]}] * {parties}"
            entry["num_labels"] = fast.num_rows
        if args.default_format:
            entry["index_default_format_s"], _ = best_time(lambda n=name, d=slow: make(n, d), compute_indices, 1)
        if args.load_all:
            entry["load_all_s"], _ = best_time(lambda n=name, d=fast: make(n, d), load_all, 1)
        results[name] = entry
    print(json.dumps(results))


if __name__ == "__main__":
    main()
