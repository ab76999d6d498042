"""PartitionedDataModule: a party's train / validation / transfer / test sets."""

from __future__ import annotations

import contextlib
import os
import random
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import tiny_trainer
from torch.utils.data import default_collate

from kdlightning import StudentOnly
from kdlightning.cache import check_deterministic_transfer
from kdlightning.callbacks import LogPartition
from kdlightning.data import (
    DatasetSource,
    Digits,
    DigitsDataModule,
    DirichletPartitioner,
    FashionMNIST,
    IIDPartitioner,
    LabelledData,
    LabelSkewPartitioner,
    PartitionedDataModule,
)
from kdlightning.models import MLP


def indices(dataset) -> set[bytes]:
    """Fingerprints of a data set's samples (its rows), to compare sets across splits."""
    return {x.numpy().tobytes() for x, _ in dataset}


def make(**kwargs) -> PartitionedDataModule:
    options = {"partitioner": DirichletPartitioner(alpha=0.5), "num_parties": 3, "partition_id": 0}
    options.update(kwargs)
    dm = PartitionedDataModule(**options)
    dm.setup("fit")
    return dm


def test_party_splits_are_disjoint_and_inside_the_party() -> None:
    dm = make()
    train, val = dm._train_val(0)
    assert not set(train) & set(val)
    assert set(train) | set(val) == set(dm.parts[0])
    assert len(val) == round(0.1 * len(dm.parts[0]))
    assert len(dm.train_set) == len(train)
    assert len(dm.val_set) == len(val)
    assert len(dm.test_set) == 360  # the global test set: 20% of the 1,797 digits
    assert dm.num_classes == 10


def test_partition_covers_the_pool_once() -> None:
    dm = make(public_fraction=0.2)
    everything = np.concatenate([*dm.parts, dm.public_index])
    assert len(everything) == len(np.unique(everything)) == len(dm.data.train_labels)
    assert len(dm.public_index) == round(0.2 * len(dm.data.train_labels))


@pytest.mark.parametrize("transfer", ["own", "teacher", "union", "public"])
def test_transfer_sets(transfer: str) -> None:
    dm = make(transfer=transfer, public_fraction=0.1, teacher_partition_id=2)
    own, own_val = dm._train_val(0)
    teacher, _ = dm._train_val(2)
    expected = {"own": own, "teacher": teacher, "union": np.union1d(own, teacher), "public": dm.public_index}[transfer]
    np.testing.assert_array_equal(dm.transfer_index(), expected)
    assert len(dm.train_set) == len(expected)
    assert not set(dm.transfer_index()) & set(own_val)  # validation stays unseen by training
    assert len(dm.val_set) == len(own_val)  # validation is always the student party's own


