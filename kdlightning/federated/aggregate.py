"""Pure arithmetic of the federated experiment: parameter averages and communication rounds.

No Lightning and no Flower here: state dicts and accuracy curves go in, numbers come out.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from torch import Tensor

from kdlightning.errors import ConfigurationError

__all__ = ["censored_rounds_to_target", "round_reduction", "rounds_to_target", "weighted_average"]


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
        mean = sum(float(w) / total * state[key].double() for state, w in zip(states, weights, strict=True))
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
