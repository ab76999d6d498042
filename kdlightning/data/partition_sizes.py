r"""Partitions whose party sizes are set: by a rule of the party id or given, with IID or Dirichlet contents.

:func:`sized` gives party ``k`` a share of the samples that follows a rule of ``k`` (linear, square,
exponential) or a given list, its samples drawn at random (IID labels); :func:`inner_dirichlet` takes
the sizes as given and draws each party's class mix from a Dirichlet distribution. Like every partition
function of :mod:`kdlightning.data.partitioners`, each is a pure function of ``(labels, seed)`` drawing
only from its own ``np.random.default_rng(seed)``, and returns ``num_parties`` sorted ``int64`` index
arrays that are disjoint and cover every sample. Their classes, for a YAML ``class_path``, are
:class:`kdlightning.data.SizeRulePartitioner` and :class:`kdlightning.data.InnerDirichletPartitioner`.
This module imports numpy only.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from kdlightning.data._partitioning import (
    IndexArray,
    _check_choice,
    _check_common,
    _check_positive,
    _deal,
    _deal_by_class,
    _dense,
    _Names,
)
from kdlightning.errors import ConfigurationError

__all__ = ["SizeRule", "inner_dirichlet", "sized"]

SizeRule = Literal["linear", "square", "exponential", "given"]
"""How :func:`sized` sets party ``k``'s size: in proportion to ``k + 1``, ``(k + 1)**2``, ``e**(k + 1)``, or given."""

_RULES: tuple[str, ...] = get_args(SizeRule)

_FRACTION_TOLERANCE = 1e-6
"""How far from 1 fractions given as ``sizes`` may sum."""

_INNER_ALPHA = " (the Dirichlet concentration of each party's class mix)"
"""What an inner-Dirichlet partition's ``alpha`` is, said in its errors."""


# ----------------------------------------------------------------------------------------------
# Sizes
# ----------------------------------------------------------------------------------------------


def _check_sizes(name: str, sizes: object, fractions: bool = True) -> npt.NDArray[np.int64] | npt.NDArray[np.float64]:
    """Return ``sizes`` as ``int64`` sample counts (each ``>= 1``) or, if ``fractions``, as ``float64`` fractions.

    Integers are counts; any non-integer makes them fractions, each in ``(0, 1]``, summing to 1 (within
    :data:`_FRACTION_TOLERANCE`). Whether counts sum to the number of samples is checked by
    :func:`_sizes_for`, which knows it.
    """
    allowed = "integers >= 1 (samples per party)" + (" or fractions in (0, 1] summing to 1" if fractions else "")
    try:
        array = np.asarray(sizes)
    except (TypeError, ValueError) as error:  # ragged nesting
        raise ConfigurationError(f"{name} must be a list of {allowed}, got {sizes!r}") from error
    if isinstance(sizes, (str, bytes)) or array.ndim != 1 or array.size == 0 or array.dtype.kind not in "iuf":
        raise ConfigurationError(f"{name} must be a non-empty list of {allowed}, got {sizes!r}")
    if array.dtype.kind in "iu":
        if array.min() < 1:
            raise ConfigurationError(f"{name} must be {allowed}, got {array.min()} at position {int(array.argmin())}")
        return array.astype(np.int64)
    if not fractions:
        raise ConfigurationError(f"{name} must be {allowed}, got {sizes!r}")
    bad = np.flatnonzero(~(np.isfinite(array) & (array > 0) & (array <= 1)))
    if bad.size:
        raise ConfigurationError(f"{name} must be {allowed}, got {array[bad[0]]} at position {int(bad[0])}")
    if not math.isclose(float(array.sum()), 1.0, rel_tol=0.0, abs_tol=_FRACTION_TOLERANCE):
        raise ConfigurationError(
            f"{name} must be {allowed}; as fractions they must sum to 1, got a sum of {float(array.sum())}"
        )
    return array.astype(np.float64)


def _rounded(units: npt.NDArray[np.number], total: int) -> npt.NDArray[np.int64]:
    """Split ``total`` items in proportion to ``units``: each share rounded down, what is left to the last party.

    The arithmetic of flwr-datasets' ``IdToSizeFncPartitioner``, so a rule gives the same sizes there.
    """
    fractions = units / units.sum()
    sizes = np.array(fractions * total, dtype=np.int64)
    sizes[-1] += total - sizes.sum()
    return sizes


