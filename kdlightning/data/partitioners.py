r"""Split a labelled data set across parties: IID, Dirichlet, label-skew and quantity-skew partitions.

Every partitioner is a pure function of ``(labels, seed)``: it draws only from its own
``np.random.default_rng(seed)``, so the same arguments give the same split on every DDP rank and in
every process. The result is a list of ``num_parties`` sorted ``int64`` index arrays that are
disjoint and together cover every sample; wrap any torch ``Dataset`` with ``Subset(dataset, part)``.
The classes that hold a strategy's parameters for a YAML ``class_path`` are in
:mod:`kdlightning.data.strategies`. Shard partitions are in :mod:`kdlightning.data.shards`, size rules and
inner Dirichlet in :mod:`kdlightning.data.partition_sizes`, natural partitions (by an id column) in
:mod:`kdlightning.data.natural`, feature skew in :mod:`kdlightning.data.feature_skew`; the checks and building
blocks every partition shares are in the private ``kdlightning.data._partitioning``.

This module imports numpy only (matplotlib lazily, in :func:`plot_partition`).
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from kdlightning.atomic import save_figure
from kdlightning.data._partitioning import (
    _ALPHA,
    _BETA,
    _MAX_RETRIES,
    IndexArray,
    _check_choice,
    _check_common,
    _check_int,
    _check_labels,
    _check_positive,
    _deal,
    _deal_by_class,
    _dense,
    _even_sizes,
    _Names,
    _split_counts,
)
from kdlightning.errors import ConfigurationError

__all__ = [
    "ClassAssignment",
    "dirichlet",
    "iid",
    "label_skew",
    "partition_stats",
    "plot_partition",
    "quantity_skew",
]

ClassAssignment = Literal["random", "deterministic", "first-deterministic"]
"""How :func:`label_skew` picks each party's classes (flwr-datasets' ``class_assignment_mode``)."""

_ASSIGNMENTS: tuple[str, ...] = get_args(ClassAssignment)


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
    return _deal(_even_sizes(array.size, parties), np.random.default_rng(seed))


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


def label_skew(
    labels: npt.ArrayLike,
    num_parties: int,
    classes_per_party: int,
    seed: int,
    assignment: ClassAssignment = "random",
) -> list[IndexArray]:
    """Give every party exactly ``classes_per_party`` classes ("#C=k" label skew).

    Each party gets ``k = classes_per_party`` distinct classes, and each class present in
    ``labels`` is held by at least one party, so the split covers every sample. A class's samples
    are shuffled and split evenly (sizes differing by at most one, the lower party ids taking the
    extra ones) among the parties holding it (NIID-Bench, Li et al., "Federated Learning on Non-IID
    Data Silos: An Experimental Study", ICDE 2022; McMahan et al.'s pathological split when ``k = 2``).

    ``assignment`` picks each party's classes, as flwr-datasets' ``PathologicalPartitioner``
    ``class_assignment_mode`` does; classes are numbered ``0 .. C-1`` in ascending id order:

    - ``"random"`` (the default): each party's set is a uniformly random ``k``-subset. The classes
      are first dealt out, in random order, one per party in turn, and each party's remaining
      classes are drawn at random from those it does not hold yet. flwr's ``"random"`` draws the sets
      independently and may leave a class to no party (it warns and drops it); dealing every class
      first rules that out.
    - ``"deterministic"``: party ``p`` holds classes ``p, p+1, ..., p+k-1`` (mod ``C``); no
      randomness in the sets. Every class has a party only if ``P + k - 1 >= C``.
    - ``"first-deterministic"`` (the NIID-Bench paper's): party ``p`` holds class ``p mod C`` and
      ``k - 1`` others drawn at random. Every class is sure to have a party only if ``P >= C``.

    A setting that could leave a class to no party is refused, naming the class: flwr would drop its
    samples.

    Args:
        labels: Class ids, shape ``(N,)``, non-negative integers; ``C`` is the number of distinct
            classes present.
        num_parties: Number of parties ``P``, in ``[1, N]``, with ``P * k >= C``.
        classes_per_party: Classes per party ``k``, in ``[1, C]``.
        seed: Seed of the split's own generator, ``>= 0``.
        assignment: How each party's classes are picked: ``"random"``, ``"deterministic"`` or
            ``"first-deterministic"``.

    Returns:
        ``P`` sorted ``int64`` index arrays, disjoint and together covering ``range(N)``.

    Raises:
        ValueError: If an argument is outside the range above, ``assignment`` would leave a class to
            no party, or a class has fewer samples than parties holding it (a party would miss one of
            its ``k`` classes).

    Examples:
        >>> import numpy as np
        >>> labels = np.repeat(np.arange(5), 20)
        >>> parts = label_skew(labels, num_parties=4, classes_per_party=2, seed=0)
        >>> [len(np.unique(labels[part])) for part in parts]
        [2, 2, 2, 2]
        >>> np.array_equal(np.sort(np.concatenate(parts)), np.arange(100))
        True
        >>> parts = label_skew(labels, num_parties=4, classes_per_party=2, seed=0, assignment="deterministic")
        >>> [np.unique(labels[part]).tolist() for part in parts]
        [[0, 1], [1, 2], [2, 3], [3, 4]]
    """
    return _label_skew(labels, num_parties, classes_per_party, seed, _Names("label_skew"), assignment)


def _label_skew(
    labels: npt.ArrayLike,
    num_parties: int,
    classes_per_party: int,
    seed: int,
    names: _Names,
    assignment: ClassAssignment = "random",
) -> list[IndexArray]:
    """:func:`label_skew`, its errors naming the arguments by ``names``."""
    array, parties = _check_common(labels, num_parties, seed, names)
    mode = _check_choice(names("assignment"), assignment, _ASSIGNMENTS)
    dense, sizes, present = _dense(array)  # (N,), (C,), (C,)
    num_classes = present.size
    k = _check_int(names("classes_per_party"), classes_per_party, 1, num_classes, " (the number of classes in labels)")
    parties_, per_party = names.key("num_parties"), names.key("classes_per_party")
    if parties * k < num_classes:
        raise ConfigurationError(
            f"{names.owner}: {parties_} * {per_party} must be >= the number of classes ({num_classes}) so that "
            f"every class is held by some party, got {parties_}={parties} * {per_party}={k} = {parties * k}"
        )
    _check_assignment_covers(mode, parties, k, present, names)
    rng = np.random.default_rng(seed)
    held = np.zeros((parties, num_classes), dtype=bool)  # (P, C)
    if mode == "deterministic":
        chosen = (np.arange(parties)[:, None] + np.arange(k)) % num_classes  # (P, k)
    else:
        # Random keys pick each party's classes; forced classes get key -1 so they are picked first.
        keys = rng.random((parties, num_classes))  # (P, C)
        if mode == "random":
            dealt = rng.permutation(num_classes)
            # Class dealt[i] goes to party i % P: at most ceil(C / P) <= k forced classes per party.
            keys[np.arange(num_classes) % parties, dealt] = -1.0
        else:
            keys[np.arange(parties), np.arange(parties) % num_classes] = -1.0
        chosen = np.argsort(keys, axis=1)[:, :k]  # (P, k)
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


def _check_assignment_covers(mode: str, parties: int, k: int, present: npt.NDArray[np.int64], names: _Names) -> None:
    """Refuse an ``assignment`` under which some class could be held by no party, naming the first such class."""
    num_classes = present.size
    parties_, per_party = names.key("num_parties"), names.key("classes_per_party")
    if mode == "deterministic":
        reached, rule, raise_ = parties + k - 1, f"{parties_} + {per_party} - 1", f"{parties_} or {per_party}"
        how = "party p holds classes p .. p+k-1"
    elif mode == "first-deterministic":
        reached, rule, raise_ = parties, parties_, parties_
        how = "only party p's first class, p mod C, is fixed"
    else:
        return
    if reached < num_classes:
        missing = num_classes - reached
        raise ConfigurationError(
            f"{names.owner}: with {names.key('assignment')}={mode!r} ({how}) class {present[reached]}"
            f"{f' and {missing - 1} more' if missing > 1 else ''} could be held by no party; {rule} must be >= the "
            f"number of classes ({num_classes}), got {reached}. Raise {raise_}, or use "
            f"{names.key('assignment')}='random', which deals every class to a party"
        )


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
