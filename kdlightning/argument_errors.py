"""Short parse errors for ``kdl``: where a bad key, class or value is, and what would have been accepted.

jsonargparse reports a misspelled key, an unknown ``class_path`` or a value of the wrong type as the whole
usage followed by a nested account of every union member it tried. :func:`explain` turns that message into
one that says where the problem is (the config file, or the command line), the key, a close match
("did you mean ``temperature``?") and the keys or classes that are accepted. A message it does not
recognise is kept as jsonargparse wrote it, less the dump of the given value.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["accepted_keys", "explain", "known_classes"]

_PARSER_KEY = re.compile(r'Parser key "([\w.]+)"')
_UNKNOWN_OPTION = re.compile(r"Option '(\w+)' is not accepted")
_NOT_ACCEPTED = re.compile(r"does not accept option '([\w.]+)'")
_CLASS_PATH = re.compile(r"Problem with given class_path '([\w.]+)'")
_NO_ATTRIBUTE = re.compile(r"module '([\w.]+)' has no attribute '(\w+)'")
_NOT_A_PATH = re.compile(r"Expected a (?:dot import path string: |path but )([\w.]+)")
_NO_MODULE = re.compile(r"No module named '([\w.]+)'")
_GOT_VALUE = re.compile(r"Expected an? (.+?)\. Got value: (.*)")
_EXPECTED = re.compile(r"Expected an? (<class '[\w.]+'>|typing\.\w+\[.*?\]|[\w.]+\[.*?\])")
_GIVEN = re.compile(r"Given value: (.*)")
_TYPE_NAME = re.compile(r"<class '(?:[\w.]+\.)?(\w+)'>")

_KINDS = {"model": "methods", "data": "datamodules"}


def explain(message: str, argv: Sequence[str], top_keys: Sequence[str] = ()) -> str | None:
    r"""A short account of jsonargparse's ``message`` for the command line ``argv``, or None if not recognised.

    Args:
        message: the parser's error message.
        argv: the command line (after ``kdl``): its ``-c`` files are searched for the bad key or value.
        top_keys: the parser's top-level keys (``model``, ``data``, ``trainer``, ...), offered for an unknown one.

    Examples:
        >>> message = 'Parser key "model":\n  Errors:\n    - Option \'temprature\' is not accepted'
        >>> argv = ["fit", "--model", "kdlightning.VanillaKD", "--model.init_args.temprature", "3"]
        >>> first, accepted = explain(message, argv).splitlines()
        >>> for part in first.split(": ", 1):
        ...     print(part)
        on the command line, `model.init_args.temprature`
        VanillaKD has no argument `temprature`; did you mean `temperature`?
        >>> accepted
        "  VanillaKD's arguments: student, teacher, num_classes, temperature, alpha, optimizer, lr_scheduler"
    """
    keys = _PARSER_KEY.findall(message)
    sources = _Sources(argv)
    unknown = _UNKNOWN_OPTION.search(message) or _NOT_ACCEPTED.search(message)
    if unknown:
        first = (keys[0] if keys else unknown.group(1)).split(".")[0]
        if top_keys and first not in top_keys:
            return _unknown_top_key(first, top_keys, sources)
        return _unknown_key(unknown.group(1), keys, message, sources)
    missing = _NO_ATTRIBUTE.search(message) or _NOT_A_PATH.search(message) or _NO_MODULE.search(message)
    name = (".".join(missing.groups()) if missing.re is _NO_ATTRIBUTE else missing.group(1)) if missing else ""
    if keys and ("." in name or name[:1].isupper()):  # a class path or a class's name, not a mistyped value
        return _unknown_class(name, keys, sources)
    innermost = message[message.rfind('Parser key "') :] if keys else message
    typed = next((m for m in _GOT_VALUE.finditer(innermost) if "path" not in m.group(1)), None)
    subtypes = next((line for line in innermost.splitlines() if line.strip().startswith("Subtypes:")), "")
    expected = _TYPE_NAME.findall(subtypes) or [m.group(1) for m in _EXPECTED.finditer(innermost)]
    given = [v.split(". Got value: ")[0] for v in _GIVEN.findall(message)]
    given = [v for v in given if not v.startswith(("NestedArg(", "Namespace(", "{"))]
    if keys and (typed or (expected and given)):
        value = typed.group(2) if typed else given[0]
        types = [typed.group(1)] if typed else expected
        return _wrong_type(keys, value, types, sources)
    return None


def short(message: str) -> str:
    """The parser's ``message`` without the dump of the given value (the whole config section)."""
    return "\n".join(line for line in message.splitlines() if not _GIVEN.search(line)).strip()


