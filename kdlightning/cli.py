"""The ``kdl`` command (also ``python -m kdlightning``): one parser, seven subcommands.

- ``fit``, ``validate``, ``test``, ``predict``: LightningCLI (:class:`~kdlightning.lightning_cli.KDLightningCLI`)
  over every method and datamodule, chosen by ``class_path``;
- ``tune``: tuned KD's search (:mod:`kdlightning.tuning`);
- ``study``: the study pipeline (:class:`~kdlightning.study.Study`), the bundled digits by default;
- ``federate``: the federated experiment (:class:`~kdlightning.federated.Federation`), the bundled digits by default.

``study`` and ``federate`` are parsed here from their classes' signatures (``-c`` configs and
``--<argument>`` overrides; the packaged default config applies when no ``-c`` is given). The
LightningCLI subcommands and ``tune`` parse their own arguments (LightningCLI's subcommand parsers).
A SIGTERM or Ctrl-C stops ``tune``, ``study`` and ``federate`` with status 143 / 130 and says what
finished and how to resume (:mod:`kdlightning.interrupt`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from jsonargparse import ArgumentParser

from kdlightning.interrupt import exit_on_signals
from kdlightning.lightning_cli import HelpFormatter, KDLightningCLI
from kdlightning.pipeline import DEFAULTS, command_parser, has_config
from kdlightning.reporting import read_csv
from kdlightning.trainers import quiet

__all__ = ["COMMANDS", "HelpFormatter", "KDLightningCLI", "main", "parser"]

COMMANDS: dict[str, str] = {
    "fit": "Train a method from -c configs (LightningCLI).",
    "validate": "Validate a trained method (--ckpt_path).",
    "test": "Test a trained method on the test set.",
    "predict": "The student's class probabilities on the test set.",
    "tune": "Tuned KD: search temperature and alpha on validation.",
    "study": "Every method, scenario and seed from one start.",
    "federate": "FedAvg from fresh, averaged and distilled starts.",
}
"""Each ``kdl`` subcommand and its one line of help."""

_LIGHTNING = ("fit", "validate", "test", "predict")


def parser(args: Sequence[str] = ()) -> ArgumentParser:
    """The ``kdl`` parser; the subcommand named first in ``args`` gets its full parser (the others list only).

    Args:
        args: the command line after ``kdl`` (to choose which subcommand's arguments are built).
    """
    top = ArgumentParser(
        prog="kdl",
        description="Knowledge distillation between pre-trained models, as PyTorch Lightning modules.",
        formatter_class=HelpFormatter,
    )
    subcommands = top.add_subcommands(dest="subcommand", required=True)
    chosen = args[0] if args else None
    for name, line in COMMANDS.items():
        build = _PIPELINES.get(name) if name == chosen else None
        sub = build(list(args[1:])) if build is not None else ArgumentParser(prog=f"kdl {name}", description=line)
        subcommands.add_subcommand(name, sub, help=line)
    return top


def main(args: Sequence[str] | None = None) -> Any:
    """Run ``kdl`` with ``args`` (None: ``sys.argv``); returns what the subcommand returns."""
    argv = [str(arg) for arg in (sys.argv[1:] if args is None else args)]
    if argv and argv[0] in _LIGHTNING:  # LightningCLI parses and runs its own subcommands
        with quiet(logs=False):
            KDLightningCLI(args=argv)
        return None
    if argv and argv[0] == "tune":  # the search parses `kdl fit`'s configs plus its own section
        from kdlightning.tuning import main as tune

        return tune(argv[1:])
    top = parser(argv)
    config = top.parse_args(argv)
    name = config.subcommand
    init = top.instantiate(config)[name].as_dict()
    init.pop("config", None)
    return _RUNNERS[name](init, argv[1:])


def _study_parser(args: list[str]) -> ArgumentParser:
    from kdlightning.study import Study

    default = None if has_config(args) else DEFAULTS / "study.yaml"
    sub = command_parser(Study, "kdl study", default, formatter_class=HelpFormatter)
    sub.add_argument("--progress", type=bool, default=True, help="show the progress bar")
    return sub


def _federate_parser(args: list[str]) -> ArgumentParser:
    from kdlightning.federated import Federation

    default = None if has_config(args) else DEFAULTS / "federated.yaml"
    return command_parser(Federation, "kdl federate", default, formatter_class=HelpFormatter)


def _run_study(init: dict[str, Any], args: list[str]) -> list[dict[str, Any]]:
    """``kdl study``: run (or resume) the study and print its summary."""
    from kdlightning.study import Study

    progress = init.pop("progress")
    study = Study(**init)
    results = study.out / "results.csv"

    def report() -> str:
        return f"{len(read_csv(results))} of {len(study.runs())} runs are finished, in {results}."

    with exit_on_signals("kdl study", args, report):
        rows = study.run(progress=progress)
    print((study.out / "summary.md").read_text())
    print(f"results: {results}")
    return rows


def _run_federate(init: dict[str, Any], args: list[str]) -> list[dict[str, Any]]:
    """``kdl federate``: run (or resume) the experiment and print its summary."""
    from kdlightning.federated import Federation, run

    federation = Federation(**init)
    rounds = federation.out / "rounds.csv"

    def report() -> str:
        finished = sorted({row["start"] for row in read_csv(rounds)})
        return f"Finished starts ({', '.join(finished) or 'none'}) are in {rounds}."

    with exit_on_signals("kdl federate", args, report):
        rows = run(federation)
    print((federation.out / "summary.md").read_text())
    print(f"rounds: {rounds}")
    return rows


_PIPELINES: dict[str, Callable[[list[str]], ArgumentParser]] = {"study": _study_parser, "federate": _federate_parser}
_RUNNERS: dict[str, Callable[[dict[str, Any], list[str]], Any]] = {"study": _run_study, "federate": _run_federate}
