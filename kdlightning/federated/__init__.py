"""Federated learning from a KD-consolidated start (``kdl federate``), on Flower.

Four layers, each importing only the ones before it:

- :mod:`kdlightning.federated.aggregate`: the pure arithmetic (parameter averages, communication rounds);
- :mod:`kdlightning.federated.federation`: the experiment, :class:`Federation` (data, networks, starts,
  evaluation, results), with no Flower;
- :mod:`kdlightning.federated.apps`: the Flower ClientApp and ServerApp over a :class:`Federation`, the
  server loop and the simulation, :func:`run` (imported on first use: it needs ``flwr``);
- :mod:`kdlightning.federated.experiment`: the experiment across scenarios and seeds, :class:`FederatedStudy`
  (a :class:`Federation` per cell, each run by :func:`run` when the study runs; the reduction in rounds with
  its interval over seeds).

``kdl federate`` (:mod:`kdlightning.cli`) parses a :class:`Federation` and calls :func:`run`; given
``scenarios`` or ``seeds`` it builds a :class:`FederatedStudy` and runs it.
"""

from typing import Any

from kdlightning.federated.aggregate import (
    censored_rounds_to_target,
    round_reduction,
    rounds_to_target,
    weighted_average,
)
from kdlightning.federated.experiment import FederatedStudy, StartResult, load_study
from kdlightning.federated.federation import STARTS, Federation, load_federation

__all__ = [
    "STARTS",
    "FederatedStudy",
    "Federation",
    "StartResult",
    "censored_rounds_to_target",
    "load_federation",
    "load_study",
    "round_reduction",
    "rounds_to_target",
    "run",
    "weighted_average",
]

_APPS = ("run",)
"""Names of :mod:`kdlightning.federated.apps`, imported on first use so that ``import kdlightning`` needs no Flower."""


def __getattr__(name: str) -> Any:
    if name in _APPS:
        from kdlightning.federated import apps

        return getattr(apps, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
