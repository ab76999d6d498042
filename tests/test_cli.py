"""The `kdl` command and the shipped configs, end to end on the digits data."""

from __future__ import annotations

import contextlib
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from kdlightning.cli import KDLightningCLI, main

ROOT = Path(__file__).resolve().parents[1]
# `kdl fit` configs; configs/study (and configs/tune) hold configs of other commands, parsed in their own tests.
OTHER_COMMANDS = ("federated", "study", "tune")
CONFIGS = sorted(
    p for p in (ROOT / "configs").rglob("*.yaml") if p.relative_to(ROOT / "configs").parts[0] not in OTHER_COMMANDS
)
TRAINER = ROOT / "configs" / "_base" / "trainer.yaml"
DIGITS = ["teacher", "student_only", "vanilla_kd", "dml", "dpkd", "multi_teacher"]  # in dependency order
FAST = [
    "--trainer.max_epochs=1",
    "--trainer.limit_train_batches=3",
    "--trainer.limit_val_batches=2",
    "--trainer.limit_test_batches=2",
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
]


def _config_args(path: Path) -> list[str]:
    """A runnable config set for ``path``: base configs are composed with a method config."""
    if "model" in (yaml.safe_load(path.read_text()) or {}):
        return ["-c", str(TRAINER), "-c", str(path)]
    return ["-c", str(TRAINER), "-c", str(path), "-c", str(ROOT / "configs" / "digits" / "student_only.yaml")]


def _print_config(args: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exit_info:
        main(["fit", *args, "--print_config"])
    assert exit_info.value.code in (0, None)
    return out.getvalue()


def test_configs_are_found() -> None:
    names = {p.relative_to(ROOT / "configs").as_posix() for p in CONFIGS}
    assert {"_base/trainer.yaml", "_base/wandb.yaml", *(f"digits/{n}.yaml" for n in DIGITS)} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.relative_to(ROOT / "configs").as_posix())
