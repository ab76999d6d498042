"""`FedDF`: FedAvg, then the round's client models distilled as an ensemble into the aggregate, on the server.

Lin, Kong, Stich and Jaggi, "Ensemble Distillation for Robust Model Fusion in Federated Learning" (NeurIPS 2020,
arXiv:2006.07242). After each round's FedAvg aggregation the server trains the aggregated model to match the
(weighted) average of the clients' softened predictions on unlabelled public data. A Flower strategy: give it as
``strategy: {class_path: kdlightning.federated.feddf.FedDF, init_args: {distillation_epochs: 1}}``. The
distillation itself is the federation's (:meth:`~kdlightning.federated.federation.Federation.distil_round`, with
its ``consolidation`` method, :class:`~kdlightning.MultiTeacherKD`, on the server's public split), handed to the
strategy as ``distiller`` when ``kdl federate`` builds it, with the federation's
:class:`~kdlightning.federated.networks.Networks` as ``architectures``: clients whose architecture is not the
global network's train their architecture's own prototype, FedAvg-aggregated among them and distilled from the
whole ensemble like the global model. This module imports Flower: import it only where Flower is installed.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from torch import Tensor

from kdlightning.errors import ConfigurationError
from kdlightning.federated.server_distillation import ServerDistillation
from kdlightning.reporting import error_line

__all__ = ["PROTOTYPE", "WEIGHTINGS", "Architectures", "Distiller", "FedDF"]

State = dict[str, Tensor]


class Distiller(Protocol):
    """``distiller(server_round, aggregate, teachers, weights, settings, prototype)``: a distilled aggregate.

    Returns the aggregate's state after distilling the teachers (``(client, state)``: the client's partition id,
    None if unknown) into it with ``settings``. ``prototype``: None for the global network, else the client whose
    architecture the aggregate has.
    """

    def __call__(
        self,
        server_round: int,
        aggregate: State,
        teachers: Sequence[tuple[int | None, State]],
        weights: Sequence[float],
        settings: ServerDistillation,
        prototype: int | None = None,
    ) -> State:
        """The distilled state of ``aggregate``."""
        ...


class Architectures(Protocol):
    """Which prototype each client trains (:class:`~kdlightning.federated.networks.Networks` is one)."""

    def prototype_of(self, client: int | None) -> int | None:
        """None for the global network's architecture, else the client that names the client's architecture."""
        ...

    def initial_prototypes(self) -> dict[int, State]:
        """The other architectures' prototypes' starting weights, by :meth:`prototype_of`."""
        ...


PROTOTYPE = "prototype-{}"
"""The array record of a training message holding the prototype of client ``k``'s architecture (FedDF with
clients of other architectures than the global network's)."""

WEIGHTINGS = ("examples", "uniform")
"""How the ensemble weighs the clients' predictions: by their training examples (as FedAvg), or equally."""


