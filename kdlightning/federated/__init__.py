"""Federated learning from a KD-consolidated start (``kdl federate``), on Flower.

Layers, each importing only the ones before it:

- :mod:`kdlightning.federated.aggregate`: the pure arithmetic (parameter averages, rounds to a target and the
  reduction in communication rounds, the targets);
- :mod:`kdlightning.federated.strategy`: the server's Flower strategy, by ``class_path``;
- :mod:`kdlightning.federated.config`: a federation's settings, :class:`FederationConfig` (a frozen dataclass,
  checked value by value as it is built);
- :mod:`kdlightning.federated.networks` and :mod:`kdlightning.federated.records`: a federation's networks and what
  it writes (``rounds.csv``, ``summary.md``, ``accuracy.png``, ``federation.json``);
- :mod:`kdlightning.federated.federation`: the experiment, :class:`Federation` (data, the clients' work, starts,
  evaluation), with no Flower; :meth:`Federation.check` fails fast before any client trains;
- :mod:`kdlightning.federated.apps`: the Flower ClientApp and ServerApp over a :class:`Federation`, the server loop
  and the simulation, :func:`run` (imported on first use: it needs ``flwr``);
- :mod:`kdlightning.federated.experiment` and :mod:`kdlightning.federated.experiment_records`: the experiment
  across scenarios and seeds, :class:`FederatedExperiment` (a :class:`Federation` per cell, each run by :func:`run`;
  the reduction in rounds with its interval over seeds).

``kdl federate`` (:mod:`kdlightning.cli`) parses a :class:`FederationConfig`, checks its :class:`Federation` and
calls :func:`run`; given ``scenarios`` or ``seeds`` it builds a :class:`FederatedExperiment` and runs it.
"""

from typing import Any

from kdlightning.federated.aggregate import (
    COLLECTION_ROUNDS,
    PAPER_REDUCTION,
    StartResult,
    Targets,
    accuracy_curves,
    censored_rounds_to_target,
    count_to_target,
    round_reduction,
    rounds_to_target,
    start_results,
    weighted_average,
)
from kdlightning.federated.config import STARTS, FederationConfig
from kdlightning.federated.experiment import FederatedExperiment, load_experiment
from kdlightning.federated.federation import Federation, load_federation

__all__ = [
    "COLLECTION_ROUNDS",
    "PAPER_REDUCTION",
    "STARTS",
    "FederatedExperiment",
    "Federation",
    "FederationConfig",
    "StartResult",
    "Targets",
    "accuracy_curves",
    "censored_rounds_to_target",
    "count_to_target",
    "load_experiment",
    "load_federation",
    "round_reduction",
    "rounds_to_target",
    "run",
    "start_results",
    "weighted_average",
]

_APPS = ("run",)
"""Names of :mod:`kdlightning.federated.apps`, imported on first use so that ``import kdlightning`` needs no Flower."""


def __getattr__(name: str) -> Any:
    if name in _APPS:
        from kdlightning.federated import apps

        return getattr(apps, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
