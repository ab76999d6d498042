"""The server strategy of a federation: any Flower strategy by ``class_path``, and why a client failed.

Functions of the ``strategy`` setting (they import a strategy's class only when asked): :func:`strategy_spec`
checks and normalises it, :func:`strategy_class` imports and checks the class, :func:`server_strategy` builds it
with the federation's client sampling, and :func:`failure_reason` reads a failed client's error.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import math
import numbers
import re
from collections.abc import Mapping
from typing import Any

from kdlightning.errors import ConfigurationError

__all__ = [
    "ALLOWED",
    "SAMPLING",
    "STRATEGIES",
    "failure_reason",
    "server_strategy",
    "strategy_class",
    "strategy_name",
    "strategy_spec",
]

STRATEGIES = "flwr.serverapp.strategy"
"""Where a ``strategy`` class name without a module is found: Flower's server strategies."""

ALLOWED = (
    "`strategy` takes a concrete subclass of `flwr.serverapp.strategy.Strategy`: a class name of "
    "`flwr.serverapp.strategy` (FedAvg, FedProx, FedAdam, ...) or a full path (`my_package.MyStrategy`)."
)
"""What ``strategy.class_path`` allows, said in its errors."""

SAMPLING = ("fraction_train", "fraction_evaluate", "min_train_nodes", "min_evaluate_nodes", "min_available_nodes")
"""Strategy arguments the federation sets itself (from ``fraction_train`` and ``num_clients``)."""


def strategy_spec(strategy: Mapping[str, Any] | None) -> dict[str, Any]:
    """``strategy`` as ``{"class_path": "<module>.<Class>", "init_args": {...}}`` (None: Flower's ``FedAvg``).

    Keys beside ``class_path`` and ``init_args`` are init_args too: ``--strategy.proximal_mu=0.1`` on the
    command line gives ``{class_path: ..., proximal_mu: 0.1}``.
    """
    if strategy is None:
        return {"class_path": f"{STRATEGIES}.FedAvg", "init_args": {}}
    class_path = strategy.get("class_path") if isinstance(strategy, Mapping) else None
    init_args = strategy.get("init_args") or {} if isinstance(strategy, Mapping) else None
    if not isinstance(class_path, str) or not class_path or not isinstance(init_args, Mapping):
        raise ConfigurationError(
            f"`strategy` must be {{class_path: <a Flower strategy>, init_args: {{...}}}} or None, got {strategy!r}."
        )
    loose = {key: value for key, value in strategy.items() if key not in ("class_path", "init_args")}
    if set(loose) & set(init_args):
        raise ConfigurationError(
            f"`strategy` gives {sorted(set(loose) & set(init_args))} twice, in and beside `init_args`."
        )
    for given, where in ((init_args, "strategy.init_args"), (loose, "strategy")):
        if "proximal_mu" in given:
            _check_proximal_mu(given["proximal_mu"], f"{where}.proximal_mu")
    init_args = {**init_args, **loose}
    owned = sorted(set(init_args) & set(SAMPLING))
    if owned:
        raise ConfigurationError(
            f"`strategy.init_args` sets {owned}: the federation samples clients itself (set `fraction_train`)."
        )
    path = class_path if "." in class_path else f"{STRATEGIES}.{class_path}"
    if not all(part.isidentifier() for part in path.split(".")):
        raise ConfigurationError(
            f"`strategy.class_path` must be a dotted path to a class, got {class_path!r}. {ALLOWED}"
        )
    return {"class_path": path, "init_args": dict(init_args)}


def strategy_name(strategy: Mapping[str, Any] | None) -> str:
    """The class name of ``strategy`` (``FedAvg`` for None), as a summary's heading names it.

    Examples:
        >>> strategy_name(None), strategy_name({"class_path": "kdlightning.federated.feddf.FedDF"})
        ('FedAvg', 'FedDF')
    """
    return strategy_spec(strategy)["class_path"].rpartition(".")[2]


