r"""Split a labelled data set across parties: IID, Dirichlet, label-skew and quantity-skew partitions.

Every partitioner is a pure function of ``(labels, seed)``: it draws only from its own
``np.random.default_rng(seed)``, so the same arguments give the same split on every DDP rank and in
every process. The result is a list of ``num_parties`` sorted ``int64`` index arrays that are
disjoint and together cover every sample; wrap any torch ``Dataset`` with ``Subset(dataset, part)``.
The classes that hold a strategy's parameters for a YAML ``class_path`` are in
:mod:`kdlightning.data.strategies`.

This module imports numpy only (matplotlib lazily, in :func:`plot_partition`).
"""

from __future__ import annotations

import math
import numbers
from os import PathLike
from pathlib import Path

import numpy as np
import numpy.typing as npt

from kdlightning.atomic import save_figure
from kdlightning.errors import ConfigurationError

__all__ = [
    "dirichlet",
    "iid",
    "label_skew",
    "partition_stats",
    "plot_partition",
    "quantity_skew",
]

IndexArray = npt.NDArray[np.int64]

# Up to this many parties (or classes) the ids fit in uint16, which numpy's stable argsort sorts
# with a radix sort: about 10x faster than its stable sort for wider integers.
_UINT16_LIMIT = 1 << 16


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------

_MAX_RETRIES = 100
"""Redraws :func:`dirichlet` allows by default."""

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


