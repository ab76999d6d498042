"""Weights & Biases runs of every pipeline, made one way (``kdl fit``, ``kdl tune``, ``kdl study``, ``kdl federate``).

- :func:`check_logger` and :func:`wandb_logger`: a pipeline's ``logger`` option (false, true, or
  ``lightning.pytorch.loggers.WandbLogger`` arguments) as a ``WandbLogger`` with the pipeline's defaults under
  the user's settings;
- :func:`flat_config`, :func:`method_config`: the keys a user filters runs by (``method``, ``student``,
  ``teacher``, ``partition``, ``seed`` and the method's hyperparameters such as ``temperature`` and ``alpha``),
  flat at the top of a run's config beside the nested one;
- :func:`log_fit_config`: those keys and a fit's nested config given to every logger of a ``Trainer`` (without
  LightningCLI's ``_instantiator``), its W&B runs keeping the best validation accuracy in their summary
  (:data:`BEST`);
- :func:`log_run`: one finished run (a batched member, a grid point) as a W&B run of its own, from what it
  recorded: its config, its validation per epoch and its results;
- :func:`log_summary`: a pipeline's tables (CSV files and the tables of a Markdown report) and plots as one run.

Nothing here contacts a server by itself: with ``WANDB_MODE=offline`` (or ``logger: {mode: offline}``) each run
is written under ``save_dir`` to be synced later with ``wandb sync``.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from kdlightning.errors import ConfigurationError

if TYPE_CHECKING:
    import lightning as L
    from lightning.pytorch.loggers import WandbLogger

__all__ = [
    "BEST",
    "INSTANTIATOR",
    "PROJECT",
    "check_logger",
    "define_best",
    "finish",
    "flat_config",
    "log_fit_config",
    "log_run",
    "log_summary",
    "markdown_tables",
    "method_config",
    "network_name",
    "scalar_hyperparameters",
    "wandb_logger",
    "without_instantiator",
]

PROJECT = "kdlightning"
"""The W&B project of every pipeline's runs unless its ``logger`` names another."""

BEST: dict[str, str] = {"val/acc": "max", "val/acc_peer": "max", "val/loss": "min"}
"""What a run's summary keeps of each validation metric: its best value (W&B's ``define_metric`` summary), not
its last; the summary then holds e.g. ``val/acc: {max: 0.93}``."""

INSTANTIATOR = "_instantiator"
"""The key LightningCLI adds to a method's saved hyperparameters (how to rebuild it from a checkpoint): noise in a
run's config."""

FLAT_KEYS = ("method", "student", "teacher", "partition", "seed")
"""The config keys every pipeline's runs share, at the top of the config."""


def check_logger(logger: Any, argument: str = "logger") -> bool | dict[str, Any]:
    """A pipeline's ``logger`` option, checked: False, True, or a dict of ``WandbLogger`` arguments.

    Raises:
        ConfigurationError: another kind of value, or a logger asked for without ``wandb`` installed; naming
            ``argument``.

    Examples:
        >>> check_logger(False), check_logger({"project": "mine", "mode": "offline"})
        (False, {'project': 'mine', 'mode': 'offline'})
    """
    if logger is None or logger is False:
        return False
    if logger is not True and not isinstance(logger, Mapping):
        raise ConfigurationError(
            f"`{argument}` must be false, true or a dict of `lightning.pytorch.loggers.WandbLogger` arguments "
            f"(project, group, mode, ...), got {logger!r}."
        )
    if importlib.util.find_spec("wandb") is None:
        raise ConfigurationError(f"`{argument}` needs `wandb` (pip install wandb), or `{argument}: false`.")
    return True if logger is True else {str(key): value for key, value in logger.items()}


def wandb_logger(logger: bool | Mapping[str, Any], **defaults: Any) -> WandbLogger | None:
    """The ``WandbLogger`` a pipeline's ``logger`` option asks for (None for False).

    Args:
        logger: True, or ``WandbLogger`` arguments, which win over ``defaults``.
        **defaults: the pipeline's own settings of this run (``save_dir``, ``group``, ``name``, ``job_type``, ...);
            the project is :data:`PROJECT` unless given.
    """
    if logger is False or logger is None:
        return None
    from lightning.pytorch.loggers import WandbLogger

    settings: dict[str, Any] = {"project": PROJECT, **defaults}
    if isinstance(logger, Mapping):
        settings.update(logger)
    return WandbLogger(**settings)


def define_best(experiment: Any, metrics: Mapping[str, str] = BEST) -> None:
    """Make a W&B run's summary keep each metric's best value (``max`` or ``min``), not its last."""
    for name, summary in metrics.items():
        experiment.define_metric(name, summary=summary)


def finish(loggers: Iterable[Any]) -> None:
    """End the W&B runs of ``loggers`` (the next ``WandbLogger`` then starts a run of its own)."""
    for logger in loggers:
        if _is_wandb(logger) and getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish()


