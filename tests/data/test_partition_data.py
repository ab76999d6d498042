"""Partitions that read the data (a column, the inputs) through PartitionedDataModule; per-party test sets."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
import torch
from conftest import tiny_trainer
from test_datamodules import make
from torch.utils.data import DataLoader

from kdlightning import BatchedMembers, StudentOnly
from kdlightning.data import (
    DatasetSource,
    Digits,
    DirichletPartitioner,
    FeatureSkewPartitioner,
    HFDataset,
    IIDPartitioner,
    LabelledData,
    LabelSkewPartitioner,
    NaturalPartitioner,
    PartitionedDataModule,
    Partitioner,
    mean_intensity,
)
from kdlightning.models import MLP

NUM_WRITERS = 30


class Authored(DatasetSource):
    """The digits with a writer (30 of them, of unequal output) and an age for each training image."""

    def load(self) -> LabelledData:
        data = Digits().load()
        rng = np.random.default_rng(0)
        n = len(data.train_labels)
        writer = rng.choice(NUM_WRITERS, n, p=rng.dirichlet(np.ones(NUM_WRITERS)))
        writer[:NUM_WRITERS] = np.arange(NUM_WRITERS)  # every writer present
        columns = {"writer": np.array([f"w{k:02d}" for k in writer]), "age": rng.normal(40, 10, n)}
        return LabelledData(
            data.train_inputs, data.train_labels, data.test_inputs, data.test_labels, 10, train_columns=columns
        )


def pool_of(dm: PartitionedDataModule) -> np.ndarray:
    return np.setdiff1d(np.arange(dm.pool_size), dm.public_index)


# --------------------------------------------------------------------------------------------
# The hook: partition_data
# --------------------------------------------------------------------------------------------


class Recording(Partitioner):
    """Splits by the parity of each sample's pool index, recording what it was given."""

    name = "recording"
    calls: ClassVar[list] = []

    def partition(self, labels, num_parties, seed):
        raise AssertionError("the datamodule calls partition_data")

    def partition_data(self, data, pool, num_parties, seed):
        Recording.calls.append((data, np.asarray(pool).copy(), num_parties, seed))
        pool = np.asarray(pool)
        return [np.flatnonzero(pool % num_parties == party) for party in range(num_parties)]


def test_the_pool_is_split_by_partition_data() -> None:
    Recording.calls = []
    dm = make(partitioner=Recording(), num_parties=2, public_fraction=0.2, seed=3)
    [(data, pool, parties, seed)] = Recording.calls
    assert data is dm.data and (parties, seed) == (2, 3)
    np.testing.assert_array_equal(pool, pool_of(dm))  # the pool less the public split
    for party, part in enumerate(dm.parts):  # positions in the pool, mapped back to sample indices
        assert np.all(part % 2 == party) and set(part) <= set(pool)


@pytest.mark.parametrize(
    "partitioner", [IIDPartitioner(), DirichletPartitioner(alpha=0.3), LabelSkewPartitioner(classes_per_party=4)]
)
@pytest.mark.parametrize("public_fraction", [0.0, 0.2])
def test_a_label_partition_splits_the_pool_s_labels_as_it_always_has(partitioner, public_fraction: float) -> None:
    dm = make(partitioner=partitioner, num_parties=4, public_fraction=public_fraction, seed=5)
    labels = dm.data.train_labels
    pool = np.arange(len(labels))
    if public_fraction:
        shuffled = np.random.default_rng(5).permutation(pool)
        pool = np.sort(shuffled[round(public_fraction * len(pool)) :])
    expected = [pool[part] for part in partitioner.partition(labels[pool], 4, 5)]
    assert all(np.array_equal(a, b) for a, b in zip(dm.parts, expected, strict=True))


@pytest.mark.parametrize("public_fraction", [0.0, 0.1])
def test_a_natural_partition_of_a_data_module(public_fraction: float) -> None:
    source = Authored()
    writer = source.data().train_columns["writer"]
    one_each = make(
        dataset=source,
        partitioner=NaturalPartitioner("writer"),
        num_parties=NUM_WRITERS,
        public_fraction=public_fraction,
    )
    pool = pool_of(one_each)
    for party, part in enumerate(one_each.parts):
        assert set(writer[part].tolist()) == {f"w{party:02d}"}  # party p: the p-th writer's images
    assert np.array_equal(np.sort(np.concatenate(one_each.parts)), pool)
    grouped = make(dataset=source, partitioner=NaturalPartitioner("writer"), num_parties=4, public_fraction=0.1)
    held = [set(writer[part].tolist()) for part in grouped.parts]
    assert sum(len(writers) for writers in held) == NUM_WRITERS  # every writer whole in one party
    assert len(set().union(*held)) == NUM_WRITERS


