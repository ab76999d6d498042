"""The federated experiment behind ``kdl federate``: FedAvg on Flower from three starting points.

K clients each hold a model pre-trained on their own partition. The server collects the clients'
models in one communication round and builds the starts:

- ``fresh``: a new initialisation of the global network (no collection round);
- ``average``: the parameter average of the clients' models, weighted by their data sizes (only
  when every client has the global architecture);
- ``consolidated``: the clients' models distilled into the global network by
  :class:`~kdlightning.MultiTeacherKD` on the server's transfer set, a public split no client owns;
- ``best_client``: the single client model most accurate on that public split (clients of the global
  architecture only).

Clients of the global architecture all start their pre-training from one common initialisation, the
global network's, as FedAvg's clients do, so that their parameter average averages aligned units.

FedAvg (Flower's strategy) then runs from each start for ``rounds`` rounds, every client training
with Lightning on its partition, and the global model is tested on the global test set after every
round. ``rounds.csv``, ``summary.md`` (rounds to the target accuracy and the reduction in total
communication rounds, the collection round counted in) and ``accuracy.png`` are written to ``out``.

This module is the experiment alone (it imports no Flower): data, networks, the clients' work, the
starts, the evaluation and the results. The Flower apps that run it, the server loop and the simulation
are :mod:`kdlightning.federated.apps`: ``kdl federate`` runs them in Flower's simulation on one machine;
``flwr run`` runs the same apps on real SuperNodes.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import math
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from kdlightning import pipeline
from kdlightning.cache import CacheReferenceOutputs
from kdlightning.data import (
    DatasetSource,
    Digits,
    DirichletPartitioner,
    EpochShuffleSampler,
    PartitionedDataModule,
    Partitioner,
)
from kdlightning.errors import ConfigurationError, InputTypeError
from kdlightning.federated.aggregate import weighted_average
from kdlightning.federated.records import COLLECTION_ROUNDS, STARTS, FederationRecords
from kdlightning.federated.strategy import error_line, server_strategy, strategy_class, strategy_spec
from kdlightning.methods import MultiTeacherKD, StudentOnly
from kdlightning.pipeline import DEFAULTS, NetworkFactory

__all__ = [
    "COLLECTION_ROUNDS",
    "DEFAULT_CONFIG",
    "DEFAULT_CONSOLIDATION",
    "STARTS",
    "ConsolidationFactory",
    "Federation",
    "error_line",
    "load_federation",
]

ConsolidationFactory = Callable[[nn.Module, Sequence[nn.Module], int], MultiTeacherKD]
"""Builds the consolidation from ``(student, teachers, num_classes, weights=...)``.

In YAML a ``class_path`` with the method's other arguments, e.g. ``{class_path: kdlightning.MultiTeacherKD,
init_args: {temperature: 4.0, alpha: 1.0}}``.
"""

DEFAULT_CONSOLIDATION: ConsolidationFactory = functools.partial(MultiTeacherKD, temperature=4.0, alpha=1.0)
"""The consolidation when none is given: :class:`~kdlightning.MultiTeacherKD`, temperature 4, alpha 1 (no labels)."""

Clients = Sequence[tuple[dict[str, Tensor], int]]
"""The clients' pre-trained models as ``(state, training examples)``, in client order."""


