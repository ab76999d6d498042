"""Teacher-output cache: frozen references' logits on the transfer set, computed once.

A frozen reference (a teacher, DP-KD's initial student) gives the same logits for a sample every
time it sees it, so recomputing them every epoch, every trial of a search and every method of a
study is waste. :class:`CacheReferenceOutputs` is a callback (one switch in YAML) that keeps them in
an :class:`OutputStore` keyed by sample index, filled on first sight and, with ``cache_dir``, saved
to disk under a key made of what determines them: the reference (its classes, weights, forward
settings and dtype, see :func:`~kdlightning.fingerprint.module_fingerprint`), the trainer's precision
and the data set's inputs, transform and tokenizers (:func:`transfer_fingerprint`). An unreadable
store file (truncated, text, garbage, another format) counts as a miss with a warning naming it: it
is recomputed and overwritten.

Transforms, collate functions and a reference's forward settings are keyed by their state, never by
their ``repr``; one whose state cannot be read is refused with a ``ValueError`` that names it
(:func:`~kdlightning.fingerprint.transform_fingerprint`). The cache only serves a transfer set whose
transform is deterministic; it refuses a random one (augmentation would make yesterday's teacher
output wrong for today's input), found by :func:`check_deterministic_transform`.
"""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path
from typing import Any, cast

import lightning as L
import torch
from torch import Tensor, nn

from kdlightning.atomic import UNREADABLE, atomic_path
from kdlightning.errors import ConfigurationError, InputTypeError
from kdlightning.fingerprint import (
    check_deterministic_transfer,
    check_deterministic_transform,
    module_fingerprint,
    transfer_fingerprint,
    transform_fingerprint,
)

__all__ = [
    "CacheReferenceOutputs",
    "OutputStore",
    "cache_key",
    "check_deterministic_transfer",
    "check_deterministic_transform",
    "module_fingerprint",
    "transfer_fingerprint",
    "transform_fingerprint",
]


class OutputStore:
    """Logits ``(N, C)`` of one reference for samples ``0 .. N-1``, filled as they are computed.

    Args:
        num_samples: size ``N`` of the index space (the data set's training pool).
        num_classes: number of logits ``C`` per sample.
        dtype: the stored logits' dtype: float32, or float64 for a fit in ``64-true`` precision (whose cached
            run then reads what its uncached run computes).
    """

    def __init__(self, num_samples: int, num_classes: int, dtype: torch.dtype = torch.float32) -> None:
        self.values = torch.zeros(num_samples, num_classes, dtype=dtype)
        self.filled = torch.zeros(num_samples, dtype=torch.bool)

    def to(self, device: torch.device | str) -> OutputStore:
        """Move the store to ``device`` (lookups then need no host-device copy)."""
        self.values, self.filled = self.values.to(device), self.filled.to(device)
        return self

    def get(self, index: Tensor) -> Tensor | None:
        """The stored logits ``(B, C)`` of samples ``index`` ``(B,)``, or None unless all are stored."""
        index = index.to(self.filled.device)
        if not bool(self.filled[index].all()):
            return None
        return self.values[index]

    def put(self, index: Tensor, logits: Tensor) -> None:
        """Store the logits ``(B, C)`` of samples ``index`` ``(B,)``."""
        index = index.to(self.filled.device)
        self.values[index] = logits.detach().to(self.values.device, self.values.dtype)
        self.filled[index] = True

    def merge(self, values: Tensor, filled: Tensor) -> None:
        """Add the rows another store (a file, another rank) has filled."""
        filled = filled.to(self.filled.device)
        self.values[filled] = values.to(self.values.device, self.values.dtype)[filled]
        self.filled |= filled

    @property
    def fraction_filled(self) -> float:
        """Share of the index space stored."""
        return float(self.filled.float().mean()) if len(self.filled) else 0.0

    def save(self, path: str | Path) -> None:
        """Write the store atomically: a reader sees the old file or the new one, never half of one."""
        with atomic_path(path) as tmp:
            torch.save({"values": self.values.cpu(), "filled": self.filled.cpu()}, tmp)

    def load(self, path: str | Path) -> bool:
        """Merge the rows stored in ``path`` if it exists, is readable and matches this store's shape.

        An unreadable file (truncated, text, garbage, another format: whatever ``torch.load`` raises,
        :data:`~kdlightning.atomic.UNREADABLE`) is a miss with a warning naming it: the store is derived
        data, recomputed and written over the file at the end of ``fit``.
        """
        path = Path(path)
        if not path.is_file():
            return False
        state = _read_store(path)
        if state is None or tuple(state["values"].shape) != tuple(self.values.shape):
            return False
        self.merge(state["values"], state["filled"])
        return True