def accepted_keys(class_path: str) -> list[str]:
    """The argument names of the class (or function) at ``class_path``; ``[]`` if it cannot be imported."""
    target = _import(class_path)
    if target is None:
        return []
    try:
        parameters = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        return []
    kinds = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    return [p.name for p in parameters if p.kind not in kinds and p.name != "self"]


def known_classes(kind: str) -> list[str]:
    """The import paths of kdlightning's ``"methods"``, ``"datamodules"`` or ``"networks"``."""
    import lightning as L
    import torch.nn as nn

    import kdlightning
    import kdlightning.data as data
    import kdlightning.models as models
    from kdlightning.methods import DistillationModule

    if kind == "methods":
        names = [n for n in kdlightning.__all__ if _is_subclass(getattr(kdlightning, n, None), DistillationModule)]
        return [f"kdlightning.{n}" for n in names if n != "DistillationModule"]
    if kind == "datamodules":
        names = [n for n in data.__all__ if _is_subclass(getattr(data, n, None), L.LightningDataModule)]
        return [f"kdlightning.data.{n}" for n in names]
    names = [n for n in models.__all__ if _is_subclass(getattr(models, n, None), nn.Module) or n == "Pretrained"]
    return [f"kdlightning.models.{n}" for n in names]


def _unknown_key(bad: str, keys: list[str], message: str, sources: _Sources) -> str:
    path = [*(keys[0].split(".") if keys else []), bad] if "." not in bad else bad.split(".")
    found = sources.find(path)
    where = found.where if found else "in the configuration"
    owner = found.owner if found else None
    if owner is None and path[0] == "trainer":
        owner = "lightning.pytorch.Trainer"
    if owner is None:
        named = _CLASS_PATH.findall(message)
        owner = named[-1] if named else None
    key = found.key if found else ".".join(path)
    if owner is None:
        return f"{where}, `{key}`: unknown key `{path[-1]}`."
    name = owner.rsplit(".", 1)[-1]
    accepted = accepted_keys(owner)
    close = difflib.get_close_matches(path[-1], accepted, n=1)
    text = f"{where}, `{key}`: {name} has no argument `{path[-1]}`"
    text += f"; did you mean `{close[0]}`?" if close else "."
    if accepted:
        text += f"\n  {name}'s arguments: {', '.join(accepted)}"
    return text


def _unknown_top_key(bad: str, top_keys: Sequence[str], sources: _Sources) -> str:
    found = sources.find([bad])
    where = found.where if found else "in the configuration"
    close = difflib.get_close_matches(bad, list(top_keys), n=1)
    text = f"{where}, `{bad}`: unknown key"
    text += f"; did you mean `{close[0]}`?" if close else "."
    return text + f"\n  accepted keys: {', '.join(top_keys)}"


def _unknown_class(name: str, keys: list[str], sources: _Sources) -> str:
    path = [*keys[:1], *(k for k in keys[1:] if k != keys[0])]
    if len(path) == 1:
        kind = _KINDS.get(path[0])
    else:  # a network of the method, unless an optimizer or a scheduler
        kind = "networks" if path[0] == "model" and not any(w in path[-1] for w in ("optim", "sched")) else None
    found = sources.find_value(name)
    where = found.where if found else "in the configuration"
    key = found.key if found else ".".join(path)
    candidates = known_classes(kind) if kind else []
    module, _, short_name = name.rpartition(".")
    extra = [f"{module}.{n}" for n in _public_names(module)] if module else []
    by_name = {c.rsplit(".", 1)[-1]: c for c in [*extra, *candidates]}
    close = _closest(short_name, list(by_name))
    text = f"{where}, `{key}`: no class `{name}`"
    text += f"; did you mean {' or '.join(f'`{by_name[c]}`' for c in close)}?" if close else "."
    if candidates:
        text += f"\n  known {kind}: {', '.join(candidates)}"
    return text


def _wrong_type(keys: list[str], value: str, types: list[str], sources: _Sources) -> str:
    path = [part for key in keys for part in key.split(".")]
    path = [part for i, part in enumerate(path) if i == 0 or part != path[i - 1]]
    found = sources.find(path)
    where = found.where if found else "in the configuration"
    key = found.key if found else ".".join(path)
    names = [_TYPE_NAME.sub(r"\1", t).replace("NoneType", "None") for t in types]
    literal = re.fullmatch(r"typing\.Literal\[(.*)\]", names[0]) if len(names) == 1 else None
    expected = f"one of {literal.group(1)}" if literal else " or ".join(dict.fromkeys(names))
    owner = f" ({found.owner.rsplit('.', 1)[-1]}'s `{path[-1]}`)" if found and found.owner else ""
    return f"{where}, `{key}`{owner}: {value!r} is not a valid value; expected {expected}."


