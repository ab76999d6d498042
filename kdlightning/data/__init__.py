"""Data: partitioners and their strategy classes (pure numpy), data set sources and LightningDataModules."""

from kdlightning.data.datamodules import ClassificationDataModule, DigitsDataModule, PartitionedDataModule
from kdlightning.data.datasets import (
    DatasetSource,
    Digits,
    FashionMNIST,
    HFDataset,
    LabelledData,
    load_digits_arrays,
)
from kdlightning.data.loading import EpochShuffleSampler, ResumableDataLoader
from kdlightning.data.partition_sizes import inner_dirichlet, sized
from kdlightning.data.partitioners import (
    dirichlet,
    iid,
    label_skew,
    partition_stats,
    plot_partition,
    quantity_skew,
)
from kdlightning.data.shards import shards
from kdlightning.data.strategies import (
    DirichletPartitioner,
    IIDPartitioner,
    InnerDirichletPartitioner,
    LabelSkewPartitioner,
    Partitioner,
    QuantitySkewPartitioner,
    ShardPartitioner,
    SizeRulePartitioner,
)
from kdlightning.data.streams import MemberStreams
from kdlightning.data.text import TokenizeCollate
from kdlightning.data.tweets import Tweets

__all__ = [
    "ClassificationDataModule",
    "DatasetSource",
    "Digits",
    "DigitsDataModule",
    "DirichletPartitioner",
    "EpochShuffleSampler",
    "FashionMNIST",
    "HFDataset",
    "IIDPartitioner",
    "InnerDirichletPartitioner",
    "LabelSkewPartitioner",
    "LabelledData",
    "MemberStreams",
    "PartitionedDataModule",
    "Partitioner",
    "QuantitySkewPartitioner",
    "ResumableDataLoader",
    "ShardPartitioner",
    "SizeRulePartitioner",
    "TokenizeCollate",
    "Tweets",
    "dirichlet",
    "iid",
    "inner_dirichlet",
    "label_skew",
    "load_digits_arrays",
    "partition_stats",
    "plot_partition",
    "quantity_skew",
    "shards",
    "sized",
]
