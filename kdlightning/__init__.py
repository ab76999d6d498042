"""kdlightning: knowledge distillation between pre-trained models, as PyTorch Lightning modules.

The methods and loaders below are imported on first use, so importing a pure module of the package
(``kdlightning.losses``, ``kdlightning.data.partitioners``, ``kdlightning.errors``) loads neither Lightning nor
torch's training stack.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_EXPORTS = {
    **dict.fromkeys(
        (
            "BatchedMembers",
            "DataPartitioningKD",
            "DeepMutualLearning",
            "DistillationModule",
            "MultiTeacherKD",
            "OwnDataMembers",
            "StudentOnly",
            "VanillaKD",
        ),
        "kdlightning.methods",
    ),
    "load_network": "kdlightning.models",
    "load_student": "kdlightning.models",
}
"""Each public name and the module that defines it."""

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


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
