"""``kdl tune``: :func:`tune` from Python, :func:`main` from the command line."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import lightning as L

from kdlightning.reporting import read_csv
from kdlightning.tuning.results import TuneResult
from kdlightning.tuning.search import Search

__all__ = ["main", "tune"]


def tune(
    args: Sequence[str] | None = None, *, callbacks: Sequence[L.Callback] = (), verbose: bool = True
) -> TuneResult:
    """Run ``kdl tune``: search on the validation split, then test the chosen point once.

    Args:
        args: the arguments after ``kdl tune`` (``-c`` configs, ``--out``, ``--tune.*``, overrides);
            None reads ``sys.argv``.
        callbacks: extra Lightning callbacks added to every trial.
        verbose: print a line per trial and the final table.

    Returns:
        The chosen point, its validation and test metrics, and every trial.

    Raises:
        ValueError: a bad search space or option (see :class:`~kdlightning.tuning.search.Search`), before any
            training.

    Examples:
        ``kdl tune -c configs/_base/trainer.yaml -c configs/digits/vanilla_kd.yaml -c configs/tune/grid.yaml``
        or, from Python, ``tune(["-c", "configs/_base/trainer.yaml", ..., "--out", "runs/tune/digits"])``.
    """
    if args is None:
        args = sys.argv[2:] if sys.argv[1:2] == ["tune"] else sys.argv[1:]
    return Search.from_args(args, callbacks=callbacks, verbose=verbose).run()


def main(args: Sequence[str] | None = None) -> TuneResult:
    """``kdl tune``: :func:`tune`, stopped cleanly by SIGTERM or Ctrl-C (exit 143 / 130, saying what finished).

    Args:
        args: the arguments after ``kdl tune``; None reads ``sys.argv``.
    """
    from kdlightning.interrupt import exit_on_signals

    if args is None:
        args = sys.argv[2:] if sys.argv[1:2] == ["tune"] else sys.argv[1:]
    search = Search.from_args(args)
    trials = search.out / "trials.csv"

    def report() -> str:
        rows = read_csv(trials)
        done = sum(row["state"] in ("COMPLETE", "PRUNED") or bool(row.get("error")) for row in rows)
        return f"{done} trials are finished, in {search.storage_url} and {trials}."

    with exit_on_signals("kdl tune", args, report):
        return search.run()
