"""W&B logging through ``configs/_base/wandb.yaml`` works offline, with no account and no API key.

wandb 0.31 writes no ``files/wandb-summary.json`` for an offline run: everything logged is in the
run's ``run-<id>.wandb`` file, a LevelDB-style log of ``wandb.proto`` ``Record`` messages. The
test decodes it (:func:`wandb_records.records`) and checks the history rows themselves.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from wandb_records import records

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 2
BATCHES = 4


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)


@pytest.mark.slow
def test_wandb_offline_run_without_account(tmp_path: Path) -> None:
    pytest.importorskip("wandb")
    cwd, save_dir = tmp_path / "cwd", tmp_path / "logs"
    env = {key: value for key, value in os.environ.items() if not key.startswith("WANDB_")}
    env.pop("LOCAL_RANK", None)
    for name in ("cwd", "home", "wandb_dir", "wandb_cache", "wandb_config"):
        (tmp_path / name).mkdir()
    env.update(
        HOME=str(tmp_path / "home"),  # no ~/.netrc, no ~/.config/wandb: no credentials anywhere
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_DIR=str(tmp_path / "wandb_dir"),
        WANDB_CACHE_DIR=str(tmp_path / "wandb_cache"),
        WANDB_CONFIG_DIR=str(tmp_path / "wandb_config"),
        WANDB_DISABLE_GIT="true",
        OMP_NUM_THREADS="1",
    )
    kdl = shutil.which("kdl", path=str(Path(sys.executable).parent))
    cmd = [kdl] if kdl else [sys.executable, "-m", "kdlightning"]
    cmd += ["fit"]
    for config in ("configs/_base/trainer.yaml", "configs/_base/wandb.yaml", "configs/digits/student_only.yaml"):
        cmd += ["-c", str(ROOT / config)]
    cmd += [
        f"--trainer.max_epochs={EPOCHS}",
        f"--trainer.limit_train_batches={BATCHES}",
        "--trainer.limit_val_batches=2",
        "--trainer.log_every_n_steps=1",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={save_dir}",
    ]
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (result.stdout + result.stderr)[-6000:]

    # The config's checkpoints are relative to the working directory.
    assert (cwd / "runs/digits/student_only/checkpoints/last.ckpt").is_file()

    runs = sorted((save_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected one offline run under {save_dir / 'wandb'}: {runs}"
    logs = sorted(runs[0].glob("run-*.wandb"))
    assert len(logs) == 1, sorted(p.name for p in runs[0].iterdir())

    found = records(logs[0])
    by_type: dict[str, list] = {}
    for record in found:
        by_type.setdefault(record.WhichOneof("record_type"), []).append(record)

    (run,) = by_type["run"]
    assert run.run.project == "kdlightning"  # from configs/_base/wandb.yaml
    assert logs[0].name == f"run-{run.run.run_id}.wandb"
    (exit_record,) = by_type["exit"]
    assert exit_record.exit.exit_code == 0
    config = {_key(item): json.loads(item.value_json) for r in by_type["config"] for item in r.config.update}
    assert config.get("num_classes") == 10  # the method's hyperparameters, linked from the datamodule
    # the run is named after its config, and its config is the whole run's, not only the method's scalars
    assert (run.run.display_name, run.run.run_group, run.run.job_type) == (
        "digits/student_only",
        "DigitsDataModule",
        "fit",
    )
    assert {"StudentOnly", "MLP", "DigitsDataModule"} <= set(run.run.tags)
    full = config["config"]
    assert full["model"]["class_path"] == "kdlightning.StudentOnly"
    assert full["model"]["init_args"]["student"]["class_path"] == "kdlightning.models.MLP"
    assert full["model"]["init_args"]["optimizer"]["init_args"]["lr"] == 0.001  # the default Adam
    assert full["data"]["class_path"] == "kdlightning.data.DigitsDataModule"
    assert full["trainer"]["max_epochs"] == EPOCHS and full["trainer"]["precision"] == "32-true"

    rows = [{_key(item): json.loads(item.value_json) for item in r.history.item} for r in by_type["history"]]
    keys = set().union(*rows)
    assert {"train/loss", "val/loss", "val/acc"} <= keys, sorted(keys)
    steps = [row["train/loss"] for row in rows if "train/loss" in row]
    assert len(steps) == EPOCHS * BATCHES  # log_every_n_steps=1
    assert all(math.isfinite(value) for value in steps)
    accs = [row["val/acc"] for row in rows if "val/acc" in row]
    assert len(accs) == EPOCHS  # once per validation epoch
    assert all(0.0 <= value <= 1.0 for value in accs)
