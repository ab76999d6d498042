"""The federated experiment behind ``kdl federate``: FedAvg on Flower from up to four starting points.

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

A :class:`Federation` holds its :class:`~kdlightning.federated.config.FederationConfig` and, once
:meth:`Federation.check` has run, its collaborators: the :class:`~kdlightning.federated.networks.Networks` and the
:class:`~kdlightning.federated.records.FederationRecords`. It imports no Flower: the Flower apps that run it, the
server loop and the simulation are :mod:`kdlightning.federated.apps`: ``kdl federate`` runs them in Flower's
simulation on one machine; ``flwr run`` runs the same apps on real SuperNodes.
"""

from __future__ import annotations

import math
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping
from torch import Tensor, nn
from torch.utils.data import DataLoader

from kdlightning import pipeline
from kdlightning.cache import CacheReferenceOutputs
from kdlightning.callbacks import RestoreBest
from kdlightning.data import EpochShuffleSampler, PartitionedDataModule, TokenizeCollate
from kdlightning.errors import ConfigurationError, InputTypeError, RunError
from kdlightning.federated.aggregate import weighted_average
from kdlightning.federated.config import DEFAULT_CONFIG, FederationConfig
from kdlightning.federated.networks import Networks
from kdlightning.federated.records import FederationRecords, federation_record
from kdlightning.federated.server_distillation import ServerDistillation
from kdlightning.federated.strategy import server_strategy, strategy_class, strategy_name
from kdlightning.methods import MultiTeacherKD, StudentOnly

__all__ = ["Clients", "Federation", "load_federation"]

Clients = Sequence[tuple[dict[str, Tensor], int]]
"""The clients' pre-trained models as ``(state, training examples)``, in client order."""


@dataclass(frozen=True)
class _Checked:
    """What :meth:`Federation.check` found: the networks, the starts that can run, the records."""

    networks: Networks
    starts: list[str]
    records: FederationRecords