def _sizes_for(
    checked: npt.NDArray[np.int64] | npt.NDArray[np.float64], total: int, parties: int, names: _Names
) -> npt.NDArray[np.int64]:
    """Sizes checked by :func:`_check_sizes` as sample counts for ``parties`` parties and ``total`` samples."""
    name, key = names("sizes"), names.key("sizes")
    if checked.size != parties:
        raise ConfigurationError(
            f"{names.owner}: {key} must give one size per party, got {checked.size} sizes for "
            f"{names.key('num_parties')}={parties}"
        )
    if checked.dtype.kind in "iu":
        if int(checked.sum()) != total:
            raise ConfigurationError(
                f"{name} must sum to the N={total} samples (every sample goes to a party), got a sum of "
                f"{int(checked.sum())}"
            )
        return checked.astype(np.int64)
    counts = _rounded(checked, total)
    if counts.min() < 1:
        p = int(counts.argmin())
        raise ConfigurationError(
            f"{name}: party {p}'s fraction {checked[p]:g} of the N={total} samples rounds down to no sample; give "
            "every party a fraction of at least 1 / N"
        )
    return counts


def sized(
    labels: npt.ArrayLike,
    num_parties: int,
    rule: SizeRule,
    seed: int,
    sizes: Sequence[float] | npt.ArrayLike | None = None,
) -> list[IndexArray]:
    r"""Split samples at random (IID labels) into parties whose sizes follow a rule of the party id, or are given.

    Party ``k`` (``k = 0 .. P-1``) gets a share of the ``N`` samples in proportion to

    - ``"linear"``: :math:`k + 1` (flwr-datasets' ``LinearPartitioner``);
    - ``"square"``: :math:`(k + 1)^2` (``SquarePartitioner``);
    - ``"exponential"``: :math:`e^{k + 1}` (``ExponentialPartitioner``);
    - ``"given"``: ``sizes[k]``, sample counts summing to ``N`` or fractions summing to 1
      (``SizePartitioner``, which takes counts only).

    A share is rounded down and what is left goes to the last party, as flwr-datasets does, so a rule
    gives the same sizes there; fractions are rounded the same way. Every party must get at least one
    sample: a rule whose smallest share rounds down to none is refused, naming it (flwr refuses it too).
    The samples themselves are drawn uniformly at random without replacement, where flwr gives party
    ``k`` a contiguous run of the data set's order (random only if the data set was shuffled first);
    and ``sizes`` must cover every sample, where flwr's ``SizePartitioner`` may leave some out.

    Args:
        labels: Class ids, shape ``(N,)``, non-negative integers (only validated).
        num_parties: Number of parties ``P``, in ``[1, N]``; with ``"given"``, ``len(sizes)``.
        rule: ``"linear"``, ``"square"``, ``"exponential"`` or ``"given"``.
        seed: Seed of the split's own generator, ``>= 0``.
        sizes: With ``"given"`` only: each party's size, integers ``>= 1`` summing to ``N`` or fractions
            in ``(0, 1]`` summing to 1 (within ``1e-6``).

    Returns:
        ``P`` sorted ``int64`` index arrays, disjoint and together covering ``range(N)``.

    Raises:
        ValueError: If an argument is outside the range above, or some party would get no sample.

    Examples:
        >>> import numpy as np
        >>> labels = np.zeros(100, dtype=int)
        >>> [len(part) for part in sized(labels, num_parties=4, rule="linear", seed=0)]
        [10, 20, 30, 40]
        >>> [len(part) for part in sized(labels, num_parties=3, rule="exponential", seed=0)]
        [9, 24, 67]
        >>> [len(part) for part in sized(labels, num_parties=3, rule="given", seed=0, sizes=[0.5, 0.3, 0.2])]
        [50, 30, 20]
    """
    return _sized(labels, num_parties, rule, seed, sizes, _Names("sized"))


