"""Property tests for the shard, label-skew assignment, size-rule and inner-Dirichlet partitions, on random inputs.

Every split must be disjoint, covering, sorted ``int64`` and seeded; each strategy's own guarantee (shards per
party, classes per party, sizes) is checked exactly, and each refusal by its message.
"""

from __future__ import annotations

import itertools
import json
import re
from collections import Counter
from collections.abc import Callable

import numpy as np
import pytest
from test_partitioners import _digest, assert_valid, make_labels, same

from kdlightning.data import (
    InnerDirichletPartitioner,
    LabelSkewPartitioner,
    Partitioner,
    ShardPartitioner,
    SizeRulePartitioner,
    inner_dirichlet,
    label_skew,
    partition_stats,
    shards,
    sized,
)

SEEDS = range(6)

Split = Callable[[np.ndarray, int, int], list[np.ndarray]]


def random_labels(rng: np.random.Generator) -> np.ndarray:
    """Labels in random order: 2..12 classes of 100..600 samples each, with random sparse class ids."""
    num_classes = int(rng.integers(2, 13))
    sizes = rng.integers(100, 601, num_classes)
    ids = np.sort(rng.choice(10_000, num_classes, replace=False))  # ascending, with gaps
    return rng.permutation(np.repeat(ids, sizes))


def random_sizes(rng: np.random.Generator, total: int, parties: int) -> list[int]:
    """``parties`` random sizes >= 1 summing to ``total``."""
    return (1 + rng.multinomial(total - parties, rng.dirichlet(np.ones(parties)))).tolist()


def inner_split(alpha: float) -> Split:
    def split(labels: np.ndarray, parties: int, seed: int) -> list[np.ndarray]:
        sizes = random_sizes(np.random.default_rng(1000 + parties), len(labels), parties)
        return inner_dirichlet(labels, parties, sizes, alpha, seed)

    return split


def flwr_sizes(rule: str, parties: int, total: int) -> np.ndarray:
    """flwr-datasets 0.6.1's IdToSizeFncPartitioner arithmetic, written out from its source."""
    units = {"linear": lambda x: x, "square": np.square, "exponential": np.exp}[rule](np.linspace(1, parties, parties))
    sizes = np.array(units / units.sum() * total, dtype=np.int64)
    sizes[-1] += total - sizes.sum()
    return sizes


def most_parties(rule: str, total: int, limit: int = 40) -> int:
    """The most parties (up to ``limit``) that ``rule`` gives at least one of ``total`` samples each."""
    return max(p for p in range(1, limit + 1) if flwr_sizes(rule, p, total).min() >= 1)


