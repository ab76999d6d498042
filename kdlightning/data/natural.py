r"""Natural partitions: one party per distinct value of a column of the data (an author, a device, a source).

:func:`natural` splits the samples by a per-sample id, as flwr-datasets' ``NaturalIdPartitioner`` does, or
deals whole ids to fewer parties, as its ``GroupedNaturalIdPartitioner`` groups them. Like every partition
function of :mod:`kdlightning.data.partitioners`, it is a pure function of its arguments drawing only from its
own ``np.random.default_rng(seed)``, and returns ``num_parties`` sorted ``int64`` index arrays that are
disjoint and cover every sample. Its class, for a YAML ``class_path``, is
:class:`kdlightning.data.NaturalPartitioner`, which reads the id column of the data set. This module imports
numpy only.
"""

from __future__ import annotations

import heapq
import math
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from kdlightning.data._partitioning import (
    IndexArray,
    _check_choice,
    _check_int,
    _check_samples,
    _even_sizes,
    _group,
    _Names,
    _owner_dtype,
)
from kdlightning.errors import ConfigurationError

__all__ = ["Balance", "natural"]

Balance = Literal["samples", "values"]
"""What :func:`natural` evens out when it deals values to fewer parties: their samples, or their number of values."""

_BALANCES: tuple[str, ...] = get_args(Balance)


def natural(
    values: npt.ArrayLike, num_parties: int | None = None, seed: int = 0, balance: Balance = "samples"
) -> list[IndexArray]:
    r"""Give each party the samples of whole values of a per-sample id: one value each, or a group of values.

    ``values`` holds one id per sample (the author of a text, the device that took a picture, the source
    of a record); ``V`` distinct values are present. Every value goes whole to one party:

    - ``num_parties`` None or ``V``: party ``p`` holds the ``p``-th smallest value (flwr-datasets'
      ``NaturalIdPartitioner``, whose ids are sorted too); the split has no randomness.
    - ``num_parties < V``: the values are dealt to the parties in a random order. With
      ``balance="samples"`` each value goes to the party that has the fewest samples so far (the lowest
      party id on a tie), so the party sizes differ by at most the largest value's number of samples;
      with ``balance="values"`` the first ``V % P`` parties in the random order get ``V // P + 1``
      values, the others ``V // P``, whatever their samples.

    Values are ordered as ``np.unique`` sorts them; values that do not sort together (numbers and strings
    in one object array) are ordered by first appearance. A missing value (None or NaN) is refused: a
    party "of no author" is not a natural one.

    Differences from flwr-datasets 0.6.1: its ``GroupedNaturalIdPartitioner`` takes ``group_size`` (values
    per party) and derives the number of parties, grouping the values in their order of first appearance
    (or sorted) with modes for the remainder (``"allow-smaller"``, ``"allow-bigger"``, ``"drop-reminder"``,
    ``"strict"``); here the number of parties is given, the values are dealt at random and every value is
    dealt (``balance="values"`` is its ``"allow-bigger"`` in a random order). flwr makes None a natural id
    of its own.

    Args:
        values: One hashable id per sample, shape ``(N,)``: integers, strings or any objects.
        num_parties: Number of parties ``P``, in ``[1, V]``; None for ``V``, one party per value.
        seed: Seed of the split's own generator, ``>= 0``.
        balance: With ``P < V``: ``"samples"`` (near-equal party sizes) or ``"values"`` (near-equal
            numbers of values).

    Returns:
        ``P`` sorted ``int64`` index arrays, disjoint and together covering ``range(N)``.

    Raises:
        ValueError: If an argument is outside the range above, or a value is missing.

    Examples:
        >>> import numpy as np
        >>> authors = np.array(["bo", "al", "bo", "cy", "al", "bo"])
        >>> [part.tolist() for part in natural(authors)]  # al, bo, cy
        [[1, 4], [0, 2, 5], [3]]
        >>> parts = natural(authors, num_parties=2, seed=0)  # cy, al, bo dealt in that order
        >>> [sorted(set(authors[part].tolist())) for part in parts], [len(part) for part in parts]
        ([['bo', 'cy'], ['al']], [4, 2])
        >>> [sorted(set(authors[part].tolist())) for part in natural(authors, 2, seed=0, balance="values")]
        [['al', 'cy'], ['bo']]
    """
    return _natural(values, num_parties, seed, balance, _Names("natural"))


