"""LightningDataModules for classification data."""

from __future__ import annotations

from collections.abc import Callable, Sequence, Sized
from typing import Any, Literal, cast

import lightning as L
import numpy as np
from torch.utils.data import DataLoader, Dataset

from kdlightning.data.datasets import DatasetSource, Digits, LabelledData
from kdlightning.data.label_mix import label_matched_subset
from kdlightning.data.loading import ArrayDataset, EpochShuffleSampler, ResumableDataLoader, WholeBatches, as_read
from kdlightning.data.partitioners import partition_stats
from kdlightning.data.strategies import IIDPartitioner, Partitioner
from kdlightning.data.text import TokenizeCollate
from kdlightning.errors import ConfigurationError

__all__ = ["ClassificationDataModule", "DigitsDataModule", "PartitionedDataModule"]


class ClassificationDataModule(L.LightningDataModule):
    """Train / validation / test loaders over in-memory ``(inputs, labels)`` data sets.

    Subclasses build ``self.train_set``, ``self.val_set``, ``self.test_set`` in ``setup`` and set
    ``num_classes``, which the CLI links into the method. A subclass may set ``collate_fn`` (e.g. a
    :class:`~kdlightning.data.TokenizeCollate` for text); None uses PyTorch's default collate.

    Args:
        batch_size: samples per batch.
        num_workers: data loader worker processes.
        seed: seed of the split and of the shuffling.
    """

    train_set: Dataset
    val_set: Dataset
    test_set: Dataset

    def __init__(self, batch_size: int = 64, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        if batch_size < 1:
            raise ConfigurationError(f"`batch_size` must be >= 1, got {batch_size!r}.")
        if num_workers < 0:
            raise ConfigurationError(f"`num_workers` must be >= 0, got {num_workers!r}.")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.collate_fn: Callable[[list[Any]], Any] | None = None

    @property
    def num_classes(self) -> int:
        """Number of classes (linked to ``model.init_args.num_classes`` by the CLI)."""
        raise NotImplementedError

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        collate_fn = self.collate_fn
        if collate_fn is None and isinstance(dataset, ArrayDataset) and dataset.gathers:
            dataset, collate_fn = WholeBatches(dataset), as_read  # each batch read whole, not sample by sample
        if not shuffle:
            return DataLoader(
                dataset,
                batch_size=self.batch_size,
                num_workers=self.num_workers,
                persistent_workers=self.num_workers > 0,
                collate_fn=collate_fn,
            )
        return ResumableDataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=EpochShuffleSampler(len(cast(Sized, dataset)), self.seed),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_fn,
            position=self._training_position,
        )

    def _training_position(self) -> tuple[int, int]:
        """``(epoch, batches of it trained)`` of the fit in progress, for :class:`ResumableDataLoader`."""
        trainer = self.trainer
        if trainer is None:
            return 0, 0
        progress: Any = trainer.fit_loop.epoch_loop.batch_progress.current  # counts processed batches
        return trainer.current_epoch, int(progress.processed)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches (order fixed by ``seed`` and the epoch)."""
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Validation batches."""
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """Test batches."""
        return self._loader(self.test_set, shuffle=False)

    def predict_dataloader(self) -> DataLoader:
        """The test set, for ``kdl predict``."""
        return self._loader(self.test_set, shuffle=False)


