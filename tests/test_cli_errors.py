"""What `kdl` prints for a command line it cannot run: one short message on stderr, never the usage or a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from kdlightning.argument_errors import accepted_keys, known_classes
from kdlightning.cli import main

ROOT = Path(__file__).resolve().parents[1]
TRAINER = str(ROOT / "configs" / "_base" / "trainer.yaml")
VANILLA = ROOT / "configs" / "digits" / "vanilla_kd.yaml"


def _fails(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int | str | None, list[str]]:
    """Run ``kdl args``; its exit status and the lines it wrote to stderr."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        main(args)
    captured = capsys.readouterr()
    assert "usage:" not in captured.err and "Traceback" not in captured.err
    return stopped.value.code, [line for line in captured.err.splitlines() if line.strip()]


def _config(tmp_path: Path, old: str, new: str) -> Path:
    """The digits VanillaKD config with ``old`` replaced by ``new``, written to ``tmp_path``."""
    path = tmp_path / "run.yaml"
    path.write_text(VANILLA.read_text().replace(old, new))
    return path


def test_a_misspelled_key_in_a_file_names_the_file_the_key_a_close_match_and_the_accepted_keys(tmp_path, capsys):
    config = _config(tmp_path, "temperature: 4.0", "temprature: 4.0")
    code, err = _fails(["fit", "-c", TRAINER, "-c", str(config)], capsys)
    assert code == 2
    assert len(err) == 2, err
    assert err[0] == (
        f"kdl fit: error: in {config}, `model.init_args.temprature`: VanillaKD has no argument `temprature`; "
        "did you mean `temperature`?"
    )
    assert err[1] == "  VanillaKD's arguments: " + ", ".join(accepted_keys("kdlightning.VanillaKD"))
    assert "temperature, alpha" in err[1]


def test_a_misspelled_key_on_the_command_line_says_so(capsys):
    code, err = _fails(["fit", "-c", TRAINER, "-c", str(VANILLA), "--model.init_args.temprature", "3"], capsys)
    assert code == 2
    assert err[0].startswith("kdl fit: error: on the command line, `model.init_args.temprature`: ")
    assert "did you mean `temperature`?" in err[0]


def test_a_misspelled_key_of_a_network_names_the_network(capsys):
    args = ["fit", "-c", TRAINER, "-c", str(VANILLA), "--model.init_args.student.init_args.hiden_sizes=[8]"]
    code, err = _fails(args, capsys)
    assert code == 2
    assert "MLP has no argument `hiden_sizes`; did you mean `hidden_sizes`?" in err[0]
    assert err[1].startswith("  MLP's arguments: num_classes, in_features, hidden_sizes")


def test_an_unknown_class_path_is_named_with_close_known_classes(tmp_path, capsys):
    config = _config(tmp_path, "class_path: kdlightning.VanillaKD", "class_path: kdlightning.VanilaKD")
    code, err = _fails(["fit", "-c", TRAINER, "-c", str(config)], capsys)
    assert code == 2
    assert err[0] == (
        f"kdl fit: error: in {config}, `model.class_path`: no class `kdlightning.VanilaKD`; "
        "did you mean `kdlightning.VanillaKD`?"
    )
    assert err[1] == "  known methods: " + ", ".join(known_classes("methods"))
    assert "kdlightning.DeepMutualLearning" in err[1]


def test_an_unknown_datamodule_on_the_command_line_lists_the_datamodules(capsys):
    code, err = _fails(["fit", "-c", TRAINER, "-c", str(VANILLA), "--data", "DigitDataModule"], capsys)
    assert code == 2
    assert "`data`: no class `DigitDataModule`; did you mean `kdlightning.data.DigitsDataModule`?" in err[0]
    assert err[1].startswith("  known datamodules: ") and "kdlightning.data.PartitionedDataModule" in err[1]


def test_a_value_of_the_wrong_type_names_the_key_the_value_and_the_type(tmp_path, capsys):
    config = _config(tmp_path, "alpha: 0.5", "alpha: high")
    code, err = _fails(["fit", "-c", TRAINER, "-c", str(config)], capsys)
    assert code == 2
    assert err == [
        f"kdl fit: error: in {config}, `model.init_args.alpha` (VanillaKD's `alpha`): 'high' is not a valid value; "
        "expected float."
    ]
    code, err = _fails(["fit", "-c", TRAINER, "-c", str(VANILLA), "--trainer.max_epochs=many"], capsys)
    assert err == [
        "kdl fit: error: on the command line, `trainer.max_epochs` (Trainer's `max_epochs`): 'many' is not a valid value; expected int or None."
    ]


def test_a_missing_checkpoint_is_one_line_and_no_traceback(tmp_path, capsys):
    missing = tmp_path / "missing.ckpt"
    code, err = _fails(["test", "-c", TRAINER, "-c", str(VANILLA), "--ckpt_path", str(missing)], capsys)
    assert code == 1
    assert err == [
        f"kdl test: MissingFileError: `--ckpt_path` '{missing}' does not exist: give a checkpoint (.ckpt) a run "
        "wrote. (KDL_TRACEBACK=1 shows the traceback)"
    ]


def test_an_unknown_top_level_key_and_a_callbacks_argument_are_found_in_their_file(tmp_path, capsys):
    config = _config(tmp_path, "model:", "modle:")
    code, err = _fails(["fit", "-c", TRAINER, "-c", str(config)], capsys)
    assert code == 2
    assert err[0] == f"kdl fit: error: in {config}, `modle`: unknown key; did you mean `model`?"
    assert err[1].startswith("  accepted keys: ") and {"model", "data", "trainer"} <= set(err[1][17:].split(", "))
    config = _config(tmp_path, "monitor: val/acc", "monitr: val/acc")
    code, err = _fails(["fit", "-c", TRAINER, "-c", str(config)], capsys)
    assert code == 2
    assert err[0] == (
        f"kdl fit: error: in {config}, `trainer.callbacks[0].init_args.monitr`: ModelCheckpoint has no argument "
        "`monitr`; did you mean `monitor`?"
    )


def test_a_mistyped_value_nested_in_a_callable_argument_is_named(capsys):
    args = ["fit", "-c", TRAINER, "-c", str(VANILLA), "--model.init_args.optimizer.init_args.lr", "fast"]
    code, err = _fails(args, capsys)
    assert code == 2
    assert err == [
        "kdl fit: error: on the command line, `model.init_args.optimizer.init_args.lr`: 'fast' is not a valid value; "
        "expected float or Tensor."
    ]
