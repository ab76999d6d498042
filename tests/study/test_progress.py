"""The study's progress bar: each step named, counted one by one, its time left weighted by what each step costs."""

from __future__ import annotations

import io
from functools import partial
from pathlib import Path

import pytest

from kdlightning import DeepMutualLearning, VanillaKD
from kdlightning.data import IIDPartitioner, LabelSkewPartitioner
from kdlightning.models import MLP
from kdlightning.study import Study
from kdlightning.study.progress import Step, StudyProgress, TimeLeft, format_seconds
from kdlightning.study.steps import plan
from kdlightning.tuning import TuneOptions


def test_the_time_left_weighs_each_step_by_its_work_at_its_kind_s_measured_rate() -> None:
    left = TimeLeft()
    assert left.estimate([("pre-training", 1.0)]) is None  # nothing measured yet: no guess
    left.record("pre-training", work=1000.0, seconds=100.0)  # 0.1 s per unit of work
    assert left.estimate([("pre-training", 50.0), ("pre-training", 500.0)]) == pytest.approx(55.0)  # by work
    assert left.estimate([("members", 50.0)]) is None  # a kind not measured: not guessed from another
    left.record("members", work=100.0, seconds=1.0)  # members are cheap: 0.01 s per unit
    left.record("members", work=300.0, seconds=7.0)  # 0.02 s per unit over both
    assert left.estimate([("members", 500.0), ("pre-training", 10.0)]) == pytest.approx(10.0 + 1.0)
    assert left.estimate([]) == 0.0


def test_the_time_left_reads_as_a_person_would() -> None:
    assert [format_seconds(s) for s in (4.4, 59, 61, 3599, 7500)] == [
        "4 s",
        "59 s",
        "1 min",
        "1 h 00 min",
        "2 h 05 min",
    ]


def _bar(steps: list[Step]) -> tuple[StudyProgress, io.StringIO]:
    stream = io.StringIO()
    return StudyProgress(steps, enabled=True, stream=stream), stream


def test_the_bar_names_the_running_step_and_counts_steps_one_by_one() -> None:
    steps = [
        Step(("pre-training", "student", 0), "pre-training 3 student networks", "pre-training student", 300.0),
        Step(("iid", 0, ("student_only", "vanilla_kd")), "iid seed 0: student_only, vanilla_kd", "members", 20.0, 2),
        Step(("iid", 0, ("dml",)), "iid seed 0: dml", "DeepMutualLearning", 20.0, runs=1),
    ]
    bar, stream = _bar(steps)
    counts = []
    for step in steps:
        bar.start(step.key)
        assert bar.description == f"step {bar.done + 1}/3: {step.label}"  # the running step, named
        bar.finish(step.key, seconds=1.0)
        counts.append(bar.done)
    assert counts == [1, 2, 3]
    assert "step 1/3: pre-training 3 student networks" in stream.getvalue()
    assert bar.runs_done == bar.runs == 3 and "runs 3/3 done" in bar.bar.postfix
    bar.finish(steps[0].key)  # a step finishes once
    assert bar.done == 3 and bar.bar.n == 3


def test_the_bar_s_time_left_is_the_weighted_estimate() -> None:
    steps = [
        Step(("a",), "pre-training", "pre-training", 100.0),
        Step(("b",), "iid seed 0", "members", 10.0),
        Step(("c",), "iid seed 1", "members", 30.0),
    ]
    bar, _ = _bar(steps)
    bar.start(("a",))
    assert bar.left() is None and "time left: measuring" in bar.bar.postfix
    bar.finish(("a",), seconds=50.0)
    assert bar.left() is None  # no cell measured: no guess from the pre-training's pace
    bar.start(("b",))
    bar.finish(("b",), seconds=2.0)
    assert bar.left() == pytest.approx(6.0)  # 30 units at 0.2 s each, not "one more step of 2 s"
    assert "about 6 s left" in bar.bar.postfix


def _study(out: Path, **kwargs) -> Study:
    options = {
        "student": partial(MLP, in_features=64, hidden_sizes=(8,)),
        "teacher": partial(MLP, in_features=64, hidden_sizes=(16,)),
        "methods": {"vanilla_kd": VanillaKD, "dml": DeepMutualLearning},
        "scenarios": [IIDPartitioner(), LabelSkewPartitioner(classes_per_party=4)],
        "seeds": [0, 1],
        "num_parties": 3,
        "pretrain_epochs": 1,
        "epochs": 1,
        "out": str(out),
        "tuning": TuneOptions(grid={"temperature": [1.0, 4.0], "alpha": [0.5]}),
    }
    return Study(**{**options, **kwargs})


