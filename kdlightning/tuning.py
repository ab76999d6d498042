"""Tuned KD: choose a method's float hyperparameters by an Optuna search on the validation split.

``kdl tune`` takes the ``-c`` configs of ``kdl fit`` plus a ``tune:`` section (:class:`TuneOptions`).
Each trial builds the method, datamodule and trainer from the configs with the trial's values set as the
overrides ``--model.init_args.temperature=4.0`` would set them, fits, and scores the student's
validation metric (``val/acc`` by default). Only the chosen point is evaluated on the test set, once,
after the search. This module only orchestrates: the methods are the ones ``kdl fit`` runs.

- **Samplers**: the exhaustive grid (Optuna's ``GridSampler``; SPEC grid temperature ∈ {1, 2, 4, 8, 16}
  × alpha ∈ {0.1, 0.25, 0.5, 0.75, 0.9} by default) or TPE over choices or continuous ranges, optionally
  with successive-halving pruning fed every validation epoch by :class:`TrialReporter`.
- **Storage**: ``<out>/study.db`` (SQLite) or any Optuna RDB URL, so several processes or machines can
  share one search. A killed search resumes: finished trials are kept, trials a kill left ``RUNNING``
  are failed and retried (at once for this machine's dead processes, after the heartbeat's grace period
  for other machines').
- **Teacher once**: every trial trains with
  :class:`~kdlightning.cache.CacheReferenceOutputs` on ``<out>/cache``, so the first trial computes the
  teacher's outputs on the transfer set and the others read them.
- **Outputs**, each written atomically: ``trials.csv``, ``best.json``, ``heatmap.png``, ``config.yaml``.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import itertools
import json
import logging
import math
import os
import socket
import sys
import types
import typing
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import lightning as L
import torch
import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import Checkpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser

from kdlightning.atomic import atomic_path, write_text_atomic
from kdlightning.cache import CacheReferenceOutputs
from kdlightning.cli import KDLightningCLI
from kdlightning.losses import check_alpha, check_temperature
from kdlightning.reporting import read_csv, write_csv

try:
    import optuna
    from optuna.trial import FrozenTrial, TrialState
except ImportError as error:  # pragma: no cover - optuna is a dependency
    raise ImportError("`kdl tune` needs Optuna: pip install 'optuna>=4'.") from error

# Re-queues a failed trial with its values (and grid point); named RetryFailedTrialCallback before Optuna 4.9.
_Retry = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback

__all__ = ["DEFAULT_GRID", "Built", "Search", "TrialBuilder", "TrialReporter", "TuneOptions", "TuneResult", "tune"]

DEFAULT_GRID: dict[str, list[float]] = {
    "model.init_args.temperature": [1.0, 2.0, 4.0, 8.0, 16.0],
    "model.init_args.alpha": [0.1, 0.25, 0.5, 0.75, 0.9],
}
"""The SPEC grid: 5 temperatures by 5 weights of the distillation term (25 points)."""

_PREFIX = "model.init_args."
_QUIET_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")
_NOISE = (
    r".*LightningCLI's args parameter is intended.*",
    r".*module\(s\) in eval mode.*",
    r".*does not have many workers.*",
    r".*GPU available but not used.*",
    r".*smaller than the logging interval.*",
    r".*heartbeat_interval.*",
    r".*LeafSpec.*",
)


@dataclass
class TuneOptions:
    """The ``tune:`` section of a ``kdl tune`` config (also ``--tune.<name>=...`` on the command line).

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
        logger: keep the configured logger in every trial (False: trials log nothing).
        test: evaluate the chosen point on the test set after the search.
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
    logger: bool = False
    test: bool = True

    def __post_init__(self) -> None:
        if self.sampler not in ("grid", "tpe"):
            raise ValueError(f"`tune.sampler` must be 'grid' or 'tpe', got {self.sampler!r}.")
        if self.pruner not in ("none", "successive_halving"):
            raise ValueError(f"`tune.pruner` must be 'none' or 'successive_halving', got {self.pruner!r}.")
        if self.direction not in ("maximize", "minimize"):
            raise ValueError(f"`tune.direction` must be 'maximize' or 'minimize', got {self.direction!r}.")
        for name, least in (("n_trials", 1), ("n_startup_trials", 0), ("min_resource", 1)):
            if getattr(self, name) < least:
                raise ValueError(f"`tune.{name}` must be >= {least}, got {getattr(self, name)!r}.")
        if self.reduction_factor < 2:
            raise ValueError(f"`tune.reduction_factor` must be >= 2, got {self.reduction_factor!r}.")
        if self.heartbeat_interval is not None and self.heartbeat_interval < 1:
            raise ValueError(f"`tune.heartbeat_interval` must be >= 1 second or None, got {self.heartbeat_interval!r}.")
        if not self.metric.startswith("val/"):
            raise ValueError(
                f"`tune.metric` must be a validation metric ('val/...'), got {self.metric!r}: trials are ranked on "
                "the validation split only, never on the test set."
            )
        self.grid = {_full_key(key, "grid"): list(values) for key, values in self.grid.items()}
        self.ranges = {_full_key(key, "ranges"): (float(r[0]), float(r[1])) for key, r in self.ranges.items()}
        self.log_scale = [_full_key(key, "log_scale") for key in self.log_scale]
        if self.sampler == "grid" and self.ranges:
            raise ValueError(
                "`tune.ranges` are continuous intervals for `tune.sampler: tpe`; the grid sampler takes `tune.grid`."
            )
        unknown = sorted(set(self.log_scale) - set(self.ranges))
        if unknown:
            raise ValueError(
                f"`tune.log_scale` lists {unknown}, which are not keys of `tune.ranges` {sorted(self.ranges)}."
            )


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


