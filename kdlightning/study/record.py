"""``study.json``: the configuration a study's results were made with, and the check that a resume matches it.

A study records the settings every run shares and each method's own configuration beside
``results.csv``. A resume with another value of any of them is refused before any training; new
seeds, scenarios and methods only add runs. Apart from :func:`check_and_record`, which reads and
writes ``study.json``, these are pure functions of JSON-able values.
"""

from __future__ import annotations

import functools
import json
import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kdlightning.atomic import write_text_atomic
from kdlightning.reporting import is_failed

__all__ = ["RECORD", "check_and_record", "describe", "differences", "legacy_record", "refuse_differences"]

RECORD = "study.json"
"""The file beside ``results.csv`` that records the configuration its results were made with."""

_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
_ABSENT = object()
"""A key one of two compared configurations does not have."""


def describe(value: Any) -> Any:
    """``value`` as JSON that names it the same way in every process (for ``study.json``).

    Classes and functions become their import path; a ``functools.partial`` (a factory from Python, or from a
    YAML ``class_path`` with ``init_args``) its target's path and arguments; anything else its ``repr``
    without memory addresses.

    Examples:
        >>> from kdlightning import VanillaKD
        >>> describe(functools.partial(VanillaKD, temperature=2.0))
        {'class_path': 'kdlightning.methods.kd.VanillaKD', 'init_args': {'temperature': 2.0}}
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(key): describe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [describe(item) for item in value]
    if isinstance(value, functools.partial):
        parts = [value.func, *value.args]
        if not value.args and not value.keywords:  # partial(VanillaKD) is VanillaKD
            return describe(value.func)
        # jsonargparse builds partial(<wrapper>, <instantiator>, cls, **init_args): the class is the target
        target = next((i for i, part in enumerate(parts) if isinstance(part, type)), 0)
        described: dict[str, Any] = {"class_path": describe(parts[target])}
        if parts[target + 1 :]:
            described["args"] = describe(parts[target + 1 :])
        if value.keywords:
            described["init_args"] = describe(value.keywords)
        return described
    if isinstance(value, type) or (callable(value) and hasattr(value, "__qualname__")):
        return f"{value.__module__}.{value.__qualname__}"
    return _ADDRESS.sub("", repr(value))


def differences(old: Any, new: Any, only_old_keys: bool, path: str = "") -> list[tuple[str, Any, Any]]:
    """The leaves where ``old`` and ``new`` differ, as ``(dotted path, old value, new value)``.

    Mappings are compared key by key (only ``old``'s keys with ``only_old_keys``); a missing key is ``_ABSENT``.
    """
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        keys = list(old) if only_old_keys else list(dict.fromkeys([*old, *new]))
        return [
            difference
            for key in keys
            for difference in differences(
                old.get(key, _ABSENT), new.get(key, _ABSENT), only_old_keys, f"{path}.{key}" if path else str(key)
            )
        ]
    return [] if old == new else [(path, old, new)]


def _show(value: Any, width: int = 80) -> str:
    """``value`` in an error message: JSON, shortened to ``width`` characters."""
    text = "absent" if value is _ABSENT else json.dumps(value)
    return text if len(text) <= width else text[: width - 3] + "..."


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
        lines.append(f"  `{argument}`: {detail + ' ' if detail else ''}{_show(old)} in {where}, {_show(new)} now")
    raise ValueError(
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
