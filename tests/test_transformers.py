"""Hugging Face transformers networks on text: the factory, tokenization per network, every method, the cache.

Tiny BERT models and word-piece tokenizers are built here, written with ``save_pretrained`` and
loaded back through :mod:`kdlightning.hf`, so the real loading code runs without a network.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import time
from pathlib import Path

import lightning as L
import pytest
import torch
import yaml
from conftest import NUM_CLASSES as TINY_CLASSES
from conftest import SyntheticDataModule, TinyNet, tiny_trainer
from text_assets import NUM_CLASSES, STUDENT_VOCAB, make_assets, save_bert

from kdlightning import DataPartitioningKD, DeepMutualLearning, StudentOnly, VanillaKD
from kdlightning.cache import CacheReferenceOutputs, transfer_fingerprint
from kdlightning.cli import KDLightningCLI
from kdlightning.data import Digits, HFDataset, PartitionedDataModule, TokenizeCollate
from kdlightning.errors import ConfigurationError
from kdlightning.hf import classifier_from_config, load_tokenizer, sequence_classifier
from kdlightning.methods import BatchedMembers

transformers = pytest.importorskip("transformers")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A text CSV data set, and saved student (16 wide) and teacher (24 wide, other vocabulary) models."""
    return make_assets(tmp_path_factory.mktemp("hf"))


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
    directory = save_bert(tmp_path / "encoder", STUDENT_VOCAB, hidden=16, head=False)
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


def test_a_classifier_from_a_config_is_new_and_sized_by_its_tokenizer() -> None:
    fields = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
    tokenizer = transformers.ByT5Tokenizer()
    model = classifier_from_config(4, "bert", fields, vocab_size_of=tokenizer)
    assert isinstance(model, transformers.BertForSequenceClassification) and model.training
    assert model.get_input_embeddings().num_embeddings == len(tokenizer) and model.classifier.out_features == 4
    encoded = tokenizer(["bytes, not words"], return_tensors="pt")
    assert model(**encoded).logits.shape == (1, 4)
    with pytest.raises(ConfigurationError, match="`model_type` 'no-such-type'"):
        classifier_from_config(4, "no-such-type", fields)
    with pytest.raises(ConfigurationError, match=r"`config` .*hidden_size"):
        classifier_from_config(4, "bert", {**fields, "hidden_size": 15})
    with pytest.raises(ConfigurationError, match="`vocab_size` in `config` or `vocab_size_of`"):
        classifier_from_config(4, "bert", {**fields, "vocab_size": 10}, vocab_size_of=tokenizer)
    with pytest.raises(ConfigurationError, match="num_labels"):
        classifier_from_config(1, "bert", fields)


def test_num_labels_is_validated() -> None:
    with pytest.raises(ValueError, match="num_labels"):
        sequence_classifier("anything", num_labels=1)


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_num_labels_unlike_the_data_s_classes_is_refused_when_the_method_is_built(
    role: str, assets: dict[str, Path]
) -> None:
    networks = {name: sequence_classifier(str(assets[name]), num_labels=NUM_CLASSES) for name in ("student", "teacher")}
    networks[role] = sequence_classifier(str(assets[role]), num_labels=NUM_CLASSES + 1, ignore_mismatched_sizes=True)
    with pytest.raises(ValueError, match=rf"`num_labels` of the {role} is 4, but the data set has 3 classes"):
        VanillaKD(networks["student"], networks["teacher"], num_classes=NUM_CLASSES)
    VanillaKD(TinyNet(), TinyNet(), num_classes=TINY_CLASSES)  # networks without num_labels are not checked here


def test_a_tokenizer_whose_vocabulary_did_not_load_is_refused_before_training(assets: dict[str, Path]) -> None:
    # transformers 5 builds a 5-token vocabulary from `vocab_file` without a warning: every word is [UNK]
    broken = transformers.BertTokenizerFast(vocab_file=str(assets["student"] / "vocab.txt"))
    assert len(broken) < len(STUDENT_VOCAB)
    data = _datamodule(assets, {"student": load_tokenizer(str(assets["student"])), "teacher": broken})
    with pytest.raises(ValueError, match=r"`tokenizers`: the teacher's tokenizer .* maps 100% .* unknown token"):
        data.setup("fit")
    _datamodule(assets, load_tokenizer(str(assets["student"]))).setup("fit")  # the loaded vocabulary passes


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


