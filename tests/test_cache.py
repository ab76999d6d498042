"""The teacher-output cache: same results, fewer teacher forwards, on disk, refusing random transforms."""

from __future__ import annotations

import copy
import random
import re
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from conftest import tiny_trainer
from torch import nn

from kdlightning import DataPartitioningKD, DeepMutualLearning, VanillaKD
from kdlightning.cache import (
    CacheReferenceOutputs,
    OutputStore,
    check_deterministic_transfer,
    module_fingerprint,
    transfer_fingerprint,
)
from kdlightning.data import DigitsDataModule, PartitionedDataModule
from kdlightning.models import MLP, SmallCNN


class Counting(nn.Module):
    """Wraps a network and counts the samples it sees."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.samples = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.samples += x.shape[0]
        return self.network(x)


def networks(seed: int = 0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(seed)
    return MLP(num_classes=10, in_features=64, hidden_sizes=(16,)), SmallCNN(num_classes=10, channels=(8, 16))


def fit(model: L.LightningModule, tmp_path: Path, epochs: int = 3, callbacks: list | None = None, **data) -> L.Trainer:
    L.seed_everything(0, verbose=False)
    trainer = tiny_trainer(tmp_path, max_epochs=epochs, limit_val_batches=2, callbacks=callbacks or [])
    trainer.fit(model, datamodule=DigitsDataModule(batch_size=64, **data))
    return trainer


@pytest.mark.parametrize("method", [VanillaKD, DataPartitioningKD])
def test_cached_training_equals_uncached(method, tmp_path: Path) -> None:
    student, teacher = networks()
    plain = method(copy.deepcopy(student), Counting(copy.deepcopy(teacher)), 10)
    cached = method(copy.deepcopy(student), Counting(copy.deepcopy(teacher)), 10)
    fit(plain, tmp_path / "plain")
    trainer = fit(cached, tmp_path / "cached", callbacks=[CacheReferenceOutputs()])
    # Equal up to float rounding: uncached epochs run the teacher on other batch compositions.
    for key, value in plain.student.state_dict().items():
        torch.testing.assert_close(cached.student.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)
    train_size = len(trainer.datamodule.train_set)
    assert plain.teacher.samples == 3 * train_size
    assert cached.teacher.samples == train_size  # the first epoch only


def test_cache_on_disk_is_shared_across_runs_and_keyed_by_weights(tmp_path: Path) -> None:
    student, teacher = networks()
    cache = tmp_path / "cache"
    first = VanillaKD(copy.deepcopy(student), Counting(copy.deepcopy(teacher)), 10, alpha=0.9)
    fit(first, tmp_path / "a", epochs=1, callbacks=[CacheReferenceOutputs(cache_dir=str(cache))])
    assert first.teacher.samples > 0
    assert len(list(cache.glob("*.pt"))) == 1

    again = VanillaKD(copy.deepcopy(student), Counting(copy.deepcopy(teacher)), 10, temperature=2.0)
    fit(again, tmp_path / "b", epochs=2, callbacks=[CacheReferenceOutputs(cache_dir=str(cache))])
    assert again.teacher.samples == 0  # another trial, same teacher and data: nothing recomputed

    _, other_teacher = networks(seed=1)
    changed = VanillaKD(copy.deepcopy(student), Counting(other_teacher), 10)
    fit(changed, tmp_path / "c", epochs=1, callbacks=[CacheReferenceOutputs(cache_dir=str(cache))])
    assert changed.teacher.samples > 0  # other weights, other key
    assert len(list(cache.glob("*.pt"))) == 2
    assert not list(cache.glob(".*tmp"))  # no half-written file left behind


def test_every_frozen_reference_is_cached(tmp_path: Path) -> None:
    student, teacher = networks()
    model = DataPartitioningKD(student, Counting(teacher), 10)
    model.initial_student = Counting(model.initial_student)  # re-registered below to count its forwards
    model.add_frozen("initial_student", model.initial_student)
    callback = CacheReferenceOutputs()
    fit(model, tmp_path, epochs=2, callbacks=[callback])
    assert set(callback.stores) == {"teacher", "initial_student"}
    train_size = model.teacher.samples
    assert model.initial_student.samples == train_size
    assert all(store.fraction_filled > 0 for store in callback.stores.values())


class Noise:
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x + 0.1 * torch.randn_like(x)


class Flip:
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1)


def test_a_random_transform_is_refused(tmp_path: Path) -> None:
    student, teacher = networks()
    model = VanillaKD(student, teacher, 10)
    with pytest.raises(ValueError, match=r"train_transform .*Noise.* is random"):
        fit(model, tmp_path, epochs=1, callbacks=[CacheReferenceOutputs()], train_transform=Noise())


def test_a_deterministic_transform_is_served(tmp_path: Path) -> None:
    student, teacher = networks()
    model = VanillaKD(student, Counting(teacher), 10)
    trainer = fit(model, tmp_path, epochs=2, callbacks=[CacheReferenceOutputs()], train_transform=Flip())
    assert model.teacher.samples == len(trainer.datamodule.train_set)


def test_a_datamodule_without_indices_is_refused(tmp_path: Path, datamodule) -> None:
    from conftest import TinyNet

    model = VanillaKD(TinyNet(), TinyNet(), 4)
    trainer = tiny_trainer(tmp_path, callbacks=[CacheReferenceOutputs()], limit_train_batches=1)
    with pytest.raises(ValueError, match=r"sample indices \(x, y, index\)"):
        trainer.fit(model, datamodule=datamodule)


def test_the_cache_keys_and_probes_what_the_datamodule_exposes(tmp_path: Path) -> None:
    """The datamodule only serves data: the cache keys and probes it from what it exposes."""
    assert not hasattr(PartitionedDataModule, "fingerprint")
    assert not hasattr(PartitionedDataModule, "check_deterministic_transfer")
    student, teacher = networks()
    data = DigitsDataModule(batch_size=64)
    model = VanillaKD(student, Counting(teacher), 10)
    trainer = tiny_trainer(tmp_path, max_epochs=2, limit_val_batches=0, callbacks=[CacheReferenceOutputs()])
    trainer.fit(model, datamodule=data)
    assert model.teacher.samples == len(data.train_set)  # served from the store in epoch two
    assert transfer_fingerprint(data) == transfer_fingerprint(DigitsDataModule())
    assert transfer_fingerprint(data) != transfer_fingerprint(DigitsDataModule(train_transform=Flip()))
    with pytest.raises(ValueError, match="is random"):
        check_deterministic_transfer(DigitsDataModule(train_transform=Noise()))


def test_dml_has_no_frozen_reference_to_cache(tmp_path: Path) -> None:
    student, peer = networks()
    callback = CacheReferenceOutputs()
    fit(DeepMutualLearning(student, peer, 10), tmp_path, epochs=1, callbacks=[callback])
    assert callback.stores == {}


def test_output_store_round_trip_and_merge(tmp_path: Path) -> None:
    store = OutputStore(10, 3)
    assert store.get(torch.tensor([1, 2])) is None
    store.put(torch.tensor([1, 2]), torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
    assert store.get(torch.tensor([1, 3])) is None  # all or nothing
    torch.testing.assert_close(store.get(torch.tensor([2, 1])), torch.tensor([[4.0, 5.0, 6.0], [1.0, 2.0, 3.0]]))
    store.save(tmp_path / "s.pt")
    other = OutputStore(10, 3)
    other.put(torch.tensor([7]), torch.tensor([[7.0, 7.0, 7.0]]))
    assert other.load(tmp_path / "s.pt")
    assert other.fraction_filled == pytest.approx(0.3)
    assert not OutputStore(11, 3).load(tmp_path / "s.pt")  # another index space: ignored
    assert not OutputStore(10, 3).load(tmp_path / "missing.pt")


def test_module_fingerprint_follows_weights_and_buffers() -> None:
    _, teacher = networks()
    same = copy.deepcopy(teacher)
    assert module_fingerprint(teacher) == module_fingerprint(same)
    same.features[1].running_mean += 1  # a BN statistic changes the outputs, so the key
    assert module_fingerprint(teacher) != module_fingerprint(same)


class TorchFlip:
    """torchvision's RandomHorizontalFlip(p=0.5): one `torch.rand(1) < p` draw per call."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1) if torch.rand(1) < 0.5 else x


class PythonFlip:
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1) if random.random() < 0.5 else x


class NumpyFlip:
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.flip(-1) if np.random.rand() < 0.5 else x


@pytest.mark.parametrize("transform", [TorchFlip(), PythonFlip(), NumpyFlip()], ids=lambda t: type(t).__name__)
def test_a_coin_flip_transform_of_any_random_source_is_refused(transform, tmp_path: Path) -> None:
    student, teacher = networks()
    model = VanillaKD(student, teacher, 10)
    with pytest.raises(ValueError, match=rf"train_transform .*{type(transform).__name__}.* is random"):
        fit(model, tmp_path, epochs=1, callbacks=[CacheReferenceOutputs()], train_transform=transform)


def test_class_count_mismatch_with_the_cache_names_both_shapes(tmp_path: Path) -> None:
    student, _ = networks()
    model = VanillaKD(student, MLP(num_classes=13, in_features=64, hidden_sizes=(16,)), 10)
    with pytest.raises(ValueError, match=r"teacher.*\(64, 13\).*\(64, 10\)"):
        fit(model, tmp_path, epochs=1, callbacks=[CacheReferenceOutputs()])


def test_the_key_covers_the_precision(tmp_path: Path) -> None:
    student, teacher = networks()
    cache = tmp_path / "cache"
    computed = []
    for precision in ("32-true", "bf16-mixed", "32-true"):
        model = VanillaKD(copy.deepcopy(student), Counting(copy.deepcopy(teacher)), 10)
        L.seed_everything(0, verbose=False)
        callbacks = [CacheReferenceOutputs(cache_dir=str(cache))]
        trainer = tiny_trainer(
            tmp_path / precision, precision=precision, limit_train_batches=2, limit_val_batches=0, callbacks=callbacks
        )
        trainer.fit(model, datamodule=DigitsDataModule(batch_size=64))
        computed.append(model.teacher.samples)
    assert len(list(cache.glob("*.pt"))) == 2  # one per precision
    assert computed == [128, 128, 0]  # the second 32-true run reads the first's outputs


def test_an_unreadable_cache_file_is_a_miss_that_gets_rewritten(tmp_path: Path) -> None:
    student, teacher = networks()
    cache = tmp_path / "cache"
    first = VanillaKD(copy.deepcopy(student), Counting(copy.deepcopy(teacher)), 10)
    fit(first, tmp_path / "a", epochs=1, callbacks=[CacheReferenceOutputs(cache_dir=str(cache))])
    (path,) = cache.glob("*.pt")
    path.write_bytes(path.read_bytes()[:100])  # truncated, as by a full disk

    again = VanillaKD(copy.deepcopy(student), Counting(copy.deepcopy(teacher)), 10)
    with pytest.warns(UserWarning, match=rf"cache file '{re.escape(str(path))}'.*recomputed"):
        fit(again, tmp_path / "b", epochs=1, callbacks=[CacheReferenceOutputs(cache_dir=str(cache))])
    assert again.teacher.samples > 0
    values = torch.load(path, weights_only=True)["values"]  # rewritten whole at the end of fit
    store = OutputStore(*values.shape)
    assert store.load(path)
    assert store.fraction_filled > 0


def test_a_store_file_of_another_kind_is_a_miss(tmp_path: Path) -> None:
    path = tmp_path / "store.pt"
    torch.save({"values": torch.zeros(4, 3)}, path)  # no 'filled' mask
    with pytest.warns(UserWarning, match=rf"'{re.escape(str(path))}'.*'filled'"):
        assert not OutputStore(4, 3).load(path)
