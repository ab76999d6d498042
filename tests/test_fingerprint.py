"""module_fingerprint: equal for networks computing the same function, different otherwise."""

from __future__ import annotations

import copy

import torch
from torch import nn

from kdlightning.cache import module_fingerprint as reexported
from kdlightning.fingerprint import module_fingerprint, module_settings


class Scaled(nn.Module):
    """A linear layer whose output is multiplied by a plain attribute, outside the state dict."""

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 3)
        self.scale = scale
        self._calls = 0  # private: not a setting

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.linear(x)


class Config:
    """The part of a Hugging Face `PretrainedConfig` the fingerprint reads."""

    def __init__(self, **values) -> None:
        self.values = values

    def to_dict(self) -> dict:
        return dict(self.values)


class WithConfig(Scaled):
    def __init__(self, config: Config) -> None:
        super().__init__()
        self.config = config


def test_identical_modules_share_the_fingerprint() -> None:
    assert module_fingerprint(Scaled(2.0)) == module_fingerprint(Scaled(2.0))
    assert reexported is module_fingerprint


def test_a_plain_forward_setting_changes_the_fingerprint() -> None:
    assert module_fingerprint(Scaled(1.0)) != module_fingerprint(Scaled(2.0))
    nested = nn.Sequential(Scaled(1.0))
    other = copy.deepcopy(nested)
    other[0].scale = 2.0
    assert module_fingerprint(nested) != module_fingerprint(other)


def test_training_mode_and_private_attributes_are_not_settings() -> None:
    module = Scaled(2.0)
    changed = Scaled(2.0).train(False)
    changed._calls = 5
    assert module_settings(module) == {"scale": 2.0}
    assert module_fingerprint(module) == module_fingerprint(changed)


def test_a_hugging_face_style_config_changes_the_fingerprint() -> None:
    first = WithConfig(Config(hidden_act="gelu"))
    assert module_fingerprint(first) == module_fingerprint(WithConfig(Config(hidden_act="gelu")))
    assert module_fingerprint(first) != module_fingerprint(WithConfig(Config(hidden_act="relu")))


def test_the_class_and_the_dtype_change_the_fingerprint() -> None:
    class Other(Scaled):
        pass

    assert module_fingerprint(Scaled()) != module_fingerprint(Other())
    assert module_fingerprint(Scaled()) != module_fingerprint(Scaled().to(torch.float64))