class PartitionedDataModule(ClassificationDataModule):
    """One party's view of a data set partitioned across parties.

    ``setup`` loads the data set, splits its training pool across ``num_parties`` with
    ``partitioner`` (the same split in every process and on every DDP rank: it depends only on the
    labels and ``seed``) and exposes, for party ``partition_id``:

    - ``train_set``: the **transfer set** the method trains on, as ``(input, label, pool_index)``
      batches (``pool_index`` keys the teacher-output cache): ``"own"`` (the party's training
      data), ``"teacher"`` (party ``teacher_partition_id``'s), ``"union"`` (both) or ``"public"``
      (a ``public_fraction`` of the pool held out before partitioning, owned by no party);
    - ``val_set``: ``validation="own"``: ``val_fraction`` of the party's own partition, held out from its
      training data; ``validation="public"``: the public split (``public_fraction`` of the pool held out before
      partitioning, drawn uniformly like the test set, the same for every party and method, never trained on);
      ``validation=["own", "public"]``: both, as two validation loaders in that order (``val_sets``), for
      :class:`~kdlightning.methods.BatchedMembers`, which validates every member on each;
      ``validation="holdout"``: a seeded ``holdout_fraction`` of the transfer set, held out from ``train_set``
      (e.g. to stop a distillation on unlabelled public data early);
    - ``test_set``: the data set's global, unpartitioned test set;
    - with ``party_test=True``, ``party_test_set``: the party's own test set, drawn from the global test set
      (seeded, without replacement, as large as the global test set allows) so that its label proportions are
      those of the party's training split, within rounding (:func:`~kdlightning.data.label_matched_subset`);
      ``test_dataloader`` then returns two loaders, the global test set's and the party's, and Lightning names
      a method's test metrics by loader: ``test/acc/dataloader_idx_0`` (global) and ``test/acc/dataloader_idx_1``
      (the party's), likewise ``test/loss/...``.

    The pool is split by ``partitioner.partition_data``
    (:meth:`~kdlightning.data.strategies.Partitioner.partition_data`), which splits the labels, or for a strategy
    that reads the data, a column of it or its inputs.

    Text inputs are tokenized per network by ``tokenizers`` (a :class:`~kdlightning.data.TokenizeCollate`):
    batches are then dicts of token tensors with ``"labels"`` (and ``"index"``, the pool index, in
    training batches), with one input dict per network when teacher and student tokenize differently.

    The data set is read through ``dataset.data()`` (once per source: datamodules given the same source
    share its arrays, exposed as ``data``); ``num_classes`` asks the source, which knows it without
    reading the data where it can. Nothing is read or downloaded in ``__init__``. Partition statistics
    are logged by the :class:`~kdlightning.callbacks.LogPartition` callback; the teacher-output cache
    (:mod:`kdlightning.cache`) keys the data and probes ``train_transform`` itself.

    Args:
        dataset: the data set source (:class:`~kdlightning.data.Digits` by default).
        partitioner: how the pool is split across parties (IID by default).
        num_parties: number of parties, ``>= 1``.
        partition_id: this party, in ``[0, num_parties)``.
        transfer: which data the method trains on (see above).
        teacher_partition_id: the teacher's party, for ``transfer="teacher"`` or ``"union"``.
        public_fraction: share of the pool held out as public data before partitioning, in ``[0, 1)``.
        val_fraction: share of the party's partition held out for validation, in ``(0, 1)``.
        validation: which split ``val_dataloader`` reads: ``"own"`` (the party's held-out share) or
            ``"public"`` (the public split; needs ``public_fraction`` > 0 and a transfer set other than it),
            or a list of both: one validation loader each, in the list's order; or ``"holdout"`` (a share of the
            transfer set; needs ``holdout_fraction`` > 0).
        holdout_fraction: share of the transfer set held out from training as the ``"holdout"`` split, in
            ``[0, 1)``; 0 holds nothing out.
        batch_size: samples per batch.
        num_workers: data loader worker processes.
        seed: seed of the partition, the held-out splits and the shuffling.
        train_transform: applied to each training (transfer-set) input, e.g. augmentation; validation
            and test inputs are not transformed. A random transform rules out the teacher-output cache.
        tokenizers: for text data: one tokenizer serving every network, a dict from network role
            (``"student"``, ``"teacher"``, ``"peer"``) to a tokenizer, or a ready
            :class:`~kdlightning.data.TokenizeCollate`. Tokenizers are objects: load one by path or hub id
            with :func:`kdlightning.hf.load_tokenizer` (in YAML ``class_path: kdlightning.hf.load_tokenizer``
            with ``init_args: {path: ...}``).
        max_length: with ``tokenizers`` (not a ``TokenizeCollate``, which has its own), truncate each text to
            this many tokens (None: the tokenizer's maximum); batches are padded to their longest text.
        party_test: also test on a party test set with the party's label mix (see above); False tests on the
            global test set alone.
    """

    def __init__(
        self,
        dataset: DatasetSource | None = None,
        partitioner: Partitioner | None = None,
        num_parties: int = 2,
        partition_id: int = 0,
        transfer: Literal["own", "teacher", "union", "public"] = "own",
        teacher_partition_id: int = 1,
        public_fraction: float = 0.0,
        val_fraction: float = 0.1,
        validation: Literal["own", "public", "holdout"] | list[Literal["own", "public", "holdout"]] = "own",
        holdout_fraction: float = 0.0,
        batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        train_transform: Callable[[Any], Any] | None = None,
        tokenizers: Any = None,
        max_length: int | None = 128,
        party_test: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        if num_parties < 1:
            raise ConfigurationError(f"`num_parties` must be >= 1, got {num_parties!r}.")
        if not 0 <= partition_id < num_parties:
            raise ConfigurationError(
                f"`partition_id` must lie in [0, num_parties={num_parties}), got {partition_id!r}."
            )
        if transfer not in ("own", "teacher", "union", "public"):
            raise ConfigurationError(f"`transfer` must be 'own', 'teacher', 'union' or 'public', got {transfer!r}.")
        if transfer in ("teacher", "union") and not (
            0 <= teacher_partition_id < num_parties and teacher_partition_id != partition_id
        ):
            raise ConfigurationError(
                f"`teacher_partition_id` must be another party in [0, {num_parties}) for transfer={transfer!r}, "
                f"got {teacher_partition_id!r} (partition_id={partition_id})."
            )
        if not 0.0 <= public_fraction < 1.0:
            raise ConfigurationError(f"`public_fraction` must lie in [0, 1), got {public_fraction!r}.")
        if transfer == "public" and public_fraction == 0.0:
            raise ConfigurationError(
                "`transfer='public'` needs `public_fraction` > 0 (the share of data no party owns)."
            )
        if not 0.0 < val_fraction < 1.0:
            raise ConfigurationError(f"`val_fraction` must lie in (0, 1), got {val_fraction!r}.")
        if not 0.0 <= holdout_fraction < 1.0:
            raise ConfigurationError(f"`holdout_fraction` must lie in [0, 1), got {holdout_fraction!r}.")
        check_validation(validation, public_fraction, transfer, holdout_fraction)
        self.dataset = dataset if dataset is not None else Digits(seed=seed)
        self.partitioner = partitioner if partitioner is not None else IIDPartitioner()
        self.num_parties = num_parties
        self.partition_id = partition_id
        self.transfer = transfer
        self.teacher_partition_id = teacher_partition_id
        self.public_fraction = public_fraction
        self.val_fraction = val_fraction
        self.validation = validation
        self.holdout_fraction = holdout_fraction
        self.train_transform = train_transform
        if tokenizers is None or isinstance(tokenizers, TokenizeCollate):
            self.collate_fn = tokenizers
        else:
            self.collate_fn = TokenizeCollate(tokenizers, max_length=max_length)
        self.party_test = bool(party_test)
        self.parts: list[np.ndarray] = []
        self.public_index = np.empty(0, dtype=np.int64)
        self.party_test_index = np.empty(0, dtype=np.int64)

    @property
    def num_classes(self) -> int:
        """Number of classes of the data set, from the source (without reading the data where it can)."""
        return self.dataset.num_classes

    @property
    def data(self) -> LabelledData:
        """The whole data set as arrays (``dataset.data()``: read on first use, then shared; read-only)."""
        return self.dataset.data()

    def prepare_data(self) -> None:
        """Fetch the data set once (a no-op for local sources)."""
        self.dataset.prepare()

    def split_pool(self) -> tuple[list[np.ndarray], np.ndarray]:
        """Partition the training pool: ``(one sorted index array per party, public indices)``."""
        labels = self.data.train_labels
        rng = np.random.default_rng(self.seed)
        pool = np.arange(len(labels))
        public = np.empty(0, dtype=np.int64)
        if self.public_fraction > 0:
            shuffled = rng.permutation(pool)
            cut = round(self.public_fraction * len(pool))
            public, pool = np.sort(shuffled[:cut]), np.sort(shuffled[cut:])
        parts = self.partitioner.partition_data(self.data, pool, self.num_parties, self.seed)
        return [pool[part] for part in parts], public

    def _train_val(self, party: int) -> tuple[np.ndarray, np.ndarray]:
        """A party's partition split into its training and validation indices (fixed by seed and party)."""
        index = self.parts[party]
        rng = np.random.default_rng([self.seed, party])
        shuffled = rng.permutation(index)
        n_val = max(1, round(self.val_fraction * len(index))) if len(index) > 1 else 0
        return np.sort(shuffled[n_val:]), np.sort(shuffled[:n_val])

    def transfer_index(self) -> np.ndarray:
        """Indices (into the training pool) of the transfer set."""
        own, _ = self._train_val(self.partition_id)
        if self.transfer == "own":
            return own
        if self.transfer == "public":
            return self.public_index
        teacher, _ = self._train_val(self.teacher_partition_id)
        return teacher if self.transfer == "teacher" else np.union1d(own, teacher)

    def setup(self, stage: str | None = None) -> None:
        """Load, partition and build the party's data sets (the same in every process)."""
        data = self.data
        if isinstance(self.collate_fn, TokenizeCollate) and not data.is_text:
            raise ConfigurationError(
                f"`tokenizers` is set but the data set's inputs are not text (dtype {data.train_inputs.dtype}); "
                "drop `tokenizers`, or choose a text column with `input_column`."
            )
        if data.is_text and self.collate_fn is None:
            raise ConfigurationError(
                "The data set's inputs are text, which a network reads as token ids: set `tokenizers` (one "
                "tokenizer, one per network role, or a TokenizeCollate), e.g. `class_path: "
                "kdlightning.hf.load_tokenizer` with the model's directory."
            )
        if isinstance(self.collate_fn, TokenizeCollate):
            self.collate_fn.check_vocabulary(data.train_inputs[:256].tolist())
        if not self.parts:
            self.parts, self.public_index = self.split_pool()
        own_train, own_val = self._train_val(self.partition_id)
        if len(own_train) == 0 or len(own_val) == 0:
            raise ConfigurationError(
                f"Party {self.partition_id} has {len(self.parts[self.partition_id])} samples, too few for a training "
                f"and a validation split; use fewer parties or a partitioner with a larger min_size."
            )
        train = self.transfer_index()
        if len(train) == 0:
            raise ConfigurationError(f"The transfer set {self.transfer!r} of party {self.partition_id} is empty.")
        train, holdout = self._holdout(train)
        self.train_set = ArrayDataset(
            data.train_inputs, data.train_labels, train, transform=self.train_transform, with_index=True
        )
        check_validation(self.validation, self.public_fraction, self.transfer, self.holdout_fraction)
        splits = {"own": own_val, "public": self.public_index, "holdout": holdout}
        self.val_sets = [ArrayDataset(data.train_inputs, data.train_labels, splits[name]) for name in self.validations]
        self.val_set = self.val_sets[0]
        self.test_set = ArrayDataset(data.test_inputs, data.test_labels)
        if self.party_test:
            # its own stream: drawing it leaves every other split as it is without party_test
            seed = [self.seed, self.partition_id, 2]
            self.party_test_index = label_matched_subset(data.test_labels, data.train_labels[own_train], seed)
            self.party_test_set = ArrayDataset(data.test_inputs, data.test_labels, self.party_test_index)

    def _holdout(self, transfer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The transfer set less its ``holdout_fraction`` (drawn by ``seed``), and that held-out share."""
        if self.holdout_fraction == 0.0:
            return transfer, np.empty(0, dtype=np.int64)
        shuffled = np.random.default_rng([self.seed, len(transfer), 1]).permutation(transfer)
        cut = max(1, round(self.holdout_fraction * len(transfer)))
        if cut >= len(transfer):
            raise ConfigurationError(
                f"`holdout_fraction={self.holdout_fraction}` of the {len(transfer)} transfer examples leaves none "
                "to train on; lower it."
            )
        return np.sort(shuffled[cut:]), np.sort(shuffled[:cut])

    @property
    def validations(self) -> list[str]:
        """``validation`` as a list: the splits the validation loaders read, in order."""
        return [self.validation] if isinstance(self.validation, str) else list(self.validation)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        """Validation batches: of one split, or a loader per split when ``validation`` lists several."""
        if isinstance(self.validation, str):
            return super().val_dataloader()
        return [self._loader(dataset, shuffle=False) for dataset in self.val_sets]

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        """Test batches of the global test set; with ``party_test``, a second loader of the party's test set."""
        if not self.party_test:
            return super().test_dataloader()
        return [self._loader(self.test_set, shuffle=False), self._loader(self.party_test_set, shuffle=False)]

    @property
    def pool_size(self) -> int:
        """Number of samples in the training pool (the index space of ``pool_index``)."""
        return len(self.data.train_labels)

    def partition_stats(self) -> np.ndarray:
        """``(num_parties, num_classes)`` sample counts of the partition."""
        data = self.data
        return partition_stats(data.train_labels, self.parts, num_classes=data.num_classes)


def check_validation(
    validation: str | Sequence[str], public_fraction: float, transfer: str, holdout_fraction: float = 0.0
) -> None:
    """Raise ``ConfigurationError`` unless ``validation`` names splits there are.

    ``"own"`` always; ``"public"`` with a public split; ``"holdout"`` with a held-out share of the transfer set.

    The public split is one no party trains on.

    A list names several splits (each checked; none twice).

    Examples:
        >>> check_validation("public", 0.05, "own")
        >>> check_validation(["own", "public"], 0.05, "own")
        >>> check_validation("public", 0.0, "own")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        kdlightning.errors.ConfigurationError: `validation='public'` needs `public_fraction` > 0: the split held...
    """
    if not isinstance(validation, str):
        names = list(validation)
        if not names or len(set(names)) < len(names):
            raise ConfigurationError(
                f"`validation` must list distinct splits of 'own', 'public' and 'holdout', got {validation!r}."
            )
        for name in names:
            check_validation(name, public_fraction, transfer, holdout_fraction)
        return
    if validation not in ("own", "public", "holdout"):
        raise ConfigurationError(f"`validation` must be 'own', 'public' or 'holdout', got {validation!r}.")
    if validation == "holdout" and holdout_fraction == 0.0:
        raise ConfigurationError(
            "`validation='holdout'` needs `holdout_fraction` > 0: the share of the transfer set held out."
        )
    if validation == "public" and public_fraction == 0.0:
        raise ConfigurationError(
            "`validation='public'` needs `public_fraction` > 0: the split held out before partitioning."
        )
    if validation == "public" and transfer == "public":
        raise ConfigurationError(
            "`validation='public'` with `transfer='public'` would validate on the data the method trains on; "
            "choose another transfer set or `validation='own'`."
        )


class DigitsDataModule(PartitionedDataModule):
    """scikit-learn's bundled 8×8 digits as a single party: the embedded default, needs no file.

    A stratified ``test_fraction`` of the 1,797 images is the test set; ``val_fraction`` of the rest
    is held out for validation.

    Args:
        batch_size: samples per batch.
        val_fraction: share of the training images held out for validation.
        test_fraction: share of all images held out for testing.
        num_workers: data loader worker processes.
        seed: seed of the splits and of the shuffling.
        train_transform: applied to each training input (see :class:`PartitionedDataModule`).
    """

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.2,
        num_workers: int = 0,
        seed: int = 0,
        train_transform: Callable[[Any], Any] | None = None,
    ) -> None:
        super().__init__(
            dataset=Digits(test_fraction=test_fraction, seed=seed),
            num_parties=1,
            val_fraction=val_fraction,
            batch_size=batch_size,
            num_workers=num_workers,
            seed=seed,
            train_transform=train_transform,
        )
