"""The search: Optuna's study over a method's float arguments, run, resumed and reported (:class:`Search`)."""

from __future__ import annotations

import functools
import itertools
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import lightning as L
import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from kdlightning.atomic import atomic_path, write_text_atomic
from kdlightning.batching import MemberFit, fit_members
from kdlightning.cache import CacheReferenceOutputs
from kdlightning.data import DatasetSource
from kdlightning.errors import ConfigurationError, RunError
from kdlightning.interrupt import raise_if_stopped
from kdlightning.methods import DistillationModule
from kdlightning.reporting import error_line, write_csv
from kdlightning.tracking import flat_config, log_run
from kdlightning.tuning.grid import Point, member_name, trials_of
from kdlightning.tuning.options import PREFIX, TuneOptions, check_space
from kdlightning.tuning.quiet import quiet
from kdlightning.tuning.reports import describe_row, format_best, format_table, plot_heatmap, short_names, trial_rows
from kdlightning.tuning.results import TuneResult, best_summary, rank, test_chosen, trial_rank, value_of
from kdlightning.tuning.storage import is_done, open_storage, recover, search_fingerprint, study_attrs, worker
from kdlightning.tuning.trials import (
    Built,
    TrialBuilder,
    TrialReporter,
    cache_supported,
    final_metrics,
    parse_search,
    share_dataset,
    validate,
    validate_on,
)

__all__ = ["Search"]


