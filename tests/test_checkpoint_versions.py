"""A rerun of `kdl fit` into a run directory that holds checkpoints: refused, resumed, or replaced on request."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch

from kdlightning.cli import main

ROOT = Path(__file__).resolve().parents[1]
FIT = [
    "fit",
    "-c",
    str(ROOT / "configs" / "_base" / "trainer.yaml"),
    "-c",
    str(ROOT / "configs" / "digits" / "student_only.yaml"),
    "--trainer.limit_train_batches=2",
    "--trainer.limit_val_batches=1",
    "--trainer.num_sanity_val_steps=0",
    "--trainer.logger=false",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def test_a_rerun_keeps_the_first_runs_checkpoints_resumes_or_replaces_on_request(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    checkpoints = tmp_path / "runs" / "digits" / "student_only" / "checkpoints"
    main([*FIT, "--trainer.max_epochs=1"])
    best, last = (checkpoints / "best.ckpt").read_bytes(), (checkpoints / "last.ckpt").read_bytes()

    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:  # a second fit of the same config, e.g. with a worse setting
        main([*FIT, "--trainer.max_epochs=1", "--model.init_args.optimizer.init_args.lr=0"])
    assert stopped.value.code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err == [
        f"kdl fit: ConfigurationError: {checkpoints} already holds checkpoints of an earlier run (best.ckpt, "
        "last.ckpt), which this fit would replace. Resume that run with `--ckpt_path last`, move the files away, "
        "or pass `--overwrite true` to replace them. (KDL_TRACEBACK=1 shows the traceback)"
    ]
    assert (checkpoints / "best.ckpt").read_bytes() == best and (checkpoints / "last.ckpt").read_bytes() == last
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]

    main([*FIT, "--trainer.max_epochs=2", "--ckpt_path", "last"])  # resuming continues the same files
    assert torch.load(checkpoints / "last.ckpt", weights_only=False)["epoch"] == 1
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]

    main([*FIT, "--trainer.max_epochs=1", "--overwrite=true"])  # asked for: a fresh run replaces them
    assert torch.load(checkpoints / "last.ckpt", weights_only=False)["epoch"] == 0
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best.ckpt", "last.ckpt"]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_a_fit_prints_none_of_lightnings_notices_about_its_own_defaults(tmp_path, monkeypatch):
    """No TensorBoard notice, no "already configured with model summary callbacks", one closing line."""
    monkeypatch.chdir(tmp_path)
    records = _Records()
    logging.getLogger("lightning.pytorch").addHandler(records)
    args = [arg for arg in FIT if arg != "--trainer.logger=false"]  # Lightning's default logger
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            main([*args, "--trainer.max_epochs=1", "--trainer.enable_model_summary=true"])
    finally:
        logging.getLogger("lightning.pytorch").removeHandler(records)
    said = [str(warning.message) for warning in caught] + records.messages
    assert not [line for line in said if "tensorboardX" in line or "already configured" in line], said
    assert not [line for line in said if "`Trainer.fit` stopped" in line], said
    assert [line for line in said if line.startswith("fit ended after 1 epochs")], said
    assert (tmp_path / "runs" / "digits" / "student_only" / "lightning_logs" / "version_0" / "metrics.csv").is_file()
