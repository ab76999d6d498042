"""The teacher-output cache with a user's own LightningDataModule: indices in its batches are all it needs."""

from __future__ import annotations

import copy
from pathlib import Path

import lightning as L
import pytest
import torch
from conftest import NUM_CLASSES, NUM_FEATURES, TinyNet, tiny_trainer
from test_cache import Counting
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from kdlightning import VanillaKD
from kdlightning.cache import CacheReferenceOutputs, NamedData, input_digests

SAMPLES = 96


class Blobs(L.LightningDataModule):
    """A plain LightningDataModule: random inputs, training batches ``(x, y, index)`` from a TensorDataset."""

    def __init__(self, shift: float = 0.0, with_index: bool = True, batch_size: int = 32) -> None:
        super().__init__()
        self.shift, self.with_index, self.batch_size = shift, with_index, batch_size

    def setup(self, stage: str | None = None) -> None:
        generator = torch.Generator().manual_seed(0)
        x = torch.randn(SAMPLES, NUM_FEATURES, generator=generator) + self.shift
        y = torch.randint(0, NUM_CLASSES, (SAMPLES,), generator=generator)
        self.train_set = TensorDataset(x, y, torch.arange(SAMPLES)) if self.with_index else TensorDataset(x, y)
        self.val_set = TensorDataset(x[:32], y[:32])

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)


class NamedBlobs(Blobs):
    """The same datamodule naming its data for the cache (:class:`~kdlightning.cache.NamedData`)."""

    def __init__(self, name: str = "blobs-v1", **kwargs) -> None:
        super().__init__(**kwargs)
        self.name = name

    def cache_key(self) -> str:
        return self.name


