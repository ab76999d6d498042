"""The settings of a federation (:class:`FederationConfig`): what ``kdl federate`` parses, checked as it is built.

A frozen dataclass: every check here is on the values alone (ranges, names, the strategy's form), so building one
is cheap and a bad value is named at once. What needs the data or the networks (the partition, the architectures,
the consolidation's values, the strategy's class) is checked by
:meth:`~kdlightning.federated.federation.Federation.check`.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from kdlightning import pipeline
from kdlightning.data import DatasetSource, Digits, DirichletPartitioner, Partitioner
from kdlightning.errors import ConfigurationError
from kdlightning.federated.aggregate import Targets
from kdlightning.federated.strategy import strategy_spec
from kdlightning.federated.tokens import Tokenization
from kdlightning.methods import MultiTeacherKD
from kdlightning.pipeline import DEFAULTS, NetworkFactory

__all__ = [
    "DEFAULT_CONFIG",
    "DEFAULT_CONSOLIDATION",
    "STARTS",
    "ConsolidationFactory",
    "FederationConfig",
]

STARTS = ("fresh", "average", "consolidated", "best_client")
"""The starting points FedAvg is run from."""

ConsolidationFactory = Callable[[nn.Module, Sequence[nn.Module], int], MultiTeacherKD]
"""Builds the consolidation from ``(student, teachers, num_classes, weights=...)``.