class TrialReporter(L.Callback):
    """Report the validation metric of every epoch to an Optuna trial and stop the trial when pruned.

    After each validation of ``fit`` it records ``(epoch, metric)``, reports it (``trial.report``) when
    ``report`` is on and, if the pruner says so (``trial.should_prune()``), asks the trainer to stop.
    The caller then raises ``optuna.TrialPruned``: stopping the trainer rather than raising inside the
    loop lets ``fit`` end normally, so callbacks such as the teacher-output cache still save their state.

    Args:
        trial: the Optuna trial.
        monitor: the validation metric, a key the method logs (``val/acc``).
        report: report every epoch to the trial (needed by a pruner; skipped otherwise, as each report
            is a write to the storage).
    """

    def __init__(self, trial: optuna.Trial, monitor: str = "val/acc", report: bool = True) -> None:
        self.trial = trial
        self.monitor = monitor
        self.report = report
        self.history: list[tuple[int, float]] = []
        self.val_loss: float | None = None
        self.pruned = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Record, report and maybe prune (metrics of the epoch are final here, not in ``on_validation_epoch_end``)."""
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            raise ValueError(
                f"`tune.metric` {self.monitor!r} was not logged by {type(pl_module).__name__}; "
                f"its validation metrics are {sorted(k for k in metrics if k.startswith('val/'))}."
            )
        epoch = trainer.current_epoch + 1  # epochs trained so far: the pruner's resource
        value = float(metrics[self.monitor])
        loss = metrics.get("val/loss")
        self.val_loss = float(loss) if loss is not None else None
        if self.history and self.history[-1][0] == epoch:  # several validations per epoch: keep the last
            self.history[-1] = (epoch, value)
            return
        self.history.append((epoch, value))
        if self.report:
            self.trial.report(value, epoch)
            if self.trial.should_prune():
                self.pruned = True
                trainer.should_stop = True


class _SearchCLI(KDLightningCLI):
    """``KDLightningCLI`` with the ``tune`` section and ``--out``.

    ``_SearchCLI(args)`` parses ``kdl tune``'s arguments and instantiates nothing. With ``parsed`` (the
    parser and configuration of that parse) it builds one trial's method, datamodule and trainer: the
    trial's ``values`` are set on a copy of the parsed configuration, as the overrides
    ``--model.init_args.temperature=4.0`` would set them, so a trial costs no parsing. The trial's trainer
    keeps the configured callbacks except checkpointing, progress bars and teacher caches (the search
    adds its own ``callbacks``), logs only if ``keep_logger``, and skips the sanity check.
    """

    def __init__(
        self,
        args: list[str] | None = None,
        parsed: tuple[LightningArgumentParser, Namespace] | None = None,
        values: Mapping[str, float] | None = None,
        seed: int | None = None,
        callbacks: Sequence[L.Callback] = (),
        keep_logger: bool = False,
        root: str | None = None,
    ) -> None:
        self._parsed = parsed
        self._values = dict(values or {})
        self._seed = seed
        self._keep_logger = keep_logger
        self._root = root
        super().__init__(
            args=args,
            run=False,
            save_config_callback=None,
            trainer_defaults={"callbacks": list(callbacks)},
            load_from_checkpoint_support=False,  # trials keep state dicts, not Lightning checkpoints
            parser_kwargs={"description": "kdl tune: tuned KD, a search on the validation split (see TuneOptions)."},
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add ``tune`` (:class:`TuneOptions`) and ``--out`` to ``kdl fit``'s arguments."""
        super().add_arguments_to_parser(parser)
        parser.add_class_arguments(TuneOptions, "tune", instantiate=False)
        parser.add_argument("--out", type=str, default="runs/tune", help="Directory of the search's files.")

    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        """Reuse the search's parser when building a trial."""
        if self._parsed is None:
            super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        else:
            self.parser = self._parsed[0]

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse ``args``, or take a copy of the parsed configuration with the trial's values and seed."""
        if self._parsed is None:
            super().parse_arguments(parser, args)
            return
        config = self._parsed[1].clone()
        for key, value in self._values.items():
            config[key] = float(value)
        config["seed_everything"] = self._seed
        self.config = config

    def before_instantiate_classes(self) -> None:
        """Give the trial's trainer its quiet, checkpoint-free settings."""
        if self._parsed is None:
            return
        config = self.config
        callbacks = config.get("trainer.callbacks") or []
        if not isinstance(callbacks, list):
            callbacks = [callbacks]
        config["trainer.callbacks"] = [c for c in callbacks if not _is_replaced_callback(c)]
        config["trainer.enable_checkpointing"] = False
        config["trainer.enable_progress_bar"] = False
        config["trainer.enable_model_summary"] = False
        config["trainer.num_sanity_val_steps"] = 0
        if self._root is not None:
            config["trainer.default_root_dir"] = self._root
        if not self._keep_logger:
            config["trainer.logger"] = False

    def instantiate_classes(self) -> None:
        """Instantiate the method, datamodule and trainer only when building a trial."""
        if self._parsed is not None:
            super().instantiate_classes()


class Built(Protocol):
    """One trial's objects, as :data:`TrialBuilder` returns them (a ``LightningCLI`` has these three)."""

    model: L.LightningModule
    datamodule: L.LightningDataModule
    trainer: L.Trainer