def _natural(
    values: npt.ArrayLike,
    num_parties: int | None,
    seed: int,
    balance: str,
    names: _Names,
    argument: str = "values",
    what: str = "values",
) -> list[IndexArray]:
    """:func:`natural`, its errors naming the arguments by ``names``; the values are ``argument``'s, said ``what``."""
    array = _check_samples(values, names, argument)
    _check_int(names("seed"), seed, 0)
    mode = _check_choice(names("balance"), balance, _BALANCES)
    _check_present(array, names(argument), what)
    inverse, counts = _factorize(array, names(argument), what)  # (N,), (V,)
    num_values = counts.size
    parties = num_values
    if num_parties is not None:
        why = f" (the number of distinct values in {what}: every party holds at least one)"
        parties = _check_int(names("num_parties"), num_parties, 1, num_values, why)
    if parties == num_values:
        value_owner = np.arange(num_values)  # party p holds the p-th value
    else:
        rng = np.random.default_rng(seed)
        order = rng.permutation(num_values)
        if mode == "values":
            value_owner = np.empty(num_values, dtype=np.int64)
            value_owner[order] = np.repeat(np.arange(parties), _even_sizes(num_values, parties))
        else:
            value_owner = _fewest_first(order, counts, parties)
    owner = value_owner.astype(_owner_dtype(parties))[inverse]  # (N,)
    sizes = np.bincount(value_owner, weights=counts, minlength=parties).astype(np.int64)
    return _group(owner, sizes)


def _fewest_first(order: npt.NDArray[np.int64], counts: npt.NDArray[np.int64], parties: int) -> npt.NDArray[np.int64]:
    """Deal the values in ``order``, each to the party with the fewest samples so far (the lowest id on a tie).

    A heap of ``(samples, party)``: ``V`` pops and pushes, ``O(V log P)``, about a second for a million values.
    """
    heap = [(0, party) for party in range(parties)]  # already a heap
    owners = []
    for size in counts[order].tolist():
        samples, party = heap[0]
        owners.append(party)
        heapq.heapreplace(heap, (samples + size, party))
    value_owner = np.empty(order.size, dtype=np.int64)
    value_owner[order] = owners
    return value_owner


def _check_present(array: npt.NDArray[np.generic], name: str, what: str) -> None:
    """Refuse a missing value (None, NaN, NaT), naming how many and where the first is."""
    kind = array.dtype.kind
    if kind in "fc":
        missing = np.isnan(array)
    elif kind in "mM":
        missing = np.isnat(array)
    elif kind == "O":
        missing = np.fromiter(
            (value is None or (isinstance(value, float) and math.isnan(value)) for value in array.tolist()),
            dtype=bool,
            count=array.size,
        )
    else:
        return
    if missing.any():
        raise ConfigurationError(
            f"{name}: {what} must have a value for every sample, got {int(missing.sum())} missing (None "
            f"or NaN), the first at position {int(np.argmax(missing))}; drop those samples or give them an id"
        )


def _factorize(
    array: npt.NDArray[np.generic], name: str, what: str
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Number the distinct values ``0 .. V-1`` in sorted order; return each sample's number and each value's count."""
    try:
        _, inverse, counts = np.unique(array, return_inverse=True, return_counts=True)
        return inverse.reshape(-1).astype(np.int64, copy=False), counts.astype(np.int64, copy=False)
    except TypeError:  # values that do not sort together (numbers and strings in one object array)
        pass
    codes: dict[object, int] = {}
    try:
        numbers = [codes.setdefault(value, len(codes)) for value in array.tolist()]
    except TypeError as error:  # an unhashable value (a list)
        raise ConfigurationError(f"{name}: {what} must be hashable ids, got {error}") from error
    inverse = np.asarray(numbers, dtype=np.int64)
    return inverse, np.bincount(inverse).astype(np.int64, copy=False)
