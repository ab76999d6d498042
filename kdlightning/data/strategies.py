"""Partition strategies as classes, for a YAML ``class_path`` (``kdlightning.data.DirichletPartitioner``).

Each class validates and holds one strategy's parameters and calls that strategy's function in
:mod:`kdlightning.data.partitioners`; it adds no behaviour of its own. This module imports numpy only.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy.typing as npt

from kdlightning.data.partitioners import (
    _ALPHA,
    _BETA,
    _MAX_RETRIES,
    IndexArray,
    _check_int,
    _check_positive,
    _dirichlet,
    _iid,
    _label_skew,
    _Names,
    _quantity_skew,
)

__all__ = [
    "DirichletPartitioner",
    "IIDPartitioner",
    "LabelSkewPartitioner",
    "Partitioner",
    "QuantitySkewPartitioner",
]


class Partitioner(ABC):
    """A partition strategy with its parameters, for a YAML ``class_path``.

    Subclasses validate their parameters in ``__init__`` and implement :meth:`partition` by calling
    one of the functions of :mod:`kdlightning.data.partitioners`. Their errors name their own parameters as a
    config gives them, under ``partitioner`` (``partitioner.alpha``): a partition's ``alpha`` is not KD's.
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

    Examples:
        >>> import numpy as np
        >>> LabelSkewPartitioner(classes_per_party=2).name
        'label_skew(classes_per_party=2)'
    """

    def __init__(self, classes_per_party: int) -> None:
        self.classes_per_party = _check_int(self._names()("classes_per_party"), classes_per_party, 1)

    @classmethod
    def _names(cls) -> _Names:
        return _Names(cls.__name__, ("classes_per_party",))

    @property
    def name(self) -> str:
        """``"label_skew(classes_per_party=...)"``."""
        return f"label_skew(classes_per_party={self.classes_per_party})"

    def partition(self, labels: npt.ArrayLike, num_parties: int, seed: int) -> list[IndexArray]:
        """See :func:`label_skew`."""
        return _label_skew(labels, num_parties, self.classes_per_party, seed, self._names())


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
