"""Batched members (SPEC §8, §11): a tuning grid as one fit, as ratios of units timed in one run.

For two students of the study's configs, in the study's setting (party 0 of 5, IID, the teacher-output cache
on, quiet trainers with no logger or checkpoint), after a warm-up of each fit, these units run interleaved over
5 (``--quick``) or 9 rounds (see :mod:`benchmarks.measure`), each repeating its fit to about a second:

- ``StudentOnly`` fits of the student;
- the 25-point grid (``VanillaKD`` at temperature {1, 2, 4, 8, 16} x alpha {0.1, 0.25, 0.5, 0.75, 0.9}) as
  one batched fit (:class:`~kdlightning.methods.BatchedMembers`, 25 members);
- separate KD fits of one grid point reading the teacher's outputs from the cache (25 of them are the
  sequential grid), at least 2 to a unit;
- the same 25 points of :class:`~kdlightning.DeepMutualLearning` (the student and a copy of the teacher trained
  against each other) as one fit of 25 batched pairs, and separate DML fits of one point, at least 2 to a unit;
- on the CPU for Fashion-MNIST, the members' matrix products alone (:func:`matmul_floor`), the grid's floor;
- without ``--quick``, ``StudentOnly`` fits on the same data read sample by sample (PyTorch's default collate).

for the digits MLP (64-32-10, CNN teacher, batch 32, 5 epochs: ``configs/study/digits.yaml``), the
Fashion-MNIST MLP (784-128-10, MLP teacher 512-256, batch 128, 2 epochs) and, without ``--quick`` or with
``--students tokens``, a Hugging Face BERT student (2 layers, 64 wide, 32-token ids, batch 32, 2 epochs). The
figures, each the median of its per-round ratios with a 95% bootstrap interval and a verdict: batched grid ÷ one
run (target ≤ 3.0 where a run is overhead-bound: digits, or any student on a GPU), batched grid ÷ its members'
matrix products (target ≤ 1.5, Fashion-MNIST on the CPU), 25 KD fits ÷ batched grid (target ≥ 5), and 25 DML fits
÷ the batched pairs (no target: what batching DML's grid saves).
Without ``--quick`` it then pre-trains the
embedded study's 18 cells' networks, each role one network a fit and then all in one fit
(:class:`~kdlightning.methods.OwnDataMembers`: ``pretraining_speedup``), and runs ``kdl study`` with the
embedded default in a fresh process and directory (``demo_seconds``, target ≤ 120 s on 2 idle cores), one
measurement each.

With ``--fashion-study DIR`` it also runs the shipped Fashion-MNIST study (``configs/study/fashion_mnist.yaml``,
10 seeds, 6 scenarios, its cells in parallel on a local Ray) end to end into ``DIR`` (``fashion_study_seconds``,
target <= 30 min on 2 CPU cores).

Run ``python -m benchmarks.members [--quick] [--json PATH] [--accelerator gpu] [--precision bf16-mixed]
[--fashion-study DIR]``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch.utils.data import default_collate

from benchmarks.measure import FULL_REPEATS, MIN_REPEATS, as_json, interleave, paired, timed
from benchmarks.training import SyntheticTokens, TokenClassifier, described, trainer_settings
from kdlightning import BatchedMembers, DeepMutualLearning, StudentOnly, VanillaKD
from kdlightning.cache import CacheReferenceOutputs
from kdlightning.data import Digits, FashionMNIST, IIDPartitioner, PartitionedDataModule
from kdlightning.models import MLP, SmallCNN
from kdlightning.pipeline import trainer
from kdlightning.trainers import quiet

GRID = [(t, a) for t in (1.0, 2.0, 4.0, 8.0, 16.0) for a in (0.1, 0.25, 0.5, 0.75, 0.9)]
GRID_TARGET = 3.0
"""Batched grid ÷ one run, where a run is overhead-bound (the digits student on the CPU; any student on a GPU)."""
FLOOR_TARGET = 1.5
"""Batched grid ÷ its members' matrix products, where those alone exceed 3 runs (Fashion-MNIST on the CPU)."""
SPEEDUP_TARGET = 5.0
"""25 separate runs ÷ the batched grid, at least."""
DEMO_TARGET = 120.0
FASHION_STUDY_TARGET = 30 * 60.0
FASHION_STUDY = Path(__file__).resolve().parent.parent / "configs" / "study" / "fashion_mnist.yaml"