def _sized(
    labels: npt.ArrayLike,
    num_parties: int,
    rule: SizeRule,
    seed: int,
    sizes: Sequence[float] | npt.ArrayLike | None,
    names: _Names,
) -> list[IndexArray]:
    """:func:`sized`, its errors naming the arguments by ``names``."""
    array, parties = _check_common(labels, num_parties, seed, names)
    chosen = _check_rule(rule, sizes, names)
    if chosen == "given":
        counts = _sizes_for(_check_sizes(names("sizes"), sizes), array.size, parties, names)
    else:
        counts = _rule_sizes(chosen, parties, array.size, names)
    return _deal(counts, np.random.default_rng(seed))


def _check_rule(rule: object, sizes: object, names: _Names) -> str:
    """Return ``rule`` if it is a :data:`SizeRule` given ``sizes`` exactly when it is ``"given"``."""
    chosen = _check_choice(names("rule"), rule, _RULES)
    rule_, sizes_ = names.key("rule"), names.key("sizes")
    if chosen == "given" and sizes is None:
        raise ConfigurationError(f"{names.owner}: {rule_}='given' needs {sizes_} (each party's size), got none")
    if chosen != "given" and sizes is not None:
        raise ConfigurationError(
            f"{names.owner}: {sizes_} is only for {rule_}='given'; {rule_}={chosen!r} sets the sizes itself"
        )
    return chosen


def _rule_sizes(rule: str, parties: int, total: int, names: _Names) -> npt.NDArray[np.int64]:
    """Party sizes under ``rule`` (``"linear"``, ``"square"`` or ``"exponential"``) for ``total`` samples."""
    ids = np.linspace(1, parties, parties)  # k + 1 for party k, as flwr-datasets numbers them
    with np.errstate(over="ignore", invalid="ignore"):  # e**(k + 1) overflows past k ~ 709
        units = {"linear": ids, "square": np.square(ids), "exponential": np.exp(ids)}[rule]
        counts = _rounded(units, total) if np.isfinite(units.sum()) else np.zeros(parties, dtype=np.int64)
    if counts.min() < 1:
        raise ConfigurationError(
            f"{names.owner}: {names.key('rule')}={rule!r} with {names.key('num_parties')}={parties} gives party "
            f"{int(counts.argmin())} no sample of the N={total}; lower {names.key('num_parties')}"
        )
    return counts


# ----------------------------------------------------------------------------------------------
# Inner Dirichlet
# ----------------------------------------------------------------------------------------------


