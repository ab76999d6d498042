"""Tokenization per network: text samples become the keyword inputs of each network.

Teacher and student may use different tokenizers (different vocabularies, casing, lengths). The
collate tokenizes a batch's texts once per distinct tokenizer, padded to the longest text of the
batch (dynamic padding), and lays the result out as :class:`~kdlightning.methods.DistillationModule`
reads it (see :data:`~kdlightning.methods.base.Batch`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["TokenizeCollate"]


class TokenizeCollate:
    """Collate ``(text, label)`` or ``(text, label, pool_index)`` samples into tokenized dict batches.

    With one tokenizer (or several roles sharing one) a batch is the tokenizer's outputs plus labels::

        {"input_ids": (N, L), "attention_mask": (N, L), ..., "labels": (N,), "index": (N,)}

    With different tokenizers, one input dict per network role::

        {"student": {"input_ids": (N, L_s), ...}, "teacher": {"input_ids": (N, L_t), ...},
         "labels": (N,), "index": (N,)}

    Networks without their own entry (DP-KD's ``initial_student``, a DML ``peer`` not listed) read
    the student's inputs. ``"index"`` (the sample's pool index, present for training batches) keys
    the teacher-output cache.

    Args:
        tokenizers: one tokenizer (or its path / hub id) for every network, or a dict from network
            role (``"student"``, ``"teacher"``, ``"peer"``) to a tokenizer or its path / hub id. Paths
            are loaded with :func:`kdlightning.hf.load_tokenizer` on first use (or by :meth:`load`),
            never in the constructor.
        max_length: truncate each text to this many tokens; None for the tokenizer's own maximum.

    Raises:
        ValueError: an empty dict, roles with different tokenizers but no ``"student"`` among them, or
            ``max_length < 1``.
    """

    def __init__(self, tokenizers: Any | Mapping[str, Any], max_length: int | None = 128) -> None:
        if max_length is not None and max_length < 1:
            raise ValueError(f"`max_length` must be >= 1 or None, got {max_length!r}.")
        roles = dict(tokenizers) if isinstance(tokenizers, Mapping) else {"student": tokenizers}
        if not roles:
            raise ValueError("`tokenizers` is empty; give one tokenizer, or a dict from network role to tokenizer.")
        if len({_identity(t) for t in roles.values()}) > 1 and "student" not in roles:
            raise ValueError(
                f"`tokenizers` has different tokenizers for {sorted(roles)} but none for 'student'; networks without "
                "their own tokenizer read the student's inputs, so 'student' must be one of the roles."
            )
        self.tokenizers = roles
        self.max_length = max_length

    @property
    def shared(self) -> bool:
        """True when one tokenizer serves every network (batches are then a single dict of inputs)."""
        return len({_identity(t) for t in self.tokenizers.values()}) == 1

    def load(self) -> TokenizeCollate:
        """Load the tokenizers given as paths or hub ids (idempotent); returns ``self``."""
        paths = sorted({t for t in self.tokenizers.values() if isinstance(t, str)})
        if paths:
            from kdlightning.hf import load_tokenizer

            loaded = {path: load_tokenizer(path) for path in paths}
            self.tokenizers = {role: loaded[t] if isinstance(t, str) else t for role, t in self.tokenizers.items()}
        return self

    def encode(self, tokenizer: Any, texts: Sequence[str]) -> dict[str, Tensor]:
        """One tokenizer's padded inputs ``(N, L)`` for ``texts`` (L: the longest, at most ``max_length``)."""
        encoding = tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return dict(encoding)

    def __call__(self, samples: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
        """Tokenize a list of samples into one batch (see the class docstring for its layout)."""
        self.load()
        texts, labels, *rest = zip(*samples, strict=True)
        if not all(isinstance(text, str) for text in texts):
            raise TypeError(
                f"TokenizeCollate expects text inputs, got {type(texts[0]).__name__}; drop `tokenizers` for "
                "non-text data."
            )
        encoded: dict[int, dict[str, Tensor]] = {}
        for tokenizer in self.tokenizers.values():
            if id(tokenizer) not in encoded:
                encoded[id(tokenizer)] = self.encode(tokenizer, texts)
        if self.shared:
            batch: dict[str, Any] = dict(next(iter(encoded.values())))
        else:
            batch = {role: encoded[id(tokenizer)] for role, tokenizer in self.tokenizers.items()}
        batch["labels"] = torch.as_tensor([int(y) for y in labels], dtype=torch.long)
        if rest:
            batch["index"] = torch.as_tensor(rest[0], dtype=torch.long)
        return batch

    def fingerprint(self) -> str:
        """SHA-256 of what determines the networks' inputs: each role's tokenizer and ``max_length``."""
        self.load()
        digest = hashlib.sha256(repr(self.max_length).encode())
        for role in sorted(self.tokenizers):
            tokenizer = self.tokenizers[role]
            backend = getattr(tokenizer, "backend_tokenizer", None)
            rules = backend.to_str() if backend is not None else repr(sorted(tokenizer.get_vocab().items()))
            digest.update(f"{role}\0{type(tokenizer).__name__}\0{rules}\0".encode())
        return digest.hexdigest()

    def __repr__(self) -> str:
        names = {role: getattr(t, "name_or_path", t) for role, t in self.tokenizers.items()}
        return f"{type(self).__name__}(tokenizers={names!r}, max_length={self.max_length!r})"


def _identity(tokenizer: Any) -> Any:
    """Two roles share a tokenizer when they name the same path or hold the same object."""
    return tokenizer if isinstance(tokenizer, str) else id(tokenizer)
