"""A grid's points trained as batched members, recorded as the Optuna trials their sequential fits would be.

With ``tune.batched`` a :class:`~kdlightning.tuning.search.Search` offers its unfinished grid points
(:meth:`~kdlightning.tuning.search.Search.pending_points`), builds the method at each point as its trial would
start (:meth:`~kdlightning.tuning.search.Search.member`) and records each point's fit
(:meth:`~kdlightning.tuning.search.Search.record`). Whoever trains the points decides what else trains beside
them: the search alone trains its own grid (:meth:`~kdlightning.tuning.search.Search.run`); a study trains a
cell's methods and every validation's search of that cell in one fit. The pieces here turn one member's fit into
its trial: pure functions of the fits and the space.
"""

from __future__ import annotations

import datetime
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.distributions import BaseDistribution, FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from kdlightning.batching import MemberFit
from kdlightning.errors import ConfigurationError
from kdlightning.tuning.options import Param
from kdlightning.tuning.results import rank
from kdlightning.tuning.storage import worker

__all__ = ["Point", "RecordedChunk", "distributions", "member_name", "trials_of"]

Point = tuple[float, ...]
"""A grid point: one value per searched argument, in the search's key order."""


@dataclass(frozen=True)
class RecordedChunk:
    """A chunk of fits as trials: what :meth:`~kdlightning.tuning.search.Search.record` adds to its study.

    Attributes:
        trials: one trial per point, in the chunk's order (``number`` and ``trial_id`` are the study's to assign).
        best: the chunk's best completed point as ``(rank, number, params, fit)``, or None if none completed.
    """

    trials: list[FrozenTrial]
    best: tuple[tuple[Any, ...], int, dict[str, float], MemberFit] | None


def member_name(names: Sequence[str], point: Sequence[float]) -> str:
    """A grid point as a member's name: ``temperature=4,alpha=0.5``.

    Examples:
        >>> member_name(["temperature", "alpha"], (4.0, 0.5))
        'temperature=4,alpha=0.5'
    """
    return ",".join(f"{name}={value:g}" for name, value in zip(names, point, strict=True))


def distributions(space: Mapping[str, Param]) -> dict[str, BaseDistribution]:
    """The grid's distributions, as a sequential trial declares them (``suggest_float`` over each grid's range)."""
    return {key: FloatDistribution(min(p.values or ()), max(p.values or ())) for key, p in space.items()}


def trials_of(
    fits: Mapping[Point, MemberFit],
    keys: Sequence[str],
    space: Mapping[str, Param],
    metric: str,
    direction: str,
    first_number: int,
) -> RecordedChunk:
    """Each point's fit as the trial its sequential fit would record: value, validation curve, loss, epochs.

    Args:
        fits: each point's fit (its history validated on the search's own split).
        keys: the search's keys, in the order of a point's values.
        space: the search's space (for the trials' distributions).
        metric: the ranked validation metric (``val/acc``).
        direction: ``maximize`` or ``minimize``.
        first_number: the number the study will give the first trial (for the best point's record).

    Raises:
        ConfigurationError: a fit recorded no ``metric`` (the trainer did not validate).
    """
    trials, best = [], None
    for number, (point, fit) in enumerate(fits.items(), start=first_number):
        params = dict(zip(keys, map(float, point), strict=True))
        curve = [epoch[metric] for epoch in fit.history if metric in epoch]
        attrs: dict[str, Any] = {"worker": worker(), "batched": fit.batched, "epochs": fit.epochs}
        value, state = None, TrialState.FAIL
        if fit.error is not None:
            attrs["error"] = fit.error
        elif not curve:
            raise ConfigurationError(
                f"The batched search recorded no {metric}: members are ranked on the validation after their "
                "last epoch, so the trainer must validate (`limit_val_batches`, `check_val_every_n_epoch`)."
            )
        else:
            value, state = curve[-1], TrialState.COMPLETE
            attrs.update(val_curve=curve, val_loss=fit.history[-1].get("val/loss"))
            mine = rank(value, attrs["val_loss"], params, keys, direction)
            if best is None or mine < best[0]:
                best = (mine, number, params, fit)
        end = datetime.datetime.now()
        trials.append(
            FrozenTrial(
                number=-1,
                state=state,
                value=value,
                datetime_start=end - datetime.timedelta(seconds=fit.seconds),
                datetime_complete=end,
                params=params,
                distributions=distributions(space),
                user_attrs=attrs,
                system_attrs={},
                intermediate_values={},  # as a sequential trial without a pruner: the curve is in val_curve
                trial_id=-1,
            )
        )
    return RecordedChunk(trials, best)
