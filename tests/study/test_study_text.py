"""A study on text: pre-trained Hugging Face networks, each read through its own tokenizer (SPEC §12)."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch
import yaml

pytest.importorskip("transformers")

from conftest import ONE_CELL_STUDY
from text_assets import make_assets

from kdlightning import DeepMutualLearning, VanillaKD
from kdlightning.data import Digits, HFDataset, IIDPartitioner
from kdlightning.errors import ConfigurationError
from kdlightning.hf import load_tokenizer, sequence_classifier
from kdlightning.reporting import read_csv
from kdlightning.study import Study
from kdlightning.tuning import TuneOptions

TWO_POINTS = TuneOptions(grid={"temperature": [1.0, 4.0], "alpha": [0.5]})


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return make_assets(tmp_path_factory.mktemp("text"))


def text(assets: dict[str, Path]) -> HFDataset:
    return HFDataset(
        "csv", data_files={"train": str(assets["train"]), "test": str(assets["test"])}, input_column="text"
    )


def networks(assets: dict[str, Path]) -> dict[str, object]:
    """Both networks' factories, from their saved directories (``num_labels`` left to the study)."""
    return {role: partial(sequence_classifier, str(assets[role])) for role in ("student", "teacher")}


def tokenizers(assets: dict[str, Path]) -> dict[str, object]:
    return {role: load_tokenizer(str(assets[role])) for role in ("student", "teacher")}


def text_study(out: Path, assets: dict[str, Path], **kwargs) -> Study:
    options = {
        **networks(assets),
        "methods": {"vanilla_kd": VanillaKD, "dml": DeepMutualLearning},
        "tuned_kd": True,
        "tuning": TWO_POINTS,
        "dataset": text(assets),
        "tokenizers": tokenizers(assets),
        "max_length": 16,
        "scenarios": [IIDPartitioner()],
        "seeds": [0],
        "num_parties": 2,
        "pretrain_epochs": 1,
        "epochs": 1,
        "batch_size": 16,
        "out": str(out),
        **kwargs,
    }
    return Study(**options)


@pytest.mark.parametrize("batched", [True, False])
def test_a_study_runs_on_text_with_a_tokenizer_for_each_network(
    batched: bool, assets: dict[str, Path], tmp_path: Path
) -> None:
    # The two vocabularies differ in size and order: a network fed the other's token ids fails or reads garbage.
    study = text_study(tmp_path, assets, batched=batched)
    rows = study.run(progress=False)
    methods = {row["method"] for row in rows}
    assert methods == {"student_only", "vanilla_kd", "dml", "tuned_kd"}
    for row in rows:
        assert not row.get("error"), row
        assert 0.0 <= float(row["acc_after"]) <= 1.0
    recorded = json.loads((tmp_path / "study.json").read_text())["settings"]
    assert recorded["tokenizers"] == study.config.collate().fingerprint()
    assert len(read_csv(tmp_path / "results.csv")) == len(rows)


def test_each_network_reads_its_own_tokens(assets: dict[str, Path], tmp_path: Path) -> None:
    config = text_study(tmp_path, assets).config
    student, teacher = (load_tokenizer(str(assets[role])) for role in ("student", "teacher"))
    sample = [("the team score goals today", 0)]
    batch = config.collate()(sample)  # a cell's methods: each network its own inputs; DML's peer the teacher's
    assert batch["student"]["input_ids"].tolist() == student(["the team score goals today"])["input_ids"]
    assert batch["teacher"]["input_ids"].tolist() == teacher(["the team score goals today"])["input_ids"]
    assert torch.equal(batch["peer"]["input_ids"], batch["teacher"]["input_ids"])
    alone = config.collate("teacher")(sample)  # the teacher's pre-training: it is the method's student
    assert alone["input_ids"].tolist() == teacher(["the team score goals today"])["input_ids"]
    data = config.datamodule(config.scenarios[0], 0, config.teacher_party, network="teacher")
    data.prepare_data()
    data.setup("fit")
    first = next(iter(data.train_dataloader()))
    assert first["input_ids"].shape[1] <= 16  # max_length reaches every datamodule
    assert int(first["input_ids"].max()) < teacher.vocab_size


