"""The networks of a federation (:class:`Networks`): the global one and each client's, built fresh on demand."""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import nn

from kdlightning.pipeline import NetworkFactory

__all__ = ["Networks"]


class Networks:
    """Builds the global network and the clients' (client ``k`` gets architecture ``k % len(client_networks)``).

    Clients of the global architecture (the same parameter names and shapes) pre-train from one common
    initialisation, the global network's, as FedAvg's clients do, so that their parameter average averages aligned
    units (:meth:`initial_client_network`).

    Args:
        network: builds the global model (and every client's model unless ``client_networks``).
        client_networks: the clients' architectures, assigned in turn; None for ``network``.
        num_clients: number of clients.
        num_classes: the data set's class count, every network's output size.
        seed: draws the global network's initialisation (the ``fresh`` start).
    """

    def __init__(
        self,
        network: NetworkFactory,
        client_networks: Sequence[NetworkFactory] | None,
        num_clients: int,
        num_classes: int,
        seed: int,
    ) -> None:
        self.network, self.client_networks = network, tuple(client_networks or (network,))
        self.num_clients, self.num_classes, self.seed = num_clients, num_classes, seed

    @property
    def architectures(self) -> int:
        """How many clients it takes to meet every client architecture (client ``k`` has architecture ``k % len``)."""
        return min(self.num_clients, len(self.client_networks))

    def global_network(self) -> nn.Module:
        """A fresh global network, initialised by ``seed`` (the ``fresh`` start)."""
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            return self.network(self.num_classes)

    def client_network(self, client: int) -> nn.Module:
        """A fresh network of client ``client``'s architecture (its initial weights drawn from the global RNG)."""
        return self.client_networks[client % len(self.client_networks)](self.num_classes)

    def initial_client_network(self, client: int) -> nn.Module:
        """The network client ``client``'s pre-training starts from.

        A client of the global architecture starts from the global network's initialisation (:meth:`global_network`,
        by ``seed``): one initialisation common to all such clients, as in FedAvg, so that the ``average`` start
        averages aligned units. A client of another architecture has its own (drawn from the global random state,
        which the federation seeds per client before pre-training it).
        """
        network = self.client_network(client)
        if self.has_global_architecture(client):
            network.load_state_dict(self.global_network().state_dict())
        return network

    def has_global_architecture(self, client: int) -> bool:
        """Whether client ``client``'s network has the global network's parameters (names and shapes)."""
        return self._global_architectures[client % len(self.client_networks)]

    @functools.cached_property
    def _global_architectures(self) -> tuple[bool, ...]:
        with torch.random.fork_rng():
            shapes = _shapes(self.global_network())
            return tuple(_shapes(build(self.num_classes)) == shapes for build in self.client_networks)

    def prototype_of(self, client: int | None) -> int | None:
        """The prototype client ``client`` trains in FedDF's rounds, named by a client of its architecture.

        None (the global network) for a client of the global architecture or of unknown id, else its
        architecture's first client, ``client % len(client_networks)``.
        """
        if client is None or self.has_global_architecture(client):
            return None
        return client % len(self.client_networks)

    def initial_prototypes(self) -> dict[int, dict[str, torch.Tensor]]:
        """The starting weights of each other architecture's prototype, by :meth:`prototype_of`.

        Each is that architecture's fresh initialisation, drawn by ``seed`` and the architecture: the same in
        every start and every process.
        """
        prototypes = {}
        with torch.random.fork_rng():
            for client in range(self.architectures):
                if self.prototype_of(client) == client:
                    torch.manual_seed(self.seed * 1009 + client + 1)
                    prototypes[client] = self.client_network(client).state_dict()
        return prototypes

    def one_architecture(self) -> bool:
        """Whether every client's network has the global network's parameters (names and shapes)."""
        return all(self.has_global_architecture(client) for client in range(self.architectures))

    def texts(self) -> list[str]:
        """The global network's and each client architecture's ``repr`` (what ``federation.json`` records)."""
        with torch.random.fork_rng():  # building them draws initial weights
            networks = [self.global_network()]
            networks += [self.client_network(client) for client in range(self.architectures)]
        return [repr(network) for network in networks]


def _shapes(network: nn.Module) -> dict[str, torch.Size]:
    return {key: value.shape for key, value in network.state_dict().items()}
