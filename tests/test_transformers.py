"""Hugging Face transformers networks on text: the factory, tokenization per network, every method, the cache.

Tiny BERT models and word-piece tokenizers are built here, written with ``save_pretrained`` and
loaded back through :mod:`kdlightning.hf`, so the real loading code runs without a network.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from conftest import NUM_CLASSES as TINY_CLASSES
from conftest import SyntheticDataModule, TinyNet, tiny_trainer

from kdlightning import DataPartitioningKD, DeepMutualLearning, StudentOnly, VanillaKD
from kdlightning.cache import CacheReferenceOutputs, transfer_fingerprint
from kdlightning.cli import KDLightningCLI
from kdlightning.data import Digits, HFDataset, PartitionedDataModule, TokenizeCollate
from kdlightning.hf import load_tokenizer, sequence_classifier

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]
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


def _sentences(n: int, seed: int) -> list[tuple[str, int]]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = i % NUM_CLASSES
        words = [*rng.choice(TOPICS[label], 3), *rng.choice(SHARED, int(rng.integers(1, 5)))]
        words = [f"{w}s" if w in TOPICS[label] and rng.random() < 0.3 else str(w) for w in words]
        rows.append((" ".join(rng.permutation(words)), label))
    return rows


def _write_csv(path: Path, rows: list[tuple[str, int]]) -> None:
    path.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in rows))


def _save_bert(directory: Path, vocab: list[str], hidden: int, head: bool = True) -> Path:
    """A one-layer BERT and its word-piece tokenizer, written as ``save_pretrained`` writes them."""
    config = transformers.BertConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        num_hidden_layers=1,
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


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A text CSV data set, and saved student (16 wide) and teacher (24 wide, other vocabulary) models."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    _write_csv(root / "train.csv", _sentences(120, seed=0))
    _write_csv(root / "test.csv", _sentences(30, seed=1))
    return {
        "train": root / "train.csv",
        "test": root / "test.csv",
        "student": _save_bert(root / "student", STUDENT_VOCAB, hidden=16),
        "teacher": _save_bert(root / "teacher", TEACHER_VOCAB, hidden=24),
    }


def _source(assets: dict[str, Path], **kwargs) -> HFDataset:
    files = {"train": str(assets["train"]), "test": str(assets["test"])}
    return HFDataset("csv", data_files=files, input_column="text", **kwargs)


def _datamodule(assets: dict[str, Path], tokenizers: object, **kwargs) -> PartitionedDataModule:
    options = {"num_parties": 2, "batch_size": 16, "max_length": 16, **kwargs}
    return PartitionedDataModule(dataset=_source(assets), tokenizers=tokenizers, **options)


def _both(assets: dict[str, Path]) -> dict[str, object]:
    """Student and teacher tokenizers; the peer's is the teacher's, loaded again (an equal object)."""
    return {
        "student": load_tokenizer(str(assets["student"])),
        "teacher": load_tokenizer(str(assets["teacher"])),
        "peer": load_tokenizer(str(assets["teacher"])),
    }


def _method(name: str, assets: dict[str, Path]) -> L.LightningModule:
    student = sequence_classifier(str(assets["student"]), num_labels=NUM_CLASSES)
    teacher = sequence_classifier(str(assets["teacher"]), num_labels=NUM_CLASSES)
    adam = lambda params: torch.optim.Adam(params, lr=1e-2)  # noqa: E731
    if name == "StudentOnly":
        return StudentOnly(student=student, num_classes=NUM_CLASSES, optimizer=adam)
    if name == "VanillaKD":
        return VanillaKD(student=student, teacher=teacher, num_classes=NUM_CLASSES, optimizer=adam)
    if name == "DeepMutualLearning":
        return DeepMutualLearning(
            student=student, peer=teacher, num_classes=NUM_CLASSES, optimizer=adam, peer_optimizer=adam
        )
    return DataPartitioningKD(student=student, teacher=teacher, num_classes=NUM_CLASSES, optimizer=adam)


class _Record(L.Callback):
    """Keep the first training batch and every logged training loss."""

    def __init__(self) -> None:
        self.batch: dict | None = None
        self.losses: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.batch is None:
            self.batch = batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.losses.append(float(trainer.callback_metrics["train/loss"]))


def _count_forwards(module: torch.nn.Module) -> list[int]:
    calls = [0]

    def hook(*_: object) -> None:
        calls[0] += 1

    module.register_forward_hook(hook)
    return calls


# ---------------------------------------------------------------------------------------------- factory
def test_factory_loads_the_saved_weights_and_tokenizer(assets: dict[str, Path]) -> None:
    model = sequence_classifier(str(assets["student"]), num_labels=NUM_CLASSES)
    saved = transformers.BertForSequenceClassification.from_pretrained(assets["student"])
    for key, value in saved.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value, msg=key)
    assert model.training and next(model.parameters()).dtype == torch.float32
    tokenizer = load_tokenizer(str(assets["student"]))
    ids = tokenizer(["the goal"])["input_ids"][0]
    assert ids == [STUDENT_VOCAB.index(t) for t in ("[CLS]", "the", "goal", "[SEP]")]
    logits = model(**tokenizer(["the goal", "a very big soup"], padding=True, return_tensors="pt")).logits
    assert logits.shape == (2, NUM_CLASSES)


def test_an_encoder_only_directory_gets_a_new_classification_head(tmp_path: Path) -> None:
    directory = _save_bert(tmp_path / "encoder", STUDENT_VOCAB, hidden=16, head=False)
    encoder = transformers.BertModel.from_pretrained(directory)
    model = sequence_classifier(str(directory), num_labels=5)
    assert model.classifier.out_features == 5
    torch.testing.assert_close(model.bert.embeddings.word_embeddings.weight, encoder.embeddings.word_embeddings.weight)


def test_a_missing_model_names_the_path_and_how_to_get_it(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "model"
    with pytest.raises(FileNotFoundError, match=r"No model directory at .*no/model.*save_pretrained"):
        sequence_classifier(str(missing), num_labels=2)
    with pytest.raises(FileNotFoundError, match="no/model"):
        load_tokenizer(str(missing))
    start = time.perf_counter()
    # conftest sets HF_HUB_OFFLINE=1: an uncached hub id fails at once, naming the id.
    with pytest.raises(OSError, match=r"(?s)'nobody-here/no-such-model'.*hf download nobody-here/no-such-model"):
        sequence_classifier("nobody-here/no-such-model", num_labels=2)
    assert time.perf_counter() - start < 10


def test_num_labels_is_validated() -> None:
    with pytest.raises(ValueError, match="num_labels"):
        sequence_classifier("anything", num_labels=1)


# ---------------------------------------------------------------------------------------------- tokenization
def test_different_tokenizers_give_one_input_dict_per_network(assets: dict[str, Path]) -> None:
    dm = _datamodule(assets, _both(assets))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"student", "teacher", "peer", "labels", "index"}
    student, teacher = batch["student"]["input_ids"], batch["teacher"]["input_ids"]
    assert student.shape[0] == teacher.shape[0] == batch["labels"].shape[0] == 16
    assert student.shape != teacher.shape or not torch.equal(student, teacher)
    assert batch["peer"] is batch["teacher"]  # one tokenizer, tokenized once
    assert student.shape[1] <= 16 and teacher.shape[1] <= 16  # dynamic padding, truncated to max_length
    # The index is the pool index of each sample: the label it carries is the pool's label.
    pool_labels = torch.from_numpy(dm.data.train_labels)
    assert torch.equal(pool_labels[batch["index"]], batch["labels"])
    val = next(iter(dm.val_dataloader()))
    assert "index" not in val and set(val["student"]) >= {"input_ids", "attention_mask"}


def test_one_tokenizer_gives_a_single_input_dict(assets: dict[str, Path]) -> None:
    dm = _datamodule(assets, load_tokenizer(str(assets["student"])))
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == {"input_ids", "token_type_ids", "attention_mask", "labels", "index"}
    lengths = batch["attention_mask"].sum(dim=1)
    assert batch["input_ids"].shape[1] == int(lengths.max())  # padded to the longest text of the batch


def test_tokenize_collate_validates_its_arguments(assets: dict[str, Path]) -> None:
    student, teacher = load_tokenizer(str(assets["student"])), load_tokenizer(str(assets["teacher"]))
    with pytest.raises(ValueError, match="'student' must be one of the roles"):
        TokenizeCollate({"teacher": teacher, "peer": student})
    with pytest.raises(ValueError, match="max_length"):
        TokenizeCollate(student, max_length=0)
    with pytest.raises(ValueError, match="tokenizers"):
        TokenizeCollate({})
    dm = PartitionedDataModule(dataset=Digits(), tokenizers=student)
    with pytest.raises(ValueError, match="`tokenizers` is set but the data set's inputs are not text"):
        dm.setup("fit")


def test_a_tokenizer_path_is_refused_naming_the_factory(assets: dict[str, Path]) -> None:
    """The datamodule loads nothing by path: kdlightning.hf.load_tokenizer does (from YAML by class_path)."""
    path = str(assets["student"])
    with pytest.raises(TypeError, match=r"teacher's tokenizer as the path .*kdlightning\.hf\.load_tokenizer"):
        _datamodule(assets, {"student": load_tokenizer(path), "teacher": path})
    with pytest.raises(TypeError, match="load_tokenizer"):
        TokenizeCollate(path)


def test_a_ready_collate_is_used_as_it_is(assets: dict[str, Path]) -> None:
    collate = TokenizeCollate(load_tokenizer(str(assets["student"])), max_length=8)
    dm = _datamodule(assets, collate, max_length=16)
    assert dm.collate_fn is collate
    dm.setup("fit")
    assert next(iter(dm.train_dataloader()))["input_ids"].shape[1] <= 8


def test_the_cache_key_depends_on_the_tokenizers(assets: dict[str, Path]) -> None:
    keys = {
        transfer_fingerprint(_datamodule(assets, _both(assets))),
        transfer_fingerprint(_datamodule(assets, _both(assets), max_length=8)),
        transfer_fingerprint(_datamodule(assets, load_tokenizer(str(assets["student"])))),
    }
    assert len(keys) == 3
    assert transfer_fingerprint(_datamodule(assets, _both(assets))) in keys  # and it is stable


def test_num_classes_is_given_or_read_without_loading(assets: dict[str, Path]) -> None:
    given = _source(assets, num_classes=NUM_CLASSES)
    assert PartitionedDataModule(dataset=given).num_classes == NUM_CLASSES
    assert getattr(given, "_loaded", None) is None  # not loaded
    inferred = _source(assets)  # a CSV has no class metadata: read from the labels
    assert inferred.num_classes == NUM_CLASSES
    assert inferred.data().num_classes == NUM_CLASSES
    with pytest.raises(ValueError, match=r"has 3 classes .*more than `num_classes`=2"):
        _source(assets, num_classes=2).data()


# ---------------------------------------------------------------------------------------------- methods
@pytest.mark.parametrize("name", ["StudentOnly", "VanillaKD", "DeepMutualLearning", "DataPartitioningKD"])
def test_every_method_fits_text_with_different_tokenizers(name: str, assets: dict[str, Path], tmp_path: Path) -> None:
    method = _method(name, assets)
    before = {k: v.clone() for k, v in method.student.state_dict().items()}
    record = _Record()
    trainer = tiny_trainer(tmp_path, callbacks=[record])
    trainer.fit(method, datamodule=_datamodule(assets, _both(assets)))
    batch = record.batch
    assert batch is not None
    student, teacher = batch["student"]["input_ids"], batch["teacher"]["input_ids"]
    assert student.shape != teacher.shape or not torch.equal(student, teacher)
    assert record.losses and all(math.isfinite(loss) for loss in record.losses)
    assert 0.0 <= float(trainer.callback_metrics["val/acc"]) <= 1.0
    after = method.student.state_dict()
    assert any(not torch.equal(before[key], after[key]) for key in before)


def test_bf16_mixed_fits_with_float32_weights(assets: dict[str, Path], tmp_path: Path) -> None:
    method = _method("VanillaKD", assets)
    dtypes: set[torch.dtype] = set()
    method.student.register_forward_hook(lambda module, args, output: dtypes.add(output.logits.dtype))
    record = _Record()
    trainer = tiny_trainer(tmp_path, precision="bf16-mixed", callbacks=[record])
    trainer.fit(method, datamodule=_datamodule(assets, _both(assets)))
    assert dtypes == {torch.bfloat16}
    assert record.losses and all(math.isfinite(loss) for loss in record.losses)
    assert {p.dtype for p in method.student.parameters()} == {torch.float32}


def test_the_cache_runs_the_teacher_once_across_two_fits(assets: dict[str, Path], tmp_path: Path) -> None:
    calls = []
    for run in range(2):
        method = _method("VanillaKD", assets)
        calls.append(_count_forwards(method.teacher))
        dm = _datamodule(assets, _both(assets))
        cache = CacheReferenceOutputs(cache_dir=str(tmp_path / "cache"))
        trainer = tiny_trainer(tmp_path / str(run), max_epochs=2, limit_val_batches=0, callbacks=[cache])
        trainer.fit(method, datamodule=dm)
        assert cache.stores["teacher"].fraction_filled == pytest.approx(len(dm.train_set) / dm.pool_size)
    assert calls[0][0] == trainer.num_training_batches  # epoch one only
    assert calls[1][0] == 0  # the second fit reads the saved outputs


def test_the_transformers_config_runs_with_the_cli(assets: dict[str, Path], tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = ROOT / "configs" / "transformers" / "vanilla_kd_minilm.yaml"
    student, teacher = str(assets["student"]), str(assets["teacher"])
    data_files = json.dumps({"train": str(assets["train"]), "test": str(assets["test"])})
    cli = KDLightningCLI(
        args=[
            "fit",
            "-c",
            str(ROOT / "configs" / "_base" / "trainer.yaml"),
            "-c",
            str(config),
            f"--model.init_args.student.init_args.path={student}",
            f"--model.init_args.teacher.init_args.path={teacher}",
            f"--model.init_args.student.init_args.num_labels={NUM_CLASSES}",
            f"--model.init_args.teacher.init_args.num_labels={NUM_CLASSES}",
            f"--data.init_args.dataset.init_args.data_files={data_files}",
            "--data.init_args.tokenizers="
            + json.dumps(
                {
                    role: {"class_path": "kdlightning.hf.load_tokenizer", "init_args": {"path": path}}
                    for role, path in (("student", student), ("teacher", teacher))
                }
            ),
            "--trainer.fast_dev_run=true",
            "--trainer.logger=false",
            "--trainer.callbacks=[]",
            "--trainer.precision=32-true",
        ]
    )
    assert isinstance(cli.model, VanillaKD)
    assert not cli.datamodule.collate_fn.shared  # one tokenizer object per role, as the YAML gave them
    assert (
        yaml.safe_load(config.read_text())["model"]["init_args"]["student"]["class_path"]
        == "kdlightning.hf.SequenceClassifier"
    )
    assert math.isfinite(float(cli.trainer.callback_metrics["train/loss"]))


def test_a_distilled_student_is_saved_as_from_pretrained_loads_it(assets: dict[str, Path], tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from kdlightning.callbacks import SavePretrained

    method = _method("VanillaKD", assets)
    start = {k: v.clone() for k, v in method.student.state_dict().items()}
    save = SavePretrained()
    trainer = tiny_trainer(tmp_path, max_epochs=1, limit_val_batches=0, callbacks=[save])
    datamodule = _datamodule(assets, _both(assets))
    trainer.fit(method, datamodule=datamodule)
    assert save.saved == tmp_path / "student"
    loaded = AutoModelForSequenceClassification.from_pretrained(save.saved).eval()
    tokenizer = AutoTokenizer.from_pretrained(save.saved)
    assert (
        tokenizer.get_vocab() == datamodule.collate_fn.tokenizers["student"].get_vocab()
    )  # the student's, not the teacher's
    trained = method.student.eval().state_dict()
    assert any(not torch.equal(trained[k], v) for k, v in start.items())
    for key, value in loaded.state_dict().items():
        torch.testing.assert_close(value, trained[key])
    batch = tokenizer(["alpha beta", "gamma"], return_tensors="pt", padding=True)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, method.student(**batch).logits)

    plain = tiny_trainer(
        tmp_path / "plain", max_epochs=1, limit_train_batches=1, limit_val_batches=0, callbacks=[SavePretrained()]
    )
    with pytest.raises(TypeError, match="`student` is a TinyNet, which has no `save_pretrained`"):
        plain.fit(StudentOnly(TinyNet(), TINY_CLASSES), datamodule=SyntheticDataModule())
