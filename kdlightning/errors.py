"""The errors kdlightning raises on purpose, by kind: bad input, a missing file, a run that cannot go on.

Each is a :class:`KDLightningError` and also the built-in exception its kind has always been (a
:class:`ConfigurationError` is a ``ValueError``), so ``except ValueError`` still catches it. The ``kdl``
command prints an error of these kinds as one line (the traceback with ``KDL_TRACEBACK=1``); any other
error is a fault, shown with its traceback.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "DivergedError",
    "InputTypeError",
    "KDLightningError",
    "MissingFileError",
    "NotFoundError",
    "RunError",
    "StorageError",
]


class KDLightningError(Exception):
    """An error kdlightning raised on purpose; its message says what was wrong and what to do."""


class ConfigurationError(KDLightningError, ValueError):
    """A value out of its range, or settings that cannot go together: the message names the argument."""


class InputTypeError(KDLightningError, TypeError):
    """An object of the wrong kind where kdlightning expects another (a network's output, a tokenizer)."""


class MissingFileError(KDLightningError, FileNotFoundError):
    """A data set, model or checkpoint that is not where it was looked for: the message says how to get it."""


class NotFoundError(KDLightningError, KeyError):
    """A name that is not among those available (a batched member, a network in a checkpoint)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DivergedError(KDLightningError, FloatingPointError):
    """A loss or a network's output turned non-finite: the message names the step and the component."""


class RunError(KDLightningError, RuntimeError):
    """A run that cannot go on: clients that did not answer, a search without a completed trial, a bad state."""


class StorageError(KDLightningError, OSError):
    """A file that cannot be written or read where it must be: an unwritable directory, a full device."""
