"""Fingerprints: equal for networks computing the same function and for transforms giving the same inputs."""

from __future__ import annotations

import copy
import functools
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from kdlightning.cache import module_fingerprint as reexported
from kdlightning.data import DigitsDataModule
from kdlightning.fingerprint import check_deterministic_transfer, data_fingerprint, module_fingerprint, module_settings


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


class Tensors(nn.Module):
    """Forward settings held as tensors that are neither parameters nor buffers."""

    def __init__(self, scale: float, shift: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear = nn.Linear(4, 3)
        self.scale = torch.tensor(scale)
        self.shifts = {"bias": [torch.tensor(shift)]}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * self.linear(x) + self.shifts["bias"][0]


def test_a_plain_tensor_attribute_changes_the_fingerprint() -> None:
    assert module_fingerprint(Tensors(2.0)) == module_fingerprint(Tensors(2.0))
    assert module_fingerprint(Tensors(2.0)) != module_fingerprint(Tensors(7.0))
    assert module_fingerprint(Tensors(2.0, shift=0.0)) != module_fingerprint(Tensors(2.0, shift=5.0))  # in a container
    assert module_fingerprint(nn.Sequential(Tensors(2.0))) != module_fingerprint(nn.Sequential(Tensors(7.0)))


class Affine:
    """A plain object a network calls in ``forward``; its repr names no parameter."""

    def __init__(self, factor: float) -> None:
        self.factor = factor

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.factor * x


class Post(Scaled):
    def __init__(self, post: Any) -> None:
        super().__init__()
        self.post = post

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.post(super().forward(x))


def test_the_cache_keys_a_public_object_attribute_by_its_state() -> None:
    assert module_fingerprint(Post(Affine(2.0)), strict=True) == module_fingerprint(Post(Affine(2.0)), strict=True)
    assert module_fingerprint(Post(Affine(2.0)), strict=True) != module_fingerprint(Post(Affine(3.0)), strict=True)
    # a function is keyed by its code and closure in either mode
    assert module_fingerprint(Post(lambda x: 2.0 * x)) != module_fingerprint(Post(lambda x: 3.0 * x))
    assert module_fingerprint(Post(torch.tanh)) != module_fingerprint(Post(torch.sigmoid))
    # checkpoints and batched members: an object counts by its class, and the fingerprint never fails
    assert module_fingerprint(Post(Affine(2.0))) == module_fingerprint(Post(Affine(3.0)))
    assert module_fingerprint(Post(threading.Lock())) == module_fingerprint(Post(threading.Lock()))


def test_the_cache_refuses_a_public_attribute_whose_state_cannot_be_read() -> None:
    with pytest.raises(
        ValueError, match=r"'post' of Post cannot be keyed: post\.factor \(a _thread\.lock\).*fingerprint\(\)"
    ):
        module_fingerprint(Post(Affine(threading.Lock())), strict=True)
    network = Post(Affine(2.0))
    network._lock = threading.Lock()  # private: not a setting
    module_fingerprint(network, strict=True)


class Lambda:
    """torchvision's ``Lambda``: wraps a function, and its repr names no parameter."""

    def __init__(self, function: Callable[[Any], Any]) -> None:
        self.lambd = function

    def __call__(self, x: Any) -> Any:
        return self.lambd(x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Compose(Lambda):
    """torchvision's ``Compose``."""

    def __init__(self, transforms: list) -> None:
        self.transforms = transforms

    def __call__(self, x: Any) -> Any:
        for transform in self.transforms:
            x = transform(x)
        return x


SHIFT = 0.0


def _shift(x: torch.Tensor, amount: float) -> torch.Tensor:
    return x + amount


def lambda_like(value: float) -> Any:
    return Lambda(lambda x: x * value)


def partial_of_a_local_function(value: float) -> Any:
    def scale(x: torch.Tensor, offset: float) -> torch.Tensor:
        return x * value + offset

    return functools.partial(scale, offset=0.0)


def partial_with_a_keyword(value: float) -> Any:
    return functools.partial(_shift, amount=value)


def lambda_with_a_default(value: float) -> Any:
    return lambda x, factor=value: x * factor


def object_holding_a_tensor(value: float) -> Any:
    return Affine(torch.full((64,), value))


def object_holding_an_array(value: float) -> Any:
    return Affine(np.full((64,), value, dtype=np.float32))


def composed(value: float) -> Any:
    return Compose([Affine(1.0), Lambda(functools.partial(_shift, amount=value))])


def reading_a_global(value: float) -> Any:
    module = sys.modules[__name__]
    module.SHIFT = value
    return lambda x: x + SHIFT


@pytest.mark.parametrize(
    "make",
    [
        lambda_like,
        partial_of_a_local_function,
        partial_with_a_keyword,
        lambda_with_a_default,
        Affine,
        object_holding_a_tensor,
        object_holding_an_array,
        composed,
        reading_a_global,
    ],
)
def test_a_transform_is_keyed_by_its_state_not_its_repr(make: Callable[[float], Any]) -> None:
    x = np.zeros((4, 64), dtype=np.float32)
    first = data_fingerprint(x, transform=make(1.0))
    assert data_fingerprint(x, transform=make(1.0)) == first
    assert data_fingerprint(x, transform=make(2.0)) != first


def test_a_collate_function_is_keyed_by_its_state() -> None:
    def collate(batch: list, scale: float) -> Any:
        return [scale * item for item in batch]

    x = np.zeros((4, 2), dtype=np.float32)
    first = data_fingerprint(x, collate=functools.partial(collate, scale=1.0))
    assert data_fingerprint(x, collate=functools.partial(collate, scale=1.0)) == first
    assert data_fingerprint(x, collate=functools.partial(collate, scale=2.0)) != first


class Declared:
    """A transform that names what determines it."""

    def __init__(self, value: float) -> None:
        self.value = value
        self.lock = threading.Lock()  # state the fingerprint does not need to read

    def __call__(self, x: Any) -> Any:
        return x + self.value

    def fingerprint(self) -> str:
        return f"add {self.value!r}"


def test_a_transform_with_a_fingerprint_method_is_keyed_by_it() -> None:
    x = np.zeros((4, 2), dtype=np.float32)
    assert data_fingerprint(x, transform=Declared(1.0)) == data_fingerprint(x, transform=Declared(1.0))
    assert data_fingerprint(x, transform=Declared(1.0)) != data_fingerprint(x, transform=Declared(2.0))


def one_at_a_time(function: Callable[[Any], Any]) -> Callable[[Any], Any]:
    lock = threading.Lock()

    def call(x: Any) -> Any:
        with lock:
            return function(x)

    return call


def test_a_transform_whose_state_cannot_be_read_is_refused() -> None:
    """The refusal names the transform and the part that cannot be read, and says how to make it keyable."""
    refused = r"train_transform Lambda\(\) cannot be keyed .*lambd\.<closure lock> \(a _thread\.lock\).*fingerprint\(\)"
    transform = Lambda(one_at_a_time(torch.neg))
    with pytest.raises(ValueError, match=refused):
        data_fingerprint(np.zeros((4, 2), dtype=np.float32), transform=transform)
    # checked with the random transforms, so a search turns the cache off instead of failing every trial
    with pytest.raises(ValueError, match=refused):
        check_deterministic_transfer(DigitsDataModule(train_transform=transform))


SAME_IN_EVERY_PROCESS = """
import functools
import numpy as np, torch
from torch import nn


class Settings:
    def __init__(self):
        self.names = {"flip", "crop", "pad"}  # a set of strings: its order follows the hash seed
        self.table = {"mean": [0.5, 0.25], "std": np.ones(2)}


def scale(x, factor):
    return x * factor


def wrapped(function):
    @functools.wraps(function)
    def call(x):
        return function(x)

    call._wrapper_id = id(call)  # bookkeeping, as torch.compile stores
    return call


def fingerprints(fingerprint):
    torch.manual_seed(0)
    network = nn.Linear(2, 2)
    network.post = wrapped(lambda x: x * 2.0)
    network.options = {"modes": {"a", "b", "c"}, "offset": torch.tensor(1.0)}
    transform = [Settings(), functools.partial(scale, factor=2.0), wrapped(lambda x: x + 1.0)]
    inputs = np.zeros((2, 2), dtype=np.float32)
    return [
        fingerprint.module_fingerprint(network),
        fingerprint.module_fingerprint(network, strict=True),
        fingerprint.data_fingerprint(inputs, transform),
    ]
"""

RUN_ALONE = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("fingerprint", sys.argv[1])  # torch and numpy only: a quick start
fingerprint = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fingerprint)
print(json.dumps(fingerprints(fingerprint)))
"""


def test_fingerprints_are_the_same_in_every_process(tmp_path) -> None:
    """Checkpoints compare a reference's fingerprint across processes, and cache files are shared by runs."""
    import json
    import os
    import subprocess

    from kdlightning import fingerprint

    script = tmp_path / "fingerprints.py"
    script.write_text(SAME_IN_EVERY_PROCESS + RUN_ALONE)
    command = [sys.executable, str(script), fingerprint.__file__]
    alone = subprocess.run(command, env={**os.environ, "PYTHONHASHSEED": "1"}, capture_output=True, text=True)
    assert alone.returncode == 0, alone.stderr
    here: dict = {"__name__": "__main__"}
    # the same objects in this process, under another hash seed (and without this module's __future__ flags)
    exec(compile(SAME_IN_EVERY_PROCESS, str(script), "exec", dont_inherit=True), here)
    assert json.loads(alone.stdout) == here["fingerprints"](fingerprint)
