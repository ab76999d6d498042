"""Members of one batched fit in groups: one class and fixed settings, one vmapped call of a prototype's objective.

Pure bookkeeping of :class:`~kdlightning.methods.BatchedMembers`: the order that keeps each group contiguous,
each group's hyperparameters that vary between its members (as tensors over them), and where its members lie
in the stack of each network they train.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from kdlightning.errors import ConfigurationError
from kdlightning.methods.base import DistillationModule

__all__ = ["MemberGroup", "grouped", "member_groups"]


@dataclass
class MemberGroup:
    """Members of one class with the same fixed settings: one vmapped call of the prototype's ``training_losses``."""

    prototype: DistillationModule
    start: int
    stop: int
    """The group's members are ``[start, stop)`` of the stacked dimension."""
    slices: dict[str, slice]
    """Where the group's members lie in the stack of each network they train (``student``, DML's ``peer``)."""
    varying: tuple[str, ...]
    """Numeric hyperparameters that differ between the group's members."""
    values: tuple[Tensor, ...]
    """Their values over the group's members, in float64 (a float32 copy of 0.1 is not 0.1)."""
    placed: dict[torch.device, tuple[Tensor, ...]] = field(default_factory=dict)

    def values_on(self, device: torch.device) -> tuple[Tensor, ...]:
        """:attr:`values` on ``device``, copied there once."""
        if device not in self.placed:
            self.placed[device] = tuple(value.to(device) for value in self.values)
        return self.placed[device]


def grouped(members: Mapping[str, DistillationModule]) -> dict[str, DistillationModule]:
    """``members`` ordered so that each group (class and fixed settings) is contiguous, first come first."""
    groups: dict[Any, dict[str, DistillationModule]] = {}
    for name, method in members.items():
        groups.setdefault(_group_key(method), {})[name] = method
    return {name: method for group in groups.values() for name, method in group.items()}


def member_groups(
    members: Mapping[str, DistillationModule], stacks: Mapping[str, tuple[str, ...]]
) -> list[MemberGroup]:
    """The groups of ``members`` (already :func:`grouped`); their varying hyperparameters become tensors over members.

    ``stacks`` lists the members in each trained network's stack, in its order.
    """
    names, methods = list(members), list(members.values())
    result, start = [], 0
    while start < len(methods):
        key = _group_key(methods[start])
        stop = start
        while stop < len(methods) and _group_key(methods[stop]) == key:
            stop += 1
        group = methods[start:stop]
        numeric = [k for k, v in group[0].hparams.items() if _is_number(v)]
        varying = tuple(k for k in numeric if len({float(m.hparams[k]) for m in group}) > 1)
        for key_name in varying:
            for name, method in zip(names[start:stop], group, strict=True):
                value = getattr(method, key_name, None)
                if not isinstance(value, (int, float)) or float(value) != float(method.hparams[key_name]):
                    raise ConfigurationError(
                        f"`members.{name}`: `{key_name}` differs between {type(method).__name__} members, but "
                        f"the method does not keep it as the attribute `{key_name}` its training_losses reads."
                    )
        values = tuple(torch.tensor([float(m.hparams[k]) for m in group], dtype=torch.float64) for k in varying)
        result.append(MemberGroup(group[0], start, stop, _slices(names[start:stop], stacks), varying, values))
        start = stop
    return result


def _slices(names: list[str], stacks: Mapping[str, tuple[str, ...]]) -> dict[str, slice]:
    """Where the members ``names`` (one group) lie in each network's stack; they train the same networks."""
    slices = {}
    for network, stacked in stacks.items():
        held = [stacked.index(name) for name in names if name in stacked]
        if not held:
            continue
        if len(held) != len(names):
            raise ConfigurationError(
                f"`members` {names} are of one class and settings but not all train `{network}`: a group of "
                "members trains the same networks."
            )
        slices[network] = slice(held[0], held[-1] + 1)
    return slices


def _group_key(method: DistillationModule) -> tuple[Any, ...]:
    """Members of one group: the same class and the same non-numeric settings (``selection``)."""
    return type(method), tuple(sorted((k, repr(v)) for k, v in method.hparams.items() if not _is_number(v)))


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
