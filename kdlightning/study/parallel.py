"""A study's cells (scenario × seed) in parallel on Ray: one task per cell, the driver the only writer.

:func:`run_cells` ships the study's :class:`~kdlightning.study.cells.CellRunner` to Ray's workers and submits one
task per cell with missing runs. Each task runs them as the sequential study does
(:meth:`~kdlightning.study.cells.CellRunner.run_missing`) and returns their rows. The driver merges each finished
cell's rows into ``results.csv`` and ``summary.md`` (atomically), cells in the sequential study's order whatever
order they finish in: the files are the sequential study's, and a killed study resumes either way. The tasks
share the study's files under ``out`` (pre-trained networks, tuning searches, the teacher-output cache), each
written atomically; on a cluster ``out`` must be on a file system every node sees at the same path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import math
import os
import signal
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from kdlightning.data import Partitioner
from kdlightning.errors import ConfigurationError
from kdlightning.study.cells import CellRunner
from kdlightning.study.config import StudyConfig
from kdlightning.study.pretraining import Pretraining
from kdlightning.study.progress import StudyProgress
from kdlightning.trainers import quiet

__all__ = ["ENVIRONMENT", "CellRuns", "check_ray", "run_cells"]

ENVIRONMENT = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "WANDB_MODE", "PYTHONWARNINGS")
"""Environment variables passed on to Ray's workers where the driver sets them."""

CellRuns = tuple[Partitioner, int, list[str]]
"""A cell's scenario, seed and the names of its runs to do."""

_INSTALL = "`ray` runs a study's cells on Ray, which is not installed: `pip install kdlightning[federated]`."


def check_ray(ray: bool | str, cpus_per_cell: float, gpus_per_cell: float, trainer: Mapping[str, Any]) -> None:
    """Check a study's Ray arguments (``trainer``: its trainer settings), and that Ray is installed if ``ray`` is set.

    Raises:
        ValueError: naming the bad argument.
        ImportError: ``ray`` is set and Ray is not installed (the ``federated`` extra).
    """
    if not isinstance(ray, (bool, str)) or (isinstance(ray, str) and not ray.strip()):
        raise ConfigurationError(
            f"`ray` must be false, true (a local Ray) or a cluster's address (e.g. 'auto', 'ray://host:10001'), "
            f"got {ray!r}."
        )
    if not (isinstance(cpus_per_cell, (int, float)) and math.isfinite(cpus_per_cell) and cpus_per_cell > 0):
        raise ConfigurationError(
            f"`cpus_per_cell` must be a number > 0 (Ray's CPUs for each cell), got {cpus_per_cell!r}."
        )
    if not (isinstance(gpus_per_cell, (int, float)) and math.isfinite(gpus_per_cell) and gpus_per_cell >= 0):
        raise ConfigurationError(
            f"`gpus_per_cell` must be a number >= 0 (Ray's GPUs for each cell), got {gpus_per_cell!r}."
        )
    if ray is False:
        return
    if gpus_per_cell == 0 and str(trainer.get("accelerator", "auto")) in ("gpu", "cuda"):
        raise ConfigurationError(
            "`trainer.accelerator` is a GPU but `gpus_per_cell` is 0: Ray hides the GPUs from a task that asks for "
            "none. Pass `gpus_per_cell` (e.g. 0.25: four cells share one GPU)."
        )
    if importlib.util.find_spec("ray") is None:
        raise ImportError(_INSTALL)


