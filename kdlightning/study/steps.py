"""A study's steps in the order they run: the parties' pre-training, then each cell's (:func:`plan`)."""

from __future__ import annotations

from collections.abc import Sequence

from kdlightning.data import Partitioner
from kdlightning.study.cells import CellRunner
from kdlightning.study.config import StudyConfig
from kdlightning.study.pretraining import Pretraining
from kdlightning.study.progress import Step

__all__ = ["plan"]


def plan(
    config: StudyConfig,
    pretraining: Pretraining,
    runner: CellRunner,
    cells: Sequence[tuple[Partitioner, int, list[str]]],
) -> list[Step]:
    """A study's steps, in the order they run: the parties' pre-training, then each cell's steps.

    On Ray a cell (its pre-training and its runs) is one step, keyed ``(scenario, seed)``: cells finish in any order.
    """
    pretrain = pretraining.plan([(scenario, seed) for scenario, seed, _ in cells])
    if config.ray is False:
        return pretrain + [step for scenario, seed, names in cells for step in runner.plan(scenario, seed, names)]
    steps = [step for step in pretrain if len(step.key) == 3]  # the batched pre-training runs here, first
    for scenario, seed, names in cells:
        own = [step for step in pretrain if step.key[2:] == (str(scenario), seed)]
        inner = own + runner.plan(scenario, seed, names)
        label = f"{scenario} seed {seed}: {len(inner)} steps on Ray"
        work = sum(step.work for step in inner)
        steps.append(Step((str(scenario), seed), label, "cell", work, runs=len(names)))
    return steps