@pytest.mark.parametrize(
    "partitioner", [IIDPartitioner(), DirichletPartitioner(alpha=0.1), LabelSkewPartitioner(classes_per_party=4)]
)
def test_public_validation_is_held_out_before_partitioning_and_never_trained_on(partitioner) -> None:
    parties = [
        make(partitioner=partitioner, partition_id=p, public_fraction=0.1, validation="public") for p in range(3)
    ]
    public = parties[0].public_index
    for dm in parties:
        np.testing.assert_array_equal(dm.public_index, public)  # one split, whichever party or method asks
        assert indices(dm.val_set) == {dm.data.train_inputs[i].tobytes() for i in public}
        for transfer in ("own", "teacher", "union"):
            dm.transfer = transfer
            assert not set(dm.transfer_index()) & set(public)  # never trained on
        assert not set(np.concatenate(dm.parts)) & set(public)  # owned by no party: held out before partitioning
    # the same public split under every partitioner: drawn from the pool before the partition, by seed alone
    np.testing.assert_array_equal(make(partitioner=IIDPartitioner(), public_fraction=0.1).public_index, public)
    # drawn like the test set: every class, in about the pool's proportions
    labels = parties[0].data.train_labels
    shares = np.bincount(labels[public], minlength=10) / len(public)
    assert np.abs(shares - np.bincount(labels, minlength=10) / len(labels)).max() < 0.06
    # `own` reads the party's held-out share instead
    own = make(partitioner=partitioner, partition_id=1, public_fraction=0.1)
    assert indices(own.val_set) == {own.data.train_inputs[i].tobytes() for i in own._train_val(1)[1]}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"validation": "public"}, "public_fraction"),
        ({"validation": "public", "public_fraction": 0.1, "transfer": "public"}, "validation"),
        ({"validation": "theirs"}, "validation"),
        ({"validation": ["own", "own"], "public_fraction": 0.1}, "distinct splits"),
        ({"validation": ["own", "public"]}, "public_fraction"),
        ({"validation": []}, "distinct splits"),
    ],
)
def test_bad_validation_names_itself(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PartitionedDataModule(**kwargs)


def test_validation_on_both_splits_gives_a_loader_per_split_in_order() -> None:
    both = make(
        partitioner=DirichletPartitioner(alpha=0.5), partition_id=1, public_fraction=0.1, validation=["public", "own"]
    )
    loaders = both.val_dataloader()
    assert isinstance(loaders, list) and len(loaders) == 2
    for split, loader in zip(("public", "own"), loaders, strict=True):
        alone = make(partitioner=DirichletPartitioner(alpha=0.5), partition_id=1, public_fraction=0.1, validation=split)
        assert indices(loader.dataset) == indices(alone.val_set)
    assert indices(both.val_set) == indices(loaders[0].dataset)  # `val_set`: the first split
    assert not isinstance(make(public_fraction=0.1, validation="public").val_dataloader(), list)


def sample_by_sample(loader) -> list:
    """``loader``'s batches as PyTorch's default collate builds them from one sample at a time."""
    dataset, batches = loader.dataset, []
    for rows in loader.batch_sampler:
        batches.append(default_collate([dataset[i] for i in rows]))
    return batches


@pytest.mark.parametrize("transform", [None, lambda x: x * 2.0])
def test_a_batch_read_whole_is_the_batch_read_sample_by_sample(transform) -> None:
    """The loaders read a batch of numeric untransformed samples in one gather per field: the same batch."""
    dm = make(train_transform=transform, batch_size=16)
    train = dm.train_dataloader()
    for loader, dataset in (
        (train, dm.train_set),
        (dm.val_dataloader(), dm.val_set),
        (dm.test_dataloader(), dm.test_set),
    ):
        whole = transform is None or loader is not train  # a transform is per sample
        assert dataset.gathers == whole and (loader.dataset is not dataset) == whole
        loader_batches, expected = list(loader), sample_by_sample(loader)
        assert len(loader_batches) == len(expected) > 1
        for batch, reference in zip(loader_batches, expected, strict=True):
            assert type(batch) is type(reference) and len(batch) == len(reference)
            for got, want in zip(batch, reference, strict=True):
                assert got.dtype == want.dtype and torch.equal(got, want)


def test_same_split_in_every_process_whatever_the_global_rng() -> None:
    """Two ranks build their datamodules independently; global RNG state must not matter."""
    np.random.seed(1)
    torch.manual_seed(1)
    rank0 = make(partitioner=LabelSkewPartitioner(classes_per_party=4))
    np.random.seed(2)
    torch.manual_seed(2)
    rank1 = make(partitioner=LabelSkewPartitioner(classes_per_party=4))
    for a, b in zip(rank0.parts, rank1.parts, strict=True):
        np.testing.assert_array_equal(a, b)
    assert indices(rank0.val_set) == indices(rank1.val_set)
    assert not np.array_equal(make(seed=1).parts[0], make(seed=0).parts[0])


def test_nothing_is_read_in_init(tmp_path: Path) -> None:
    dm = PartitionedDataModule(dataset=FashionMNIST(root=str(tmp_path / "missing")))
    assert dm.num_classes == 10  # known without reading the files
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        dm.setup("fit")


class CountingSource(DatasetSource):
    """A source that counts its loads; its class count is known only from the data."""

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.loads = 0

    def load(self) -> LabelledData:
        self.loads += 1
        return Digits(seed=self.seed).load()


def test_a_source_loads_once_and_its_datamodules_share_the_arrays() -> None:
    source = CountingSource()
    first, second = (PartitionedDataModule(dataset=source, num_parties=2, partition_id=p) for p in (0, 1))
    assert source.loads == 0  # nothing read in __init__
    first.setup("fit")
    second.setup("fit")
    assert source.loads == 1
    assert first.data is second.data is source.data()
    assert vars(source) == {"seed": 0, "loads": 1}  # the loaded data is not part of the source's configuration
    assert CountingSource(seed=1).data() is not source.data()  # a source of another configuration loads its own
    assert CountingSource().data() is source.data()  # one of the same configuration shares the arrays in use


def test_num_classes_does_not_load_a_source_that_knows_it() -> None:
    class Known(CountingSource):
        def known_num_classes(self) -> int:
            return 10

    known, unknown = Known(), CountingSource()
    assert PartitionedDataModule(dataset=known).num_classes == 10
    assert known.loads == 0
    assert PartitionedDataModule(dataset=unknown).num_classes == 10  # read from the data, loaded once
    assert PartitionedDataModule(dataset=unknown).num_classes == 10
    assert unknown.loads == 1
    assert Digits().num_classes == 10


def test_a_copied_or_pickled_source_carries_no_data() -> None:
    import copy
    import pickle

    source = Digits(seed=3)
    source.data()
    for clone in (copy.deepcopy(source), pickle.loads(pickle.dumps(source))):
        assert vars(clone) == vars(source)
        assert getattr(clone, "_loaded", None) is None
        np.testing.assert_array_equal(clone.data().train_labels, source.data().train_labels)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"num_parties": 0}, "num_parties"),
        ({"num_parties": 2, "partition_id": 2}, "partition_id"),
        ({"transfer": "teacher", "teacher_partition_id": 0}, "teacher_partition_id"),
        ({"transfer": "public"}, "public_fraction"),
        ({"public_fraction": 1.0}, "public_fraction"),
        ({"val_fraction": 0.0}, "val_fraction"),
        ({"transfer": "everything"}, "transfer"),
    ],
)
def test_bad_arguments_name_themselves(kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        PartitionedDataModule(**kwargs)


def test_a_party_too_small_for_a_validation_split_is_reported() -> None:
    dm = PartitionedDataModule(partitioner=IIDPartitioner(), num_parties=1437, partition_id=3)  # one sample each
    with pytest.raises(ValueError, match=r"Party 3 has 1 samples"):
        dm.setup("fit")


def test_partition_stats_are_logged_once_with_a_plot(tmp_path: Path) -> None:
    dm = PartitionedDataModule(partitioner=DirichletPartitioner(alpha=0.3), num_parties=4, partition_id=1)
    model = StudentOnly(MLP(num_classes=10, in_features=64, hidden_sizes=(8,)), num_classes=10)
    logger = L.pytorch.loggers.CSVLogger(tmp_path)
    trainer = tiny_trainer(
        tmp_path, logger=logger, limit_train_batches=1, limit_val_batches=1, callbacks=[LogPartition()]
    )
    trainer.fit(model, datamodule=dm)
    trainer.validate(model, datamodule=dm)
    log_dir = Path(logger.log_dir)
    rows = (log_dir / "partition_stats.csv").read_text().strip().splitlines()
    assert rows[0].startswith("party,class_0")
    assert len(rows) == 1 + 4
    counts = np.array([[int(v) for v in row.split(",")[1:-1]] for row in rows[1:]])
    np.testing.assert_array_equal(counts, dm.partition_stats())
    assert counts.sum() == len(dm.data.train_labels)
    assert (log_dir / "partition_stats.png").stat().st_size > 1000


def test_without_the_callback_no_partition_is_logged(tmp_path: Path) -> None:
    dm = PartitionedDataModule(partitioner=DirichletPartitioner(alpha=0.3), num_parties=4, partition_id=1)
    model = StudentOnly(MLP(num_classes=10, in_features=64, hidden_sizes=(8,)), num_classes=10)
    logger = L.pytorch.loggers.CSVLogger(tmp_path)
    tiny_trainer(tmp_path, logger=logger, limit_train_batches=1, limit_val_batches=1).fit(model, datamodule=dm)
    assert not (Path(logger.log_dir) / "partition_stats.csv").exists()


def test_log_partition_warns_for_a_datamodule_without_a_partition(tmp_path: Path, datamodule) -> None:
    from conftest import NUM_CLASSES, TinyNet

    logger = L.pytorch.loggers.CSVLogger(tmp_path)
    trainer = tiny_trainer(
        tmp_path, logger=logger, limit_train_batches=1, limit_val_batches=0, callbacks=[LogPartition()]
    )
    with pytest.warns(UserWarning, match="LogPartition: SyntheticDataModule exposes no partition"):
        trainer.fit(StudentOnly(TinyNet(), NUM_CLASSES), datamodule=datamodule)


def test_digits_datamodule_is_one_party_of_the_bundled_digits() -> None:
    dm = DigitsDataModule(val_fraction=0.15, test_fraction=0.2)
    dm.setup("fit")
    assert len(dm.train_set) + len(dm.val_set) + len(dm.test_set) == 1797
    assert dm.num_parties == 1


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/train-labels-idx1-ubyte.gz").exists(),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)
def test_kdl_fit_on_a_dirichlet_0_1_fashion_mnist_party(tmp_path: Path, monkeypatch) -> None:
    """The shipped configs: the teacher on party 1, the KD student on party 0, Dirichlet(0.1)."""
    from kdlightning.cli import KDLightningCLI, main

    root = Path(__file__).resolve().parents[2] / "configs"
    monkeypatch.chdir(tmp_path)
    fast = [
        "--trainer.max_epochs=1",
        "--trainer.limit_train_batches=5",
        "--trainer.limit_val_batches=2",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
    ]
    base = ["-c", str(root / "_base/trainer.yaml")]
    data = ["-c", str(root / "data/fashion_mnist_dirichlet_0.1.yaml")]
    main(
        ["fit", *base, "-c", str(root / "fashion_mnist/teacher.yaml"), *data, "--data.init_args.partition_id=1", *fast]
    )
    cli = KDLightningCLI(args=["fit", *base, "-c", str(root / "fashion_mnist/vanilla_kd.yaml"), *data, *fast])
    dm = cli.datamodule
    assert dm.partition_id == 0
    assert str(dm.partitioner) == "dirichlet(alpha=0.1)"
    stats = dm.partition_stats()
    assert stats.sum() == 60000
    assert (stats / stats.sum(axis=0)).max() > 0.9  # alpha=0.1: most classes sit almost wholly with one party
    assert 0.0 <= cli.trainer.callback_metrics["val/acc"].item() <= 1.0
    assert os.path.isfile("runs/fashion_mnist/vanilla_kd/checkpoints/last.ckpt")


def test_partition_stats_go_to_wandb_as_a_table_and_an_image(tmp_path: Path) -> None:
    """A logger with `log_table` / `log_image` (WandbLogger's interface) gets both, once."""
    from lightning.pytorch.loggers import CSVLogger

    class TableLogger(CSVLogger):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self.tables: list[tuple] = []
            self.images: list[tuple] = []

        def log_table(self, key: str, columns: list, data: list) -> None:
            self.tables.append((key, columns, data))

        def log_image(self, key: str, images: list) -> None:
            self.images.append((key, images))

    dm = PartitionedDataModule(partitioner=LabelSkewPartitioner(classes_per_party=5), num_parties=2)
    logger = TableLogger(tmp_path)
    model = StudentOnly(MLP(num_classes=10, in_features=64, hidden_sizes=(8,)), num_classes=10)
    trainer = tiny_trainer(
        tmp_path, logger=logger, limit_train_batches=1, limit_val_batches=1, callbacks=[LogPartition()]
    )
    trainer.fit(model, datamodule=dm)
    ((key, columns, data),) = logger.tables
    assert key == "data/partition_stats"
    assert columns[:2] == ["party", "class_0"]
    assert [row[1:-1] for row in data] == dm.partition_stats().tolist()
    ((image_key, images),) = logger.images
    assert image_key == "data/partition"
    assert Path(images[0]).stat().st_size > 1000


def test_an_unknown_partition_strategy_fails_at_parse_time(capsys) -> None:
    from kdlightning.cli import KDLightningCLI

    root = Path(__file__).resolve().parents[2] / "configs"
    with pytest.raises(SystemExit):
        KDLightningCLI(
            args=[
                "-c",
                str(root / "digits/student_only.yaml"),
                "-c",
                str(root / "data/digits_iid.yaml"),
                "--data.init_args.partitioner=kdlightning.data.ZipfPartitioner",
            ],
            run=False,
        )
    assert "ZipfPartitioner" in capsys.readouterr().err


class Scale:
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return 2.0 * x


class PythonCoin:
    """Flips with probability 0.5, drawing from Python's `random` module."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1) if random.random() < 0.5 else x


class TorchCoin:
    """Flips with probability 0.5, as torchvision's RandomHorizontalFlip does."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1) if torch.rand(1) < 0.5 else x


def global_random_states() -> tuple:
    return torch.get_rng_state(), np.random.get_state()[1].copy(), random.getstate()


@pytest.mark.parametrize("transform", [Scale(), TorchCoin()], ids=lambda t: type(t).__name__)
def test_probing_a_transform_leaves_every_rng_as_it_was(transform) -> None:
    """The deterministic one passes and the random one is refused; neither moves torch, numpy or random."""
    dm = DigitsDataModule(train_transform=transform)
    before = global_random_states()
    with contextlib.nullcontext() if isinstance(transform, Scale) else pytest.raises(ValueError, match="is random"):
        check_deterministic_transfer(dm)
    after = global_random_states()
    assert torch.equal(before[0], after[0])
    assert np.array_equal(before[1], after[1])
    assert before[2] == after[2]


def test_a_python_random_transform_is_refused_whatever_the_global_state() -> None:
    dm = DigitsDataModule(train_transform=PythonCoin())
    for seed in range(64):
        random.seed(seed)
        with pytest.raises(ValueError, match=r"PythonCoin.* is random"):
            check_deterministic_transfer(dm)


def test_a_declaration_is_trusted_without_probing() -> None:
    coin, scale = TorchCoin(), Scale()
    coin.deterministic, scale.deterministic = True, False
    check_deterministic_transfer(DigitsDataModule(train_transform=coin))  # declared: not probed
    with pytest.raises(ValueError, match=r"Scale.* is random .*declares deterministic = False"):
        check_deterministic_transfer(DigitsDataModule(train_transform=scale))


def test_text_without_tokenizers_is_refused_naming_the_argument(tmp_path: Path) -> None:
    from kdlightning.data import HFDataset

    texts = tmp_path / "texts.csv"
    texts.write_text("text,label\n" + "".join(f"sample {i} words,{i % 2}\n" for i in range(40)))
    dataset = HFDataset("csv", data_files={"train": str(texts)}, input_column="text", test_split=None)
    data = PartitionedDataModule(dataset=dataset, num_parties=2)
    with pytest.raises(ValueError, match=r"inputs are text.*set `tokenizers`"):
        data.setup("fit")


def test_a_held_out_share_of_the_transfer_set_is_the_holdout_validation_split() -> None:
    dm = make(transfer="public", public_fraction=0.2, validation="holdout", holdout_fraction=0.25)
    trained, held = set(dm.train_set.index), set(dm.val_set.index)
    assert not trained & held and trained | held == set(dm.public_index)
    assert len(held) == round(0.25 * len(dm.public_index))
    again = make(transfer="public", public_fraction=0.2, validation="holdout", holdout_fraction=0.25)
    assert set(again.val_set.index) == held  # drawn by the seed: the same in every process
    assert len(make(transfer="public", public_fraction=0.2).train_set) == len(dm.public_index)  # 0: nothing held


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"validation": "holdout"}, r"`validation='holdout'` needs `holdout_fraction` > 0"),
        ({"holdout_fraction": 1.0}, r"`holdout_fraction` must lie in \[0, 1\), got 1.0"),
        ({"validation": "mine"}, r"`validation` must be 'own', 'public' or 'holdout', got 'mine'"),
    ],
)
def test_a_bad_holdout_is_refused_naming_it(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PartitionedDataModule(num_parties=2, **kwargs)
