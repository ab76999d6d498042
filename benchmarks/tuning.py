"""Tuned-KD search cost (SPEC §8, row 4), as ratios of units timed in one run (see :mod:`benchmarks.measure`).

On the bundled digits, in the study's setting (SPEC §6: KD continues a pre-trained student), with the
configs/digits teacher (a small CNN, channels 32-64) and a smaller CNN student (channels 8-16) pre-trained
for 40 epochs with configs/digits/student_only.yaml, three units run interleaved over 5 rounds (``--quick``) or
9, each trial and run 6 epochs of 8 training batches (of the split's 20) long:

- 5 ``StudentOnly`` runs continuing that student (the study's control; timed as their median run times 5),
  each built from configs/digits/student_only.yaml (as ``kdl fit`` does, without the interpreter start) and
  fitted for the trials' epochs on the same data, quiet, with no logger or checkpoint, as the trials are;
- the 25-point grid search of configs/tune/grid.yaml, ``kdl tune`` end to end into a new directory (the
  untrained student's validation, every trial, the test of the chosen point, the files), the teacher run once;
- TPE with successive-halving pruning, configs/tune/tpe_pruned.yaml, the same way;

and each figure is the median of its per-round values with a 95% bootstrap interval and a verdict: grid ÷ 25
StudentOnly runs (target ≤ 1.20), pruned ÷ 25 StudentOnly runs (target ≤ 0.50), and how far the pruned
search's best validation accuracy falls below the grid's (target: within 1 pp).

Run ``python -m benchmarks.tuning [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

from benchmarks.measure import FULL_REPEATS, MIN_REPEATS, Figure, interleave, paired, report
from kdlightning.cli import KDLightningCLI
from kdlightning.cli import main as kdl
from kdlightning.tuning import tune

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
QUIET = [
    "--trainer.logger=false",
    "--trainer.enable_checkpointing=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    "--trainer.num_sanity_val_steps=0",
]


def quiet() -> None:
    warnings.filterwarnings("ignore")
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)


STUDENT = "{class_path: kdlightning.models.SmallCNN, init_args: {num_classes: 10, channels: [8, 16]}}"
SMALL_CNN = f"model: {{init_args: {{student: {STUDENT}}}}}\n"
PRETRAINED = f"""\
# The small CNN student, continued from its pre-trained weights (runs/digits/student_only).
model:
  init_args:
    student:
      class_path: kdlightning.models.Pretrained
      init_args:
        checkpoint: runs/digits/student_only/checkpoints/last.ckpt
        network: {STUDENT}
"""


def pretrain(name: str, epochs: int, *configs: str) -> None:
    """configs/digits/<name>.yaml, writing runs/digits/<name>/checkpoints/last.ckpt under the current directory."""
    args = ["fit", "-c", str(CONFIGS / "_base" / "trainer.yaml"), "-c", str(CONFIGS / "digits" / f"{name}.yaml")]
    args += [item for config in configs for item in ("-c", config)]
    quiet_fit = [arg for arg in QUIET if "checkpointing" not in arg and "sanity" not in arg]  # keeps last.ckpt
    kdl([*args, f"--trainer.max_epochs={epochs}", *quiet_fit])


BATCHES = 8
"""Training batches an epoch of every trial and run (of the 20 in the digits training split): the trials' epochs,
and so the pruner's rungs, as in the study, in less time."""


def student_run(epochs: int) -> float:
    """Wall time of one StudentOnly run continuing the pre-trained student: build from the configs, fit."""
    args = ["-c", str(CONFIGS / "_base" / "trainer.yaml"), "-c", str(CONFIGS / "digits" / "student_only.yaml")]
    args += ["-c", "pretrained.yaml"]
    start = time.perf_counter()
    cli = KDLightningCLI(
        args=[*args, *QUIET, "--trainer.callbacks=[]", *length(epochs)],
        run=False,
        save_config_callback=None,
    )
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return time.perf_counter() - start


def length(epochs: int) -> list[str]:
    """The trainer arguments of a trial's or run's length: ``epochs`` epochs of :data:`BATCHES` batches."""
    return [f"--trainer.max_epochs={epochs}", f"--trainer.limit_train_batches={BATCHES}"]


def search(config: str, out: Path, epochs: int) -> tuple[float, Any]:
    """Wall time and result of ``kdl tune`` with ``configs/tune/<config>`` on the digits VanillaKD config."""
    args = [
        "-c",
        str(CONFIGS / "_base" / "trainer.yaml"),
        "-c",
        str(CONFIGS / "digits" / "vanilla_kd.yaml"),
        "-c",
        "pretrained.yaml",
        "-c",
        str(CONFIGS / "tune" / config),
        "--out",
        str(out),
        *length(epochs),
    ]
    start = time.perf_counter()
    result = tune(args, verbose=False)
    return time.perf_counter() - start, result


