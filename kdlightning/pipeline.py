"""What the pipelines (``kdl study``, ``kdl federate``) share, in one place.

- :data:`NetworkFactory`: how a pipeline is given a network (in YAML a ``class_path`` with ``init_args``);
- :func:`digest`: a short, stable key of a configuration (names cached files);
- :func:`pretrain_once`: a network trained once per configuration, then read back from its file
  (:func:`load_weights`; an unreadable file is trained again);
- :func:`check_trainer` and :func:`trainer`: the quiet single-device trainer of a pipeline's many short
  fits, with the settings a user may override (accelerator, precision, ...); :func:`check_trainer_for`: the
  settings a method cannot train with;
- :func:`check_writable`: an output directory the pipeline can write, before it writes anything;
- :func:`describe`, :func:`differences`: a configuration as JSON that names it alike in every process, and where
  two such records differ (what a resume is checked against);
- :func:`command_parser` and :func:`from_args`: a pipeline class as a command line (``-c`` configs,
  ``--<argument>`` overrides), with an embedded default config that an explicit ``-c`` replaces.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import inspect
import json
import os
import re
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import lightning as L
import torch
from lightning.pytorch.cli import OptimizerCallable
from torch import nn

from kdlightning.atomic import UNREADABLE, atomic_path
from kdlightning.errors import ConfigurationError, StorageError
from kdlightning.trainers import quiet_trainer

if TYPE_CHECKING:
    from kdlightning.methods import DistillationModule

__all__ = [
    "ABSENT",
    "DEFAULTS",
    "NetworkFactory",
    "check_trainer",
    "check_trainer_for",
    "check_writable",
    "command_parser",
    "describe",
    "differences",
    "digest",
    "from_args",
    "has_config",
    "load_weights",
    "optimized",
    "pretrain_once",
    "save_weights",
    "show",
    "trainer",
    "without_addresses",
]

NetworkFactory = Callable[[int], nn.Module]
"""Builds a fresh network for ``num_classes`` classes (in YAML: a ``class_path`` with ``init_args``)."""

_Method = TypeVar("_Method", bound="DistillationModule")

DEFAULTS = Path(__file__).with_name("defaults")
"""The packaged default configs: ``study.yaml`` and ``federated.yaml`` (the bundled digits)."""

_PIPELINE_OWNED = ("max_epochs", "callbacks", "logger", "enable_checkpointing", "enable_progress_bar", "devices")
"""Trainer arguments a pipeline sets itself (one device, no logger, checkpoints or bar, its own epochs)."""

Pipeline = TypeVar("Pipeline")


def digest(*parts: Any) -> str:
    """A 24-character SHA-256 of ``parts`` as JSON (non-JSON values by ``str``): equal parts, equal digest.

    Examples:
        >>> digest("iid", 0) == digest("iid", 0) != digest("iid", 1)
        True
    """
    return hashlib.sha256(json.dumps(list(parts), default=str).encode()).hexdigest()[:24]


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
"""A memory address in a ``repr``: it changes from process to process and says nothing of the value."""

ABSENT = object()
"""A key one of two compared configurations does not have."""


def describe(value: Any) -> Any:
    """``value`` as JSON that names it the same way in every process (for ``study.json``).

    Classes and functions become their import path; a ``functools.partial`` (a factory from Python, or from a
    YAML ``class_path`` with ``init_args``) its target's path and arguments; anything else its ``repr``
    without memory addresses.

    Examples:
        >>> from kdlightning import VanillaKD
        >>> describe(functools.partial(VanillaKD, temperature=2.0))
        {'class_path': 'kdlightning.methods.kd.VanillaKD', 'init_args': {'temperature': 2.0}}
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(key): describe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [describe(item) for item in value]
    if isinstance(value, functools.partial):
        parts = [value.func, *value.args]
        if not value.args and not value.keywords:  # partial(VanillaKD) is VanillaKD
            return describe(value.func)
        # jsonargparse builds partial(<wrapper>, <instantiator>, cls, **init_args): the class is the target
        target = next((i for i, part in enumerate(parts) if isinstance(part, type)), 0)
        described: dict[str, Any] = {"class_path": describe(parts[target])}
        if parts[target + 1 :]:
            described["args"] = describe(parts[target + 1 :])
        if value.keywords:
            described["init_args"] = describe(value.keywords)
        return described
    if isinstance(value, type) or (callable(value) and hasattr(value, "__qualname__")):
        return f"{value.__module__}.{value.__qualname__}"
    return without_addresses(repr(value))


