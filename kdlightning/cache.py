"""Teacher-output cache: frozen references' logits on the training data, computed once.

A frozen reference (a teacher, DP-KD's initial student) gives the same logits for a sample every
time it sees it, so recomputing them every epoch, every trial of a search and every method of a
study is waste. :class:`CacheReferenceOutputs` is a callback (one switch in YAML) that keeps them in
an :class:`OutputStore` keyed by sample index, filled on first sight.

It serves any ``LightningDataModule`` (or training dataloader) whose batches carry sample indices:
``(x, y, index)``, or a dict with an ``"index"`` entry, ``index`` an ``(N,)`` integer tensor that names
each sample by the same number in every epoch. Each stored row is tied to the inputs it was computed on
by a 64-bit digest of them (:func:`~kdlightning.fingerprint.input_digests`), so a row is served only for
the inputs it belongs to: a store loaded from disk whose rows were computed on other inputs for the same
index (the data changed) has those rows recomputed, and a sample whose inputs change within a fit (a
random augmentation) stops it.

With ``cache_dir``, stores are saved to disk under a key made of what determines them: the reference
(its classes, weights, forward settings and dtype, see :func:`~kdlightning.fingerprint.module_fingerprint`),
the trainer's precision and what names the data (:func:`transfer_fingerprint`): the datamodule's
optional ``cache_key()``, its ``train_transform`` and ``collate_fn``. An unreadable store file
(truncated, text, garbage, another format) counts as a miss with a warning naming it: it is recomputed
and overwritten.

Transforms, collate functions and a reference's forward settings are keyed by their state, never by
their ``repr``; one whose state cannot be read is refused with a ``ValueError`` that names it
(:func:`~kdlightning.fingerprint.transform_fingerprint`). The cache only serves training data whose
inputs are deterministic; it refuses a random ``train_transform`` at the start of ``fit`` where it can
probe it (:func:`check_deterministic_transfer`), and any other random input as soon as a sample comes
back with other inputs.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, cast, runtime_checkable

import lightning as L
import torch
from torch import Tensor, nn

from kdlightning.atomic import UNREADABLE, atomic_path
from kdlightning.errors import ConfigurationError, InputTypeError
from kdlightning.fingerprint import (
    check_deterministic_transfer,
    check_deterministic_transform,
    input_digests,
    module_fingerprint,
    transfer_fingerprint,
    transform_fingerprint,
)

__all__ = [
    "CacheReferenceOutputs",
    "NamedData",
    "OutputStore",
    "cache_key",
    "check_deterministic_transfer",
    "check_deterministic_transform",
    "input_digests",
    "module_fingerprint",
    "transfer_fingerprint",
    "transform_fingerprint",
]


@runtime_checkable
class NamedData(Protocol):
    """What a datamodule may declare to the teacher-output cache (optional: indices in its batches are enough).

    ``cache_key()`` returns a string that names the datamodule's training data: the data set, its version
    or a hash of its files, and whatever else decides what a sample's inputs are. It goes into the name of
    the store files in ``cache_dir``, so the stores of different data kept in one directory stay apart
    (without it, runs on different data that share a reference and a directory share one file and
    recompute each other's rows). It is not what keeps a stale store from being served: every stored row
    is checked against the digest of the inputs it is served for.

    Examples:
        >>> class Shapes:
        ...     def cache_key(self) -> str:
        ...         return "shapes-v2"
        >>> isinstance(Shapes(), NamedData)
        True
    """

    def cache_key(self) -> str:
        """A string naming the training data; another string for other data."""
        ...


class OutputStore:
    """Logits ``(N, C)`` of one reference for samples ``0 .. N-1``, filled as they are computed.

    Each row has the digest of the inputs it was computed on (:func:`input_digests`), and a flag saying
    whether that digest was confirmed in this fit (rows loaded from disk are not, until their sample comes).
    The store grows as larger indices come (:meth:`make_room`).

    Args:
        num_samples: rows to start with; more are added as larger indices come.
        num_classes: number of logits ``C`` per sample.
        dtype: the stored logits' dtype: float32, or float64 for a fit in ``64-true`` precision (whose cached
            run then reads what its uncached run computes).
    """

    def __init__(self, num_samples: int, num_classes: int, dtype: torch.dtype = torch.float32) -> None:
        self.values = torch.zeros(num_samples, num_classes, dtype=dtype)
        self.filled = torch.zeros(num_samples, dtype=torch.bool)
        self.digests = torch.zeros(num_samples, dtype=torch.int64)
        self.verified = torch.zeros(num_samples, dtype=torch.bool)

    def __len__(self) -> int:
        """Rows held (filled or not)."""
        return len(self.filled)

    def to(self, device: torch.device | str) -> OutputStore:
        """Move the store to ``device`` (lookups then need no host-device copy)."""
        self.values, self.filled = self.values.to(device), self.filled.to(device)
        self.digests, self.verified = self.digests.to(device), self.verified.to(device)
        return self

    def reserve(self, size: int) -> None:
        """Hold at least ``size`` rows; new rows are empty."""
        extra = size - len(self)
        if extra <= 0:
            return
        self.values = torch.cat([self.values, self.values.new_zeros(extra, self.values.shape[1])])
        self.filled = torch.cat([self.filled, self.filled.new_zeros(extra)])
        self.digests = torch.cat([self.digests, self.digests.new_zeros(extra)])
        self.verified = torch.cat([self.verified, self.verified.new_zeros(extra)])

    def make_room(self, index: Tensor) -> None:
        """Hold rows for samples ``index`` ``(B,)``, growing by half again at least (few copies over a fit)."""
        needed = int(index.max()) + 1 if index.numel() else 0
        if needed > len(self):
            self.reserve(max(needed, len(self) * 3 // 2))

    def get(self, index: Tensor) -> Tensor | None:
        """The stored logits ``(B, C)`` of samples ``index`` ``(B,)``, or None unless all are stored."""
        index = index.to(self.filled.device)
        if not bool(self.filled[index].all()):
            return None
        return self.values[index]

    def put(self, index: Tensor, logits: Tensor) -> None:
        """Store the logits ``(B, C)`` of samples ``index`` ``(B,)`` (rows the store holds: see :meth:`make_room`)."""
        index = index.to(self.filled.device)
        self.values[index] = logits.detach().to(self.values.device, self.values.dtype)
        self.filled[index] = True

    def verify(self, index: Tensor, digests: Tensor) -> tuple[Tensor, int, int]:
        """Check the rows of samples ``index`` ``(B,)`` against the digests ``(B,)`` of their inputs now.

        A row confirmed earlier in this fit must have the same digest; a row loaded from elsewhere whose
        digest differs is emptied (its outputs were computed on other inputs), one that matches is
        confirmed; an empty row takes the digest, for the outputs about to be stored.

        Returns:
            ``(indices of confirmed rows whose inputs changed, rows emptied as stale, rows compared with
            inputs seen earlier in this fit)``.
        """
        index, digests = index.to(self.filled.device), digests.to(self.digests.device)
        known = self.verified[index]
        differs = self.digests[index] != digests
        changed = index[known & differs]
        stale = ~known & self.filled[index] & differs
        self.filled[index[stale]] = False
        self.digests[index] = digests
        self.verified[index] = True
        return changed, int(stale.sum()), int(known.sum())

    def merge(self, values: Tensor, filled: Tensor, digests: Tensor) -> None:
        """Add the rows another store (a file, another rank) has filled; it may hold fewer rows than this one."""
        filled = filled.to(self.filled.device)
        rows = torch.arange(len(filled), device=self.filled.device)[filled]
        self.values[rows] = values.to(self.values.device, self.values.dtype)[filled]
        self.digests[rows] = digests.to(self.digests.device)[filled]
        self.filled[rows] = True

    @property
    def fraction_filled(self) -> float:
        """Share of the rows held that are stored."""
        return float(self.filled.float().mean()) if len(self.filled) else 0.0

    def save(self, path: str | Path) -> None:
        """Write the rows up to the last filled one, atomically: a reader sees the old file or the new one."""
        filled = self.filled.nonzero()
        rows = int(filled.max()) + 1 if len(filled) else 0
        state = {"values": self.values[:rows], "filled": self.filled[:rows], "digests": self.digests[:rows]}
        with atomic_path(path) as tmp:
            torch.save({key: value.cpu().clone() for key, value in state.items()}, tmp)

    def load(self, path: str | Path) -> bool:
        """Merge the rows stored in ``path`` if it exists, is readable and holds as many classes as this store.

        An unreadable file (truncated, text, garbage, another format: whatever ``torch.load`` raises,
        :data:`~kdlightning.atomic.UNREADABLE`) is a miss with a warning naming it: the store is derived
        data, recomputed and written over the file at the end of ``fit``. Loaded rows are served only once
        their sample's inputs match their digest (:meth:`verify`).
        """
        path = Path(path)
        if not path.is_file():
            return False
        state = _read_store(path)
        if state is None or state["values"].shape[1] != self.values.shape[1]:
            return False
        self.reserve(len(state["filled"]))
        self.merge(state["values"], state["filled"], state["digests"])
        return True


def _is_store(state: Any) -> bool:
    """Whether ``state`` is ``{"values": (N, C), "filled": (N,) bool, "digests": (N,) int64 tensors}``."""
    if not isinstance(state, dict):
        return False
    values, filled, digests = state.get("values"), state.get("filled"), state.get("digests")
    return (
        isinstance(values, Tensor)
        and isinstance(filled, Tensor)
        and isinstance(digests, Tensor)
        and values.ndim == 2
        and filled.dtype == torch.bool
        and digests.dtype == torch.int64
        and tuple(filled.shape) == tuple(digests.shape) == tuple(values.shape[:1])
    )


def _read_store(path: Path) -> dict[str, Tensor] | None:
    """The store saved in ``path``, or None with a warning naming ``path`` if it cannot be used."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE as error:
        problem = f"it cannot be read ({type(error).__name__}: {error})"
    else:
        if _is_store(state):
            return state
        problem = (
            "it does not hold a 'values' (N, C) tensor, a 'filled' (N,) bool tensor and a 'digests' (N,) int64 tensor"
        )
    warnings.warn(
        f"Ignoring the teacher-output cache file '{path}': {problem}. Its outputs are recomputed and the file is "
        "overwritten at the end of fit.",
        stacklevel=3,
    )
    return None


