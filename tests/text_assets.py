"""Tiny text assets for the transformers tests: a CSV data set and two saved BERTs with their tokenizers.

The student tokenizes whole words; the teacher knows stems and "##s" and lists them in another order, so the two
give different token ids and lengths for the same text. Everything is written with ``save_pretrained`` (and the
tokenizer's own files), so the real loading code runs without a network.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import transformers

NUM_CLASSES = 3
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
TOPICS = [
    ["goal", "match", "team", "score", "ball", "coach"],
    ["bread", "soup", "cheese", "cook", "salt", "dinner"],
    ["code", "server", "laptop", "bug", "cloud", "data"],
]
SHARED = ["the", "a", "with", "very", "new", "big", "today", "and"]
# The student tokenizes whole words; the teacher knows stems and "##s" and lists them in another
# order, so the two give different token ids and lengths for the same text.
STUDENT_VOCAB = [*SPECIAL, *SHARED, *(w for topic in TOPICS for w in topic), *(f"{w}s" for t in TOPICS for w in t)]
TEACHER_VOCAB = [*SPECIAL, "##s", *reversed([*SHARED, *(w for topic in TOPICS for w in topic)])]


def sentences(n: int, seed: int) -> list[tuple[str, int]]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = i % NUM_CLASSES
        words = [*rng.choice(TOPICS[label], 3), *rng.choice(SHARED, int(rng.integers(1, 5)))]
        words = [f"{w}s" if w in TOPICS[label] and rng.random() < 0.3 else str(w) for w in words]
        rows.append((" ".join(rng.permutation(words)), label))
    return rows


def write_csv(path: Path, rows: list[tuple[str, int]]) -> None:
    path.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in rows))


def save_bert(directory: Path, vocab: list[str], hidden: int, head: bool = True, layers: int = 1) -> Path:
    """A BERT of ``layers`` layers (one by default) and its word-piece tokenizer, written as ``save_pretrained`` does."""
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=2 * hidden,
        max_position_embeddings=32,
        num_labels=NUM_CLASSES,
    )
    model = transformers.BertForSequenceClassification(config) if head else transformers.BertModel(config)
    model.save_pretrained(directory)
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer_config = {"tokenizer_class": "BertTokenizer", "do_lower_case": True, "model_max_length": 32}
    (directory / "tokenizer_config.json").write_text(json.dumps(tokenizer_config))
    return directory


def make_assets(root: Path) -> dict[str, Path]:
    """A text CSV data set under ``root``, and saved student (16 wide) and teacher (24 wide, other vocabulary) models."""
    torch.manual_seed(0)
    write_csv(root / "train.csv", sentences(120, seed=0))
    write_csv(root / "test.csv", sentences(30, seed=1))
    return {
        "train": root / "train.csv",
        "test": root / "test.csv",
        "student": save_bert(root / "student", STUDENT_VOCAB, hidden=16),
        "teacher": save_bert(root / "teacher", TEACHER_VOCAB, hidden=24),
    }


def stand_in_minilm(root: Path, words: list[str] | None = None) -> Path:
    """A tiny 6-layer BERT encoder where the text configs read all-MiniLM-L6-v2 (``models/all-MiniLM-L6-v2`` under
    ``root``, their working directory), so they parse and run without the real model; ``words`` adds to its
    vocabulary (the words of the text it will read)."""
    torch.manual_seed(0)
    vocab = list(dict.fromkeys([*STUDENT_VOCAB, *(words or [])]))
    return save_bert(root / "models" / "all-MiniLM-L6-v2", vocab, hidden=16, head=False, layers=6)