# ---------------------------------------------------------------------------------------------- flat keys
def network_name(value: Any) -> str | None:
    """What a network is, in a word: its class's name (a module, a class, a factory or a ``class_path``).

    Examples:
        >>> from torch import nn
        >>> network_name(nn.Linear(2, 2)), network_name({"class_path": "kdlightning.models.MLP"})
        ('Linear', 'MLP')
    """
    if value is None:
        return None
    if isinstance(value, Mapping):
        path = value.get("class_path")
        return str(path).rsplit(".", 1)[-1] if path else None
    if isinstance(value, type):
        return value.__name__
    func = getattr(value, "func", None)  # a functools.partial: its target, skipping jsonargparse's wrapper
    if func is not None:
        target = next((part for part in (func, *getattr(value, "args", ())) if isinstance(part, type)), func)
        return network_name(target)
    if hasattr(value, "parameters") and hasattr(value, "forward"):
        return type(value).__name__
    return getattr(value, "__name__", None) or type(value).__name__


def scalar_hyperparameters(values: Mapping[str, Any]) -> dict[str, Any]:
    """The hyperparameters among ``values`` a run is filtered by: numbers, strings and flags.

    Networks and optimizers (nested configs) are left out, and so is LightningCLI's ``_instantiator``.

    Examples:
        >>> scalar_hyperparameters({"temperature": 4.0, "alpha": 0.5, "teacher": {"class_path": "x.MLP"},
        ...                         "_instantiator": "lightning.pytorch.cli.instantiate_module"})
        {'temperature': 4.0, 'alpha': 0.5}
    """
    return {
        str(key): value
        for key, value in values.items()
        if not str(key).startswith("_") and isinstance(value, (bool, int, float, str))
    }


def method_config(model: Any) -> dict[str, Any]:
    """The flat keys a method describes: its class (``method``), its networks' classes, its hyperparameters.

    ``student`` and ``teacher`` are the classes of its student and its teacher (DML: its peer); the
    hyperparameters are its scalar ones (:func:`scalar_hyperparameters`).
    """
    teacher = next(
        (getattr(model, name, None) for name in ("teacher", "peer") if getattr(model, name, None) is not None), None
    )
    return flat_config(
        method=type(model).__name__,
        student=network_name(getattr(model, "student", None)),
        teacher=network_name(teacher),
        hyperparameters=dict(getattr(model, "hparams", {}) or {}),
    )


