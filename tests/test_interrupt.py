"""SIGTERM and Ctrl-C stop `kdl tune` and `kdl study` non-zero, saying what finished and how to resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import weakref
from pathlib import Path

import lightning as L
import pytest
import yaml
from conftest import NUM_CLASSES, ONE_CELL_STUDY, SyntheticDataModule, TinyNet, tiny_trainer
from planted import planted_args

from kdlightning import StudentOnly
from kdlightning.interrupt import Interrupted, exit_on_signals, raise_if_stopped
from kdlightning.reporting import read_csv
from kdlightning.tuning import tune

ROOT = Path(__file__).resolve().parents[1]


class SignalAt(L.Callback):
    """Send ``signum`` to this process after training batch ``batch``: a scheduler stopping the job."""

    def __init__(self, signum: int, batch: int = 1) -> None:
        self.signum, self.batch = signum, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx == self.batch:
            os.kill(os.getpid(), self.signum)


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_a_fit_exits_non_zero_and_says_what_finished(signum, status, tmp_path, capsys) -> None:
    """Lightning ends a fit stopped by SIGTERM with SystemExit(0); the command must not look finished."""
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    trainer = tiny_trainer(tmp_path, max_epochs=3, callbacks=[SignalAt(signum)])
    report = lambda: "2 of 20 runs are finished."  # noqa: E731
    with pytest.raises(SystemExit) as stopped, exit_on_signals("kdl study", ["--out", "runs/x"], report):
        trainer.fit(StudentOnly(TinyNet(), NUM_CLASSES), datamodule=SyntheticDataModule())
    assert stopped.value.code == status
    err = capsys.readouterr().err
    assert f"kdl study: stopped by {signal.Signals(signum).name}. 2 of 20 runs are finished." in err
    assert "Resume with the same command: kdl study --out runs/x" in err
    assert {s: signal.getsignal(s) for s in before} == before  # the previous handlers are back


def test_a_block_without_a_signal_is_untouched() -> None:
    with pytest.raises(ValueError, match="mine"), exit_on_signals("kdl tune", [], lambda: ""):
        raise ValueError("mine")
    with exit_on_signals("kdl tune", [], lambda: ""):
        pass


def _start(args: list[str], tmp_path: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests"), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    return subprocess.Popen(
        [sys.executable, "-m", "kdlightning", *args],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _stop_when(process: subprocess.Popen, ready, signum: int, limit: float = 120.0) -> tuple[int, str]:
    """Send ``signum`` once ``ready()`` holds (the command is mid-run); return its exit status and stderr."""
    deadline = time.monotonic() + limit
    while not ready():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, "the command never got going"
        time.sleep(0.05)
    process.send_signal(signum)
    _, err = process.communicate(timeout=limit)
    return process.returncode, err


def test_kdl_tune_stopped_by_sigterm_exits_143_and_resumes(tmp_path: Path) -> None:
    grid = {"grid": {"temperature": [1.0, 4.0], "alpha": [0.1, 0.5, 0.9]}}
    args = planted_args(tmp_path, grid, max_epochs=8)  # trials long enough that the stop lands mid-search
    trials = tmp_path / "search" / "trials.csv"
    status, err = _stop_when(_start(["tune", *args], tmp_path), trials.is_file, signal.SIGTERM)
    assert status == 143, err
    assert "kdl tune: stopped by SIGTERM." in err and "trials are finished" in err
    assert f"Resume with the same command: kdl tune {' '.join(args)}" in err
    finished = [row for row in read_csv(trials) if row["state"] == "COMPLETE"]
    assert 1 <= len(finished) < 6

    result = tune(args, verbose=False)  # the same command again: only what is left
    assert sum(row["state"] == "COMPLETE" for row in result.trials) == 6


def test_kdl_study_stopped_by_ctrl_c_exits_130(tmp_path: Path) -> None:
    config = {
        "dataset": {"class_path": "kdlightning.data.Digits"},
        "student": {"class_path": "kdlightning.models.MLP", "init_args": {"in_features": 64, "hidden_sizes": [8]}},
        "teacher": {"class_path": "kdlightning.models.MLP", "init_args": {"in_features": 64, "hidden_sizes": [8]}},
        **ONE_CELL_STUDY,
        "epochs": 400,
    }
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(config))
    args = ["-c", "study.yaml", "--out", "out", "--progress", "false"]
    pretrained = tmp_path / "out" / "pretrained"

    def mid_run() -> bool:
        return pretrained.is_dir() and len(list(pretrained.glob("*.pt"))) == 2

    status, err = _stop_when(_start(["study", *args], tmp_path), mid_run, signal.SIGINT)
    assert status == 130, err
    assert "kdl study: stopped by SIGINT. 0 of 2 runs are finished" in err
    assert "Resume with the same command: kdl study -c study.yaml --out out --progress false" in err


class SignalsWhenCollected:
    def __del__(self) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # the handler runs here, inside __del__


class Collected:
    """An object whose weak reference's callback (as in a WeakValueDictionary) signals when it is collected."""


def signal_in_weakref_callback() -> object:
    def callback(reference: weakref.ref) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)  # the handler runs here, inside the weakref callback

    target = Collected()
    reference = weakref.ref(target, callback)
    del target  # collected at once: the signal arrives in the callback
    return reference


@pytest.mark.parametrize("finalizer", [SignalsWhenCollected, signal_in_weakref_callback])
def test_a_signal_that_lands_in_a_finalizer_still_stops_the_command(finalizer, capsys) -> None:
    """Python ignores (and prints) an exception raised in ``__del__`` or a weakref callback: the stop is delivered
    again outside it, at once, and nothing is printed but the stop's note."""
    steps = []

    def work() -> None:
        with exit_on_signals("kdl study", ["--out", "out"], lambda: "0 runs."):
            finalizer()
            while len(steps) < 200:  # 2 s of work, unless the stop is delivered
                time.sleep(0.01)
                steps.append(1)

    with pytest.raises(SystemExit) as stopped:
        work()
    assert stopped.value.code == 130
    assert len(steps) < 100
    err = capsys.readouterr().err
    assert "kdl study: stopped by SIGINT. 0 runs." in err
    assert "Exception ignored" not in err and "Interrupted" not in err


def test_a_swallowed_stop_is_raised_again_at_the_next_step(capsys) -> None:
    steps: list[int] = []

    def loop() -> None:
        with exit_on_signals("kdl loop", [], lambda: "1 step finished."):
            raise_if_stopped()  # no signal yet
            for step in range(3):
                try:  # a library that catches the stop on its way out and carries on
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(1.0)
                except Interrupted:
                    pass
                steps.append(step)
                raise_if_stopped()  # the loop's boundary: the stop is raised again

    raise_if_stopped()  # no block, no signal: nothing happens
    with pytest.raises(SystemExit) as stopped:
        loop()
    assert stopped.value.code == 143 and steps == [0]
    assert "kdl loop: stopped by SIGTERM. 1 step finished." in capsys.readouterr().err