def test_every_config_parses_and_round_trips(path: Path, tmp_path: Path) -> None:
    printed = _print_config(_config_args(path))
    config = yaml.safe_load(printed)
    assert config["model"]["class_path"].startswith("kdlightning.")
    again = tmp_path / "printed.yaml"
    again.write_text(printed)
    assert yaml.safe_load(_print_config(["-c", str(again)])) == config


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Run every digits config with `kdl fit` in order (the later ones load the earlier checkpoints)."""
    workdir = tmp_path_factory.mktemp("digits")
    cwd = Path.cwd()
    os.chdir(workdir)
    try:
        for name in DIGITS:
            main(["fit", "-c", str(TRAINER), "-c", str(ROOT / "configs" / "digits" / f"{name}.yaml"), *FAST])
    finally:
        os.chdir(cwd)
    return workdir


@pytest.mark.parametrize("name", DIGITS)
def test_digits_config_trains_and_tests_end_to_end(name: str, digits_runs: Path, monkeypatch) -> None:
    monkeypatch.chdir(digits_runs)
    checkpoint = digits_runs / "runs" / "digits" / name / "checkpoints" / "last.ckpt"
    assert checkpoint.is_file()
    state = torch.load(checkpoint, weights_only=True)["state_dict"]
    assert all(key.startswith(("student.", "peer.")) for key in state)  # no frozen reference is checkpointed
    cli = KDLightningCLI(
        args=[
            "test",
            "-c",
            str(TRAINER),
            "-c",
            str(ROOT / "configs" / "digits" / f"{name}.yaml"),
            *FAST,
            f"--ckpt_path={checkpoint}",
        ],
    )
    assert 0.0 <= cli.trainer.callback_metrics["test/acc"].item() <= 1.0
    assert cli.model.num_classes == 10  # linked from the datamodule


def test_teacher_is_loaded_from_the_earlier_run(digits_runs: Path, monkeypatch) -> None:
    monkeypatch.chdir(digits_runs)
    cli = KDLightningCLI(
        args=["-c", str(TRAINER), "-c", str(ROOT / "configs" / "digits" / "vanilla_kd.yaml")], run=False
    )
    trained = torch.load("runs/digits/teacher/checkpoints/last.ckpt", weights_only=True)["state_dict"]
    for key, value in cli.model.teacher.state_dict().items():
        assert torch.equal(value, trained[f"student.{key}"])
    assert not cli.model.teacher.training


def test_missing_teacher_checkpoint_names_the_path(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(
        (FileNotFoundError, ValueError), match=r"No checkpoint at .runs/digits/teacher/checkpoints/last.ckpt.*kdl fit"
    ):
        KDLightningCLI(args=["-c", str(TRAINER), "-c", str(ROOT / "configs" / "digits" / "vanilla_kd.yaml")], run=False)


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--model.init_args.alpha=2.0", "alpha"),
        ("--model.init_args.temperature=0", "temperature"),
    ],
)
def test_bad_values_from_the_command_line_name_the_argument(
    override: str, message: str, digits_runs, monkeypatch
) -> None:
    monkeypatch.chdir(digits_runs)
    with pytest.raises(ValueError, match=message):
        KDLightningCLI(
            args=["-c", str(TRAINER), "-c", str(ROOT / "configs" / "digits" / "vanilla_kd.yaml"), override], run=False
        )


def test_unknown_selection_fails_at_parse_time_listing_the_choices(digits_runs, monkeypatch, capsys) -> None:
    monkeypatch.chdir(digits_runs)
    with pytest.raises(SystemExit):
        KDLightningCLI(
            args=[
                "-c",
                str(TRAINER),
                "-c",
                str(ROOT / "configs" / "digits" / "dpkd.yaml"),
                "--model.init_args.selection=oracle",
            ],
            run=False,
        )
    err = capsys.readouterr().err
    assert "selection" in err and "supervised" in err


@pytest.mark.slow
def test_console_script_and_module_entry_point() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    for command in (
        [str(Path(sys.executable).parent / "kdl"), "--help"],
        [sys.executable, "-m", "kdlightning", "--help"],
    ):
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=120, check=False)
        assert result.returncode == 0, result.stderr
        assert "fit" in result.stdout and "validate" in result.stdout and "predict" in result.stdout


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("--model.init_args.alpha=1.5", "ConfigurationError: `alpha` must lie in [0, 1]"),
        (None, "MissingFileError: No checkpoint at"),
    ],
)
def test_an_error_is_the_first_and_last_thing_the_user_sees(
    override, message, digits_runs, tmp_path, monkeypatch, capsys
):
    """The message, not 80 lines of parser traceback and namespace dump; KDL_TRACEBACK=1 brings the traceback."""
    monkeypatch.chdir(digits_runs if override else tmp_path)  # no teacher checkpoint in tmp_path
    args = ["fit", "-c", str(TRAINER), "-c", str(ROOT / "configs" / "digits" / "vanilla_kd.yaml")]
    args += [override] if override else []
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert err[0].startswith(f"kdl fit: {message}") and len(err) == 1, err
    monkeypatch.setenv("KDL_TRACEBACK", "1")
    with pytest.raises(Exception, match=message.split(": ", 1)[1].replace("[", r"\[")):
        main(args)


def test_a_config_writes_to_its_own_run_directory_and_last_is_the_latest_run(tmp_path: Path, monkeypatch) -> None:
    """Logs, config and checkpoints together under runs/digits/<name>; a rerun told to overwrite makes no last-v1."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "runs" / "digits" / "teacher"
    for again in ([], ["--overwrite=true"]):
        main(["fit", "-c", str(TRAINER), "-c", str(ROOT / "configs" / "digits" / "teacher.yaml"), *FAST, *again])
    assert sorted(path.name for path in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    for version in ("version_0", "version_1"):
        assert {"config.yaml", "metrics.csv"} <= {p.name for p in (run / "lightning_logs" / version).iterdir()}
    assert not (tmp_path / "runs" / "lightning_logs").exists() and not (tmp_path / "runs" / "config.yaml").exists()


@pytest.mark.parametrize(
    ("shipped", "packaged"), [("study/digits.yaml", "study.yaml"), ("federated/digits.yaml", "federated.yaml")]
)
def test_each_default_config_has_one_copy(shipped: str, packaged: str) -> None:
    """configs/ points at the packaged default (what `kdl study` / `kdl federate` run with no -c): one copy."""
    from kdlightning.pipeline import DEFAULTS

    assert (ROOT / "configs" / shipped).resolve() == (DEFAULTS / packaged).resolve()
    assert (DEFAULTS / packaged).is_file()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"garbage text\n", r"ConfigurationError: `--ckpt_path` '.*bad.ckpt' is not a checkpoint"),
        (None, r"MissingFileError: `--ckpt_path` '.*bad.ckpt' does not exist"),
    ],
)
def test_a_ckpt_path_that_is_no_checkpoint_is_named(content, message, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.ckpt"
    if content is not None:
        bad.write_bytes(content)
    args = ["-c", str(TRAINER), "-c", str(ROOT / "configs" / "digits" / "student_only.yaml")]
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(["test", *args, "--ckpt_path", str(bad)])
    assert stopped.value.code == 1
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and re.match(f"kdl test: {message}", err[0]), err
    assert "weights_only" not in err[0]