class _Found:
    def __init__(self, where: str, key: str, owner: str | None) -> None:
        self.where, self.key, self.owner = where, key, owner


class _Sources:
    """The command line's ``-c`` files and ``--key value`` overrides, searched for a key or a value."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = [str(arg) for arg in argv]
        self.files: list[tuple[str, Any]] = []
        self.overrides: list[tuple[str, str]] = []
        args = iter(self.argv)
        for arg in args:
            name, equals, value = arg.partition("=")
            if not name.startswith("-"):
                continue
            if not equals:
                value = next(args, "")
            if name in ("-c", "--config"):
                self.files.append((value, _load(value)))
            elif name.startswith("--"):
                self.overrides.append((name[2:], value))

    def find(self, path: list[str]) -> _Found | None:
        """The last place (override, else file) that sets a key whose path starts and ends as ``path`` does."""
        for key, _ in reversed(self.overrides):
            parts = _plain(key)
            if parts and parts[0] == path[0] and parts[-1] == path[-1] and _in_order(path, parts):
                return _Found("on the command line", key, self.owner(parts[:-1]))
        for file, tree in reversed(self.files):
            for parts, key, _, owner in _walk(tree):
                if parts and parts[0] == path[0] and parts[-1] == path[-1] and _in_order(path, parts):
                    return _Found(f"in {file}", key, owner or self.owner(parts[:-1]))
        return None

    def find_value(self, value: str) -> _Found | None:
        """The last place that gives ``value`` (a class name)."""
        for key, given in reversed(self.overrides):
            if given == value:
                return _Found("on the command line", key, None)
        for file, tree in reversed(self.files):
            for _, key, given, _ in _walk(tree):
                if given == value:
                    return _Found(f"in {file}", key, None)
        return None

    def owner(self, parts: list[str]) -> str | None:
        """The class path that the command line, else the last file, gives at ``parts`` (``model``, ...)."""
        if parts == ["trainer"]:
            return "lightning.pytorch.Trainer"
        for key, value in reversed(self.overrides):
            plain = _plain(key)
            if plain == parts or plain == [*parts, "class_path"]:
                return value
        for _, tree in reversed(self.files):
            node = tree
            for part in parts:
                node = node.get("init_args", node) if isinstance(node, dict) else None
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and isinstance(node.get("class_path"), str):
                return str(node["class_path"])
            if isinstance(node, str):
                return node
        return None


def _walk(tree: Any, parts: tuple[str, ...] = (), keys: tuple[str, ...] = (), owner: str | None = None) -> Iterator:
    """``(plain path, dotted key, value, owning class_path)`` for every key in a YAML tree."""
    if isinstance(tree, list):  # e.g. trainer.callbacks: each item is found under the list's key
        for index, item in enumerate(tree):
            yield from _walk(item, parts, (*keys[:-1], f"{keys[-1] if keys else ''}[{index}]"), None)
        return
    if not isinstance(tree, dict):
        return
    owner = tree.get("class_path", owner) if isinstance(tree.get("class_path"), str) else owner
    for key, value in tree.items():
        dotted = (*keys, str(key))
        plain = parts if key == "init_args" else (*parts, str(key))
        if key != "init_args":
            yield list(plain), ".".join(dotted), value, owner if key != "class_path" else None
        child_owner = owner if key == "init_args" else None
        yield from _walk(value, plain, dotted, child_owner)


def _plain(key: str) -> list[str]:
    return [part for part in key.split(".") if part != "init_args"]


def _in_order(short: list[str], long: list[str]) -> bool:
    """Whether ``short``'s parts appear in ``long`` in order (a message may leave out the middle of a path)."""
    rest = iter(long)
    return all(part in rest for part in short)


def _load(path: str) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return None


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    if not module:
        module, name = "kdlightning", class_path
    try:
        return getattr(importlib.import_module(module), name, None)
    except ImportError:
        return None


def _public_names(module: str) -> list[str]:
    try:
        imported = importlib.import_module(module)
    except ImportError:
        return []
    names = getattr(imported, "__all__", None) or dir(imported)
    return [n for n in names if not n.startswith("_") and inspect.isclass(getattr(imported, n, None))]


def _closest(word: str, candidates: list[str]) -> list[str]:
    """The one or two candidates closest to ``word`` (two when they are about as close), as difflib ranks them."""
    close = difflib.get_close_matches(word, candidates, n=2)
    ratio = [difflib.SequenceMatcher(None, word, c).ratio() for c in close]
    return [c for c, r in zip(close, ratio, strict=True) if r >= ratio[0] - 0.1]


def _is_subclass(value: Any, base: type) -> bool:
    return inspect.isclass(value) and issubclass(value, base)