STUDENTS: dict[str, dict[str, Any]] = {
    "digits": {
        "dataset": Digits,
        "student": lambda: MLP(in_features=64, hidden_sizes=[32], num_classes=10),
        "teacher": lambda: SmallCNN(num_classes=10, channels=[16, 32]),
        "batch_size": 32,
        "overhead_bound_on_cpu": True,
    },
    "fashion": {
        "dataset": FashionMNIST,
        "student": lambda: MLP(in_features=784, hidden_sizes=[128], num_classes=10),
        "teacher": lambda: MLP(in_features=784, hidden_sizes=[512, 256], num_classes=10),
        "batch_size": 128,
    },
    "tokens": {  # without --quick: Hugging Face BERT students as members (token ids, 4 classes)
        "dataset": lambda: SyntheticTokens(num_samples=2000),
        "student": lambda: TokenClassifier(hidden=64, layers=2),
        "teacher": lambda: TokenClassifier(hidden=128, layers=2),
        "batch_size": 32,
        "full_only": True,
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


def measure_grid(
    name: str,
    epochs: int,
    repeats: int,
    unit_seconds: float,
    cache_root: Path,
    settings: dict[str, Any] | None = None,
    full: bool = True,
) -> dict[str, Any]:
    """One run and the batched grid of student ``name``, interleaved over ``repeats`` rounds, and their figures.

    A unit repeats its fit until it lasts about ``unit_seconds`` (how many times is set by one timed fit of each
    before the rounds): StudentOnly fits, batched grids, and separate KD fits of one grid point reading the
    teacher's outputs from the cache (as every trial of a sequential grid but the first does: 25 of them are the
    sequential grid). With Fashion-MNIST on the CPU a unit times the members' matrix products alone
    (:func:`matmul_floor`); with ``full``, a unit times the StudentOnly fits on the data read sample by sample.
    ``settings`` are Trainer arguments of every fit (``accelerator``, ``precision``).
    """
    spec = STUDENTS[name]
    data = _datamodule(spec)
    data.prepare_data()
    data.setup("fit")
    torch.manual_seed(0)
    student, teacher = spec["student"](), spec["teacher"]()
    classes = data.num_classes
    by_sample = _datamodule(spec)  # the same data read as PyTorch's default collate reads it: sample by sample
    by_sample.collate_fn = default_collate

    def one_run(datamodule: PartitionedDataModule = data) -> None:
        L.seed_everything(0, verbose=False)
        trainer(epochs, settings=settings).fit(StudentOnly(copy.deepcopy(student), classes), datamodule=datamodule)

    def kd(t: float, a: float) -> VanillaKD:
        return VanillaKD(copy.deepcopy(student), teacher, classes, temperature=t, alpha=a)

    def batched(max_epochs: int = epochs) -> None:
        L.seed_everything(0, verbose=False)
        model = BatchedMembers({f"T={t:g},alpha={a:g}": kd(t, a) for t, a in GRID})
        cache = CacheReferenceOutputs(cache_dir=str(cache_root / name))
        trainer(max_epochs, [cache], settings).fit(model, datamodule=data)

    def kd_run() -> None:
        L.seed_everything(0, verbose=False)
        cache = CacheReferenceOutputs(cache_dir=str(cache_root / f"{name}-separate"))
        trainer(epochs, [cache], settings).fit(kd(4.0, 0.5), datamodule=data)

    def dml(t: float, a: float) -> DeepMutualLearning:
        peer = copy.deepcopy(teacher).requires_grad_(True)  # a copy of the teacher, trained (KD froze the teacher)
        return DeepMutualLearning(copy.deepcopy(student), peer, classes, temperature=t, alpha=a)

    def pairs() -> None:
        L.seed_everything(0, verbose=False)
        model = BatchedMembers({f"T={t:g},alpha={a:g}": dml(t, a) for t, a in GRID})
        trainer(epochs, settings=settings).fit(model, datamodule=data)

    def dml_run() -> None:
        L.seed_everything(0, verbose=False)
        trainer(epochs, settings=settings).fit(dml(4.0, 0.5), datamodule=data)

    batched(1)  # warm-up, and the teacher's outputs into the cache every grid then reads
    kd_run()  # its cache, which every separate KD fit then reads
    one_runs, grids, pair_grids = (max(1, round(unit_seconds / timed(fit))) for fit in (one_run, batched, pairs))
    # the median of 2 or more: 25 of them are the figure
    kd_runs, dml_runs = (max(2, round(unit_seconds / timed(fit))) for fit in (kd_run, dml_run))
    units: dict[str, Callable[[], float]] = {
        "one_runs": functools.partial(repeated, one_run, one_runs),
        "grids": functools.partial(repeated, batched, grids),
        "kd_runs": functools.partial(repeated, kd_run, kd_runs),
        "pair_grids": functools.partial(repeated, pairs, pair_grids),
        "dml_runs": functools.partial(repeated, dml_run, dml_runs),
    }
    if full:
        one_run(by_sample)
        units["one_runs_by_sample"] = functools.partial(repeated, functools.partial(one_run, by_sample), one_runs)
    on_cpu = (settings or {}).get("accelerator", "cpu") == "cpu" or not torch.cuda.is_available()
    floored = name == "fashion" and on_cpu
    overhead_bound = not on_cpu or spec.get("overhead_bound_on_cpu", False)  # where SPEC §8 asks for 3 runs
    if floored:
        steps = epochs * len(data.train_dataloader())
        evaluated = epochs * len(data.val_set)
        units["matmul_floor"] = functools.partial(
            matmul_floor, [784, 128, 10], len(GRID), spec["batch_size"], steps, evaluated
        )
    seconds = interleave(units, repeats)
    one_each = [value / one_runs for value in seconds["one_runs"]]
    grid_each = [value / grids for value in seconds["grids"]]
    kd_each = [value / kd_runs for value in seconds["kd_runs"]]
    pairs_each = [value / pair_grids for value in seconds["pair_grids"]]
    dml_each = [value / dml_runs for value in seconds["dml_runs"]]
    # 3 runs where a run is overhead-bound; on the CPU, within 1.5x of the Fashion-MNIST members' arithmetic,
    # which alone exceeds 3 runs there (SPEC §8)
    figures = [
        paired("batched grid ÷ one run", grid_each, one_each, target=GRID_TARGET if overhead_bound else None),
        paired("25 KD fits ÷ batched grid", kd_each, grid_each, target=SPEEDUP_TARGET, at_most=False, scale=25),
        paired("25 DML fits ÷ batched pairs", dml_each, pairs_each, scale=25),
    ]
    if full:
        figures.append(
            paired(
                "one run, data read sample by sample ÷ read whole", seconds["one_runs_by_sample"], seconds["one_runs"]
            )
        )
    if floored:
        floor = seconds["matmul_floor"]
        figures.insert(1, paired("batched grid ÷ its members' matrix products", grid_each, floor, target=FLOOR_TARGET))
        figures.append(paired("the members' matrix products ÷ one run", floor, one_each))
    return {
        "epochs": epochs,
        "train_samples": len(data.train_set),
        "fits_per_unit": {
            "one_runs": one_runs,
            "grids": grids,
            "kd_runs": kd_runs,
            "pair_grids": pair_grids,
            "dml_runs": dml_runs,
        },
        "seconds": seconds,
        "figures": {figure.name: figure for figure in figures},
    }


def repeated(fit: Callable[[], Any], times: int) -> float:
    """A unit of ``times`` fits, timed as its median fit times ``times`` (no single slow fit weighs on it)."""
    return statistics.median(timed(fit) for _ in range(times)) * times


def matmul_floor(widths: list[int], members: int, batch: int, steps: int, evaluated: int) -> float:
    """Seconds of the members' matrix products alone, as batched members of an MLP of ``widths`` compute them.

    Each training step multiplies, for every layer, the batch by the stacked weights (forward), the layer's input
    by its output's gradient (the weights' gradient) and, but for the first layer, that gradient by the weights
    (the input's gradient); the ``evaluated`` validation samples are multiplied forward only. The fit's shapes and
    counts, in float32: no fit of those members can take less.
    """
    layers = list(itertools.pairwise(widths))
    weights = [torch.randn(members, inputs, outputs) for inputs, outputs in layers]
    acts = [torch.randn(members, batch, inputs) for inputs, _ in layers]
    grads = [torch.randn(members, batch, outputs) for _, outputs in layers]
    start = time.perf_counter()
    for _ in range(steps):
        for k, (weight, act, grad) in enumerate(zip(weights, acts, grads, strict=True)):
            torch.bmm(act, weight)  # forward
            torch.bmm(act.transpose(1, 2), grad)  # the weights' gradient
            if k:
                torch.bmm(grad, weight.transpose(1, 2))  # the input's gradient
    for _ in range(-(-evaluated // batch)):
        for weight, act in zip(weights, acts, strict=True):
            torch.bmm(act, weight)
    return time.perf_counter() - start


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
    students: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Every figure of this benchmark.

    Args:
        quick: 5 rounds, no pre-training or demo; else 9 rounds, and the pre-training and the demo (one
            measurement each). Either way 2 epochs (Fashion-MNIST) or 5 (digits), units of about 1 s.
        demo: time ``kdl study`` end to end (not with ``quick``).
        settings: Trainer arguments of every fit (``accelerator``, ``precision``).
        fashion_study: time the shipped Fashion-MNIST study too (about half an hour on 2 cores), writing its
            files into this directory (empty or new).
        students: only these of :data:`STUDENTS` (default: every one; ``tokens`` only without ``quick``).
    """
    unit, repeats = 1.0, MIN_REPEATS if quick else FULL_REPEATS
    figures: dict[str, Any] = {"threads": torch.get_num_threads(), "settings": dict(settings or {}), "students": {}}
    with tempfile.TemporaryDirectory() as tmp, quiet():
        for name, spec in STUDENTS.items():
            if (quick and spec.get("full_only") and students is None) or name not in (students or STUDENTS):
                continue
            epochs = 2 if name in ("fashion", "tokens") else 5
            try:
                figures["students"][name] = measure_grid(name, epochs, repeats, unit, Path(tmp), settings, not quick)
            except (FileNotFoundError, OSError) as error:  # Fashion-MNIST's files are not installed
                figures["students"][name] = {"skipped": str(error).splitlines()[0]}
    if demo and not quick:
        figures.update(measure_pretraining(settings))
        figures.update(measure_demo())
    if fashion_study is not None:
        figures.update(measure_fashion_study(fashion_study))
    return figures


def targets_met(figures: dict[str, Any]) -> dict[str, str]:
    """The SPEC §11 and §8 targets this run measured, with their verdicts (the demo and the study: one run each)."""
    met = {
        f"{name}: {label}": figure.verdict
        for name, s in figures["students"].items()
        if "skipped" not in s
        for label, figure in s["figures"].items()
        if figure.target is not None
    }
    if "demo_seconds" in figures:
        met[f"demo <= {DEMO_TARGET:.0f} s (one run)"] = "met" if figures["demo_seconds"] <= DEMO_TARGET else "not met"
    if "fashion_study_seconds" in figures:
        met[f"Fashion-MNIST study <= {FASHION_STUDY_TARGET / 60:.0f} min (one run)"] = (
            "met" if figures["fashion_study_seconds"] <= FASHION_STUDY_TARGET else "not met"
        )
    return met


def format_table(figures: dict[str, Any]) -> str:
    lines = [
        f"Batched members ({figures['threads']} threads{described(figures.get('settings'))}): the 25-point grid as "
        "one fit; median [95% bootstrap interval] over interleaved rounds",
    ]
    for name, s in figures["students"].items():
        if "skipped" in s:
            lines.append(f"- {name}: skipped: {s['skipped']}")
            continue
        counts = s["fits_per_unit"]
        lines.append(
            f"- {name}, {s['epochs']} epochs, {s['train_samples']} training samples (units: {counts['one_runs']} "
            f"runs, {counts['grids']} batched grids, {counts['kd_runs']} KD fits, {counts.get('pair_grids', 0)} "
            f"batched DML grids, {counts.get('dml_runs', 0)} DML fits):"
        )
        lines += [f"  - {label}: {figure}" for label, figure in s["figures"].items()]
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
    parser.add_argument("--quick", action="store_true", help="units of about 1 s, 5 rounds, no pre-training or demo")
    parser.add_argument("--no-demo", action="store_true", help="skip the end-to-end `kdl study`")
    parser.add_argument("--students", nargs="+", choices=sorted(STUDENTS), help="only these students' grids")
    parser.add_argument("--json", type=Path, help="write the figures to this JSON file")
    parser.add_argument("--accelerator", help="Trainer accelerator of every fit (default: Lightning's auto)")
    parser.add_argument("--precision", help="Trainer precision of every fit, e.g. bf16-mixed (default: 32-true)")
    parser.add_argument(
        "--fashion-study", type=Path, metavar="DIR", help="also time the shipped Fashion-MNIST study, its files in DIR"
    )
    args = parser.parse_args(argv)
    figures = run(
        quick=args.quick,
        demo=not args.no_demo,
        settings=trainer_settings(args),
        fashion_study=args.fashion_study,
        students=args.students,
    )
    print(format_table(figures))
    met = targets_met(figures)
    print("targets: " + "; ".join(f"{name}: {verdict}" for name, verdict in met.items()))
    if args.json:
        args.json.write_text(json.dumps({**figures, "verdicts": met}, indent=2, default=as_json))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
