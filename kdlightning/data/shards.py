r"""Shard partitions (McMahan et al. 2017): label-sorted samples cut into shards, a few shards per party.

Like every partition function of :mod:`kdlightning.data.partitioners`, :func:`shards` is a pure
function of ``(labels, seed)`` drawing only from its own ``np.random.default_rng(seed)``, and returns
``num_parties`` sorted ``int64`` index arrays that are disjoint and cover every sample. Its class,
for a YAML ``class_path``, is :class:`kdlightning.data.ShardPartitioner`. This module imports numpy only.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from kdlightning.data._partitioning import (
    IndexArray,
    _check_common,
    _check_int,
    _dense,
    _even_sizes,
    _group,
    _Names,
    _owner_dtype,
)
from kdlightning.errors import ConfigurationError

__all__ = ["shards"]


def shards(
    labels: npt.ArrayLike, num_parties: int, shards_per_party: int, seed: int, shard_size: int | None = None
) -> list[IndexArray]:
    r"""Sort the samples by label, cut them into shards and deal ``shards_per_party`` random shards to each party.

    This is the pathological non-IID split of McMahan et al., "Communication-Efficient Learning of
    Deep Networks from Decentralized Data", AISTATS 2017 (MNIST: 200 shards of 300, 2 per party), as
    flwr-datasets' ``ShardPartitioner`` has it. The samples are put in label order (in random order
    within each class) and cut into ``N // shard_size`` whole shards of ``shard_size`` consecutive
    samples; ``shard_size`` defaults to ``N // (P * s)`` for ``s = shards_per_party``. ``P * s`` of the
    shards, drawn at random, go ``s`` to each party. A shard holds one class, or two where it straddles
    a class boundary (more where ``shard_size`` exceeds a class's size).

    Every sample is covered: the samples in no dealt shard (those after the last whole shard, and the
    shards left over when ``shard_size`` is below the default) are split, in label order, into ``P``
    consecutive runs whose sizes differ by at most one, run ``p`` going to party ``p`` (the first
    parties taking the longer runs). With the default ``shard_size`` fewer than ``P * s`` samples are
    left over, so each party gets ``s * shard_size`` samples and at most ``s`` more.

    Differences from flwr-datasets 0.6.1's ``ShardPartitioner(num_shards_per_partition=s,
    shard_size=...)``, whose shard sizes and dealing are the same: flwr drops the samples left over
    (here they are dealt as above); flwr keeps the data set's order within each class, so its shards
    are runs of the data set (here they are random samples of their classes); flwr's mode without
    ``num_shards_per_partition`` (every whole shard dealt, some parties getting one more) and its
    ``keep_incomplete_shard`` have no counterpart.

    Args:
        labels: Class ids, shape ``(N,)``, non-negative integers.
        num_parties: Number of parties ``P``, in ``[1, N]``.
        shards_per_party: Shards each party gets ``s``, ``>= 1``, with ``P * s <= N``.
        seed: Seed of the split's own generator, ``>= 0``.
        shard_size: Samples per shard, ``>= 1``, with ``P * s * shard_size <= N``; None for
            ``N // (P * s)``.

    Returns:
        ``P`` sorted ``int64`` index arrays, disjoint and together covering ``range(N)``.

    Raises:
        ValueError: If an argument is outside the range above: there would be more shards, or more
            samples in the dealt shards, than samples.

    Examples:
        >>> import numpy as np
        >>> labels = np.repeat(np.arange(5), 20)
        >>> parts = shards(labels, num_parties=5, shards_per_party=2, seed=0)
        >>> [len(part) for part in parts]
        [20, 20, 20, 20, 20]
        >>> [len(np.unique(labels[part])) <= 2 for part in parts]
        [True, True, True, True, True]
        >>> [len(part) for part in shards(labels, num_parties=3, shards_per_party=2, seed=0)]
        [34, 33, 33]
    """
    return _shards(labels, num_parties, shards_per_party, seed, shard_size, _Names("shards"))


def _shards(
    labels: npt.ArrayLike,
    num_parties: int,
    shards_per_party: int,
    seed: int,
    shard_size: int | None,
    names: _Names,
) -> list[IndexArray]:
    """:func:`shards`, its errors naming the arguments by ``names``."""
    array, parties = _check_common(labels, num_parties, seed, names)
    per_party = _check_int(names("shards_per_party"), shards_per_party, 1)
    total = array.size
    dealt = parties * per_party  # shards given to parties
    parties_, per_party_ = names.key("num_parties"), names.key("shards_per_party")
    if shard_size is None:
        if dealt > total:
            raise ConfigurationError(
                f"{names.owner}: {parties_} * {per_party_} shards must be at most the N={total} samples (each shard "
                f"holds at least one), got {parties_}={parties} * {per_party_}={per_party} = {dealt}; lower "
                f"{parties_} or {per_party_}"
            )
        size = total // dealt
    else:
        size = _check_int(names("shard_size"), shard_size, 1)
        size_ = names.key("shard_size")
        if dealt * size > total:
            raise ConfigurationError(
                f"{names.owner}: {parties_} * {per_party_} * {size_} must be at most the N={total} samples, got "
                f"{parties_}={parties} * {per_party_}={per_party} * {size_}={size} = {dealt * size}; lower one of "
                f"them (without {size_}, it is N // ({parties_} * {per_party_}))"
            )
    rng = np.random.default_rng(seed)
    dense, class_sizes, _ = _dense(array)  # (N,), (C,)
    whole = total // size  # whole shards in the data, >= dealt
    picked = rng.permutation(whole)[:dealt]  # party p gets picked[p * s : (p + 1) * s]
    owner_dtype = _owner_dtype(parties)
    shard_owner = np.zeros(whole, dtype=owner_dtype)
    shard_owner[picked] = np.arange(dealt) // per_party
    shard_dealt = np.zeros(whole, dtype=bool)
    shard_dealt[picked] = True
    # The owner of each position of the label order: the dealt shards' parties, then the leftover runs.
    owners = np.empty(total, dtype=owner_dtype)  # (N,)
    owners[: whole * size] = np.repeat(shard_owner, size)
    in_dealt = np.zeros(total, dtype=bool)
    in_dealt[: whole * size] = np.repeat(shard_dealt, size)
    left = np.flatnonzero(~in_dealt)  # positions in no dealt shard, ascending
    left_sizes = _even_sizes(left.size, parties)
    owners[left] = np.repeat(np.arange(parties, dtype=owner_dtype), left_sizes)
    # Shuffling the owners within each class is sorting the samples by label in a random order within
    # each class: a shard is a random sample of its classes, not a run of the data set.
    ends = np.cumsum(class_sizes)
    for start, end in zip(ends - class_sizes, ends, strict=True):
        rng.shuffle(owners[start:end])
    owner = np.empty_like(owners)
    owner[np.argsort(dense, kind="stable")] = owners
    return _group(owner, per_party * size + left_sizes)