def _cells(made: Study) -> list:
    names = list(dict.fromkeys(run[2] for run in made.runs()))
    return [(scenario, seed, names) for scenario in made.config.scenarios for seed in made.config.seeds]


def test_the_plan_labels_every_step_with_its_parties_scenario_seed_and_methods(tmp_path: Path) -> None:
    batched = _study(tmp_path / "batched")
    steps = plan(batched.config, batched.pretraining, batched.cells(), _cells(batched))
    labels = [step.label for step in steps]
    assert labels[0].startswith("pre-training 4 student networks as batched members (party 0, 1 epoch)")
    assert labels[1].startswith("pre-training 4 teacher networks as batched members (party 1, 1 epoch)")
    assert labels[2] == ("iid seed 0: student_only, vanilla_kd, dml, 2 points of tuned_kd (5 batched members, 1 epoch)")
    assert [label.split(":")[0] for label in labels[2:]] == [
        "iid seed 0",
        "iid seed 1",
        "label_skew(classes_per_party=4) seed 0",
        "label_skew(classes_per_party=4) seed 1",
    ]
    members = steps[2]
    assert members.kind == "members"  # DML is a pair: two networks; the grid's points one each
    samples = members.work / (1 * (1 + 1 + 2 + 2))
    assert samples == int(samples) and samples > 0

    apart = _study(tmp_path / "apart", batched=False, seeds=[0], scenarios=[IIDPartitioner()])
    labels = [step.label for step in plan(apart.config, apart.pretraining, apart.cells(), _cells(apart)[:1])]
    assert labels == [
        "pre-training the student's network (party 0, 1 epoch): iid seed 0",
        "pre-training the teacher's network (party 1, 1 epoch): iid seed 0",
        "iid seed 0: student_only, 1 epoch",
        "iid seed 0: vanilla_kd, 1 epoch",
        "iid seed 0: dml, 1 epoch",
        "iid seed 0: tuned_kd (2 trials, one fit each), 1 epoch",
    ]


@pytest.mark.parametrize("batched", [False, True])
def test_a_study_moves_its_bar_one_step_at_a_time_through_every_planned_step(
    tmp_path: Path, batched: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import kdlightning.study.runner as runner

    bars: list[StudyProgress] = []
    seen: list[tuple[int, str]] = []

    class Recorded(StudyProgress):
        def __init__(self, steps, enabled=True, stream=None, **runs) -> None:
            super().__init__(steps, enabled=False, **runs)
            bars.append(self)

        def start(self, key) -> None:
            super().start(key)
            seen.append((self.done, self.description))

    monkeypatch.setattr(runner, "StudyProgress", Recorded)
    if batched:  # two cells: each role's networks pre-train as members of one fit
        made = _study(tmp_path, seeds=[0, 1], scenarios=[IIDPartitioner()], methods={"vanilla_kd": VanillaKD})
    else:
        made = _study(tmp_path, batched=False, seeds=[0], scenarios=[IIDPartitioner()], methods={}, tuned_kd=True)
    made.run(progress=False)
    (bar,) = bars
    assert bar.done == len(bar.steps) == 4  # every step counted once
    assert bar.runs_done == bar.runs == len(made.runs())  # and every run, as its step finishes
    assert [done for done, _ in seen] == list(range(len(bar.steps)))  # one step at a time, in order
    assert all(text.startswith(f"step {done + 1}/{len(bar.steps)}: ") for done, text in seen)
    labels = [text.split(": ", 1)[1] for _, text in seen]
    if batched:
        assert [label.split(" (")[0] for label in labels] == [
            "pre-training 2 student networks as batched members",
            "pre-training 2 teacher networks as batched members",
            "iid seed 0: student_only, vanilla_kd, 2 points of tuned_kd",
            "iid seed 1: student_only, vanilla_kd, 2 points of tuned_kd",
        ]
    else:
        assert labels == [
            "pre-training the student's network (party 0, 1 epoch): iid seed 0",
            "pre-training the teacher's network (party 1, 1 epoch): iid seed 0",
            "iid seed 0: student_only, 1 epoch",
            "iid seed 0: tuned_kd (2 trials, one fit each), 1 epoch",
        ]
