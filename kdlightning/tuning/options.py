"""The ``tune:`` section (:class:`TuneOptions`) and the search space it names, checked against the method."""

from __future__ import annotations

import inspect
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from kdlightning.errors import ConfigurationError
from kdlightning.losses import check_alpha, check_temperature
from kdlightning.tracking import check_logger

__all__ = ["BATCHED_METRICS", "DEFAULT_GRID", "PREFIX", "Param", "TuneOptions", "check_space"]

DEFAULT_GRID: dict[str, list[float]] = {
    "model.init_args.temperature": [1.0, 2.0, 4.0, 8.0, 16.0],
    "model.init_args.alpha": [0.1, 0.25, 0.5, 0.75, 0.9],
}
"""The default grid: 5 temperatures by 5 weights of the distillation term (25 points)."""

BATCHED_METRICS = ("val/acc", "val/loss")
"""The validation metrics each batched member logs."""

PREFIX = "model.init_args."
"""Searched keys are the method's own arguments: ``model.init_args.<name>``."""


@dataclass
class TuneOptions:
    """The tune: section of a kdl tune config (also --tune.<name>=... on the command line).

    Keys of ``grid``, ``ranges`` and ``log_scale`` name float arguments of the method, either in full
    (``model.init_args.temperature``) or by argument name (``temperature``).

    Attributes:
        sampler: ``grid`` (every point of ``grid``, Optuna's GridSampler) or ``tpe`` (``n_trials`` trials
            of Optuna's TPE over ``grid``'s values as choices and ``ranges`` as continuous intervals).
        grid: values of each searched argument: the grid's axes, or TPE's choices.
        ranges: TPE only: ``[low, high]`` intervals, replacing ``grid``'s values of the same argument.
        log_scale: arguments of ``ranges`` sampled on a log scale (e.g. the temperature).
        n_trials: TPE only: trials of the search (finished ones count on resume).
        n_startup_trials: TPE only: random trials before TPE models the results.
        pruner: ``none``, or ``successive_halving`` (Optuna's SuccessiveHalvingPruner on the validation
            metric after every epoch: stops trials that trail the others at the same epoch).
        min_resource: successive halving: epochs before a trial can be pruned.
        reduction_factor: successive halving: keep the best 1/reduction_factor of trials at each rung.
        metric: the validation metric that ranks trials; must be a ``val/`` key (the search never
            reads the test set).
        direction: ``maximize`` (accuracy) or ``minimize`` (a loss).
        storage: an Optuna RDB URL (``postgresql://...``, ``mysql://...``, ``sqlite:///...``) shared by
            the processes of one search; None for ``sqlite:///<out>/study.db``.
        study_name: the study's name in the storage.
        seed: seed of the sampler; None for the config's ``seed_everything``.
        heartbeat_interval: seconds between a running trial's heartbeats in the storage; a trial silent
            for twice as long is failed and retried by the other workers. None turns heartbeats off.
        logger: log each trial to Weights & Biases as a run of its own: true, or a dict of
            ``lightning.pytorch.loggers.WandbLogger`` arguments (``project``, ``group``, ``mode``, ...). Runs are
            grouped by the search (``--out``'s name unless ``group`` is given) and named ``trial<N>/<values>``;
            a ``WandbLogger`` in the config's ``trainer.logger`` gives its arguments and is not used in the trials,
            any other logger is kept in every trial. False (the default): trials log nothing.
        test: evaluate the chosen point on the test set after the search.
        batched: grid only: train the grid's points as batched members
            (:class:`~kdlightning.methods.BatchedMembers`), ``max_members`` per fit, instead of one fit per
            trial; the trials, tables and chosen point are the same. A method that cannot be a member, or a
            network ``torch.func`` cannot vmap, falls back to one fit per point.
        max_members: batched: points trained in one fit (memory grows with it); None for the whole grid.
        validation: where the search validates: ``own`` (the datamodule's split of the party's own data: all a
            party has by itself) or ``public`` (a small labelled split held out before partitioning, never
            trained on: the datamodule's ``validation="public"``, which needs its ``public_fraction`` > 0).
            ``kdl study`` also takes both, ``[own, public]``: tuned KD then runs twice, as ``tuned_kd`` and
            ``tuned_kd_public``.
    """

    sampler: Literal["grid", "tpe"] = "grid"
    grid: dict[str, list[float]] = field(default_factory=lambda: {k: list(v) for k, v in DEFAULT_GRID.items()})
    ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    log_scale: list[str] = field(default_factory=list)
    n_trials: int = 10
    n_startup_trials: int = 10
    pruner: Literal["none", "successive_halving"] = "none"
    min_resource: int = 1
    reduction_factor: int = 3
    metric: str = "val/acc"
    direction: Literal["maximize", "minimize"] = "maximize"
    storage: str | None = None
    study_name: str = "tune"
    seed: int | None = None
    heartbeat_interval: int | None = 60
    logger: bool | dict[str, Any] = False
    test: bool = True
    batched: bool = False
    max_members: int | None = 32
    validation: Literal["own", "public"] | list[Literal["own", "public"]] = "own"

    def __post_init__(self) -> None:
        if self.sampler not in ("grid", "tpe"):
            raise ConfigurationError(f"`tune.sampler` must be 'grid' or 'tpe', got {self.sampler!r}.")
        if self.pruner not in ("none", "successive_halving"):
            raise ConfigurationError(f"`tune.pruner` must be 'none' or 'successive_halving', got {self.pruner!r}.")
        if self.direction not in ("maximize", "minimize"):
            raise ConfigurationError(f"`tune.direction` must be 'maximize' or 'minimize', got {self.direction!r}.")
        for name, least in (("n_trials", 1), ("n_startup_trials", 0), ("min_resource", 1)):
            if getattr(self, name) < least:
                raise ConfigurationError(f"`tune.{name}` must be >= {least}, got {getattr(self, name)!r}.")
        if self.max_members is not None and self.max_members < 1:
            raise ConfigurationError(f"`tune.max_members` must be >= 1 or None, got {self.max_members!r}.")
        if self.batched and self.sampler != "grid":
            raise ConfigurationError(
                "`tune.batched` trains the grid's points together, so it needs `tune.sampler: grid` "
                f"(TPE chooses each point from the results before it), got {self.sampler!r}."
            )
        if self.batched and self.pruner != "none":
            raise ConfigurationError(
                "`tune.batched` trains the grid's points together, so no point can be stopped early: set "
                f"`tune.pruner: none`, got {self.pruner!r}."
            )
        if self.batched and self.metric not in BATCHED_METRICS:
            raise ConfigurationError(
                f"`tune.metric` must be one of {list(BATCHED_METRICS)} with `tune.batched` (what each member logs), "
                f"got {self.metric!r}."
            )
        modes = [self.validation] if isinstance(self.validation, str) else list(self.validation)
        if not modes or any(mode not in ("own", "public") for mode in modes) or len(set(modes)) < len(modes):
            raise ConfigurationError(
                f"`tune.validation` must be 'own', 'public' or (a study) both, [own, public]; got {self.validation!r}."
            )
        if self.reduction_factor < 2:
            raise ConfigurationError(f"`tune.reduction_factor` must be >= 2, got {self.reduction_factor!r}.")
        self.logger = check_logger(self.logger, "tune.logger")
        if self.heartbeat_interval is not None and self.heartbeat_interval < 1:
            raise ConfigurationError(
                f"`tune.heartbeat_interval` must be >= 1 second or None, got {self.heartbeat_interval!r}."
            )
        if not self.metric.startswith("val/"):
            raise ConfigurationError(
                f"`tune.metric` must be a validation metric ('val/...'), got {self.metric!r}: trials are ranked on "
                "the validation split only, never on the test set."
            )
        self.grid = {_full_key(key, "grid"): list(values) for key, values in self.grid.items()}
        self.ranges = {_full_key(key, "ranges"): (float(r[0]), float(r[1])) for key, r in self.ranges.items()}
        self.log_scale = [_full_key(key, "log_scale") for key in self.log_scale]
        if self.sampler == "grid" and self.ranges:
            raise ConfigurationError(
                "`tune.ranges` are continuous intervals for `tune.sampler: tpe`; the grid sampler takes `tune.grid`."
            )
        unknown = sorted(set(self.log_scale) - set(self.ranges))
        if unknown:
            raise ConfigurationError(
                f"`tune.log_scale` lists {unknown}, which are not keys of `tune.ranges` {sorted(self.ranges)}."
            )

    @property
    def validations(self) -> list[str]:
        """``validation`` as a list: ``["own"]``, ``["public"]`` or ``["own", "public"]``."""
        return [self.validation] if isinstance(self.validation, str) else list(self.validation)


