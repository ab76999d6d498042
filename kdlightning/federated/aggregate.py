"""Pure arithmetic of the federated experiment: parameter averages and communication rounds.

No Lightning and no Flower here: state dicts and accuracy curves go in, numbers come out. The rounds to a target
and the reduction against the ``fresh`` start are computed here once (:func:`count_to_target`), for one
federation's ``summary.md`` and for an experiment's cells (:func:`start_results`) alike.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from kdlightning.errors import ConfigurationError

__all__ = [
    "COLLECTION_ROUNDS",
    "PAPER_REDUCTION",
    "StartResult",
    "TargetCount",
    "Targets",
    "accuracy_curves",
    "censored_rounds_to_target",
    "count_to_target",
    "round_reduction",
    "rounds_to_target",
    "start_results",
    "weighted_average",
]

COLLECTION_ROUNDS = {"fresh": 0, "average": 1, "consolidated": 1, "best_client": 1}
"""Communication rounds a start costs before FedAvg: collecting the clients' models takes one."""

PAPER_REDUCTION = 60.6
"""The paper's average reduction in total communication rounds of the KD-consolidated start, in percent."""

Curves = dict[str, dict[int, float]]
"""Each start's global test accuracy by FedAvg round (0: the start itself), as :func:`accuracy_curves` reads it."""


def weighted_average(states: Sequence[Mapping[str, Tensor]], weights: Sequence[float]) -> dict[str, Tensor]:
    r"""The weighted average :math:`\sum_k w_k \theta_k / \sum_k w_k` of state dicts with the same keys and shapes.

    FedAvg's aggregation, weighted by each client's number of training examples. Floating tensors are
    averaged in float64 and cast back; integer tensors (BatchNorm's ``num_batches_tracked``) take the
    rounded average.

    Args:
        states: one state dict per model, all of one architecture.
        weights: one non-negative weight per model, not all zero.

    Examples:
        >>> import torch
        >>> weighted_average([{"w": torch.tensor([0.0])}, {"w": torch.tensor([3.0])}], [2, 1])["w"]
        tensor([1.])
    """
    if not states or len(states) != len(weights):
        raise ConfigurationError(
            f"`states` and `weights` must be non-empty and of one length, got {len(states)} and {len(weights)}."
        )
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ConfigurationError(f"`weights` must be non-negative and not all zero, got {list(weights)}.")
    keys = list(states[0])
    for k, state in enumerate(states[1:], start=1):
        if list(state) != keys or any(state[key].shape != states[0][key].shape for key in keys):
            raise ConfigurationError(
                f"Model {k} has other parameters than model 0: a parameter average needs one architecture "
                "(use the KD-consolidated start for different architectures)."
            )
    total = float(sum(weights))
    out: dict[str, Tensor] = {}
    for key in keys:
        mean = torch.zeros(states[0][key].shape, dtype=torch.float64, device=states[0][key].device)
        for state, w in zip(states, weights, strict=True):  # in the clients' order, from 0, as sum() adds
            mean = mean + float(w) / total * state[key].double()
        reference = states[0][key]
        out[key] = (mean.round() if not reference.is_floating_point() else mean).to(reference.dtype)
    return out


def rounds_to_target(accuracies: Sequence[float], target: float) -> int | None:
    """The first round whose accuracy reaches ``target``: an index into ``accuracies``, one per round from round 0.

    ``accuracies[0]`` is the start's own accuracy, before any FedAvg round, so a start that already meets the
    target needs 0 rounds. None when no round reaches the target.

    Examples:
        >>> rounds_to_target([0.3, 0.5, 0.7, 0.8, 0.79], 0.75)
        3
        >>> rounds_to_target([0.8, 0.9], 0.75)
        0
        >>> rounds_to_target([0.3, 0.5], 0.75) is None
        True
    """
    for index, accuracy in enumerate(accuracies):
        if accuracy >= target:
            return index
    return None


