"""How a federation's server distils a round's client models into its global model (FedDF's settings)."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

from kdlightning.errors import ConfigurationError

__all__ = ["ServerDistillation"]


@dataclass(frozen=True)
class ServerDistillation:
    """The server's distillation in a round: the federation's ``consolidation`` method, with these settings.

    Args:
        epochs: passes over the public split (less its held-out share), ``>= 0``; 0 distils nothing.
        temperature: the softening temperature; None keeps the ``consolidation`` method's.
        patience: stop after this many epochs in which the distillation loss on the held-out share of the
            public split did not fall, and keep the weights where it was lowest (as FedDF does); None trains
            every epoch on the whole public split.
        holdout_fraction: the share of the public split held out to stop on, in ``(0, 1)`` (with ``patience``).

    Each is named ``strategy.<argument>`` in its error (FedDF's ``distillation_epochs``, ``temperature``,
    ``early_stop_patience``, ``holdout_fraction``).
    """

    epochs: int = 1
    temperature: float | None = None
    patience: int | None = None
    holdout_fraction: float = 0.2

    def __post_init__(self) -> None:
        if not _integer(self.epochs) or self.epochs < 0:
            raise ConfigurationError(
                f"`strategy.distillation_epochs` must be an integer >= 0 (0 is FedAvg), got {self.epochs!r}."
            )
        if self.temperature is not None and not (
            _real(self.temperature) and math.isfinite(self.temperature) and self.temperature > 0
        ):
            raise ConfigurationError(
                f"`strategy.temperature` must be a number > 0, or None for the consolidation's, got "
                f"{self.temperature!r}."
            )
        if self.patience is not None and (not _integer(self.patience) or self.patience < 1):
            raise ConfigurationError(
                f"`strategy.early_stop_patience` must be an integer >= 1, or None to train every epoch, got "
                f"{self.patience!r}."
            )
        if not _real(self.holdout_fraction) or not 0.0 < self.holdout_fraction < 1.0:
            raise ConfigurationError(f"`strategy.holdout_fraction` must lie in (0, 1), got {self.holdout_fraction!r}.")

    @property
    def held_out(self) -> float:
        """The share of the public split held out from training: ``holdout_fraction`` with ``patience``, else 0."""
        return self.holdout_fraction if self.patience is not None else 0.0


def _integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
