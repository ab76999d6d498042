"""Partition strategies as classes, for a YAML ``class_path`` (``kdlightning.data.DirichletPartitioner``).

Each class validates and holds one strategy's parameters and calls that strategy's function in
:mod:`kdlightning.data.partitioners`, :mod:`kdlightning.data.shards`, :mod:`kdlightning.data.partition_sizes`,
:mod:`kdlightning.data.natural` or :mod:`kdlightning.data.feature_skew`; it adds no behaviour of its own. A
strategy that splits by something other than the labels (a column of the data, a property of the inputs) reads
it in :meth:`Partitioner.partition_data`: those are in :mod:`kdlightning.data.data_strategies`. This module
imports numpy only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from typing import Protocol

import numpy as np
import numpy.typing as npt

from kdlightning.data._partitioning import (
    _ALPHA,
    _BETA,
    _MAX_RETRIES,
    IndexArray,
    _check_choice,
    _check_int,
    _check_positive,
    _Names,
)
from kdlightning.data.partition_sizes import (
    SizeRule,
    _check_concentration,
    _check_rule,
    _check_sizes,
    _inner_dirichlet,
    _sized,
)
from kdlightning.data.partitioners import _ASSIGNMENTS, ClassAssignment, _dirichlet, _iid, _label_skew, _quantity_skew
from kdlightning.data.shards import _shards

__all__ = [
    "DirichletPartitioner",
    "IIDPartitioner",
    "InnerDirichletPartitioner",
    "LabelSkewPartitioner",
    "Partitioner",
    "QuantitySkewPartitioner",
    "ShardPartitioner",
    "SizeRulePartitioner",
    "TrainingPool",
]


class TrainingPool(Protocol):
    """What :meth:`Partitioner.partition_data` reads of a data set: :class:`~kdlightning.data.LabelledData` is one."""

    @property
    def train_inputs(self) -> np.ndarray:
        """Inputs of the training pool, ``(N, ...)``."""

    @property
    def train_labels(self) -> np.ndarray:
        """Class ids of the training pool, ``(N,)``."""

    @property
    def train_columns(self) -> Mapping[str, np.ndarray]:
        """Further per-sample columns of the training pool by name, each ``(N, ...)``."""


class Partitioner(ABC):
    """A partition strategy with its parameters, for a YAML ``class_path``.

    Subclasses validate their parameters in ``__init__`` and implement :meth:`partition` by calling
    one partition function (:mod:`kdlightning.data.partitioners` and its siblings). Their errors name their own
    parameters as a config gives them, under ``partitioner`` (``partitioner.alpha``): a partition's ``alpha`` is not
    KD's. :class:`~kdlightning.data.PartitionedDataModule` calls :meth:`partition_data`, which splits the labels
    with :meth:`partition` unless a strategy that reads the data otherwise overrides it.
    """

    @property
    @abstractmethod
    def name(self) -> str:
        """Short description for logs, e.g. ``"dirichlet(alpha=0.5)"``."""

    @abstractmethod
    def partition(self, labels: npt.ArrayLike, num_parties: int, seed: int) -> list[IndexArray]:
        """Split ``range(len(labels))`` into ``num_parties`` sorted, disjoint, covering index arrays.

        Args:
            labels: Class ids, shape ``(N,)``.
            num_parties: Number of parties, in ``[1, N]``.
            seed: Seed of the split's own generator, ``>= 0``.

        Returns:
            One sorted ``int64`` index array per party.
        """

    def partition_data(self, data: TrainingPool, pool: npt.ArrayLike, num_parties: int, seed: int) -> list[IndexArray]:
        """Split the training samples ``pool`` of ``data`` into ``num_parties`` parties.

        :class:`~kdlightning.data.PartitionedDataModule` calls it on its pool (the training set less the public
        split). This one splits the pool's labels (:meth:`partition`); a strategy that reads a column of the data
        or its inputs overrides it.

        Args:
            data: The data set (a :class:`~kdlightning.data.LabelledData`).
            pool: Indices of the samples to split into the training set of ``data``, shape ``(M,)``.
            num_parties: Number of parties, in ``[1, M]``.
            seed: Seed of the split's own generator, ``>= 0``.

        Returns:
            One sorted ``int64`` array per party of positions in ``pool`` (in ``[0, M)``, as :meth:`partition`
            gives positions in its labels), disjoint and together covering ``range(M)``: ``pool[part]`` are the
            party's samples.
        """
        return self.partition(np.asarray(data.train_labels)[np.asarray(pool)], num_parties, seed)

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        return f"{type(self).__name__}<{self.name}>"


class IIDPartitioner(Partitioner):
    """Uniformly random, equal-size parties (:func:`iid`).

    Examples:
        >>> import numpy as np
        >>> [len(part) for part in IIDPartitioner().partition(np.zeros(7, dtype=int), 2, seed=0)]
        [4, 3]
    """

    @property
    def name(self) -> str:
        """``"iid"``."""
        return "iid"

    def partition(self, labels: npt.ArrayLike, num_parties: int, seed: int) -> list[IndexArray]:
        """See :func:`iid`."""
        return _iid(labels, num_parties, seed, _Names(type(self).__name__, ()))


class DirichletPartitioner(Partitioner):
    """Per-class Dirichlet(alpha) shares over parties (:func:`dirichlet`; Hsu et al. 2019).

    Args:
        alpha: Dirichlet concentration, ``> 0``: small is skewed, large tends to IID.
        min_size: Fewest samples a party may get, ``>= 0``; shares are redrawn a bounded number of times.

    Examples:
        >>> import numpy as np
        >>> partitioner = DirichletPartitioner(alpha=0.5)
        >>> partitioner.name
        'dirichlet(alpha=0.5)'
        >>> len(partitioner.partition(np.repeat(np.arange(3), 30), 4, seed=0))
        4
    """

    def __init__(self, alpha: float, min_size: int = 1) -> None:
        names = self._names()
        self.alpha = _check_positive(names("alpha"), alpha, _ALPHA)
        self.min_size = _check_int(names("min_size"), min_size, 0)

    @classmethod
    def _names(cls) -> _Names:
        return _Names(cls.__name__, ("alpha", "min_size"))

    @property
    def name(self) -> str:
        """``"dirichlet(alpha=...)"``, with ``min_size`` when it is not 1."""
        extra = "" if self.min_size == 1 else f", min_size={self.min_size}"
        return f"dirichlet(alpha={self.alpha:g}{extra})"

    def partition(self, labels: npt.ArrayLike, num_parties: int, seed: int) -> list[IndexArray]:
        """See :func:`dirichlet`."""
        return _dirichlet(labels, num_parties, self.alpha, seed, self.min_size, _MAX_RETRIES, self._names())


class LabelSkewPartitioner(Partitioner):
    """Exactly ``classes_per_party`` classes per party (:func:`label_skew`; NIID-Bench, Li et al. 2022).

    Args:
        classes_per_party: Classes each party holds, ``>= 1`` (and at most the number of classes).
        assignment: How each party's classes are picked, as flwr-datasets' ``PathologicalPartitioner``
            ``class_assignment_mode``: ``"random"`` (every class dealt to a party first, the rest at random),
            ``"deterministic"`` (party ``p`` holds classes ``p .. p+k-1``) or ``"first-deterministic"``
            (party ``p`` holds class ``p`` and ``k - 1`` random ones); see :func:`label_skew`.

    Examples:
        >>> import numpy as np
        >>> LabelSkewPartitioner(classes_per_party=2).name
        'label_skew(classes_per_party=2)'
        >>> LabelSkewPartitioner(classes_per_party=2, assignment="deterministic").name
        'label_skew(classes_per_party=2, assignment=deterministic)'
    """

    def __init__(self, classes_per_party: int, assignment: ClassAssignment = "random") -> None:
        names = self._names()
        self.classes_per_party = _check_int(names("classes_per_party"), classes_per_party, 1)
        self.assignment: ClassAssignment = assignment
        _check_choice(names("assignment"), assignment, _ASSIGNMENTS)

    @classmethod
    def _names(cls) -> _Names:
        return _Names(cls.__name__, ("classes_per_party", "assignment"))

    @property
    def name(self) -> str:
        """``"label_skew(classes_per_party=...)"``, with ``assignment`` when it is not ``"random"``."""
        extra = "" if self.assignment == "random" else f", assignment={self.assignment}"
        return f"label_skew(classes_per_party={self.classes_per_party}{extra})"

    def partition(self, labels: npt.ArrayLike, num_parties: int, seed: int) -> list[IndexArray]:
        """See :func:`label_skew`."""
        return _label_skew(labels, num_parties, self.classes_per_party, seed, self._names(), self.assignment)


class QuantitySkewPartitioner(Partitioner):
    """IID labels with Dirichlet(beta) party sizes (:func:`quantity_skew`; NIID-Bench, Li et al. 2022).

    Args:
        beta: Dirichlet concentration of the party sizes, ``> 0``: small gives very unequal sizes.

    Examples:
        >>> QuantitySkewPartitioner(beta=0.5).name
        'quantity_skew(beta=0.5)'
    """

    def __init__(self, beta: float) -> None:
        self.beta = _check_positive(self._names()("beta"), beta, _BETA)

    @classmethod
    def _names(cls) -> _Names:
        return _Names(cls.__name__, ("beta",))

    @property
    def name(self) -> str:
        """``"quantity_skew(beta=...)"``."""
        return f"quantity_skew(beta={self.beta:g})"

    def partition(self, labels: npt.ArrayLike, num_parties: int, seed: int) -> list[IndexArray]:
        """See :func:`quantity_skew`."""
        return _quantity_skew(labels, num_parties, self.beta, seed, self._names())


class ShardPartitioner(Partitioner):
    """Label-sorted shards, ``shards_per_party`` random ones per party (:func:`shards`; McMahan et al. 2017).

    Args:
        shards_per_party: Shards each party gets, ``>= 1``.
        shard_size: Samples per shard, ``>= 1``; None for ``N // (num_parties * shards_per_party)``.

    Examples:
        >>> import numpy as np
        >>> partitioner = ShardPartitioner(shards_per_party=2)
        >>> partitioner.name
        'shards(shards_per_party=2)'
        >>> [len(part) for part in partitioner.partition(np.repeat(np.arange(5), 20), 5, seed=0)]
        [20, 20, 20, 20, 20]
    """

    def __init__(self, shards_per_party: int, shard_size: int | None = None) -> None:
        names = self._names()
        self.shards_per_party = _check_int(names("shards_per_party"), shards_per_party, 1)
        self.shard_size = None if shard_size is None else _check_int(names("shard_size"), shard_size, 1)

    @classmethod
    def _names(cls) -> _Names:
        return _Names(cls.__name__, ("shards_per_party", "shard_size"))

    @property
    def name(self) -> str:
        """``"shards(shards_per_party=...)"``, with ``shard_size`` when it is given."""
        extra = "" if self.shard_size is None else f", shard_size={self.shard_size}"
        return f"shards(shards_per_party={self.shards_per_party}{extra})"

    def partition(self, labels: npt.ArrayLike, num_parties: int, seed: int) -> list[IndexArray]:
        """See :func:`shards`."""
        return _shards(labels, num_parties, self.shards_per_party, seed, self.shard_size, self._names())


class SizeRulePartitioner(Partitioner):
    """IID labels, party ``k``'s size following a rule of ``k`` or given (:func:`sized`).

    One class for every rule: the rules differ only in the size vector, so the rule is a value a config
    names (``rule: square``) and its errors name ``partitioner.rule``; flwr-datasets has a class per
    rule (``LinearPartitioner``, ``SquarePartitioner``, ``ExponentialPartitioner``, ``SizePartitioner``).

    Args:
        rule: ``"linear"`` (``k + 1``), ``"square"`` (``(k + 1)**2``), ``"exponential"`` (``e**(k + 1)``), or
            ``"given"`` (``sizes``).
        sizes: With ``rule="given"`` only: each party's size, integers ``>= 1`` summing to the number of
            samples, or fractions in ``(0, 1]`` summing to 1.

    Examples:
        >>> SizeRulePartitioner(rule="linear").name
        'sized(rule=linear)'
        >>> SizeRulePartitioner(rule="given", sizes=[0.5, 0.3, 0.2]).name
        'sized(sizes=[0.5, 0.3, 0.2])'
    """

    def __init__(self, rule: SizeRule, sizes: list[int] | list[float] | None = None) -> None:
        names = self._names()
        self.rule: SizeRule = rule
        _check_rule(rule, sizes, names)
        self.sizes = None if sizes is None else _check_sizes(names("sizes"), sizes).tolist()

    @classmethod
    def _names(cls) -> _Names:
        return _Names(cls.__name__, ("rule", "sizes"))

    @property
    def name(self) -> str:
        """``"sized(rule=...)"``, or ``"sized(sizes=[...])"`` for given sizes."""
        return f"sized(rule={self.rule})" if self.sizes is None else f"sized(sizes={self.sizes})"

    def partition(self, labels: npt.ArrayLike, num_parties: int, seed: int) -> list[IndexArray]:
        """See :func:`sized`."""
        return _sized(labels, num_parties, self.rule, seed, self.sizes, self._names())


class InnerDirichletPartitioner(Partitioner):
    """Given party sizes, each party's class mix from Dirichlet(alpha) (:func:`inner_dirichlet`; Acar et al. 2021).

    Args:
        sizes: Each party's number of samples, integers ``>= 1`` summing to the number of samples.
        alpha: Dirichlet concentration, ``> 0``: one value, or one per class in ascending class-id order.

    Examples:
        >>> InnerDirichletPartitioner(sizes=[600, 400], alpha=0.5).name
        'inner_dirichlet(alpha=0.5, sizes=[600, 400])'
    """

    def __init__(self, sizes: list[int], alpha: float | list[float]) -> None:
        names = self._names()
        self.sizes = _check_sizes(names("sizes"), sizes, fractions=False).tolist()
        concentration = _check_concentration(names("alpha"), alpha)
        self.alpha = concentration if isinstance(concentration, float) else concentration.tolist()

    @classmethod
    def _names(cls) -> _Names:
        return _Names(cls.__name__, ("sizes", "alpha"))

    @property
    def name(self) -> str:
        """``"inner_dirichlet(alpha=..., sizes=[...])"``."""
        alpha = f"{self.alpha:g}" if isinstance(self.alpha, float) else str(self.alpha)
        return f"inner_dirichlet(alpha={alpha}, sizes={self.sizes})"

    def partition(self, labels: npt.ArrayLike, num_parties: int, seed: int) -> list[IndexArray]:
        """See :func:`inner_dirichlet`."""
        return _inner_dirichlet(labels, num_parties, self.sizes, self.alpha, seed, self._names())