class Federation:
    """FedAvg from fresh, averaged, KD-consolidated and best-client starts: build it, check it, run it.

    Building one only keeps ``config`` (already checked value by value). :meth:`check` does the expensive early
    checks, before any client trains; :func:`~kdlightning.federated.apps.run` (``kdl federate``) and the Flower apps
    call it first. Everything that needs the data's class count (the networks, the starts, the records) is there once
    it has run.

    Args:
        config: the federation's settings.

    Examples:
        ``federation = Federation(FederationConfig(network=MLP, rounds=20)); federation.check(); run(federation)``.
    """

    def __init__(self, config: FederationConfig) -> None:
        if not isinstance(config, FederationConfig):
            raise InputTypeError(f"`config` must be a FederationConfig, got a {type(config).__name__}.")
        self.config = config
        self._checked: _Checked | None = None

    def check(self) -> None:
        """Fail now, before any client trains, on what the settings alone cannot tell (once; later calls return).

        Builds the strategy (its class and arguments), splits the data (an impossible partition), builds every
        architecture (leaving out, with a warning, ``average`` unless every client has the global architecture and
        ``best_client`` unless one has) and the consolidation from fresh networks (its values).

        Raises:
            ConfigurationError: naming the setting at fault.
            InputTypeError: ``consolidation`` builds something other than a ``MultiTeacherKD``.
        """
        if self._checked is not None:
            return
        config = self.config
        self.server_strategy()
        tokens = config.tokenization
        tokens.check_data(config.dataset)
        server = self.datamodule(None, tokens.global_network())
        server.setup()
        networks = Networks(config.network, config.client_networks, config.num_clients, server.num_classes, config.seed)
        tokens.check_networks(networks)
        starts = list(config.starts)
        if "average" in starts and not networks.one_architecture():
            warnings.warn(
                "The clients' architectures differ from the global network's: the `average` start is left out.",
                stacklevel=2,
            )
            starts.remove("average")
            if not starts:
                raise ConfigurationError(
                    "`starts` has only `average`, which needs every client to have the global architecture."
                )
        if "best_client" in starts and not any(map(networks.has_global_architecture, range(networks.architectures))):
            warnings.warn(
                "No client has the global network's architecture: the `best_client` start is left out.", stacklevel=2
            )
            starts.remove("best_client")
            if not starts:
                raise ConfigurationError(
                    "`starts` has only `best_client`, which needs a client of the global architecture."
                )
        if "consolidated" in starts:
            with torch.random.fork_rng():
                teachers = [networks.client_network(k) for k in range(networks.architectures)]
                self._distillation(networks.global_network(), networks.num_classes, teachers, [1.0] * len(teachers))
        records = FederationRecords(
            out=config.out,
            starts=starts,
            rounds=config.rounds,
            targets=config.targets,
            dataset=type(config.dataset).__name__,
            num_clients=config.num_clients,
            partitioner=str(config.partitioner),
            local_epochs=config.local_epochs,
            seed=config.seed,
            strategy=strategy_name(config.strategy),
        )
        self._checked = _Checked(networks, starts, records)

    @property
    def checked(self) -> bool:
        """Whether :meth:`check` has run."""
        return self._checked is not None

    def _found(self) -> _Checked:
        if self._checked is None:
            raise RunError("The federation has not been checked: call `Federation.check()` first.")
        return self._checked

    @property
    def networks(self) -> Networks:
        """The global and the clients' networks (after :meth:`check`)."""
        return self._found().networks

    @property
    def starts(self) -> list[str]:
        """The starts that run: ``config.starts`` less those the architectures rule out (after :meth:`check`)."""
        return list(self._found().starts)

    @property
    def records(self) -> FederationRecords:
        """What the federation writes in ``config.out`` (after :meth:`check`)."""
        return self._found().records

    @property
    def num_classes(self) -> int:
        """The data set's class count (after :meth:`check`)."""
        return self.networks.num_classes

    def configuration(self) -> dict[str, Any]:
        """What the rows of ``rounds.csv`` depend on (:func:`~kdlightning.federated.records.federation_record`)."""
        return federation_record(self.config, self.networks.texts())

    def check_resume(self) -> None:
        """Refuse to keep finished starts of another configuration; record this one (``federation.json``)."""
        self.records.check_resume(self.configuration())

    # ------------------------------------------------------------------ data
    def datamodule(
        self, client: int | None, tokens: TokenizeCollate | None = None, holdout_fraction: float = 0.0
    ) -> PartitionedDataModule:
        """Client ``client``'s data, or (``None``) the server's: the public transfer set and the global test set.

        ``tokens``: on text, the tokenization of the networks that read it (see
        :class:`~kdlightning.federated.tokens.Tokenization`). ``holdout_fraction``: a share of the transfer set
        held out as the validation split (the server's, to stop a distillation early).
        """
        config = self.config
        return PartitionedDataModule(
            dataset=config.dataset,
            partitioner=config.partitioner,
            num_parties=config.num_clients,
            partition_id=0 if client is None else client,
            transfer="public" if client is None else "own",
            public_fraction=config.public_fraction,
            val_fraction=config.val_fraction,
            validation="holdout" if holdout_fraction else "own",
            holdout_fraction=holdout_fraction,
            batch_size=config.batch_size,
            seed=config.seed,
            tokenizers=tokens,
        )

    def _trainer(self, epochs: int, callbacks: Sequence[L.Callback] = (), validate: bool = False) -> L.Trainer:
        # Simulated clients get no GPU from Flower (see apps.run_simulation): CPU unless `trainer` says otherwise.
        validation: dict[str, Any] = {"num_sanity_val_steps": 0} if validate else {"limit_val_batches": 0}
        return pipeline.trainer(epochs, callbacks, self.config.trainer, accelerator="cpu", **validation)

    def _key(self, *parts: Any) -> str:
        config = self.config
        key = [repr(type(config.dataset)), vars(config.dataset), str(config.partitioner), config.num_clients]
        key += [config.public_fraction, config.val_fraction, config.batch_size, config.seed]
        key += [fingerprint] if (fingerprint := config.tokenization.fingerprint()) is not None else []
        key += [pipeline.describe(config.optimizer)] if config.optimizer is not None else []
        return pipeline.digest(*key, *parts)

    # ------------------------------------------------------------------ the clients' side
    def pretrained_client(self, client: int) -> tuple[dict[str, Tensor], int]:
        """Client ``client``'s model pre-trained on its own data (trained once, cached), and its training examples.

        It starts from :meth:`~kdlightning.federated.networks.Networks.initial_client_network`.
        """
        self._check_client(client)
        networks, config = self.networks, self.config
        data = self.datamodule(client, config.tokenization.client(client))
        data.setup()
        L.seed_everything(config.seed * 1000 + client, verbose=False)
        network, common = networks.initial_client_network(client), networks.has_global_architecture(client)
        key = self._key(client, config.pretrain_epochs, repr(network), "common-init" if common else "own-init")
        path = config.out / "clients" / f"client{client}-{key}.pt"

        def pretrain(network: nn.Module) -> None:
            model = pipeline.optimized(StudentOnly(network, networks.num_classes), config.optimizer)
            self._trainer(config.pretrain_epochs).fit(model, datamodule=data)

        return _cpu_state(pipeline.pretrain_once(path, network, pretrain)), _size(data.train_set)

    def train_client(
        self,
        client: int,
        state: dict[str, Tensor],
        server_round: int,
        callbacks: Sequence[L.Callback] = (),
        own_architecture: bool = False,
    ) -> tuple[dict[str, Tensor], int, float]:
        """One FedAvg round on client ``client``: ``local_epochs`` from the global ``state``.

        The client's batches come in the round's own order (:meth:`train_loader`); ``callbacks`` join the fit
        (e.g. FedProx's proximal term). ``own_architecture``: ``state`` is of the client's own network (its
        architecture's prototype under FedDF), which reads the client's own inputs; else of the global network.

        Returns the trained state, the client's training examples (FedAvg's weight) and its last
        training loss.
        """
        self._check_client(client)
        config = self.config
        tokens = config.tokenization.client(client) if own_architecture else config.tokenization.global_network()
        data = self.datamodule(client, tokens)
        data.setup()
        L.seed_everything(config.seed * 1_000_003 + server_round * 1009 + client, verbose=False)
        network = self.networks.client_network(client) if own_architecture else self.networks.global_network()
        network.load_state_dict(state)
        trainer = self._trainer(config.local_epochs, callbacks)
        loader = self.train_loader(client, server_round, data)
        trainer.fit(
            pipeline.optimized(StudentOnly(network, self.num_classes), config.optimizer), loader, data.val_dataloader()
        )
        loss = trainer.callback_metrics.get("train/loss")
        return _cpu_state(network), _size(data.train_set), float(loss) if loss is not None else math.nan

    def train_loader(self, client: int, server_round: int, data: PartitionedDataModule | None = None) -> DataLoader:
        """Client ``client``'s training batches in FedAvg round ``server_round`` (``data``: its set-up datamodule).

        The shuffling seed is drawn from ``(seed, server_round, client)``: every round reshuffles the client's
        batches, and a rerun repeats them. The partition and the splits stay those of ``seed``.
        """
        if data is None:
            data = self.datamodule(client, self.config.tokenization.global_network())
            data.setup()
        loader = data.train_dataloader()
        if isinstance(loader.sampler, EpochShuffleSampler):
            state = np.random.SeedSequence([self.config.seed, server_round, client]).generate_state(1)
            loader.sampler.seed = int(state[0])
        return loader

    def _check_client(self, client: int) -> None:
        if not 0 <= client < self.config.num_clients:
            raise ConfigurationError(
                f"Client {client} is not one of the {self.config.num_clients} clients (`num_clients`)."
            )

    # ------------------------------------------------------------------ the server's side
    def build_starts(self, clients: Clients, names: Sequence[str] | None = None) -> dict[str, dict[str, Tensor]]:
        """The starting points ``names`` (default: :attr:`starts`) from the clients' ``(state, examples)``."""
        builders: dict[str, Callable[[Clients], dict[str, Tensor]]] = {
            "fresh": lambda _: self.networks.global_network().state_dict(),
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
        networks, tokens = self.networks, self.config.tokenization
        server = self.datamodule(None, tokens.global_network())
        server.setup()
        accuracies = {}
        for client, (state, _) in enumerate(clients):
            if networks.has_global_architecture(client):
                network = networks.global_network()
                network.load_state_dict(state)
                collate = tokens.client(client)
                loader = DataLoader(server.train_set, batch_size=self.config.batch_size, collate_fn=collate)
                metrics = self._trainer(1).test(StudentOnly(network, self.num_classes), loader, verbose=False)
                accuracies[client] = float(metrics[0]["test/acc"])
        if not accuracies:
            raise ConfigurationError(
                "No client has the global network's architecture: there is no `best_client` start."
            )
        return accuracies

    def consolidate(self, clients: Clients) -> dict[str, Tensor]:
        """Distil the clients' models into a fresh global network on the public transfer set (``consolidation``)."""
        networks, config = self.networks, self.config
        teachers = []
        for client, (state, _) in enumerate(clients):
            teacher = networks.client_network(client)
            teacher.load_state_dict(state)
            teachers.append(teacher)
        student = networks.global_network()
        weights = [float(n) for _, n in clients] if config.weight_by_size else None
        model = self._distillation(student, networks.num_classes, teachers, weights)
        L.seed_everything(config.seed, verbose=False)
        cache = CacheReferenceOutputs(cache_dir=str(config.out / "cache"))
        data = self.datamodule(None, config.tokenization.consolidation(len(teachers)))
        self._trainer(config.consolidation_epochs, [cache]).fit(model, datamodule=data)
        return _cpu_state(student)

    def distil_round(
        self,
        server_round: int,
        aggregate: dict[str, Tensor],
        teachers: Sequence[tuple[int | None, dict[str, Tensor]]],
        weights: Sequence[float],
        settings: ServerDistillation,
        prototype: int | None = None,
    ) -> dict[str, Tensor]:
        """FedDF's step: distil the round's client models into an aggregate on the public transfer set.

        The network starts from ``aggregate`` and learns, with the ``consolidation`` method
        (:class:`~kdlightning.MultiTeacherKD`, at ``settings.temperature`` if set), the ``weights``-weighted
        average of the teachers' softened predictions for ``settings.epochs`` epochs; with ``settings.patience``,
        it trains on the public split less a held-out share, stops when the distillation loss there stops falling
        and keeps its best weights. Each teacher is its client's network (``(client, state)``; a client of
        unknown id has the global architecture). The network is the global one, or (``prototype``, a client)
        that client's architecture's. The teachers' outputs on the public split are computed once per round and
        reused by every epoch and every prototype of that round (:class:`~kdlightning.cache.CacheReferenceOutputs`
        in ``<out>/cache/rounds/<round>``, the previous round's removed): the teachers change every round.

        Raises:
            FloatingPointError: the distillation's loss turned non-finite (the strategy keeps the aggregate).
        """
        networks, config = self.networks, self.config
        models = []
        for client, state in teachers:
            teacher = networks.global_network() if client is None else networks.client_network(client)
            teacher.load_state_dict(state)
            models.append(teacher)
        student = networks.global_network() if prototype is None else networks.client_network(prototype)
        student.load_state_dict(aggregate)
        model = self._distillation(student, networks.num_classes, models, list(weights), settings.temperature)
        L.seed_everything(config.seed + server_round, verbose=False)
        tokens = config.tokenization.consolidation([client for client, _ in teachers], prototype)
        data = self.datamodule(None, tokens, holdout_fraction=settings.held_out)
        callbacks: list[L.Callback] = [CacheReferenceOutputs(cache_dir=str(self._round_cache(server_round)))]
        if settings.patience is not None:
            callbacks += [EarlyStopping("val/loss_kd", patience=settings.patience), RestoreBest("val/loss_kd")]
        self._trainer(settings.epochs, callbacks, validate=settings.patience is not None).fit(model, datamodule=data)
        return _cpu_state(student)

    def _round_cache(self, server_round: int) -> Path:
        """The teacher-output cache of round ``server_round``'s distillations; other rounds' are removed."""
        rounds = self.config.out / "cache" / "rounds"
        here = rounds / str(server_round)
        if rounds.is_dir():
            for other in rounds.iterdir():
                if other != here:
                    shutil.rmtree(other, ignore_errors=True)
        here.mkdir(parents=True, exist_ok=True)
        return here

    def _distillation(
        self,
        student: nn.Module,
        num_classes: int,
        teachers: list[nn.Module],
        weights: list[float] | None,
        temperature: float | None = None,
    ) -> MultiTeacherKD:
        """``consolidation`` of ``teachers`` into ``student``, their predictions weighted by ``weights`` or equally.

        ``temperature``: in place of the ``consolidation`` method's, if given.
        """
        build: Callable[..., Any] = self.config.consolidation
        given = {} if temperature is None else {"temperature": temperature}
        model = build(student, teachers, num_classes, weights=weights, **given)
        if not isinstance(model, MultiTeacherKD):
            raise InputTypeError(f"`consolidation` must build a MultiTeacherKD, it built a {type(model).__name__}.")
        return pipeline.optimized(model, self.config.optimizer)

    def evaluate(self, state: dict[str, Tensor]) -> tuple[float, float]:
        """Test accuracy and loss of the global network with ``state`` on the global test set."""
        network = self.networks.global_network()
        network.load_state_dict(state)
        data = self.datamodule(None, self.config.tokenization.global_network())
        metrics = self._trainer(1).test(StudentOnly(network, self.num_classes), data, verbose=False)
        return float(metrics[0]["test/acc"]), float(metrics[0]["test/loss"])

    # ------------------------------------------------------------------ the strategy
    def strategy_class(self) -> type:
        """The class of ``config.strategy``, checked to be a Flower strategy taking its ``init_args``."""
        return strategy_class(self.config.strategy)

    def server_strategy(self) -> Any:
        """A new ``config.strategy`` (:func:`~kdlightning.federated.strategy.server_strategy`)."""
        config = self.config
        services = {"distiller": self.distil_round, "architectures": self.networks if self.checked else None}
        return server_strategy(config.strategy, config.fraction_train, config.num_clients, services)


def _cpu_state(network: nn.Module) -> dict[str, Tensor]:
    return {key: value.detach().cpu() for key, value in network.state_dict().items()}


def _size(dataset: Any) -> int:
    """A map-style data set's number of examples."""
    return len(dataset)


def load_federation(args: Sequence[str]) -> Federation:
    """The :class:`Federation` of ``kdl federate``'s arguments (``-c CONFIG``, ``--out DIR``, overrides), unchecked.

    With no ``-c``, the arguments override the embedded default,
    :data:`~kdlightning.federated.config.DEFAULT_CONFIG`. Call :meth:`Federation.check` before running it.
    """
    return Federation(pipeline.from_args(FederationConfig, args, "kdl federate", DEFAULT_CONFIG))
