"""kdlightning: knowledge distillation between pre-trained models, as PyTorch Lightning modules."""

from kdlightning.methods import (
    BatchedMembers,
    DataPartitioningKD,
    DeepMutualLearning,
    DistillationModule,
    MultiTeacherKD,
    OwnDataMembers,
    StudentOnly,
    VanillaKD,
)
from kdlightning.models import load_network, load_student

__version__ = "0.1.0"

__all__ = [
    "BatchedMembers",
    "DataPartitioningKD",
    "DeepMutualLearning",
    "DistillationModule",
    "MultiTeacherKD",
    "OwnDataMembers",
    "StudentOnly",
    "VanillaKD",
    "__version__",
    "load_network",
    "load_student",
]
