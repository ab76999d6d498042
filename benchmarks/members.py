"""Batched members (SPEC §11): a tuning grid as one fit, and the embedded study end to end, as ratios in one run.

For two students of the study's configs, in the study's setting (party 0 of 5, IID, the teacher-output cache
on, quiet trainers with no logger or checkpoint), it times in one process, after one warm-up fit of
StudentOnly and a one-epoch warm-up of the batched grid (first-call costs, on a GPU each kernel's first launch):

- one ``StudentOnly`` fit of the student (the median of several, taken before and after each batched grid);
- the 25-point grid (``VanillaKD`` at temperature {1, 2, 4, 8, 16} x alpha {0.1, 0.25, 0.5, 0.75, 0.9}) as
  one batched fit (the median of the repeats) (:class:`~kdlightning.methods.BatchedMembers`, 25 members);
- the same 25 points as 25 separate fits (what the sequential search trains);
- one ``StudentOnly`` fit on the same data read sample by sample (PyTorch's default collate), as the loaders
  read it before they read each batch whole (``whole_batches_speedup``);

for the digits MLP (64-32-10, CNN teacher, batch 32: ``configs/study/digits.yaml``) and the Fashion-MNIST
MLP (784-128-10, MLP teacher 512-256, batch 128), and prints
``grid_batched_over_one_run`` (batched grid ÷ one run, target ≤ 3.0) and ``grid_batched_speedup``
(sequential grid ÷ batched grid, expected ≥ 8). It then pre-trains the embedded study's 18 cells' networks,
each role (the MLP students, the CNN teachers) one network a fit and then all in one fit
(:class:`~kdlightning.methods.OwnDataMembers`, each on its own party's data: ``pretraining_speedup``), and runs
``kdl study`` with the embedded default in a fresh process and directory (``demo_seconds``, target ≤ 120 s on
2 idle cores), with the share spent pre-training.

With ``--fashion-study DIR`` it also runs the shipped Fashion-MNIST study (``configs/study/fashion_mnist.yaml``,
10 seeds, 6 scenarios, its cells in parallel on a local Ray) end to end into ``DIR`` (``fashion_study_seconds``,
target <= 30 min on 2 CPU cores).

Run ``python -m benchmarks.members [--quick] [--json PATH] [--accelerator gpu] [--precision bf16-mixed]
[--fashion-study DIR]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import default_collate

from benchmarks.training import described, trainer_settings
from kdlightning import BatchedMembers, StudentOnly, VanillaKD
from kdlightning.cache import CacheReferenceOutputs
from kdlightning.data import Digits, FashionMNIST, IIDPartitioner, PartitionedDataModule
from kdlightning.models import MLP, SmallCNN
from kdlightning.pipeline import trainer
from kdlightning.trainers import quiet

GRID = [(t, a) for t in (1.0, 2.0, 4.0, 8.0, 16.0) for a in (0.1, 0.25, 0.5, 0.75, 0.9)]
GRID_TARGET = 3.0
DEMO_TARGET = 120.0
FASHION_STUDY_TARGET = 30 * 60.0
FASHION_STUDY = Path(__file__).resolve().parent.parent / "configs" / "study" / "fashion_mnist.yaml"

STUDENTS: dict[str, dict[str, Any]] = {
    "digits": {
        "dataset": Digits,
        "student": lambda: MLP(in_features=64, hidden_sizes=[32], num_classes=10),
        "teacher": lambda: SmallCNN(num_classes=10, channels=[16, 32]),
        "batch_size": 32,
    },
    "fashion": {
        "dataset": FashionMNIST,
        "student": lambda: MLP(in_features=784, hidden_sizes=[128], num_classes=10),
        "teacher": lambda: MLP(in_features=784, hidden_sizes=[512, 256], num_classes=10),
        "batch_size": 128,
    },
}


def _datamodule(spec: dict[str, Any]) -> PartitionedDataModule:
    return PartitionedDataModule(
        dataset=spec["dataset"](),
        partitioner=IIDPartitioner(),
        num_parties=5,
        partition_id=0,
        teacher_partition_id=1,
        val_fraction=0.15,
        batch_size=spec["batch_size"],
        seed=0,
    )


def _timed(fit: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fit()
    return time.perf_counter() - start


def measure_grid(
    name: str, epochs: int, repeats: int, cache_root: Path, settings: dict[str, Any] | None = None
) -> dict[str, Any]:
    """One run, the batched grid and the sequential grid of student ``name``, in seconds, and their ratios.

    ``settings`` are Trainer arguments for every fit (e.g. ``accelerator``, ``precision``).
    """
    spec = STUDENTS[name]
    data = _datamodule(spec)
    data.prepare_data()
    data.setup("fit")
    torch.manual_seed(0)
    student, teacher = spec["student"](), spec["teacher"]()

    by_sample = _datamodule(spec)  # the same data read as PyTorch's default collate reads it: sample by sample
    by_sample.collate_fn = default_collate

    def one_run(datamodule: PartitionedDataModule = data) -> None:
        L.seed_everything(0, verbose=False)
        trainer(epochs, settings=settings).fit(StudentOnly(copy.deepcopy(student), 10), datamodule=datamodule)

    def kd(t: float, a: float) -> VanillaKD:
        return VanillaKD(copy.deepcopy(student), teacher, 10, temperature=t, alpha=a)

    def batched(max_epochs: int = epochs, folder: str = "batched") -> None:
        L.seed_everything(0, verbose=False)
        model = BatchedMembers({f"T={t:g},alpha={a:g}": kd(t, a) for t, a in GRID})
        cache = CacheReferenceOutputs(cache_dir=str(cache_root / f"{name}-{folder}"))
        trainer(max_epochs, [cache], settings).fit(model, datamodule=data)

    def sequential() -> None:
        cache = str(cache_root / f"{name}-sequential")
        for t, a in GRID:
            L.seed_everything(0, verbose=False)
            trainer(epochs, [CacheReferenceOutputs(cache_dir=cache)], settings).fit(kd(t, a), datamodule=data)

    one_run()  # warm-up: data loading, first-call costs (on a GPU, each new kernel's first launch)
    batched(1, "warm-up")
    one_run(by_sample)
    runs, batched_runs, by_sample_runs = [], [], []
    for _ in range(repeats):  # interleaved, so a busy moment of the machine falls on each
        runs.append(_timed(one_run))
        by_sample_runs.append(_timed(lambda: one_run(by_sample)))
        batched_runs.append(_timed(batched))
        runs.append(_timed(one_run))
        by_sample_runs.append(_timed(lambda: one_run(by_sample)))
    sequential_s = _timed(sequential)
    one, batched_s = statistics.median(runs), statistics.median(batched_runs)
    one_by_sample = statistics.median(by_sample_runs)
    return {
        "epochs": epochs,
        "train_samples": len(data.train_set),
        "one_run_s": round(one, 3),
        "batched_grid_s": round(batched_s, 3),
        "sequential_grid_s": round(sequential_s, 3),
        "grid_batched_over_one_run": round(batched_s / one, 3),
        "grid_batched_speedup": round(sequential_s / batched_s, 3),
        "one_run_sample_by_sample_s": round(one_by_sample, 3),
        "whole_batches_speedup": round(one_by_sample / one, 3),
    }


def timed_study(out: Path, *args: str) -> tuple[float, int, int]:
    """``kdl study --out out *args`` in a fresh process, end to end: ``(seconds, runs, seconds pre-training)``."""
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"{out} is not empty: a study there would resume instead of running from the start.")
    command = [sys.executable, "-m", "kdlightning", "study", *args, "--out", str(out), "--progress=false"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"`kdl study` failed ({done.returncode}):\n{done.stderr[-2000:]}")
    found = re.search(r"\((\d+) runs; this run took (\d+) s, (\d+) s of it pre-training\)", done.stdout)
    runs, pretraining = (int(found.group(1)), int(found.group(3))) if found else (0, 0)
    return seconds, runs, pretraining


def measure_demo() -> dict[str, Any]:
    """``kdl study`` with the embedded default in a fresh process and directory, end to end."""
    with tempfile.TemporaryDirectory() as tmp:
        seconds, runs, pretraining = timed_study(Path(tmp) / "study")
    return {"demo_seconds": round(seconds, 1), "demo_runs": runs, "demo_pretraining_seconds": pretraining}


def measure_fashion_study(out: Path) -> dict[str, Any]:
    """The shipped Fashion-MNIST study, its cells in parallel on a local Ray, end to end; its files stay in ``out``."""
    seconds, runs, pretraining = timed_study(out, "-c", str(FASHION_STUDY), "--ray", "true")
    return {
        "fashion_study_seconds": round(seconds, 1),
        "fashion_study_runs": runs,
        "fashion_study_pretraining_seconds": pretraining,
    }


def measure_pretraining(settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """The embedded study's pre-training, per role: one network a fit, then every cell's networks in one fit."""
    from kdlightning.cli import parser
    from kdlightning.study import Study

    argv = ["study"]
    top = parser(argv)
    init = top.instantiate(top.parse_args(argv))["study"].as_dict()
    init = {k: v for k, v in init.items() if k not in ("config", "progress")}
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, quiet():
        for role in ("student", "teacher"):
            seconds = {}
            for batched in (False, True):
                out = str(Path(tmp) / f"{role}-{batched}")
                study = Study(**{**init, "batched": batched, "out": out, "trainer": settings})
                cells = [(scenario, seed) for scenario in study.config.scenarios for seed in study.config.seeds]
                start = time.perf_counter()
                if batched:
                    study.pretraining.pretrain_cells(cells, roles=[role])
                else:
                    for scenario, seed in cells:
                        study.pretraining.pretrained(role, scenario, seed)
                seconds[batched] = time.perf_counter() - start
            figures[f"pretraining_{role}s_apart_s"] = round(seconds[False], 2)
            figures[f"pretraining_{role}s_together_s"] = round(seconds[True], 2)
        figures["pretraining_networks"] = 2 * len(cells)
    apart = figures["pretraining_students_apart_s"] + figures["pretraining_teachers_apart_s"]
    together = figures["pretraining_students_together_s"] + figures["pretraining_teachers_together_s"]
    figures["pretraining_speedup"] = round(apart / together, 3)
    return figures


def run(
    quick: bool = False,
    demo: bool = True,
    settings: dict[str, Any] | None = None,
    fashion_study: Path | None = None,
) -> dict[str, Any]:
    """Every figure of this benchmark.

    Args:
        quick: fewer epochs and repeats, no demo.
        demo: time ``kdl study`` end to end.
        settings: Trainer arguments of every fit (``accelerator``, ``precision``).
        fashion_study: time the shipped Fashion-MNIST study too (about half an hour on 2 cores), writing its
            files into this directory (empty or new).
    """
    epochs, repeats = (2, 1) if quick else (5, 3)
    figures: dict[str, Any] = {"threads": torch.get_num_threads(), "settings": dict(settings or {}), "students": {}}
    with tempfile.TemporaryDirectory() as tmp, quiet():
        for name in STUDENTS:
            try:
                figures["students"][name] = measure_grid(name, epochs, repeats, Path(tmp), settings)
            except (FileNotFoundError, OSError) as error:  # Fashion-MNIST's files are not installed
                figures["students"][name] = {"skipped": str(error).splitlines()[0]}
    measured = [s for s in figures["students"].values() if "skipped" not in s]
    figures["grid_batched_over_one_run"] = max(s["grid_batched_over_one_run"] for s in measured)
    figures["grid_batched_speedup"] = min(s["grid_batched_speedup"] for s in measured)
    if demo and not quick:
        figures.update(measure_pretraining(settings))
        figures.update(measure_demo())
    if fashion_study is not None:
        figures.update(measure_fashion_study(fashion_study))
    return figures


def targets_met(figures: dict[str, Any]) -> dict[str, bool]:
    """The SPEC §11 targets this run measured."""
    met = {
        f"{name} grid batched <= {GRID_TARGET}x one run": s["grid_batched_over_one_run"] <= GRID_TARGET
        for name, s in figures["students"].items()
        if "skipped" not in s
    }
    if "demo_seconds" in figures:
        met[f"demo <= {DEMO_TARGET:.0f} s"] = figures["demo_seconds"] <= DEMO_TARGET
    if "fashion_study_seconds" in figures:
        met[f"Fashion-MNIST study <= {FASHION_STUDY_TARGET / 60:.0f} min"] = (
            figures["fashion_study_seconds"] <= FASHION_STUDY_TARGET
        )
    return met


def format_table(figures: dict[str, Any]) -> str:
    lines = [
        f"Batched members ({figures['threads']} threads{described(figures.get('settings'))}): "
        "the 25-point grid as one fit",
        f"{'student':<10}{'epochs':>7}{'one run s':>11}{'batched s':>11}{'sequential s':>14}"
        f"{'batched/one':>13}{'speed-up':>10}{'by sample s':>13}{'whole/by sample':>17}",
    ]
    for name, s in figures["students"].items():
        if "skipped" in s:
            lines.append(f"{name:<10}skipped: {s['skipped']}")
            continue
        lines.append(
            f"{name:<10}{s['epochs']:>7}{s['one_run_s']:>11.2f}{s['batched_grid_s']:>11.2f}"
            f"{s['sequential_grid_s']:>14.2f}{s['grid_batched_over_one_run']:>13.2f}{s['grid_batched_speedup']:>10.1f}"
            f"{s['one_run_sample_by_sample_s']:>13.2f}{s['whole_batches_speedup']:>17.2f}"
        )
    if "pretraining_speedup" in figures:
        f = figures
        lines.append(
            f"pre-training the embedded study's {f['pretraining_networks']} networks: students "
            f"{f['pretraining_students_apart_s']:.1f} s apart, {f['pretraining_students_together_s']:.1f} s "
            f"together; teachers {f['pretraining_teachers_apart_s']:.1f} s apart, "
            f"{f['pretraining_teachers_together_s']:.1f} s together; speed-up {f['pretraining_speedup']:.2f}"
        )
    if "demo_seconds" in figures:
        lines.append(
            f"kdl study (embedded default, {figures['demo_runs']} runs): {figures['demo_seconds']:.0f} s end to end, "
            f"{figures['demo_pretraining_seconds']} s of it pre-training"
        )
    if "fashion_study_seconds" in figures:
        lines.append(
            f"kdl study (Fashion-MNIST, {figures['fashion_study_runs']} runs, cells on Ray): "
            f"{figures['fashion_study_seconds'] / 60:.1f} min end to end, "
            f"{figures['fashion_study_pretraining_seconds']} s of it pre-training"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 epochs, one repeat, no demo")
    parser.add_argument("--no-demo", action="store_true", help="skip the end-to-end `kdl study`")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--accelerator", help="Trainer accelerator of every fit (default: Lightning's auto)")
    parser.add_argument("--precision", help="Trainer precision of every fit, e.g. bf16-mixed (default: 32-true)")
    parser.add_argument(
        "--fashion-study", type=Path, metavar="DIR", help="also time the shipped Fashion-MNIST study, its files in DIR"
    )
    args = parser.parse_args(argv)
    figures = run(
        quick=args.quick, demo=not args.no_demo, settings=trainer_settings(args), fashion_study=args.fashion_study
    )
    print(format_table(figures))
    met = targets_met(figures)
    print("targets: " + "; ".join(f"{name}: {'met' if ok else 'NOT met'}" for name, ok in met.items()))
    if args.json:
        args.json.write_text(json.dumps({**figures, "targets_met": met}, indent=2))
    return 0 if all(met.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
