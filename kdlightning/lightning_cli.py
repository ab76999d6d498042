"""``KDLightningCLI``: LightningCLI over every kdlightning method and datamodule (the ``kdl`` command's parser)."""

from __future__ import annotations

import os
import re
import sys
import zipfile
from pathlib import Path
from typing import Any, NoReturn

import lightning as L
import yaml
from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities import rank_zero_info

import kdlightning.data  # noqa: F401  (its datamodules become known by short name: --data.help PartitionedDataModule)
from kdlightning.argument_errors import explain, short
from kdlightning.callbacks import FitSummary, ModelSummary
from kdlightning.errors import ConfigurationError, MissingFileError
from kdlightning.methods.base import DistillationModule
from kdlightning.tracking import log_fit_config

__all__ = ["ArgumentParser", "HelpFormatter", "KDLightningCLI", "LogConfig", "check_checkpoint_dirs", "check_ckpt_path"]

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


class ArgumentParser(LightningArgumentParser):
    """LightningCLI's parser, whose errors are one short message: where, which key, what would be accepted.

    A misspelled key, an unknown ``class_path`` or a value of the wrong type is reported with the config file
    it came from (or the command line), a close match and the accepted keys or classes
    (:func:`~kdlightning.argument_errors.explain`), on stderr, with exit status 2, instead of the whole usage
    and jsonargparse's account of every type it tried. ``JSONARGPARSE_DEBUG=true`` raises jsonargparse's error.
    """

    argv: list[str] | None = None
    """The command line being parsed (set by :class:`KDLightningCLI`; ``sys.argv`` otherwise)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        """Print a short account of ``message`` and exit with status 2 (jsonargparse's own error if it must raise)."""
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG"):
            super().error(message, ex)
        argv = self.argv if self.argv is not None else sys.argv[1:]
        subcommand = argv[0] if argv and argv[0] in LightningCLI.subcommands() else None
        prog = self.prog if self.prog.startswith("kdl") and subcommand is None else f"kdl {subcommand or ''}".strip()
        parser = getattr(ex, "subcommand_parser", None) or self
        try:
            dests = list(vars(parser.get_defaults(skip_validation=True)))
        except Exception:  # defaults that cannot be read: no list of keys, the message stays
            dests = []
        top_keys = [d for d in dests if d not in ("help", "config", "print_config", "__default_config__")]
        text = explain(message, argv, top_keys)
        if text is None:
            text = f"{short(message)}\n  ({prog} --help lists the accepted options)"
        sys.stderr.write(f"{prog}: error: {text}\n")
        self.exit(2)


class LogConfig(SaveConfigCallback):
    """Save the run's full config to its log directory and give it to every logger as hyperparameters.

    A W&B run's config then holds, at its top, the keys a user filters runs by (``method``, ``student``,
    ``teacher``, ``partition``, ``seed`` and the method's hyperparameters: ``temperature``, ``alpha``, ...), and
    under ``config`` the whole run's: the networks, the optimizer, the data, its partition and the trainer settings.
    Its summary keeps the best validation accuracy (:func:`kdlightning.tracking.log_fit_config`).
    """

    def save_config(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """Log the flat keys and the config (as nested values) to every logger of ``trainer``."""
        config = yaml.safe_load(self.parser.dump(self.config, skip_none=False, skip_check=True))
        seed = config.get("seed_everything")
        seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
        log_fit_config(trainer, pl_module, config, seed=seed)


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
        kwargs.setdefault("parser_class", ArgumentParser)
        self._parsers: list[LightningArgumentParser] = []
        self._subcommands = False
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
        if self._subcommands:  # `kdl fit` and the others; a search's parser (no subcommands) has no checkpoints
            parser.add_argument(
                "--overwrite",
                type=bool,
                default=False,
                help="fit: replace the checkpoints an earlier run left in a ModelCheckpoint's dirpath "
                "(without it, such a rerun stops before training; --ckpt_path resumes it instead)",
            )

    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        """LightningCLI's parsers; with subcommands, ``--overwrite`` is one of their arguments."""
        self._subcommands = add_subcommands
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)

    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        """LightningCLI's parser: the readable :class:`HelpFormatter`, short errors (:class:`ArgumentParser`)."""
        kwargs.setdefault("formatter_class", HelpFormatter)
        parser = super().init_parser(**kwargs)
        self._parsers.append(parser)
        return parser

    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        """Parse the arguments; check ``--ckpt_path`` before anything reads it (:func:`check_ckpt_path`)."""
        argv = [str(arg) for arg in args] if isinstance(args, (list, tuple)) else None
        for each in (parser, *self._parsers):
            if isinstance(each, ArgumentParser):
                each.argv = argv
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if subcommand:
            check_ckpt_path(self.config[subcommand].get("ckpt_path"))

    def before_fit(self) -> None:
        """Refuse to fit over an earlier run's checkpoints unless resuming or told to (see check_checkpoint_dirs)."""
        config = self.config.get("fit", self.config)
        check_checkpoint_dirs(
            self.trainer, resuming=config.get("ckpt_path") is not None, overwrite=config.get("overwrite")
        )

    def before_instantiate_classes(self) -> None:
        """Name a W&B run after its config: name, group, job type and tags, unless the config sets them."""
        config = self.config.get(str(self.subcommand), self.config)
        logger = config.get("trainer", {}).get("logger")
        if not str(getattr(logger, "class_path", "")).endswith("WandbLogger"):
            return
        for key, value in wandb_run_info(config, str(self.subcommand or "fit")).items():
            if not logger.init_args.get(key):
                logger.init_args[key] = value


def check_checkpoint_dirs(trainer: L.Trainer, resuming: bool = False, overwrite: bool | None = False) -> None:
    """Stop a fit that would replace an earlier run's checkpoints, before it trains.

    A ``ModelCheckpoint`` with a fixed ``dirpath`` (every shipped config has one, e.g.
    ``runs/digits/teacher/checkpoints``) writes ``best.ckpt`` and ``last.ckpt`` there on every run: a second
    run would replace the first run's best checkpoint with its own, better or not. A fit with ``--ckpt_path``
    continues that run (its best score is restored with it, so ``best.ckpt`` is only replaced by a better
    one); with ``overwrite`` the files are replaced, as asked. Without a ``dirpath``, Lightning writes each run's
    checkpoints into that run's own ``version_<n>`` directory, which nothing replaces.

    Args:
        trainer: the fit's trainer, with its checkpoint callbacks.
        resuming: the fit continues from ``--ckpt_path``.
        overwrite: ``--overwrite``: replace the files.

    Raises:
        ConfigurationError: a ``dirpath`` holds checkpoints (``*.ckpt``), the fit does not resume and
            ``overwrite`` is not set; the message names the files and the three ways on.
    """
    if resuming:
        return
    for callback in trainer.checkpoint_callbacks:
        dirpath = getattr(callback, "dirpath", None) if isinstance(callback, ModelCheckpoint) else None
        directory = Path(str(dirpath)) if dirpath else None
        if directory is None or not directory.is_dir():
            continue
        existing = sorted(path.name for path in directory.glob(f"*{ModelCheckpoint.FILE_EXTENSION}"))
        if not existing:
            continue
        if overwrite:
            rank_zero_info(f"--overwrite: this run replaces {', '.join(existing)} in {directory}")
            continue
        raise ConfigurationError(
            f"{directory} already holds checkpoints of an earlier run ({', '.join(existing)}), which this fit "
            "would replace. Resume that run with `--ckpt_path last`, move the files away, or pass "
            "`--overwrite true` to replace them."
        )


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
