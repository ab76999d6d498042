"""The quiet, single-device trainer of the pipelines' many short fits (study, federation), and their progress bar."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from typing import Any

import lightning as L

__all__ = ["NOTICES", "progress_bar", "quiet", "quiet_trainer"]

NOTICES = (
    r".*LightningCLI's args parameter is intended.*",
    r".*module\(s\) in eval mode.*",
    r".*does not have many workers.*",
    r".*GPU available but not used.*",
    r".*smaller than the logging interval.*",
    r".*LeafSpec.*",
    r".*`tensorboardX` has been removed as a dependency.*",
    r".*Checkpoint directory .* exists and is not empty.*",
    r".*performance drop because we have not yet implemented the batching rule.*",
)
"""Lightning's per-fit notices that say nothing about a pipeline's many short fits (frozen references are in
eval mode by design; in-memory data needs no loader workers; the CSV logger stands in for TensorBoard when
it is not installed, as the trainer config says; a checkpoint directory that already holds files is
``kdl fit``'s own check, which refuses or, with ``--overwrite`` or ``--ckpt_path``, says what it does; torch's
note that an operation of batched members, such as a CNN's adaptive pooling, runs one member at a time under
``vmap`` is about speed, which the study's own timings report)."""

_LOGGERS = ("lightning.pytorch", "lightning.fabric", "lightning")
_TIPS = logging.getLogger("lightning.pytorch.utilities.rank_zero")
"""Where Lightning logs its advertising tips (e.g. to install another logging service) and its other notices."""
_UNSAID = (
    "Tip:",
    "Trainer already configured with model summary callbacks",  # kdl fit's own summary replaces Lightning's
    "`Trainer.fit` stopped: `max_epochs=",  # FitSummary's line says it: "fit ended after N epochs"
)
"""Lightning's log lines that say nothing a ``kdl`` user needs: each is left out where it would be logged."""


def _no_tip(record: logging.LogRecord) -> bool:
    message = str(record.msg)
    return not any(text in message for text in _UNSAID)


@contextlib.contextmanager
def quiet(logs: bool = True) -> Iterator[None]:
    """Within: Lightning's :data:`NOTICES` and tips are not shown and (``logs``) it logs warnings only; all restored.

    The one place the package silences Lightning: the pipelines (study, search, federation) wrap their
    many short fits in it, ``kdl fit`` its one fit with ``logs=False``; a search adds Optuna's own logs
    (:func:`kdlightning.tuning.quiet.quiet`).
    """
    levels = {name: logging.getLogger(name).level for name in _LOGGERS}
    _TIPS.addFilter(_no_tip)
    try:
        for name in _LOGGERS if logs else ():
            logging.getLogger(name).setLevel(logging.WARNING)
        with warnings.catch_warnings():
            for message in NOTICES:
                warnings.filterwarnings("ignore", message=message)
            yield
    finally:
        _TIPS.removeFilter(_no_tip)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


def quiet_trainer(max_epochs: int, callbacks: list[L.Callback] | None = None, **kwargs: Any) -> L.Trainer:
    """A ``Trainer`` on one device with no logger, checkpoints, progress bar, model summary or sanity check.

    Args:
        max_epochs: epochs to train.
        callbacks: Lightning callbacks.
        **kwargs: any other ``Trainer`` argument (e.g. ``accelerator="cpu"``, ``limit_val_batches=0``).
    """
    options: dict[str, Any] = {
        "accelerator": "auto",
        "devices": 1,
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "num_sanity_val_steps": 0,
    }
    options.update(kwargs)
    return L.Trainer(max_epochs=max_epochs, callbacks=callbacks or [], **options)


def progress_bar(
    total: int, unit: str, enabled: bool | None = True, initial: int = 0, description: str | None = None
) -> Any:
    """A pipeline's progress bar (tqdm) over its ``total`` units of work (fits, rounds), ``initial`` already done.

    Args:
        total: units of work in all.
        unit: what one unit is (``"fit"``, ``"round"``).
        enabled: True shows the bar, False hides it, None shows it only on a terminal.
        initial: units finished before (a resumed run).
        description: the bar's label.
    """
    from tqdm.auto import tqdm

    disable = None if enabled is None else not enabled
    return tqdm(total=total, initial=initial, unit=unit, desc=description, disable=disable, dynamic_ncols=True)
