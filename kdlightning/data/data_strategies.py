"""Partition strategies that split by the data beyond its labels: a column of it, or a property of its inputs.

:class:`NaturalPartitioner` splits by an id column (:func:`~kdlightning.data.natural`),
:class:`FeatureSkewPartitioner` by a real-valued property (:func:`~kdlightning.data.feature_skew`). Like the
classes of :mod:`kdlightning.data.strategies`, each validates and holds its parameters and calls its function;
it reads what it splits by in :meth:`~kdlightning.data.strategies.Partitioner.partition_data`, which
:class:`~kdlightning.data.PartitionedDataModule` calls. This module imports numpy only.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from kdlightning.data._partitioning import IndexArray, _check_choice, _check_unit, _Names
from kdlightning.data.feature_skew import INPUT_FEATURES, _feature_skew
from kdlightning.data.natural import _BALANCES, Balance, _natural
from kdlightning.data.strategies import Partitioner, TrainingPool
from kdlightning.errors import ConfigurationError

__all__ = ["FeatureSkewPartitioner", "NaturalPartitioner"]


class NaturalPartitioner(Partitioner):
    """One party per distinct value of a column of the data, or groups of whole values (:func:`natural`).

    The column (an author, a device, a source) comes from the data set's ``train_columns`` (an
    :class:`~kdlightning.data.HFDataset` keeps a column with ``keep_columns=[column]``). With as many parties as
    the column has distinct values, party ``p`` holds the ``p``-th value (flwr-datasets' ``NaturalIdPartitioner``);
    with fewer, the values are dealt at random, evening out the parties' samples (``balance="samples"``) or their
    numbers of values (``balance="values"``); more parties than values are refused.

    It splits by the column, not by labels: :meth:`partition` on labels alone refuses, pointing to
    :meth:`partition_data` (which :class:`~kdlightning.data.PartitionedDataModule` calls) and to :func:`natural`.

    Args:
        column: The name of the id column in the data set's ``train_columns``.
        balance: With fewer parties than values: ``"samples"`` or ``"values"`` (see :func:`natural`).

    Examples:
        >>> import numpy as np
        >>> from kdlightning.data import LabelledData
        >>> data = LabelledData(np.zeros((6, 2)), np.zeros(6, dtype=np.int64), np.zeros((1, 2)),
        ...                     np.zeros(1, dtype=np.int64), num_classes=2,
        ...                     train_columns={"author": np.array(["bo", "al", "bo", "cy", "al", "bo"])})
        >>> partitioner = NaturalPartitioner(column="author")
        >>> partitioner.name
        'natural(column=author)'
        >>> [part.tolist() for part in partitioner.partition_data(data, np.arange(6), 3, seed=0)]
        [[1, 4], [0, 2, 5], [3]]
    """

    def __init__(self, column: str, balance: Balance = "samples") -> None:
        names = self._names()
        self.column = _check_name(names("column"), column)
        self.balance: Balance = balance
        _check_choice(names("balance"), balance, _BALANCES)

    @classmethod
    def _names(cls) -> _Names:
        return _Names(cls.__name__, ("column", "balance"))

    @property
    def name(self) -> str:
        """``"natural(column=...)"``, with ``balance`` when it is not ``"samples"``."""
        extra = "" if self.balance == "samples" else f", balance={self.balance}"
        return f"natural(column={self.column}{extra})"

    def partition(self, labels: npt.ArrayLike, num_parties: int, seed: int) -> list[IndexArray]:
        """Refused: the split reads column ``column`` of the data (:meth:`partition_data`), not the labels."""
        raise _needs_data(self, f"column {self.column!r}", "natural(values, num_parties, seed)")

    def partition_data(self, data: TrainingPool, pool: npt.ArrayLike, num_parties: int, seed: int) -> list[IndexArray]:
        """Split ``pool`` by its values of column ``column`` (see :func:`natural`)."""
        names = self._names()
        values = _column(data, self.column, names("column"), "")[np.asarray(pool)]
        return _natural(values, num_parties, seed, self.balance, names, "column", f"column {self.column!r}")


class FeatureSkewPartitioner(Partitioner):
    """The samples sorted by a property mixed with noise, cut into near-equal parties (:func:`feature_skew`).

    The property is computed from the inputs (``"mean_intensity"``: the mean of each image or feature vector;
    ``"text_length"``: the characters of each text) or read from a column of the data set's ``train_columns``
    (a built-in name wins over a column of the same name). ``strictness`` blends its normalised rank with
    uniform noise: 0 gives IID parties, 1 parties of contiguous ranges of the property (party 0 the smallest).
    flwr-datasets' counterpart is ``ContinuousPartitioner``.

    It splits by the property, not by labels: :meth:`partition` on labels alone refuses, pointing to
    :meth:`partition_data` (which :class:`~kdlightning.data.PartitionedDataModule` calls) and to
    :func:`feature_skew`.

    Args:
        feature: ``"mean_intensity"``, ``"text_length"`` or the name of a real-valued column.
        strictness: In ``[0, 1]``: how strictly the parties follow the property.

    Examples:
        >>> FeatureSkewPartitioner().name
        'feature_skew(feature=mean_intensity, strictness=0.5)'
        >>> FeatureSkewPartitioner(feature="age", strictness=1).name
        'feature_skew(feature=age, strictness=1)'
    """

    def __init__(self, feature: str = "mean_intensity", strictness: float = 0.5) -> None:
        names = self._names()
        self.feature = _check_name(names("feature"), feature)
        self.strictness = _check_unit(names("strictness"), strictness)

    @classmethod
    def _names(cls) -> _Names:
        return _Names(cls.__name__, ("feature", "strictness"))

    @property
    def name(self) -> str:
        """``"feature_skew(feature=..., strictness=...)"``."""
        return f"feature_skew(feature={self.feature}, strictness={self.strictness:g})"

    def partition(self, labels: npt.ArrayLike, num_parties: int, seed: int) -> list[IndexArray]:
        """Refused: the split reads the property ``feature`` of the data (:meth:`partition_data`), not the labels."""
        raise _needs_data(self, f"the property {self.feature!r}", "feature_skew(values, num_parties, strictness, seed)")

    def partition_data(self, data: TrainingPool, pool: npt.ArrayLike, num_parties: int, seed: int) -> list[IndexArray]:
        """Split ``pool`` by the property ``feature`` of its samples (see :func:`feature_skew`)."""
        names = self._names()
        index = np.asarray(pool)
        if self.feature in INPUT_FEATURES:
            values = INPUT_FEATURES[self.feature](data.train_inputs)[index]
        else:
            builtin = ", ".join(repr(name) for name in INPUT_FEATURES)
            values = _column(data, self.feature, names("feature"), f"one of the built-in features {builtin} or ")[index]
        what = f"the property {self.feature!r}"
        return _feature_skew(values, num_parties, self.strictness, seed, names, "feature", what)


def _check_name(name: str, value: object) -> str:
    """Return ``value`` if it is a non-empty string (a column or feature name), else raise ``ValueError``."""
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{name} must be a non-empty name, got {value!r}")
    return value


def _column(data: TrainingPool, column: str, name: str, allowed: str) -> np.ndarray:
    """Column ``column`` of ``data``'s ``train_columns``; a ``ValueError`` naming the columns there if it is absent."""
    columns = getattr(data, "train_columns", None) or {}
    if column not in columns:
        raise ConfigurationError(
            f"{name} must be {allowed}a column of the data set, got {column!r}; the data set's columns: "
            f"{sorted(columns)} (an HFDataset keeps columns of its source with `keep_columns`)"
        )
    return np.asarray(columns[column])


def _needs_data(partitioner: Partitioner, what: str, function: str) -> ConfigurationError:
    """The error of a strategy that splits by ``what`` of the data, asked to split labels alone."""
    return ConfigurationError(
        f"{type(partitioner).__name__} splits by {what} of the data set, not by labels: call its "
        f"partition_data(data, pool, num_parties, seed), as PartitionedDataModule does, or {function} on an array"
    )