In YAML a ``class_path`` with the method's other arguments, e.g. ``{class_path: kdlightning.MultiTeacherKD,
init_args: {temperature: 4.0, alpha: 1.0}}``.
"""

DEFAULT_CONSOLIDATION: ConsolidationFactory = functools.partial(MultiTeacherKD, temperature=4.0, alpha=1.0)
"""The consolidation when none is given: :class:`~kdlightning.MultiTeacherKD`, temperature 4, alpha 1 (no labels)."""

DEFAULT_CONFIG = DEFAULTS / "federated.yaml"
"""The embedded default experiment (digits): what ``kdl federate`` runs with no config."""


def _default_partitioner() -> Partitioner:
    return DirichletPartitioner(alpha=0.5)


@dataclass(frozen=True)
class FederationConfig:
    """FedAvg from fresh, averaged, KD-consolidated and best-client starts: the settings of ``kdl federate``.

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
            weights=...)``; :data:`DEFAULT_CONSOLIDATION` by default (temperature 4, alpha 1: the labels of the
            transfer set are not used). The federation's check builds it once from fresh networks, so bad values fail
            before any client trains.
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
        tokenizer: on a text data set, the global model's tokenizer (and every client's unless
            ``client_tokenizers``): every datamodule of the federation tokenizes with it or them. Load one with
            :func:`kdlightning.hf.load_tokenizer` (in YAML ``class_path: kdlightning.hf.load_tokenizer``).
        client_tokenizers: one tokenizer per client architecture, in the order of ``client_networks``: a client
            pre-trains reading its architecture's; FedAvg's rounds train the global model, which reads ``tokenizer``.
        max_length: with a tokenizer: truncate each text to this many tokens (None: the tokenizer's maximum).
        optimizer: the optimizer of every fit: each client's pre-training and local rounds, and the consolidation
            (replacing its own), e.g. ``functools.partial(torch.optim.AdamW, lr=5e-5)`` to fine-tune pre-trained
            transformers (in YAML ``class_path: torch.optim.AdamW`` with ``init_args: {lr: 5.0e-5}``). None:
            Adam with lr 1e-3 and the consolidation's own. Recorded in ``federation.json``; the clients'
            files key by it.
        trainer: ``lightning.Trainer`` settings of every fit (pre-training, local rounds, consolidation,
            evaluation), e.g. ``{precision: bf16-mixed}``; on top of the federation's own defaults
            (``accelerator: cpu``, ``limit_val_batches: 0``).
        out: directory of the results, the clients' pre-trained models and the teacher cache.
        strategy: the server's Flower strategy, ``{class_path: ..., init_args: {...}}``; None for ``FedAvg``. A
            class name alone is one of ``flwr.serverapp.strategy`` (``FedProx``, ``FedAdam``, ...). The federation
            sets the sampling (``fraction_train``, ``min_*_nodes``) itself; ``FedProx``'s ``proximal_mu`` (``>= 0``)
            adds its proximal term to every client's local training. The federation's check builds it once, so a
            bad class path or argument fails before any client trains. On the command line:
            ``--strategy.class_path=FedProx --strategy.proximal_mu=0.1``.
        progress: show a progress bar over starts x rounds (only on a terminal).
        logger: log each start's test accuracy and loss per round to Weights & Biases: True, or the
            ``lightning.pytorch.loggers.WandbLogger`` arguments (``project``, ``group``, ``mode``, ...). One run per
            start, named after it and grouped by the experiment (``out``'s name unless ``group`` is given).

    Once built, ``client_networks``, ``client_tokenizers``, ``target_fractions`` and ``starts`` are tuples
    (``starts`` without repeats), ``trainer`` is the checked settings (``{}`` for none), ``out`` a ``Path`` and
    ``strategy`` the full ``{"class_path": "<module>.<Class>", "init_args": {...}}``.

    Examples:
        ``Federation(FederationConfig(network=MLP, rounds=20, out="runs/federated/mine")).check()``.
    """

    network: NetworkFactory
    client_networks: Sequence[NetworkFactory] | None = None
    dataset: DatasetSource = field(default_factory=Digits)
    partitioner: Partitioner = field(default_factory=_default_partitioner)
    num_clients: int = 10
    public_fraction: float = 0.1
    val_fraction: float = 0.1
    batch_size: int = 32
    seed: int = 0
    pretrain_epochs: int = 20
    consolidation_epochs: int = 20
    consolidation: ConsolidationFactory = DEFAULT_CONSOLIDATION
    weight_by_size: bool = True
    rounds: int = 20
    local_epochs: int = 1
    fraction_train: float = 1.0
    target_accuracy: float | None = None
    target_fractions: Sequence[float] = (0.95, 0.98, 0.99)
    starts: Sequence[str] = STARTS
    cpus_per_client: float = 1.0
    tokenizer: Any = None
    client_tokenizers: Sequence[Any] | None = None
    max_length: int | None = 128
    optimizer: OptimizerCallable | None = None
    trainer: dict[str, Any] | None = None
    out: Path = Path("runs/federated")
    strategy: dict[str, Any] | None = None
    progress: bool = True
    logger: bool | dict[str, Any] = False

    def __post_init__(self) -> None:
        if self.num_clients < 2:
            raise ConfigurationError(
                f"`num_clients` must be >= 2 (FedAvg needs two clients), got {self.num_clients!r}."
            )
        for name in ("pretrain_epochs", "consolidation_epochs", "rounds", "local_epochs"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"`{name}` must be >= 1, got {getattr(self, name)!r}.")
        if not 0.0 < self.public_fraction < 1.0:
            raise ConfigurationError(
                f"`public_fraction` must lie in (0, 1): the server's transfer set, got {self.public_fraction!r}."
            )
        if not 0.0 < self.fraction_train <= 1.0:
            raise ConfigurationError(f"`fraction_train` must lie in (0, 1], got {self.fraction_train!r}.")
        if self.target_accuracy is not None and not 0.0 < self.target_accuracy <= 1.0:
            raise ConfigurationError(f"`target_accuracy` must lie in (0, 1] or be None, got {self.target_accuracy!r}.")
        if not self.target_fractions or not all(0.0 < f <= 1.0 for f in self.target_fractions):
            raise ConfigurationError(
                f"`target_fractions` must be a non-empty list of numbers in (0, 1], got {self.target_fractions!r}."
            )
        unknown = [s for s in self.starts if s not in STARTS]
        if unknown or not self.starts:
            raise ConfigurationError(f"`starts` must be a non-empty list of {list(STARTS)}, got {list(self.starts)}.")
        if self.client_networks is not None and not self.client_networks:
            raise ConfigurationError("`client_networks` is empty: give at least one factory, or None for `network`.")
        architectures = len(self.client_networks or [self.network])
        if self.client_tokenizers is not None and len(self.client_tokenizers) != architectures:
            raise ConfigurationError(
                f"`client_tokenizers` must give one tokenizer per client architecture ({architectures} in "
                f"`client_networks`), got {len(self.client_tokenizers)}."
            )
        self.tokenization  # noqa: B018 - built now: its values are checked, named
        normalized = {
            "client_networks": None if self.client_networks is None else tuple(self.client_networks),
            "client_tokenizers": None if self.client_tokenizers is None else tuple(self.client_tokenizers),
            "target_fractions": tuple(float(f) for f in self.target_fractions),
            "starts": tuple(dict.fromkeys(self.starts)),
            "trainer": pipeline.check_trainer(self.trainer),
            "out": Path(self.out),
            "strategy": strategy_spec(self.strategy),
        }
        if self.logger is not False and importlib.util.find_spec("wandb") is None:
            raise ConfigurationError("`logger` needs `wandb` (pip install wandb), or `logger: false`.")
        for name, value in normalized.items():
            object.__setattr__(self, name, value)  # a frozen dataclass sets its own fields this way

    @functools.cached_property
    def tokenization(self) -> Tokenization:
        """How the networks read text: the global model's tokenizer and each client architecture's (built once)."""
        return Tokenization(self.tokenizer, self.client_tokenizers, self.max_length)

    @property
    def targets(self) -> Targets:
        """The target accuracies the rounds are counted to: ``target_accuracy``, or ``target_fractions``."""
        return Targets(self.target_accuracy, tuple(self.target_fractions))