@dataclass(frozen=True)
class Param:
    """One searched argument: its ``values`` (grid axis or TPE choices), or a ``[low, high]`` range.

    Attributes:
        values: the values to try; None for a continuous range.
        low: the range's lower end (NaN for values).
        high: the range's upper end (NaN for values).
        log: the range is sampled on a log scale.
    """

    values: tuple[float, ...] | None
    low: float = math.nan
    high: float = math.nan
    log: bool = False


def check_space(options: TuneOptions, method: type | None, section: str = "tune") -> dict[str, Param]:
    """The search space of ``options`` for ``method``, by full key, in search order.

    Args:
        options: the search.
        method: the method's class, whose float constructor arguments may be searched (None: the values alone are
            checked, e.g. for a report of searches already run).
        section: where the user wrote ``options``, named in the errors: ``tune`` (``kdl tune``) or ``tuning``
            (a study's tuned KD).

    Raises:
        ValueError: an empty grid, an argument ``method`` does not have or that is not a float, a value out
            of its range (alpha outside [0, 1], temperature <= 0), a repeated value or an empty range.
    """
    floats = _float_arguments(method) if method is not None else set()
    keys = list(options.grid)
    if options.sampler == "tpe":
        keys += [key for key in options.ranges if key not in options.grid]
    if not keys:
        raise ConfigurationError(
            f"`{section}.grid` is empty: give at least one argument and its values, e.g. temperature: [1, 2, 4]."
        )
    space: dict[str, Param] = {}
    for key in keys:
        name = key[len(PREFIX) :]
        where = "ranges" if key in options.ranges else "grid"
        if method is not None and name not in floats:
            known = sorted(floats) or "none"
            raise ConfigurationError(
                f"`{section}.{where}` key {name!r}: {method.__name__} has no float argument {name!r} (its float "
                f"arguments: {known})."
            )
        if key in options.ranges:
            low, high = options.ranges[key]
            low, high = (_check_value(name, value, f"{section}.{where}") for value in (low, high))
            if not low < high:
                raise ConfigurationError(
                    f"`{section}.ranges` of {name!r} must be [low, high] with low < high, got [{low}, {high}]."
                )
            log = key in options.log_scale
            if log and low <= 0:
                raise ConfigurationError(
                    f"`{section}.log_scale` needs a positive range for {name!r}, got [{low}, {high}]."
                )
            space[key] = Param(None, low, high, log)
            continue
        values = options.grid[key]
        if not values:
            raise ConfigurationError(f"`{section}.grid` lists no values for {name!r}.")
        checked = tuple(_check_value(name, value, f"{section}.{where}") for value in values)
        if len(set(checked)) != len(checked):
            raise ConfigurationError(f"`{section}.grid` lists a value of {name!r} twice: {list(checked)}.")
        space[key] = Param(checked)
    return space


