"""What a search found (:class:`TuneResult`): how trials are ranked, how the chosen one is tested, ``best.json``."""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from optuna.trial import FrozenTrial, TrialState

from kdlightning.errors import RunError
from kdlightning.tuning.options import TuneOptions
from kdlightning.tuning.trials import Built

__all__ = ["TuneResult", "best_summary", "rank", "test_chosen", "trial_rank", "value_of"]


@dataclass
class TuneResult:
    """What a search found.

    Attributes:
        out: the output directory.
        best_trial: number of the chosen trial.
        best_params: its values, by full config key.
        best_value: its validation metric.
        val_before: the validation metric of the student before training.
        test_metrics: the chosen point's test metrics (empty when ``tune.test`` is off).
        test_model: ``"checkpoint"`` (the chosen trial's own weights) or ``"retrained"`` (retrained with
            the same seed, when another worker's trial won).
        trials: one row per trial, as in ``trials.csv``.
    """

    out: Path
    best_trial: int
    best_params: dict[str, float]
    best_value: float
    val_before: float
    test_metrics: dict[str, float]
    test_model: str
    trials: list[dict[str, Any]]


def rank(
    value: float, val_loss: float | None, params: Mapping[str, float], keys: Sequence[str], direction: str
) -> tuple[Any, ...]:
    """Sort key of a result, best first: the metric, then the validation loss, then the values (in ``keys`` order)."""
    sign = -1.0 if direction == "maximize" else 1.0
    loss = val_loss if val_loss is not None and math.isfinite(val_loss) else math.inf
    return (sign * value, loss, tuple(float(params.get(key, math.nan)) for key in keys))


def value_of(trial: FrozenTrial) -> float:
    """The metric of a completed trial (Optuna's ``value``, which only a completed trial has)."""
    if trial.value is None:
        raise RunError(f"Trial {trial.number} ({trial.state.name}) has no value: only a completed trial is ranked.")
    return float(trial.value)


def trial_rank(trial: FrozenTrial, keys: Sequence[str], direction: str) -> tuple[Any, ...]:
    """:func:`rank` of a completed trial."""
    return rank(value_of(trial), trial.user_attrs.get("val_loss"), trial.params, keys, direction)


def test_chosen(
    best: FrozenTrial,
    build: Callable[[Sequence[L.Callback]], Built],
    saved: Path,
    retrain_callbacks: Sequence[L.Callback],
    metric: str,
) -> tuple[dict[str, float], str]:
    """Test the chosen trial: with its own weights, or trained again if another worker's trial saved ``saved``.

    Args:
        best: the chosen trial.
        build: builds the chosen point's trial with the given callbacks.
        saved: the file where the best trial so far saved ``{"trial", "params", "state_dict"}``.
        retrain_callbacks: the callbacks of a retraining (the teacher-output cache: with the trial's seed it
            gives the trial's student).
        metric: the validation metric, compared with the trial's after retraining.

    Returns:
        The test metrics and ``"checkpoint"`` or ``"retrained"``.
    """
    state = torch.load(saved, map_location="cpu", weights_only=True) if saved.is_file() else None
    if state is not None and state["trial"] == best.number:
        built = build([])
        built.model.load_state_dict(state["state_dict"])
        source = "checkpoint"
    else:
        built = build(list(retrain_callbacks))
        built.trainer.fit(built.model, datamodule=built.datamodule)
        source = "retrained"
        value = built.trainer.callback_metrics.get(metric)
        if value is not None and not math.isclose(float(value), value_of(best), abs_tol=1e-6):
            warnings.warn(
                f"Retrained with trial {best.number}'s values and seed, the student's {metric} is "
                f"{float(value):.4f}, not {best.value:.4f}: training is not deterministic here (GPU kernels?); "
                "the test figure is of the retrained student.",
                stacklevel=3,
            )
    metrics = built.trainer.test(built.model, datamodule=built.datamodule, verbose=False)[0]
    return {key: float(value) for key, value in metrics.items()}, source


def best_summary(
    result: TuneResult, options: TuneOptions, trials: Sequence[FrozenTrial], seed: int, storage: str
) -> dict[str, Any]:
    """The contents of ``best.json``: the chosen point, its gain and test metrics, and how it was searched."""
    counts = {state.name: sum(t.state == state for t in trials) for state in TrialState}
    return {
        "metric": options.metric,
        "direction": options.direction,
        "sampler": options.sampler,
        "pruner": options.pruner,
        "trial": result.best_trial,
        "params": result.best_params,
        "value": result.best_value,
        "val_before": result.val_before,
        "val_gain": result.best_value - result.val_before,
        "test_acc": result.test_metrics.get("test/acc"),
        "test_metrics": result.test_metrics,
        "test_model": result.test_model,
        "trials": {name: n for name, n in counts.items() if n},
        "seed": seed,
        "storage": storage,
        "study_name": options.study_name,
    }
