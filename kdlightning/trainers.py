"""The quiet, single-device trainer that pipelines (study, federation) run their many short fits with."""

from __future__ import annotations

import logging
import warnings
from typing import Any

import lightning as L

__all__ = ["quiet", "quiet_trainer"]

_NOTICES = (r".*module\(s\) in eval mode.*", r".*does not have many workers.*", r".*LeafSpec.*")


def quiet() -> None:
    """Keep Lightning's per-fit notices (and its notes on frozen modules in eval mode) out of a pipeline's output."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for message in _NOTICES:
        warnings.filterwarnings("ignore", message=message)


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
