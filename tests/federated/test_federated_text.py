"""The federation on text: clients of different architectures and tokenizers, the global model's own (SPEC §12)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest

pytest.importorskip("transformers")
pytest.importorskip("flwr")

from text_assets import make_assets

from kdlightning.data import Digits, HFDataset, IIDPartitioner
from kdlightning.errors import ConfigurationError
from kdlightning.federated import Federation, FederationConfig, run
from kdlightning.hf import load_tokenizer, pretrained_classifier
from kdlightning.models import MLP


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_assets(tmp_path_factory.mktemp("text"))


def text_config(assets: dict[str, Path], out: Path, **kwargs) -> FederationConfig:
    """Two clients: client 0 of the global architecture (the student BERT), client 1 of the teacher BERT's."""
    student, teacher = (partial(pretrained_classifier, path=str(assets[role])) for role in ("student", "teacher"))
    tokenizers = {role: load_tokenizer(str(assets[role])) for role in ("student", "teacher")}
    options = {
        "network": student,
        "client_networks": [student, teacher],
        "dataset": HFDataset(
            "csv", data_files={"train": str(assets["train"]), "test": str(assets["test"])}, input_column="text"
        ),
        "partitioner": IIDPartitioner(),
        "num_clients": 2,
        "public_fraction": 0.2,
        "batch_size": 16,
        "pretrain_epochs": 1,
        "consolidation_epochs": 1,
        "rounds": 1,
        "starts": ["fresh", "consolidated", "best_client"],
        "tokenizer": tokenizers["student"],
        "client_tokenizers": [tokenizers["student"], tokenizers["teacher"]],
        "max_length": 16,
        "progress": False,
        "out": out,
        **kwargs,
    }
    return FederationConfig(**options)


def test_a_federation_runs_on_text_with_clients_of_other_tokenizers(assets: dict[str, Path], tmp_path: Path) -> None:
    # The teacher BERT embeds 32 tokens, the student's tokenizer has 49: a client fed the other's tokens fails.
    federation = Federation(text_config(assets, tmp_path))
    rows = run(federation)
    assert {(row["start"], row["round"]) for row in rows} == {
        (start, str(n)) for start in ("fresh", "consolidated", "best_client") for n in (0, 1)
    }
    assert all(0.0 <= float(row["test_acc"]) <= 1.0 for row in rows)
    assert len(list((tmp_path / "clients").glob("*.pt"))) == 2
    recorded = json.loads((tmp_path / "federation.json").read_text())
    assert recorded["tokenizers"] == federation.config.tokenization.fingerprint()


def test_text_settings_are_checked_before_any_client_trains(assets: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match=r"`dataset` HFDataset holds text.*give `tokenizer`"):
        Federation(text_config(assets, tmp_path, tokenizer=None, client_tokenizers=None)).check()
    loaded = text_config(assets, tmp_path).client_tokenizers
    assert loaded is not None
    with pytest.raises(
        ConfigurationError, match=r"`client_tokenizers` must give one tokenizer per client architecture"
    ):
        text_config(assets, tmp_path, client_tokenizers=[loaded[0]])
    with pytest.raises(ConfigurationError, match="`client_tokenizers`: the client 1's tokenizer has 49 tokens"):
        Federation(text_config(assets, tmp_path, client_tokenizers=[loaded[0], loaded[0]])).check()
    with pytest.raises(ConfigurationError, match="`max_length` is 64, beyond the global network's 32"):
        Federation(text_config(assets, tmp_path, max_length=64)).check()
    numeric = FederationConfig(partial(MLP, in_features=64, hidden_sizes=(8,)), dataset=Digits(), tokenizer=loaded[0])
    with pytest.raises(ConfigurationError, match="`tokenizer` is set but `dataset` Digits holds numeric inputs"):
        Federation(numeric).check()
    assert not (tmp_path / "clients").exists()


def test_kdl_federate_takes_the_tokenizers_from_yaml(assets: dict[str, Path], tmp_path: Path) -> None:
    import yaml

    from kdlightning.federated import load_federation

    tokenizer = {role: {"class_path": "kdlightning.hf.load_tokenizer", "init_args": {"path": str(assets[role])}}
                 for role in ("student", "teacher")}  # fmt: skip
    network = {role: {"class_path": "kdlightning.hf.PretrainedClassifier", "init_args": {"path": str(assets[role])}}
               for role in ("student", "teacher")}  # fmt: skip
    config = {
        "network": network["student"],
        "client_networks": [network["student"], network["teacher"]],
        "dataset": {
            "class_path": "kdlightning.data.HFDataset",
            "init_args": {"path": "csv", "data_files": {"train": str(assets["train"])}, "input_column": "text"},
        },
        "tokenizer": tokenizer["student"],
        "client_tokenizers": [tokenizer["student"], tokenizer["teacher"]],
        "max_length": 16,
        "num_clients": 2,
    }
    (tmp_path / "text.yaml").write_text(yaml.safe_dump(config))
    federation = load_federation(["-c", str(tmp_path / "text.yaml"), "--out", str(tmp_path / "out")])
    teacher = load_tokenizer(str(assets["teacher"]))
    read = federation.config.tokenization
    assert read.client_tokenizer(1).get_vocab() == teacher.get_vocab() and read.max_length == 16
    assert read.client_tokenizer(0).get_vocab() == read.tokenizer.get_vocab() != teacher.get_vocab()
    network_1 = federation.config.client_networks[1](3)  # the pipelines pass the number of classes
    assert network_1.config.vocab_size == len(teacher)
