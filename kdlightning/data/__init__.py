"""Data sets and datamodules."""

from kdlightning.data.datamodules import ClassificationDataModule, DigitsDataModule, EpochShuffleSampler
from kdlightning.data.datasets import load_digits_arrays

__all__ = ["ClassificationDataModule", "DigitsDataModule", "EpochShuffleSampler", "load_digits_arrays"]
