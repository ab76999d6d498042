"""The search's one place for silencing: Lightning's per-run notices and Optuna's per-trial logs and warnings."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator

import optuna

from kdlightning import trainers

__all__ = ["quiet"]


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Lightning's notices (:func:`kdlightning.trainers.quiet`) and Optuna's per-trial logs, silenced within.

    Optuna logs warnings only and its experimental warnings (heartbeats, stale-trial retries) are ignored;
    the search prints its own lines. Everything is restored on exit.
    """
    verbosity = optuna.logging.get_verbosity()
    try:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        with trainers.quiet(), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(verbosity)