def cache_key(reference: nn.Module, data_key: str, precision: str) -> str:
    """SHA-256 naming a reference's stored outputs: the reference, its dtype, the precision and the data.

    Args:
        reference: the frozen network (hashed with :func:`module_fingerprint`, ``strict``: a public
            attribute whose state cannot be read raises ``ValueError``).
        data_key: the training data's :func:`transfer_fingerprint` (the datamodule's ``cache_key()``,
            transform and collate function).
        precision: the trainer's precision (``trainer.precision``, e.g. ``"32-true"``, ``"bf16-mixed"``):
            the same weights give other logits under another precision.
    """
    dtypes = sorted({str(p.dtype) for p in reference.parameters()})
    parts = (module_fingerprint(reference, strict=True), ",".join(dtypes), str(precision), data_key)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _batch_kind(batch: Any) -> str:
    """What a batch is, for an error message."""
    if isinstance(batch, Mapping):
        return f"a dict with keys {sorted(map(str, batch))}"
    if isinstance(batch, (tuple, list)):
        return f"a {type(batch).__name__} of {len(batch)} items"
    return f"a {type(batch).__name__}"


def _index_problem(index: Any) -> str | None:
    """Why ``index`` cannot name a batch's samples, or None if it can: an ``(N,)`` tensor of integers >= 0."""
    if not isinstance(index, Tensor):
        return f"a {type(index).__name__}"
    if index.ndim != 1 or index.dtype.is_floating_point or index.is_complex() or index.dtype == torch.bool:
        return f"a {tuple(index.shape)} {index.dtype} tensor"
    if index.numel() and int(index.min()) < 0:
        return f"a tensor holding the negative index {int(index.min())}"
    return None


