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

import os
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from jsonargparse import ArgumentParser

from kdlightning.errors import KDLightningError
from kdlightning.interrupt import exit_on_signals
from kdlightning.lightning_cli import HelpFormatter, KDLightningCLI
from kdlightning.pipeline import DEFAULTS, command_parser
from kdlightning.reporting import read_csv
from kdlightning.trainers import quiet

if TYPE_CHECKING:
    from kdlightning.federated import FederationConfig

__all__ = ["COMMANDS", "HelpFormatter", "KDLightningCLI", "main", "parser", "run"]

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


def main(args: Sequence[str] | None = None) -> None:
    """The ``kdl`` console script: run ``kdl`` with ``args`` (None: ``sys.argv``); :func:`run` returns results.

    An error that kdlightning raised on purpose (a :class:`~kdlightning.errors.KDLightningError`: a bad value, a
    missing file, a diverging loss, however deep in the argument parser's error chain) is printed as one line on
    stderr and exits with status 1; ``KDL_TRACEBACK=1`` shows the traceback instead. A command line the parser
    rejects (a misspelled key, an unknown class, a value of the wrong type) is one short message and status 2
    (:class:`~kdlightning.lightning_cli.ArgumentParser`). Other errors propagate as they are.
    """
    argv = [str(arg) for arg in (sys.argv[1:] if args is None else args)]
    try:
        run(argv)
    except Exception as error:
        cause = _own_error(error)
        if cause is None or os.environ.get("KDL_TRACEBACK"):
            raise
        command = " ".join(["kdl", *argv[:1]])
        message = " ".join(str(cause).split())  # one line, however the message was wrapped
        print(f"{command}: {type(cause).__name__}: {message} (KDL_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        raise SystemExit(1) from None


def _own_error(error: BaseException) -> KDLightningError | None:
    """The outermost :class:`~kdlightning.errors.KDLightningError` in ``error``'s chain (causes and contexts), if any.

    The argument parser wraps an error raised while it builds a class in errors of its own: the one to show is
    kdlightning's, and of kdlightning's the outermost, which says the most.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, KDLightningError):
            return current
        current = current.__cause__ or current.__context__
    return None


def run(args: Sequence[str]) -> Any:
    """Run ``kdl args`` and return what the subcommand returns (a study's or federation's rows, a search's result).

    Examples:
        ``rows = run(["study", "--out", "runs/study/digits", "--seeds=[0]"])``.
    """
    argv = [str(arg) for arg in args]
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

    sub = command_parser(Study, "kdl study", DEFAULTS / "study.yaml", args, formatter_class=HelpFormatter)
    sub.add_argument("--progress", type=bool, default=True, help="show the progress bar")
    return sub


def _federate_parser(args: list[str]) -> ArgumentParser:
    from kdlightning.federated.experiment import experiment_parser

    parser: ArgumentParser = experiment_parser(args, formatter_class=HelpFormatter)
    return parser


def _run_study(init: dict[str, Any], args: list[str]) -> list[dict[str, Any]]:
    """``kdl study``: run (or resume) the study; end with the recommended method per scenario and the files."""
    from kdlightning.study import Study

    progress = init.pop("progress")
    study = Study(**init)
    study.check()  # the data set, every scenario and every method, before anything is written
    results = study.out / "results.csv"

    def report() -> str:
        return f"{len(read_csv(results))} of {len(study.runs())} runs are finished, in {results}."

    with exit_on_signals("kdl study", args, report):
        rows = study.run(progress=progress)
    seconds = study.seconds
    print(
        f"\n{len(rows)} runs in {results}; this run took {seconds['total']:.0f} s, "
        f"{seconds['pretraining']:.0f} s of it pre-training.\n"
    )
    print(study.report.ending(rows))
    return rows


def _run_federate(init: dict[str, Any], args: list[str]) -> list[dict[str, Any]]:
    """``kdl federate``: check, then run (or resume) the federation (or one per scenario and seed); print a summary."""
    from kdlightning.federated import Federation, FederationConfig, run

    scenarios, seeds = init.pop("scenarios", None), init.pop("seeds", None)
    config = FederationConfig(**init)
    if scenarios is not None or seeds is not None:
        return _run_federated_experiment(config, args, scenarios, seeds)
    federation = Federation(config)
    federation.check()  # the data, the partition, the networks, the consolidation and the strategy, before training
    rounds = config.out / "rounds.csv"

    def report() -> str:
        finished = sorted({row["start"] for row in read_csv(rounds)})
        return f"Finished starts ({', '.join(finished) or 'none'}) are in {rounds}."

    with exit_on_signals("kdl federate", args, report):
        rows = run(federation)
    print((config.out / "summary.md").read_text())
    print(f"rounds: {rounds}")
    return rows


def _run_federated_experiment(
    config: FederationConfig, args: list[str], scenarios: Any, seeds: Any
) -> list[dict[str, Any]]:
    """``kdl federate`` with ``scenarios`` or ``seeds``: check, then run (or resume) a federation per cell."""
    from kdlightning.federated import FederatedExperiment

    experiment = FederatedExperiment(config, scenarios=scenarios, seeds=seeds)
    experiment.check()  # every cell's data, partition and networks, before any client trains
    records = experiment.records
    rounds = experiment.out / "rounds.csv"

    def report() -> str:
        finished = records.finished_cells(read_csv(rounds))
        return f"{len(finished)} of {len(records.cells)} cells are finished, in {rounds}."

    with exit_on_signals("kdl federate", args, report):
        rows = experiment.run()
    print((experiment.out / "summary.md").read_text())
    print(f"rounds: {rounds}")
    return rows


_PIPELINES: dict[str, Callable[[list[str]], ArgumentParser]] = {"study": _study_parser, "federate": _federate_parser}
_RUNNERS: dict[str, Callable[[dict[str, Any], list[str]], Any]] = {"study": _run_study, "federate": _run_federate}
