"""Federated learning from a KD-consolidated start (``kdl federate``), on Flower.

:class:`Federation` is the experiment; :mod:`kdlightning.federated.aggregate` its pure arithmetic;
:mod:`kdlightning.federated.apps` the Flower ClientApp and ServerApp (imported on use: they need ``flwr``).
"""

from kdlightning.federated.aggregate import round_reduction, rounds_to_target, weighted_average
from kdlightning.federated.federation import STARTS, Federation, load_federation, main

__all__ = ["STARTS", "Federation", "load_federation", "main", "round_reduction", "rounds_to_target", "weighted_average"]
