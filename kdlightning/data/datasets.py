"""Data set sources: each loads a labelled train set and a global test set as arrays.

Nothing here downloads at import or in a constructor: :meth:`DatasetSource.load` reads local files
(or, for :class:`HFDataset` with a hub id, the hub through ``datasets.load_dataset``, which honours
``HF_DATASETS_OFFLINE``).
"""

from __future__ import annotations

import gzip
import json
import os
import weakref
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from kdlightning.errors import ConfigurationError, MissingFileError

__all__ = [
    "FASHION_MNIST_DIR",
    "DatasetSource",
    "Digits",
    "FashionMNIST",
    "HFDataset",
    "LabelledData",
    "load_digits_arrays",
    "read_idx",
]

_IN_USE: weakref.WeakValueDictionary[str, LabelledData] = weakref.WeakValueDictionary()
"""Loaded data sets by source class and configuration, while some source holds them (see ``DatasetSource.data``)."""

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where Debian's ``dataset-fashion-mnist`` package puts the IDX files."""


@dataclass(frozen=True)
class LabelledData:
    """A data set as arrays: the labelled training pool and the global test set.

    Attributes:
        train_inputs: ``(N, ...)`` float32 features or images ``(N, C, H, W)``, or ``(N,)`` strings for text.
        train_labels: ``(N,)`` int64 class indices.
        test_inputs: as ``train_inputs``, for the global (unpartitioned) test set.
        test_labels: ``(M,)`` int64 class indices.
        num_classes: number of classes.
        class_names: optional class names, indexed by label.
        train_columns: further per-sample columns of the training pool by name, each ``(N, ...)``: e.g. the
            author of each text, which :class:`~kdlightning.data.NaturalPartitioner` splits by, or a real-valued
            property for :class:`~kdlightning.data.FeatureSkewPartitioner`. Empty by default.
    """

    train_inputs: np.ndarray
    train_labels: np.ndarray
    test_inputs: np.ndarray
    test_labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] | None = None
    train_columns: Mapping[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.train_inputs) != len(self.train_labels) or len(self.test_inputs) != len(self.test_labels):
            raise ConfigurationError("inputs and labels must have the same length in each split")
        for name, column in self.train_columns.items():
            if not isinstance(name, str):
                raise ConfigurationError(f"`train_columns` must be named by strings, got the name {name!r}")
            if np.ndim(column) == 0 or len(column) != len(self.train_labels):
                length = len(column) if np.ndim(column) else "no length"
                raise ConfigurationError(
                    f"`train_columns[{name!r}]` must hold one value per training sample ({len(self.train_labels)}), "
                    f"got {length}"
                )

    @property
    def is_text(self) -> bool:
        """True when the inputs are strings (to be tokenized per network)."""
        return self.train_inputs.dtype.kind in "OUS"


