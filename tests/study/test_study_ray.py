"""A study's cells in parallel on Ray: the sequential study's results.csv, resumable either way."""

from __future__ import annotations

import os
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from kdlightning import DataPartitioningKD, VanillaKD
from kdlightning.data import DirichletPartitioner, IIDPartitioner
from kdlightning.models import MLP
from kdlightning.reporting import read_csv, write_csv
from kdlightning.study import Study
from kdlightning.tuning import TuneOptions

ray = pytest.importorskip("ray")

WALL_TIME = ("seconds",)
"""Columns of results.csv that are wall time, which no two runs share."""
DRIVER = os.getpid()


def study(out: Path, **kwargs) -> Study:
    """Two cells (2 scenarios x 1 seed) of one-epoch runs: control, vanilla KD, DP-KD, tuned KD on a 2-point grid."""
    options = {
        "student": partial(MLP, in_features=64, hidden_sizes=(8,)),
        "teacher": partial(MLP, in_features=64, hidden_sizes=(16,)),
        "methods": {"vanilla_kd": VanillaKD, "dpkd": DataPartitioningKD},
        "tuning": TuneOptions(grid={"temperature": [1.0, 4.0], "alpha": [0.5]}),
        "scenarios": [IIDPartitioner(), DirichletPartitioner(alpha=0.5)],
        "seeds": [0],
        "num_parties": 3,
        "pretrain_epochs": 1,
        "epochs": 1,
        "out": str(out),
    }
    return Study(**{**options, **kwargs})


def results(out: Path) -> list[dict[str, str]]:
    """``out``'s results.csv without its wall-time columns."""
    return [{k: v for k, v in row.items() if k not in WALL_TIME} for row in read_csv(out / "results.csv")]


@pytest.fixture(scope="module")
def sequential(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A sequential study's output directory (one torch thread, as each Ray task with one CPU)."""
    out = tmp_path_factory.mktemp("sequential")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        study(out).run(progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


def test_cells_on_ray_write_the_sequential_results(sequential: Path, tmp_path: Path) -> None:
    assert not ray.is_initialized()
    parallel = study(tmp_path, ray=True, cpus_per_cell=1)
    rows = parallel.run(progress=False)
    assert not ray.is_initialized()  # the study started Ray, and shut it down
    assert len(rows) == 2 * 4
    assert results(tmp_path) == results(sequential)
    assert [row["seconds"] != "" for row in read_csv(tmp_path / "results.csv")] == [True] * 8
    assert (tmp_path / "summary.md").is_file() and (tmp_path / "tuning.png").is_file()
    assert parallel.seconds["pretraining"] > 0 and parallel.seconds["total"] > 0
    # how the cells ran changes no result: study.json does not record it
    assert (tmp_path / "study.json").read_text() == (sequential / "study.json").read_text()


def broken_on_workers(student: torch.nn.Module, teacher: torch.nn.Module, num_classes: int) -> VanillaKD:
    """VanillaKD in the driver (the study builds each method once to check it), an error in a Ray worker."""
    if os.getpid() != DRIVER:
        raise RuntimeError("no such file on this worker")
    return VanillaKD(student, teacher, num_classes)


def test_a_killed_study_resumes_on_ray_and_a_task_error_names_its_cell(sequential: Path, tmp_path: Path) -> None:
    finished = read_csv(sequential / "results.csv")[:4]  # killed after its first cell
    assert {row["scenario"] for row in finished} == {"iid"}
    (tmp_path / "resumed").mkdir()
    write_csv(tmp_path / "resumed" / "results.csv", finished)
    (tmp_path / "resumed" / "study.json").write_text((sequential / "study.json").read_text())
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import this file
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        study(tmp_path / "resumed", ray=True).run(progress=False)
        assert ray.is_initialized()  # Ray started by the caller is left running
        assert results(tmp_path / "resumed") == results(sequential)
        assert not (tmp_path / "resumed" / "tuning" / "iid-seed0").exists()  # the finished cell was not redone

        broken = study(
            tmp_path / "broken", methods={"vanilla_kd": broken_on_workers}, ray=True, scenarios=[IIDPartitioner()]
        )
        with pytest.raises(RuntimeError, match="no such file") as raised:
            broken.run(progress=False)
        assert "in the Ray task of `kdl study` for scenario iid, seed 0" in "\n".join(raised.value.__notes__)
    finally:
        ray.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cpus_per_cell": 0}, "`cpus_per_cell`"),
        ({"cpus_per_cell": -1.0}, "`cpus_per_cell`"),
        ({"cpus_per_cell": float("nan")}, "`cpus_per_cell`"),
        ({"gpus_per_cell": -0.5}, "`gpus_per_cell`"),
        ({"ray": ""}, "`ray`"),
        ({"ray": True, "trainer": {"accelerator": "gpu"}}, "`gpus_per_cell`"),
    ],
)
def test_bad_ray_arguments_are_named(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        study(tmp_path, **kwargs)
