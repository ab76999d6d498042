"""``KDLightningCLI``: LightningCLI over every kdlightning method and datamodule (the ``kdl`` command's parser)."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import yaml
from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI, SaveConfigCallback

import kdlightning.data  # noqa: F401  (its datamodules become known by short name: --data.help PartitionedDataModule)
from kdlightning.callbacks import FitSummary, ModelSummary
from kdlightning.errors import ConfigurationError, MissingFileError
from kdlightning.methods.base import DistillationModule

__all__ = ["HelpFormatter", "KDLightningCLI", "LogConfig", "check_ckpt_path"]

_ROLE = re.compile(r":(?:class|meth|func|mod|data|attr|obj):`~?(?:[\w.]+\.)?([\w]+)`")
_LITERAL = re.compile(r"``(.+?)``", re.DOTALL)
_LONG = 160
"""Longer defaults (a whole default config's methods) are left to ``--print_config``."""


class HelpFormatter(DefaultHelpFormatter):
    """jsonargparse's help, readable: docstring markup as plain text, no list of every ``torch.nn`` subclass."""

    def _get_help_string(self, action: Any) -> str:
        text = super()._get_help_string(action)
        text = text.split(", known subclasses:")[0]
        if "default: " in text:  # given by a default config: not for the user to give
            text = text.replace("(required, ", "(")
        if len(str(action.default)) > _LONG:
            text = text.replace("%(default)s", "see --print_config")
        return _plain(text)

    def _format_text(self, text: str) -> str:
        return super()._format_text(_plain(text))


def _plain(text: str) -> str:
    """Docstring markup as text: ``:class:`~a.B``` → ``B``, ````x```` → ``x``."""
    return _LITERAL.sub(r"\1", _ROLE.sub(r"\1", text))


class LogConfig(SaveConfigCallback):
    """Save the run's full config to its log directory and give it to every logger as hyperparameters.

    A W&B run's config then holds the method, the networks, the optimizer, the data, its partition and the
    trainer settings, not only the method's scalar hyperparameters.
    """

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Log the config (as nested values) to every logger of ``trainer``."""
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False, skip_check=True))
        for logger in trainer.loggers:
            logger.log_hyperparams({"config": config})


class KDLightningCLI(LightningCLI):
    """LightningCLI for kdlightning: methods, networks, optimizers and data chosen by ``class_path``.

    ``data.num_classes`` is linked into ``model.init_args.num_classes``. Optimizers are the methods'
    own ``OptimizerCallable`` arguments (DML takes two), so the CLI does not add its own.
    """

    def __init__(self, args: ArgsType = None, run: bool = True, **kwargs: object) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("save_config_callback", LogConfig)
        # a line on how the fit went; the model summary without metric containers and an empty FLOPs column
        kwargs.setdefault("trainer_defaults", {"callbacks": [FitSummary(), ModelSummary()]})
        super().__init__(
            DistillationModule,
            L.LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            auto_configure_optimizers=False,
            args=args,
            run=run,
            **kwargs,  # type: ignore[arg-type]
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Link the datamodule's class count into the method."""
        parser.link_arguments("data.num_classes", "model.init_args.num_classes", apply_on="instantiate")

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """LightningCLI's parser, with the readable :class:`HelpFormatter`."""
        kwargs.setdefault("formatter_class", HelpFormatter)
        return super().init_parser(**kwargs)

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse the arguments; check ``--ckpt_path`` before anything reads it (:func:`check_ckpt_path`)."""
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            check_ckpt_path(self.config[subcommand].get("ckpt_path"))

    def before_instantiate_classes(self) -> None:
        """Name a W&B run after its config: name, group, job type and tags, unless the config sets them."""
        config = self.config.get(str(self.subcommand), self.config)
        logger = config.get("trainer", {}).get("logger")
        if not str(getattr(logger, "class_path", "")).endswith("WandbLogger"):
            return
        for key, value in wandb_run_info(config, str(self.subcommand or "fit")).items():
            if not logger.init_args.get(key):
                logger.init_args[key] = value


def check_ckpt_path(ckpt_path: Any) -> None:
    """Raise a clear error, before anything is built, if ``--ckpt_path`` names a file that is not a checkpoint.

    Lightning's own names (``last``, ``best``, ``hpc``, ``registry...``) and remote paths are left to Lightning.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a checkpoint (``torch.save`` writes a zip archive; this is truncated or of
            another kind).
    """
    if ckpt_path is None:
        return
    text = str(ckpt_path)
    if text in ("last", "best", "hpc") or text.startswith("registry") or "://" in text:
        return
    path = Path(text).expanduser()
    if not path.is_file():
        raise MissingFileError(f"`--ckpt_path` '{text}' does not exist: give a checkpoint (.ckpt) a run wrote.")
    if not zipfile.is_zipfile(path):
        raise ConfigurationError(
            f"`--ckpt_path` '{text}' is not a checkpoint: a Lightning checkpoint (.ckpt) is the zip archive "
            "torch.save writes, and this file is not one (it may be truncated or of another kind)."
        )


def wandb_run_info(config: Any, job_type: str) -> dict[str, Any]:
    """``name`` (the run's ``default_root_dir`` under ``runs/``, else the method), ``group``, ``job_type``, ``tags``.

    Examples:
        >>> from jsonargparse import Namespace
        >>> config = Namespace(
        ...     model=Namespace(class_path="kdlightning.VanillaKD", init_args=Namespace(
        ...         student=Namespace(class_path="kdlightning.models.MLP"),
        ...         teacher=Namespace(class_path="kdlightning.models.Pretrained"))),
        ...     data=Namespace(class_path="kdlightning.data.DigitsDataModule", init_args=Namespace()),
        ...     trainer=Namespace(default_root_dir="runs/digits/vanilla_kd"))
        >>> info = wandb_run_info(config, "fit")
        >>> info["name"], info["group"], info["job_type"]
        ('digits/vanilla_kd', 'DigitsDataModule', 'fit')
        >>> info["tags"]
        ['VanillaKD', 'MLP', 'Pretrained', 'DigitsDataModule']
    """

    def short(value: Any) -> str:
        return str(getattr(value, "class_path", "") or "").rsplit(".", 1)[-1]

    model, data = config.get("model"), config.get("data")
    method = short(model)
    networks = [short(value) for key, value in vars(getattr(model, "init_args", {}) or {}).items() if short(value)]
    partitioner = short(getattr(getattr(data, "init_args", None), "partitioner", None) or None)
    group = "/".join(part for part in (short(data), partitioner) if part)
    root = str(config.get("trainer", {}).get("default_root_dir") or "")
    name = root.split("runs/", 1)[1] if "runs/" in root else method
    tags = list(dict.fromkeys(part for part in (method, *networks, short(data), partitioner) if part))
    return {"name": name or None, "group": group or None, "job_type": job_type, "tags": tags}
