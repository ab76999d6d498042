"""How a federation's networks read text (:class:`Tokenization`): the global model's tokenizer and each client's.

Client ``k`` has architecture ``k % len(client_networks)`` and reads its text with that architecture's tokenizer
while it pre-trains; in FedAvg's rounds every client trains the global model, which reads the global tokenizer.
The consolidation distils the clients' models (``teacher_k``, each with its own tokenizer) into the global one on
the server's public text. On numeric data every method here returns None: the loaders' own collate.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from kdlightning.data import DatasetSource, TokenizeCollate
from kdlightning.errors import ConfigurationError
from kdlightning.federated.networks import Networks
from kdlightning.hf import check_readable

__all__ = ["Tokenization"]


class Tokenization:
    """The tokenizations of a federation's datamodules.

    Args:
        tokenizer: the global model's tokenizer (and every client's unless ``client_tokenizers``); None for numeric
            data.
        client_tokenizers: one tokenizer per client architecture, in the order of ``client_networks``.
        max_length: truncate each text to this many tokens (None: the tokenizer's maximum).

    Raises:
        ConfigurationError: ``client_tokenizers`` without ``tokenizer``, or empty.
        InputTypeError: a tokenizer given as a path (see :class:`~kdlightning.data.TokenizeCollate`).
    """

    def __init__(self, tokenizer: Any, client_tokenizers: Sequence[Any] | None, max_length: int | None) -> None:
        if tokenizer is None and client_tokenizers is not None:
            raise ConfigurationError(
                "`client_tokenizers` is set but `tokenizer` is not: give the global model's `tokenizer` too."
            )
        if client_tokenizers is not None and not client_tokenizers:
            raise ConfigurationError("`client_tokenizers` is empty: give one per client architecture, or None.")
        self.tokenizer = tokenizer
        self.client_tokenizers = tuple(client_tokenizers) if client_tokenizers is not None else (tokenizer,)
        self.max_length = max_length
        self._client_argument = "tokenizer" if client_tokenizers is None else "client_tokenizers"
        # Built once (a path or a bad length fails now): each serialises its tokenizer's rules.
        self._global = TokenizeCollate(tokenizer, max_length) if tokenizer is not None else None
        self._clients = [TokenizeCollate(each, max_length) for each in self.client_tokenizers] if self.text else []

    def check_data(self, dataset: DatasetSource) -> None:
        """Refuse text without a tokenizer, or a tokenizer on numeric data (reads ``dataset``).

        Raises:
            ConfigurationError: naming ``tokenizer``.
        """
        text = dataset.data().is_text
        if text and not self.text:
            raise ConfigurationError(
                f"`dataset` {type(dataset).__name__} holds text, which the networks read as token ids: give "
                "`tokenizer` (the global model's; `client_tokenizers` for clients of other architectures), in YAML "
                "`class_path: kdlightning.hf.load_tokenizer` with `init_args: {path: <model directory>}`."
            )
        if self.text and not text:
            raise ConfigurationError(
                f"`tokenizer` is set but `dataset` {type(dataset).__name__} holds numeric inputs, not text: drop "
                "`tokenizer` and `client_tokenizers`."
            )

    def check_networks(self, networks: Networks) -> None:
        """Refuse a tokenizer whose token ids or lengths its network cannot read (``hf.check_readable``).

        Raises:
            ConfigurationError: naming ``tokenizer``, ``client_tokenizers`` or ``max_length``.
        """
        if not self.text:
            return
        argument = self._client_argument
        with torch.random.fork_rng():  # building networks draws initial weights
            check_readable(networks.global_network(), self.tokenizer, self.max_length, "global network", "tokenizer")
            for client in range(networks.architectures):
                network = networks.client_network(client)
                check_readable(network, self.client_tokenizer(client), self.max_length, f"client {client}", argument)

    @property
    def text(self) -> bool:
        """Whether the networks read text (a tokenizer is set)."""
        return self.tokenizer is not None

    def client_tokenizer(self, client: int) -> Any:
        """The tokenizer of client ``client``'s architecture."""
        return self.client_tokenizers[client % len(self.client_tokenizers)]

    def global_network(self) -> TokenizeCollate | None:
        """The global model's inputs (FedAvg's rounds, the tests, the best client's choice)."""
        return self._global

    def client(self, client: int) -> TokenizeCollate | None:
        """Client ``client``'s own network's inputs (its pre-training and its accuracy on the public split)."""
        return self._clients[client % len(self._clients)] if self.text else None

    def consolidation(self, clients: int | Sequence[int | None], student: int | None = None) -> TokenizeCollate | None:
        """The student's inputs, and each teacher's as ``teacher_<i>``: the i-th of ``clients``' models.

        ``clients``: the teachers' clients in order (a count ``K``: clients ``0 .. K-1``); a client None has the
        global network's inputs. ``student``: the client whose architecture the student has, None for the global
        network.
        """
        if not self.text:
            return None
        teachers = range(clients) if isinstance(clients, int) else clients
        roles = {"student": self.tokenizer if student is None else self.client_tokenizer(student)}
        for i, client in enumerate(teachers):
            roles[f"teacher_{i}"] = self.tokenizer if client is None else self.client_tokenizer(client)
        return TokenizeCollate(roles, self.max_length)

    def fingerprint(self) -> str | None:
        """What the networks' inputs depend on (each tokenizer and ``max_length``); None for numeric data."""
        if not self.text:
            return None
        roles = {"student": self.tokenizer, **{f"client_{k}": t for k, t in enumerate(self.client_tokenizers)}}
        return TokenizeCollate(roles, self.max_length).fingerprint()
