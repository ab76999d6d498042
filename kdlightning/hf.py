"""Hugging Face ``transformers`` networks and tokenizers, loadable from YAML.

:func:`sequence_classifier` (``SequenceClassifier`` in YAML) loads a sequence-classification model
with ``AutoModelForSequenceClassification.from_pretrained``, from a local directory written by
``save_pretrained`` or from a hub id. A directory holding only an encoder (``AutoModel`` weights, e.g.
a sentence-transformers model such as all-MiniLM-L6-v2) loads too: the classification head is newly
initialised. :func:`load_tokenizer` loads the matching tokenizer with ``AutoTokenizer.from_pretrained``.

Nothing is imported from ``transformers`` or read from disk until one of them is called. Hub look-ups
honour ``HF_HUB_OFFLINE``: with ``HF_HUB_OFFLINE=1`` only local directories and the local cache are
read, and a missing model fails at once with an error naming it instead of waiting for a network.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from jsonargparse import class_from_function
from torch import nn

from kdlightning.errors import ConfigurationError, MissingFileError

__all__ = [
    "ClassifierFromConfig",
    "PretrainedClassifier",
    "SequenceClassifier",
    "check_readable",
    "classifier_from_config",
    "keep_layers",
    "load_tokenizer",
    "pretrained_classifier",
    "resolve_pretrained",
    "sequence_classifier",
]

_LOCAL_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")


def resolve_pretrained(path: str | os.PathLike) -> str:
    """Return ``path`` as ``from_pretrained`` should get it: an existing local directory, or a hub id.

    Raises:
        FileNotFoundError: ``path`` is clearly a local path (absolute, relative with ``./``, ``~`` or with
            more than one ``/``; a hub id is ``name`` or ``owner/name``) and does not exist.
    """
    text = os.fspath(path)
    local = Path(text).expanduser()
    if local.exists():
        return str(local)
    if text.startswith(_LOCAL_PREFIXES) or text.count("/") > 1 or "\\" in text:
        raise MissingFileError(
            f"No model directory at '{local}'. Write one with `model.save_pretrained('{text}')` and "
            f"`tokenizer.save_pretrained('{text}')`, download one with `hf download <hub id> --local-dir {text}`, "
            "or pass a Hugging Face hub id such as 'sentence-transformers/all-MiniLM-L6-v2'."
        )
    return text


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def _from_pretrained(load: Callable[..., Any], path: str | os.PathLike, what: str, **kwargs: Any) -> Any:
    """Call ``load(path, **kwargs)``; a missing file or an unreachable hub becomes an error naming ``path``."""
    resolved = resolve_pretrained(path)
    try:
        return load(resolved, **kwargs)
    except OSError as error:  # transformers raises OSError (or a subclass) for missing files and hub failures
        where = (
            "HF_HUB_OFFLINE=1, so only local directories and the local cache are read"
            if _offline() or kwargs.get("local_files_only")
            else "the hub could not be reached or has no such model"
        )
        raise MissingFileError(
            f"Could not load the {what} '{path}' ({where}): {error}\nGet it where there is a network with "
            f"`hf download {path} --local-dir <dir>` and pass that directory, or pass a directory written by "
            "`save_pretrained`."
        ) from error


def sequence_classifier(
    path: str,
    num_labels: int,
    dtype: str = "float32",
    ignore_mismatched_sizes: bool = False,
    revision: str | None = None,
    local_files_only: bool = False,
) -> nn.Module:
    """Load a Hugging Face sequence classifier (``AutoModelForSequenceClassification``) with ``num_labels`` outputs.

    Its forward takes the tokenizer's outputs (``input_ids``, ``attention_mask``, ...) as keyword
    arguments and returns an object with ``.logits`` ``(N, num_labels)``, which every kdlightning
    method reads. In YAML it is ``kdlightning.hf.SequenceClassifier``::

        student:
          class_path: kdlightning.hf.SequenceClassifier
          init_args:
            path: models/minilm          # a save_pretrained directory, or a hub id
            num_labels: 4

    A directory with encoder weights only (a plain ``BertModel``, a sentence-transformers model)
    gets a newly initialised classification head; transformers reports those weights as newly
    initialised.

    Args:
        path: a local directory written by ``save_pretrained``, or a hub id (``owner/name``).
        num_labels: number of classes ``C`` of the classification head.
        dtype: dtype of the loaded weights. ``"float32"`` by default because trained weights stay in
            float32 under mixed precision (``precision: bf16-mixed``); transformers' own default,
            ``"auto"``, keeps the dtype the checkpoint was saved in.
        ignore_mismatched_sizes: allow a checkpoint whose head has another number of labels (the head is
            then newly initialised).
        revision: hub revision (branch, tag or commit) for a hub id.
        local_files_only: never contact the hub (as ``HF_HUB_OFFLINE=1`` does).

    Returns:
        The model, in train mode (``from_pretrained`` returns eval mode; Lightning sets the mode per stage).

    Raises:
        FileNotFoundError: a local ``path`` does not exist.
        OSError: the model cannot be loaded from disk, the cache or the hub; the message names ``path``.
        ValueError: ``num_labels < 2``.
    """
    if int(num_labels) < 2:
        raise ConfigurationError(f"`num_labels` must be >= 2, got {num_labels!r}.")
    from transformers import AutoModelForSequenceClassification

    kwargs: dict[str, Any] = {"revision": revision} if revision is not None else {}
    model = _from_pretrained(
        AutoModelForSequenceClassification.from_pretrained,
        path,
        "model",
        num_labels=int(num_labels),
        dtype=dtype,
        ignore_mismatched_sizes=ignore_mismatched_sizes,
        local_files_only=local_files_only,
        **kwargs,
    )
    return model.train()


def keep_layers(model: nn.Module, layers: Sequence[int]) -> nn.Module:
    """Keep only the transformer layers ``layers`` of ``model`` (in place), as DistilBERT was made from BERT.

    The encoder's layer list (the ``nn.ModuleList`` of ``config.num_hidden_layers`` blocks) becomes the listed
    blocks, in order, with their pre-trained weights; embeddings and heads are kept; ``config.num_hidden_layers``
    follows, so ``save_pretrained`` writes a model ``from_pretrained`` reads back.

    Args:
        model: a Hugging Face model with ``config.num_hidden_layers`` (BERT, MiniLM, RoBERTa, ...).
        layers: the indices to keep, increasing, e.g. ``[0, 2, 4]`` of a 6-layer encoder.

    Returns:
        ``model``, smaller.

    Raises:
        ConfigurationError: ``layers`` empty, not increasing, or out of range; a model without such a layer list.
    """
    config: Any = getattr(model, "config", None)
    count = getattr(config, "num_hidden_layers", None)
    if not isinstance(count, int):
        raise ConfigurationError(f"`layers`: {type(model).__name__} has no `config.num_hidden_layers` to keep from.")
    kept = [int(index) for index in layers]
    if not kept or any(b <= a for a, b in itertools.pairwise(kept)) or not 0 <= kept[0] <= kept[-1] < count:
        raise ConfigurationError(
            f"`layers` must be increasing indices in [0, {count}) (the model's layers), got {list(layers)!r}."
        )
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == count]
    if not found:
        raise ConfigurationError(f"`layers`: {type(model).__name__} has no list of its {count} layers to keep from.")
    name, blocks = found[0]
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent), child, nn.ModuleList([blocks[index] for index in kept]))
    config.num_hidden_layers = len(kept)
    return model


def pretrained_classifier(
    num_labels: int, path: str, layers: list[int] | None = None, dtype: str = "float32", local_files_only: bool = False
) -> nn.Module:
    """A pipeline's network factory: :func:`sequence_classifier` at ``path``, optionally with only ``layers`` kept.

    ``kdl study`` and ``kdl federate`` build each network for the data set's number of classes, which they pass
    first; in YAML this is ``kdlightning.hf.PretrainedClassifier``::

        student:
          class_path: kdlightning.hf.PretrainedClassifier
          init_args:
            path: models/all-MiniLM-L6-v2    # a save_pretrained directory, or a hub id
            layers: [0, 2, 4]                # a 3-layer student initialised from the 6-layer encoder

    Args:
        num_labels: the classification head's outputs (the pipeline's number of classes).
        path: a local directory written by ``save_pretrained``, or a hub id.
        layers: keep only these encoder layers (:func:`keep_layers`); None keeps them all.
        dtype: dtype of the loaded weights.
        local_files_only: never contact the hub (as ``HF_HUB_OFFLINE=1`` does).
    """
    model = sequence_classifier(path, num_labels, dtype=dtype, local_files_only=local_files_only)
    return model if layers is None else keep_layers(model, layers)


def classifier_from_config(
    num_labels: int, model_type: str = "bert", config: dict[str, Any] | None = None, vocab_size_of: Any = None
) -> nn.Module:
    """A pipeline's network factory: a newly initialised sequence classifier of a ``transformers`` architecture.

    ``AutoConfig.for_model(model_type, num_labels=..., **config)`` then
    ``AutoModelForSequenceClassification.from_config``: no weights are read, so each party's "pre-training"
    trains it from scratch. In YAML this is ``kdlightning.hf.ClassifierFromConfig``, e.g. a small byte-level
    student beside a pre-trained teacher with another tokenizer::

        student:
          class_path: kdlightning.hf.ClassifierFromConfig
          init_args:
            model_type: bert
            config: {hidden_size: 128, num_hidden_layers: 2, num_attention_heads: 2, intermediate_size: 512}
            vocab_size_of: {class_path: transformers.ByT5Tokenizer}   # one embedding per token of it

    Args:
        num_labels: the classification head's outputs (the pipeline's number of classes).
        model_type: a ``transformers`` model type (``bert``, ``distilbert``, ``roberta``, ...).
        config: the architecture's configuration fields (``hidden_size``, ``num_hidden_layers``, ...).
        vocab_size_of: a tokenizer whose length sets ``vocab_size`` (instead of giving it in ``config``).

    Raises:
        ConfigurationError: ``num_labels < 2``; an unknown ``model_type``; ``vocab_size`` given twice; a
            ``config`` that ``transformers`` refuses (its message, naming ``config``).
    """
    if int(num_labels) < 2:
        raise ConfigurationError(f"`num_labels` must be >= 2, got {num_labels!r}.")
    from transformers import AutoConfig, AutoModelForSequenceClassification

    fields = dict(config or {})
    if vocab_size_of is not None:
        if "vocab_size" in fields:
            raise ConfigurationError("Give `vocab_size` in `config` or `vocab_size_of`, not both.")
        fields["vocab_size"] = len(vocab_size_of)
    try:
        built = AutoConfig.for_model(model_type, num_labels=int(num_labels), **fields)
    except ValueError as error:
        raise ConfigurationError(
            f"`model_type` {model_type!r} is not a transformers model type (bert, distilbert, roberta, ...)."
        ) from error
    try:
        model = AutoModelForSequenceClassification.from_config(built)
    except ValueError as error:
        raise ConfigurationError(f"`config` {fields!r} does not make a {model_type} classifier: {error}") from error
    return model.train()


def check_readable(
    network: nn.Module, tokenizer: Any, max_length: int | None, network_name: str, argument: str = "tokenizers"
) -> None:
    """Refuse a tokenizer whose token ids or lengths ``network`` cannot read, before any training.

    Args:
        network: a Hugging Face model (others are not checked).
        tokenizer: the tokenizer that will feed it.
        max_length: the longest sequence it will be given (None: the tokenizer's ``model_max_length``).
        network_name: how the messages name the network (``student``, ``teacher``).
        argument: the argument that gave the tokenizer, as the messages name it.

    Raises:
        ConfigurationError: more tokens than the network's embeddings (naming ``argument``), or sequences
            longer than its position embeddings (naming ``max_length``).
    """
    embed = getattr(network, "get_input_embeddings", None)
    embeddings = embed() if callable(embed) else None
    if isinstance(embeddings, nn.Embedding) and len(tokenizer) > embeddings.num_embeddings:
        raise ConfigurationError(
            f"`{argument}`: the {network_name}'s tokenizer has {len(tokenizer)} tokens, but the {network_name} "
            f"embeds {embeddings.num_embeddings}: its token ids would lie beyond the network's vocabulary. Give the "
            f"{network_name} the tokenizer saved with its model."
        )
    positions = getattr(getattr(network, "config", None), "max_position_embeddings", None)
    longest = max_length if max_length is not None else getattr(tokenizer, "model_max_length", None)
    if isinstance(positions, int) and isinstance(longest, int) and longest > positions:
        raise ConfigurationError(
            f"`max_length` is {longest}, beyond the {network_name}'s {positions} position embeddings: set "
            f"`max_length` to {positions} or less."
        )


def load_tokenizer(path: str, revision: str | None = None, local_files_only: bool = False) -> Any:
    """Load the tokenizer saved with a model (``AutoTokenizer.from_pretrained``).

    Args:
        path: a local directory written by ``save_pretrained``, or a hub id (``owner/name``).
        revision: hub revision for a hub id.
        local_files_only: never contact the hub (as ``HF_HUB_OFFLINE=1`` does).

    Returns:
        A ``transformers`` tokenizer.

    Raises:
        FileNotFoundError: a local ``path`` does not exist.
        OSError: the tokenizer cannot be loaded from disk, the cache or the hub; the message names ``path``.
    """
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"revision": revision} if revision is not None else {}
    return _from_pretrained(
        AutoTokenizer.from_pretrained, path, "tokenizer", local_files_only=local_files_only, **kwargs
    )


SequenceClassifier = class_from_function(sequence_classifier, nn.Module, name="SequenceClassifier")
"""YAML-friendly form of :func:`sequence_classifier`: ``class_path: kdlightning.hf.SequenceClassifier``."""

ClassifierFromConfig = class_from_function(classifier_from_config, nn.Module, name="ClassifierFromConfig")
"""YAML-friendly form of :func:`classifier_from_config`, a network factory of ``kdl study`` and ``kdl federate``."""

PretrainedClassifier = class_from_function(pretrained_classifier, nn.Module, name="PretrainedClassifier")
"""YAML-friendly form of :func:`pretrained_classifier`, a network factory of ``kdl study`` and ``kdl federate``."""
