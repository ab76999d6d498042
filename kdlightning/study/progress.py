"""A study's progress: one labelled step at a time, and a time-left estimate weighted by what each step costs.

A study's work is a list of :class:`Step` s planned before it starts (:func:`kdlightning.study.steps.plan`): each
party's pre-training (every network of a role as batched members, or one network), then each cell's (scenario and
seed's) batched members and each run fitted apart. The bar counts steps, one by one; its label names the step running
(which parties, scenario, seed, methods); the time left is :class:`TimeLeft`'s: each step's work (epochs × samples ×
networks) at the seconds per unit of work measured on finished steps of its kind ("measuring" until a step of each
kind still to run has finished).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kdlightning.data import PartitionedDataModule

__all__ = ["Step", "StudyProgress", "TimeLeft", "epochs_text", "format_seconds", "training_samples"]


@dataclass(frozen=True)
class Step:
    """One step of a study: a fit (or a few, of one kind) that the bar counts as one.

    Attributes:
        key: names the step where it runs (e.g. ``("pre-training", "student", 0)``, ``("iid", 0, ("dml",))``).
        label: what the bar shows while it runs, e.g. ``pre-training the student's network (party 0, 60 epochs):
            iid seed 0``.
        kind: steps of one kind cost alike per unit of work (``pre-training student``, ``members``...).
        work: epochs × training samples × networks trained: the step's share of the study's compute.
        runs: the rows of ``results.csv`` it finishes (none for pre-training).
    """

    key: tuple[Any, ...]
    label: str
    kind: str
    work: float
    runs: int = 0


class TimeLeft:
    """Seconds left of a study's steps, at the rate measured per kind of step.

    A pending step's seconds are its work times the seconds per unit of work of the finished steps of its kind. Until
    a step of every pending kind has finished there is no estimate: a study that finished its pre-training does not
    foretell its cells at that pace (a cell's batched members cost far less per unit of work than pre-training).

    Examples:
        >>> left = TimeLeft()
        >>> left.record("pre-training", work=100.0, seconds=50.0)
        >>> print(left.estimate([("pre-training", 100.0), ("members", 10.0)]))  # members not measured yet
        None
        >>> left.record("members", work=10.0, seconds=1.0)
        >>> left.estimate([("pre-training", 100.0), ("members", 10.0), ("members", 20.0)])
        53.0
    """

    def __init__(self) -> None:
        self._seconds: dict[str, float] = {}
        self._work: dict[str, float] = {}

    def record(self, kind: str, work: float, seconds: float) -> None:
        """A finished step of ``kind``: its ``work`` took ``seconds``."""
        self._seconds[kind] = self._seconds.get(kind, 0.0) + max(seconds, 0.0)
        self._work[kind] = self._work.get(kind, 0.0) + max(work, 0.0)

    def rate(self, kind: str) -> float | None:
        """Seconds per unit of work of ``kind``'s finished steps; None before one has finished."""
        work = self._work.get(kind, 0.0)
        return self._seconds[kind] / work if work > 0 else None

    def estimate(self, pending: Iterable[tuple[str, float]]) -> float | None:
        """Seconds the ``(kind, work)`` steps will take; None while a kind among them has not been measured."""
        total = 0.0
        for kind, work in pending:
            rate = self.rate(kind)
            if rate is None:
                return None
            total += rate * work
        return total


def epochs_text(epochs: int) -> str:
    """``1 epoch``, ``20 epochs``."""
    return f"{epochs} epoch" + ("" if epochs == 1 else "s")


def format_seconds(seconds: float) -> str:
    """``seconds`` as a person reads a time left: ``45 s``, ``12 min``, ``2 h 05 min``."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds} s"
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


class StudyProgress:
    """The study's bar over its planned :class:`Step` s: ``step k/N``, the step's label and the time left.

    Args:
        steps: every step of the study still to do, in the order they run.
        enabled: True shows the bar, False hides it, None shows it only on a terminal.
        stream: where the bar writes (default: tqdm's, standard error).
        runs: the study's runs (rows of ``results.csv``) in all, and ``finished`` of them done before.

    Attributes:
        done: how many steps have finished.
        description: the text before the bar: the step running, or the last finished.
        runs_done: the study's runs finished (with those finished before).
    """

    def __init__(
        self,
        steps: Sequence[Step],
        enabled: bool | None = True,
        stream: Any = None,
        runs: int | None = None,
        finished: int = 0,
    ) -> None:
        from tqdm.auto import tqdm

        self.steps = list(steps)
        self.done = 0
        self.runs = runs if runs is not None else finished + sum(step.runs for step in self.steps)
        self.runs_done = finished
        self.description = ""
        self.time_left = TimeLeft()
        self._pending = {step.key: step for step in self.steps}
        self._since = time.perf_counter()
        disable = None if enabled is None else not enabled
        self.bar = tqdm(
            total=len(self.steps),
            unit="step",
            disable=disable,
            dynamic_ncols=True,
            file=stream,
            bar_format="{desc} |{bar}| {elapsed}{postfix}",
        )
        self.show("starting" if self.steps else "nothing left to run")

    def planned(self, key: tuple[Any, ...]) -> bool:
        """Whether step ``key`` is planned and not finished."""
        return key in self._pending

    def start(self, key: tuple[Any, ...]) -> None:
        """Step ``key`` begins: the bar names it, numbered as the next to finish (an unplanned key changes nothing)."""
        if key in self._pending:
            self._since = time.perf_counter()
            self.show(self._pending[key].label, number=self.done + 1)

    def finish(self, key: tuple[Any, ...], seconds: float | None = None) -> None:
        """Step ``key`` finished: the counter moves by one, the time left is measured again.

        Args:
            key: the step's key (steps that run in parallel finish in any order).
            seconds: what it took; default the time since it started, or since the last step finished.
        """
        step = self._pending.pop(key, None)
        if step is None:
            return
        now = time.perf_counter()
        self.time_left.record(step.kind, step.work, now - self._since if seconds is None else seconds)
        self._since = now
        self.done += 1
        self.runs_done += step.runs
        self.bar.update(1)
        self.show(f"done: {step.label}")

    def left(self) -> float | None:
        """Seconds the unfinished steps will take (:class:`TimeLeft`); None until each of their kinds is measured."""
        return self.time_left.estimate((step.kind, step.work) for step in self._pending.values())

    def show(self, label: str, number: int | None = None) -> None:
        """Show ``label`` as ``step <number>/<total>: <label>`` (``number``: default the steps done), the time left."""
        self.description = f"step {self.done if number is None else number}/{len(self.steps)}: {label}"
        left = self.left()
        if not self._pending:
            estimate = "finished"
        else:
            estimate = "time left: measuring" if left is None else f"about {format_seconds(left)} left"
        self.bar.set_description_str(self.description, refresh=False)
        self.bar.set_postfix_str(f"runs {self.runs_done}/{self.runs} done, {estimate}", refresh=True)

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()


def training_samples(data: PartitionedDataModule) -> int:
    """About how many samples the party of ``data`` trains on (its part less its validation share): a step's weight."""
    parts, _ = data.split_pool()
    return round(len(parts[data.partition_id]) * (1.0 - data.val_fraction))