class DatasetSource(ABC):
    """A labelled data set that :class:`~kdlightning.data.PartitionedDataModule` partitions.

    A source implements :meth:`load`; users read it through :meth:`data`, which loads it once per
    source instance: every datamodule given the same source (the parties of a study, the clients of a
    federation) shares one copy of the arrays. :attr:`num_classes` is known without loading where the
    source can tell (:meth:`known_num_classes`), so the CLI links it into the method at parse time
    without reading the data.
    """

    # A slot, not an attribute: ``vars(source)`` stays the source's configuration (the pipelines key
    # their cached runs by it), and the loaded arrays never go along with a pickled or copied source.
    __slots__ = ("_loaded",)

    def prepare(self) -> None:  # noqa: B027 - optional hook
        """Fetch what must be fetched (called once, in ``prepare_data``); local sources do nothing."""

    @abstractmethod
    def load(self) -> LabelledData:
        """Read the training pool and the global test set (called by :meth:`data`, once per instance)."""

    def data(self) -> LabelledData:
        """The loaded data set: :meth:`load`'s result, kept on this instance after the first call.

        The arrays are shared by every caller: treat them as read-only. Copies of a source (an unpickled one: a
        federation's client in a Ray worker gets a fresh copy with every message) share the arrays another source
        of the same class and configuration (``vars``) loaded in this process, while that one is still in use:
        each copy loading its own would cost a load per message, and memory until the garbage collector runs.
        """
        loaded = getattr(self, "_loaded", None)
        if loaded is None:
            configuration = json.dumps(getattr(self, "__dict__", {}), sort_keys=True, default=str)
            key = f"{type(self).__module__}.{type(self).__qualname__}:{configuration}"
            loaded = _IN_USE.get(key)
            if loaded is None:
                loaded = _IN_USE[key] = self.load()
            self._loaded = loaded
        return loaded

    @property
    def num_classes(self) -> int:
        """Number of classes; reads the data (once, see :meth:`data`) unless the source knows it without.

        A subclass that knows it overrides :meth:`known_num_classes`, or sets ``num_classes`` in its
        constructor (e.g. from an argument).
        """
        known = self.known_num_classes()
        return int(known) if known is not None else self.data().num_classes

    @num_classes.setter
    def num_classes(self, value: int | None) -> None:
        self.__dict__["num_classes"] = value

    def known_num_classes(self) -> int | None:
        """The number of classes if known without loading the data (``num_classes`` set on the instance), else None."""
        return getattr(self, "__dict__", {}).get("num_classes")

    def __getstate__(self) -> dict[str, Any]:
        """The configuration only: a copy (a deepcopy, another process) loads its own data when it needs it."""
        return dict(getattr(self, "__dict__", {}))


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes).

    Returns:
        ``(images, labels)``: float32 images ``(N, 1, 8, 8)`` scaled to ``[0, 1]`` and int64 labels ``(N,)``.

    Examples:
        >>> images, labels = load_digits_arrays()
        >>> images.shape, labels.shape, int(labels.max()) + 1
        ((1797, 1, 8, 8), (1797,), 10)
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None]  # (N, 8, 8) -> (N, 1, 8, 8)
    return images, digits.target.astype(np.int64)


class Digits(DatasetSource):
    """scikit-learn's bundled 8×8 digits: the embedded default, needs no file and no network.

    The 1,797 images have no official test split: a stratified ``test_fraction`` is held out as the
    global test set (fixed by ``seed``).

    Args:
        test_fraction: share of the images held out as the global test set, in ``(0, 1)``.
        seed: seed of the test split.
    """

    def __init__(self, test_fraction: float = 0.2, seed: int = 0) -> None:
        if not 0.0 < test_fraction < 1.0:
            raise ConfigurationError(f"`test_fraction` must lie in (0, 1), got {test_fraction!r}.")
        self.test_fraction = test_fraction
        self.seed = seed

    def known_num_classes(self) -> int:
        """10, without loading."""
        return 10

    def load(self) -> LabelledData:
        """The digits, split into a training pool and a stratified test set."""
        from sklearn.model_selection import train_test_split

        images, labels = load_digits_arrays()
        train, test = train_test_split(
            np.arange(len(labels)), test_size=self.test_fraction, stratify=labels, random_state=self.seed
        )
        train, test = np.sort(train), np.sort(test)
        return LabelledData(images[train], labels[train], images[test], labels[test], num_classes=10)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (the MNIST format), gzip-compressed or not, into a numpy array.

    Args:
        path: the ``*-idx?-ubyte`` or ``*-idx?-ubyte.gz`` file.

    Returns:
        The array with the file's shape and dtype (``uint8`` for (Fashion-)MNIST).
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise ConfigurationError(f"'{path}' is not an IDX file (bad magic number).")
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise ConfigurationError(f"'{path}' has an unknown IDX element type 0x{data[2]:02x}.")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ConfigurationError(f"'{path}' is truncated: header says {shape}, found {array.size} elements.")
    return array.reshape(shape).astype(array.dtype.newbyteorder("="))


FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