def _check_concentration(name: str, alpha: object) -> float | npt.NDArray[np.float64]:
    """Return ``alpha`` as a ``float`` > 0, or a 1-D ``float64`` array of values > 0 (one per class)."""
    if isinstance(alpha, numbers.Real) and not isinstance(alpha, bool):
        return _check_positive(name, alpha, _INNER_ALPHA)
    allowed = f"a finite number > 0{_INNER_ALPHA}, or a non-empty list of them (one per class)"
    try:
        array = np.asarray(alpha, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ConfigurationError(f"{name} must be {allowed}, got {alpha!r}") from error
    if isinstance(alpha, (str, bytes, bool)) or array.ndim != 1 or array.size == 0:
        raise ConfigurationError(f"{name} must be {allowed}, got {alpha!r}")
    bad = np.flatnonzero(~(np.isfinite(array) & (array > 0)))
    if bad.size:
        raise ConfigurationError(f"{name} must be {allowed}, got {array[bad[0]]} at position {int(bad[0])}")
    return array


def inner_dirichlet(
    labels: npt.ArrayLike,
    num_parties: int,
    sizes: Sequence[int] | npt.ArrayLike,
    alpha: float | Sequence[float] | npt.ArrayLike,
    seed: int,
) -> list[IndexArray]:
    r"""Give each party the size it is given and a class mix drawn from Dirichlet(alpha).

    Party ``p`` draws class priors :math:`\pi_p \sim \mathrm{Dir}(\alpha)` over the ``C`` classes and
    gets ``sizes[p]`` samples, each of a class drawn from :math:`\pi_p`; a draw that falls on a class
    with no sample left is drawn again among the classes left (Acar et al., "Federated Learning Based
    on Dynamic Regularization", ICLR 2021; flwr-datasets' ``InnerDirichletPartitioner``). Small
    ``alpha`` gives each party a few dominant classes, as far as the class sizes allow; large ``alpha``
    tends to IID. Where :func:`dirichlet` fixes how each class is shared, this fixes the party sizes.

    flwr-datasets draws one sample at a time (a random party, then its class); this draws in rounds:
    every party draws all the samples it still needs at once (a multinomial), a class asked for more
    samples than it has left gives them to a uniformly random subset of the draws that asked for it,
    and the other draws are made again, in the next round, among the classes left. Each round uses
    up a class or ends the split, so there are at most ``C`` rounds. The model is flwr's; the order in
    which a class's last samples are handed out differs, so the splits are alike in distribution, not
    equal. Also unlike flwr: ``sizes`` must sum to ``N`` (flwr may leave samples out) and be ``>= 1``
    (flwr allows empty parties), and a party's samples of a class are drawn at random among the class's.

    Args:
        labels: Class ids, shape ``(N,)``, non-negative integers; ``C`` is the number of distinct
            classes present.
        num_parties: Number of parties ``P``, in ``[1, N]``, equal to ``len(sizes)``.
        sizes: Each party's number of samples, integers ``>= 1`` summing to ``N``.
        alpha: Dirichlet concentration, ``> 0``: one value for every class, or one per class in
            ascending class-id order (``C`` values).
        seed: Seed of the split's own generator, ``>= 0``.

    Returns:
        ``P`` sorted ``int64`` index arrays, disjoint and together covering ``range(N)``; party ``p``'s
        holds ``sizes[p]`` samples.

    Raises:
        ValueError: If an argument is outside the range above: ``sizes`` not summing to ``N``, or
            ``alpha`` giving other than ``C`` values.

    Examples:
        >>> import numpy as np
        >>> labels = np.repeat(np.arange(4), 50)
        >>> parts = inner_dirichlet(labels, num_parties=3, sizes=[100, 60, 40], alpha=0.5, seed=0)
        >>> [len(part) for part in parts]
        [100, 60, 40]
        >>> np.array_equal(np.sort(np.concatenate(parts)), np.arange(200))
        True
    """
    return _inner_dirichlet(labels, num_parties, sizes, alpha, seed, _Names("inner_dirichlet"))


def _inner_dirichlet(
    labels: npt.ArrayLike,
    num_parties: int,
    sizes: Sequence[int] | npt.ArrayLike,
    alpha: float | Sequence[float] | npt.ArrayLike,
    seed: int,
    names: _Names,
) -> list[IndexArray]:
    """:func:`inner_dirichlet`, its errors naming the arguments by ``names``."""
    array, parties = _check_common(labels, num_parties, seed, names)
    need = _sizes_for(_check_sizes(names("sizes"), sizes, fractions=False), array.size, parties, names)  # (P,)
    concentration = _check_concentration(names("alpha"), alpha)
    dense, left, present = _dense(array)  # (N,), (C,), (C,)
    num_classes = present.size
    if isinstance(concentration, float):
        concentration = np.full(num_classes, concentration)
    elif concentration.size != num_classes:
        raise ConfigurationError(
            f"{names.owner}: {names.key('alpha')} must give one value per class, in ascending class-id order: "
            f"{num_classes} for the classes {_some(present)} in labels, got {concentration.size}"
        )
    rng = np.random.default_rng(seed)
    priors = rng.dirichlet(concentration, size=parties)  # (P, C)
    counts = np.zeros((parties, num_classes), dtype=np.int64)  # (P, C)
    left, need = left.copy(), need.copy()
    while need.any():  # sum(need) == sum(left) throughout
        weights = priors * (left > 0)  # (P, C), the classes left
        mass = weights.sum(axis=1, keepdims=True)  # (P, 1)
        # A party whose priors (drawn with a tiny alpha) put nothing on the classes left draws them by what is left.
        weights = np.where(mass > 0, weights / np.where(mass > 0, mass, 1.0), left / left.sum())
        asked = rng.multinomial(need, weights)  # (P, C)
        for c in np.flatnonzero(asked.sum(axis=0) > left):
            asked[:, c] = rng.multivariate_hypergeometric(asked[:, c], left[c])
        counts += asked
        need -= asked.sum(axis=1)
        left -= asked.sum(axis=0)
    return _deal_by_class(dense, counts.T.copy(), rng)


def _some(values: npt.NDArray[np.int64], limit: int = 10) -> str:
    """Up to ``limit`` values, as a list."""
    shown = ", ".join(str(value) for value in values[:limit].tolist())
    return f"[{shown}{', ...' if values.size > limit else ''}]"
