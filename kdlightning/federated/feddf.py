"""`FedDF`: FedAvg, then the round's client models distilled as an ensemble into the aggregate, on the server.

Lin, Kong, Stich and Jaggi, "Ensemble Distillation for Robust Model Fusion in Federated Learning" (NeurIPS 2020,
arXiv:2006.07242). After each round's FedAvg aggregation the server trains the aggregated model to match the
(weighted) average of the clients' softened predictions on unlabelled public data. A Flower strategy: give it as
``strategy: {class_path: kdlightning.federated.feddf.FedDF, init_args: {distillation_epochs: 1}}``. The
distillation itself is the federation's (:meth:`~kdlightning.federated.federation.Federation.distil_round`, with
its ``consolidation`` method, :class:`~kdlightning.MultiTeacherKD`, on the server's public split), handed to the
strategy as ``distiller`` when ``kdl federate`` builds it. This module imports Flower: import it only where Flower
is installed.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from flwr.app import ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg
from torch import Tensor

from kdlightning.errors import ConfigurationError
from kdlightning.reporting import error_line

__all__ = ["WEIGHTINGS", "Distiller", "FedDF"]

State = dict[str, Tensor]
Distiller = Callable[[int, State, Sequence[tuple[int | None, State]], Sequence[float], int], State]
"""``distiller(server_round, aggregate, teachers, weights, epochs)``: the aggregate's state after distilling the
teachers (``(client, state)``: the client's partition id, None if unknown) into it for ``epochs`` epochs."""

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
        distiller: the distillation (:data:`Distiller`); ``kdl federate`` gives the federation's. Needed when
            ``distillation_epochs > 0``.
        **kwargs: Flower's ``FedAvg``'s.

    A distillation whose loss turns non-finite keeps the round's plain aggregate; its error is kept in
    :attr:`server_failures` (the federation writes it in the round's row).
    """

    def __init__(
        self,
        *args: Any,
        distillation_epochs: int = 1,
        weighting: str = "examples",
        distiller: Distiller | None = None,
        **kwargs: Any,
    ) -> None:
        if (
            isinstance(distillation_epochs, bool)
            or not isinstance(distillation_epochs, numbers.Integral)
            or distillation_epochs < 0
        ):
            raise ConfigurationError(
                f"`strategy.distillation_epochs` must be an integer >= 0 (0 is FedAvg), got {distillation_epochs!r}."
            )
        if weighting not in WEIGHTINGS:
            raise ConfigurationError(f"`strategy.weighting` must be one of {list(WEIGHTINGS)}, got {weighting!r}.")
        super().__init__(*args, **kwargs)
        self.distillation_epochs: int = int(distillation_epochs)
        self.weighting: str = weighting
        self.distiller: Distiller | None = distiller
        self.server_failures: dict[int, list[str]] = {}
        """Per round, why the server's distillation kept the plain aggregate (a non-finite loss)."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """FedAvg's aggregate, distilled from the ensemble of the replies' models (unless 0 epochs)."""
        replies = list(replies)
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None or self.distillation_epochs == 0:
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
        try:
            state = self.distiller(
                server_round, arrays.to_torch_state_dict(), teachers, weights, self.distillation_epochs
            )
        except FloatingPointError as error:
            self.server_failures.setdefault(server_round, []).append(
                f"server distillation kept the plain aggregate: {error_line(error)}"
            )
            return arrays, metrics
        return ArrayRecord(state), metrics


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