class FashionMNIST(DatasetSource):
    """Fashion-MNIST (Xiao et al. 2017): 60,000 training and 10,000 test 28×28 grayscale images, 10 classes.

    Read from the four IDX files in ``root`` (gzip-compressed or not). By default ``root`` is where
    Debian's ``dataset-fashion-mnist`` package installs them; ``$KDL_FASHION_MNIST_DIR`` overrides it.

    Args:
        root: directory holding ``train-images-idx3-ubyte[.gz]`` and the three other files.
    """

    FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")

    def __init__(self, root: str | None = None) -> None:
        self.root = Path(root or os.environ.get("KDL_FASHION_MNIST_DIR", FASHION_MNIST_DIR)).expanduser()

    def known_num_classes(self) -> int:
        """10, without reading the files."""
        return len(FASHION_MNIST_CLASSES)

    def _file(self, name: str) -> Path:
        for candidate in (self.root / f"{name}.gz", self.root / name):
            if candidate.is_file():
                return candidate
        raise MissingFileError(
            f"Fashion-MNIST file '{name}[.gz]' not found in '{self.root}'. Install Debian's package "
            "(`apt-get install dataset-fashion-mnist`, which puts the files in /usr/share/datasets/fashion-mnist), "
            "or set `root` (or $KDL_FASHION_MNIST_DIR) to a directory with the four IDX files."
        )

    def load(self) -> LabelledData:
        """Images as float32 ``(N, 1, 28, 28)`` in ``[0, 1]``, labels as int64."""
        train_x, train_y, test_x, test_y = (read_idx(self._file(name)) for name in self.FILES)

        def images(x: np.ndarray) -> np.ndarray:
            return (x.astype(np.float32) / 255.0)[:, None]  # (N, 28, 28) -> (N, 1, 28, 28)

        return LabelledData(
            images(train_x),
            train_y.astype(np.int64),
            images(test_x),
            test_y.astype(np.int64),
            num_classes=len(FASHION_MNIST_CLASSES),
            class_names=FASHION_MNIST_CLASSES,
        )