def _is_store(state: Any) -> bool:
    """Whether ``state`` is ``{"values": (N, C) tensor, "filled": (N,) bool tensor, ...}``."""
    if not isinstance(state, dict):
        return False
    values, filled = state.get("values"), state.get("filled")
    return (
        isinstance(values, Tensor)
        and isinstance(filled, Tensor)
        and values.ndim == 2
        and filled.dtype == torch.bool
        and tuple(filled.shape) == tuple(values.shape[:1])
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
        problem = "it does not hold a 'values' (N, C) tensor and a 'filled' (N,) bool tensor"
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
        data_key: the transfer set's :func:`transfer_fingerprint` (inputs, transform, tokenizers).
        precision: the trainer's precision (``trainer.precision``, e.g. ``"32-true"``, ``"bf16-mixed"``):
            the same weights give other logits under another precision.
    """
    dtypes = sorted({str(p.dtype) for p in reference.parameters()})
    parts = (module_fingerprint(reference, strict=True), ",".join(dtypes), str(precision), data_key)
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _cacheable(datamodule: Any) -> bool:
    """Whether ``datamodule`` describes its transfer set as the cache needs: ``pool_size`` and ``data``."""
    return datamodule is not None and hasattr(datamodule, "pool_size") and hasattr(datamodule, "data")


class CacheReferenceOutputs(L.Callback):
    """Compute each frozen reference's logits on the transfer set once and reuse them.

    Add it to ``trainer.callbacks`` (YAML: ``class_path: kdlightning.cache.CacheReferenceOutputs``).
    It needs a datamodule whose training batches carry sample indices, ``(x, y, index)``, and that
    exposes its training pool as ``pool_size`` and ``data`` (with ``train_transform`` and
    ``collate_fn``), as :class:`~kdlightning.data.PartitionedDataModule` does. At the start of ``fit``
    it refuses a random ``train_transform`` (:func:`check_deterministic_transfer`); with ``cache_dir``
    it also refuses a transform or collate function whose state cannot be keyed, and keys the data
    with :func:`transfer_fingerprint` and each reference with :func:`module_fingerprint`. Epoch one
    computes and stores the references' logits as samples come; later epochs read them. With
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

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Check the transfer set, build (or load) one store per reference, attach them to the method."""
        from kdlightning.methods.base import DistillationModule

        if not isinstance(pl_module, DistillationModule):
            raise InputTypeError(
                f"CacheReferenceOutputs works with DistillationModule methods, got {type(pl_module).__name__}."
            )
        datamodule = getattr(trainer, "datamodule", None)  # set by Lightning for a fit with a datamodule
        if datamodule is None or not _cacheable(datamodule):
            raise ConfigurationError(
                "CacheReferenceOutputs needs a datamodule whose training batches carry sample indices (x, y, index) "
                "and that has `pool_size` and `data`, such as kdlightning.data.PartitionedDataModule."
            )
        on_disk = self.cache_dir is not None
        check_deterministic_transfer(datamodule, keyed=on_disk)  # a store kept in memory for this fit needs no key
        names = self.references if self.references is not None else list(pl_module.frozen_names)
        unknown = sorted(set(names) - set(pl_module.frozen_names))
        if unknown:
            raise ConfigurationError(
                f"`references` {unknown} are not frozen references of the method {pl_module.frozen_names}."
            )
        data_key = transfer_fingerprint(datamodule) if on_disk else ""
        for name in names:
            dtype = torch.float64 if str(trainer.precision).startswith("64") else torch.float32
            store = OutputStore(datamodule.pool_size, pl_module.num_classes, dtype)
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

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Gather the stores over ranks and save them (rank zero)."""
        for name, store in self.stores.items():
            if trainer.world_size > 1:
                values = trainer.strategy.all_gather(store.values)  # (world, N, C)
                filled = trainer.strategy.all_gather(store.filled)  # (world, N)
                for rank in range(values.shape[0]):
                    store.merge(values[rank], filled[rank])
            if name in self.paths and trainer.is_global_zero:
                store.save(self.paths[name])
        for name in self.stores:
            cast(Any, pl_module).attach_output_store(name, None)  # a DistillationModule (checked at fit start)

    def state_dict(self) -> dict[str, Any]:
        """Nothing to checkpoint: the stores live on disk (or are rebuilt)."""
        return {}