TrialBuilder = Callable[[Mapping[str, float], int, Sequence[L.Callback]], Built]
"""Builds one trial from ``(values, seed, callbacks)``: ``values`` by argument name (``{"temperature": 4.0,
"alpha": 0.5}``), seeded with ``seed``, its trainer given ``callbacks``; the model is the method as it
starts (nothing trained)."""


class Search:
    """A tuned-KD search over any method, datamodule and trainer: validate the space now, train in :meth:`run`.

    ``kdl tune`` builds its search from configs with :meth:`from_args`; a Python caller (the study) passes
    a ``build`` function. Each trial calls ``build`` with its values, fits, and is ranked by the
    validation metric; only the chosen point is tested.

    Args:
        build: builds a trial (:data:`TrialBuilder`).
        method: the method's class, whose float constructor arguments may be searched.
        options: the search (:class:`TuneOptions`).
        out: directory of the search's files (``study.db``, ``trials.csv``, ``best.json``, ``heatmap.png``).
        description: what makes trials comparable besides the searched values (a JSON-able value): a
            storage holding a search of another description is refused rather than mixed in.
        config_text: written to ``<out>/config.yaml``.
        seed: seed of every trial; None for a new random seed (kept in the storage for resumes).
        cache_dir: directory of the teacher-output cache (default ``<out>/cache``); searches and runs that
            share it share the teacher's outputs (they are keyed by teacher and data).
        callbacks: extra Lightning callbacks added to every trial (the same instances in each).
        verbose: print a line per trial and the final table.
        conflict_hint: what the error for a storage of another description advises (default: ``kdl tune``'s
            options, another ``--out`` or ``--tune.study_name``); a caller with other options gives its own.

    Raises:
        ValueError: an empty grid, an argument the method does not have or that is not a float, a value
            out of its range (alpha outside [0, 1], temperature <= 0), a non-validation metric; before
            any training.
    """

    def __init__(
        self,
        build: TrialBuilder,
        method: type,
        options: TuneOptions,
        out: str | os.PathLike[str],
        *,
        description: Any = None,
        config_text: str = "",
        seed: int | None = None,
        cache_dir: str | os.PathLike[str] | None = None,
        callbacks: Sequence[L.Callback] = (),
        verbose: bool = True,
        conflict_hint: str = "Pass another `--out` or `--tune.study_name`.",
    ) -> None:
        self.build = build
        self.method = method
        self.options = options
        self.out = Path(out).expanduser()
        self.description = description
        self.config_text = config_text
        self.config_seed = seed
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.out / "cache"
        self.callbacks = list(callbacks)
        self.verbose = verbose
        self.conflict_hint = conflict_hint
        self.space = _check_space(self.options, self.method)
        self.keys = list(self.space)
        self.storage_url = self.options.storage or f"sqlite:///{(self.out / 'study.db').resolve()}"
        self.seed = 0
        self.val_before = math.nan
        self._cache_on = True
        self._names = _short_names(self.keys)

    @classmethod
    def from_args(cls, args: Sequence[str], callbacks: Sequence[L.Callback] = (), verbose: bool = True) -> Search:
        """The search ``kdl tune`` runs: parse its arguments (nothing is built until :meth:`run`).

        Args:
            args: ``kdl tune``'s arguments: the ``-c`` configs of ``kdl fit`` (one may carry a ``tune:``
                section), ``--out DIR``, ``--tune.<option>=...`` and any ``kdl fit`` override.
            callbacks: extra Lightning callbacks added to every trial.
            verbose: print a line per trial and the final table.
        """
        with _quiet():
            cli = _SearchCLI([str(arg) for arg in args])
        parser, config = cli.parser, cli.config
        options = TuneOptions(**config.tune.as_dict())
        out = Path(config.out).expanduser()
        seed = config.get("seed_everything")
        text = parser.dump(config, skip_none=False, skip_check=True)
        searched = set(_check_space(options, _import(config.model.class_path)))
        description = yaml.safe_load(text)
        for key in ("tune", "out", "seed_everything"):
            description.pop(key, None)
        init_args = (description.get("model") or {}).get("init_args") or {}
        for key in searched:
            init_args.pop(key[len(_PREFIX) :], None)

        def build(values: Mapping[str, float], trial_seed: int, trial_callbacks: Sequence[L.Callback]) -> Built:
            return _SearchCLI(
                parsed=(parser, config),
                values={_PREFIX + name: value for name, value in values.items()},
                seed=trial_seed,
                callbacks=trial_callbacks,
                keep_logger=options.logger,
                root=str(out / "trials"),
            )

        return cls(
            build,
            _import(config.model.class_path),
            options,
            out,
            description=description,
            config_text=text,
            seed=seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
            callbacks=callbacks,
            verbose=verbose,
        )

    # ------------------------------------------------------------------ the search
    def run(self) -> TuneResult:
        """Run (or resume) the search, evaluate the chosen point on the test set, write the outputs."""
        self.out.mkdir(parents=True, exist_ok=True)
        with _quiet():
            study = self._study()
            self._recover(study)
            probe = self._build({}, [])
            self._cache_on = self._cache_supported(probe)
            if "val_before" not in study.user_attrs:
                study.set_user_attr("val_before", self._validate(probe))
            self.val_before = float(study.user_attrs["val_before"])
            del probe
            for _ in range(3):  # a round can end early when another worker fails or a grid sampler stops
                todo = self._todo(study)
                if todo <= 0:
                    break
                if self.verbose:
                    finished = sum(_is_done(t) for t in study.get_trials(deepcopy=False))
                    print(f"kdl tune: {todo} trials to run ({finished} finished) -> {self.out}", flush=True)
                study.optimize(
                    self._objective,
                    n_trials=todo,
                    catch=(FloatingPointError,),
                    callbacks=[self._after_trial],
                    gc_after_trial=False,
                )
            result = self._finish(study)
        if self.verbose:
            print(self.format_table(result.trials))
            self._print_best(result)
        return result

    def _study(self) -> optuna.Study:
        storage = _storage(self.storage_url, self.options.heartbeat_interval)
        fingerprint = self._fingerprint()
        existing = _study_attrs(storage, self.options.study_name)
        if existing is not None and existing.get("fingerprint") not in (None, fingerprint):
            raise ValueError(
                f"Study {self.options.study_name!r} in {self.storage_url} is a search of another configuration "
                f"(method, data, trainer or search space). {self.conflict_hint}"
            )
        seed = self.config_seed
        if existing is not None and "seed" in existing:
            seed = int(existing["seed"])
        self.seed = seed if seed is not None else int.from_bytes(os.urandom(4), "little") % 2**31
        study = optuna.create_study(
            storage=storage,
            study_name=self.options.study_name,
            direction=self.options.direction,
            sampler=self._sampler(),
            pruner=self._pruner(),
            load_if_exists=True,
        )
        if "fingerprint" not in study.user_attrs:
            study.set_user_attr("fingerprint", fingerprint)
            study.set_user_attr("seed", self.seed)
            study.set_user_attr("metric", self.options.metric)
        if self.config_text:
            write_text_atomic(self.out / "config.yaml", self.config_text)
        return study

    def _sampler(self) -> optuna.samplers.BaseSampler:
        seed = self.options.seed if self.options.seed is not None else self.seed
        if self.options.sampler == "grid":
            return optuna.samplers.GridSampler({key: list(p.values) for key, p in self.space.items()}, seed=seed)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.options.n_startup_trials)

    def _pruner(self) -> optuna.pruners.BasePruner:
        if self.options.pruner == "none":
            return optuna.pruners.NopPruner()
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=self.options.min_resource, reduction_factor=self.options.reduction_factor
        )

    def _recover(self, study: optuna.Study) -> None:
        """Fail the trials a kill left running, then queue a retry of every failed trial not retried yet.

        A trial's ``worker`` (host and process id) tells whether its process on this machine has died;
        other machines' trials are failed by the storage heartbeat once stale. Trials that failed with a
        caught error (a non-finite loss, recorded as ``error``) are results and are not retried.
        """
        storage = study._storage
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            if _is_dead(trial.user_attrs.get("worker")):
                with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
                    storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        trials = study.get_trials(deepcopy=False)
        retried = {number for t in trials for number in t.system_attrs.get("retry_history", [])}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            retry = _Retry()
        for trial in trials:
            if trial.state == TrialState.FAIL and "error" not in trial.user_attrs and trial.number not in retried:
                retry(study, trial)

    def _todo(self, study: optuna.Study) -> int:
        """Trials still to run: unfinished grid points (or TPE's remaining budget), queued retries included."""
        trials = study.get_trials(deepcopy=False)
        live = [t for t in trials if t.state == TrialState.RUNNING]
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        if self.options.sampler == "tpe":
            done = sum(_is_done(t) for t in trials)
            return max(self.options.n_trials - done - len(live), 0)
        seen = {self._point(t.params) for t in trials if t.params and (t.state != TrialState.FAIL or _is_done(t))}
        seen |= {self._point(t.params) for t in waiting if t.params}
        return sum(point not in seen for point in self._grid_points()) + len(waiting)

    def _objective(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", _worker())
        params = self._suggest(trial)
        twin = self._twin(trial.study, trial.number, params)
        if twin is not None:  # TPE drew finished values again: the same values and seed give the same trial
            trial.set_user_attr("same_as", twin.number)
            for key in ("val_curve", "val_loss", "epochs"):
                trial.set_user_attr(key, twin.user_attrs.get(key))
            if twin.state == TrialState.PRUNED:
                for step, value in sorted(twin.intermediate_values.items()):
                    trial.report(value, step)
                raise optuna.TrialPruned(f"the values of pruned trial {twin.number}")
            return float(twin.value)
        reporter = TrialReporter(trial, self.options.metric, report=self.options.pruner != "none")
        cli = self._build(params, [*self._cache(), reporter, *self.callbacks])
        try:
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        except FloatingPointError as error:
            trial.set_user_attr("error", str(error).splitlines()[0])
            raise
        value, val_loss = self._final_metrics(cli, reporter)
        trial.set_user_attr("val_curve", [value for _, value in reporter.history])
        trial.set_user_attr("val_loss", val_loss)
        trial.set_user_attr("epochs", cli.trainer.current_epoch)
        if reporter.pruned:
            raise optuna.TrialPruned(f"pruned after epoch {reporter.history[-1][0]}")
        if self._beats_completed(trial.study, value, val_loss, params):
            state = {"trial": trial.number, "params": params, "state_dict": cli.model.state_dict()}
            with atomic_path(self.out / "best_model.pt") as path:
                torch.save(state, path)
        return value

    def _twin(self, study: optuna.Study, number: int, params: Mapping[str, float]) -> FrozenTrial | None:
        """A completed or pruned earlier trial with the same values, if any."""
        point = self._point(params)
        for trial in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
            if trial.number != number and self._point(trial.params) == point:
                return trial
        return None

    def _suggest(self, trial: optuna.Trial) -> dict[str, float]:
        params = {}
        for key, p in self.space.items():
            if p.values is None:
                params[key] = trial.suggest_float(key, p.low, p.high, log=p.log)
            elif self.options.sampler == "grid":
                params[key] = trial.suggest_float(key, min(p.values), max(p.values))
            else:
                params[key] = trial.suggest_categorical(key, list(p.values))
        return {key: float(value) for key, value in params.items()}

    def _final_metrics(self, cli: Built, reporter: TrialReporter) -> tuple[float, float | None]:
        """The metric of the trained model: its last validation, or a fresh one if the last epoch had none."""
        if reporter.history and (reporter.pruned or reporter.history[-1][0] == cli.trainer.current_epoch):
            return reporter.history[-1][1], reporter.val_loss
        value = self._validate(cli)
        loss = cli.trainer.callback_metrics.get("val/loss")
        return value, float(loss) if loss is not None else None

    def _after_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        rows = self.rows(study.get_trials(deepcopy=False))
        write_csv(self.out / "trials.csv", rows)
        if self.verbose:
            row = next(r for r in rows if r["number"] == trial.number)
            print(f"trial {trial.number:>3}  {self._describe(row)}", flush=True)
        if self.options.sampler == "tpe" and sum(_is_done(t) for t in study.get_trials(deepcopy=False)) >= (
            self.options.n_trials
        ):
            study.stop()  # the budget is the study's, shared by every worker

    # ------------------------------------------------------------------ building trials
    def _build(self, params: Mapping[str, float], callbacks: Sequence[L.Callback]) -> Built:
        """The trial with ``params`` (full keys) set, seeded with the search's seed."""
        return self.build({key[len(_PREFIX) :]: float(v) for key, v in params.items()}, self.seed, list(callbacks))

    def _cache(self) -> list[L.Callback]:
        """The teacher-output cache on ``cache_dir``, shared by every trial of the search."""
        return [CacheReferenceOutputs(cache_dir=str(self.cache_dir))] if self._cache_on else []

    @staticmethod
    def _cache_supported(cli: Built) -> bool:
        """Whether the method has frozen references to cache and the data allows it (else warn)."""
        if not getattr(cli.model, "frozen_names", ()):
            return False
        datamodule = cli.datamodule
        reason = None
        if not (hasattr(datamodule, "fingerprint") and hasattr(datamodule, "pool_size")):
            reason = f"{type(datamodule).__name__} gives no sample indices (use a kdlightning PartitionedDataModule)"
        else:
            try:
                datamodule.check_deterministic_transfer()
            except ValueError as error:
                reason = str(error)
        if reason is not None:
            warnings.warn(
                f"The teacher-output cache is off, so the teacher runs in every trial: {reason}", stacklevel=3
            )
        return reason is None

    def _validate(self, cli: Built) -> float:
        """The validation metric of ``cli``'s model as it is (before training: the start of every trial)."""
        metrics = cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0]
        if self.options.metric not in metrics:
            raise ValueError(
                f"`tune.metric` {self.options.metric!r} was not logged; validation logged {sorted(metrics)}."
            )
        return float(metrics[self.options.metric])

    # ------------------------------------------------------------------ choosing and reporting
    def _rank(self, value: float, val_loss: float | None, params: Mapping[str, float]) -> tuple[Any, ...]:
        """Sort key of a result, best first: the metric, then the validation loss, then the values."""
        sign = -1.0 if self.options.direction == "maximize" else 1.0
        loss = val_loss if val_loss is not None and math.isfinite(val_loss) else math.inf
        return (sign * value, loss, tuple(float(params.get(key, math.nan)) for key in self.keys))

    def _trial_rank(self, trial: FrozenTrial) -> tuple[Any, ...]:
        return self._rank(float(trial.value), trial.user_attrs.get("val_loss"), trial.params)

    def _beats_completed(
        self, study: optuna.Study, value: float, val_loss: float | None, params: Mapping[str, float]
    ) -> bool:
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return not completed or self._rank(value, val_loss, params) < min(map(self._trial_rank, completed))

    def _finish(self, study: optuna.Study) -> TuneResult:
        trials = study.get_trials(deepcopy=False)
        rows = self.rows(trials)
        write_csv(self.out / "trials.csv", rows)
        completed = [t for t in trials if t.state == TrialState.COMPLETE]
        if completed:
            with atomic_path(self.out / "heatmap.png") as path:
                self.plot_heatmap(rows, path)
        if not completed:
            raise RuntimeError(f"No trial of the search completed; see {self.out / 'trials.csv'}.")
        best = min(completed, key=self._trial_rank)
        params = {key: float(value) for key, value in best.params.items()}
        test_metrics: dict[str, float] = {}
        test_model = "none"
        if self.options.test:
            test_metrics, test_model = self._test(best, params)
        result = TuneResult(
            out=self.out,
            best_trial=best.number,
            best_params=params,
            best_value=float(best.value),
            val_before=self.val_before,
            test_metrics=test_metrics,
            test_model=test_model,
            trials=rows,
        )
        counts = {state.name: sum(t.state == state for t in trials) for state in TrialState}
        summary = {
            "metric": self.options.metric,
            "direction": self.options.direction,
            "sampler": self.options.sampler,
            "pruner": self.options.pruner,
            "trial": best.number,
            "params": params,
            "value": result.best_value,
            "val_before": self.val_before,
            "val_gain": result.best_value - self.val_before,
            "test_acc": test_metrics.get("test/acc"),
            "test_metrics": test_metrics,
            "test_model": test_model,
            "trials": {name: n for name, n in counts.items() if n},
            "seed": self.seed,
            "storage": self.storage_url,
            "study_name": self.options.study_name,
        }
        write_text_atomic(self.out / "best.json", json.dumps(summary, indent=2) + "\n")
        return result

    def _test(self, best: FrozenTrial, params: dict[str, float]) -> tuple[dict[str, float], str]:
        """Test the chosen point: its trial's own weights, or the same training again if another worker won."""
        path = self.out / "best_model.pt"
        saved = torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None
        if saved is not None and saved["trial"] == best.number:
            cli = self._build(params, [])
            cli.model.load_state_dict(saved["state_dict"])
            source = "checkpoint"
        else:  # the seed and the cache make the retrained student the trial's
            cli = self._build(params, self._cache())
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
            source = "retrained"
            value = cli.trainer.callback_metrics.get(self.options.metric)
            if value is not None and not math.isclose(float(value), float(best.value), abs_tol=1e-6):
                warnings.warn(
                    f"Retrained with trial {best.number}'s values and seed, the student's {self.options.metric} is "
                    f"{float(value):.4f}, not {best.value:.4f}: training is not deterministic here (GPU kernels?); "
                    "the test figure is of the retrained student.",
                    stacklevel=2,
                )
        metrics = cli.trainer.test(cli.model, datamodule=cli.datamodule, verbose=False)[0]
        return {key: float(value) for key, value in metrics.items()}, source

    def rows(self, trials: Sequence[FrozenTrial]) -> list[dict[str, Any]]:
        """One row per trial: number, state, values, metric, gain over the student before training, epochs, time."""
        rows = []
        for trial in sorted(trials, key=lambda t: t.number):
            if trial.state == TrialState.WAITING:
                continue
            value: float | None = None
            if trial.state == TrialState.COMPLETE:
                value = float(trial.value)
            elif trial.intermediate_values:
                value = float(trial.intermediate_values[max(trial.intermediate_values)])
            elif trial.state == TrialState.PRUNED and trial.user_attrs.get("val_curve"):
                value = float(trial.user_attrs["val_curve"][-1])
            start, end = trial.datetime_start, trial.datetime_complete
            row: dict[str, Any] = {"number": trial.number, "state": trial.state.name}
            row.update({self._names[key]: trial.params.get(key) for key in self.keys})
            row[self.options.metric] = value
            row["val_gain"] = value - self.val_before if value is not None and math.isfinite(self.val_before) else None
            row["val_loss"] = trial.user_attrs.get("val_loss")
            row["epochs"] = trial.user_attrs.get("epochs")
            killed = trial.state == TrialState.FAIL and "error" not in trial.user_attrs  # ended when found dead
            row["duration_s"] = round((end - start).total_seconds(), 3) if start and end and not killed else None
            row["same_as"] = trial.user_attrs.get("same_as")
            row["retry_of"] = trial.system_attrs.get("failed_trial")
            row["error"] = trial.user_attrs.get("error")
            rows.append(row)
        return rows

    def _cell(self, column: str, value: Any) -> str:
        if value is None:
            return "-"
        if column == "val_gain":
            return _gain(value, self.options.metric)
        if column == self.options.metric:
            return f"{value:.4f}"
        if column == "duration_s":
            return f"{value:.1f}"
        return f"{value:g}" if isinstance(value, float) else str(value)

    def _describe(self, row: Mapping[str, Any]) -> str:
        names = [self._names[key] for key in self.keys]
        text = "  ".join(f"{name}={self._cell(name, row[name])}" for name in names) + f"  {row['state']}"
        metric = self.options.metric
        if row[metric] is not None:
            text += f"  {metric}={self._cell(metric, row[metric])} ({self._cell('val_gain', row['val_gain'])})"
        if row["epochs"] is not None:
            text += f"  {row['epochs']} epochs"
        if row["duration_s"] is not None:
            text += f"  {row['duration_s']:.1f} s"
        return text

    def format_table(self, rows: Sequence[Mapping[str, Any]]) -> str:
        """The trials as a fixed-width text table."""
        names = [self._names[key] for key in self.keys]
        columns = ["number", "state", *names, self.options.metric, "val_gain", "epochs", "duration_s"]
        cells = [[self._cell(column, row[column]) for column in columns] for row in rows]
        widths = [max([len(column)] + [len(r[i]) for r in cells]) for i, column in enumerate(columns)]
        lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True))]
        lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
        return "\n".join(lines)

    def _print_best(self, result: TuneResult) -> None:
        values = "  ".join(f"{self._names[key]}={value:g}" for key, value in result.best_params.items())
        text = (
            f"best: trial {result.best_trial}  {values}  {self.options.metric}={result.best_value:.4f} "
            f"({_gain(result.best_value - result.val_before, self.options.metric)} over the student before training)"
        )
        if result.test_metrics:
            tested = "  ".join(f"{key}={value:.4f}" for key, value in sorted(result.test_metrics.items()))
            text += f"\n      test ({result.test_model}): {tested}"
        print(text + f"\n      files: {self.out}", flush=True)

    def plot_heatmap(self, rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> None:
        """Validation gain over the grid as a PNG: :meth:`draw_heatmap` on a figure of its own."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(6.4, 4.8), layout="constrained")
        FigureCanvasAgg(figure)
        self.draw_heatmap(figure.add_subplot(), rows)
        figure.savefig(path, format="png", dpi=100)

    def draw_heatmap(self, axes: Any, rows: Sequence[Mapping[str, Any]], title: str | None = None) -> None:
        """Draw validation gain over the grid on matplotlib ``axes``: a heatmap of the first two arguments.

        Each cell shows the gain of the best finished trial at that point (percentage points for
        accuracy); other arguments, if any, are maximised over. Pruned and failed points are marked.
        With TPE ranges, a scatter of the trials.
        """
        names = [self._names[key] for key in self.keys]
        y_name, x_name = names[0], names[1] if len(names) > 1 else None
        scale = 100.0 if self.options.metric.endswith("acc") else 1.0
        unit = " (pp)" if scale == 100.0 else ""
        sign = 1.0 if self.options.direction == "maximize" else -1.0
        figure = axes.figure
        finished = [r for r in rows if r[y_name] is not None and (x_name is None or r[x_name] is not None)]
        ys = sorted({r[y_name] for r in finished})
        xs = sorted({r[x_name] for r in finished}) if x_name else [0.0]
        if all(p.values is not None for p in self.space.values()):
            import numpy as np

            grid = np.full((len(ys), len(xs)), np.nan)
            marks: dict[tuple[int, int], str] = {}
            for r in finished:
                i, j = ys.index(r[y_name]), xs.index(r[x_name]) if x_name else 0
                if r["state"] == "COMPLETE" and r["val_gain"] is not None:
                    gain = scale * r["val_gain"]
                    if math.isnan(grid[i, j]) or sign * gain > sign * grid[i, j]:
                        grid[i, j] = gain
                elif math.isnan(grid[i, j]):
                    marks[(i, j)] = r["state"].lower()
            image = axes.imshow(grid, cmap="viridis", origin="lower", aspect="auto")
            figure.colorbar(image, ax=axes, label=f"validation gain{unit}")
            middle = (np.nanmin(grid) + np.nanmax(grid)) / 2 if not np.isnan(grid).all() else 0.0
            for (i, j), value in np.ndenumerate(grid):
                text = f"{value:+.1f}" if not math.isnan(value) else marks.get((i, j), "")
                color = "black" if not math.isnan(value) and value > middle else "white"
                axes.text(j, i, text, ha="center", va="center", color=color, fontsize=8)
            axes.set_yticks(range(len(ys)), [f"{y:g}" for y in ys])
            axes.set_xticks(range(len(xs)), [f"{x:g}" for x in xs] if x_name else [""])
        else:
            done = [r for r in finished if r["val_gain"] is not None]
            points = axes.scatter(
                [r[x_name] if x_name else 0.0 for r in done],
                [r[y_name] for r in done],
                c=[scale * r["val_gain"] for r in done],
                cmap="viridis",
                marker="o",
            )
            figure.colorbar(points, ax=axes, label=f"validation gain{unit}")
            if self.keys[0] in self.options.log_scale:
                axes.set_yscale("log")
        axes.set_ylabel(y_name)
        axes.set_xlabel(x_name or "")
        if title is None:
            title = f"{self.method.__name__}: {self.options.metric} gain over the student before training"
        axes.set_title(title, fontsize=10)

    # ------------------------------------------------------------------ helpers
    def _grid_points(self) -> list[tuple[float, ...]]:
        return [tuple(map(float, point)) for point in itertools.product(*(self.space[k].values for k in self.keys))]

    def _point(self, params: Mapping[str, Any]) -> tuple[float, ...]:
        return tuple(float(params.get(key, math.nan)) for key in self.keys)

    def _fingerprint(self) -> str:
        """SHA-256 of what makes trials comparable: the description and the search."""
        search = {
            "space": {k: [p.values, p.low, p.high, p.log] for k, p in self.space.items()},
            "sampler": self.options.sampler,
            "metric": self.options.metric,
            "direction": self.options.direction,
        }
        return hashlib.sha256(json.dumps([self.description, search], sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------------- the search space
@dataclass(frozen=True)
class _Param:
    values: tuple[float, ...] | None
    low: float = math.nan
    high: float = math.nan
    log: bool = False


def _full_key(key: str, where: str) -> str:
    """``temperature`` → ``model.init_args.temperature``; a full key is kept."""
    if "." not in key:
        return _PREFIX + key
    if not key.startswith(_PREFIX) or "." in key[len(_PREFIX) :]:
        raise ValueError(
            f"`tune.{where}` key {key!r}: only the method's own float arguments can be searched, as "
            f"'{_PREFIX}<name>' or '<name>'."
        )
    return key


def _check_space(options: TuneOptions, method: type) -> dict[str, _Param]:
    """Check the searched arguments against the method and their values against their ranges."""
    floats = _float_arguments(method)
    keys = list(options.grid)
    if options.sampler == "tpe":
        keys += [key for key in options.ranges if key not in options.grid]
    if not keys:
        raise ValueError(
            "`tune.grid` is empty: give at least one argument and its values, e.g. temperature: [1, 2, 4]."
        )
    space: dict[str, _Param] = {}
    for key in keys:
        name = key[len(_PREFIX) :]
        where = "ranges" if key in options.ranges else "grid"
        if name not in floats:
            known = sorted(floats) or "none"
            raise ValueError(
                f"`tune.{where}` key {key!r}: {method.__name__} has no float argument {name!r} (its float "
                f"arguments: {known})."
            )
        if key in options.ranges:
            low, high = options.ranges[key]
            low, high = _check_value(key, name, low, where), _check_value(key, name, high, where)
            if not low < high:
                raise ValueError(f"`tune.ranges` of {key!r} must be [low, high] with low < high, got [{low}, {high}].")
            log = key in options.log_scale
            if log and low <= 0:
                raise ValueError(f"`tune.log_scale` needs a positive range for {key!r}, got [{low}, {high}].")
            space[key] = _Param(None, low, high, log)
            continue
        values = options.grid[key]
        if not values:
            raise ValueError(f"`tune.grid` lists no values for {key!r}.")
        checked = tuple(_check_value(key, name, value, where) for value in values)
        if len(set(checked)) != len(checked):
            raise ValueError(f"`tune.grid` lists a value of {key!r} twice: {list(checked)}.")
        space[key] = _Param(checked)
    return space


def _check_value(key: str, name: str, value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(float(value)):
        raise ValueError(f"`tune.{where}` value {value!r} of {key!r} is not a finite number.")
    try:
        if name == "alpha" or name.endswith("_alpha"):
            return check_alpha(value, name=key)
        if name == "temperature" or name.endswith("_temperature"):
            return check_temperature(value, name=key)
    except ValueError as error:
        raise ValueError(f"`tune.{where}`: {error}") from None
    return float(value)


def _float_arguments(method: type) -> set[str]:
    """Names of the constructor arguments of ``method`` annotated ``float`` (or ``float | None``)."""
    try:
        hints = typing.get_type_hints(method.__init__)
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


def _short_names(keys: Sequence[str]) -> dict[str, str]:
    short = {key: key.rsplit(".", 1)[-1] for key in keys}
    return short if len(set(short.values())) == len(short) else {key: key for key in keys}


# ---------------------------------------------------------------------- storage and workers
def _storage(url: str, heartbeat_interval: int | None) -> optuna.storages.RDBStorage:
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    # Optuna 4.9 renamed `failed_trial_callback` to `heartbeat_stale_trial_callback`.
    names = inspect.signature(optuna.storages.RDBStorage).parameters
    key = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in names else "failed_trial_callback"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        retry = _Retry() if heartbeat_interval is not None else None
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval, **{key: retry}
        )


def _study_attrs(storage: optuna.storages.RDBStorage, name: str) -> dict[str, Any] | None:
    """The user attributes of study ``name``, or None if the storage has no such study."""
    try:
        return storage.get_study_user_attrs(storage.get_study_id_from_name(name))
    except KeyError:
        return None


def _worker() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _is_dead(worker: str | None) -> bool:
    """True if ``worker`` (``host:pid``) is a process of this machine that no longer runs (or is this one)."""
    if not worker:
        return False
    host, _, pid_text = worker.rpartition(":")
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    pid = int(pid_text)
    if pid == os.getpid():  # this process runs no trial while it recovers
        return True
    if os.name != "posix":
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _is_done(trial: FrozenTrial) -> bool:
    """A trial with a result: completed, pruned, or failed with a recorded error (a diverging point)."""
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and "error" in trial.user_attrs
    )


# ---------------------------------------------------------------------- small helpers
def _import(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _is_replaced_callback(callback: Any) -> bool:
    """Checkpointing, progress bars and teacher caches are the search's business in a trial."""
    class_path = callback.get("class_path") if hasattr(callback, "get") else None
    if not isinstance(class_path, str):
        return isinstance(callback, (Checkpoint, ProgressBar, CacheReferenceOutputs))
    try:
        cls = _import(class_path)
    except (ImportError, AttributeError):
        return False
    return isinstance(cls, type) and issubclass(cls, (Checkpoint, ProgressBar, CacheReferenceOutputs))


def _gain(gain: float, metric: str) -> str:
    return f"{100 * gain:+.2f} pp" if metric.endswith("acc") else f"{gain:+.4f}"


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence Lightning's per-run notices and Optuna's per-trial logs; the search prints its own lines."""
    levels = {name: logging.getLogger(name).level for name in _QUIET_LOGGERS}
    verbosity = optuna.logging.get_verbosity()
    try:
        for name in _QUIET_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with warnings.catch_warnings():
            for message in _NOISE:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
        optuna.logging.set_verbosity(verbosity)


def tune(
    args: Sequence[str] | None = None, *, callbacks: Sequence[L.Callback] = (), verbose: bool = True
) -> TuneResult:
    """Run ``kdl tune``: search on the validation split, then test the chosen point once.

    Args:
        args: the arguments after ``kdl tune`` (``-c`` configs, ``--out``, ``--tune.*``, overrides);
            None reads ``sys.argv``.
        callbacks: extra Lightning callbacks added to every trial.
        verbose: print a line per trial and the final table.

    Returns:
        The chosen point, its validation and test metrics, and every trial.

    Raises:
        ValueError: a bad search space or option (see :class:`Search`), before any training.

    Examples:
        ``kdl tune -c configs/_base/trainer.yaml -c configs/digits/vanilla_kd.yaml -c configs/tune/grid.yaml``
        or, from Python, ``tune(["-c", "configs/_base/trainer.yaml", ..., "--out", "runs/tune/digits"])``.
    """
    if args is None:
        args = sys.argv[2:] if sys.argv[1:2] == ["tune"] else sys.argv[1:]
    return Search.from_args(args, callbacks=callbacks, verbose=verbose).run()


def main(args: Sequence[str] | None = None) -> TuneResult:
    """``kdl tune``: :func:`tune`, stopped cleanly by SIGTERM or Ctrl-C (exit 143 / 130, saying what finished).

    Args:
        args: the arguments after ``kdl tune``; None reads ``sys.argv``.
    """
    from kdlightning.interrupt import exit_on_signals

    if args is None:
        args = sys.argv[2:] if sys.argv[1:2] == ["tune"] else sys.argv[1:]
    search = Search.from_args(args)
    trials = search.out / "trials.csv"

    def report() -> str:
        rows = read_csv(trials)
        done = sum(row["state"] in ("COMPLETE", "PRUNED") or bool(row.get("error")) for row in rows)
        return f"{done} trials are finished, in {search.storage_url} and {trials}."

    with exit_on_signals("kdl tune", args, report):
        return search.run()
