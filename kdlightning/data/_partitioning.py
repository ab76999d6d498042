"""The checks and vectorised building blocks the partition functions share (numpy only).

Every partition module (:mod:`kdlightning.data.partitioners`, :mod:`kdlightning.data.shards`,
:mod:`kdlightning.data.partition_sizes`, :mod:`kdlightning.data.natural`, :mod:`kdlightning.data.feature_skew`,
:mod:`kdlightning.data.label_mix`) validates its arguments and builds its split with these, so each check and
each way of dealing samples out exists once. Nothing here is public.
"""

from __future__ import annotations

import math
import numbers

import numpy as np
import numpy.typing as npt

from kdlightning.errors import ConfigurationError

IndexArray = npt.NDArray[np.int64]

# Up to this many parties (or classes) the ids fit in uint16, which numpy's stable argsort sorts
# with a radix sort: about 10x faster than its stable sort for wider integers.
_UINT16_LIMIT = 1 << 16


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------

_MAX_RETRIES = 100
"""Redraws :func:`kdlightning.data.partitioners.dirichlet` allows by default."""

_ALPHA = " (the Dirichlet concentration of each class's shares over the parties)"
"""What a partition's ``alpha`` is, said in its errors: not a distillation weight."""

_BETA = " (the Dirichlet concentration of the party sizes)"
"""What a partition's ``beta`` is, said in its errors."""


class _Names:
    """How a partition's errors name its arguments: as the function's keywords, or as a strategy class's YAML keys.

    Args:
        owner: the function (``"dirichlet"``) or the class (``"DirichletPartitioner"``) the arguments go to.
        configured: for a class, its own parameters, which a config gives under ``partitioner``
            (``partitioner.alpha``); the others (``num_parties``, ``seed``, ``labels``) come from the caller and
            keep their names. None for a function: every argument is one of its keywords
            (``dirichlet(alpha=...)``).

    Examples:
        >>> _Names("dirichlet")("alpha"), _Names("DirichletPartitioner", ("alpha",))("alpha")
        ('`dirichlet(alpha=...)`', '`partitioner.alpha`')
    """

    def __init__(self, owner: str, configured: tuple[str, ...] | None = None) -> None:
        self.owner, self.configured = owner, configured

    def __call__(self, argument: str) -> str:
        """``argument`` as an error names it on its own."""
        if self.configured is None:
            return f"`{self.owner}({argument}=...)`"
        return f"`{self.key(argument)}`"

    def key(self, argument: str) -> str:
        """``argument`` as an error names it beside its value (``key=value``)."""
        return f"partitioner.{argument}" if self.configured and argument in self.configured else argument


def _check_int(name: str, value: object, low: int, high: int | None = None, why: str = "") -> int:
    """Return ``value`` as an ``int`` if it is an integer in ``[low, high]``, else raise ``ValueError``."""
    allowed = f"[{low}, {high}]" if high is not None else f">= {low}"
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigurationError(f"{name} must be an integer {allowed}, got {value!r}")
    number = int(value)
    if number < low or (high is not None and number > high):
        raise ConfigurationError(f"{name} must be an integer {allowed}{why}, got {number}")
    return number


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> str:
    """Return ``value`` if it is one of the strings ``allowed``, else raise ``ValueError``."""
    if not isinstance(value, str) or value not in allowed:
        choices = ", ".join(repr(choice) for choice in allowed)
        raise ConfigurationError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _check_positive(name: str, value: object, what: str = "") -> float:
    """Return ``value`` as a ``float`` if it is finite and > 0, else raise ``ValueError`` (``what`` says what it is)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigurationError(f"{name} must be a finite number > 0{what}, got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise ConfigurationError(f"{name} must be a finite number > 0{what}, got {number}")
    return number


def _check_unit(name: str, value: object, what: str = "") -> float:
    """Return ``value`` as a ``float`` if it is a number in ``[0, 1]``, else raise ``ValueError`` (``what``: what)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigurationError(f"{name} must be a number in [0, 1]{what}, got {value!r}")
    number = float(value)
    if not 0.0 <= number <= 1.0:  # NaN fails too
        raise ConfigurationError(f"{name} must be a number in [0, 1]{what}, got {number}")
    return number


def _check_samples(values: npt.ArrayLike, names: _Names, argument: str) -> npt.NDArray[np.generic]:
    """Return ``values`` as a non-empty 1-D array (one value per sample), else raise ``ValueError``."""
    array = np.asarray(values)
    if array.ndim != 1:
        raise ConfigurationError(
            f"{names(argument)} must be a 1-D array, one value per sample, got shape {array.shape}"
        )
    if array.size == 0:
        raise ConfigurationError(f"{names(argument)} must be non-empty (size >= 1), got an empty array")
    return array


def _check_labels(labels: npt.ArrayLike, names: _Names) -> npt.NDArray[np.integer]:
    """Return ``labels`` as a 1-D non-negative integer array, else raise ``ValueError``."""
    name = names("labels")
    array = np.asarray(labels)
    if array.ndim != 1:
        raise ConfigurationError(f"{name} must be a 1-D array of class ids, got shape {array.shape}")
    if array.size == 0:
        raise ConfigurationError(f"{name} must be non-empty (size >= 1), got an empty array")
    if array.dtype.kind not in "iu":
        raise ConfigurationError(f"{name} must be integer class ids (dtype int or uint), got dtype {array.dtype}")
    if array.dtype.kind == "i" and array.min() < 0:
        raise ConfigurationError(f"{name} must be class ids >= 0, got a minimum of {array.min()}")
    if array.dtype == np.uint64:
        # np.bincount refuses uint64; class ids beyond int64 make no sense.
        if array.max() > np.iinfo(np.int64).max:
            raise ConfigurationError(f"{name} must be class ids < 2**63, got a maximum of {array.max()}")
        array = array.astype(np.int64)
    return array