def _check_proximal_mu(value: Any, where: str) -> None:
    """Refuse a FedProx proximal weight that is not a finite number ``>= 0``, naming it as ``where``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value < 0:
        raise ConfigurationError(
            f"`{where}` must be a finite number >= 0 (the weight of FedProx's proximal term; 0 is FedAvg), "
            f"got {value!r}."
        )


def strategy_class(strategy: Mapping[str, Any] | None) -> type:
    """The class of ``strategy`` (as given, or :func:`strategy_spec`'s), checked to take its ``init_args``.

    Raises:
        ConfigurationError: naming ``strategy`` and what it allows, if the class cannot be imported, is not a
            concrete ``flwr.serverapp.strategy.Strategy`` subclass, or does not take the ``init_args``.
    """
    spec = strategy_spec(strategy)
    path, init_args = spec["class_path"], spec["init_args"]
    module, _, name = path.rpartition(".")
    cls, problem = None, ""
    try:
        cls = getattr(importlib.import_module(module), name, None)
    except ImportError as error:
        problem = f"{type(error).__name__}: {error}"
    if cls is None:  # raised here, outside the handler, so the error a user sees is this one
        why = problem or f"{module} has no {name!r}"
        raise ConfigurationError(f"`strategy.class_path`: cannot import {path!r} ({why}).{_suggestion(path)} {ALLOWED}")
    from flwr.serverapp.strategy import Strategy

    if not isinstance(cls, type) or not issubclass(cls, Strategy):
        legacy = (
            f" `flwr.server.strategy` holds Flower's legacy strategies: use `{STRATEGIES}.{name}`."
            if path.startswith("flwr.server.strategy.")
            else ""
        )
        raise ConfigurationError(f"`strategy.class_path` {path!r} is not a Flower strategy class.{legacy} {ALLOWED}")
    if inspect.isabstract(cls):
        raise ConfigurationError(f"`strategy.class_path` {path!r} is an abstract Flower strategy. {ALLOWED}")
    try:
        inspect.signature(cls).bind(**init_args)
    except TypeError as error:
        problem = str(error)
    if problem:
        raise ConfigurationError(f"`strategy`: {name} does not take init_args {init_args} ({problem}).")
    return cls


def _suggestion(path: str) -> str:
    """`` Did you mean `FedProx`?`` for a misspelt strategy of :data:`STRATEGIES`, else ``""``."""
    module, _, name = path.rpartition(".")
    if module != STRATEGIES:
        return ""
    strategies = importlib.import_module(STRATEGIES)
    close = difflib.get_close_matches(name, getattr(strategies, "__all__", []), n=1)
    return f" Did you mean `{close[0]}`?" if close else ""


def server_strategy(
    strategy: Mapping[str, Any] | None,
    fraction_train: float,
    num_clients: int,
    services: Mapping[str, Any] | None = None,
) -> Any:
    """A new ``strategy``: its ``init_args``, ``fraction_train`` of the clients sampled, no client evaluation.

    The server tests the global model on the global test set instead of asking the clients.

    Args:
        strategy: the ``strategy`` setting, as given or as :func:`strategy_spec` returns it (None: ``FedAvg``).
        fraction_train: share of the clients sampled each round.
        num_clients: number of clients.
        services: what the federation offers a strategy, by argument name (``distiller``: its server-side
            distillation, which :class:`~kdlightning.federated.feddf.FedDF` takes); each is passed to a strategy
            whose constructor names that argument, and to no other.
    """
    spec = strategy_spec(strategy)
    cls = strategy_class(spec)
    sampled = max(2, round(fraction_train * num_clients))
    sampling = {
        "fraction_train": fraction_train,
        "fraction_evaluate": 0.0,
        "min_train_nodes": min(sampled, num_clients),
        "min_evaluate_nodes": 0,
        "min_available_nodes": num_clients,
    }
    parameters = inspect.signature(cls).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        sampling = {key: value for key, value in sampling.items() if key in parameters}
    offered = {key: value for key, value in (services or {}).items() if key in parameters}
    if set(offered) & set(spec["init_args"]):
        given = sorted(set(offered) & set(spec["init_args"]))
        raise ConfigurationError(f"`strategy.init_args` sets {given}: the federation gives it.")
    flower = logging.getLogger("flwr")
    level = flower.level
    flower.setLevel(max(level, logging.ERROR))  # FedAvg's notice that the clients do not evaluate is intended
    problem = ""
    try:
        return cls(**sampling, **offered, **spec["init_args"])
    except (TypeError, ValueError) as error:
        problem = f"{type(error).__name__}: {error}"
    finally:
        flower.setLevel(level)
    raise ConfigurationError(f"`strategy`: {cls.__name__}(**{spec['init_args']}) refused its init_args ({problem}).")


def failure_reason(reason: str) -> str:
    r"""Why a client failed, from the error text Flower reports: the line that names the exception.

    That is the text's last non-empty line, terminal colours removed; Flower's ``"<class 'ValueError'>:<'message'>"``
    form becomes ``"ValueError: message"``.

    Examples:
        >>> failure_reason("<class 'ValueError'>:<'Party 1 has 0 samples'>")
        'ValueError: Party 1 has 0 samples'
        >>> failure_reason("Traceback (most recent call last):\n  ...\nValueError: Party 1 has 0 samples\n")
        'ValueError: Party 1 has 0 samples'
    """
    text = re.sub(r"\x1b\[[0-9;]*m", "", reason)
    wrapped = re.fullmatch(r"<class '([^']*)'>:<'(.*)'>", text.strip(), flags=re.DOTALL)
    if wrapped:
        text = wrapped.group(2)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if wrapped and len(lines) == 1:
        return f"{wrapped.group(1).rsplit('.', 1)[-1]}: {lines[0]}"
    return lines[-1] if lines else ""
