"""Stacking K networks of one architecture into one, and what members of one fit must share and may use.

Pure helpers of :class:`~kdlightning.methods.BatchedMembers`: the stacked network (each parameter and
buffer of shape ``(K, ...)``), one member's standalone copy, the frozen references the members share,
and whether two optimizer (or scheduler) factories build the same thing.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from kdlightning.errors import ConfigurationError
from kdlightning.fingerprint import module_fingerprint

__all__ = [
    "ELEMENTWISE_OPTIMIZERS",
    "builds_the_same",
    "check_uncoupled",
    "optimizer_over_members",
    "shared_factory",
    "shared_references",
    "stack_networks",
    "unstacked",
]

ELEMENTWISE_OPTIMIZERS: tuple[type[torch.optim.Optimizer], ...] = (
    torch.optim.SGD,
    torch.optim.Adam,
    torch.optim.AdamW,
    torch.optim.Adamax,
    torch.optim.NAdam,
    torch.optim.RAdam,
    torch.optim.RMSprop,
    torch.optim.Adagrad,
    torch.optim.Adadelta,
    torch.optim.Rprop,
)
"""Optimizers whose update of each parameter element reads only that element's gradient and state: over
stacked parameters they are K independent optimizers."""

_FUSABLE = (torch.optim.Adam, torch.optim.AdamW, torch.optim.SGD, torch.optim.Adagrad)
"""Optimizers with a fused implementation (``fused=True``) on CPU and CUDA."""


def shared_factory(members: Mapping[str, Any], attribute: str, given: Any) -> Any:
    """``given``, or the members' common ``attribute`` (their optimizer or scheduler); refuse if they differ."""
    if given is not None:
        return given
    names = list(members)
    first = getattr(members[names[0]], attribute)
    for name, method in members.items():
        value = getattr(method, attribute)
        if not builds_the_same(value, first, attribute):
            raise ConfigurationError(
                f"`members` have different `{attribute}`s ({names[0]!r}: {first!r}, {name!r}: {value!r}); "
                f"members of one fit share one: pass `{attribute}=` to BatchedMembers, or fit them apart."
            )
    return first


def optimizer_over_members(factory: Any, parameters: list[nn.Parameter]) -> torch.optim.Optimizer:
    """``factory(parameters)``, fused where it may be: the optimizer of members' stacked parameters.

    An Adam, AdamW, SGD or Adagrad left to choose its implementation (``foreach`` and ``fused`` unset in every
    parameter group) runs fused: the same update in one pass over each stacked tensor, which K members make
    large (on 2 CPU cores, Adam over 25 stacked MLPs of 100k parameters: 1.4 ms a step fused, 14 ms
    element-wise). The factory's parameter groups and each group's settings are kept.
    """
    optimizer = factory(parameters)
    if not _fusable(optimizer):
        return optimizer
    accepted = inspect.signature(type(optimizer)).parameters  # AdamW fixes Adam's `decoupled_weight_decay`
    settings = {name: value for name, value in optimizer.defaults.items() if name in accepted}
    groups = [{**group, "fused": True} for group in optimizer.param_groups]
    return type(optimizer)(groups, **{**settings, "fused": True})