def test_a_feature_skew_partition_of_a_data_module() -> None:
    dm = make(partitioner=FeatureSkewPartitioner(strictness=1.0), num_parties=3, public_fraction=0.1)
    brightness = mean_intensity(dm.data.train_inputs)
    for darker, brighter in zip(dm.parts, dm.parts[1:], strict=False):
        assert brightness[darker].max() <= brightness[brighter].min()
    by_age = make(dataset=Authored(), partitioner=FeatureSkewPartitioner("age", strictness=1.0), num_parties=2)
    age = by_age.data.train_columns["age"]
    assert age[by_age.parts[0]].max() <= age[by_age.parts[1]].min()


def test_a_column_the_data_set_lacks_is_refused_at_setup_naming_the_columns() -> None:
    dm = PartitionedDataModule(dataset=Authored(), partitioner=NaturalPartitioner("author"))
    with pytest.raises(ValueError, match=r"got 'author'; the data set's columns: \['age', 'writer'\]"):
        dm.setup("fit")
    dm = PartitionedDataModule(partitioner=NaturalPartitioner("author"))  # the digits: no column at all
    with pytest.raises(ValueError, match=r"the data set's columns: \[\]"):
        dm.setup("fit")


def test_train_columns_need_one_value_per_training_sample() -> None:
    x, y = np.zeros((4, 2)), np.zeros(4, dtype=np.int64)
    assert LabelledData(x, y, x, y, 2).train_columns == {}
    with pytest.raises(
        ValueError, match=r"`train_columns\['a'\]` must hold one value per training sample \(4\), got 3"
    ):
        LabelledData(x, y, x, y, 2, train_columns={"a": np.arange(3)})
    with pytest.raises(ValueError, match="got no length"):
        LabelledData(x, y, x, y, 2, train_columns={"a": np.float64(3.0)})


# --------------------------------------------------------------------------------------------
# HFDataset keeps named columns
# --------------------------------------------------------------------------------------------


def write_csv(tmp_path: Path, rows: int = 60) -> dict[str, str]:
    lines = ["f1,f2,row,author,label"] + [f"{i},{i % 7},{i},a{i % 4},{i % 3}" for i in range(rows)]
    (tmp_path / "train.csv").write_text("\n".join(lines))
    (tmp_path / "test.csv").write_text("\n".join(lines[:13]))
    return {"train": str(tmp_path / "train.csv"), "test": str(tmp_path / "test.csv")}


def test_hf_dataset_keeps_named_columns_aligned_with_the_training_rows(tmp_path: Path) -> None:
    files = write_csv(tmp_path)
    plain = HFDataset("csv", data_files=files, input_column=["f1", "f2"])
    assert "keep_columns" not in vars(plain)  # a source keeping nothing has the configuration it always had
    assert plain.data().train_columns == {}
    # a held-out test share and a subset of the pool: the kept columns follow the rows kept
    source = HFDataset(
        "csv",
        data_files={"train": files["train"]},
        input_column=["f1", "f2"],
        test_split=None,
        train_size=30,
        keep_columns=["author", "row"],
    )
    data = source.data()
    row, author = data.train_columns["row"], data.train_columns["author"]
    assert len(row) == len(data.train_labels) == 30
    np.testing.assert_array_equal(data.train_inputs[:, 0], row)
    assert author.tolist() == [f"a{i % 4}" for i in row]
    np.testing.assert_array_equal(data.train_labels, row % 3)
    dm = make(dataset=source, partitioner=NaturalPartitioner("author"), num_parties=4)
    assert [set(author[part].tolist()) for part in dm.parts] == [{"a0"}, {"a1"}, {"a2"}, {"a3"}]


def test_hf_dataset_refuses_a_column_to_keep_it_does_not_have(tmp_path: Path) -> None:
    files = write_csv(tmp_path)
    source = HFDataset("csv", data_files=files, input_column=["f1", "f2"], keep_columns=["user"])
    with pytest.raises(ValueError, match=r"Columns \['user'\] not in data set 'csv'; it has \['f1', 'f2', 'row', "):
        source.data()
    with pytest.raises(ValueError, match="`keep_columns` must be a list of column names, got 'user'"):
        HFDataset("csv", data_files=files, keep_columns="user")  # type: ignore[arg-type]


# --------------------------------------------------------------------------------------------
# Per-party test sets with the party's label mix
# --------------------------------------------------------------------------------------------


def splits(dm: PartitionedDataModule) -> list[np.ndarray]:
    return [*dm.parts, dm.public_index, dm.train_set.index, dm.val_set.index, dm.test_set.index]