class Search:
    """A tuned-KD search over any method, datamodule and trainer: validate the space now, train in :meth:`run`.

    ``kdl tune`` builds its search from configs with :meth:`from_args`; a Python caller (the study) passes
    a ``build`` function. Each trial calls ``build`` with its values, fits, and is ranked by the
    validation metric; only the chosen point is tested.

    :meth:`run` runs the whole search. A caller that trains the grid's points itself, as batched members beside
    its own (a study's cell), uses its steps instead: :meth:`open`, :meth:`pending_points`, :meth:`member` (and
    :meth:`member_name`), :meth:`record` for each chunk of fits, then :meth:`finish`.

    Args:
        build: builds a trial (:data:`~kdlightning.tuning.trials.TrialBuilder`).
        method: the method's class, whose float constructor arguments may be searched.
        options: the search (:class:`~kdlightning.tuning.options.TuneOptions`).
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
        heatmap: draw ``heatmap.png`` (a study draws one figure of all its searches instead).
        tracking: with ``tune.logger``: the W&B settings of the trials' runs (``group``, ``save_dir``, a
            ``name`` prefix) and ``config``, keys every trial's config holds (a study's ``partition``, ``seed``,
            ...); by default each trial's run is grouped by ``out``'s name and saved under ``out``.

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
        heatmap: bool = True,
        tracking: Mapping[str, Any] | None = None,
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
        self.heatmap = heatmap
        self.tracking = dict(tracking or {})
        self.space = check_space(self.options, self.method)
        self.keys = list(self.space)
        self.names = list(short_names(self.keys).values())
        self.storage_url = self.options.storage or f"sqlite:///{(self.out / 'study.db').resolve()}"
        self.seed = 0
        self.val_before = math.nan
        self._cache_on = True
        self._dataset: DatasetSource | None = None  # the probe trial's data set source, given to every trial
        self.study: optuna.Study | None = None
        """The search's Optuna study, once :meth:`open`."""
        self.datamodule: L.LightningDataModule | None = None
        """The data every trial reads (the first trial's datamodule), once :meth:`open`."""

    @classmethod
    def from_args(cls, args: Sequence[str], callbacks: Sequence[L.Callback] = (), verbose: bool = True) -> Search:
        """The search ``kdl tune`` runs: parse its arguments (nothing is built until :meth:`run`).

        Args:
            args: ``kdl tune``'s arguments: the ``-c`` configs of ``kdl fit`` (one may carry a ``tune:``
                section), ``--out DIR``, ``--tune.<option>=...`` and any ``kdl fit`` override.
            callbacks: extra Lightning callbacks added to every trial.
            verbose: print a line per trial and the final table.
        """
        return cls(**vars(parse_search(args)), callbacks=callbacks, verbose=verbose)

    # ------------------------------------------------------------------ the search
    def run(self) -> TuneResult:
        """Run (or resume) the search, evaluate the chosen point on the test set, write the outputs.

        With ``tune.batched`` the grid's unfinished points train as batched members (``tune.max_members`` per
        fit), each recorded as the trial its sequential fit would be; otherwise trial by trial.
        """
        with quiet():
            study = self.open()
            if self.options.batched:
                self._train_grid()
            callbacks: list[Any] = [self._after_trial]
            if self.options.sampler == "tpe":  # the budget is the study's, shared by every worker (`_todo`: this one's)
                states = (TrialState.COMPLETE, TrialState.PRUNED)
                callbacks.append(optuna.study.MaxTrialsCallback(self.options.n_trials, states=states))
            for _ in range(3):  # a round can end early when another worker fails or a grid sampler stops
                todo = self._todo(study) if not self.options.batched else 0
                if todo <= 0:
                    break
                if self.verbose:
                    finished = sum(is_done(t) for t in study.get_trials(deepcopy=False))
                    print(f"kdl tune: {todo} trials to run ({finished} finished) -> {self.out}", flush=True)
                study.optimize(
                    self._objective,
                    n_trials=todo,
                    catch=(FloatingPointError,),
                    callbacks=callbacks,
                    gc_after_trial=False,
                )
            result = self.finish()
        if self.verbose:
            print(format_table(result.trials, self.names, self.options.metric))
            print(format_best(result, self.options.metric), flush=True)
        return result

    def _train_grid(self) -> None:
        """Train the grid's unfinished points as batched members, chunk by chunk; record each chunk's trials."""
        points = {self.member_name(point): point for point in self.pending_points()}
        if not points:
            return
        if self.verbose:
            print(
                f"kdl tune: {len(points)} points to train as batched members, up to {self.options.max_members} "
                f"per fit ({len(self.grid_points()) - len(points)} finished) -> {self.out}",
                flush=True,
            )

        def trainer(callbacks: Sequence[L.Callback]) -> L.Trainer:
            return self._build({}, [*self._cache(), *self.callbacks, *callbacks]).trainer

        members = {name: functools.partial(self.member, point) for name, point in points.items()}
        data = self.datamodule
        assert data is not None  # built by open()
        for chunk in fit_members(members, data, trainer, max_members=self.options.max_members):
            self.record({points[name]: fit for name, fit in chunk.items()})

    # ------------------------------------------------------------------ its steps, for a caller that trains the grid
    def open(self) -> optuna.Study:
        """Open (or create) the search's study, measure the start's validation metric once, build the trials' data.

        Raises:
            ConfigurationError: the storage holds a search of another configuration; a datamodule that cannot
                serve ``tune.validation``; before any file is written for it.
        """
        study, self.datamodule = self._open()
        self.study = study
        return study

    def pending_points(self) -> list[Point]:
        """The grid's points that have no finished trial yet, in grid order (after :meth:`open`)."""
        done = {self._point(t.params) for t in self._opened().get_trials(deepcopy=False) if is_done(t)}
        return [point for point in self.grid_points() if point not in done]

    def grid_points(self) -> list[Point]:
        """Every point of the grid, in grid order (the keys' values, the last key varying fastest)."""
        values = [self.space[key].values or () for key in self.keys]  # a grid point has each key's values
        return [tuple(map(float, point)) for point in itertools.product(*values)]

    def member_name(self, point: Sequence[float]) -> str:
        """``point`` as a batched member's name: ``temperature=4,alpha=0.5``."""
        return member_name(self.names, point)

    def member(self, point: Sequence[float]) -> DistillationModule:
        """The method at grid ``point``, as its trial would start (seeded with the search's seed)."""
        return cast(DistillationModule, self._build(dict(zip(self.keys, point, strict=True)), []).model)

    def record(self, fits: Mapping[Point, MemberFit]) -> None:
        """Add a chunk of fits as the trials of their points, as sequential trials record them (after :meth:`open`).

        Each fit's ``history`` must be its validation on this search's split. The chunk's best point saves its
        weights (``best_model.pt``) if it beats every completed trial; ``trials.csv`` is rewritten once per chunk.
        """
        if not fits:
            return
        study = self._opened()
        chunk = trials_of(
            fits,
            self.keys,
            self.space,
            self.options.metric,
            self.options.direction,
            first_number=len(study.get_trials(deepcopy=False)),
        )
        if chunk.best is not None:
            mine, number, params, fit = chunk.best
            if self._beats_completed(study, mine):
                state_dict = {"trial": number, "params": params, "state_dict": fit.model.state_dict()}
                with atomic_path(self.out / "best_model.pt") as path:
                    torch.save(state_dict, path)
        study.add_trials(chunk.trials)
        trials = study.get_trials(deepcopy=False)
        self._log_trials(trials[len(trials) - len(chunk.trials) :])
        rows = trial_rows(trials, self.keys, self.options.metric, self.val_before)
        write_csv(self.out / "trials.csv", rows)
        if self.verbose:
            for row in rows[-len(chunk.trials) :]:
                print(f"trial {row['number']:>3}  {describe_row(row, self.names, self.options.metric)}", flush=True)

    def finish(self) -> TuneResult:
        """Choose the best trial, test it (with ``tune.test``), write ``trials.csv``, ``best.json``, the heatmap."""
        return self._finish(self._opened())

    def _opened(self) -> optuna.Study:
        if self.study is None:
            raise RunError("The search is not open: call `open()` first.")
        return self.study

    def _open(self) -> tuple[optuna.Study, L.LightningDataModule]:
        """Open (or create) the search's study; measure the start's validation metric once; the trials' data."""
        probed_with = self.seed
        probe = self._build({}, [])  # a datamodule that cannot serve `tune.validation` fails before any file
        self.out.mkdir(parents=True, exist_ok=True)
        storage = open_storage(self.storage_url, self.options.heartbeat_interval)
        study = self._study(storage)  # the search's seed: configured, or kept in the storage
        recover(study, storage)
        if self.seed != probed_with:  # the trials' data are split and shuffled with the search's seed
            probe = self._build({}, [])
        self._cache_on = cache_supported(probe)
        if "val_before" not in study.user_attrs:
            study.set_user_attr("val_before", validate(probe, self.options.metric))
        self.val_before = float(study.user_attrs["val_before"])
        return study, probe.datamodule  # the data every trial reads; the probe's networks can go

    def _study(self, storage: optuna.storages.BaseStorage) -> optuna.Study:
        fingerprint = search_fingerprint(self.description, self.space, self.options)
        existing = study_attrs(storage, self.options.study_name)
        if existing is not None and existing.get("fingerprint") not in (None, fingerprint):
            raise ConfigurationError(
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
            return optuna.samplers.GridSampler({key: list(p.values or ()) for key, p in self.space.items()}, seed=seed)
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=self.options.n_startup_trials)

    def _pruner(self) -> optuna.pruners.BasePruner:
        if self.options.pruner == "none":
            return optuna.pruners.NopPruner()
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=self.options.min_resource, reduction_factor=self.options.reduction_factor
        )

    def _todo(self, study: optuna.Study) -> int:
        """Trials still to run: unfinished grid points (or TPE's remaining budget), queued retries included."""
        trials = study.get_trials(deepcopy=False)
        live = [t for t in trials if t.state == TrialState.RUNNING]
        waiting = [t for t in trials if t.state == TrialState.WAITING]
        if self.options.sampler == "tpe":
            return max(self.options.n_trials - sum(is_done(t) for t in trials) - len(live), 0)
        seen = {self._point(t.params) for t in trials if t.params and (t.state != TrialState.FAIL or is_done(t))}
        seen |= {self._point(t.params) for t in waiting if t.params}
        return sum(point not in seen for point in self.grid_points()) + len(waiting)

    def _objective(self, trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker())
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
            return value_of(twin)
        reporter = TrialReporter(trial, self.options.metric, report=self.options.pruner != "none")
        cli = self._build(params, [*self._cache(), reporter, *self.callbacks])
        try:
            cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        except FloatingPointError as error:
            trial.set_user_attr("error", error_line(error))
            raise
        value, val_loss = final_metrics(cli, reporter, self.options.metric)
        trial.set_user_attr("val_curve", [value for _, value in reporter.history])
        trial.set_user_attr("val_loss", val_loss)
        trial.set_user_attr("epochs", cli.trainer.current_epoch)
        if reporter.pruned:
            raise optuna.TrialPruned(f"pruned after epoch {reporter.history[-1][0]}")
        if self._beats_completed(trial.study, rank(value, val_loss, params, self.keys, self.options.direction)):
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

    def _after_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        self._log_trials([trial])
        trials = study.get_trials(deepcopy=False)
        rows = trial_rows(trials, self.keys, self.options.metric, self.val_before)
        write_csv(self.out / "trials.csv", rows)
        raise_if_stopped()  # a stop signal swallowed during the trial ends the search here
        if self.verbose:
            row = next(r for r in rows if r["number"] == trial.number)
            print(f"trial {trial.number:>3}  {describe_row(row, self.names, self.options.metric)}", flush=True)

    def _log_trials(self, trials: Sequence[FrozenTrial]) -> None:
        """With ``tune.logger``: each finished trial as a W&B run of its own, grouped by the search.

        Named ``trial<number>/<values>`` (``temperature=4,alpha=0.5``); its config holds the method, the searched
        values and the trial's state flat, its history the validation metric per epoch, its summary the best.
        """
        if self.options.logger is False:
            return
        settings = dict(self.tracking)
        extra = dict(settings.pop("config", {}) or {})
        prefix = settings.pop("name", "")
        settings.setdefault("group", self.out.resolve().name)
        settings.setdefault("save_dir", str(self.out))
        settings.setdefault("job_type", "tune")
        metric = self.options.metric
        for trial in trials:
            if trial.state not in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL):
                continue
            point = self._point(trial.params)
            values = dict(zip(self.names, point, strict=True))
            config = flat_config(method=self.method.__name__, hyperparameters=values, seed=self.seed)
            config = {**config, **extra, "trial": trial.number, "state": trial.state.name.lower()}
            curve = trial.user_attrs.get("val_curve") or []
            history = [{metric: float(value)} for value in curve]
            summary = {"val_loss": trial.user_attrs.get("val_loss"), "error": trial.user_attrs.get("error")}
            name = f"{prefix}/" if prefix else ""
            name += f"trial{trial.number}/{member_name(self.names, point)}"
            log_run(self.options.logger, config, history, summary, **{**settings, "name": name})

    # ------------------------------------------------------------------ trials
    def _build(self, params: Mapping[str, float], callbacks: Sequence[L.Callback]) -> Built:
        """The trial with ``params`` (full keys) set, seeded with the search's seed.

        Its datamodule gets the data set source of the first trial built (the probe) when its own is the
        same (:func:`~kdlightning.tuning.trials.share_dataset`), so the search loads the data set once.
        """
        built = self.build({key[len(PREFIX) :]: float(v) for key, v in params.items()}, self.seed, list(callbacks))
        self._dataset = share_dataset(built, self._dataset)
        validate_on(built.datamodule, self.options.validation)
        return built

    def _cache(self) -> list[L.Callback]:
        """The teacher-output cache on ``cache_dir``, shared by every trial of the search."""
        return [CacheReferenceOutputs(cache_dir=str(self.cache_dir))] if self._cache_on else []

    def _point(self, params: Mapping[str, Any]) -> tuple[float, ...]:
        return tuple(float(params.get(key, math.nan)) for key in self.keys)

    # ------------------------------------------------------------------ choosing, testing, reporting
    def _rank(self, trial: FrozenTrial) -> tuple[Any, ...]:
        return trial_rank(trial, self.keys, self.options.direction)

    def _beats_completed(self, study: optuna.Study, mine: tuple[Any, ...]) -> bool:
        """Whether a result of rank ``mine`` (:func:`~kdlightning.tuning.results.rank`) beats every completed trial."""
        completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        return not completed or mine < min(map(self._rank, completed))

    def _finish(self, study: optuna.Study) -> TuneResult:
        trials = study.get_trials(deepcopy=False)
        rows = trial_rows(trials, self.keys, self.options.metric, self.val_before)
        write_csv(self.out / "trials.csv", rows)
        completed = [t for t in trials if t.state == TrialState.COMPLETE]
        if not completed:
            raise RunError(f"No trial of the search completed; see {self.out / 'trials.csv'}.")
        best = min(completed, key=self._rank)
        params = {key: float(value) for key, value in best.params.items()}
        if self.heatmap:
            title = f"{self.method.__name__}: {self.options.metric} gain over the student before training"
            chosen = [dict(zip(self.names, self._point(params), strict=True))]
            plot_heatmap(
                rows,
                self.out / "heatmap.png",
                self.space,
                self.options.metric,
                direction=self.options.direction,
                title=title,
                chosen=chosen,
            )
        test_metrics: dict[str, float] = {}
        test_model = "none"
        if self.options.test:
            build, saved = functools.partial(self._build, params), self.out / "best_model.pt"
            test_metrics, test_model = test_chosen(best, build, saved, self._cache(), self.options.metric)
        result = TuneResult(
            self.out, best.number, params, value_of(best), self.val_before, test_metrics, test_model, rows
        )
        summary = best_summary(result, self.options, trials, self.seed, self.storage_url)
        write_text_atomic(self.out / "best.json", json.dumps(summary, indent=2) + "\n")
        return result
