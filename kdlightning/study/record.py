"""``study.json``: the configuration a study's results were made with, and the check that a resume matches it.

A study records the settings every run shares and each method's own configuration beside
``results.csv``. A resume with another value of any of them is refused before any training; new
seeds, scenarios and methods only add runs. Apart from :func:`check_and_record`, which reads and
writes ``study.json``, these are pure functions of JSON-able values.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kdlightning.atomic import write_text_atomic
from kdlightning.errors import ConfigurationError
from kdlightning.pipeline import differences, show
from kdlightning.reporting import is_failed

__all__ = ["RECORD", "check_and_record", "legacy_record", "refuse_differences"]

RECORD = "study.json"
"""The file beside ``results.csv`` that records the configuration its results were made with."""


def legacy_record(rows: Sequence[Mapping[str, Any]], methods: Sequence[str], is_failed: Any) -> dict[str, Any]:
    """What results written before ``study.json`` was kept tell of their configuration.

    Their rows carry the epochs and each method's class and hyperparameters (numbers only are compared:
    other values were written as text, callables with memory addresses). The rest cannot be checked and
    is taken to be the current study's: refusing such results outright would strand every finished study.

    Args:
        rows: the rows of ``results.csv``.
        methods: the names of the study's (untuned) methods.
        is_failed: tells a failed row (it has no hyperparameters to compare).
    """
    epochs = sorted({int(row["epochs"]) for row in rows if row.get("epochs")})
    found: dict[str, Any] = {}
    for row in rows:
        if row["method"] in methods and row.get("hyperparameters") and not is_failed(row):
            values = json.loads(str(row["hyperparameters"]))
            numbers = {k: v for k, v in values.items() if isinstance(v, (int, float))}
            found.setdefault(row["method"], {"class": row.get("class"), "hyperparameters": numbers})
    settings = {"epochs": epochs[0] if len(epochs) == 1 else epochs} if epochs else {}
    return {"settings": settings, "methods": found}


def refuse_differences(
    recorded: Mapping[str, Any],
    mine: Mapping[str, Any],
    where: str,
    names: Mapping[str, str],
    only_recorded_keys: bool,
) -> None:
    """Raise ``ValueError`` listing where configuration ``mine`` differs from ``recorded`` (read from ``where``).

    Args:
        recorded: ``{"settings": ..., "methods": ...}`` as recorded.
        mine: the same for the study about to run.
        where: the file ``recorded`` came from, named in the message.
        names: the argument that configures a method, by method name, where it is not ``methods.<name>``
            (tuned KD's ``tuning``, the control's ``control``).
        only_recorded_keys: compare only the keys ``recorded`` has (results older than the record).
    """
    common = [name for name in recorded.get("methods", {}) if name in mine["methods"]]
    found = [
        (path.split(".", 1)[0], path, old, new)
        for path, old, new in differences(recorded.get("settings", {}), mine["settings"], only_recorded_keys)
    ]
    for name in common:
        argument = names.get(name, f"methods.{name}")
        for path, old, new in differences(recorded["methods"][name], mine["methods"][name], only_recorded_keys):
            found.append((argument, path, old, new))
    if not found:
        return
    lines = []
    for argument, path, old, new in found:
        detail = path.split(".", 1)[1] if "." in path else ""
        detail = detail.removeprefix("tuning.") if argument == "tuning" else detail
        lines.append(f"  `{argument}`: {detail + ' ' if detail else ''}{show(old)} in {where}, {show(new)} now")
    raise ConfigurationError(
        f"{Path(where).parent} holds results of another configuration: adding runs would mix both in results.csv "
        "and summary.md.\n" + "\n".join(lines) + "\nPass another `--out` for a new study, or the recorded values "
        "to resume this one (a method of another configuration can also run beside the old under a new name)."
    )


def check_and_record(
    out: Path,
    rows: Sequence[Mapping[str, Any]],
    configuration: Mapping[str, Any],
    names: Mapping[str, str],
    methods: Sequence[str],
) -> None:
    """Refuse to add runs to ``rows`` (``<out>/results.csv``) of another configuration; record this one.

    With results, every shared setting must equal the recorded one and a method both configure must
    have its recorded configuration; new seeds, scenarios and methods are allowed (they only add runs),
    and a method no longer configured keeps its entry beside its rows. Without results, the record is
    simply (re)written: nothing recorded could be mixed.

    Args:
        out: the study's directory.
        rows: the rows of its ``results.csv``.
        configuration: ``{"settings": ..., "methods": ...}`` of the study about to run.
        names: as :func:`refuse_differences` takes them.
        methods: the names of the study's untuned methods.

    Raises:
        ValueError: naming each difference and what to do, before any training.
    """
    path = out / RECORD
    recorded: dict[str, Any] = {}
    if rows and path.is_file():
        recorded = json.loads(path.read_text(encoding="utf-8"))
        refuse_differences(recorded, configuration, str(path), names, only_recorded_keys=False)
    elif rows:
        legacy = legacy_record(rows, methods, is_failed)
        refuse_differences(legacy, configuration, str(out / "results.csv"), names, True)
        warnings.warn(
            f"{out / 'results.csv'} has no {RECORD} (results written before it was kept): its epochs and "
            "methods' hyperparameters match this study's, which is recorded as theirs.",
            stacklevel=4,
        )
    record = {
        "settings": configuration["settings"],
        "methods": {**recorded.get("methods", {}), **configuration["methods"]},
    }
    write_text_atomic(path, json.dumps(record, indent=2) + "\n")
