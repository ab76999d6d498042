"""Property tests for the natural (by id column) and feature-skew partitions, and the label-matched subset.

Every split must be disjoint, covering, sorted ``int64`` and seeded; each strategy's own guarantee (whole values
per party, sizes, order by the property) is checked exactly, and each refusal by its message.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import Callable

import numpy as np
import pytest
from test_partitioners import BARE_DATA_PACKAGE, assert_valid, same
from test_partitioners_more import built_from_config

from kdlightning.data import (
    FeatureSkewPartitioner,
    LabelledData,
    NaturalPartitioner,
    Partitioner,
    feature_skew,
    label_matched_subset,
    mean_intensity,
    natural,
    text_length,
)

SEEDS = range(6)


def random_ids(rng: np.random.Generator, kind: str = "int") -> np.ndarray:
    """Ids of 2..60 distinct values, 1..80 samples each, in random order; ints with gaps, strings or objects."""
    num_values = int(rng.integers(2, 61))
    ids = np.sort(rng.choice(100_000, num_values, replace=False))
    ids = rng.permutation(np.repeat(ids, rng.integers(1, 81, num_values)))
    if kind == "str":
        return np.array([f"user{value:06d}" for value in ids])
    if kind == "object":  # strings and integers in one column: they do not sort together
        return np.array([f"u{value}" if value % 2 else int(value) for value in ids], dtype=object)
    return ids


def owners(parts: list[np.ndarray], n: int) -> np.ndarray:
    """The party of each sample."""
    owner = np.empty(n, dtype=np.int64)
    for party, part in enumerate(parts):
        owner[part] = party
    return owner


def values_of(ids: np.ndarray, part: np.ndarray) -> set:
    return set(ids[part].tolist())


# --------------------------------------------------------------------------------------------
# Natural partitions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("kind", ["int", "str", "object"])
@pytest.mark.parametrize("balance", ["samples", "values"])
def test_natural_is_valid_and_keeps_every_value_whole(seed: int, kind: str, balance: str) -> None:
    rng = np.random.default_rng(seed)
    ids = random_ids(rng, kind)
    num_values = len(set(ids.tolist()))
    parties = int(rng.integers(1, num_values + 1))
    parts = natural(ids, parties, seed, balance)
    assert_valid(parts, ids.size, parties)
    owner = owners(parts, ids.size)
    for value in set(ids.tolist()):  # each value's samples all in one party
        assert np.unique(owner[ids == value]).size == 1
    assert all(values_of(ids, part) for part in parts)  # no party without a value


@pytest.mark.parametrize("kind", ["int", "str"])
def test_natural_with_one_party_per_value_is_flwrs_natural_id_split(kind: str) -> None:
    """flwr-datasets' NaturalIdPartitioner, written out from its source: party p holds the p-th sorted id."""
    ids = random_ids(np.random.default_rng(1), kind)
    expected = [np.flatnonzero(ids == value) for value in sorted(set(ids.tolist()))]
    assert same(natural(ids), expected)
    assert same(natural(ids, len(expected), seed=5), expected)  # no randomness
    assert same(natural(ids.tolist()), expected)  # any container