def run(quick: bool = False, heatmap: Path | None = None) -> dict[str, Any]:
    """Every figure, its units interleaved over the rounds; copy the last grid's heatmap to ``heatmap``.

    Args:
        quick: 5 rounds (else 9); trials of 6 epochs either way.
        heatmap: where to copy a grid search's ``heatmap.png``.
    """
    quiet()
    epochs = 6
    runs = 5  # StudentOnly runs in one unit (a unit of about a second or more); the figures scale it to 25
    cwd = Path.cwd()
    results: dict[str, list[Any]] = {"grid": [], "pruned": []}
    with tempfile.TemporaryDirectory(prefix="kdl-bench-tune-") as tmp:
        os.chdir(tmp)
        try:
            pretrain("teacher", 5)
            Path("small_cnn.yaml").write_text(SMALL_CNN)
            pretrain("student_only", 40, "small_cnn.yaml")
            Path("pretrained.yaml").write_text(PRETRAINED)
            student_run(epochs)  # warm-up: first-use costs belong to neither side
            rounds = iter(range(10_000))

            def searched(config: str, kind: str) -> float:
                seconds, result = search(config, Path(tmp) / f"{kind}-{next(rounds)}", epochs)
                results[kind].append(result)
                return seconds

            seconds = interleave(
                {
                    "student_runs": lambda: statistics.median(student_run(epochs) for _ in range(runs)) * runs,
                    "grid": lambda: searched("grid.yaml", "grid"),
                    "pruned": lambda: searched("tpe_pruned.yaml", "pruned"),
                },
                MIN_REPEATS if quick else FULL_REPEATS,
            )
            if heatmap is not None:
                shutil.copyfile(results["grid"][-1].out / "heatmap.png", cwd / heatmap)
        finally:
            os.chdir(cwd)
    students = seconds["student_runs"]
    gaps = [100 * (g.best_value - p.best_value) for g, p in zip(results["grid"], results["pruned"], strict=True)]
    figures = [
        paired("grid search ÷ 25 StudentOnly runs", seconds["grid"], students, target=1.20, scale=runs / 25),
        paired("pruned search ÷ 25 StudentOnly runs", seconds["pruned"], students, target=0.50, scale=runs / 25),
        Figure("grid's best val acc - pruned search's (pp)", tuple(gaps), target=1.0, unit=" pp"),
    ]
    grid, pruned = results["grid"][-1], results["pruned"][-1]
    states = [row["state"] for row in pruned.trials]
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch CPU",
        "epochs": epochs,
        "batches": BATCHES,
        "student_runs_per_unit": runs,
        "seconds": seconds,
        "val_acc_before": grid.val_before,
        "grid_best": {"params": grid.best_params, "val_acc": grid.best_value, "test": grid.test_metrics},
        "pruned_trials": len(states),
        "pruned_trials_pruned": states.count("PRUNED"),
        "pruned_best": {"params": pruned.best_params, "val_acc": pruned.best_value, "test": pruned.test_metrics},
        "figures": {figure.name: figure for figure in figures},
    }


def format_table(figures: dict[str, Any]) -> str:
    """The figures, each with its interval, spread and verdict, and the last round's chosen points."""
    grid, pruned = figures["grid_best"], figures["pruned_best"]

    def point(best: dict[str, Any]) -> str:
        values = ", ".join(f"{key.rsplit('.', 1)[-1]}={value:.3g}" for key, value in best["params"].items())
        return f"{values}: val {best['val_acc']:.4f}, test {best['test'].get('test/acc', float('nan')):.4f}"

    return "\n".join(
        [
            f"Tuned-KD search ({figures['machine']}; digits, a pre-trained small CNN student at val acc "
            f"{figures['val_acc_before']:.4f} continued for {figures['epochs']} epochs of {figures['batches']} "
            "batches per trial; units: the grid "
            f"search, the pruned search, {figures['student_runs_per_unit']} StudentOnly runs; interleaved rounds)",
            *(f"- {name}: {figure}" for name, figure in figures["figures"].items()),
            f"- the last round's grid chose {point(grid)}",
            f"- the last round's pruned search ({figures['pruned_trials']} trials, {figures['pruned_trials_pruned']} "
            f"pruned) chose {point(pruned)}",
        ]
    )


def targets_met(figures: dict[str, Any]) -> dict[str, str]:
    """The SPEC §8 search targets' verdicts."""
    return {name: figure.verdict for name, figure in figures["figures"].items() if figure.target is not None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds instead of 9")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--heatmap", type=Path, help="copy the grid search's heatmap.png here")
    args = parser.parse_args(argv)
    figures = run(quick=args.quick, heatmap=args.heatmap)
    report(figures, format_table, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
