"""Property tests for the partitioners: every split is disjoint, covering, sorted and seeded."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from test_layers import LAYERS

from kdlightning.data import partitioners as P
from kdlightning.data.partition_sizes import inner_dirichlet, sized
from kdlightning.data.partitioners import dirichlet, iid, label_skew, partition_stats, plot_partition, quantity_skew
from kdlightning.data.shards import shards
from kdlightning.data.strategies import (
    DirichletPartitioner,
    IIDPartitioner,
    LabelSkewPartitioner,
    Partitioner,
    QuantitySkewPartitioner,
)

MODULE_PATH = Path(P.__file__)
NUM_CLASSES = 10

Split = Callable[[np.ndarray, int, int], list[np.ndarray]]


def label_skew_split(k: int) -> Split:
    def split(labels: np.ndarray, parties: int, seed: int) -> list[np.ndarray]:
        return label_skew(labels, parties, k, seed)

    split.min_parties = -(-NUM_CLASSES // k)  # type: ignore[attr-defined]  # every class needs a holder
    return split


# name -> split(labels, num_parties, seed), one per strategy and a few settings of each.
SPLITS: dict[str, Split] = {
    "iid": lambda labels, parties, seed: iid(labels, parties, seed),
    "dirichlet(0.1)": lambda labels, parties, seed: dirichlet(labels, parties, 0.1, seed),
    "dirichlet(0.5)": lambda labels, parties, seed: dirichlet(labels, parties, 0.5, seed),
    "dirichlet(100)": lambda labels, parties, seed: dirichlet(labels, parties, 100.0, seed),
    "label_skew(1)": label_skew_split(1),
    "label_skew(2)": label_skew_split(2),
    "label_skew(3)": label_skew_split(3),
    "quantity_skew(0.5)": lambda labels, parties, seed: quantity_skew(labels, parties, 0.5, seed),
    "quantity_skew(5)": lambda labels, parties, seed: quantity_skew(labels, parties, 5.0, seed),
}
all_splits = pytest.mark.parametrize("split", list(SPLITS.values()), ids=list(SPLITS))


def make_labels(n: int = 5000, num_classes: int = NUM_CLASSES, seed: int = 0) -> np.ndarray:
    """Imbalanced labels in random order: class c has weight c + 1."""
    weights = np.arange(1, num_classes + 1, dtype=float)
    return np.random.default_rng(seed).choice(num_classes, size=n, p=weights / weights.sum())


def balanced_labels(n: int, num_classes: int = NUM_CLASSES, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.arange(n) % num_classes)


def assert_valid(parts: list[np.ndarray], n: int, num_parties: int) -> None:
    assert isinstance(parts, list) and len(parts) == num_parties
    for part in parts:
        assert isinstance(part, np.ndarray) and part.dtype == np.int64 and part.ndim == 1
        assert np.all(np.diff(part) > 0), "indices must be strictly increasing (sorted, no repeats)"
    everything = np.concatenate(parts)
    assert everything.size == n, "parts overlap or miss samples"
    assert np.array_equal(np.sort(everything), np.arange(n)), "parts must cover range(N) exactly once"


def same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def shares(labels: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
    """Per-party class shares, shape (P, C)."""
    counts = partition_stats(labels, parts, num_classes=NUM_CLASSES)
    return counts / counts.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------
# Properties every partitioner has
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("split", "num_parties"),
    [
        pytest.param(split, num_parties, id=f"{name}-{num_parties}")
        for name, split in SPLITS.items()
        for num_parties in (1, 3, 10, 40)
        # label skew needs num_parties * classes_per_party >= num_classes (tested under bad input)
        if num_parties >= getattr(split, "min_parties", 1)
    ],
)
def test_disjoint_covering_sorted(split: Split, num_parties: int) -> None:
    labels = make_labels()
    assert_valid(split(labels, num_parties, 0), labels.size, num_parties)


@all_splits
def test_large_split_is_valid(split: Split) -> None:
    labels = make_labels(200_000, seed=1)
    assert_valid(split(labels, 1000, 3), labels.size, 1000)


@pytest.mark.parametrize(
    "split",
    [
        lambda labels, parties, seed: iid(labels, parties, seed),
        lambda labels, parties, seed: dirichlet(labels, parties, 1.0, seed, min_size=0),
        lambda labels, parties, seed: quantity_skew(labels, parties, 1.0, seed),
    ],
    ids=["iid", "dirichlet", "quantity_skew"],
)
def test_more_parties_than_uint16(split: Split) -> None:
    """Party ids above 65,535 take the int64 path."""
    labels = make_labels(140_000)
    assert_valid(split(labels, 70_000, 0), labels.size, 70_000)


@all_splits
def test_same_seed_same_split_other_seed_other_split(split: Split) -> None:
    labels = make_labels()
    first = split(labels, 10, 7)
    assert same(first, split(labels.copy(), 10, 7))
    assert not same(first, split(labels, 10, 8))


@all_splits
def test_independent_of_call_order_and_global_rng(split: Split) -> None:
    """flwr's consistency check: asking for other splits first, or reseeding numpy, changes nothing."""
    labels = make_labels()
    np.random.seed(1)
    first = split(labels, 10, 0)
    for other in SPLITS.values():
        other(labels, 12, 5)
    np.random.seed(2)
    np.random.random(1000)
    assert same(first, split(labels, 10, 0))


