"""The ``kdl`` command: LightningCLI over every kdlightning method and datamodule."""

from __future__ import annotations

import sys
import warnings

import lightning as L
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from kdlightning.methods.base import DistillationModule

__all__ = ["KDLightningCLI", "main"]


class KDLightningCLI(LightningCLI):
    """LightningCLI for kdlightning: methods, networks, optimizers and data chosen by ``class_path``.

    ``data.num_classes`` is linked into ``model.init_args.num_classes``. Optimizers are the methods'
    own ``OptimizerCallable`` arguments (DML takes two), so the CLI does not add its own.
    """

    def __init__(self, args: ArgsType = None, run: bool = True, **kwargs: object) -> None:
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
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


def main(args: ArgsType = None) -> None:
    """Entry point of ``kdl`` and ``python -m kdlightning``; ``kdl tune`` runs :func:`kdlightning.tuning.tune`."""
    # Frozen references are in eval mode by design; Lightning reports every such module.
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    argv = sys.argv[1:] if args is None else args
    if isinstance(argv, (list, tuple)) and list(argv[:1]) == ["tune"]:
        from kdlightning.tuning import main as tune

        tune(list(argv[1:]))
        return
    if isinstance(argv, (list, tuple)) and list(argv[:1]) == ["study"]:
        from kdlightning.study import main as study

        study(list(argv[1:]))
        return
    if isinstance(argv, (list, tuple)) and list(argv[:1]) == ["federate"]:
        from kdlightning.federated import main as federate

        federate(list(argv[1:]))
        return
    KDLightningCLI(
        args=args,
        parser_kwargs={
            "epilog": "Also: kdl tune -c ... (tuned KD), kdl study [-c ...] and kdl federate -c ... (see their --help)."
        },
    )