class HFDataset(DatasetSource):
    """Any Hugging Face ``datasets`` source: a hub id, a local directory, or a builder with local files.

    Calls ``datasets.load_dataset(path, name, data_dir=..., data_files=...)``. Examples:
    ``HFDataset("csv", data_files={"train": "train.csv", "test": "test.csv"}, input_column="text")``,
    ``HFDataset("imagefolder", data_dir="images/")``, ``HFDataset("fashion_mnist")`` (hub, online).

    Image columns become float32 ``(N, C, H, W)`` arrays in ``[0, 1]``; text columns stay strings
    (tokenized per network by the datamodule); numeric columns become float32 features. Integer or
    ``ClassLabel`` labels are used as they are; string labels are mapped to indices in sorted order.

    Args:
        path: hub id, local directory, or builder name (``csv``, ``json``, ``parquet``, ``imagefolder``).
        name: the data set's configuration name, if it has several.
        data_dir: local directory for builders such as ``imagefolder``.
        data_files: local files, a path or ``{"train": ..., "test": ...}``.
        input_column: the column(s) with the inputs: one image or text column, or several numeric ones.
        label_column: the column with the class labels.
        train_split: split used as the training pool.
        test_split: split used as the global test set; None to hold out ``test_fraction`` of the train split.
        test_fraction: share of the train split held out as the test set when ``test_split`` is None or missing.
        seed: seed of that held-out split.
        input_kind: ``"auto"`` (from the column's feature type), ``"image"``, ``"text"`` or ``"numeric"``.
        num_classes: the number of classes, if known; None reads it from the data set's metadata (a
            ``ClassLabel`` label column) or, failing that, from the loaded labels.
        train_size: keep a random ``train_size`` of the training pool (drawn with ``seed``); None keeps it all.
        test_size: keep a random ``test_size`` of the test set (drawn with ``seed``); None keeps it all.
        builder_kwargs: further arguments of ``load_dataset`` for the builder, e.g. ``{"encoding_errors":
            "replace"}`` for a ``csv`` file with bytes that are not UTF-8.
        keep_columns: further columns of the training pool to keep as arrays, in ``train_columns`` of the loaded
            data, e.g. ``["author"]`` for a :class:`~kdlightning.data.NaturalPartitioner`. None keeps none.
    """

    keep_columns: Sequence[str] = ()
    """The columns kept besides inputs and labels. Set on an instance only when some are kept, so a source that keeps
    none has the configuration (``vars``) it always had, and the pipelines' cached runs keyed by it stay valid."""

    def __init__(
        self,
        path: str,
        name: str | None = None,
        data_dir: str | None = None,
        data_files: str | list[str] | dict[str, str | list[str]] | None = None,
        input_column: str | list[str] = "image",
        label_column: str = "label",
        train_split: str = "train",
        test_split: str | None = "test",
        test_fraction: float = 0.2,
        seed: int = 0,
        input_kind: Literal["auto", "image", "text", "numeric"] = "auto",
        num_classes: int | None = None,
        train_size: int | None = None,
        test_size: int | None = None,
        builder_kwargs: dict[str, Any] | None = None,
        keep_columns: list[str] | None = None,
    ) -> None:
        for name, size in (("train_size", train_size), ("test_size", test_size)):
            if size is not None and int(size) < 1:
                raise ConfigurationError(f"`{name}` must be >= 1 or None, got {size!r}.")
        if not 0.0 < test_fraction < 1.0:
            raise ConfigurationError(f"`test_fraction` must lie in (0, 1), got {test_fraction!r}.")
        if input_kind not in ("auto", "image", "text", "numeric"):
            raise ConfigurationError(f"`input_kind` must be 'auto', 'image', 'text' or 'numeric', got {input_kind!r}.")
        if num_classes is not None and int(num_classes) < 2:
            raise ConfigurationError(f"`num_classes` must be >= 2 or None, got {num_classes!r}.")
        self.path, self.name, self.data_dir, self.data_files = path, name, data_dir, data_files
        self.input_columns = [input_column] if isinstance(input_column, str) else list(input_column)
        self.label_column = label_column
        self.train_split, self.test_split = train_split, test_split
        self.test_fraction, self.seed, self.input_kind = test_fraction, seed, input_kind
        self.num_classes = num_classes
        self.train_size, self.test_size = train_size, test_size
        self.builder_kwargs = dict(builder_kwargs or {})
        if keep_columns:
            if isinstance(keep_columns, str) or not all(isinstance(c, str) and c for c in keep_columns):
                raise ConfigurationError(f"`keep_columns` must be a list of column names, got {keep_columns!r}.")
            self.keep_columns = list(keep_columns)

    def _load(self) -> Any:
        import datasets

        try:
            return datasets.load_dataset(
                self.path, self.name, data_dir=self.data_dir, data_files=self.data_files, **self.builder_kwargs
            )
        except FileNotFoundError as error:
            raise MissingFileError(
                f"Could not load data set '{self.path}' (data_dir={self.data_dir!r}, data_files={self.data_files!r}): "
                f"{error}. Check the local path, or, for a hub id, that the hub is reachable (HF_DATASETS_OFFLINE=1 "
                "allows only data already in the local cache)."
            ) from error
        except datasets.exceptions.DatasetGenerationError as error:
            if isinstance(error.__cause__, UnicodeDecodeError):
                raise ConfigurationError(
                    f"Data set '{self.path}' (data_files={self.data_files!r}) holds bytes that are not UTF-8 "
                    f"({error.__cause__}): give its encoding, e.g. `builder_kwargs: {{encoding: latin-1}}`, or "
                    "`builder_kwargs: {encoding_errors: replace}` to read them as U+FFFD."
                ) from error
            raise
        except ConnectionError as error:
            raise ConnectionError(
                f"Could not reach the Hugging Face hub for data set '{self.path}': {error}. Download it where there "
                "is a network and pass its local directory, or set HF_DATASETS_OFFLINE=1 to use the local cache."
            ) from error

    def prepare(self) -> None:
        """Download (or find in the cache) the data set once."""
        self._load()

    def known_num_classes(self) -> int | None:
        """``num_classes`` if given, else the label column's ``ClassLabel`` names in the data set's metadata.

        The metadata is read without loading the data (``datasets.load_dataset_builder``); a builder that
        infers its features from the files (``csv``, ``json``) has none, and None is returned.
        """
        given = super().known_num_classes()
        if given is not None:
            return given
        loaded = getattr(self, "_loaded", None)
        if loaded is not None:
            return loaded.num_classes
        import datasets

        try:
            builder = datasets.load_dataset_builder(
                self.path, self.name, data_dir=self.data_dir, data_files=self.data_files
            )
        except Exception:  # unreachable, unknown or unreadable: loading the data reports it properly
            return None
        feature = (builder.info.features or {}).get(self.label_column)
        names = getattr(feature, "names", None)
        return len(names) if names else None

    def load(self) -> LabelledData:
        """The train split (pool) and the test split (or a held-out share of the train split)."""
        splits = self._load()
        if self.train_split not in splits:
            raise ConfigurationError(f"`train_split` {self.train_split!r} not in the data set's splits {list(splits)}.")
        train = splits[self.train_split]
        wanted = [*self.input_columns, self.label_column, *self.keep_columns]
        missing = [c for c in wanted if c not in train.column_names]
        if missing:
            raise ConfigurationError(f"Columns {missing} not in data set '{self.path}'; it has {train.column_names}.")
        if self.test_split is not None and self.test_split in splits:
            test = splits[self.test_split]
        else:
            parts = train.train_test_split(test_size=self.test_fraction, seed=self.seed)
            train, test = parts["train"], parts["test"]
        train, test = self._subsample(train, self.train_size), self._subsample(test, self.test_size)
        names = self._class_names(train, test)
        train_y, test_y = self._labels(train, names), self._labels(test, names)
        num_classes = len(names) if names is not None else int(max(train_y.max(), test_y.max())) + 1
        given = super().known_num_classes()
        if given is not None:
            if num_classes > given:
                raise ConfigurationError(
                    f"Data set '{self.path}' has {num_classes} classes in column {self.label_column!r}, more than "
                    f"`num_classes`={given}."
                )
            num_classes = given
        return LabelledData(
            self._inputs(train),
            train_y,
            self._inputs(test),
            test_y,
            num_classes=num_classes,
            class_names=names,
            train_columns={column: np.asarray(list(train[column])) for column in self.keep_columns},
        )

    def _subsample(self, split: Any, size: int | None) -> Any:
        """A random ``size`` rows of ``split`` (drawn with ``seed``), in their original order; all of it if None."""
        if size is None or size >= len(split):
            return split
        rows = np.sort(np.random.default_rng(self.seed).permutation(len(split))[: int(size)])
        return split.select(rows)

    def _class_names(self, train: Any, test: Any) -> tuple[str, ...] | None:
        feature = train.features[self.label_column]
        if hasattr(feature, "names"):  # ClassLabel
            return tuple(feature.names)
        values = train[self.label_column]
        if values and isinstance(values[0], str):
            return tuple(sorted(set(values) | set(test[self.label_column])))
        return None

    def _labels(self, split: Any, names: Sequence[str] | None) -> np.ndarray:
        values = split[self.label_column]
        if values and isinstance(values[0], str):
            index = {name: i for i, name in enumerate(names or ())}
            return np.array([index[v] for v in values], dtype=np.int64)
        return np.asarray(values, dtype=np.int64)

    def _kind(self, split: Any) -> str:
        if self.input_kind != "auto":
            return self.input_kind
        if len(self.input_columns) > 1:
            return "numeric"
        feature = split.features[self.input_columns[0]]
        if type(feature).__name__ == "Image":
            return "image"
        if getattr(feature, "dtype", None) in ("string", "large_string"):
            return "text"
        return "numeric"

    def _inputs(self, split: Any) -> np.ndarray:
        kind = self._kind(split)
        if kind == "text":
            return np.asarray(split[self.input_columns[0]], dtype=object)
        if kind == "numeric":
            columns = [np.asarray(split[c], dtype=np.float32).reshape(len(split), -1) for c in self.input_columns]
            return np.concatenate(columns, axis=1)
        images = [np.asarray(image, dtype=np.float32) / 255.0 for image in split[self.input_columns[0]]]
        if len({image.shape for image in images}) > 1:
            raise ConfigurationError(f"Images in '{self.path}' have different sizes; resize them to one size first.")
        array = np.stack(images)
        return array[:, None] if array.ndim == 3 else array.transpose(0, 3, 1, 2)  # (N, H, W[, C]) -> (N, C, H, W)