def _fusable(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` has a fused implementation and every group leaves the implementation to choose."""
    if not isinstance(optimizer, _FUSABLE) or "fused" not in optimizer.defaults:
        return False
    return all(
        group.get("fused") is None
        and group.get("foreach") is None
        and not group.get("differentiable")
        and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in group["params"])
        for group in optimizer.param_groups
    )


def check_uncoupled(optimizer: torch.optim.Optimizer, scheduler: Any = None) -> None:
    """Raise ``ValueError`` if ``optimizer`` or ``scheduler`` over stacked parameters would couple the members.

    The optimizer must be one of :data:`ELEMENTWISE_OPTIMIZERS`; a plateau scheduler would step every member
    on one shared metric.
    """
    if not isinstance(optimizer, ELEMENTWISE_OPTIMIZERS):
        allowed = ", ".join(cls.__name__ for cls in ELEMENTWISE_OPTIMIZERS)
        raise ConfigurationError(
            f"BatchedMembers' `optimizer` {type(optimizer).__name__} is not known to update each "
            f"parameter element on its own, so members could be coupled; use one of {allowed}."
        )
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise ConfigurationError(
            "BatchedMembers' `lr_scheduler` is ReduceLROnPlateau, which would step every member on one shared "
            "metric; use a schedule that does not read a metric (StepLR, CosineAnnealingLR, ...)."
        )


def builds_the_same(a: Any, b: Any, attribute: str) -> bool:
    """Whether optimizer (``attribute="optimizer"``) or scheduler factories ``a`` and ``b`` build the same thing.

    ``torch.optim.Adam`` and a configuration's ``Adam`` with the default arguments are the same optimizer:
    they are compared by what they build on a dummy parameter (class and settings).
    """
    if a is b:
        return True
    built_a, built_b = _what_it_builds(a, attribute), _what_it_builds(b, attribute)
    try:
        return bool(built_a == built_b)
    except (RuntimeError, ValueError, TypeError):  # settings holding tensors
        return repr(built_a) == repr(built_b)


def _what_it_builds(factory: Any, attribute: str) -> Any:
    if factory is None:
        return None
    parameter = nn.Parameter(torch.zeros(1))
    try:
        if attribute == "optimizer":
            built = factory([parameter])
            return type(built), sorted(built.defaults.items())
        built = factory(torch.optim.SGD([parameter], lr=1.0))
        return type(built), sorted(built.state_dict().items())
    except Exception:  # a factory that cannot be built here is compared as it is
        return repr(factory)


def _slots(network: nn.Module) -> list[tuple[str, nn.Module, str, Tensor]]:
    """``(name, owner, attribute, tensor)`` of every parameter and buffer of ``network``, tied ones under each name."""
    slots = []
    for kind in ("parameters", "buffers"):
        for full, tensor in getattr(network, f"named_{kind}")(remove_duplicate=False):
            owner_name, _, attr = full.rpartition(".")
            slots.append((full, network.get_submodule(owner_name), attr, tensor))
    return slots


def stack_networks(networks: list[nn.Module], names: list[str], network: str = "student") -> nn.Module:
    """A copy of the first network holding, in place of each parameter and buffer, the networks' values stacked.

    ``names`` are the members the networks belong to and ``network`` which of their networks these are
    (``student``, DML's ``peer``), named in the error.

    Raises:
        ValueError: a network differs from the first in parameter and buffer names, shapes or dtypes.
    """
    expected = _structure(networks[0])
    for name, module in zip(names, networks, strict=True):
        if _structure(module) != expected:
            raise ConfigurationError(
                f"`members.{name}`'s {network} differs from `members.{names[0]}`'s in architecture (parameter and "
                "buffer names, shapes, dtypes): batched members are copies of one network."
            )
    stacked = copy.deepcopy(networks[0])
    sources = [dict(_tensors(network)) for network in networks]
    done: dict[int, Tensor] = {}
    for full, owner, attr, tensor in _slots(stacked):
        if id(tensor) not in done:  # tied tensors stay tied
            values = torch.stack([source[full].detach() for source in sources])
            done[id(tensor)] = (
                nn.Parameter(values, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else values
            )
        setattr(owner, attr, done[id(tensor)])
    return stacked


def unstacked(stacked: nn.Module, k: int) -> nn.Module:
    """A standalone copy of member ``k`` of a :func:`stack_networks` network (its own parameters and buffers)."""
    network = copy.deepcopy(stacked)
    done: dict[int, Tensor] = {}
    for _, owner, attr, tensor in _slots(network):
        if id(tensor) not in done:  # tied tensors stay tied
            value = tensor.detach()[k].clone()
            done[id(tensor)] = nn.Parameter(value, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else value
        setattr(owner, attr, done[id(tensor)])
    return network


def _tensors(network: nn.Module) -> list[tuple[str, Tensor]]:
    return [*network.named_parameters(remove_duplicate=False), *network.named_buffers(remove_duplicate=False)]


def _structure(network: nn.Module) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
    return [(name, tuple(t.shape), t.dtype) for name, t in _tensors(network)]


def shared_references(members: Mapping[str, Any]) -> dict[str, nn.Module]:
    """The members' frozen references by name, each the same network for every member that has it."""
    references: dict[str, tuple[str, nn.Module]] = {}
    fingerprints: dict[int, str] = {}

    def fingerprint(module: nn.Module) -> str:
        if id(module) not in fingerprints:
            fingerprints[id(module)] = module_fingerprint(module)
        return fingerprints[id(module)]

    for name, method in members.items():
        for reference in method.frozen_names:
            module = getattr(method, reference)
            if reference not in references:
                references[reference] = (name, module)
                continue
            holder, held = references[reference]
            if module is not held and fingerprint(module) != fingerprint(held):
                raise ConfigurationError(
                    f"`members.{name}`'s `{reference}` differs from `members.{holder}`'s: members share their frozen "
                    "references (one forward serves all), so give them the same network."
                )
    return {reference: module for reference, (_, module) in references.items()}