class Federation(FederationRecords):
    """FedAvg from fresh, averaged, KD-consolidated and best-client starts: build it, then run it (``kdl federate``).

    Args:
        network: builds the global model (and every client's model unless ``client_networks``).
        client_networks: the clients' architectures, assigned in turn (client ``k`` gets
            ``client_networks[k % len]``); different architectures rule out the ``average`` start, and
            ``best_client`` chooses among the clients of the global architecture only.
        dataset: the data set (the bundled digits by default).
        partitioner: how the training pool is split across clients (Dirichlet alpha 0.5 by default).
        num_clients: number of clients ``K``.
        public_fraction: share of the training pool held out before partitioning as the server's
            transfer set, owned by no client.
        val_fraction: share of each client's data held out for validation.
        batch_size: samples per batch.
        seed: seed of the partition, the initialisations and the training.
        pretrain_epochs: epochs of each client's pre-training on its own data.
        consolidation_epochs: epochs of the multi-teacher distillation on the transfer set.
        consolidation: builds the distillation, called as ``consolidation(student, teachers, num_classes,
            weights=...)``; None for :data:`DEFAULT_CONSOLIDATION` (temperature 4, alpha 1: the labels of
            the transfer set are not used). It is built once with the experiment, from fresh networks, so bad values
            fail before any client trains.
        weight_by_size: weight each teacher by its client's training examples (else equally).
        rounds: FedAvg rounds run from each start.
        local_epochs: epochs each client trains per round.
        fraction_train: share of clients sampled each round.
        target_accuracy: a test accuracy to reach; None to use ``target_fractions`` instead.
        target_fractions: targets as fractions of the best test accuracy the ``fresh`` start reaches in
            ``rounds`` rounds (each in (0, 1]); used when ``target_accuracy`` is None.
        starts: which starts to run, from ``fresh``, ``average``, ``consolidated``, ``best_client``.
        cpus_per_client: CPU cores Flower's simulation gives each client (clients run in parallel
            as the machine's cores allow).
        trainer: ``lightning.Trainer`` settings of every fit (pre-training, local rounds, consolidation,
            evaluation), e.g. ``{precision: bf16-mixed}``; on top of the federation's own defaults
            (``accelerator: cpu``, ``limit_val_batches: 0``).
        out: directory of the results, the clients' pre-trained models and the teacher cache.
        strategy: the server's Flower strategy, ``{class_path: ..., init_args: {...}}``; None for ``FedAvg``. A
            class name alone is one of ``flwr.serverapp.strategy`` (``FedProx``, ``FedAdam``, ...). The federation
            sets the sampling (``fraction_train``, ``min_*_nodes``) itself; ``FedProx``'s ``proximal_mu`` (``>= 0``)
            adds its proximal term to every client's local training. Built once when the federation is built, so a
            bad class path or argument fails before any client trains. On the command line:
            ``--strategy.class_path=FedProx --strategy.proximal_mu=0.1``.
        progress: show a progress bar over starts x rounds (only on a terminal).
        logger: log each start's test accuracy and loss per round to Weights & Biases: True, or the
            ``lightning.pytorch.loggers.WandbLogger`` arguments (``project``, ``group``, ``mode``, ...). One run per
            start, named after it and grouped by the experiment (``out``'s name unless ``group`` is given).
    """

    def __init__(
        self,
        network: NetworkFactory,
        client_networks: list[NetworkFactory] | None = None,
        dataset: DatasetSource | None = None,
        partitioner: Partitioner | None = None,
        num_clients: int = 10,
        public_fraction: float = 0.1,
        val_fraction: float = 0.1,
        batch_size: int = 32,
        seed: int = 0,
        pretrain_epochs: int = 20,
        consolidation_epochs: int = 20,
        consolidation: ConsolidationFactory | None = None,
        weight_by_size: bool = True,
        rounds: int = 20,
        local_epochs: int = 1,
        fraction_train: float = 1.0,
        target_accuracy: float | None = None,
        target_fractions: Sequence[float] = (0.95, 0.98, 0.99),
        starts: Sequence[str] = STARTS,
        cpus_per_client: float = 1.0,
        trainer: dict[str, Any] | None = None,
        out: str = "runs/federated",
        strategy: dict[str, Any] | None = None,
        progress: bool = True,
        logger: bool | dict[str, Any] = False,
    ) -> None:
        if num_clients < 2:
            raise ConfigurationError(f"`num_clients` must be >= 2 (FedAvg needs two clients), got {num_clients!r}.")
        for name, value in (
            ("pretrain_epochs", pretrain_epochs),
            ("consolidation_epochs", consolidation_epochs),
            ("rounds", rounds),
            ("local_epochs", local_epochs),
        ):
            if value < 1:
                raise ConfigurationError(f"`{name}` must be >= 1, got {value!r}.")
        if not 0.0 < public_fraction < 1.0:
            raise ConfigurationError(
                f"`public_fraction` must lie in (0, 1): the server's transfer set, got {public_fraction!r}."
            )
        if not 0.0 < fraction_train <= 1.0:
            raise ConfigurationError(f"`fraction_train` must lie in (0, 1], got {fraction_train!r}.")
        if target_accuracy is not None and not 0.0 < target_accuracy <= 1.0:
            raise ConfigurationError(f"`target_accuracy` must lie in (0, 1] or be None, got {target_accuracy!r}.")
        if not target_fractions or not all(0.0 < f <= 1.0 for f in target_fractions):
            raise ConfigurationError(
                f"`target_fractions` must be a non-empty list of numbers in (0, 1], got {target_fractions!r}."
            )
        unknown = [s for s in starts if s not in STARTS]
        if unknown or not starts:
            raise ConfigurationError(f"`starts` must be a non-empty list of {list(STARTS)}, got {list(starts)}.")
        if client_networks is not None and not client_networks:
            raise ConfigurationError("`client_networks` is empty: give at least one factory, or None for `network`.")
        self.network, self.client_networks = network, client_networks
        self.dataset = dataset if dataset is not None else Digits()
        self.partitioner = partitioner if partitioner is not None else DirichletPartitioner(alpha=0.5)
        self.num_clients, self.public_fraction, self.val_fraction = num_clients, public_fraction, val_fraction
        self.batch_size, self.seed = batch_size, seed
        self.pretrain_epochs, self.consolidation_epochs = pretrain_epochs, consolidation_epochs
        self.consolidation = consolidation if consolidation is not None else DEFAULT_CONSOLIDATION
        self.weight_by_size = weight_by_size
        self.rounds, self.local_epochs, self.fraction_train = rounds, local_epochs, fraction_train
        self.target_accuracy = target_accuracy
        self.target_fractions = [float(f) for f in target_fractions]
        self.starts = list(dict.fromkeys(starts))
        self.cpus_per_client = cpus_per_client
        self.trainer = pipeline.check_trainer(trainer)
        self.out = Path(out)
        self.strategy = strategy_spec(strategy)
        self.server_strategy()  # a bad class path or argument fails now, before any client trains
        if logger is not False and importlib.util.find_spec("wandb") is None:
            raise ConfigurationError("`logger` needs `wandb` (pip install wandb), or `logger: false`.")
        self.progress, self.logger = progress, logger
        # An impossible partition fails now, not after the pre-training of other clients.
        server = self.datamodule(None)
        server.setup()
        self.num_classes = server.num_classes
        if "average" in self.starts and not self._one_architecture():
            warnings.warn(
                "The clients' architectures differ from the global network's: the `average` start is left out.",
                stacklevel=2,
            )
            self.starts.remove("average")
            if not self.starts:
                raise ConfigurationError(
                    "`starts` has only `average`, which needs every client to have the global architecture."
                )
        if "best_client" in self.starts and not any(self._global_architecture(k) for k in range(self._architectures())):
            warnings.warn(
                "No client has the global network's architecture: the `best_client` start is left out.", stacklevel=2
            )
            self.starts.remove("best_client")
            if not self.starts:
                raise ConfigurationError(
                    "`starts` has only `best_client`, which needs a client of the global architecture."
                )
        if "consolidated" in self.starts:  # its values fail now, not after the pre-training of every client
            with torch.random.fork_rng():
                teachers = [self.client_network(k) for k in range(self._architectures())]
                self._distillation(self.network(self.num_classes), teachers, [1.0] * len(teachers))

    def _one_architecture(self) -> bool:
        """Whether every client's network has the global network's parameters (names and shapes)."""
        reference = {k: v.shape for k, v in self.global_network().state_dict().items()}
        return all(
            {k: v.shape for k, v in self.client_network(client).state_dict().items()} == reference
            for client in range(self._architectures())
        )

    def _global_architecture(self, client: int) -> bool:
        """Whether client ``client``'s network has the global network's parameters (names and shapes)."""
        with torch.random.fork_rng():
            return _shapes(self.client_network(client)) == _shapes(self.global_network())

    def _architectures(self) -> int:
        """How many clients it takes to meet every client architecture (client ``k`` has architecture ``k % len``)."""
        return min(self.num_clients, len(self.client_networks or [None]))

    # ------------------------------------------------------------------ data and networks
    def datamodule(self, client: int | None) -> PartitionedDataModule:
        """Client ``client``'s data, or (``None``) the server's: the public transfer set and the global test set."""
        return PartitionedDataModule(
            dataset=self.dataset,
            partitioner=self.partitioner,
            num_parties=self.num_clients,
            partition_id=0 if client is None else client,
            transfer="public" if client is None else "own",
            public_fraction=self.public_fraction,
            val_fraction=self.val_fraction,
            batch_size=self.batch_size,
            seed=self.seed,
        )

    def client_network(self, client: int) -> nn.Module:
        """A fresh network of client ``client``'s architecture."""
        factories = self.client_networks or [self.network]
        return factories[client % len(factories)](self.num_classes)

    def global_network(self) -> nn.Module:
        """A fresh global network, initialised by ``seed`` (the ``fresh`` start)."""
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            return self.network(self.num_classes)

    def _trainer(self, epochs: int, callbacks: Sequence[L.Callback] = ()) -> L.Trainer:
        # Simulated clients get no GPU from Flower (see apps.run_simulation): CPU unless `trainer` says otherwise.
        return pipeline.trainer(epochs, callbacks, self.trainer, accelerator="cpu", limit_val_batches=0)

    def _key(self, *parts: Any) -> str:
        key = [repr(type(self.dataset)), vars(self.dataset), str(self.partitioner), self.num_clients]
        key += [self.public_fraction, self.val_fraction, self.batch_size, self.seed]
        return pipeline.digest(*key, *parts)

    # ------------------------------------------------------------------ the clients' side
    def pretrained_client(self, client: int) -> tuple[dict[str, Tensor], int]:
        """Client ``client``'s model pre-trained on its own data (trained once, cached), and its training examples."""
        self._check_client(client)
        data = self.datamodule(client)
        data.setup()
        L.seed_everything(self.seed * 1000 + client, verbose=False)
        network, common = self.initial_client_network(client), self._global_architecture(client)
        key = self._key(client, self.pretrain_epochs, repr(network), "common-init" if common else "own-init")
        path = self.out / "clients" / f"client{client}-{key}.pt"

        def pretrain(network: nn.Module) -> None:
            self._trainer(self.pretrain_epochs).fit(StudentOnly(network, self.num_classes), datamodule=data)

        return _cpu_state(pipeline.pretrain_once(path, network, pretrain)), len(data.train_set)

    def initial_client_network(self, client: int) -> nn.Module:
        """The network client ``client``'s pre-training starts from.

        A client of the global architecture starts from the global network's initialisation
        (:meth:`global_network`, by ``seed``): one initialisation common to all such clients, as in FedAvg, so that
        the ``average`` start averages aligned units. A client of another architecture has its own (drawn from
        the global random state, which :meth:`pretrained_client` seeds per client).
        """
        network = self.client_network(client)
        if self._global_architecture(client):
            network.load_state_dict(self.global_network().state_dict())
        return network

    def train_client(
        self, client: int, state: dict[str, Tensor], server_round: int, callbacks: Sequence[L.Callback] = ()
    ) -> tuple[dict[str, Tensor], int, float]:
        """One FedAvg round on client ``client``: ``local_epochs`` from the global ``state``.

        The client's batches come in the round's own order (:meth:`train_loader`); ``callbacks`` join the fit
        (e.g. FedProx's proximal term).

        Returns the trained state, the client's training examples (FedAvg's weight) and its last
        training loss.
        """
        self._check_client(client)
        data = self.datamodule(client)
        data.setup()
        L.seed_everything(self.seed * 1_000_003 + server_round * 1009 + client, verbose=False)
        network = self.global_network()
        network.load_state_dict(state)
        trainer = self._trainer(self.local_epochs, callbacks)
        loader = self.train_loader(client, server_round, data)
        trainer.fit(StudentOnly(network, self.num_classes), loader, data.val_dataloader())
        loss = trainer.callback_metrics.get("train/loss")
        return _cpu_state(network), len(data.train_set), float(loss) if loss is not None else math.nan

    def train_loader(self, client: int, server_round: int, data: PartitionedDataModule | None = None) -> DataLoader:
        """Client ``client``'s training batches in FedAvg round ``server_round`` (``data``: its set-up datamodule).

        The shuffling seed is drawn from ``(seed, server_round, client)``: every round reshuffles the client's
        batches, and a rerun repeats them. The partition and the splits stay those of ``seed``.
        """
        if data is None:
            data = self.datamodule(client)
            data.setup()
        loader = data.train_dataloader()
        if isinstance(loader.sampler, EpochShuffleSampler):
            loader.sampler.seed = int(np.random.SeedSequence([self.seed, server_round, client]).generate_state(1)[0])
        return loader

    def _check_client(self, client: int) -> None:
        if not 0 <= client < self.num_clients:
            raise ConfigurationError(f"Client {client} is not one of the {self.num_clients} clients (`num_clients`).")

    # ------------------------------------------------------------------ the server's side
    def build_starts(self, clients: Clients, names: Sequence[str] | None = None) -> dict[str, dict[str, Tensor]]:
        """The starting points ``names`` (default: ``starts``) from the clients' pre-trained ``(state, examples)``."""
        builders: dict[str, Callable[[Clients], dict[str, Tensor]]] = {
            "fresh": lambda _: self.global_network().state_dict(),
            "average": self.average,
            "consolidated": self.consolidate,
            "best_client": self.best_client,
        }
        return {name: builders[name](clients) for name in (names if names is not None else self.starts)}

    def average(self, clients: Clients) -> dict[str, Tensor]:
        """The clients' parameter average, weighted by their training examples."""
        return weighted_average([state for state, _ in clients], [float(n) for _, n in clients])

    def best_client(self, clients: Clients) -> dict[str, Tensor]:
        """The model of the client most accurate on the server's public split (:meth:`client_accuracies`)."""
        accuracies = self.client_accuracies(clients)
        return clients[max(accuracies, key=accuracies.__getitem__)][0]  # a tie goes to the lowest client

    def client_accuracies(self, clients: Clients) -> dict[int, float]:
        """Accuracy of each client of the global architecture on the server's public split, by client.

        The ``best_client`` start is chosen here, on the public split (held out before partitioning, drawn like
        the test set, owned by no client): never on the test set, which only measures the starts. Each client's
        own validation split would not do: it follows the client's skewed label shares, on which a client that
        knows few classes looks best.
        """
        server = self.datamodule(None)
        server.setup()
        loader = DataLoader(server.train_set, batch_size=self.batch_size)
        accuracies = {}
        for client, (state, _) in enumerate(clients):
            if self._global_architecture(client):
                network = self.global_network()
                network.load_state_dict(state)
                metrics = self._trainer(1).test(StudentOnly(network, self.num_classes), loader, verbose=False)
                accuracies[client] = float(metrics[0]["test/acc"])
        if not accuracies:
            raise ConfigurationError(
                "No client has the global network's architecture: there is no `best_client` start."
            )
        return accuracies

    def consolidate(self, clients: Clients) -> dict[str, Tensor]:
        """Distil the clients' models into a fresh global network on the public transfer set (``consolidation``)."""
        teachers = []
        for client, (state, _) in enumerate(clients):
            teacher = self.client_network(client)
            teacher.load_state_dict(state)
            teachers.append(teacher)
        student = self.global_network()
        model = self._distillation(student, teachers, [float(n) for _, n in clients])
        L.seed_everything(self.seed, verbose=False)
        cache = CacheReferenceOutputs(cache_dir=str(self.out / "cache"))
        self._trainer(self.consolidation_epochs, [cache]).fit(model, datamodule=self.datamodule(None))
        return _cpu_state(student)

    def _distillation(self, student: nn.Module, teachers: list[nn.Module], examples: list[float]) -> MultiTeacherKD:
        """``consolidation`` of ``teachers`` into ``student``, weighted by ``examples`` if ``weight_by_size``."""
        weights = examples if self.weight_by_size else None
        model = self.consolidation(student, teachers, self.num_classes, weights=weights)
        if not isinstance(model, MultiTeacherKD):
            raise InputTypeError(f"`consolidation` must build a MultiTeacherKD, it built a {type(model).__name__}.")
        return model

    def evaluate(self, state: dict[str, Tensor]) -> tuple[float, float]:
        """Test accuracy and loss of the global network with ``state`` on the global test set."""
        network = self.global_network()
        network.load_state_dict(state)
        metrics = self._trainer(1).test(StudentOnly(network, self.num_classes), self.datamodule(None), verbose=False)
        return float(metrics[0]["test/acc"]), float(metrics[0]["test/loss"])

    # ------------------------------------------------------------------ results

    def strategy_class(self) -> type:
        """The class of ``strategy``, checked to be a Flower strategy taking ``strategy``'s ``init_args``."""
        return strategy_class(self.strategy)

    def server_strategy(self) -> Any:
        """A new ``strategy``: its ``init_args``, ``fraction_train`` of the clients sampled, no client evaluation."""
        return server_strategy(self.strategy, self.fraction_train, self.num_clients)


def _shapes(network: nn.Module) -> dict[str, torch.Size]:
    return {key: value.shape for key, value in network.state_dict().items()}


def _cpu_state(network: nn.Module) -> dict[str, Tensor]:
    return {key: value.detach().cpu() for key, value in network.state_dict().items()}


DEFAULT_CONFIG = DEFAULTS / "federated.yaml"
"""The embedded default experiment (digits): what ``kdl federate`` runs with no config."""


def load_federation(args: Sequence[str]) -> Federation:
    """The :class:`Federation` of ``kdl federate``'s arguments (``-c CONFIG``, ``--out DIR``, overrides).

    With no ``-c``, the arguments override the embedded default, :data:`DEFAULT_CONFIG`.
    """
    return pipeline.from_args(Federation, args, "kdl federate", DEFAULT_CONFIG)