def test_party_test_is_off_by_default_and_changes_nothing_else() -> None:
    options = {"partitioner": DirichletPartitioner(alpha=0.3), "public_fraction": 0.1, "partition_id": 1}
    off, on = make(**options), make(**options, party_test=True)
    assert isinstance(off.test_dataloader(), DataLoader)
    assert off.party_test_index.size == 0 and not hasattr(off, "party_test_set")
    assert all(np.array_equal(a, b) for a, b in zip(splits(off), splits(on), strict=True))
    loaders = on.test_dataloader()
    assert isinstance(loaders, list) and len(loaders) == 2
    assert loaders[0].dataset.dataset is on.test_set and loaders[1].dataset.dataset is on.party_test_set


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("party", [0, 2])
def test_a_party_test_set_has_the_party_s_label_mix(seed: int, party: int) -> None:
    dm = make(partitioner=DirichletPartitioner(alpha=0.3), partition_id=party, seed=seed, party_test=True)
    data = dm.data
    own = np.bincount(data.train_labels[dm._train_val(party)[0]], minlength=10)
    index = dm.party_test_index
    got = np.bincount(data.test_labels[index], minlength=10)
    assert np.all(np.abs(got - index.size * own / own.sum()) < 1)  # the party's proportions, within rounding
    assert np.unique(index).size == index.size and index.max() < len(data.test_labels)  # no repeats, in the test set
    have = np.bincount(data.test_labels, minlength=10)
    assert np.any((index.size + 1) * own / own.sum() > have)  # as large as the global test set allows
    assert np.array_equal(dm.party_test_set.index, index)
    again = make(partitioner=DirichletPartitioner(alpha=0.3), partition_id=party, seed=seed, party_test=True)
    assert np.array_equal(again.party_test_index, index)  # the same draw for the same seed and party
    other = make(partitioner=DirichletPartitioner(alpha=0.3), partition_id=1 - party // 2, seed=seed, party_test=True)
    assert not np.array_equal(other.party_test_index, index)


def accuracy(network: torch.nn.Module, inputs: np.ndarray, labels: np.ndarray) -> float:
    with torch.no_grad():
        predicted = network(torch.from_numpy(inputs)).argmax(dim=-1).numpy()
    return float((predicted == labels).mean())


def test_a_method_is_tested_on_both_loaders_under_lightnings_names(tmp_path: Path) -> None:
    torch.manual_seed(0)
    options = {"partitioner": LabelSkewPartitioner(classes_per_party=3), "num_parties": 4, "batch_size": 50}
    dm = PartitionedDataModule(**options, party_test=True)
    network = MLP(num_classes=10, in_features=64, hidden_sizes=(16,))
    model = StudentOnly(network, num_classes=10, optimizer=lambda params: torch.optim.Adam(params, lr=0.02))
    trainer = tiny_trainer(tmp_path, max_epochs=3)
    trainer.fit(model, datamodule=dm)
    results = trainer.test(model, datamodule=dm, verbose=False)
    assert set(results[0]) == {"test/acc/dataloader_idx_0", "test/loss/dataloader_idx_0"}
    assert set(results[1]) == {"test/acc/dataloader_idx_1", "test/loss/dataloader_idx_1"}
    data, student = dm.data, model.student.eval()
    assert results[0]["test/acc/dataloader_idx_0"] == pytest.approx(
        accuracy(student, data.test_inputs, data.test_labels)
    )
    party = dm.party_test_index
    expected = accuracy(student, data.test_inputs[party], data.test_labels[party])
    assert results[1]["test/acc/dataloader_idx_1"] == pytest.approx(expected)
    assert expected > 0.5 > results[0]["test/acc/dataloader_idx_0"]  # the party knows its own classes only
    alone = trainer.test(model, datamodule=PartitionedDataModule(**options), verbose=False)
    assert alone == [
        {
            "test/acc": results[0]["test/acc/dataloader_idx_0"],
            "test/loss": pytest.approx(results[0]["test/loss/dataloader_idx_0"]),
        }
    ]


def test_batched_members_are_tested_on_both_loaders(tmp_path: Path) -> None:
    torch.manual_seed(1)
    networks = {name: MLP(num_classes=10, in_features=64, hidden_sizes=(8,)) for name in ("a", "b")}
    batched = BatchedMembers({name: StudentOnly(copy.deepcopy(net), 10) for name, net in networks.items()})
    dm = PartitionedDataModule(partitioner=LabelSkewPartitioner(classes_per_party=3), num_parties=4, party_test=True)
    results = tiny_trainer(tmp_path).test(batched, datamodule=dm, verbose=False)
    logged = {key: value for result in results for key, value in result.items()}
    data, party = dm.data, dm.party_test_index
    for name, network in networks.items():
        expected = accuracy(network.eval(), data.test_inputs[party], data.test_labels[party])
        assert logged[f"test/acc_{name}/dataloader_idx_1"] == pytest.approx(expected)
        assert logged[f"test/acc_{name}"] == pytest.approx(accuracy(network, data.test_inputs, data.test_labels))