def differences(old: Any, new: Any, only_old_keys: bool, path: str = "") -> list[tuple[str, Any, Any]]:
    """The leaves where ``old`` and ``new`` differ, as ``(dotted path, old value, new value)``.

    Mappings are compared key by key (only ``old``'s keys with ``only_old_keys``); a missing key is ``ABSENT``.
    """
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        keys = list(old) if only_old_keys else list(dict.fromkeys([*old, *new]))
        return [
            difference
            for key in keys
            for difference in differences(
                old.get(key, ABSENT), new.get(key, ABSENT), only_old_keys, f"{path}.{key}" if path else str(key)
            )
        ]
    return [] if old == new else [(path, old, new)]


def show(value: Any, width: int = 80) -> str:
    """``value`` in an error message: JSON, shortened to ``width`` characters."""
    text = "absent" if value is ABSENT else json.dumps(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def without_addresses(text: str) -> str:
    """``text`` without the memory addresses a ``repr`` holds (``<function f at 0x7f...>`` → ``<function f>``).

    Examples:
        >>> without_addresses("<object at 0x7f3a2b>")
        '<object>'
    """
    return _ADDRESS.sub("", text)


def pretrain_once(path: str | Path, network: nn.Module, train: Callable[[nn.Module], Any]) -> nn.Module:
    """``network`` with the weights in ``path``, or trained by ``train(network)`` and saved there (atomically).

    A file that cannot be read (:func:`load_weights`) is derived data: the network is trained and the file
    written over.

    Args:
        path: the file of this configuration's pre-trained weights (name it with :func:`digest`).
        network: a fresh network of the configured architecture.
        train: trains ``network`` in place.
    """
    path = Path(path)
    if path.is_file() and load_weights(path, network):
        return network
    trained = copy.deepcopy(network)
    train(trained)
    save_weights(path, trained)
    # as a later run loads it: in the network's own dtypes (a fit in `64-true` precision trains a double copy)
    network.load_state_dict(trained.state_dict())
    return network


def load_weights(path: str | Path, network: nn.Module) -> bool:
    """Load the weights :func:`save_weights` wrote in ``path`` into ``network``; whether it could.

    A file that cannot be read (truncated, garbage, another network's weights) leaves ``network`` as it was and
    returns False, with a warning that names the file.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        copy.deepcopy(network).load_state_dict(state)  # a failed load may have copied part of the weights
    except (*UNREADABLE, KeyError, TypeError, AttributeError) as error:
        problem = str(error).strip().splitlines()[0] if str(error).strip() else ""
        warnings.warn(
            f"Ignoring the pre-trained weights '{path}': they cannot be read ({type(error).__name__}: {problem}). "
            "The network is trained again and the file written over.",
            stacklevel=3,
        )
        return False
    network.load_state_dict(state)
    return True


def save_weights(path: str | Path, network: nn.Module) -> None:
    """Save ``network``'s ``state_dict`` (on the CPU) to ``path`` atomically, as :func:`pretrain_once` reads it."""
    with atomic_path(Path(path)) as tmp:
        torch.save({key: value.detach().cpu() for key, value in network.state_dict().items()}, tmp)


def check_trainer(settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """``settings`` for every fit of a pipeline (``accelerator``, ``precision``, ...), checked against ``Trainer``.

    Raises:
        ValueError: a key that is not a ``lightning.Trainer`` argument, or one the pipeline sets itself.
    """
    settings = dict(settings or {})
    known = set(inspect.signature(L.Trainer.__init__).parameters) - {"self", *_PIPELINE_OWNED}
    unknown = sorted(set(settings) - known)
    if unknown:
        raise ConfigurationError(
            f"`trainer` keys {unknown} are not Trainer arguments a pipeline lets you set; choose from "
            f"{sorted(known)} (the pipeline sets {list(_PIPELINE_OWNED)} itself)."
        )
    return settings


def trainer(
    max_epochs: int, callbacks: Sequence[L.Callback] = (), settings: Mapping[str, Any] | None = None, **kwargs: Any
) -> L.Trainer:
    """A pipeline's quiet trainer: :func:`~kdlightning.trainers.quiet_trainer` with the user's ``settings`` on top.

    Args:
        max_epochs: epochs to train.
        callbacks: Lightning callbacks.
        settings: the pipeline's ``trainer`` settings (see :func:`check_trainer`).
        **kwargs: the pipeline's own defaults for this fit (e.g. ``limit_val_batches=0``); ``settings`` win.
    """
    return quiet_trainer(max_epochs, list(callbacks), **{**kwargs, **dict(settings or {})})


def check_trainer_for(model: Any, settings: Mapping[str, Any], where: str) -> None:
    """Raise ``ValueError`` if ``model`` (built once from the configuration) cannot train with ``settings``.

    Lightning refuses gradient clipping and accumulation for a method that optimizes manually
    (:class:`~kdlightning.DeepMutualLearning`): found here, before a pipeline trains anything.

    Args:
        model: the method.
        settings: the pipeline's ``trainer`` settings.
        where: the argument that configures the method (``methods.dml``), named in the error.
    """
    if getattr(model, "automatic_optimization", True):
        return
    refused = {"gradient_clip_val": lambda v: bool(v), "accumulate_grad_batches": lambda v: v not in (None, 1)}
    for key, is_set in refused.items():
        if is_set(settings.get(key)):
            raise ConfigurationError(
                f"`trainer.{key}: {settings[key]}` cannot apply to `{where}`: {type(model).__name__} optimizes "
                f"manually, and Lightning supports `{key}` only under automatic optimization. Remove it from "
                "`trainer`, or leave that method out."
            )


def check_writable(directory: str | Path, argument: str) -> None:
    """Create ``directory`` if needed and make sure files can be written there, before anything is.

    Raises:
        StorageError: an ``OSError`` with the file system's ``errno``, naming ``argument``, the directory and why.
    """
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as error:
        raise StorageError(
            error.errno,
            f"`{argument}` '{directory}' cannot be written: {error.strerror or error}. Give another `--{argument}`.",
        ) from error


def command_parser(
    cls: type, prog: str, default_config: str | Path | None = None, args: Sequence[str] = (), **kwargs: Any
) -> Any:
    """A ``jsonargparse`` parser of ``cls``'s constructor: ``-c CONFIG`` (repeatable) and ``--<argument>`` overrides.

    Args:
        cls: the pipeline class; its docstring's first line is the description.
        prog: the command's name, e.g. ``"kdl study"``.
        default_config: the embedded default config, read unless ``args`` name one (see :func:`has_config`): an
            explicit ``-c`` replaces it whole.
        args: the arguments the parser will parse.
        **kwargs: more ``ArgumentParser`` options (e.g. ``formatter_class``).
    """
    from jsonargparse import ActionConfigFile, ArgumentParser

    description = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else None
    defaults: list[str | os.PathLike[Any]] = (
        [str(default_config)] if default_config is not None and not has_config(args) else []
    )
    parser = ArgumentParser(prog=prog, description=description, default_config_files=defaults, **kwargs)
    parser.add_argument("-c", "--config", action=ActionConfigFile, help="a YAML config (repeatable: later ones win)")
    parser.add_class_arguments(cls, as_group=False, sub_configs=True)
    return parser


def from_args(
    cls: type[Pipeline], args: Sequence[str], prog: str, default_config: str | Path | None = None
) -> Pipeline:
    """Parse ``args`` with :func:`command_parser` and build the pipeline.

    Examples:
        ``from_args(Federation, ["-c", "federation.yaml", "--out", "runs/x"], "kdl federate")``.
    """
    given = [str(arg) for arg in args]
    parser = command_parser(cls, prog, default_config, given)
    init = parser.instantiate(parser.parse_args(given))
    init.pop("config", None)
    return cls(**init)


def has_config(args: Sequence[str]) -> bool:
    """Whether ``args`` name a config (``-c``/``--config``): it then replaces the embedded default whole."""
    return any(arg in ("-c", "--config") or str(arg).startswith("--config=") for arg in args)


def optimized(model: _Method, optimizer: OptimizerCallable | None) -> _Method:
    """``model`` trained with a pipeline's one ``optimizer``.

    See :meth:`~kdlightning.methods.DistillationModule.use_optimizer`.

    Unchanged when ``optimizer`` is None: the method then trains with its own.
    """
    if optimizer is not None:
        model.use_optimizer(optimizer)
    return model