class Jitter(Dataset):
    """A dataset whose inputs are augmented with fresh noise on every read, with fixed indices."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor, int]:
        return self.x[i] + 0.01 * torch.randn_like(self.x[i]), self.y[i], i


class JitteredBlobs(Blobs):
    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        x, y, _ = self.train_set.tensors
        self.train_set = Jitter(x, y)


def networks() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    return TinyNet(), TinyNet()


def fit(model: L.LightningModule, data: L.LightningDataModule, root: Path, epochs: int, cache: list) -> L.Trainer:
    L.seed_everything(0, verbose=False)
    trainer = tiny_trainer(root, max_epochs=epochs, limit_val_batches=0, callbacks=cache)
    trainer.fit(model, datamodule=data)
    return trainer


def test_a_plain_datamodule_is_served_from_the_store_and_gives_the_uncached_result(tmp_path: Path) -> None:
    student, teacher = networks()
    plain = VanillaKD(copy.deepcopy(student), Counting(copy.deepcopy(teacher)), NUM_CLASSES)
    cached = VanillaKD(copy.deepcopy(student), Counting(copy.deepcopy(teacher)), NUM_CLASSES)
    fit(plain, Blobs(), tmp_path / "plain", 3, [])
    fit(cached, Blobs(), tmp_path / "cached", 3, [CacheReferenceOutputs()])
    assert plain.teacher.samples == 3 * SAMPLES
    assert cached.teacher.samples == SAMPLES  # epochs two and three read the store
    for key, value in plain.student.state_dict().items():
        torch.testing.assert_close(cached.student.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_a_store_on_disk_serves_the_next_run_on_the_same_data(tmp_path: Path) -> None:
    student, teacher = networks()
    cache = tmp_path / "cache"
    runs = []
    for data in (Blobs(), Blobs(), NamedBlobs()):
        model = VanillaKD(copy.deepcopy(student), Counting(copy.deepcopy(teacher)), NUM_CLASSES)
        fit(model, data, tmp_path / str(len(runs)), 1, [CacheReferenceOutputs(cache_dir=str(cache))])
        runs.append(model.teacher.samples)
    assert runs == [SAMPLES, 0, SAMPLES]  # a datamodule's cache_key() names its own store
    assert len(list(cache.glob("*.pt"))) == 2
    assert isinstance(NamedBlobs(), NamedData)
    assert not isinstance(Blobs(), NamedData)


@pytest.mark.parametrize("kind", [Blobs, NamedBlobs], ids=["no cache_key", "the same cache_key"])
def test_other_data_under_the_same_key_is_never_served_a_stale_store(kind: type, tmp_path: Path) -> None:
    """The data changes and its key does not (a plain datamodule, or a stale `cache_key()`): rows are recomputed."""
    student, teacher = networks()
    cache = tmp_path / "cache"
    first = VanillaKD(copy.deepcopy(student), Counting(copy.deepcopy(teacher)), NUM_CLASSES)
    fit(first, kind(), tmp_path / "first", 1, [CacheReferenceOutputs(cache_dir=str(cache))])
    changed = VanillaKD(copy.deepcopy(student), Counting(copy.deepcopy(teacher)), NUM_CLASSES)
    callback = CacheReferenceOutputs(cache_dir=str(cache))
    with pytest.warns(UserWarning, match=r"computed on other inputs than this fit has for the same sample indices"):
        trainer = fit(changed, kind(shift=1.0), tmp_path / "changed", 2, [callback])
    assert changed.teacher.samples == SAMPLES  # recomputed in epoch one, read in epoch two
    (path,) = cache.glob("*.pt")
    stored = torch.load(path, weights_only=True)
    x = trainer.datamodule.train_set.tensors[0]
    with torch.no_grad():
        expected = teacher.eval()(x)
    torch.testing.assert_close(stored["values"][:SAMPLES], expected, rtol=1e-5, atol=1e-6)
    assert bool(stored["filled"][:SAMPLES].all())


def test_a_datamodule_without_indices_is_refused_naming_what_is_needed(tmp_path: Path) -> None:
    model = VanillaKD(*networks(), NUM_CLASSES)
    with pytest.raises(ValueError, match=r"sample indices \(x, y, index\).*This training batch is a list of 2 items"):
        fit(model, Blobs(with_index=False), tmp_path, 1, [CacheReferenceOutputs()])


class FloatIndex(Blobs):
    def setup(self, stage: str | None = None) -> None:
        super().setup(stage)
        x, y, index = self.train_set.tensors
        self.train_set = TensorDataset(x, y, index.float())


def test_indices_that_are_not_integers_are_refused(tmp_path: Path) -> None:
    model = VanillaKD(*networks(), NUM_CLASSES)
    with pytest.raises(ValueError, match=r"must be an \(N,\) tensor of integers >= 0.*torch.float32"):
        fit(model, FloatIndex(), tmp_path, 1, [CacheReferenceOutputs()])


def test_random_inputs_are_refused_when_a_sample_comes_back(tmp_path: Path) -> None:
    model = VanillaKD(*networks(), NUM_CLASSES)
    with pytest.raises(ValueError, match=r"differ from those it had earlier in this fit.*random"):
        fit(model, JitteredBlobs(), tmp_path, 2, [CacheReferenceOutputs()])


def test_input_digests_follow_each_sample_and_ignore_padding() -> None:
    x = torch.randn(6, 5)
    digests = input_digests(x, 6)
    assert torch.equal(input_digests(x[[4, 0]], 2), digests[[4, 0]])  # a sample's digest, whatever its batch
    nudged = x.clone()
    nudged[3, 2] = torch.nextafter(nudged[3, 2], torch.tensor(10.0))  # one bit of one input
    assert (input_digests(nudged, 6) != digests).tolist() == [False, False, False, True, False, False]
    assert not torch.equal(input_digests(x.flip(1), 6), digests)  # positions count
    ids = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = (ids != 0).long()
    short = input_digests({"input_ids": ids[:, :3], "attention_mask": mask[:, :3]}, 2)
    long = input_digests({"input_ids": ids, "attention_mask": mask}, 2)
    assert torch.equal(short, long)  # padded further, the same samples
    with pytest.raises(ValueError, match=r"shape \(3, 5\) does not start with the batch size 6"):
        input_digests({"x": x, "extra": torch.zeros(3, 5)}, 6)
