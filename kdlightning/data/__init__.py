"""Data: partitioners and their strategy classes (pure numpy), data set sources and LightningDataModules."""

from kdlightning.data.data_strategies import FeatureSkewPartitioner, NaturalPartitioner
from kdlightning.data.datamodules import ClassificationDataModule, DigitsDataModule, PartitionedDataModule
from kdlightning.data.datasets import (
    DatasetSource,
    Digits,
    FashionMNIST,
    HFDataset,
    LabelledData,
    load_digits_arrays,
)
from kdlightning.data.feature_skew import feature_skew, mean_intensity, text_length
from kdlightning.data.label_mix import label_matched_subset
from kdlightning.data.loading import EpochShuffleSampler, ResumableDataLoader
from kdlightning.data.natural import natural
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
    TrainingPool,
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
    "FeatureSkewPartitioner",
    "HFDataset",
    "IIDPartitioner",
    "InnerDirichletPartitioner",
    "LabelSkewPartitioner",
    "LabelledData",
    "MemberStreams",
    "NaturalPartitioner",
    "PartitionedDataModule",
    "Partitioner",
    "QuantitySkewPartitioner",
    "ResumableDataLoader",
    "ShardPartitioner",
    "SizeRulePartitioner",
    "TokenizeCollate",
    "TrainingPool",
    "Tweets",
    "dirichlet",
    "feature_skew",
    "iid",
    "inner_dirichlet",
    "label_matched_subset",
    "label_skew",
    "load_digits_arrays",
    "mean_intensity",
    "natural",
    "partition_stats",
    "plot_partition",
    "quantity_skew",
    "shards",
    "sized",
    "text_length",
]
