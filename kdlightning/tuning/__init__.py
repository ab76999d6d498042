"""Tuned KD: choose a method's float hyperparameters by an Optuna search on the validation split.

``kdl tune`` takes the ``-c`` configs of ``kdl fit`` plus a ``tune:`` section (:class:`TuneOptions`).
Each trial builds the method, datamodule and trainer from the configs with the trial's values set as the
overrides ``--model.init_args.temperature=4.0`` would set them, fits, and scores the student's
validation metric (``val/acc`` by default). Only the chosen point is evaluated on the test set, once,
after the search. This module only orchestrates: the methods are the ones ``kdl fit`` runs.

- **Samplers**: the exhaustive grid (Optuna's ``GridSampler``; the default grid temperature ∈ {1, 2, 4, 8, 16}
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

Modules: :mod:`~kdlightning.tuning.options` (the ``tune:`` section and the space it names),
:mod:`~kdlightning.tuning.trials` (one trial from ``kdl fit``'s configs), :mod:`~kdlightning.tuning.search`
(the Optuna study), :mod:`~kdlightning.tuning.storage` (its storage and crash recovery),
:mod:`~kdlightning.tuning.results` and :mod:`~kdlightning.tuning.reports` (the chosen point, the rows, table
and heatmap), :mod:`~kdlightning.tuning.command` (``kdl tune``).
"""

from kdlightning.tuning.command import main, tune
from kdlightning.tuning.options import DEFAULT_GRID, TuneOptions
from kdlightning.tuning.results import TuneResult
from kdlightning.tuning.search import Search
from kdlightning.tuning.trials import Built, TrialBuilder, TrialReporter

__all__ = [
    "DEFAULT_GRID",
    "Built",
    "Search",
    "TrialBuilder",
    "TrialReporter",
    "TuneOptions",
    "TuneResult",
    "main",
    "tune",
]