def censored_rounds_to_target(accuracies: Sequence[float], target: float) -> tuple[int, bool]:
    """:func:`rounds_to_target`, censored: ``(rounds, censored)``, a start that never reaches ``target`` counted.

    ``accuracies`` runs from round 0 to the last round run, R. A start that reaches ``target`` in none of them
    counts as reaching it at round R + 1, the first round not run, and is marked censored: it needs at least that
    many, so the count is the least it could be. Leaving such a start out would keep only the seeds where it did
    well; counting it at R + 1 keeps every seed.

    Examples:
        >>> censored_rounds_to_target([0.3, 0.5, 0.7, 0.8], 0.75)
        (3, False)
        >>> censored_rounds_to_target([0.3, 0.5, 0.7], 0.75)  # rounds 0 to 2 run: censored at round 3
        (3, True)
    """
    reached = rounds_to_target(accuracies, target)
    return (len(accuracies), True) if reached is None else (reached, False)


def round_reduction(baseline_rounds: int | None, rounds: int | None, extra_rounds: int = 0) -> float | None:
    r"""The reduction in total communication rounds, in percent: :math:`100\,(1 - (r + e) / r_{base})`.

    ``extra_rounds`` are the start's own communication (collecting the clients' models: 1 round), so a start
    that meets the target at round 0 costs only those. None when either start never reached the target, or
    when the baseline needs no round. A start that never reached it within the rounds run can be counted at the
    first round not run (:func:`censored_rounds_to_target`): a censored ``rounds`` makes the reduction the most it
    could be, a censored ``baseline_rounds`` the least.

    Examples:
        >>> round_reduction(20, 7, extra_rounds=1)
        60.0
        >>> round_reduction(4, 0, extra_rounds=1)
        75.0
    """
    if baseline_rounds is None or rounds is None or baseline_rounds <= 0:
        return None
    value = 100.0 * (1.0 - (rounds + extra_rounds) / baseline_rounds)
    return value if math.isfinite(value) else None


def accuracy_curves(rows: Iterable[Mapping[str, Any]]) -> Curves:
    """Each start's test accuracy by round, from rows of ``rounds.csv`` (``start``, ``round``, ``test_acc``).

    Values may be numbers or the text a CSV file gives back; a ``test_acc`` that is not a number is nan.

    Examples:
        >>> accuracy_curves([{"start": "fresh", "round": "0", "test_acc": "0.5"}, {"start": "fresh", "round": 1,
        ...     "test_acc": 0.75}])
        {'fresh': {0: 0.5, 1: 0.75}}
    """
    curves: Curves = {}
    for row in rows:
        curves.setdefault(str(row["start"]), {})[int(row["round"])] = _number(row["test_acc"])
    return curves


@dataclass(frozen=True)
class Targets:
    """The test accuracies the rounds are counted to: one fixed ``accuracy``, or ``fractions`` of fresh's best.

    Args:
        accuracy: a test accuracy to reach; None to use ``fractions``.
        fractions: each a fraction of the best test accuracy the ``fresh`` start reaches after round 0.
    """

    accuracy: float | None = None
    fractions: tuple[float, ...] = (0.95, 0.98, 0.99)

    def of(self, curves: Mapping[str, Mapping[int, float]]) -> list[tuple[str, float]]:
        """``(label, accuracy)`` of each target for ``curves``; none while ``fractions`` have no fresh start to scale.

        Examples:
            >>> Targets(fractions=(0.5,)).of({"fresh": {0: 0.1, 1: 0.6, 2: 0.8}})
            [("50% of fresh's best", 0.4)]
            >>> Targets(accuracy=0.9).of({})
            [('target', 0.9)]
        """
        if self.accuracy is not None:
            return [("target", self.accuracy)]
        fresh = [accuracy for number, accuracy in curves.get("fresh", {}).items() if number >= 1]
        if not fresh:
            return []
        return [(f"{100 * f:g}% of fresh's best", f * max(fresh)) for f in self.fractions]