# name -> (split(labels, num_parties, seed), the fewest and the most parties it takes for these labels)
SPLITS: dict[str, tuple[Split, Callable[[np.ndarray], tuple[int, int]]]] = {
    "shards(1)": (lambda labels, p, s: shards(labels, p, 1, s), lambda labels: (1, 40)),
    "shards(2)": (lambda labels, p, s: shards(labels, p, 2, s), lambda labels: (1, 40)),
    "shards(3, size=7)": (
        lambda labels, p, s: shards(labels, p, 3, s, shard_size=7),
        lambda labels: (1, min(40, len(labels) // 21)),
    ),
    # label skew's modes need enough parties for every class to be held (their refusals are tested below)
    "label_skew(2, deterministic)": (
        lambda labels, p, s: label_skew(labels, p, 2, s, "deterministic"),
        lambda labels: (len(np.unique(labels)) - 1, 25),
    ),
    "label_skew(2, first-deterministic)": (
        lambda labels, p, s: label_skew(labels, p, 2, s, "first-deterministic"),
        lambda labels: (len(np.unique(labels)), 25),
    ),
    "sized(linear)": (
        lambda labels, p, s: sized(labels, p, "linear", s),
        lambda labels: (1, most_parties("linear", len(labels))),
    ),
    "sized(square)": (
        lambda labels, p, s: sized(labels, p, "square", s),
        lambda labels: (1, most_parties("square", len(labels))),
    ),
    "sized(exponential)": (
        lambda labels, p, s: sized(labels, p, "exponential", s),
        lambda labels: (1, most_parties("exponential", len(labels))),
    ),
    "sized(given fractions)": (
        lambda labels, p, s: sized(labels, p, "given", s, sizes=np.full(p, 1 / p)),
        lambda labels: (1, 40),
    ),
    "inner_dirichlet(0.3)": (inner_split(0.3), lambda labels: (1, 40)),
    "inner_dirichlet(100)": (inner_split(100.0), lambda labels: (1, 40)),
}
"""Each new strategy, or mode, with a setting or two."""

all_splits = pytest.mark.parametrize("name", list(SPLITS))


def call(name: str, labels: np.ndarray, parties: int, seed: int) -> list[np.ndarray]:
    return SPLITS[name][0](labels, parties, seed)


def random_case(name: str, seed: int, fewest: int = 2) -> tuple[np.ndarray, int]:
    """Random labels and a random number of parties (at least ``fewest``) that ``name`` takes."""
    rng = np.random.default_rng(seed)
    labels = random_labels(rng)
    low, high = SPLITS[name][1](labels)
    return labels, int(rng.integers(max(low, fewest), max(low, high, fewest) + 1))


def parties_for(name: str) -> int:
    """A number of parties every split takes on :func:`make_labels`' 10 classes (2,000 samples or more)."""
    return 5 if name == "sized(exponential)" else 10


def sizes_of(parts: list[np.ndarray]) -> np.ndarray:
    return np.array([len(part) for part in parts])


# --------------------------------------------------------------------------------------------
# Properties every partition has
# --------------------------------------------------------------------------------------------


@all_splits
@pytest.mark.parametrize("seed", SEEDS)
def test_disjoint_covering_sorted_on_random_inputs(name: str, seed: int) -> None:
    labels, parties = random_case(name, seed, fewest=1)
    assert_valid(call(name, labels, parties, seed), labels.size, parties)


@all_splits
@pytest.mark.parametrize("seed", SEEDS)
def test_same_seed_same_split_other_seed_other_split(name: str, seed: int) -> None:
    labels, parties = random_case(name, seed)
    first = call(name, labels, parties, seed)
    assert same(first, call(name, labels.copy(), parties, seed))
    assert not same(first, call(name, labels, parties, seed + 100))


@all_splits
def test_independent_of_call_order_and_global_rng(name: str) -> None:
    labels = make_labels(3000)
    np.random.seed(1)
    first = call(name, labels, parties_for(name), 0)
    for other in SPLITS:
        call(other, labels, parties_for(other), 3)
    np.random.seed(2)
    np.random.random(1000)
    assert same(first, call(name, labels, parties_for(name), 0))


@all_splits
def test_invariant_to_label_dtype_container_and_monotone_relabelling(name: str) -> None:
    labels, parties = make_labels(2000), parties_for(name)
    reference = call(name, labels, parties, 0)
    assert same(reference, call(name, labels.astype(np.uint8), parties, 0))
    assert same(reference, call(name, labels.astype(np.int32).tolist(), parties, 0))  # type: ignore[arg-type]
    assert same(reference, call(name, labels * 7 + 3, parties, 0))
    assert same(reference, call(name, labels * 10**12 + 5, parties, 0))


@pytest.mark.parametrize("name", [name for name in SPLITS if not name.startswith("sized")])
def test_samples_are_drawn_at_random_not_in_dataset_order(name: str) -> None:
    """On class-sorted data, a party's share of a class is scattered through it, not a contiguous run."""
    labels = np.sort(make_labels(3000))
    for part in call(name, labels, parties_for(name), 0):
        for c in np.unique(labels[part]):
            mine = part[labels[part] == c]
            if 2 <= mine.size < (labels == c).sum():
                assert mine[-1] - mine[0] + 1 > mine.size, f"class {c} went to a party as one contiguous block"


def test_sized_draws_samples_at_random() -> None:
    parts = sized(np.zeros(3000, dtype=int), 5, "linear", 0)
    assert all(part[-1] - part[0] + 1 > part.size for part in parts)


def built_from_config(class_name: str, init_args: dict) -> Partitioner:
    """``kdlightning.data.<class_name>`` as a YAML config's ``partitioner`` builds it."""
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--partitioner", type=Partitioner)
    config = parser.parse_args(
        [f"--partitioner={json.dumps({'class_path': f'kdlightning.data.{class_name}', 'init_args': init_args})}"]
    )
    return parser.instantiate_classes(config).partitioner


# --------------------------------------------------------------------------------------------
# Shards
# --------------------------------------------------------------------------------------------


def shard_counts(labels: np.ndarray, size: int) -> np.ndarray:
    """Class counts of each whole shard of the label-sorted data, shape (N // size, C)."""
    ordered = np.sort(labels)
    whole = labels.size // size
    return partition_stats(ordered, list(np.arange(whole * size).reshape(whole, size)), int(labels.max()) + 1)


def decomposes(rows: np.ndarray, pieces: np.ndarray, per_party: int) -> bool:
    """Whether ``pieces`` split into groups of ``per_party``, one per row, each summing to its row (backtracking)."""
    left = Counter(map(tuple, pieces.tolist()))

    def search(i: int) -> bool:
        if i == len(rows):
            return True
        for combo in itertools.combinations_with_replacement(sorted(left), per_party):
            wanted = Counter(combo)
            if all(left[piece] >= n for piece, n in wanted.items()) and np.array_equal(np.sum(combo, axis=0), rows[i]):
                left.subtract(wanted)
                if search(i + 1):
                    return True
                left.update(wanted)
        return False

    return search(0) and not +left


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("per_party", [1, 2, 3])
def test_shards_each_party_holds_exactly_its_shards(seed: int, per_party: int) -> None:
    """With no sample left over, a party's class counts are those of ``shards_per_party`` shards, each shard dealt
    once."""
    rng = np.random.default_rng(seed)
    parties, size = int(rng.integers(2, 13)), int(rng.integers(5, 40))
    labels = rng.choice(int(rng.integers(2, 8)), size=parties * per_party * size)  # shards straddle classes
    parts = shards(labels, parties, per_party, seed)
    assert_valid(parts, labels.size, parties)
    assert np.all(sizes_of(parts) == per_party * size)
    counts = partition_stats(labels, parts, int(labels.max()) + 1)  # (P, C)
    assert decomposes(counts, shard_counts(labels, size), per_party)


@pytest.mark.parametrize("seed", SEEDS)
def test_shards_sizes_and_leftover(seed: int) -> None:
    """Each party: ``s * shard_size`` samples, plus its run of the leftover (run sizes differ by one, first longer)."""
    rng = np.random.default_rng(seed)
    labels = random_labels(rng)
    parties, per_party = int(rng.integers(1, 21)), int(rng.integers(1, 4))  # P * s <= 60 < N
    size = labels.size // (parties * per_party)
    extra = sizes_of(shards(labels, parties, per_party, seed)) - per_party * size
    left = labels.size - parties * per_party * size
    assert left < parties * per_party  # the default shard size leaves fewer than P * s over
    assert extra.sum() == left and extra.max() - extra.min() <= 1 and np.all(np.diff(extra) <= 0)
    given = int(rng.integers(1, size + 1))
    extra = sizes_of(shards(labels, parties, per_party, seed, shard_size=given)) - per_party * given
    assert extra.sum() == labels.size - parties * per_party * given
    assert extra.max() - extra.min() <= 1 and np.all(np.diff(extra) <= 0)


def test_shards_on_class_aligned_data_give_at_most_s_classes() -> None:
    """McMahan et al.'s MNIST split in small: 10 classes of 60, 20 shards of 30, 2 per party."""
    labels = np.random.default_rng(0).permutation(np.repeat(np.arange(10), 60))
    for seed in SEEDS:
        counts = partition_stats(labels, shards(labels, 10, 2, seed))
        assert np.all(counts % 30 == 0)
        assert np.all((counts > 0).sum(axis=1) <= 2)


def test_shards_are_dealt_at_random() -> None:
    labels = np.repeat(np.arange(10), 60)
    sets = {tuple(np.unique(labels[part])) for seed in SEEDS for part in shards(labels, 10, 2, seed)}
    assert len(sets) > 15


# --------------------------------------------------------------------------------------------
# Label skew's assignment modes
# --------------------------------------------------------------------------------------------


def test_label_skew_default_is_random_and_unchanged() -> None:
    """The default mode is ``"random"``, and it splits as label_skew always did (a golden digest)."""
    labels = make_labels()
    assert same(label_skew(labels, 10, 2, 11), label_skew(labels, 10, 2, 11, assignment="random"))
    assert _digest(label_skew(labels, 10, 2, 11)) == "ffa3683e90097cdcb36341ebfeb06d0a83cf43e5f28c463120cbb81c22be842e"


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("assignment", ["random", "deterministic", "first-deterministic"])
def test_label_skew_modes_give_k_classes_cover_every_class_and_split_evenly(seed: int, assignment: str) -> None:
    rng = np.random.default_rng(seed)
    labels = random_labels(rng)
    present = np.unique(labels)
    k = int(rng.integers(1, present.size + 1))
    low = {"random": -(-present.size // k), "deterministic": present.size - k + 1, "first-deterministic": present.size}
    parties = int(rng.integers(low[assignment], low[assignment] + 15))
    parts = label_skew(labels, parties, k, seed, assignment)  # type: ignore[arg-type]
    assert_valid(parts, labels.size, parties)
    counts = partition_stats(labels, parts)[:, present]  # (P, C)
    held = counts > 0
    assert np.all(held.sum(axis=1) == k) and np.all(held.any(axis=0))
    for c in range(present.size):  # even split among holders, lower party ids taking the extra samples
        mine = counts[held[:, c], c]
        assert mine.max() - mine.min() <= 1 and np.all(np.diff(mine) <= 0)
    if assignment == "deterministic":
        expected = (np.arange(parties)[:, None] + np.arange(k)) % present.size
        assert all(set(np.flatnonzero(held[p])) == set(expected[p]) for p in range(parties))
    if assignment == "first-deterministic":
        assert np.all(held[np.arange(parties), np.arange(parties) % present.size])


def test_label_skew_deterministic_sets_do_not_depend_on_the_seed_but_the_samples_do() -> None:
    labels = make_labels()
    a, b = label_skew(labels, 12, 3, 0, "deterministic"), label_skew(labels, 12, 3, 1, "deterministic")
    np.testing.assert_array_equal(partition_stats(labels, a) > 0, partition_stats(labels, b) > 0)
    assert not same(a, b)


def test_label_skew_first_deterministic_other_classes_vary() -> None:
    labels = make_labels()
    sets = {
        tuple(np.unique(labels[part]))
        for seed in SEEDS
        for part in label_skew(labels, 10, 3, seed, "first-deterministic")
    }
    assert len(sets) > 20


# --------------------------------------------------------------------------------------------
# Size rules
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("rule", ["linear", "square", "exponential"])
def test_sized_rules_are_flwrs_sizes_proportional_within_rounding(seed: int, rule: str) -> None:
    rng = np.random.default_rng(seed)
    labels = random_labels(rng)
    parties = int(rng.integers(1, most_parties(rule, labels.size, 60) + 1))
    parts = sized(labels, parties, rule, seed)  # type: ignore[arg-type]
    assert_valid(parts, labels.size, parties)
    sizes = sizes_of(parts)
    np.testing.assert_array_equal(sizes, flwr_sizes(rule, parties, labels.size))
    k = np.arange(1, parties + 1, dtype=float)
    units = {"linear": k, "square": k**2, "exponential": np.exp(k)}[rule]
    exact = units / units.sum() * labels.size
    assert np.all((sizes[:-1] <= exact[:-1]) & (exact[:-1] < sizes[:-1] + 1))  # rounded down
    assert sizes[-1] - exact[-1] < parties  # the last party takes what rounding left


@pytest.mark.parametrize("seed", SEEDS)
def test_sized_given_counts_and_fractions(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = random_labels(rng)
    parties = int(rng.integers(1, 30))
    counts = random_sizes(rng, labels.size, parties)
    np.testing.assert_array_equal(sizes_of(sized(labels, parties, "given", seed, sizes=counts)), counts)
    fractions = rng.dirichlet(np.ones(parties)) * 0.5 + 0.5 / parties  # N * fraction >= 200 * 0.5 / 29 > 1
    sizes = sizes_of(sized(labels, parties, "given", seed, sizes=fractions.tolist()))
    assert sizes.sum() == labels.size
    np.testing.assert_array_equal(sizes[:-1], np.floor(fractions[:-1] / fractions.sum() * labels.size))


def test_sized_contents_are_iid() -> None:
    labels = np.random.default_rng(0).permutation(np.arange(100_000) % 10)
    parts = sized(labels, 6, "linear", 0)
    counts = partition_stats(labels, parts)
    assert np.abs(counts / counts.sum(axis=1, keepdims=True) - 0.1).max() < 0.02


# --------------------------------------------------------------------------------------------
# Inner Dirichlet
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_inner_dirichlet_sizes_exactly_as_given(seed: int) -> None:
    rng = np.random.default_rng(seed)
    labels = random_labels(rng)
    parties = int(rng.integers(1, 40))
    sizes = random_sizes(rng, labels.size, parties)
    alpha = float(rng.choice([0.05, 0.5, 5.0]))
    parts = inner_dirichlet(labels, parties, sizes, alpha, seed)
    assert_valid(parts, labels.size, parties)
    np.testing.assert_array_equal(sizes_of(parts), sizes)


@pytest.mark.parametrize("seed", SEEDS)
def test_inner_dirichlet_with_priors_that_are_exactly_zero(seed: int) -> None:
    """With a tiny alpha most drawn priors hold exact zeros: a party whose classes run out draws by what is left."""
    rng = np.random.default_rng(seed)
    labels = random_labels(rng)
    parties = int(rng.integers(2, 40))
    sizes = random_sizes(rng, labels.size, parties)
    parts = inner_dirichlet(labels, parties, sizes, 1e-3, seed)
    assert_valid(parts, labels.size, parties)
    np.testing.assert_array_equal(sizes_of(parts), sizes)


def max_share(labels: np.ndarray, parts: list[np.ndarray]) -> float:
    counts = partition_stats(labels, parts)
    return float((counts.max(axis=1) / counts.sum(axis=1)).mean())


def test_inner_dirichlet_tends_to_iid_as_alpha_grows_and_is_skewed_for_small_alpha() -> None:
    labels = np.random.default_rng(0).permutation(np.arange(50_000) % 10)
    sizes = [5000] * 10
    near_iid = partition_stats(labels, inner_dirichlet(labels, 10, sizes, 1e4, 0)) / 5000
    assert np.abs(near_iid - 0.1).max() < 0.02
    assert max_share(labels, inner_dirichlet(labels, 10, sizes, 0.05, 0)) > 0.5


def test_inner_dirichlet_alpha_per_class() -> None:
    labels = make_labels(3000)
    assert same(inner_dirichlet(labels, 4, [750] * 4, 0.5, 3), inner_dirichlet(labels, 4, [750] * 4, [0.5] * 10, 3))
    # Class 0 concentrated (alpha 1000), the others sparse (alpha 0.01): every party asks for class 0 first.
    alpha = [1000.0] + [0.01] * 9
    counts = partition_stats(labels, inner_dirichlet(labels, 10, [300] * 10, alpha, 0))
    sparse = partition_stats(labels, inner_dirichlet(labels, 10, [300] * 10, 0.01, 0))
    assert np.all(counts[:, 0] > 0) and (sparse[:, 0] > 0).sum() < 10


def flwr_inner_dirichlet(labels: np.ndarray, sizes: list[int], alpha: float, seed: int) -> list[np.ndarray]:
    """flwr-datasets 0.6.1's InnerDirichletPartitioner, one sample at a time, written out from its source."""
    rng = np.random.default_rng(seed)
    num_classes = int(labels.max()) + 1
    priors = rng.dirichlet(np.full(num_classes, alpha), size=len(sizes))
    by_class = [np.flatnonzero(labels == c) for c in range(num_classes)]
    left_in_class = [len(ids) for ids in by_class]
    parts = [np.zeros(size, dtype=np.int64) for size in sizes]
    need, open_parties = list(sizes), list(range(len(sizes)))
    while sum(need):
        p = int(rng.choice(open_parties))
        if need[p] == 0:
            open_parties.remove(p)
            continue
        need[p] -= 1
        while True:
            c = int(rng.choice(num_classes, p=priors[p]))
            if left_in_class[c] == 0:
                priors[:, c] = 0
                priors = priors / priors.sum(axis=1, keepdims=True)
                continue
            left_in_class[c] -= 1
            parts[p][need[p]] = by_class[c][left_in_class[c]]
            break
    return [np.sort(part) for part in parts]


@pytest.mark.parametrize(
    ("alpha", "sizes"), [(0.1, [200] * 10), (0.5, [50, 100, 150, 200, 250, 250, 300, 300, 200, 200])]
)
def test_inner_dirichlet_matches_flwrs_one_sample_at_a_time_in_distribution(alpha: float, sizes: list[int]) -> None:
    """Drawn in rounds, the split is alike to flwr's sequential one: the mean dominant-class share and the mean
    number of classes per party agree over 20 seeds."""
    labels = np.repeat(np.arange(10), 200)

    def summary(parts: list[np.ndarray]) -> tuple[float, float]:
        counts = partition_stats(labels, parts)
        return max_share(labels, parts), float((counts > 0).sum(axis=1).mean())

    ours = np.mean([summary(inner_dirichlet(labels, 10, sizes, alpha, seed)) for seed in range(20)], axis=0)
    theirs = np.mean([summary(flwr_inner_dirichlet(labels, sizes, alpha, seed)) for seed in range(20)], axis=0)
    assert abs(ours[0] - theirs[0]) < 0.05
    assert abs(ours[1] - theirs[1]) < 0.6


# --------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------

LABELS = np.repeat(np.arange(10), 10)  # 10 classes of 10


@pytest.mark.parametrize(
    ("call_", "message"),
    [
        (
            lambda: shards(LABELS, 30, 4, 0),
            "shards: num_parties * shards_per_party shards must be at most the N=100 samples",
        ),
        (lambda: shards(LABELS, 10, 2, 0, shard_size=6), "num_parties * shards_per_party * shard_size must be at most"),
        (lambda: shards(LABELS, 10, 0, 0), "`shards(shards_per_party=...)` must be an integer >= 1"),
        (lambda: shards(LABELS, 10, 2, 0, shard_size=0), "`shards(shard_size=...)` must be an integer >= 1"),
        (lambda: shards(LABELS, 101, 1, 0), "`shards(num_parties=...)` must be an integer [1, 100]"),
        (lambda: ShardPartitioner(shards_per_party=0), "`partitioner.shards_per_party` must be an integer >= 1"),
        (lambda: ShardPartitioner(2, shard_size=1.5), "`partitioner.shard_size` must be an integer >= 1"),
        (
            lambda: ShardPartitioner(2, shard_size=6).partition(LABELS, 10, 0),
            "num_parties * partitioner.shards_per_party * partitioner.shard_size must be at most the N=100",
        ),
        (lambda: ShardPartitioner(4).partition(LABELS, 30, 0), "num_parties * partitioner.shards_per_party shards"),
        (
            lambda: label_skew(LABELS, 3, 4, 0, "deterministic"),
            "assignment='deterministic' (party p holds classes p .. p+k-1) class 6 and 3 more could be held by no "
            "party; num_parties + classes_per_party - 1 must be >= the number of classes (10), got 6",
        ),
        (
            lambda: label_skew(LABELS * 3, 7, 3, 0, "deterministic"),
            "class 27 could be held by no party",  # ids as in labels
        ),
        (
            lambda: label_skew(LABELS, 3, 4, 0, "first-deterministic"),
            "class 3 and 6 more could be held by no party; num_parties must be >= the number of classes (10), got 3",
        ),
        (lambda: label_skew(LABELS, 4, 2, 0, "deterministic"), "num_parties * classes_per_party must be >="),
        (lambda: label_skew(LABELS, 5, 2, 0, "sorted"), "`label_skew(assignment=...)` must be one of 'random', "),
        (
            lambda: label_skew(np.repeat(np.arange(4), 2), 8, 3, 0, "deterministic"),
            "class 0 has 2 samples but is held by",
        ),
        (lambda: LabelSkewPartitioner(2, assignment="first"), "`partitioner.assignment` must be one of 'random', "),
        (
            lambda: LabelSkewPartitioner(4, assignment="first-deterministic").partition(LABELS, 3, 0),
            "with partitioner.assignment='first-deterministic' (only party p's first class, p mod C, is fixed) class 3",
        ),
        (lambda: sized(LABELS, 3, "cubic", 0), "`sized(rule=...)` must be one of 'linear', 'square', 'exponential'"),
        (lambda: sized(LABELS, 3, "given", 0), "rule='given' needs sizes"),
        (lambda: sized(LABELS, 3, "linear", 0, sizes=[50, 50]), "sizes is only for rule='given'"),
        (lambda: sized(LABELS, 3, "given", 0, sizes=[50, 50]), "sizes must give one size per party, got 2 sizes for"),
        (lambda: sized(LABELS, 2, "given", 0, sizes=[50, 40]), "`sized(sizes=...)` must sum to the N=100 samples"),
        (lambda: sized(LABELS, 2, "given", 0, sizes=[0.5, 0.6]), "as fractions they must sum to 1, got a sum of 1.1"),
        (lambda: sized(LABELS, 2, "given", 0, sizes=[60.0, 40.0]), "fractions in (0, 1] summing to 1, got 60.0"),
        (lambda: sized(LABELS, 2, "given", 0, sizes=[0, 100]), "integers >= 1 (samples per party)"),
        (lambda: sized(LABELS, 2, "given", 0, sizes=[0.001, 0.999]), "party 0's fraction 0.001 of the N=100 samples"),
        (lambda: sized(LABELS, 2, "given", 0, sizes="ab"), "`sized(sizes=...)` must be a non-empty list"),
        (lambda: sized(LABELS, 2, "given", 0, sizes=[]), "`sized(sizes=...)` must be a non-empty list"),
        (lambda: sized(LABELS, 30, "exponential", 0), "rule='exponential' with num_parties=30 gives party 0 no sample"),
        (lambda: sized(LABELS, 30, "square", 0), "rule='square' with num_parties=30 gives party 0 no sample"),
        (lambda: SizeRulePartitioner("cubic"), "`partitioner.rule` must be one of"),
        (lambda: SizeRulePartitioner("given"), "partitioner.rule='given' needs partitioner.sizes"),
        (lambda: SizeRulePartitioner("square", sizes=[1, 2]), "partitioner.sizes is only for partitioner.rule='given'"),
        (lambda: SizeRulePartitioner("given", sizes=[0.5, 0.6]), "`partitioner.sizes` must be integers >= 1"),
        (lambda: SizeRulePartitioner("given", sizes=[50, 40]).partition(LABELS, 2, 0), "`partitioner.sizes` must sum"),
        (
            lambda: SizeRulePartitioner("exponential").partition(LABELS, 30, 0),
            "partitioner.rule='exponential' with num_parties=30",
        ),
        (lambda: inner_dirichlet(LABELS, 2, [50, 40], 0.5, 0), "`inner_dirichlet(sizes=...)` must sum to the N=100"),
        (lambda: inner_dirichlet(LABELS, 3, [50, 50], 0.5, 0), "sizes must give one size per party, got 2 sizes"),
        (lambda: inner_dirichlet(LABELS, 2, [0.5, 0.5], 0.5, 0), "`inner_dirichlet(sizes=...)` must be integers >= 1"),
        (lambda: inner_dirichlet(LABELS, 2, [0, 100], 0.5, 0), "`inner_dirichlet(sizes=...)` must be integers >= 1"),
        (
            lambda: inner_dirichlet(LABELS, 2, [50, 50], 0.0, 0),
            "`inner_dirichlet(alpha=...)` must be a finite number > 0",
        ),
        (lambda: inner_dirichlet(LABELS, 2, [50, 50], [1.0] * 9 + [-1.0], 0), "got -1.0 at position 9"),
        (
            lambda: inner_dirichlet(LABELS, 2, [50, 50], [0.5, 1.0], 0),
            "alpha must give one value per class, in ascending",
        ),
        (lambda: InnerDirichletPartitioner([50, 50], alpha="big"), "`partitioner.alpha` must be a finite number > 0"),
        (lambda: InnerDirichletPartitioner([50, 50], alpha=True), "`partitioner.alpha` must be a finite number > 0"),
        (lambda: InnerDirichletPartitioner([50, 50.5], alpha=1.0), "`partitioner.sizes` must be integers >= 1"),
        (lambda: InnerDirichletPartitioner([50, 40], 0.5).partition(LABELS, 2, 0), "`partitioner.sizes` must sum to"),
        (
            lambda: InnerDirichletPartitioner([50, 50], [1.0, 2.0]).partition(LABELS, 2, 0),
            "partitioner.alpha must give one value per class, in ascending class-id order: 10 for the classes",
        ),
    ],
)
def test_refusals_name_the_argument_and_what_is_allowed(call_: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        call_()


# --------------------------------------------------------------------------------------------
# Classes
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("partitioner", "function", "name"),
    [
        (ShardPartitioner(2), lambda labels, p, s: shards(labels, p, 2, s), "shards(shards_per_party=2)"),
        (
            ShardPartitioner(3, shard_size=40),
            lambda labels, p, s: shards(labels, p, 3, s, shard_size=40),
            "shards(shards_per_party=3, shard_size=40)",
        ),
        (
            LabelSkewPartitioner(2, assignment="first-deterministic"),
            lambda labels, p, s: label_skew(labels, p, 2, s, "first-deterministic"),
            "label_skew(classes_per_party=2, assignment=first-deterministic)",
        ),
        (SizeRulePartitioner("square"), lambda labels, p, s: sized(labels, p, "square", s), "sized(rule=square)"),
        (
            SizeRulePartitioner("given", sizes=[0.125] * 4 + [0.0625] * 8),
            lambda labels, p, s: sized(labels, p, "given", s, sizes=[0.125] * 4 + [0.0625] * 8),
            "sized(sizes=[0.125, 0.125, 0.125, 0.125, 0.0625, 0.0625, 0.0625, 0.0625, 0.0625, 0.0625, 0.0625, 0.0625])",
        ),
        (
            InnerDirichletPartitioner([400] * 12, alpha=0.5),
            lambda labels, p, s: inner_dirichlet(labels, p, [400] * 12, 0.5, s),
            "inner_dirichlet(alpha=0.5, sizes=[400, 400, 400, 400, 400, 400, 400, 400, 400, 400, 400, 400])",
        ),
    ],
    ids=lambda value: value.name if isinstance(value, Partitioner) else "",
)
def test_classes_delegate_to_the_functions(partitioner: Partitioner, function: Split, name: str) -> None:
    labels = make_labels(4800)
    assert same(partitioner.partition(labels, 12, 3), function(labels, 12, 3))
    assert partitioner.name == name == str(partitioner)


@pytest.mark.parametrize(
    ("class_name", "init_args", "name"),
    [
        ("ShardPartitioner", {"shards_per_party": 2, "shard_size": 300}, "shards(shards_per_party=2, shard_size=300)"),
        (
            "LabelSkewPartitioner",
            {"classes_per_party": 2, "assignment": "deterministic"},
            "label_skew(classes_per_party=2, assignment=deterministic)",
        ),
        ("SizeRulePartitioner", {"rule": "given", "sizes": [600, 400]}, "sized(sizes=[600, 400])"),
        ("SizeRulePartitioner", {"rule": "given", "sizes": [0.6, 0.4]}, "sized(sizes=[0.6, 0.4])"),
        (
            "InnerDirichletPartitioner",
            {"sizes": [600, 400], "alpha": [0.5, 2]},
            "inner_dirichlet(alpha=[0.5, 2.0], sizes=[600, 400])",
        ),
    ],
)
def test_classes_build_from_a_config(class_name: str, init_args: dict, name: str) -> None:
    partitioner = built_from_config(class_name, init_args)
    assert type(partitioner).__name__ == class_name
    assert partitioner.name == name
    if class_name == "SizeRulePartitioner":  # counts stay integers, fractions stay fractions
        assert [type(size) for size in partitioner.sizes] == [type(size) for size in init_args["sizes"]]


@pytest.mark.parametrize(
    ("class_name", "init_args"),
    [
        ("LabelSkewPartitioner", {"classes_per_party": 2, "assignment": "sorted"}),
        ("SizeRulePartitioner", {"rule": "cubic"}),
    ],
)
def test_a_config_with_an_unknown_mode_fails_when_parsed(class_name: str, init_args: dict) -> None:
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--partitioner", type=Partitioner)
    with pytest.raises(jsonargparse.ArgumentError):
        parser.parse_args(
            [f"--partitioner={json.dumps({'class_path': f'kdlightning.data.{class_name}', 'init_args': init_args})}"]
        )