def test_text_without_tokenizers_is_refused_before_any_training(assets: dict[str, Path], tmp_path: Path) -> None:
    study = text_study(tmp_path, assets, tokenizers=None)
    with pytest.raises(ConfigurationError, match="`tokenizers`"):
        study.run(progress=False)
    assert not (tmp_path / "results.csv").exists() and not (tmp_path / "pretrained").exists()


def test_tokenizers_are_checked_when_the_study_is_built(assets: dict[str, Path], tmp_path: Path) -> None:
    loaded = tokenizers(assets)
    with pytest.raises(ConfigurationError, match="`tokenizers` must give one tokenizer for both networks"):
        text_study(tmp_path, assets, tokenizers={"student": loaded["student"]})
    with pytest.raises(TypeError, match=r"kdlightning\.hf\.load_tokenizer"):
        text_study(tmp_path, assets, tokenizers=str(assets["student"]))
    one = text_study(tmp_path, assets, tokenizers=loaded["student"]).config  # one tokenizer serves both
    assert one.collate().shared
    numeric = Study(
        student=lambda n: torch.nn.Linear(64, n),
        teacher=lambda n: torch.nn.Linear(64, n),
        methods={"vanilla_kd": VanillaKD},
        tuned_kd=False,
        dataset=Digits(),
        tokenizers=loaded,
        scenarios=[IIDPartitioner()],
        seeds=[0],
        out=str(tmp_path / "numeric"),
    )
    with pytest.raises(ConfigurationError, match="`tokenizers` is set but `dataset` Digits holds numeric inputs"):
        numeric.check()


def test_a_resume_with_other_tokenizers_is_refused(assets: dict[str, Path], tmp_path: Path) -> None:
    text_study(tmp_path, assets, methods={"vanilla_kd": VanillaKD}, tuned_kd=False).run(progress=False)
    again = text_study(tmp_path, assets, methods={"vanilla_kd": VanillaKD}, tuned_kd=False, max_length=8)
    with pytest.raises(ConfigurationError, match="`tokenizers`"):
        again.run(progress=False)


def test_kdl_study_takes_tokenizers_from_yaml(assets: dict[str, Path], tmp_path: Path) -> None:
    from kdlightning.cli import main

    config = {
        "dataset": {
            "class_path": "kdlightning.data.HFDataset",
            "init_args": {
                "path": "csv",
                "data_files": {"train": str(assets["train"]), "test": str(assets["test"])},
                "input_column": "text",
            },
        },
        **{
            role: {"class_path": "kdlightning.hf.PretrainedClassifier", "init_args": {"path": str(assets[role])}}
            for role in ("student", "teacher")
        },
        "tokenizers": {
            role: {"class_path": "kdlightning.hf.load_tokenizer", "init_args": {"path": str(assets[role])}}
            for role in ("student", "teacher")
        },
        "max_length": 16,
        **ONE_CELL_STUDY,
        "epochs": 1,
        "batch_size": 16,
    }
    path = tmp_path / "text.yaml"
    path.write_text(yaml.safe_dump(config))
    main(["study", "-c", str(path), "--out", str(tmp_path / "out"), "--progress", "false"])
    rows = read_csv(tmp_path / "out" / "results.csv")
    assert {row["method"] for row in rows} == {"student_only", "vanilla_kd"}
    assert "tokenizers" in json.loads((tmp_path / "out" / "study.json").read_text())["settings"]


def test_tokens_or_lengths_a_network_cannot_read_are_refused_before_training(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    loaded = tokenizers(assets)
    swapped = {"student": loaded["teacher"], "teacher": loaded["student"]}  # 49 tokens into a 32-token teacher
    with pytest.raises(ConfigurationError, match="`tokenizers`: the teacher's tokenizer has 49 tokens"):
        text_study(tmp_path, assets, tokenizers=swapped).check()
    with pytest.raises(ConfigurationError, match="`max_length` is 64, beyond the student's 32 position embeddings"):
        text_study(tmp_path, assets, max_length=64).check()
    assert not (tmp_path / "pretrained").exists()