@pytest.mark.parametrize("seed", SEEDS)
def test_natural_balanced_by_samples_differs_by_at_most_the_largest_value(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ids = random_ids(rng)
    counts = np.unique(ids, return_counts=True)[1]
    parties = int(rng.integers(2, counts.size))
    sizes = np.array([len(part) for part in natural(ids, parties, seed)])
    assert sizes.max() - sizes.min() <= counts.max()


@pytest.mark.parametrize("seed", SEEDS)
def test_natural_balanced_by_values_deals_near_equal_numbers_of_values(seed: int) -> None:
    rng = np.random.default_rng(seed)
    ids = random_ids(rng)
    num_values = np.unique(ids).size
    parties = int(rng.integers(2, num_values))
    held = [len(values_of(ids, part)) for part in natural(ids, parties, seed, balance="values")]
    base, extra = divmod(num_values, parties)
    assert held == [base + 1] * extra + [base] * (parties - extra)


def test_natural_groups_are_seeded_and_random() -> None:
    ids = random_ids(np.random.default_rng(2))
    groups = {seed: [frozenset(values_of(ids, part)) for part in natural(ids, 5, seed)] for seed in range(5)}
    for seed, group in groups.items():
        assert [frozenset(values_of(ids, part)) for part in natural(ids.copy(), 5, seed)] == group
    assert len({frozenset(group) for group in groups.values()}) == 5  # other seeds, other groupings
    np.random.seed(1)
    first = natural(ids, 5, 0)
    np.random.random(100)
    assert same(first, natural(ids, 5, 0))  # not the global RNG


def test_natural_depends_on_the_order_of_the_values_not_their_type() -> None:
    ids = random_ids(np.random.default_rng(3))
    as_strings = np.array([f"{value:06d}" for value in ids])  # zero-padded: the same order
    for parties in (None, 7):
        reference = natural(ids, parties, 4)
        assert same(reference, natural(as_strings, parties, 4))
        assert same(reference, natural(ids.astype(np.int32), parties, 4))
        assert same(reference, natural(ids * 3 + 11, parties, 4))


def test_natural_on_a_large_column() -> None:
    ids = np.random.default_rng(0).integers(0, 5000, 200_000)
    assert_valid(natural(ids), ids.size, 5000)
    parts = natural(ids, 1000, 3)
    assert_valid(parts, ids.size, 1000)
    sizes = np.array([len(part) for part in parts])
    assert sizes.max() - sizes.min() <= np.bincount(ids).max()


SCRIPT = """
import hashlib, sys
import numpy as np
from kdlightning.data.natural import natural
from kdlightning.data.feature_skew import feature_skew
rng = np.random.default_rng(0)
ids = rng.integers(0, 50, 3000)
names = np.array([f"user{i}" for i in ids], dtype=object)
mixed = np.array([int(i) if i % 2 else f"u{i}" for i in ids], dtype=object)
splits = [natural(names, 7, 3), natural(mixed, 7, 3, "values"), natural(names), feature_skew(ids, 9, 0.6, 3)]
for parts in splits:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.tobytes() + b"|")
    print(digest.hexdigest())
"""


def test_the_same_split_in_another_process_whatever_its_string_hashing() -> None:
    """Every rank computes the split itself: string ids must not split by their (per-process) hashes."""
    import os
    import subprocess
    import sys

    outputs = [
        subprocess.run(
            [sys.executable, "-c", BARE_DATA_PACKAGE + SCRIPT],
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": str(hash_seed)},
        ).stdout
        for hash_seed in (1, 2)
    ]
    assert outputs[0] == outputs[1] and len(outputs[0].split()) == 4


# --------------------------------------------------------------------------------------------
# Feature skew
# --------------------------------------------------------------------------------------------


def random_property(rng: np.random.Generator) -> np.ndarray:
    """100..3000 values: lognormal floats, integers with many ties, or booleans."""
    n = int(rng.integers(100, 3001))
    kind = int(rng.integers(0, 3))
    if kind == 0:
        return rng.lognormal(0.0, 2.0, n)
    if kind == 1:
        return rng.integers(-5, 6, n)
    return rng.random(n) < 0.3


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("strictness", [0.0, 0.3, 0.5, 0.9, 1.0])
def test_feature_skew_is_valid_with_even_sizes(seed: int, strictness: float) -> None:
    rng = np.random.default_rng(seed)
    values = random_property(rng)
    parties = int(rng.integers(1, 41))
    parts = feature_skew(values, parties, strictness, seed)
    assert_valid(parts, values.size, parties)
    base, extra = divmod(values.size, parties)
    assert [len(part) for part in parts] == [base + 1] * extra + [base] * (parties - extra)


@pytest.mark.parametrize("seed", SEEDS)
def test_feature_skew_strictness_1_gives_sorted_contiguous_parts(seed: int) -> None:
    rng = np.random.default_rng(seed)
    values = random_property(rng)
    parties = int(rng.integers(2, 21))
    parts = feature_skew(values, parties, 1.0, seed)
    for low, high in itertools.pairwise(parts):
        assert values[low].max() <= values[high].min()
    distinct = rng.permutation(values.size) * 0.5  # no ties: the split is the sorted order cut, whatever the seed
    expected = [np.sort(part) for part in np.array_split(np.argsort(distinct), parties)]  # flwr's at strictness 1
    assert same(feature_skew(distinct, parties, 1.0, seed), expected)
    assert same(feature_skew(distinct, parties, 1.0, seed + 1), expected)


def test_feature_skew_strictness_0_is_iid_whatever_the_property() -> None:
    rng = np.random.default_rng(0)
    values = rng.lognormal(0.0, 1.0, 200_000)
    parts = feature_skew(values, 10, 0.0, 7)
    # the values play no part: the split of any property of the same size is the same
    assert same(parts, feature_skew(rng.random(values.size), 10, 0.0, 7))
    error = values.std() / np.sqrt(len(parts[0]))
    for part in parts:  # every party's values follow the data set's
        assert abs(values[part].mean() - values.mean()) < 5 * error
        assert np.allclose(np.quantile(values[part], [0.1, 0.5, 0.9]), np.quantile(values, [0.1, 0.5, 0.9]), rtol=0.05)


@pytest.mark.parametrize("seed", SEEDS)
def test_feature_skew_is_the_documented_blend(seed: int) -> None:
    """An independent reference: scipy's mean ranks, the split's uniform noise, a lexicographic sort, equal runs."""
    from scipy.stats import rankdata

    rng = np.random.default_rng(seed)
    values = random_property(rng)
    parties, strictness = int(rng.integers(1, 41)), float(rng.choice([0.0, 1.0, rng.random()]))
    noise = np.random.default_rng(seed).random(values.size)
    score = strictness * ((rankdata(values) - 1) / (values.size - 1)) + (1 - strictness) * noise
    runs = np.array_split(np.lexsort((noise, score)), parties)  # the first N % P runs one longer
    assert same(feature_skew(values, parties, strictness, seed), [np.sort(run) for run in runs])


@pytest.mark.parametrize("strictness", [0.5, 1.0])
def test_feature_skew_of_values_closer_than_its_sort_key_resolves_is_still_the_documented_blend(
    strictness: float,
) -> None:
    """Values 1e-25 apart beside one at 1.0 fall into one integer sort key: the split still sorts them truly."""
    from scipy.stats import rankdata

    rng = np.random.default_rng(3)
    values = np.concatenate(([1.0], rng.random(2000) * 1e-25))
    noise = np.random.default_rng(5).random(values.size)
    score = strictness * ((rankdata(values) - 1) / (values.size - 1)) + (1 - strictness) * noise
    runs = np.array_split(np.lexsort((noise, score)), 9)
    assert same(feature_skew(values, 9, strictness, 5), [np.sort(run) for run in runs])


@pytest.mark.parametrize("strictness", [0.0, 0.5, 1.0])
def test_feature_skew_of_tied_values_is_in_the_order_of_the_noise(strictness: float) -> None:
    """Tied values (a constant property) go in the order of the split's noise, at any strictness: the IID split."""
    constant = np.full(1000, 3.5)
    assert same(feature_skew(constant, 7, strictness, 4), feature_skew(np.arange(1000), 7, 0.0, 4))


def test_feature_skew_keeps_samples_within_the_documented_window() -> None:
    """Two samples whose normalised ranks differ by more than (1 - s) / s are in the order of their values."""
    rng = np.random.default_rng(1)
    values = rng.normal(size=5000)
    rank = np.argsort(np.argsort(values)) / (values.size - 1)
    for strictness in (0.5, 0.8, 0.95):
        parts = feature_skew(values, 20, strictness, 2)
        window = (1 - strictness) / strictness
        for low, high in itertools.pairwise(parts):
            assert rank[low].max() - rank[high].min() <= window


def test_feature_skew_grows_with_strictness_and_ignores_the_scale() -> None:
    rng = np.random.default_rng(2)
    values = rng.lognormal(0.0, 1.5, 20_000)
    spread = []
    for strictness in (0.0, 0.25, 0.5, 0.75, 1.0):
        parts = feature_skew(values, 10, strictness, 3)
        spread.append(np.std([np.median(values[part]) for part in parts]))
        # only ranks count: any increasing transform of the property gives the same split
        assert same(parts, feature_skew(np.log(values) * 3 - 1, 10, strictness, 3))
    assert spread == sorted(spread)


@pytest.mark.parametrize("seed", SEEDS)
def test_feature_skew_is_seeded(seed: int) -> None:
    values = random_property(np.random.default_rng(seed)).astype(float)
    first = feature_skew(values, 8, 0.5, seed)
    np.random.seed(seed)
    assert same(first, feature_skew(values.copy().tolist(), 8, 0.5, seed))
    assert not same(first, feature_skew(values, 8, 0.5, seed + 100))


def test_input_features() -> None:
    images = np.random.default_rng(0).random((5, 1, 3, 4)).astype(np.float32)
    np.testing.assert_allclose(mean_intensity(images), images.reshape(5, -1).mean(axis=1), rtol=1e-6)
    assert mean_intensity(np.arange(3)).tolist() == [0.0, 1.0, 2.0]
    assert text_length(np.array(["ab", "", "cde"])).tolist() == [2.0, 0.0, 3.0]


# --------------------------------------------------------------------------------------------
# Classes: they read the data
# --------------------------------------------------------------------------------------------


def make_data(n: int = 600, text: bool = False) -> LabelledData:
    rng = np.random.default_rng(0)
    inputs = (
        np.array(["x" * int(k) for k in rng.integers(0, 50, n)], dtype=object)
        if text
        else rng.random((n, 1, 4, 4)).astype(np.float32)
    )
    return LabelledData(
        inputs,
        rng.integers(0, 3, n),
        inputs[:10],
        np.arange(10) % 3,
        num_classes=3,
        train_columns={"author": rng.choice(["ann", "bob", "cid", "dee", "eve"], n), "age": rng.normal(40, 9, n)},
    )


def test_natural_partitioner_reads_its_column_of_the_pool() -> None:
    data = make_data()
    pool = np.sort(np.random.default_rng(1).choice(600, 450, replace=False))
    author = data.train_columns["author"]
    for parties, balance in ((5, "samples"), (2, "samples"), (3, "values")):
        partitioner = NaturalPartitioner(column="author", balance=balance)  # type: ignore[arg-type]
        parts = partitioner.partition_data(data, pool, parties, 4)
        assert same(parts, natural(author[pool], parties, 4, balance))  # type: ignore[arg-type]
        assert_valid(parts, pool.size, parties)


def test_feature_skew_partitioner_reads_the_inputs_or_a_column() -> None:
    data = make_data()
    pool = np.arange(100, 600)
    parts = FeatureSkewPartitioner(strictness=0.7).partition_data(data, pool, 6, 2)
    assert same(parts, feature_skew(mean_intensity(data.train_inputs[pool]), 6, 0.7, 2))
    parts = FeatureSkewPartitioner(feature="age", strictness=1).partition_data(data, pool, 4, 0)
    assert same(parts, feature_skew(data.train_columns["age"][pool], 4, 1.0, 0))
    text = make_data(text=True)
    parts = FeatureSkewPartitioner(feature="text_length", strictness=1).partition_data(text, pool, 4, 0)
    lengths = text_length(text.train_inputs[pool])
    assert all(lengths[a].max() <= lengths[b].min() for a, b in itertools.pairwise(parts))


@pytest.mark.parametrize(
    ("partitioner", "name"),
    [
        (NaturalPartitioner("author"), "natural(column=author)"),
        (NaturalPartitioner("author", balance="values"), "natural(column=author, balance=values)"),
        (FeatureSkewPartitioner(), "feature_skew(feature=mean_intensity, strictness=0.5)"),
        (FeatureSkewPartitioner("age", strictness=0), "feature_skew(feature=age, strictness=0)"),
    ],
)
def test_names(partitioner: Partitioner, name: str) -> None:
    assert partitioner.name == name == str(partitioner)


@pytest.mark.parametrize(
    ("class_name", "init_args", "name"),
    [
        ("NaturalPartitioner", {"column": "author"}, "natural(column=author)"),
        ("NaturalPartitioner", {"column": "user", "balance": "values"}, "natural(column=user, balance=values)"),
        ("FeatureSkewPartitioner", {}, "feature_skew(feature=mean_intensity, strictness=0.5)"),
        ("FeatureSkewPartitioner", {"feature": "age", "strictness": 0.9}, "feature_skew(feature=age, strictness=0.9)"),
    ],
)
def test_classes_build_from_a_config(class_name: str, init_args: dict, name: str) -> None:
    partitioner = built_from_config(class_name, init_args)
    assert type(partitioner).__name__ == class_name
    assert partitioner.name == name


def test_a_config_with_an_unknown_balance_fails_when_parsed() -> None:
    jsonargparse = pytest.importorskip("jsonargparse")
    parser = jsonargparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--partitioner", type=Partitioner)
    config = {"class_path": "kdlightning.data.NaturalPartitioner", "init_args": {"column": "a", "balance": "even"}}
    with pytest.raises(jsonargparse.ArgumentError):
        parser.parse_args([f"--partitioner={json.dumps(config)}"])


# --------------------------------------------------------------------------------------------
# A subset with another set's label mix
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
def test_label_matched_subset_has_the_reference_mix_and_is_the_largest(seed: int) -> None:
    rng = np.random.default_rng(seed)
    classes = int(rng.integers(2, 11))
    labels = rng.permutation(np.repeat(np.arange(classes), rng.integers(5, 200, classes)))
    reference = rng.choice(classes, int(rng.integers(1, 2000)), p=rng.dirichlet(np.full(classes, 0.5)))
    subset = label_matched_subset(labels, reference, seed)
    assert subset.dtype == np.int64 and np.all(np.diff(subset) > 0) and subset.max() < labels.size
    counts = np.bincount(labels[subset], minlength=classes)
    want = np.bincount(reference, minlength=classes)
    size = subset.size
    assert np.all(np.abs(counts - size * want / want.sum()) < 1)  # the mix, within rounding
    assert np.all(counts[want == 0] == 0)
    have = np.bincount(labels, minlength=classes)
    assert np.any((size + 1) * want / want.sum() > have)  # one more sample would need more than some class has
    assert np.array_equal(subset, label_matched_subset(labels, reference, seed))
    if size < labels.size and counts.max() < have.max():
        assert not np.array_equal(subset, label_matched_subset(labels, reference, seed + 100))


def test_label_matched_subset_refuses_a_class_it_cannot_draw() -> None:
    with pytest.raises(ValueError, match=r"`labels` has no sample of class 3 \(nor of 1 more\), which is 20.0%"):
        label_matched_subset(np.array([0, 1, 2, 0]), np.array([0, 1, 3, 4, 1]), 0)


# --------------------------------------------------------------------------------------------
# Refusals
# --------------------------------------------------------------------------------------------

IDS = np.repeat(np.array(["a", "b", "c"]), 4)
PROPERTY = np.linspace(0, 1, 12)
DATA = make_data(60)


@pytest.mark.parametrize(
    ("call_", "message"),
    [
        (
            lambda: natural(IDS, 4),
            "`natural(num_parties=...)` must be an integer [1, 3] (the number of distinct values in values: every "
            "party holds at least one), got 4",
        ),
        (lambda: natural(IDS, 0), "`natural(num_parties=...)` must be an integer [1, 3]"),
        (lambda: natural(IDS, 2, -1), "`natural(seed=...)` must be an integer >= 0, got -1"),
        (lambda: natural(IDS, 2, 0, "even"), "`natural(balance=...)` must be one of 'samples', 'values', got 'even'"),
        (lambda: natural(IDS.reshape(3, 4)), "`natural(values=...)` must be a 1-D array, one value per sample, got"),
        (lambda: natural([]), "`natural(values=...)` must be non-empty"),
        (
            lambda: natural(np.array(["a", None, "b", None], dtype=object)),
            "`natural(values=...)`: values must have a value for every sample, got 2 missing (None or NaN), the "
            "first at position 1",
        ),
        (lambda: natural([1.0, np.nan, 2.0]), "got 1 missing (None or NaN), the first at position 1"),
        (lambda: natural(np.array([1, "a", [2]], dtype=object)), "`natural(values=...)`: values must be hashable ids"),
        (lambda: NaturalPartitioner(""), "`partitioner.column` must be a non-empty name, got ''"),
        (lambda: NaturalPartitioner(3), "`partitioner.column` must be a non-empty name, got 3"),  # type: ignore[arg-type]
        (lambda: NaturalPartitioner("a", balance="even"), "`partitioner.balance` must be one of 'samples', 'values'"),
        (
            lambda: NaturalPartitioner("author").partition(np.zeros(5, dtype=int), 2, 0),
            "NaturalPartitioner splits by column 'author' of the data set, not by labels: call its "
            "partition_data(data, pool, num_parties, seed), as PartitionedDataModule does, or natural(values, "
            "num_parties, seed) on an array",
        ),
        (
            lambda: NaturalPartitioner("user").partition_data(DATA, np.arange(60), 2, 0),
            "`partitioner.column` must be a column of the data set, got 'user'; the data set's columns: ['age', "
            "'author'] (an HFDataset keeps columns of its source with `keep_columns`)",
        ),
        (
            lambda: NaturalPartitioner("author").partition_data(DATA, np.arange(60), 6, 0),
            "`num_parties` must be an integer [1, 5] (the number of distinct values in column 'author': every party",
        ),
        (
            lambda: feature_skew(PROPERTY, 3, 1.5, 0),
            "`feature_skew(strictness=...)` must be a number in [0, 1] (0: IID",
        ),
        (lambda: feature_skew(PROPERTY, 3, -0.1, 0), "`feature_skew(strictness=...)` must be a number in [0, 1]"),
        (lambda: feature_skew(PROPERTY, 3, float("nan"), 0), "must be a number in [0, 1] (0: IID parties, 1: parties"),
        (lambda: feature_skew(PROPERTY, 3, True, 0), "`feature_skew(strictness=...)` must be a number in [0, 1]"),
        (lambda: feature_skew(PROPERTY, 13, 0.5, 0), "`feature_skew(num_parties=...)` must be an integer [1, 12]"),
        (lambda: feature_skew(PROPERTY, 3, 0.5, -2), "`feature_skew(seed=...)` must be an integer >= 0"),
        (
            lambda: feature_skew([1.0, np.inf, np.nan], 2, 0.5, 0),
            "`feature_skew(values=...)`: values must be finite, got 2 NaN or infinite values, the first at position 1",
        ),
        (lambda: feature_skew(IDS, 2, 0.5, 0), "`feature_skew(values=...)`: values must be real numbers, got dtype"),
        (lambda: feature_skew(np.ones((3, 2)), 2, 0.5, 0), "`feature_skew(values=...)` must be a 1-D array"),
        (lambda: FeatureSkewPartitioner(strictness=2), "`partitioner.strictness` must be a number in [0, 1], got 2.0"),
        (lambda: FeatureSkewPartitioner(feature=""), "`partitioner.feature` must be a non-empty name"),
        (
            lambda: FeatureSkewPartitioner().partition(np.zeros(5, dtype=int), 2, 0),
            "FeatureSkewPartitioner splits by the property 'mean_intensity' of the data set, not by labels",
        ),
        (
            lambda: FeatureSkewPartitioner("height").partition_data(DATA, np.arange(60), 2, 0),
            "`partitioner.feature` must be one of the built-in features 'mean_intensity', 'text_length' or a column "
            "of the data set, got 'height'; the data set's columns: ['age', 'author']",
        ),
        (
            lambda: FeatureSkewPartitioner("author").partition_data(DATA, np.arange(60), 2, 0),
            "`partitioner.feature`: the property 'author' must be real numbers, got dtype <U3",
        ),
        (
            lambda: FeatureSkewPartitioner().partition_data(make_data(60, text=True), np.arange(60), 2, 0),
            "mean_intensity needs numeric inputs (images or features), got dtype object; for text, use 'text_length'",
        ),
        (
            lambda: FeatureSkewPartitioner("text_length").partition_data(DATA, np.arange(60), 2, 0),
            "text_length needs text inputs, one string per sample, got dtype float32",
        ),
    ],
)
def test_refusals_name_the_argument_and_what_is_allowed(call_: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        call_()
