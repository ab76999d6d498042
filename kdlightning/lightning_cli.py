"""``KDLightningCLI``: LightningCLI over every kdlightning method and datamodule (the ``kdl`` command's parser)."""

from __future__ import annotations

import re
from typing import Any

import lightning as L
from jsonargparse import DefaultHelpFormatter
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

import kdlightning.data  # noqa: F401  (its datamodules become known by short name: --data.help PartitionedDataModule)
from kdlightning.callbacks import FitSummary
from kdlightning.methods.base import DistillationModule

__all__ = ["HelpFormatter", "KDLightningCLI"]

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
        return _LITERAL.sub(r"\1", _ROLE.sub(r"\1", text))

    def _format_text(self, text: str) -> str:
        return super()._format_text(_LITERAL.sub(r"\1", _ROLE.sub(r"\1", text)))


class KDLightningCLI(LightningCLI):
    """LightningCLI for kdlightning: methods, networks, optimizers and data chosen by ``class_path``.

    ``data.num_classes`` is linked into ``model.init_args.num_classes``. Optimizers are the methods'
    own ``OptimizerCallable`` arguments (DML takes two), so the CLI does not add its own.
    """

    def __init__(self, args: ArgsType = None, run: bool = True, **kwargs: object) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("trainer_defaults", {"callbacks": [FitSummary()]})  # a line on how the fit went
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