class TargetCount(NamedTuple):
    """One start's count of rounds to one target (:func:`count_to_target`)."""

    rounds: int
    """FedAvg rounds to the target, from round 0; the first round not run where the start missed it."""
    collection: int
    """The start's communication rounds before FedAvg (:data:`COLLECTION_ROUNDS`)."""
    censored: bool
    """Whether the start missed the target within the rounds run (``rounds`` is then the first round not run)."""
    reduction: float | None
    """The reduction in total rounds against ``fresh``, in %; None for ``fresh`` itself, without a ``fresh`` curve,
    or where fresh meets the target at round 0."""
    fresh_censored: bool
    """Whether fresh's count, the reference of ``reduction``, is censored (False without a reduction to make)."""

    @property
    def total(self) -> int:
        """Total communication rounds to the target: the FedAvg rounds plus the collection."""
        return self.rounds + self.collection


def count_to_target(
    curves: Mapping[str, Mapping[int, float]], start: str, target: float, collection: int | None = None
) -> TargetCount:
    """``start``'s rounds to ``target`` in ``curves`` and its reduction against ``fresh``, both censored.

    A start (fresh as well) that reaches the target in none of the rounds run counts as reaching it at the first
    round not run (:func:`censored_rounds_to_target`); the reduction is :func:`round_reduction`, the start's
    collection round counted in: ``collection`` rounds, by default the start's :data:`COLLECTION_ROUNDS`.

    Examples:
        >>> curves = {"fresh": {0: 0.1, 1: 0.5, 2: 0.8, 3: 0.92}, "consolidated": {0: 0.95, 1: 0.96}}
        >>> count = count_to_target(curves, "consolidated", 0.9)
        >>> count.total, round(count.reduction, 1), count.censored
        (1, 66.7, False)
    """
    curve = curves[start]
    reached, missed = censored_rounds_to_target([curve[r] for r in sorted(curve)], target)
    collection = COLLECTION_ROUNDS.get(start, 1) if collection is None else collection
    fresh = curves.get("fresh")
    reduction, fresh_missed = None, False
    if fresh and start != "fresh":
        baseline, fresh_missed = censored_rounds_to_target([fresh[r] for r in sorted(fresh)], target)
        reduction = round_reduction(baseline, reached, collection)
    return TargetCount(reached, collection, missed, reduction, fresh_missed)


class StartResult(NamedTuple):
    """One start of one federation (:func:`start_results`): its total rounds and reduction, and whether censored."""

    rounds: float
    """Total rounds to the targets (FedAvg rounds plus the collection round), the mean over the targets."""
    reduction: float
    """The reduction in total rounds against ``fresh``, in %, the mean over the targets; nan for ``fresh`` itself,
    without a ``fresh`` start, or where fresh meets every target at round 0."""
    censored: bool
    """Whether a target was not reached within the rounds run, by this start or by ``fresh`` (its reference), and
    counted at the first round not run."""


def start_results(
    curves: Mapping[str, Mapping[int, float]],
    targets: Sequence[float],
    collections: Mapping[str, int] | None = None,
) -> dict[str, StartResult]:
    """Per start of one finished federation: its total rounds and reduction, each the mean over ``targets``.

    ``collections``: a start's collection rounds where its name does not say them (:func:`count_to_target`).

    Each count is :func:`count_to_target`'s. The rounds are nan without a target (no ``fresh`` start to scale
    fractions by); the reduction is nan for ``fresh`` itself, without ``fresh``, or where fresh meets every target at
    round 0. A result is censored where the start missed a target, or where fresh, against which a reduction was
    made, did.

    Examples:
        >>> curves = {"fresh": {0: 0.1, 1: 0.5, 2: 0.8, 3: 0.9}, "consolidated": {0: 0.5, 1: 0.6, 2: 0.7, 3: 0.75}}
        >>> start_results(curves, [0.81])["consolidated"]  # missed: counted at round 4, 5 rounds against 3
        StartResult(rounds=5.0, reduction=-66.66666666666667, censored=True)
    """
    results = {}
    for start in curves:
        counts = [count_to_target(curves, start, target, (collections or {}).get(start)) for target in targets]
        reductions = [count.reduction for count in counts if count.reduction is not None]
        censored = any(count.censored or (count.reduction is not None and count.fresh_censored) for count in counts)
        results[start] = StartResult(_mean([count.total for count in counts]), _mean(reductions), censored)
    return results


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan
