"""The teacher-output cache: same results, fewer teacher forwards, on disk, refusing random transforms."""

from __future__ import annotations

import copy
import io
import pickle
import random
import re
import threading
import warnings
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
    assert not OutputStore(10, 4).load(tmp_path / "s.pt")  # another number of classes: ignored
    grown = OutputStore(0, 3)
    assert grown.load(tmp_path / "s.pt")  # a store grows to hold the file's rows
    torch.testing.assert_close(grown.get(torch.tensor([1, 2])), store.get(torch.tensor([1, 2])))
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


DAMAGE = {
    "truncated": lambda data: data[:100],  # as by a full disk
    "text": lambda data: b"hello world, this is a text file\n",  # torch.load: KeyError
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_an_unreadable_cache_file_is_a_miss_that_gets_rewritten(damage: str, tmp_path: Path) -> None:
    student, teacher = networks()
    cache = tmp_path / "cache"
    first = VanillaKD(copy.deepcopy(student), Counting(copy.deepcopy(teacher)), 10)
    fit(first, tmp_path / "a", epochs=1, callbacks=[CacheReferenceOutputs(cache_dir=str(cache))])
    (path,) = cache.glob("*.pt")
    path.write_bytes(DAMAGE[damage](path.read_bytes()))

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


def saved(store: dict, legacy: bool = False) -> bytes:
    buffer = io.BytesIO()
    torch.save(store, buffer, _use_new_zipfile_serialization=not legacy)
    return buffer.getvalue()


STORE = {
    "values": torch.arange(12.0).reshape(4, 3),
    "filled": torch.ones(4, dtype=torch.bool),
    "digests": torch.arange(4),
}

FOREIGN = {
    "text": b"hello world, this is a text file\n",  # KeyError
    "csv": b"text,label\ngood movie,1\n",  # IndexError
    "markdown": b"# notes\n",  # UnpicklingError
    "latin-1 text": "h\xe9llo w\xf6rld".encode("latin-1"),  # KeyError
    "empty": b"",  # EOFError
    "random bytes": bytes(random.Random(0).randrange(256) for _ in range(256)),
    "truncated store": saved(STORE)[:-100],  # RuntimeError
    "truncated legacy store": saved(STORE, legacy=True)[:18],  # struct.error
    "a pickle of something else": pickle.dumps({"values": [1, 2, 3]}, protocol=2),  # RuntimeError
    "a tensor file of something else": saved({"weights": torch.zeros(3)}),
}


@pytest.mark.parametrize("kind", FOREIGN)
def test_a_foreign_store_file_is_a_miss_with_a_warning(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "store.pt"
    path.write_bytes(FOREIGN[kind])
    store = OutputStore(4, 3)
    with pytest.warns(UserWarning, match=rf"Ignoring the teacher-output cache file '{re.escape(str(path))}'"):
        assert not store.load(path)
    assert store.fraction_filled == 0


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_store_file_cut_short_or_corrupted_anywhere_is_a_hit_or_a_miss(legacy: bool, tmp_path: Path) -> None:
    """Cut short, or one byte flipped, all along the file: ``load`` merges a store or warns, and never raises."""
    data = saved(STORE, legacy)
    places = range(0, len(data), len(data) // 250 + 1)  # some 250 places: a few seconds
    damaged = [data[:n] for n in places] + [data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :] for i in places]
    path = tmp_path / "store.pt"
    for variant in damaged:
        path.write_bytes(variant)
        store = OutputStore(4, 3)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            hit = store.load(path)
        assert hit or any("Ignoring the teacher-output cache file" in str(w.message) for w in caught)


class Lambda:
    """torchvision's ``Lambda``: wraps a function, and its repr names no parameter."""

    def __init__(self, function) -> None:
        self.lambd = function

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.lambd(x)

    def __repr__(self) -> str:
        return "Lambda()"


def shifted_by(amount: float) -> Lambda:
    return Lambda(lambda x: x + amount)


def test_a_transform_parameter_its_repr_leaves_out_changes_the_key(tmp_path: Path) -> None:
    """Stored logits are the teacher's on the inputs the transform now gives, not on yesterday's."""
    student, teacher = networks()
    cache = tmp_path / "cache"
    for amount in (0.0, 1.0):
        model = VanillaKD(copy.deepcopy(student), Counting(copy.deepcopy(teacher)), 10)
        callback = CacheReferenceOutputs(cache_dir=str(cache))
        trainer = fit(model, tmp_path / str(amount), epochs=1, callbacks=[callback], train_transform=shifted_by(amount))
        assert model.teacher.samples > 0  # computed, not read from the other shift's file
    assert len(list(cache.glob("*.pt"))) == 2
    store = callback.stores["teacher"]
    rows = store.filled.nonzero().squeeze(1)  # pool indices
    inputs = torch.from_numpy(trainer.datamodule.data.train_inputs)[rows]
    with torch.no_grad():
        expected = teacher.eval()(inputs + 1.0)
    torch.testing.assert_close(store.values[rows], expected, rtol=1e-4, atol=1e-5)


class Offset(nn.Module):
    """A teacher whose logits are shifted by a tensor that is neither parameter nor buffer."""

    def __init__(self, network: nn.Module, offset: float) -> None:
        super().__init__()
        self.network = network
        self.offset = torch.tensor(offset)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network(x) + self.offset


def test_a_tensor_setting_of_the_teacher_changes_the_key(tmp_path: Path) -> None:
    student, teacher = networks()
    cache = tmp_path / "cache"
    computed = []
    for offset in (0.0, 5.0, 5.0):
        model = VanillaKD(copy.deepcopy(student), Counting(Offset(copy.deepcopy(teacher), offset)), 10)
        fit(model, tmp_path / str(len(computed)), epochs=1, callbacks=[CacheReferenceOutputs(cache_dir=str(cache))])
        computed.append(model.teacher.samples)
    assert computed[0] == computed[1] > 0 == computed[2]  # another offset, another key; the same offset, a hit


def test_a_transform_that_cannot_be_keyed_is_refused_on_disk(tmp_path: Path) -> None:
    student, teacher = networks()
    lock = threading.Lock()

    def negate(x: torch.Tensor) -> torch.Tensor:
        with lock:
            return -x

    on_disk = [CacheReferenceOutputs(cache_dir=str(tmp_path / "cache"))]
    refused = r"train_transform Lambda\(\) cannot be keyed.*<closure lock>.*fingerprint\(\)"
    with pytest.raises(ValueError, match=refused):
        fit(
            VanillaKD(student, teacher, 10), tmp_path / "a", epochs=1, callbacks=on_disk, train_transform=Lambda(negate)
        )
    # a store kept in memory for one fit needs no key
    model = VanillaKD(student, Counting(teacher), 10)
    trainer = fit(model, tmp_path / "b", epochs=2, callbacks=[CacheReferenceOutputs()], train_transform=Lambda(negate))
    assert model.teacher.samples == len(trainer.datamodule.train_set)


def test_a_teacher_setting_that_cannot_be_keyed_is_refused_on_disk(tmp_path: Path) -> None:
    student, teacher = networks()
    teacher.guard = threading.Lock()
    on_disk = [CacheReferenceOutputs(cache_dir=str(tmp_path / "cache"))]
    refused = r"frozen reference `teacher`\. The attribute 'guard' of SmallCNN cannot be keyed.*'_guard'"
    with pytest.raises(ValueError, match=refused):
        fit(VanillaKD(student, teacher, 10), tmp_path, epochs=1, callbacks=on_disk)
