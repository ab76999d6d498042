"""A subset of labelled samples with another set's label mix: a party's test set drawn from the global one.

:class:`~kdlightning.data.PartitionedDataModule` with ``party_test=True`` tests each party, beside the global
test set, on a subset of it whose label proportions are those of the party's training data
(:func:`label_matched_subset`). This module imports numpy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from kdlightning.data._partitioning import IndexArray, _check_labels, _Names
from kdlightning.errors import ConfigurationError

__all__ = ["label_matched_subset"]


def label_matched_subset(labels: npt.ArrayLike, reference: npt.ArrayLike, seed: int | Sequence[int]) -> IndexArray:
    r"""The largest subset of ``labels`` whose label proportions are those of ``reference``, within rounding.

    With ``k_c`` samples of class ``c`` among the ``K`` of ``reference`` and ``T_c`` among ``labels``, the
    subset has :math:`M = \min_{c: k_c > 0} \lfloor T_c K / k_c \rfloor` samples: the most for which every
    class has enough. Class ``c`` gets :math:`\lfloor M k_c / K \rfloor` of them, and the samples that rounding
    down leaves go one each to the classes with the largest remainders (the lower class id on a tie), so
    :math:`|n_c - M k_c / K| < 1` and :math:`\sum_c n_c = M`. A class's samples are drawn uniformly without
    replacement by the function's own ``np.random.default_rng(seed)``; classes absent from ``reference`` get
    none.

    Args:
        labels: Class ids of the samples to draw from (a global test set), shape ``(T,)``, non-negative integers.
        reference: Class ids whose mix the subset follows (a party's training labels), shape ``(K,)``.
        seed: Seed of the draw's own generator: an integer ``>= 0`` or a sequence of them (as
            ``np.random.default_rng`` takes).

    Returns:
        The subset's indices into ``labels``, sorted ``int64``, without repeats.

    Raises:
        ValueError: If ``labels`` has no sample of a class ``reference`` holds.

    Examples:
        >>> import numpy as np
        >>> test = np.repeat([0, 1, 2], [10, 10, 10])
        >>> party = np.array([0, 0, 0, 1])  # three quarters class 0, a quarter class 1
        >>> subset = label_matched_subset(test, party, seed=0)
        >>> np.bincount(test[subset]).tolist()
        [10, 3]
    """
    names = _Names("label_matched_subset")
    pool = _check_labels(labels, names)
    wanted = _check_labels(reference, _Names("label_matched_subset", ("reference",)))
    num_classes = int(max(pool.max(), wanted.max())) + 1
    want = np.bincount(wanted, minlength=num_classes)  # (C,) k_c
    have = np.bincount(pool, minlength=num_classes)  # (C,) T_c
    held = np.flatnonzero(want)
    lacking = held[have[held] == 0]
    if lacking.size:
        raise ConfigurationError(
            f"label_matched_subset: `labels` has no sample of class {lacking[0]}"
            f"{f' (nor of {lacking.size - 1} more)' if lacking.size > 1 else ''}, which is "
            f"{want[lacking[0]] / wanted.size:.1%} of `reference`: no subset of it has that label mix"
        )
    total = int(wanted.size)
    size = int((have[held] * total // want[held]).min())  # M
    counts = size * want // total  # (C,) rounded down
    remainders = size * want % total
    short = size - int(counts.sum())
    counts[np.argsort(-remainders, kind="stable")[:short]] += 1
    # Samples grouped by class, in random order within each class; the first counts[c] of class c are drawn.
    order = np.random.default_rng(seed).permutation(pool.size)
    by_class = order[np.argsort(pool[order], kind="stable")]  # (T,)
    sorted_labels = pool[by_class]
    rank = np.arange(pool.size) - (np.cumsum(have) - have)[sorted_labels]  # rank within its class
    return np.sort(by_class[rank < counts[sorted_labels]]).astype(np.int64, copy=False)
