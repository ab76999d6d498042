"""A search's grid as batched members (``tune.batched``): trained in chunks, recorded as Optuna trials.

:class:`BatchedGrid` is the part of :class:`~kdlightning.tuning.Search` that trains the grid's unfinished
points as :class:`~kdlightning.methods.BatchedMembers` (``tune.max_members`` per fit) and adds each point to
the study as the trial its sequential fit would have been. Searches that differ only in where they validate
(``tune.validation`` own and public, as a study runs them) train their points once, in one fit that
validates every member on each split.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import optuna
import torch
from optuna.distributions import FloatDistribution
from optuna.trial import FrozenTrial, TrialState

from kdlightning.atomic import atomic_path
from kdlightning.batching import MemberFit, fit_members
from kdlightning.errors import ConfigurationError
from kdlightning.methods import DistillationModule, NotBatchable
from kdlightning.reporting import write_csv
from kdlightning.tuning.options import Param, TuneOptions
from kdlightning.tuning.reports import describe_row, trial_rows
from kdlightning.tuning.results import rank
from kdlightning.tuning.storage import is_done, worker

__all__ = ["BatchedGrid"]


class BatchedGrid:
    """The batched grid of a :class:`~kdlightning.tuning.Search` (its base class; uses the search's pieces)."""

    options: TuneOptions
    space: dict[str, Param]
    keys: list[str]
    names: list[str]
    out: Path
    seed: int
    description: Any
    verbose: bool
    callbacks: list[L.Callback]
    val_before: float

    def _run_batched(
        self,
        study: optuna.Study,
        extra: Mapping[str, Callable[[], DistillationModule]],
        datamodule: L.LightningDataModule,
        beside: Sequence[BatchedGrid] = (),
    ) -> dict[str, MemberFit]:
        """Train the grid's unfinished points (and ``extra``) as batched members; add each point as a trial.

        Points are recorded chunk by chunk (``tune.max_members`` per fit), so a killed search resumes with
        the chunks it had not finished. The searches ``beside`` (the same trials, validated elsewhere) record
        the same fits, each validated on its own split: one fit serves them all.
        """
        searches = [(self, study, datamodule), *(other._opened_beside(self) for other in beside)]
        done = [{self._point(t.params) for t in s.get_trials(deepcopy=False) if is_done(t)} for _, s, _ in searches]
        todo = [point for point in self._grid_points() if any(point not in finished for finished in done)]
        points = {self._member_name(point): point for point in todo}
        members = {**extra, **{name: functools.partial(self._member, point) for name, point in points.items()}}
        if not members:
            return {}
        if self.verbose and points:
            print(
                f"kdl tune: {len(points)} points to train as batched members, up to {self.options.max_members} "
                f"per fit ({len(self._grid_points()) - len(points)} finished) -> {self.out}",
                flush=True,
            )

        def trainer(callbacks: Sequence[L.Callback]) -> L.Trainer:
            return self._build({}, [*self._cache(), *self.callbacks, *callbacks]).trainer

        fits: dict[str, MemberFit] = {}
        if len(searches) > 1:  # one validation loader per search, in order
            datamodule.validation = [search.options.validation for search, _, _ in searches]
        try:
            chunks = fit_members(
                members,
                datamodule,
                trainer,
                max_members=self.options.max_members,
                test=list(extra),
                batched=True,
                fallback=len(searches) == 1,
            )
            for chunk in chunks:
                fits.update({name: fit for name, fit in chunk.items() if name not in points})
                for index, (search, its_study, _) in enumerate(searches):
                    search._record(
                        its_study,
                        {
                            points[name]: dataclasses.replace(fit, history=fit.histories[index])
                            for name, fit in chunk.items()
                            if name in points and points[name] not in done[index]
                        },
                    )
        except NotBatchable as error:  # only with searches beside: each trains its points apart
            warnings.warn(
                f"{error}. Each search's points are fitted one at a time instead (the same results, without batching).",
                stacklevel=2,
            )
            datamodule.validation = self.options.validation
            fits.update(self._run_batched(study, {n: b for n, b in extra.items() if n not in fits}, datamodule))
            for search, its_study, its_data in searches[1:]:
                search._run_batched(its_study, {}, its_data)
        finally:
            datamodule.validation = self.options.validation
        return fits

    def _opened_beside(self, first: BatchedGrid) -> tuple[BatchedGrid, optuna.Study, L.LightningDataModule]:
        """This search's study and data, to record ``first``'s fits: refused unless only the validation differs."""
        study, datamodule = self._open()
        options = dataclasses.replace(
            self.options,
            validation=first.options.validation,
            study_name=first.options.study_name,
            storage=first.options.storage,
        )
        same = (self.description, self.space, self.seed, options) == (
            first.description,
            first.space,
            first.seed,
            first.options,
        )
        if not same or self.options.validation == first.options.validation:
            raise ConfigurationError(
                f"A search beside {first.out} must differ from it only in `tune.validation`; {self.out} differs in "
                "more (its method, data, seed, trainer, space or other options) or validates on the same split."
            )
        return self, study, datamodule

    def _member_name(self, point: Sequence[float]) -> str:
        """A grid point as a member's name: ``temperature=4,alpha=0.5``."""
        return ",".join(f"{name}={value:g}" for name, value in zip(self.names, point, strict=True))

    def _member(self, point: Sequence[float]) -> DistillationModule:
        """The method at grid ``point``, as its trial would start."""
        return self._build(dict(zip(self.keys, point, strict=True)), []).model

    def _record(self, study: optuna.Study, fits: Mapping[tuple[float, ...], MemberFit]) -> None:
        """Add a chunk's fits to the study as the trials of their points (as sequential trials record them).

        The chunk's best point saves its weights (``best_model.pt``) if it beats every completed trial;
        ``trials.csv`` is rewritten once per chunk.
        """
        if not fits:
            return
        metric = self.options.metric
        trials, best = [], None
        for number, (point, fit) in enumerate(fits.items(), start=len(study.get_trials(deepcopy=False))):
            params = dict(zip(self.keys, map(float, point), strict=True))
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
                mine = rank(value, attrs["val_loss"], params, self.keys, self.options.direction)
                if best is None or mine < best[0]:
                    best = (mine, number, params, fit, value, attrs["val_loss"])
            end = datetime.datetime.now()
            trials.append(
                FrozenTrial(
                    number=-1,
                    state=state,
                    value=value,
                    datetime_start=end - datetime.timedelta(seconds=fit.seconds),
                    datetime_complete=end,
                    params=params,
                    distributions=self._distributions(),
                    user_attrs=attrs,
                    system_attrs={},
                    intermediate_values={},  # as a sequential trial without a pruner: the curve is in val_curve
                    trial_id=-1,
                )
            )
        if best is not None:
            _, number, params, fit, value, val_loss = best
            if self._beats_completed(study, value, val_loss, params):
                state_dict = {"trial": number, "params": params, "state_dict": fit.model.state_dict()}
                with atomic_path(self.out / "best_model.pt") as path:
                    torch.save(state_dict, path)
        study.add_trials(trials)
        recorded = study.get_trials(deepcopy=False)
        rows = trial_rows(recorded, self.keys, metric, self.val_before)
        write_csv(self.out / "trials.csv", rows)
        if self.verbose:
            for row in rows[-len(trials) :]:
                print(f"trial {row['number']:>3}  {describe_row(row, self.names, metric)}", flush=True)

    def _distributions(self) -> dict[str, FloatDistribution]:
        """The grid's distributions, as :meth:`_suggest` declares them."""
        return {key: FloatDistribution(min(p.values or ()), max(p.values or ())) for key, p in self.space.items()}