def run_cells(
    config: StudyConfig,
    runner: CellRunner,
    cells: Sequence[CellRuns],
    rows: Sequence[dict[str, Any]],
    bar: StudyProgress,
    save: Callable[[list[dict[str, Any]]], None],
) -> tuple[list[dict[str, Any]], float]:
    """Run ``cells`` as Ray tasks, on ``config.ray``; return ``rows`` followed by the cells' rows, in the cells' order.

    After each finished cell ``save`` rewrites ``results.csv`` and ``summary.md`` from the rows so far, and ``bar``
    advances by one (each cell is a step of it, keyed ``(scenario, seed)``).

    Args:
        config: the study's configuration (its Ray settings).
        runner: the study's cell runner (it travels to the workers, each task runs its cell's runs with it).
        cells: each cell's scenario, seed and the runs to do.
        rows: the rows already in ``results.csv``.
        bar: the study's progress bar (:func:`~kdlightning.study.steps.plan`: a step per cell).
        save: writes the study's files from its rows.

    Returns:
        The rows, and the seconds the tasks spent pre-training.

    Raises:
        ImportError: Ray is not installed.
        Exception: an error of a task (a diverging run is a failed row, not an error), with a note naming its cell;
            the other tasks are cancelled, and the finished cells are in ``results.csv``.
    """
    done: dict[int, list[dict[str, Any]]] = {}
    pretraining = 0.0

    def merged() -> list[dict[str, Any]]:
        return [*rows, *(row for number in sorted(done) for row in done[number])]

    if not cells:
        return merged(), pretraining
    with _connected(config.ray) as ray:
        options: dict[str, Any] = {"num_cpus": config.cpus_per_cell, "num_gpus": config.gpus_per_cell}
        environment = {name: os.environ[name] for name in ENVIRONMENT if name in os.environ}
        if environment:
            options["runtime_env"] = {"env_vars": environment}
        task = ray.remote(_run_cell).options(**options)
        shipped = ray.put(_for_workers(runner))
        threads = max(1, round(config.cpus_per_cell))
        pending = {
            task.remote(shipped, scenario, seed, names, threads, os.getcwd()): number
            for number, (scenario, seed, names) in enumerate(cells)
        }
        bar.show(_description(0, len(cells), len(pending)))
        try:
            while pending:
                ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)  # returns now and then for signals
                for ref in ready:
                    number = pending.pop(ref)
                    scenario, seed, names = cells[number]
                    try:
                        done[number], seconds = ray.get(ref)
                    except Exception as error:
                        cell = f"scenario {scenario}, seed {seed} (runs {names})"
                        error.add_note(f"in the Ray task of `kdl study` for {cell}")
                        raise
                    pretraining += seconds
                    save(merged())
                    bar.finish((str(scenario), seed))
                    bar.show(_description(len(done), len(cells), len(pending), f"{scenario} seed {seed}"))
        finally:
            for ref in pending:
                ray.cancel(ref, force=True)
    return merged(), pretraining


def _run_cell(
    runner: CellRunner, scenario: Partitioner, seed: int, names: list[str], threads: int, cwd: str
) -> tuple[list[dict[str, Any]], float]:
    """One cell's runs ``names`` in a Ray worker: their rows, and the seconds spent pre-training."""
    torch.set_num_threads(threads)
    if os.path.isdir(cwd):  # relative paths (a data set's root, a tuning storage) as the driver sees them
        os.chdir(cwd)
    runner.pretraining.seconds = 0.0
    with quiet():
        rows = runner.run_missing(scenario, seed, names)
    return rows, runner.pretraining.seconds


def _for_workers(runner: CellRunner) -> CellRunner:
    """``runner`` as its tasks get it: the study's ``out`` an absolute path, as a worker elsewhere must find it."""
    config = dataclasses.replace(runner.config, out=runner.config.out.resolve())
    return CellRunner(config, Pretraining(config), runner.members, runner.described, runner.tuned.classes)


def _description(done: int, total: int, pending: int, last: str | None = None) -> str:
    """The progress bar's text: the cells finished, those running or waiting for a worker, and the last finished."""
    text = f"Ray: cells {done}/{total} done, {pending} running or queued"
    return text if last is None else f"{text} (last: {last})"


@contextlib.contextmanager
def _connected(address: bool | str) -> Iterator[Any]:
    """The ``ray`` module, connected to ``address`` (True: a local Ray) unless already; shut down after if started."""
    try:
        import ray
    except ImportError as error:
        raise ImportError(_INSTALL) from error
    started = not ray.is_initialized()
    if started:
        main = threading.current_thread() is threading.main_thread()
        handler = signal.getsignal(signal.SIGTERM) if main else None
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Tip: In future versions of Ray", category=FutureWarning)
            ray.init(
                address=None if address is True else str(address),
                ignore_reinit_error=True,
                log_to_driver=False,
                logging_level=logging.WARNING,
                include_dashboard=False if address is True else None,
            )
        if handler is not None:  # ray.init replaces the handler by which `kdl study` stops and says how to resume
            signal.signal(signal.SIGTERM, handler)
    try:
        yield ray
    finally:
        if started:
            ray.shutdown()