def _check_positive(name: str, value: object, what: str = "") -> float:
    """Return ``value`` as a ``float`` if it is finite and > 0, else raise ``ValueError`` (``what`` says what it is)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigurationError(f"{name} must be a finite number > 0{what}, got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and number > 0):
        raise ConfigurationError(f"{name} must be a finite number > 0{what}, got {number}")
    return number


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


# ----------------------------------------------------------------------------------------------
# Partition functions
# ----------------------------------------------------------------------------------------------


def iid(labels: npt.ArrayLike, num_parties: int, seed: int) -> list[IndexArray]:
    """Split samples uniformly at random into ``num_parties`` parties of (nearly) equal size.

    Party sizes differ by at most one (the first ``N % num_parties`` parties get the extra sample).
    Labels are only validated: each party's label histogram follows the data set's.

    Args:
        labels: Class ids, shape ``(N,)``, non-negative integers.
        num_parties: Number of parties ``P``, in ``[1, N]``.
        seed: Seed of the split's own generator, ``>= 0``.

    Returns:
        ``P`` sorted ``int64`` index arrays, disjoint and together covering ``range(N)``.

    Raises:
        ValueError: If an argument is outside the range above.

    Examples:
        >>> import numpy as np
        >>> parts = iid(np.arange(10) % 2, num_parties=3, seed=0)
        >>> [len(part) for part in parts]
        [4, 3, 3]
        >>> np.array_equal(np.sort(np.concatenate(parts)), np.arange(10))
        True
    """
    return _iid(labels, num_parties, seed, _Names("iid"))


def _iid(labels: npt.ArrayLike, num_parties: int, seed: int, names: _Names) -> list[IndexArray]:
    """:func:`iid`, its errors naming the arguments by ``names``."""
    array, parties = _check_common(labels, num_parties, seed, names)
    base, extra = divmod(array.size, parties)
    sizes = np.full(parties, base, dtype=np.int64)
    sizes[:extra] += 1
    return _deal(sizes, np.random.default_rng(seed))


def dirichlet(
    labels: npt.ArrayLike,
    num_parties: int,
    alpha: float,
    seed: int,
    min_size: int = 1,
    max_retries: int = _MAX_RETRIES,
) -> list[IndexArray]:
    r"""Split each class across parties by Dirichlet(alpha) shares (label-distribution skew).

    For every class ``c`` draw shares :math:`q_c \sim \mathrm{Dir}(\alpha \mathbf{1}_P)` and give
    party ``p`` about :math:`q_{c,p} N_c` of the class's ``N_c`` samples, chosen at random (the
    cumulative shares are rounded down, so the counts sum to ``N_c``). This is Hsu et al.,
    "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
    Classification", 2019, in the per-class form of Yurochkin et al. 2019 and NIID-Bench (Li et
    al., ICDE 2022). Small ``alpha`` gives parties few dominant classes; as ``alpha`` grows every
    party's class shares tend to the data set's (IID).

    While some party has fewer than ``min_size`` samples the shares are redrawn, at most
    ``max_retries`` times; then a ``ValueError`` reports the sizes reached.

    Args:
        labels: Class ids, shape ``(N,)``, non-negative integers.
        num_parties: Number of parties ``P``, in ``[1, N]`` (and ``P * min_size <= N``).
        alpha: Dirichlet concentration, ``> 0``.
        seed: Seed of the split's own generator, ``>= 0``.
        min_size: Fewest samples a party may get, ``>= 0``.
        max_retries: Redraws allowed after the first draw, ``>= 0``. Each costs ``C × P`` gamma draws.

    Returns:
        ``P`` sorted ``int64`` index arrays, disjoint and together covering ``range(N)``.

    Raises:
        ValueError: If an argument is outside the range above, or if no draw gave every party
            ``min_size`` samples.

    Examples:
        >>> import numpy as np
        >>> labels = np.repeat(np.arange(4), 50)
        >>> parts = dirichlet(labels, num_parties=5, alpha=0.5, seed=0, min_size=5)
        >>> len(parts), min(len(part) for part in parts) >= 5
        (5, True)
        >>> np.array_equal(np.sort(np.concatenate(parts)), np.arange(200))
        True
    """
    return _dirichlet(labels, num_parties, alpha, seed, min_size, max_retries, _Names("dirichlet"))


def _dirichlet(
    labels: npt.ArrayLike,
    num_parties: int,
    alpha: float,
    seed: int,
    min_size: int,
    max_retries: int,
    names: _Names,
) -> list[IndexArray]:
    """:func:`dirichlet`, its errors naming the arguments by ``names``."""
    array, parties = _check_common(labels, num_parties, seed, names)
    concentration = _check_positive(names("alpha"), alpha, _ALPHA)
    smallest = _check_int(names("min_size"), min_size, 0)
    retries = _check_int(names("max_retries"), max_retries, 0)
    if parties * smallest > array.size:
        raise ConfigurationError(
            f"{names('min_size')} must be in [0, N // num_parties = {array.size // parties}] for N={array.size} "
            f"samples and {names.key('num_parties')}={parties}, got {smallest}"
        )
    rng = np.random.default_rng(seed)
    dense, class_sizes, _ = _dense(array)  # (N,), (C,)
    best_sizes: npt.NDArray[np.int64] | None = None
    for _ in range(retries + 1):
        shares = rng.dirichlet(np.full(parties, concentration), size=class_sizes.size)  # (C, P)
        counts = _split_counts(class_sizes, shares)  # (C, P)
        sizes = counts.sum(axis=0)
        if sizes.min() >= smallest:
            return _deal_by_class(dense, counts, rng)
        if best_sizes is None or sizes.min() > best_sizes.min():
            best_sizes = sizes
    assert best_sizes is not None
    alpha_, min_size_, parties_ = names.key("alpha"), names.key("min_size"), names.key("num_parties")
    redraws = " or raise max_retries" if names.configured is None else ""  # a strategy class keeps the default
    raise ConfigurationError(
        f"{names.owner}: no draw in {retries + 1} gave every party at least {min_size_}={smallest} samples with "
        f"{alpha_}={concentration} and {parties_}={parties} (N={array.size}); the best draw's smallest party sizes "
        f"were {np.sort(best_sizes)[:5].tolist()}. Raise {alpha_}, lower {min_size_} or {parties_}{redraws}."
    )


def label_skew(labels: npt.ArrayLike, num_parties: int, classes_per_party: int, seed: int) -> list[IndexArray]:
    """Give every party exactly ``classes_per_party`` classes ("#C=k" label skew).

    Each party gets ``k = classes_per_party`` distinct classes, and each class present in
    ``labels`` is held by at least one party, so the split covers every sample. A class's samples
    are shuffled and split evenly (sizes differing by at most one) among the parties holding it
    (NIID-Bench, Li et al., "Federated Learning on Non-IID Data Silos: An Experimental Study",
    ICDE 2022; McMahan et al.'s pathological split when ``k = 2``).

    Class sets are drawn so that each party's set is a uniformly random ``k``-subset: the classes
    are first dealt out, in random order, one per party in turn (which covers every class), and
    each party's remaining classes are drawn at random from those it does not hold yet.

    Args:
        labels: Class ids, shape ``(N,)``, non-negative integers; ``C`` is the number of distinct
            classes present.
        num_parties: Number of parties ``P``, in ``[1, N]``, with ``P * k >= C``.
        classes_per_party: Classes per party ``k``, in ``[1, C]``.
        seed: Seed of the split's own generator, ``>= 0``.

    Returns:
        ``P`` sorted ``int64`` index arrays, disjoint and together covering ``range(N)``.

    Raises:
        ValueError: If an argument is outside the range above, or a class has fewer samples than
            parties holding it (a party would miss one of its ``k`` classes).

    Examples:
        >>> import numpy as np
        >>> labels = np.repeat(np.arange(5), 20)
        >>> parts = label_skew(labels, num_parties=4, classes_per_party=2, seed=0)
        >>> [len(np.unique(labels[part])) for part in parts]
        [2, 2, 2, 2]
        >>> np.array_equal(np.sort(np.concatenate(parts)), np.arange(100))
        True
    """
    return _label_skew(labels, num_parties, classes_per_party, seed, _Names("label_skew"))


def _label_skew(
    labels: npt.ArrayLike, num_parties: int, classes_per_party: int, seed: int, names: _Names
) -> list[IndexArray]:
    """:func:`label_skew`, its errors naming the arguments by ``names``."""
    array, parties = _check_common(labels, num_parties, seed, names)
    dense, sizes, present = _dense(array)  # (N,), (C,), (C,)
    num_classes = present.size
    k = _check_int(names("classes_per_party"), classes_per_party, 1, num_classes, " (the number of classes in labels)")
    parties_, per_party = names.key("num_parties"), names.key("classes_per_party")
    if parties * k < num_classes:
        raise ConfigurationError(
            f"{names.owner}: {parties_} * {per_party} must be >= the number of classes ({num_classes}) so that "
            f"every class is held by some party, got {parties_}={parties} * {per_party}={k} = {parties * k}"
        )
    rng = np.random.default_rng(seed)
    # Random keys pick each party's classes; forced classes get key -1 so they are picked first.
    keys = rng.random((parties, num_classes))  # (P, C)
    dealt = rng.permutation(num_classes)
    # Class dealt[i] goes to party i % P: at most ceil(C / P) <= k forced classes per party.
    keys[np.arange(num_classes) % parties, dealt] = -1.0
    chosen = np.argsort(keys, axis=1)[:, :k]  # (P, k)
    held = np.zeros((parties, num_classes), dtype=bool)  # (P, C)
    held[np.arange(parties)[:, None], chosen] = True
    holders = held.sum(axis=0)  # (C,)
    short = np.flatnonzero(holders > sizes)
    if short.size:
        c = short[0]
        raise ConfigurationError(
            f"{names.owner}: class {present[c]} has {sizes[c]} samples but is held by {holders[c]} parties; lower "
            f"{parties_}={parties} or {per_party}={k} so that every holder gets at least one sample"
        )
    # Even split of each class among its holders: the r-th holder gets one extra while r < N_c % m_c.
    rank = np.cumsum(held, axis=0) - 1  # (P, C), the party's rank among the class's holders
    base, extra = np.divmod(sizes, holders)
    counts = (held * (base + (rank < extra))).T.astype(np.int64)  # (C, P)
    return _deal_by_class(dense, counts, rng)


def quantity_skew(labels: npt.ArrayLike, num_parties: int, beta: float, seed: int) -> list[IndexArray]:
    r"""Split samples at random (IID labels) into parties whose sizes follow Dirichlet(beta).

    Every party gets one sample, then about :math:`q_p (N - P)` more, with shares
    :math:`q \sim \mathrm{Dir}(\beta \mathbf{1}_P)` (cumulative shares rounded down): no party is
    empty and no redraw is needed (NIID-Bench's quantity skew, Li et al.,
    "Federated Learning on Non-IID Data Silos: An Experimental Study", ICDE 2022). Small ``beta``
    gives very unequal sizes; each party's labels are still a uniform random sample.

    Args:
        labels: Class ids, shape ``(N,)``, non-negative integers.
        num_parties: Number of parties ``P``, in ``[1, N]``.
        beta: Dirichlet concentration of the party sizes, ``> 0``.
        seed: Seed of the split's own generator, ``>= 0``.

    Returns:
        ``P`` sorted ``int64`` index arrays, disjoint and together covering ``range(N)``.

    Raises:
        ValueError: If an argument is outside the range above.

    Examples:
        >>> import numpy as np
        >>> parts = quantity_skew(np.zeros(1000, dtype=int), num_parties=4, beta=0.5, seed=0)
        >>> sum(len(part) for part in parts), min(len(part) for part in parts) >= 1
        (1000, True)
    """
    return _quantity_skew(labels, num_parties, beta, seed, _Names("quantity_skew"))


def _quantity_skew(labels: npt.ArrayLike, num_parties: int, beta: float, seed: int, names: _Names) -> list[IndexArray]:
    """:func:`quantity_skew`, its errors naming the arguments by ``names``."""
    array, parties = _check_common(labels, num_parties, seed, names)
    concentration = _check_positive(names("beta"), beta, _BETA)
    rng = np.random.default_rng(seed)
    shares = rng.dirichlet(np.full(parties, concentration))[None, :]  # (1, P)
    sizes = 1 + _split_counts(np.array([array.size - parties], dtype=np.int64), shares)[0]  # (P,)
    return _deal(sizes, rng)


# ----------------------------------------------------------------------------------------------
# Statistics and plots
# ----------------------------------------------------------------------------------------------


def partition_stats(
    labels: npt.ArrayLike, parts: list[npt.NDArray[np.integer]], num_classes: int | None = None
) -> npt.NDArray[np.int64]:
    """Count each party's samples per class.

    Args:
        labels: Class ids, shape ``(N,)``, non-negative integers.
        parts: One index array per party (``P`` of them), indices in ``[0, N)``.
        num_classes: Number of classes ``C``, ``> labels.max()``; defaults to ``labels.max() + 1``.

    Returns:
        Counts, shape ``(P, C)``: entry ``[p, c]`` is the number of samples of class ``c`` in party ``p``.

    Raises:
        ValueError: If ``labels`` is not a 1-D non-negative integer array, ``parts`` is empty, or
            ``num_classes`` is not above the largest label.

    Examples:
        >>> import numpy as np
        >>> labels = np.array([0, 0, 1, 2, 2, 2])
        >>> partition_stats(labels, [np.array([0, 2]), np.array([1, 3, 4, 5])])
        array([[1, 1, 0],
               [1, 0, 3]])
    """
    names = _Names("partition_stats")
    array = _check_labels(labels, names)
    top = int(array.max())
    classes = top + 1 if num_classes is None else _check_int(names("num_classes"), num_classes, top + 1)
    if len(parts) == 0:
        raise ConfigurationError(f"{names('parts')} must hold at least 1 index array, got an empty list")
    lengths = np.array([len(part) for part in parts], dtype=np.int64)
    indices = np.concatenate([np.asarray(part, dtype=np.int64).ravel() for part in parts])
    party = np.repeat(np.arange(len(parts), dtype=np.int64), lengths)
    flat = np.bincount(party * classes + array[indices], minlength=len(parts) * classes)
    return flat.reshape(len(parts), classes).astype(np.int64, copy=False)


def plot_partition(
    labels: npt.ArrayLike,
    parts: list[npt.NDArray[np.integer]],
    path: str | PathLike[str],
    title: str | None = None,
) -> Path:
    """Write a PNG of each party's class counts (:func:`partition_stats`).

    Up to 100 parties are drawn as stacked bars (one colour per class); more as a parties × classes
    heatmap. Uses matplotlib's Agg canvas directly, so the caller's pyplot backend is untouched.

    Args:
        labels: Class ids, shape ``(N,)``, non-negative integers.
        parts: One index array per party.
        path: Where to write the PNG; parent directories are created.
        title: Figure title; defaults to the number of parties and samples.

    Returns:
        The path written.

    Examples:
        >>> import os, tempfile
        >>> import numpy as np
        >>> labels = np.repeat(np.arange(3), 10)
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     out = plot_partition(labels, iid(labels, 3, seed=0), os.path.join(tmp, "iid.png"))
        ...     out.stat().st_size > 0
        True
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = partition_stats(labels, parts)  # (P, C)
    num_parties, num_classes = counts.shape
    figure = Figure(figsize=(min(4.0 + 0.25 * num_parties, 16.0), 4.5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    if num_parties <= 100:
        bottom = np.zeros(num_parties, dtype=np.int64)
        for c in range(num_classes):
            axes.bar(np.arange(num_parties), counts[:, c], bottom=bottom, width=0.85, label=str(c))
            bottom += counts[:, c]
        axes.set_ylabel("samples")
        if num_classes <= 20:
            axes.legend(title="class", loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small")
    else:
        image = axes.imshow(counts.T, aspect="auto", interpolation="nearest", cmap="viridis")
        figure.colorbar(image, ax=axes, label="samples")
        axes.set_ylabel("class")
    axes.set_xlabel("party")
    axes.set_title(title if title is not None else f"{num_parties} parties, {counts.sum()} samples")
    return save_figure(figure, path)
