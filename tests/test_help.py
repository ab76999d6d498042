"""`kdl --help` and each subcommand's help read well: one line per subcommand, no internal references."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest

from kdlightning.cli import COMMANDS, main, parser

ROOT = Path(__file__).resolve().parents[1]
MARKUP = (":class:", ":meth:", ":func:", "``", "SPEC", "§")


def help_of(args: list[str], monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COLUMNS", "100")
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as stopped:
        main(args)
    assert stopped.value.code in (0, None)
    return out.getvalue()


def test_kdl_help_lists_every_subcommand_on_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    text = help_of(["--help"], monkeypatch)
    lines = text.splitlines()
    for name, line in COMMANDS.items():
        assert any(row.split() == [name, *line.split()] for row in lines), f"{name}: {line}"
    assert list(COMMANDS) == ["fit", "validate", "test", "predict", "tune", "study", "federate"]


def test_the_docs_show_the_current_kdl_help(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "100")
    assert (ROOT / "docs" / "reference" / "kdl_help.txt").read_text() == parser().format_help()


@pytest.mark.parametrize(
    ("args", "prog", "longest"),
    [
        (["tune", "--help"], "usage: kdl tune", 600),
        (["study", "--help"], "study [-c CONFIG]", 200),
        (["federate", "--help"], "federate [-c CONFIG]", 200),
    ],
)
def test_subcommand_help_names_the_command_and_reads_as_text(args, prog, longest, monkeypatch) -> None:
    text = help_of(args, monkeypatch)
    assert prog in text.splitlines()[0]
    assert len(text.splitlines()) < longest
    assert "torch.nn.Identity" not in text  # no list of every nn.Module subclass
    assert not [mark for mark in MARKUP if mark in text], text


def test_pipelines_with_an_embedded_default_need_no_argument(monkeypatch: pytest.MonkeyPatch) -> None:
    text = help_of(["study", "--help"], monkeypatch)
    student = text[text.index("  --student STUDENT") :].split("\n  --")[0]
    assert "required" not in student and "kdlightning.models.MLP" in student


@pytest.mark.parametrize(("option", "name"), [("--model.help", "VanillaKD"), ("--data.help", "PartitionedDataModule")])
def test_subclass_help_by_short_name(option: str, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    text = help_of(["fit", option, name], monkeypatch)
    assert f"Help for {option}=kdlightning." in text and name in text
