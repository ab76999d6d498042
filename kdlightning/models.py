"""Small reference networks and loading of pre-trained networks, all usable from YAML.

``MLP`` and ``SmallCNN`` work on ``(N, C, H, W)`` images of any size (8×8 digits, 28×28
Fashion-MNIST), so the same classes give a teacher and a smaller student. :func:`load_network`
(``Pretrained`` in YAML) restores a network trained in an earlier kdlightning run.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from jsonargparse import class_from_function
from torch import Tensor, nn

from kdlightning.atomic import UNREADABLE
from kdlightning.errors import ConfigurationError, MissingFileError, NotFoundError

__all__ = ["MLP", "Pretrained", "SmallCNN", "load_network", "load_student"]


class MLP(nn.Module):
    """Multilayer perceptron on flattened inputs.

    Args:
        num_classes: number of output logits.
        in_features: size of a flattened input (64 for 8×8 digits, 784 for 28×28 images).
        hidden_sizes: width of each hidden layer.
        dropout: dropout probability after each hidden layer.
    """

    def __init__(
        self, num_classes: int = 10, in_features: int = 64, hidden_sizes: Sequence[int] = (128,), dropout: float = 0.0
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ConfigurationError(f"`dropout` must lie in [0, 1), got {dropout!r}.")
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for size in hidden_sizes:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` of ``x`` ``(N, ...)``."""
        return self.net(x)


class SmallCNN(nn.Module):
    """Conv-BN-ReLU blocks, each followed by 2×2 max pooling, then global average pooling and a linear head.

    Args:
        num_classes: number of output logits.
        in_channels: channels of the input images.
        channels: output channels of each convolutional block.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, channels: Sequence[int] = (32, 64)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_channels
        for out in channels:
            layers += [
                nn.Conv2d(width, out, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2),
            ]
            width = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` of images ``(N, in_channels, H, W)``."""
        return self.head(self.features(x))


def load_network(checkpoint: str | Path, network: nn.Module, role: str = "student") -> nn.Module:
    """Load the weights a kdlightning run trained for ``role`` into ``network`` and return it.

    Use it to make the teacher of one run "the student trained in that earlier run". In YAML it is
    ``kdlightning.models.Pretrained``::

        teacher:
          class_path: kdlightning.models.Pretrained
          init_args:
            checkpoint: runs/digits/teacher/checkpoints/last.ckpt
            network:
              class_path: kdlightning.models.SmallCNN

    Args:
        checkpoint: a Lightning checkpoint written by a kdlightning method (``.ckpt``).
        network: the architecture to load into (the one the run trained).
        role: which trained network of that run: ``"student"``, or ``"peer"`` for DML.

    Returns:
        ``network`` with the loaded weights.

    Raises:
        FileNotFoundError: ``checkpoint`` does not exist.
        ValueError: ``checkpoint`` is not a readable checkpoint holding a state dict.
        KeyError: the checkpoint holds no network called ``role``.
    """
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise MissingFileError(
            f"No checkpoint at '{path}'. Train that network first, e.g. `kdl fit -c configs/_base/trainer.yaml "
            "-c configs/digits/teacher.yaml`, which writes runs/digits/teacher/checkpoints/last.ckpt; or pass the "
            "path of a checkpoint a kdlightning run wrote."
        )
    state = _read_checkpoint(path)
    prefix = f"{role}."
    weights = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    if not weights:
        roles = sorted(
            {key.split(".", 1)[0] for key in state if "." in key and not key.startswith(("val_", "test_", "_"))}
        )
        raise NotFoundError(
            f"Checkpoint '{path}' holds no network '{role}'; it holds {roles}. Set `role` to one of them."
        )
    network.load_state_dict(weights)
    return network


def _read_checkpoint(path: Path) -> Mapping[str, Any]:
    """The state dict of the Lightning checkpoint (or bare state dict) at ``path``; ValueError naming it if unusable."""
    expected = (
        "a Lightning checkpoint (.ckpt) written by a kdlightning run, or a state dict saved with "
        "`torch.save(network.state_dict(), path)`"
    )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except UNREADABLE as error:
        raise ConfigurationError(
            f"Could not read '{path}' as a checkpoint. Expected {expected}; the file may be truncated or of "
            f"another kind ({type(error).__name__}: {error})"
        ) from error
    state = state.get("state_dict", state) if isinstance(state, Mapping) else state
    if not isinstance(state, Mapping) or not all(isinstance(key, str) for key in state):
        raise ConfigurationError(f"'{path}' holds a {type(state).__name__}, not a state dict. Expected {expected}.")
    return state


def load_student(checkpoint: str | Path, student: nn.Module) -> nn.Module:
    """Load the trained student of a kdlightning checkpoint into ``student`` (see :func:`load_network`)."""
    return load_network(checkpoint, student, role="student")


Pretrained = class_from_function(load_network, nn.Module, name="Pretrained")
"""YAML-friendly form of :func:`load_network`: ``class_path: kdlightning.models.Pretrained``."""