def _check_common(
    labels: npt.ArrayLike, num_parties: object, seed: object, names: _Names
) -> tuple[npt.NDArray[np.integer], int]:
    """Validate the arguments every partitioner takes; return the labels and ``num_parties``."""
    array = _check_labels(labels, names)
    _check_int(names("seed"), seed, 0)
    parties = _check_int(names("num_parties"), num_parties, 1, array.size, " (at most one party per sample)")
    return array, parties


# ----------------------------------------------------------------------------------------------
# Vectorised building blocks
# ----------------------------------------------------------------------------------------------


def _owner_dtype(num_parties: int) -> type[np.integer]:
    """The dtype for party ids: uint16 when they fit."""
    return np.uint16 if num_parties <= _UINT16_LIMIT else np.int64


def _dense(
    labels: npt.NDArray[np.integer],
) -> tuple[npt.NDArray[np.integer], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Renumber the classes present in ``labels`` as ``0 .. C-1``.

    Returns:
        The renumbered labels in the narrowest unsigned dtype (so sorting them is a radix sort),
        shape ``(N,)``; the class sizes, shape ``(C,)``; the original id of each class, shape ``(C,)``.
    """
    if int(labels.max()) >= max(_UINT16_LIMIT, 4 * labels.size):
        # Sparse, large class ids: a bincount over 0 .. max would be mostly empty (or huge).
        present, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
        dense: npt.NDArray[np.integer] = inverse
    else:
        all_sizes = np.bincount(labels)
        present = np.flatnonzero(all_sizes)  # (C,)
        sizes = all_sizes[present]
        dense = labels if present.size == all_sizes.size else (np.cumsum(all_sizes > 0) - 1)[labels]
    if present.size <= 1 << 8:
        dense = dense.astype(np.uint8, copy=False)
    elif present.size <= _UINT16_LIMIT:
        dense = dense.astype(np.uint16, copy=False)
    return dense, sizes.astype(np.int64, copy=False), present.astype(np.int64, copy=False)


def _even_sizes(total: int, parts: int) -> npt.NDArray[np.int64]:
    """Sizes of ``parts`` parts of ``total`` items that differ by at most one, the first ``total % parts`` larger."""
    base, extra = divmod(total, parts)
    sizes = np.full(parts, base, dtype=np.int64)
    sizes[:extra] += 1
    return sizes


def _group(owner: npt.NDArray[np.integer], sizes: npt.NDArray[np.int64]) -> list[IndexArray]:
    """Turn a party id per sample into one ascending index array per party.

    Args:
        owner: Party id of each sample, shape ``(N,)``.
        sizes: Samples per party, ``np.bincount(owner)``, shape ``(P,)``.
    """
    # A stable sort keeps sample ids ascending inside each party: no per-party sort needed.
    order = np.argsort(owner, kind="stable").astype(np.int64, copy=False)
    return np.split(order, np.cumsum(sizes)[:-1])


def _deal(sizes: npt.NDArray[np.int64], rng: np.random.Generator) -> list[IndexArray]:
    """Give party ``p`` ``sizes[p]`` samples drawn uniformly at random without replacement."""
    owner = np.repeat(np.arange(sizes.size, dtype=_owner_dtype(sizes.size)), sizes)  # (N,)
    rng.shuffle(owner)
    return _group(owner, sizes)


def _deal_by_class(
    labels: npt.NDArray[np.integer], counts: npt.NDArray[np.int64], rng: np.random.Generator
) -> list[IndexArray]:
    """Give party ``p`` ``counts[c, p]`` random samples of class ``c``, for every class.

    Args:
        labels: Class ids ``0 .. C-1`` (see :func:`_dense`), shape ``(N,)``.
        counts: How many samples of each class each party gets, shape ``(C, P)``, rows summing to
            the class sizes.
        rng: The generator the split draws from.
    """
    num_classes, num_parties = counts.shape
    by_class = np.argsort(labels, kind="stable")  # (N,) sample ids grouped by class
    # Party ids in the same class-major order (class 0's parties, then class 1's, ...), shuffled
    # inside each class so that any sample of a class is equally likely to go to any of its parties.
    owners = np.repeat(np.tile(np.arange(num_parties, dtype=_owner_dtype(num_parties)), num_classes), counts.ravel())
    ends = np.cumsum(counts.sum(axis=1))
    for start, end in zip(ends - counts.sum(axis=1), ends, strict=True):
        rng.shuffle(owners[start:end])
    owner = np.empty_like(owners)
    owner[by_class] = owners
    return _group(owner, counts.sum(axis=0))


def _split_counts(total: npt.NDArray[np.int64], shares: npt.NDArray[np.float64]) -> npt.NDArray[np.int64]:
    """Split ``total[i]`` items by the shares in row ``i`` (rounding the cumulative sums down).

    Args:
        total: Items to split per row, shape ``(R,)``.
        shares: Non-negative shares summing to 1 per row, shape ``(R, P)``.

    Returns:
        Integer counts, shape ``(R, P)``, row ``i`` summing to ``total[i]`` exactly.
    """
    bounds = np.floor(np.cumsum(shares, axis=1) * total[:, None]).astype(np.int64)  # (R, P)
    bounds = np.minimum(bounds, total[:, None])
    # The last bound is the total: float rounding must not drop or add an item.
    bounds[:, -1] = total
    return np.diff(bounds, axis=1, prepend=0)
