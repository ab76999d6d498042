"""kdlightning's distillation methods, each a `LightningModule` subclassing `DistillationModule`."""

from kdlightning.methods.base import Batch, DistillationModule
from kdlightning.methods.baseline import StudentOnly
from kdlightning.methods.consolidation import MultiTeacherKD
from kdlightning.methods.dml import DeepMutualLearning
from kdlightning.methods.dpkd import DataPartitioningKD
from kdlightning.methods.kd import VanillaKD

__all__ = [
    "Batch",
    "DataPartitioningKD",
    "DeepMutualLearning",
    "DistillationModule",
    "MultiTeacherKD",
    "StudentOnly",
    "VanillaKD",
]