class CacheReferenceOutputs(L.Callback):
    """Compute each frozen reference's logits on the training data once and reuse them.

    Add it to ``trainer.callbacks`` (YAML: ``class_path: kdlightning.cache.CacheReferenceOutputs``).
    It needs training batches that carry sample indices: ``(x, y, index)``, or a dict with an ``"index"``
    entry (tokenized text), ``index`` an ``(N,)`` integer tensor that names each sample by the same number
    in every epoch (its position in the training data); a batch without them stops ``fit`` with a
    ``ValueError`` that says so. Any ``LightningDataModule`` serves, :class:`~kdlightning.data.PartitionedDataModule`
    (whose index is the sample's place in the data set's training pool) as any other.

    At the start of ``fit`` it refuses a random ``train_transform`` it can probe
    (:func:`check_deterministic_transfer`); with ``cache_dir`` it also refuses a transform or collate
    function whose state cannot be keyed, and names the stores with :func:`cache_key`: each reference by
    :func:`module_fingerprint`, the data by :func:`transfer_fingerprint` (the datamodule's optional
    ``cache_key()``, see :class:`NamedData`). Epoch one computes and stores the references' logits as
    samples come, each row with the digest of its inputs (:func:`input_digests`); later epochs read them.
    A row is served only for the inputs it was computed on: a loaded row whose sample now has other inputs
    is recomputed (with a warning: the data changed), and a sample whose inputs change within the fit
    stops it (random inputs: the student would be taught on outputs for inputs it never saw). After the
    first epoch, only an epoch's first batches are digested, until one compares samples seen before. With
    ``cache_dir`` the stores are saved at the end of ``fit`` (atomically, gathered over DDP ranks) and
    loaded by the next run with the same reference weights and data: the trials of a search and the
    methods of a study.

    Args:
        cache_dir: directory for the stores; None keeps them in memory for this run only.
        references: names of the frozen references to cache; None for all of them.
    """

    def __init__(self, cache_dir: str | None = None, references: list[str] | None = None) -> None:
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else None
        self.references = references
        self.stores: dict[str, OutputStore] = {}
        self.paths: dict[str, Path] = {}
        self._compare = False  # this epoch has yet to compare a sample's inputs with those seen before
        self._warned: set[str] = set()

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Check the training data, build (or load) one store per reference, attach them to the method."""
        from kdlightning.methods.base import DistillationModule

        if not isinstance(pl_module, DistillationModule):
            raise InputTypeError(
                f"CacheReferenceOutputs works with DistillationModule methods, got {type(pl_module).__name__}."
            )
        datamodule = getattr(trainer, "datamodule", None)  # set by Lightning for a fit with a datamodule
        on_disk = self.cache_dir is not None
        check_deterministic_transfer(datamodule, keyed=on_disk)  # a store kept in memory for this fit needs no key
        names = self.references if self.references is not None else list(pl_module.frozen_names)
        unknown = sorted(set(names) - set(pl_module.frozen_names))
        if unknown:
            raise ConfigurationError(
                f"`references` {unknown} are not frozen references of the method {pl_module.frozen_names}."
            )
        data_key = transfer_fingerprint(datamodule) if on_disk else ""
        self.stores, self.paths, self._warned = {}, {}, set()
        for name in names:
            dtype = torch.float64 if str(trainer.precision).startswith("64") else torch.float32
            store = OutputStore(0, pl_module.num_classes, dtype)
            if self.cache_dir is not None:
                try:
                    key = cache_key(getattr(pl_module, name), data_key, trainer.precision)
                except ValueError as error:
                    raise ConfigurationError(
                        f"The teacher-output cache cannot key the frozen reference `{name}`. {error}"
                    ) from error
                self.paths[name] = self.cache_dir / f"{key[:32]}.pt"
                store.load(self.paths[name])
            self.stores[name] = store.to(pl_module.device)
            pl_module.attach_output_store(name, self.stores[name])

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Compare the inputs of the epoch's first samples seen before with the digests stored for them."""
        self._compare = True

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Check the batch's sample indices; check its rows in each store against the digests of their inputs."""
        if not self.stores:
            return
        method = cast(Any, pl_module)  # a DistillationModule (checked at fit start)
        index = method.sample_index(batch)
        if index is None:
            raise ConfigurationError(
                "CacheReferenceOutputs needs training batches that carry sample indices (x, y, index), or a dict "
                "with an 'index' entry: an (N,) integer tensor that names each sample by the same number in every "
                f"epoch, such as its position in the training data. This training batch is {_batch_kind(batch)}. "
                "Have the training Dataset return (x, y, index) (e.g. TensorDataset(x, y, torch.arange(len(x)))), "
                "or train without CacheReferenceOutputs."
            )
        problem = _index_problem(index)
        if problem is not None:
            raise ConfigurationError(
                "The sample indices of a training batch (its third item, or its 'index' entry) must be an (N,) "
                f"tensor of integers >= 0 for CacheReferenceOutputs; got {problem}."
            )
        compared = 0
        for name, store in self.stores.items():
            store.make_room(index)
            if not self._compare and bool(store.verified[index.to(store.verified.device)].all()):
                continue  # every row confirmed in this fit: served as they are
            digests = input_digests(method.network_inputs(batch, name), len(index))
            changed, stale, seen = store.verify(index, digests)
            compared = max(compared, seen)
            if changed.numel():
                raise ConfigurationError(
                    f"The training inputs of sample {int(changed[0])} (and {changed.numel() - 1} more in this batch) "
                    f"to the frozen reference `{name}` differ from those it had earlier in this fit, so its stored "
                    "outputs would not match what the student sees: the training data is random (an augmentation in "
                    "the Dataset or its transform), or its indices do not name the same samples in every epoch. "
                    "Make the training inputs deterministic and each sample's index fixed, or train without "
                    "CacheReferenceOutputs."
                )
            if stale and name not in self._warned:
                self._warned.add(name)
                warnings.warn(
                    f"Stored outputs of the frozen reference `{name}` in '{self.paths.get(name)}' ({stale} in this "
                    "batch) were computed on other inputs than this fit has for the same sample indices: the data "
                    "changed under the same key (a datamodule's cache_key() should change with its data). They are "
                    "recomputed, and the file is updated at the end of fit.",
                    stacklevel=2,
                )
        if compared:
            self._compare = False

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Gather the stores over ranks and save them (rank zero)."""
        for name, store in self.stores.items():
            if trainer.world_size > 1:
                sizes = trainer.strategy.all_gather(torch.tensor(len(store), device=store.values.device))  # (world,)
                store.reserve(int(sizes.max()))
                values = trainer.strategy.all_gather(store.values)  # (world, N, C)
                filled = trainer.strategy.all_gather(store.filled)  # (world, N)
                digests = trainer.strategy.all_gather(store.digests)  # (world, N)
                for rank in range(values.shape[0]):
                    store.merge(values[rank], filled[rank], digests[rank])
            if name in self.paths and trainer.is_global_zero:
                store.save(self.paths[name])
        for name in self.stores:
            cast(Any, pl_module).attach_output_store(name, None)  # a DistillationModule (checked at fit start)

    def state_dict(self) -> dict[str, Any]:
        """Nothing to checkpoint: the stores live on disk (or are rebuilt)."""
        return {}