def test_a_tokenizers_fingerprint_is_the_same_before_and_after_it_tokenizes(assets: dict[str, Path]) -> None:
    tokenizer = load_tokenizer(str(assets["teacher"]))
    before = TokenizeCollate(tokenizer, max_length=8).fingerprint()
    TokenizeCollate(tokenizer, max_length=8)([("the team score goals today with a very big ball", 0)])
    assert TokenizeCollate(tokenizer, max_length=8).fingerprint() == before  # a call sets truncation on the backend
    assert TokenizeCollate(tokenizer, max_length=4).fingerprint() != before


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
        assert int(cache.stores["teacher"].filled.sum()) == len(dm.train_set)
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


def _bert_without_dropout(directory: Path) -> torch.nn.Module:
    """The saved BERT in float64 with dropout off: a member's fit is then a function of its seed alone."""
    model = transformers.BertForSequenceClassification.from_pretrained(
        directory, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, dtype=torch.float64
    )
    return model.train()


def test_batched_bert_members_have_the_weights_of_their_own_fits_in_float64(
    assets: dict[str, Path], tmp_path: Path
) -> None:
    student, teacher = _bert_without_dropout(assets["student"]), _bert_without_dropout(assets["teacher"])
    adam = lambda params: torch.optim.Adam(params, lr=1e-2)  # noqa: E731

    def members() -> dict[str, L.LightningModule]:
        fresh = functools.partial(copy.deepcopy, student)
        return {
            "control": StudentOnly(fresh(), NUM_CLASSES, optimizer=adam),
            "kd_T2_a0.3": VanillaKD(fresh(), teacher, NUM_CLASSES, temperature=2.0, alpha=0.3, optimizer=adam),
            "kd_T4_a0.8": VanillaKD(fresh(), teacher, NUM_CLASSES, temperature=4.0, alpha=0.8, optimizer=adam),
        }

    def fit(model: L.LightningModule, where: str) -> None:
        L.seed_everything(0, verbose=False)
        trainer = tiny_trainer(tmp_path / where, max_epochs=2, precision="64-true")
        trainer.fit(model, datamodule=_datamodule(assets, _both(assets)))

    separate = members()
    for name, method in separate.items():
        fit(method, name)
    batched = BatchedMembers(members())
    fit(batched, "batched")
    for name, method in separate.items():
        got = batched.member_state_dict(name)
        for key, value in method.student.state_dict().items():
            assert (got[key].double() - value.double()).abs().max() <= 1e-9, (name, key)
    before = student.state_dict()
    assert any(not torch.equal(batched.member_state_dict("control")[k], v) for k, v in before.items())


def test_a_smaller_student_keeps_the_chosen_layers_of_a_pretrained_encoder(tmp_path: Path) -> None:
    from kdlightning.errors import ConfigurationError
    from kdlightning.hf import keep_layers, pretrained_classifier

    config = transformers.BertConfig(
        vocab_size=len(STUDENT_VOCAB), hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=32, num_labels=NUM_CLASSES,
    )  # fmt: skip
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(tmp_path / "encoder")  # an encoder of 4 layers, no head
    full = transformers.BertModel.from_pretrained(tmp_path / "encoder")
    student = pretrained_classifier(NUM_CLASSES, str(tmp_path / "encoder"), layers=[0, 3])
    layers = student.bert.encoder.layer
    assert len(layers) == 2 and student.config.num_hidden_layers == 2
    for kept, index in zip(layers, [0, 3], strict=True):
        for (name, got), (_, want) in zip(
            kept.state_dict().items(), full.encoder.layer[index].state_dict().items(), strict=True
        ):
            assert torch.equal(got, want), name
    ids = torch.tensor([[2, 7, 9, 3]])
    assert student(input_ids=ids).logits.shape == (1, NUM_CLASSES)
    student.save_pretrained(tmp_path / "student")  # written as a 2-layer model, read back as one
    again = sequence_classifier(str(tmp_path / "student"), num_labels=NUM_CLASSES).eval()
    assert again.config.num_hidden_layers == 2
    torch.testing.assert_close(again(input_ids=ids).logits, student.eval()(input_ids=ids).logits)
    for bad in ([], [1, 1], [2, 1], [0, 4]):
        with pytest.raises(ConfigurationError, match=r"`layers` must be increasing indices in \[0, 4\)"):
            keep_layers(transformers.BertModel(config), bad)
    with pytest.raises(ConfigurationError, match=r"no `config\.num_hidden_layers`"):
        keep_layers(torch.nn.Linear(2, 2), [0])
