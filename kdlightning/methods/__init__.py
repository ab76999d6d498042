"""kdlightning's distillation methods, each a `LightningModule` subclassing `DistillationModule`."""

from kdlightning.methods.base import Batch, DistillationModule
from kdlightning.methods.baseline import StudentOnly
from kdlightning.methods.consolidation import MultiTeacherKD
from kdlightning.methods.dml import DeepMutualLearning
from kdlightning.methods.dpkd import DataPartitioningKD
from kdlightning.methods.kd import VanillaKD
from kdlightning.methods.members import BatchedMembers, NotBatchable, member_error
from kdlightning.methods.own_data import OwnDataMembers

__all__ = [
    "Batch",
    "BatchedMembers",
    "DataPartitioningKD",
    "DeepMutualLearning",
    "DistillationModule",
    "MultiTeacherKD",
    "NotBatchable",
    "OwnDataMembers",
    "StudentOnly",
    "VanillaKD",
    "member_error",
]