class FedDF(FedAvg):
    """FedAvg whose aggregate is then distilled from the ensemble of the round's client models (FedDF).

    Args:
        *args: Flower's ``FedAvg``'s.
        distillation_epochs: epochs of server-side distillation after each round's aggregation, ``>= 0``; 0 is
            FedAvg exactly.
        weighting: ``"examples"`` weighs each client's predictions by its training examples, ``"uniform"``
            equally.
        temperature: the distillation's softening temperature; None keeps the ``consolidation`` method's.
        early_stop_patience: stop a round's distillation after this many epochs without a lower distillation loss
            on a held-out share of the public split, and keep its best weights (as FedDF does); None trains every
            epoch on the whole public split.
        holdout_fraction: that held-out share, in ``(0, 1)``.
        distiller: the distillation (:class:`Distiller`); ``kdl federate`` gives the federation's. Needed when
            ``distillation_epochs > 0``.
        architectures: which prototype each client trains (:class:`Architectures`); ``kdl federate`` gives the
            federation's networks. None: every client trains the global network.
        **kwargs: Flower's ``FedAvg``'s.

    A distillation whose loss turns non-finite keeps the round's plain aggregate; its error is kept in
    :attr:`server_failures` (the federation writes it in the round's row). The seconds the server spends
    distilling each round are in :attr:`server_seconds`.
    """

    def __init__(
        self,
        *args: Any,
        distillation_epochs: int = 1,
        weighting: str = "examples",
        temperature: float | None = None,
        early_stop_patience: int | None = None,
        holdout_fraction: float = 0.2,
        distiller: Distiller | None = None,
        architectures: Architectures | None = None,
        **kwargs: Any,
    ) -> None:
        self.settings = ServerDistillation(distillation_epochs, temperature, early_stop_patience, holdout_fraction)
        if weighting not in WEIGHTINGS:
            raise ConfigurationError(f"`strategy.weighting` must be one of {list(WEIGHTINGS)}, got {weighting!r}.")
        super().__init__(*args, **kwargs)
        self.weighting: str = weighting
        self.distiller: Distiller | None = distiller
        self.architectures: Architectures | None = architectures
        self.prototypes: dict[int, ArrayRecord] = {}
        """The other architectures' prototypes, by :meth:`Architectures.prototype_of` (empty until round 1)."""
        self.server_failures: dict[int, list[str]] = {}
        """Per round, why the server's distillation kept the plain aggregate (a non-finite loss)."""
        self.server_seconds: dict[int, float] = {}
        """Per round, the seconds the server spent distilling."""
        self.sent: ArrayRecord | None = None
        """The global model the round's clients were sent."""

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """FedAvg's training messages, each also carrying every other architecture's prototype (:data:`PROTOTYPE`)."""
        messages = list(super().configure_train(server_round, arrays, config, grid))
        self.sent = arrays
        if self.architectures is not None and not self.prototypes:
            self.prototypes = {k: ArrayRecord(s) for k, s in self.architectures.initial_prototypes().items()}
        for message in messages:
            for k, record in self.prototypes.items():
                message.content[PROTOTYPE.format(k)] = record
        return messages

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg's aggregate of each architecture's replies, distilled from the ensemble of them all.

        The global network's aggregate is returned (with its clients' metrics); the other architectures' are
        kept in :attr:`prototypes`. With 0 distillation epochs this is FedAvg's aggregation, per architecture.
        Where no client has the global architecture, the global model the clients were sent is distilled.
        """
        replies = list(replies)
        mine: list[Message] = []  # the replies of the global network's clients
        groups: dict[int, list[Message]] = {}
        for reply in replies:
            prototype = self._prototype(reply)
            (mine if prototype is None else groups.setdefault(prototype, [])).append(reply)
        arrays, metrics = super().aggregate_train(server_round, mine)
        for k, group in groups.items():
            record, group_metrics = super().aggregate_train(server_round, group)
            if record is not None:
                self.prototypes[k] = record
                if arrays is None and self.settings.epochs > 0:
                    # no client has the global architecture: the global model learns from the ensemble alone
                    arrays, metrics = self.sent, group_metrics
        if arrays is None or self.settings.epochs == 0:
            return arrays, metrics
        if self.distiller is None:
            raise ConfigurationError(
                "FedDF has no `distiller`: build it with `kdl federate` (the federation gives its distillation) "
                "or pass `distiller=` yourself."
            )
        teachers, examples = [], []
        for reply in replies:
            if reply.has_error() or self.arrayrecord_key not in reply.content.array_records:
                continue
            content = reply.content
            teachers.append((_client(content), content.array_records[self.arrayrecord_key].to_torch_state_dict()))
            examples.append(_examples(content, self.weighted_by_key))
        weights = examples if self.weighting == "examples" else [1.0] * len(teachers)
        began = time.perf_counter()
        arrays = self._distilled(server_round, None, arrays, teachers, weights)
        for k, record in self.prototypes.items():
            self.prototypes[k] = self._distilled(server_round, k, record, teachers, weights)
        self.server_seconds[server_round] = time.perf_counter() - began
        return arrays, metrics

    def _prototype(self, reply: Message) -> int | None:
        """The prototype the replying client trained (None: the global network's)."""
        if self.architectures is None or reply.has_error():
            return None
        return self.architectures.prototype_of(_client(reply.content))

    def _distilled(
        self, server_round: int, prototype: int | None, arrays: ArrayRecord, teachers: Any, weights: Any
    ) -> ArrayRecord:
        """``arrays`` distilled from the ``teachers``; on a non-finite loss, ``arrays`` itself, the failure noted."""
        assert self.distiller is not None
        try:
            state = self.distiller(
                server_round, arrays.to_torch_state_dict(), teachers, weights, self.settings, prototype
            )
        except FloatingPointError as error:
            which = "the plain aggregate" if prototype is None else f"client {prototype}'s architecture's aggregate"
            self.server_failures.setdefault(server_round, []).append(
                f"server distillation kept {which}: {error_line(error)}"
            )
            return arrays
        return ArrayRecord(state)


def _client(content: Any) -> int | None:
    """The replying client's partition id, where its ClientApp sends one (``kdl federate``'s do)."""
    record = content.config_records.get("client")
    return None if record is None or "partition-id" not in record else int(record["partition-id"])


def _examples(content: Any, key: str) -> float:
    """The reply's training examples: ``key`` of its metric record (FedAvg's weight)."""
    for record in content.metric_records.values():
        if key in record:
            return float(record[key])
    raise ConfigurationError(f"A client's reply carries no `{key}` metric: FedDF weighs the ensemble by it.")