def flat_config(
    method: str | None = None,
    student: Any = None,
    teacher: Any = None,
    partition: Any = None,
    seed: int | None = None,
    hyperparameters: Mapping[str, Any] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The flat keys of a run's config: ``method``, ``student``, ``teacher``, ``partition``, ``seed``, and more.

    Then come the method's scalar ``hyperparameters`` and ``extra``; keys without a value are left out.

    Examples:
        >>> keys = flat_config("vanilla_kd", "MLP", "MLP", "iid", 0, {"temperature": 4.0, "alpha": 0.5}, epochs=5)
        >>> keys["method"], keys["partition"], keys["seed"], keys["temperature"], keys["alpha"], keys["epochs"]
        ('vanilla_kd', 'iid', 0, 4.0, 0.5, 5)
    """
    keys: dict[str, Any] = {
        "method": method,
        "student": network_name(student) if student is not None and not isinstance(student, str) else student,
        "teacher": network_name(teacher) if teacher is not None and not isinstance(teacher, str) else teacher,
        "partition": None if partition is None else str(partition),
        "seed": seed,
    }
    for key, value in scalar_hyperparameters(hyperparameters or {}).items():
        keys.setdefault(key, value)
    keys.update(extra)
    return {key: value for key, value in keys.items() if value is not None and value != ""}


def without_instantiator(config: Any) -> Any:
    """``config`` (nested dicts and lists) without LightningCLI's ``_instantiator`` keys."""
    if isinstance(config, Mapping):
        return {key: without_instantiator(value) for key, value in config.items() if key != INSTANTIATOR}
    if isinstance(config, list):
        return [without_instantiator(value) for value in config]
    return config


def log_fit_config(
    trainer: L.Trainer, model: L.LightningModule, config: Mapping[str, Any] | None = None, **flat: Any
) -> None:
    """Give every logger of ``trainer`` a fit's flat keys and its nested ``config``, cleanly.

    The method's own keys (:func:`method_config`), the data's ``partition`` and the ``flat`` ones (``seed``, ...)
    go at the top; ``config`` (a whole ``kdl fit`` config) under ``config``. Lightning would log the method's
    saved hyperparameters at the start of the fit as they are (networks as nested dicts, LightningCLI's
    ``_instantiator``): they are saved again as they were, with ``logger=False``, so that checkpoints keep them
    and the loggers get these keys instead. W&B runs keep the best of each :data:`BEST` metric in their summary.
    Call it before the fit starts (a callback's ``setup``).
    """
    saved = dict(getattr(model, "hparams", {}) or {})
    if saved:
        model.save_hyperparameters(saved, logger=False)
    partition = getattr(getattr(trainer, "datamodule", None), "partitioner", None)
    params = {**method_config(model), **flat_config(partition=partition), **flat_config(**flat)}
    if config is not None:
        params["config"] = without_instantiator(dict(config))
    for logger in trainer.loggers:
        logger.log_hyperparams(params)
        if _is_wandb(logger):
            define_best(cast(Any, logger).experiment)


# ---------------------------------------------------------------------------------------------- recorded runs
def log_run(
    logger: bool | Mapping[str, Any],
    config: Mapping[str, Any],
    history: Sequence[Mapping[str, float]] = (),
    summary: Mapping[str, Any] | None = None,
    **defaults: Any,
) -> None:
    """Log one finished run as a W&B run of its own: ``config``, one ``history`` row per epoch, ``summary``.

    For a run trained inside a larger fit (a batched member, a grid point): the run appears as if it had been
    fitted alone, its validation per epoch logged at steps 0, 1, ... with ``epoch``, its best validation in the
    summary (:data:`BEST`), ``summary`` (its test accuracy, its gain) beside it.

    Args:
        logger: the pipeline's ``logger`` option (True or ``WandbLogger`` arguments; False logs nothing).
        config: the run's config (flat keys, and any nested ones).
        history: per epoch, its validation metrics (``{"val/acc": ..., "val/loss": ...}``).
        summary: final values (non-finite ones are left out).
        **defaults: ``WandbLogger`` settings of the run (``save_dir``, ``group``, ``name``, ``job_type``, ...).
    """
    tracker = wandb_logger(logger, **defaults)
    if tracker is None:
        return
    experiment = tracker.experiment
    try:
        define_best(experiment)
        experiment.config.update(dict(config), allow_val_change=True)
        for epoch, row in enumerate(history):
            metrics = {key: float(value) for key, value in row.items() if _finite(value)}
            experiment.log({**metrics, "epoch": epoch}, step=epoch)
        final = {key: value for key, value in (summary or {}).items() if value is not None and _finite(value)}
        if final:
            experiment.summary.update(final)
    finally:
        experiment.finish()


def log_summary(
    logger: bool | Mapping[str, Any],
    tables: Mapping[str, Sequence[Mapping[str, Any]]] | None = None,
    images: Iterable[Path] = (),
    config: Mapping[str, Any] | None = None,
    **defaults: Any,
) -> None:
    """One W&B run of a pipeline's results: its tables as ``wandb.Table``, its plots as ``wandb.Image``.

    Each of ``tables`` (rows of dicts) is a table under its name, each of ``images`` (PNG files) an image under
    its file's stem.

    Args:
        logger: the pipeline's ``logger`` option (False logs nothing).
        tables: rows by table name (e.g. ``results``, the tables of ``summary.md``).
        images: plots to log (missing files are skipped).
        config: the run's config.
        **defaults: ``WandbLogger`` settings (``save_dir``, ``group``, ``name``, ``job_type``, ...).
    """
    tracker = wandb_logger(logger, **defaults)
    if tracker is None:
        return
    import wandb

    experiment = tracker.experiment
    try:
        if config:
            experiment.config.update(dict(config), allow_val_change=True)
        logged: dict[str, Any] = {}
        for name, rows in dict(tables or {}).items():
            if rows:
                columns: list[Any] = list(dict.fromkeys(key for row in rows for key in row))
                data = [[_cell(row.get(column)) for column in columns] for row in rows]
                logged[name] = wandb.Table(columns=columns, data=data)
        for path in images:
            if Path(path).is_file():
                logged[Path(path).stem] = wandb.Image(str(path))
        if logged:
            experiment.log(logged)
    finally:
        experiment.finish()


def markdown_tables(text: str) -> dict[str, list[dict[str, str]]]:
    r"""The tables of a Markdown report, each under the heading above it (``summary.md``'s gains, rankings, ...).

    Examples:
        >>> markdown_tables("## Gains\n\n| method | gain |\n|---|---|\n| kd | 1.5 |\n")
        {'Gains': [{'method': 'kd', 'gain': '1.5'}]}
    """
    tables: dict[str, list[dict[str, str]]] = {}
    heading = "table"
    header: list[str] | None = None
    rows: list[dict[str, str]] = []

    def cells(line: str) -> list[str]:
        return [cell.strip() for cell in line.strip().strip("|").split("|")]

    for line in [*text.splitlines(), ""]:
        if line.lstrip().startswith("|"):
            values = cells(line)
            if header is None:
                header, rows = values, []
            elif not all(set(value) <= set(":- ") for value in values):
                rows.append(dict(zip(header, values, strict=False)))
            continue
        if header is not None and rows:
            name, number = heading, 2
            while name in tables:
                name, number = f"{heading} ({number})", number + 1
            tables[name] = rows
        header, rows = None, []
        if line.startswith("#"):
            heading = line.lstrip("#").strip() or heading
    return tables


def _cell(value: Any) -> Any:
    """A table cell W&B can hold: numbers and text as they are, anything else as its text."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def _finite(value: Any) -> bool:
    """Whether ``value`` is a finite number, or not a number at all (text is kept)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return not isinstance(value, (list, dict))
    return math.isfinite(value)


def _is_wandb(logger: Any) -> bool:
    return any(cls.__name__ == "WandbLogger" for cls in type(logger).__mro__)