def _full_key(key: str, where: str) -> str:
    """``temperature`` → ``model.init_args.temperature``; a full key is kept."""
    if "." not in key:
        return PREFIX + key
    if not key.startswith(PREFIX) or "." in key[len(PREFIX) :]:
        raise ConfigurationError(
            f"`tune.{where}` key {key!r}: only the method's own float arguments can be searched, as "
            f"'{PREFIX}<name>' or '<name>'."
        )
    return key


def _check_value(name: str, value: Any, where: str) -> float:
    """``value`` of argument ``name`` listed in ``where`` (``tune.grid``), as a float in the argument's range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ConfigurationError(f"`{where}` value {value!r} of {name!r} is not a finite number.")
    if name == "alpha" or name.endswith("_alpha"):
        return check_alpha(value, name=f"{where}.{name}")
    if name == "temperature" or name.endswith("_temperature"):
        return check_temperature(value, name=f"{where}.{name}")
    return float(value)


def _float_arguments(method: type) -> set[str]:
    """Names of the constructor arguments of ``method`` annotated ``float`` (or ``float | None``)."""
    try:
        hints = typing.get_type_hints(method.__init__)  # type: ignore[misc]  # the class's own constructor
    except Exception:  # unresolvable annotations: fall back to their text
        hints = {name: p.annotation for name, p in inspect.signature(method).parameters.items()}
    names = set()
    for name, hint in hints.items():
        if name == "return":
            continue
        if isinstance(hint, str):
            ok = hint.replace(" ", "") in ("float", "float|None", "Optional[float]")
        else:
            args = typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)
            ok = float in args and all(a in (float, type(None)) for a in args)
        if ok:
            names.add(name)
    return names
