"""Tuned-KD search cost (SPEC §8, row 4), measured as ratios in one run.

On the bundled digits, in the study's setting (SPEC §6: KD continues a pre-trained student), with the
configs/digits teacher (a small CNN, channels 32-64) and a smaller CNN student (channels 8-16) pre-trained
for 40 epochs with configs/digits/student_only.yaml, it times in one process:

- one ``StudentOnly`` run continuing that student (the study's control): building it from
  configs/digits/student_only.yaml (as ``kdl fit`` does, without the interpreter start) and fitting it for
  the trials' epochs on the same data, quiet, with no logger or checkpoint, as the search's trials are; the
  median of several runs taken before and after the searches;
- the 25-point grid search of configs/tune/grid.yaml, ``kdl tune`` end to end (the untrained student's
  validation, every trial, the test of the chosen point, the files), with the teacher run once (cache);
- TPE with successive-halving pruning, configs/tune/tpe_pruned.yaml, the same way;

and prints grid ÷ (25 × StudentOnly run) (target ≤ 1.20), pruned ÷ (25 × StudentOnly run) (target ≤ 0.50)
and how far the pruned search's best validation accuracy is from the grid's (target: within ~1 pp).

Run ``python -m benchmarks.tuning [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import json
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


def student_run(epochs: int) -> float:
    """Wall time of one StudentOnly run continuing the pre-trained student: build from the configs, fit."""
    args = ["-c", str(CONFIGS / "_base" / "trainer.yaml"), "-c", str(CONFIGS / "digits" / "student_only.yaml")]
    args += ["-c", "pretrained.yaml"]
    start = time.perf_counter()
    cli = KDLightningCLI(
        args=[*args, *QUIET, "--trainer.callbacks=[]", f"--trainer.max_epochs={epochs}"],
        run=False,
        save_config_callback=None,
    )
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return time.perf_counter() - start


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
        f"--trainer.max_epochs={epochs}",
    ]
    start = time.perf_counter()
    result = tune(args, verbose=False)
    return time.perf_counter() - start, result


def run(quick: bool = False, heatmap: Path | None = None) -> dict[str, Any]:
    """Measure the figures (quick: fewer epochs and StudentOnly repeats); copy the grid's heatmap to ``heatmap``."""
    quiet()
    epochs = 20 if quick else 40
    repeats = 2 if quick else 3
    cwd = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="kdl-bench-tune-") as tmp:
        os.chdir(tmp)
        try:
            pretrain("teacher", 5 if quick else 15)
            Path("small_cnn.yaml").write_text(SMALL_CNN)
            pretrain("student_only", 40, "small_cnn.yaml")
            Path("pretrained.yaml").write_text(PRETRAINED)
            student_run(epochs)  # warm-up: first-use costs belong to neither side
            students = [student_run(epochs) for _ in range(repeats)]
            grid_s, grid = search("grid.yaml", Path(tmp) / "grid", epochs)
            pruned_s, pruned = search("tpe_pruned.yaml", Path(tmp) / "tpe", epochs)
            students += [student_run(epochs) for _ in range(repeats)]
            if heatmap is not None:
                shutil.copyfile(Path(tmp) / "grid" / "heatmap.png", cwd / heatmap)
        finally:
            os.chdir(cwd)
    student_s = statistics.median(students)
    states = [row["state"] for row in pruned.trials]
    return {
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch CPU",
        "epochs": epochs,
        "student_run_s": student_s,
        "student_runs_s": students,
        "grid_search_s": grid_s,
        "grid_trials": len(grid.trials),
        "val_acc_before": grid.val_before,
        "grid_best": {"params": grid.best_params, "val_acc": grid.best_value, "test": grid.test_metrics},
        "pruned_search_s": pruned_s,
        "pruned_trials": len(states),
        "pruned_trials_pruned": states.count("PRUNED"),
        "pruned_best": {"params": pruned.best_params, "val_acc": pruned.best_value, "test": pruned.test_metrics},
        "grid_over_25_student_runs": grid_s / (25 * student_s),
        "pruned_over_25_student_runs": pruned_s / (25 * student_s),
        "pruned_best_gap_pp": 100 * (grid.best_value - pruned.best_value),
    }


def format_table(figures: dict[str, Any]) -> str:
    """The figures as a Markdown table."""
    grid, pruned = figures["grid_best"], figures["pruned_best"]

    def point(best: dict[str, Any]) -> str:
        values = ", ".join(f"{key.rsplit('.', 1)[-1]}={value:.3g}" for key, value in best["params"].items())
        return f"{values}: val {best['val_acc']:.4f}, test {best['test'].get('test/acc', float('nan')):.4f}"

    searched = f"{figures['pruned_trials']} trials ({figures['pruned_trials_pruned']} pruned)"
    rows = [
        ("StudentOnly run (s), median", "", f"{figures['student_run_s']:.2f}"),
        (f"grid search, {figures['grid_trials']} trials (s)", "", f"{figures['grid_search_s']:.1f}"),
        (f"TPE + successive halving, {searched} (s)", "", f"{figures['pruned_search_s']:.1f}"),
        ("**grid ÷ 25 StudentOnly runs**", "≤ 1.20", f"{figures['grid_over_25_student_runs']:.3f}"),
        ("**pruned ÷ 25 StudentOnly runs**", "≤ 0.50", f"{figures['pruned_over_25_student_runs']:.3f}"),
        ("**grid best - pruned best, val acc (pp)**", "≲ 1", f"{figures['pruned_best_gap_pp']:.2f}"),
        ("grid's choice", "", point(grid)),
        ("pruned search's choice", "", point(pruned)),
    ]
    lines = [
        f"Tuned-KD search ({figures['machine']}; digits, a pre-trained small CNN student at val acc "
        f"{figures['val_acc_before']:.4f} continued for {figures['epochs']} epochs per trial)",
        "",
        "| figure | target | value |",
        "|---|---|---|",
        *(f"| {label} | {target} | {value} |" for label, target, value in rows),
    ]
    return "\n".join(lines)


def targets_met(figures: dict[str, Any]) -> dict[str, bool]:
    """The SPEC §8 search targets."""
    return {
        "grid <= 1.20": figures["grid_over_25_student_runs"] <= 1.20,
        "pruned <= 0.50": figures["pruned_over_25_student_runs"] <= 0.50,
        "pruned best within 1 pp": figures["pruned_best_gap_pp"] <= 1.0,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and repeats (well under 2 minutes)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--heatmap", type=Path, help="copy the grid search's heatmap.png here")
    args = parser.parse_args(argv)
    figures = run(quick=args.quick, heatmap=args.heatmap)
    print(format_table(figures))
    met = targets_met(figures)
    print("\ntargets met: " + ", ".join(f"{name}: {'yes' if ok else 'NO'}" for name, ok in met.items()))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    return 0 if all(met.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