@all_splits
def test_invariant_to_label_dtype_container_and_monotone_relabelling(split: Split) -> None:
    labels = make_labels(2000)
    reference = split(labels, 11, 0)
    assert same(reference, split(labels.astype(np.uint8), 11, 0))
    assert same(reference, split(labels.astype(np.int32).tolist(), 11, 0))  # type: ignore[arg-type]
    # Renaming classes while keeping their order (and leaving gaps) gives the same split.
    assert same(reference, split(labels * 7 + 3, 11, 0))
    assert same(reference, split(labels.astype(np.uint64), 11, 0))
    assert same(reference, split(labels * 10**12 + 5, 11, 0))  # sparse ids far beyond N


@all_splits
def test_samples_are_drawn_at_random_not_in_dataset_order(split: Split) -> None:
    """On class-sorted data, a party's share of a class is scattered through it, not a contiguous run."""
    labels = np.sort(make_labels())
    for part in split(labels, 10, 0):
        for c in np.unique(labels[part]):
            mine = part[labels[part] == c]
            if 2 <= mine.size < (labels == c).sum():
                assert mine[-1] - mine[0] + 1 > mine.size, f"class {c} went to a party as one contiguous block"


def _digest(parts: list[np.ndarray]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.tobytes() + b"|")
    return digest.hexdigest()


