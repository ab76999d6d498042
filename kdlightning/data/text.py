"""Tokenization per network: text samples become the keyword inputs of each network.

Teacher and student may use different tokenizers (different vocabularies, casing, lengths). The
collate tokenizes a batch's texts once per distinct tokenizer, padded to the longest text of the
batch (dynamic padding), and lays the result out as :class:`~kdlightning.methods.DistillationModule`
reads it (see :data:`~kdlightning.methods.base.Batch`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from os import PathLike
from typing import Any

import torch
from torch import Tensor

from kdlightning.errors import ConfigurationError, InputTypeError

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

    Roles whose tokenizers are the same object, or equal ones (the same type, vocabulary and rules, e.g.
    loaded twice from one directory), share one tokenizer: it tokenizes each batch once.

    Args:
        tokenizers: one tokenizer for every network, or a dict from network role (``"student"``,
            ``"teacher"``, ``"peer"``) to a tokenizer. A tokenizer is an object called like a Hugging Face
            tokenizer; load one by path or hub id with :func:`kdlightning.hf.load_tokenizer` (in YAML:
            ``class_path: kdlightning.hf.load_tokenizer`` with ``init_args: {path: ...}``).
        max_length: truncate each text to this many tokens; None for the tokenizer's own maximum.

    Raises:
        TypeError: a tokenizer given as a path string (load it with :func:`kdlightning.hf.load_tokenizer`).
        ValueError: an empty dict, roles with different tokenizers but no ``"student"`` among them, or
            ``max_length < 1``.
    """

    def __init__(self, tokenizers: Any | Mapping[str, Any], max_length: int | None = 128) -> None:
        if max_length is not None and max_length < 1:
            raise ConfigurationError(f"`max_length` must be >= 1 or None, got {max_length!r}.")
        roles = dict(tokenizers) if isinstance(tokenizers, Mapping) else {"student": tokenizers}
        if not roles:
            raise ConfigurationError(
                "`tokenizers` is empty; give one tokenizer, or a dict from network role to tokenizer."
            )
        for role, tokenizer in roles.items():
            if isinstance(tokenizer, (str, PathLike)):
                raise InputTypeError(
                    f"`tokenizers` gives the {role}'s tokenizer as the path {str(tokenizer)!r}; tokenizers are "
                    f"objects: load it with kdlightning.hf.load_tokenizer({str(tokenizer)!r}) (in YAML: "
                    f"`class_path: kdlightning.hf.load_tokenizer` with `init_args: {{path: {tokenizer}}}`)."
                )
        # Equal tokenizers (one directory loaded once per role) become one object: one tokenization per batch.
        canonical: dict[str, Any] = {}
        for role, tokenizer in roles.items():
            roles[role] = canonical.setdefault(_rules(tokenizer) or f"id:{id(tokenizer)}", tokenizer)
        if len({id(t) for t in roles.values()}) > 1 and "student" not in roles:
            raise ConfigurationError(
                f"`tokenizers` has different tokenizers for {sorted(roles)} but none for 'student'; networks without "
                "their own tokenizer read the student's inputs, so 'student' must be one of the roles."
            )
        self.tokenizers = roles
        self.max_length = max_length

    @property
    def shared(self) -> bool:
        """True when one tokenizer serves every network (batches are then a single dict of inputs)."""
        return len({id(t) for t in self.tokenizers.values()}) == 1

    def load(self) -> TokenizeCollate:
        """Returns ``self``: the tokenizers are objects, loaded by whoever built them (kept for compatibility)."""
        return self

    def encode(self, tokenizer: Any, texts: Sequence[str]) -> dict[str, Tensor]:
        """One tokenizer's padded inputs ``(N, L)`` for ``texts`` (L: the longest, at most ``max_length``)."""
        encoding = tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return dict(encoding)

    def __call__(self, samples: Sequence[tuple[Any, ...]]) -> dict[str, Any]:
        """Tokenize a list of samples into one batch (see the class docstring for its layout)."""
        texts, labels, *rest = zip(*samples, strict=True)
        if not all(isinstance(text, str) for text in texts):
            raise InputTypeError(
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

    def check_vocabulary(self, texts: Sequence[str], sample: int = 256, most: float = 0.5) -> None:
        """Refuse a tokenizer that maps most of ``texts`` to its unknown token: a vocabulary that did not load.

        (``BertTokenizerFast(vocab_file=...)`` in transformers 5 builds a 5-token vocabulary without a word of
        warning; a network trained through it learns from text lengths alone.) Reads the first ``sample`` texts.

        Raises:
            ConfigurationError: more than ``most`` of the tokens of some role's tokenizer are its unknown token,
                naming ``tokenizers`` and the role.
        """
        texts = [str(text) for text in texts[:sample]]
        checked: set[int] = set()
        for role, tokenizer in self.tokenizers.items():
            unknown = getattr(tokenizer, "unk_token_id", None)
            if id(tokenizer) in checked or unknown is None or not texts:
                continue
            checked.add(id(tokenizer))
            ids = [i for row in tokenizer(texts, add_special_tokens=False)["input_ids"] for i in row]
            share = sum(i == unknown for i in ids) / max(len(ids), 1)
            if share > most:
                raise ConfigurationError(
                    f"`tokenizers`: the {role}'s tokenizer ({type(tokenizer).__name__}, {len(tokenizer)} tokens) maps "
                    f"{share:.0%} of the tokens of the first {len(texts)} texts to its unknown token "
                    f"{getattr(tokenizer, 'unk_token', unknown)!r}: its vocabulary did not load. Load it with "
                    "kdlightning.hf.load_tokenizer(<the model's directory>) (AutoTokenizer.from_pretrained), the "
                    "tokenizer saved with the model."
                )

    def fingerprint(self) -> str:
        """SHA-256 of what determines the networks' inputs: each role's tokenizer and ``max_length``."""
        digest = hashlib.sha256(repr(self.max_length).encode())
        for role in sorted(self.tokenizers):
            tokenizer = self.tokenizers[role]
            rules = _rules(tokenizer)
            if rules is None:
                raise InputTypeError(
                    f"The {role}'s tokenizer {type(tokenizer).__name__} has neither `backend_tokenizer` nor "
                    "`get_vocab()`, so its outputs cannot be fingerprinted for the teacher-output cache."
                )
            digest.update(f"{role}\0{rules}\0".encode())
        return digest.hexdigest()

    def __repr__(self) -> str:
        names = {role: getattr(t, "name_or_path", t) for role, t in self.tokenizers.items()}
        return f"{type(self).__name__}(tokenizers={names!r}, max_length={self.max_length!r})"


def _rules(tokenizer: Any) -> str | None:
    """A tokenizer's class name and rules (its fast backend's serialisation, or its vocabulary), or None."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # Without the padding and truncation a call leaves set on the backend: the same rules before and after use.
        serialised = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("padding", "truncation")}
        rules = json.dumps(serialised, sort_keys=True)
    elif callable(getattr(tokenizer, "get_vocab", None)):
        rules = repr(sorted(tokenizer.get_vocab().items()))
    else:
        return None
    return f"{type(tokenizer).__name__}\0{rules}"