def test_same_split_in_another_process() -> None:
    """Every DDP rank computes the split itself; it must match bit for bit."""
    labels = make_labels()
    here = [
        _digest(dirichlet(labels, 10, 0.3, 11)),
        _digest(label_skew(labels, 10, 2, 11)),
        _digest(quantity_skew(labels, 10, 0.3, 11)),
        _digest(iid(labels, 10, 11)),
        _digest(shards(labels, 10, 2, 11)),
        _digest(label_skew(labels, 10, 2, 11, "first-deterministic")),
        _digest(sized(labels, 10, "square", 11)),
        _digest(inner_dirichlet(labels, 10, [500] * 10, 0.3, 11)),
    ]
    script = (
        BARE_DATA_PACKAGE
        + """
import hashlib
import numpy as np
from kdlightning.data import partitioners as module
from kdlightning.data.partition_sizes import inner_dirichlet, sized
from kdlightning.data.shards import shards
weights = np.arange(1, 11, dtype=float)
labels = np.random.default_rng(0).choice(10, size=5000, p=weights / weights.sum())
def digest(parts):
    h = hashlib.sha256()
    for part in parts:
        h.update(part.tobytes() + b"|")
    return h.hexdigest()
print(digest(module.dirichlet(labels, 10, 0.3, 11)))
print(digest(module.label_skew(labels, 10, 2, 11)))
print(digest(module.quantity_skew(labels, 10, 0.3, 11)))
print(digest(module.iid(labels, 10, 11)))
print(digest(shards(labels, 10, 2, 11)))
print(digest(module.label_skew(labels, 10, 2, 11, "first-deterministic")))
print(digest(sized(labels, 10, "square", 11)))
print(digest(inner_dirichlet(labels, 10, [500] * 10, 0.3, 11)))
"""
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert out.stdout.split() == here


PARTITION_MODULES = tuple(name for name in LAYERS[0] if name.startswith("kdlightning.data."))
"""The partitioning core: numpy only."""

BARE_DATA_PACKAGE = f"""
import importlib, sys, types
package = types.ModuleType("kdlightning.data")  # without its __init__, which imports the datamodules (torch)
package.__path__ = [{str(MODULE_PATH.parent)!r}]
sys.modules["kdlightning.data"] = package
"""
"""Script lines that let a subprocess import the partition modules alone."""


def test_module_imports_numpy_only() -> None:
    """The partitioning core is pure numpy: loading it pulls in neither torch, Lightning nor matplotlib, and of
    kdlightning only its (lazy) root, its errors, its atomic writes and the partition modules themselves."""
    script = (
        BARE_DATA_PACKAGE
        + f"""
for name in {PARTITION_MODULES!r}:
    importlib.import_module(name)
heavy = sorted(m for m in ("torch", "lightning", "matplotlib") if m in sys.modules)
ours = sorted(m for m in sys.modules if m.split(".")[0] == "kdlightning")
print(",".join(heavy) + "|" + ",".join(ours))
"""
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    heavy, ours = out.stdout.strip().split("|")
    assert heavy == ""
    assert set(PARTITION_MODULES) <= set(ours.split(","))
    assert set(ours.split(",")) <= {
        "kdlightning",
        "kdlightning.errors",
        "kdlightning.atomic",
        "kdlightning.data",
        *PARTITION_MODULES,
    }


# --------------------------------------------------------------------------------------------
# Strategy-specific properties
# --------------------------------------------------------------------------------------------


def test_iid_sizes_equal_and_label_histograms_near_uniform() -> None:
    labels = balanced_labels(20_000)
    parts = iid(labels, 10, 0)
    sizes = np.array([len(part) for part in parts])
    assert sizes.max() - sizes.min() <= 1
    # 2,000 samples per party: a class share's standard deviation is about 0.0067.
    assert np.abs(shares(labels, parts) - 0.1).max() < 0.04


def test_iid_uneven_sizes_differ_by_one() -> None:
    parts = iid(np.zeros(103, dtype=int), 10, 0)
    assert sorted({len(part) for part in parts}) == [10, 11]


@pytest.mark.parametrize(("num_parties", "k"), [(3, 4), (5, 2), (10, 1), (10, 2), (37, 3), (200, 2), (4, 10)])
def test_label_skew_exactly_k_classes_and_every_class_held(num_parties: int, k: int) -> None:
    labels = make_labels(20_000)
    parts = label_skew(labels, num_parties, k, seed=4)
    assert_valid(parts, labels.size, num_parties)
    counts = partition_stats(labels, parts, num_classes=NUM_CLASSES)
    assert np.all((counts > 0).sum(axis=1) == k)
    assert np.all((counts > 0).sum(axis=0) >= 1)
    # A class's samples are split evenly among the parties holding it.
    for c in range(NUM_CLASSES):
        held = counts[:, c][counts[:, c] > 0]
        assert held.max() - held.min() <= 1


def test_label_skew_class_sets_vary() -> None:
    labels = make_labels()
    parts = label_skew(labels, 50, 2, seed=0)
    sets = {tuple(np.unique(labels[part])) for part in parts}
    assert len(sets) > 10


def test_dirichlet_tends_to_iid_as_alpha_grows() -> None:
    labels = balanced_labels(50_000)
    near_iid = shares(labels, dirichlet(labels, 10, 1e4, seed=0))
    assert np.abs(near_iid - 0.1).max() < 0.01


def test_dirichlet_is_skewed_for_small_alpha() -> None:
    labels = balanced_labels(50_000)
    skewed = shares(labels, dirichlet(labels, 10, 0.05, seed=0))
    moderate = shares(labels, dirichlet(labels, 10, 1.0, seed=0))
    # With alpha = 0.05 a typical party is dominated by one class.
    assert np.median(skewed.max(axis=1)) > 0.5
    assert np.median(skewed.max(axis=1)) > np.median(moderate.max(axis=1)) > 0.1


def test_dirichlet_respects_min_size() -> None:
    labels = make_labels(3000)
    parts = dirichlet(labels, 30, 0.2, seed=0, min_size=20)
    assert min(len(part) for part in parts) >= 20


@pytest.mark.parametrize("max_retries", [0, 5])
def test_dirichlet_bounded_redraw_raises(max_retries: int) -> None:
    labels = make_labels(1000)
    with pytest.raises(ValueError, match=r"alpha=0\.01.*min_size=30|min_size=30.*alpha=0\.01") as info:
        dirichlet(labels, 30, 0.01, seed=0, min_size=30, max_retries=max_retries)
    assert f"{max_retries + 1}" in str(info.value)
    assert "sizes" in str(info.value)


def test_quantity_skew_iid_labels_unequal_sizes() -> None:
    labels = balanced_labels(100_000)
    parts = quantity_skew(labels, 20, 0.5, seed=0)
    sizes = np.array([len(part) for part in parts])
    assert sizes.min() >= 1
    assert sizes.std() / sizes.mean() > 0.3
    # Every party big enough to measure has the global (uniform) class mix.
    big = [part for part in parts if len(part) >= 2000]
    assert big
    assert np.abs(shares(labels, big) - 0.1).max() < 0.05


def test_quantity_skew_large_beta_near_equal_and_tiny_beta_never_empty() -> None:
    labels = make_labels(100_000)
    sizes = np.array([len(part) for part in quantity_skew(labels, 10, 1e4, seed=0)])
    assert np.abs(sizes / sizes.mean() - 1).max() < 0.05
    tiny = quantity_skew(labels, 1000, 0.01, seed=0)
    assert min(len(part) for part in tiny) >= 1


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------

LABELS = make_labels(100)


@pytest.mark.parametrize(
    ("call", "argument"),
    [
        (lambda: iid(LABELS, 0, 0), "num_parties"),
        (lambda: dirichlet(LABELS, -1, 0.5, 0), "num_parties"),
        (lambda: label_skew(LABELS, 0, 2, 0), "num_parties"),
        (lambda: quantity_skew(LABELS, 0, 0.5, 0), "num_parties"),
        (lambda: iid(LABELS, 101, 0), "num_parties"),
        (lambda: quantity_skew(LABELS, 101, 0.5, 0), "num_parties"),
        (lambda: iid(LABELS, 2.5, 0), "num_parties"),
        (lambda: dirichlet(LABELS, 5, 0.0, 0), "alpha"),
        (lambda: dirichlet(LABELS, 5, -0.5, 0), "alpha"),
        (lambda: dirichlet(LABELS, 5, float("inf"), 0), "alpha"),
        (lambda: dirichlet(LABELS, 5, 0.5, 0, min_size=-1), "min_size"),
        (lambda: dirichlet(LABELS, 5, 0.5, 0, min_size=21), "min_size"),
        (lambda: dirichlet(LABELS, 5, 0.5, 0, max_retries=-1), "max_retries"),
        (lambda: quantity_skew(LABELS, 5, 0.0, 0), "beta"),
        (lambda: label_skew(LABELS, 5, 11, 0), "classes_per_party"),
        (lambda: label_skew(LABELS, 5, 0, 0), "classes_per_party"),
        (lambda: label_skew(LABELS, 4, 2, 0), "num_parties \\* classes_per_party"),
        (lambda: label_skew(np.repeat([0, 1], 3), 6, 2, 0), "num_parties"),
        (lambda: iid(LABELS, 5, -1), "seed"),
        (lambda: iid(LABELS.reshape(10, 10), 5, 0), "labels"),
        (lambda: iid(LABELS.astype(float), 5, 0), "labels"),
        (lambda: iid(LABELS - 1, 5, 0), "labels"),
        (lambda: iid(np.array([], dtype=int), 1, 0), "labels"),
        (lambda: partition_stats(LABELS, [np.arange(100)], num_classes=5), "num_classes"),
        (lambda: partition_stats(LABELS, []), "parts"),
        (lambda: DirichletPartitioner(alpha=0), "alpha"),
        (lambda: DirichletPartitioner(alpha=0.5, min_size=-2), "min_size"),
        (lambda: LabelSkewPartitioner(classes_per_party=0), "classes_per_party"),
        (lambda: LabelSkewPartitioner(classes_per_party=1.5), "classes_per_party"),
        (lambda: QuantitySkewPartitioner(beta=-1), "beta"),
        (lambda: QuantitySkewPartitioner(beta="big"), "beta"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call: Callable[[], object], argument: str) -> None:
    with pytest.raises(ValueError, match=argument):
        call()


def test_error_messages_give_the_allowed_range() -> None:
    with pytest.raises(ValueError, match=r"`iid\(num_parties=\.\.\.\)` must be an integer \[1, 100\]"):
        iid(LABELS, 0, 0)
    with pytest.raises(ValueError, match=r"`label_skew\(classes_per_party=\.\.\.\)` must be an integer \[1, 10\]"):
        label_skew(LABELS, 5, 11, 0)
    with pytest.raises(ValueError, match=r"`partitioner\.alpha` must be a finite number > 0"):
        DirichletPartitioner(alpha=-1.0)


@pytest.mark.parametrize(
    ("call", "named"),
    [
        (lambda: DirichletPartitioner(alpha=0), "`partitioner.alpha` must be a finite number > 0 (the Dirichlet"),
        (lambda: DirichletPartitioner(alpha=0.5, min_size=-1), "`partitioner.min_size` must be an integer >= 0"),
        (lambda: QuantitySkewPartitioner(beta=0), "`partitioner.beta` must be a finite number > 0 (the Dirichlet"),
        (lambda: LabelSkewPartitioner(classes_per_party=0), "`partitioner.classes_per_party` must be an integer >= 1"),
        (
            lambda: LabelSkewPartitioner(classes_per_party=11).partition(LABELS, 5, 0),
            "`partitioner.classes_per_party` must be an integer [1, 10]",
        ),
        (
            lambda: LabelSkewPartitioner(classes_per_party=2).partition(LABELS, 4, 0),
            "num_parties * partitioner.classes_per_party must be >=",
        ),
        (
            lambda: DirichletPartitioner(alpha=0.5, min_size=21).partition(LABELS, 5, 0),
            "`partitioner.min_size` must be in [0, N // num_parties = 20]",
        ),
        (lambda: IIDPartitioner().partition(LABELS, 0, 0), "`num_parties` must be an integer [1, 100]"),
        (lambda: dirichlet(LABELS, 5, 0.0, 0), "`dirichlet(alpha=...)` must be a finite number > 0 (the Dirichlet"),
        (lambda: dirichlet(LABELS, 5, 0.5, 0, min_size=-1), "`dirichlet(min_size=...)` must be an integer >= 0"),
        (lambda: quantity_skew(LABELS, 5, 0.0, 0), "`quantity_skew(beta=...)` must be a finite number > 0"),
        (lambda: label_skew(LABELS, 5, 0, 0), "`label_skew(classes_per_party=...)` must be an integer [1, 10]"),
        (lambda: quantity_skew(LABELS, 0, 0.5, 0), "`quantity_skew(num_parties=...)` must be an integer [1, 100]"),
        (lambda: iid(LABELS, 5, -1), "`iid(seed=...)` must be an integer >= 0"),
        (lambda: partition_stats(LABELS, []), "`partition_stats(parts=...)` must hold"),
    ],
)
def test_errors_name_a_partitions_arguments_as_the_user_gives_them(call: Callable[[], object], named: str) -> None:
    """A partition's ``alpha`` is not KD's: a strategy class names its own parameters as a config gives them
    (``partitioner.alpha``), a function names its keywords (``dirichlet(alpha=...)``)."""
    with pytest.raises(ValueError, match=re.escape(named)):
        call()


def test_a_strategy_classs_failed_redraws_name_its_config_keys() -> None:
    with pytest.raises(ValueError, match=r"^DirichletPartitioner: no draw in 101 .* partitioner\.min_size=30") as info:
        DirichletPartitioner(alpha=0.01, min_size=30).partition(make_labels(1000), 30, 0)
    assert "partitioner.alpha=0.01" in str(info.value) and "max_retries" not in str(info.value)
    with pytest.raises(ValueError, match=r"^dirichlet: .*or raise max_retries\.$"):
        dirichlet(make_labels(1000), 30, 0.01, seed=0, min_size=30)


# --------------------------------------------------------------------------------------------
# Classes, statistics, plots
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("partitioner", "function", "name"),
    [
        (IIDPartitioner(), lambda labels, p, s: iid(labels, p, s), "iid"),
        (DirichletPartitioner(alpha=0.5), lambda labels, p, s: dirichlet(labels, p, 0.5, s), "dirichlet(alpha=0.5)"),
        (
            DirichletPartitioner(alpha=2, min_size=10),
            lambda labels, p, s: dirichlet(labels, p, 2.0, s, min_size=10),
            "dirichlet(alpha=2, min_size=10)",
        ),
        (
            LabelSkewPartitioner(classes_per_party=2),
            lambda labels, p, s: label_skew(labels, p, 2, s),
            "label_skew(classes_per_party=2)",
        ),
        (
            QuantitySkewPartitioner(beta=0.5),
            lambda labels, p, s: quantity_skew(labels, p, 0.5, s),
            "quantity_skew(beta=0.5)",
        ),
    ],
    ids=lambda value: value.name if isinstance(value, Partitioner) else "",
)
def test_classes_delegate_to_the_functions(partitioner: Partitioner, function: Split, name: str) -> None:
    labels = make_labels()
    assert same(partitioner.partition(labels, 12, 3), function(labels, 12, 3))
    assert partitioner.name == name == str(partitioner)
    assert name in repr(partitioner)


def test_partitioner_is_abstract() -> None:
    with pytest.raises(TypeError):
        Partitioner()  # type: ignore[abstract]


@pytest.mark.parametrize("module", ["kdlightning.data", "kdlightning.data.strategies"])
def test_classes_build_from_a_config(module: str) -> None:
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser()
    parser.add_argument("--partitioner", type=Partitioner)
    config = parser.parse_args(
        [f'--partitioner={{"class_path": "{module}.DirichletPartitioner", "init_args": {{"alpha": 0.3}}}}']
    )
    partitioner = parser.instantiate_classes(config).partitioner
    assert isinstance(partitioner, DirichletPartitioner)
    assert partitioner.name == "dirichlet(alpha=0.3)"


def test_partition_stats_hand_made() -> None:
    labels = np.array([0, 1, 1, 2, 2, 2, 0, 3])
    parts = [np.array([0, 1, 2]), np.array([3, 4]), np.array([5, 6, 7])]
    expected = np.array([[1, 2, 0, 0], [0, 0, 2, 0], [1, 0, 1, 1]])
    counts = partition_stats(labels, parts)
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(counts, expected)
    wider = partition_stats(labels, parts, num_classes=6)
    assert wider.shape == (3, 6)
    np.testing.assert_array_equal(wider[:, :4], expected)
    assert not wider[:, 4:].any()


@all_splits
def test_partition_stats_sums_to_class_sizes(split: Split) -> None:
    labels = make_labels()
    counts = partition_stats(labels, split(labels, 13, 0))
    np.testing.assert_array_equal(counts.sum(axis=0), np.bincount(labels))


@pytest.mark.parametrize("num_parties", [5, 150])
def test_plot_partition_writes_png(tmp_path: Path, num_parties: int) -> None:
    labels = make_labels(3000)
    out = plot_partition(
        labels, dirichlet(labels, num_parties, 0.5, 0, min_size=0), tmp_path / "sub" / "plot.png", "alpha=0.5"
    )
    assert out == tmp_path / "sub" / "plot.png"
    data = out.read_bytes()
    assert len(data) > 1000 and data[:8] == b"\x89PNG\r\n\x1a\n"
