"""Fingerprints of networks and of their inputs, and the probe for random transforms: the cache's helpers.

The teacher-output cache (:mod:`kdlightning.cache`) keys stored logits by these, so two networks
share a key only when they compute the same function: same classes, same weights and buffers, same
forward settings (``self.scale = 2.0``, ``self.scale = torch.tensor(2.0)``, a layer's ``eps``) and,
for a Hugging Face model, the same ``config``; and two transfer sets only when the networks see the
same inputs (:func:`data_fingerprint`, :func:`transfer_fingerprint`). A transform or collate function
is keyed by its state, not by its ``repr`` (:func:`transform_fingerprint`): one whose state cannot be
read is refused, and so is a random one (:func:`check_deterministic_transform`). Pure torch and numpy:
no Lightning.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from kdlightning.errors import ConfigurationError
from kdlightning.statekey import Keyer, Unkeyable, qualified, short_repr, tag

__all__ = [
    "check_deterministic_transfer",
    "check_deterministic_transform",
    "data_fingerprint",
    "module_fingerprint",
    "module_settings",
    "transfer_fingerprint",
    "transform_fingerprint",
]

_PLAIN = (bool, int, float, str, type(None))


def _is_plain(value: Any) -> bool:
    """A number, string, bool or None, or a tuple or list of plain values."""
    if isinstance(value, (tuple, list)):
        return all(_is_plain(item) for item in value)
    return isinstance(value, _PLAIN)


def module_settings(module: nn.Module) -> dict[str, Any]:
    """The plain settings a module's ``forward`` may read: public, non-``training`` attributes of plain type.

    Private (``_``-prefixed) attributes and submodules are left out, and so are tensors and other
    values of non-plain type: weights and buffers are hashed from the state dict, submodules on their
    own, and :func:`module_fingerprint` keys the other public attributes by their state.
    """
    return {
        name: value
        for name, value in sorted(vars(module).items())
        if name != "training" and not name.startswith("_") and _is_plain(value)
    }


def _other_settings(module: nn.Module) -> list[tuple[str, Any]]:
    """Public, non-``training`` attributes of non-plain type, which :func:`module_settings` leaves out.

    Tensors that are neither parameter nor buffer, containers, callables, objects; a Hugging Face
    ``config`` is left to :func:`_config_text`.
    """
    return [
        (name, value)
        for name, value in sorted(vars(module).items())
        if name != "training"
        and not name.startswith("_")
        and not _is_plain(value)
        and not (name == "config" and (hasattr(value, "to_json_string") or hasattr(value, "to_dict")))
    ]


def _config_text(config: Any) -> str | None:
    """A Hugging Face-style ``config`` as text (``to_json_string()`` or ``to_dict()``), or None."""
    if hasattr(config, "to_json_string"):
        return config.to_json_string()
    if hasattr(config, "to_dict"):
        return json.dumps(config.to_dict(), sort_keys=True, default=str)
    return None


def _update_with_state(digest: Any, module: nn.Module) -> None:
    """Hash every parameter and buffer: name, dtype, shape and bytes."""
    for key, value in module.state_dict().items():
        digest.update(key.encode())
        tensor = value.detach().cpu().contiguous().reshape(-1)
        digest.update(str(tensor.dtype).encode() + str(tuple(value.shape)).encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")


def module_fingerprint(module: nn.Module, strict: bool = False) -> str:
    """SHA-256 of what determines a module's outputs; equal for modules that compute the same function.

    It covers, for every submodule, its name, class and :func:`module_settings`, a Hugging Face
    ``config`` (hashed once per config object), the state dict (parameters and buffers with their
    dtypes) and its other public attributes, keyed by their state: a tensor that is neither parameter
    nor buffer (``self.scale = torch.tensor(2.0)``) by dtype, shape and bytes, an array likewise,
    tuples, lists, dicts and sets by their items, a function by its name, code, defaults and closure,
    an object with a ``fingerprint()`` method by what it returns. Private (``_``-prefixed) attributes
    and ``training`` are not covered.

    Args:
        module: the network.
        strict: how to key a public attribute holding an object of another kind. False (checkpoints,
            batched members): by its class only, so the fingerprint never fails. True (the teacher-output
            cache): by its class and ``vars()``, and a ``ValueError`` naming the attribute if its state
            cannot be read (a lock, a file, a generator).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> module_fingerprint(nn.LayerNorm(4)) == module_fingerprint(nn.LayerNorm(4, eps=1e-3))
        False
        >>> first, second = nn.Identity(), nn.Identity()
        >>> first.scale, second.scale = torch.tensor(2.0), torch.tensor(3.0)
        >>> module_fingerprint(first) == module_fingerprint(second)
        False
    """
    digest = hashlib.sha256()
    configs: set[int] = set()
    keyer = Keyer(strict)
    for name, submodule in module.named_modules():
        kind = f"{type(submodule).__module__}.{type(submodule).__qualname__}"
        settings = json.dumps(module_settings(submodule), sort_keys=True)
        digest.update(f"{name}\0{kind}\0{settings}\0".encode())
        config = getattr(submodule, "config", None)
        if config is not None and id(config) not in configs:
            configs.add(id(config))
            digest.update((_config_text(config) or "").encode())
        for attribute, value in _other_settings(submodule):
            path = f"{name}.{attribute}" if name else attribute
            try:
                key = keyer.key(value, path)
            except Unkeyable as error:
                if strict:
                    raise ConfigurationError(
                        f"The attribute '{path}' of {type(module).__name__} cannot be keyed: {error}. Make it private "
                        f"('_{attribute}') if it does not change the outputs, or give its class a `fingerprint()` "
                        "method that returns a string of what determines them; or train without "
                        "CacheReferenceOutputs."
                    ) from None
                key = tag("object", qualified(type(value)).encode())
            digest.update(f"{attribute}\0".encode() + key)
    _update_with_state(digest, module)
    return digest.hexdigest()


def transform_fingerprint(transform: Any, role: str = "train_transform") -> str:
    """SHA-256 of what determines a transform's (or a collate function's) outputs: its state, not its ``repr``.

    A string is keyed by value, an object with a ``fingerprint()`` method by what it returns, a
    ``functools.partial`` by its function, arguments and keywords, a function or lambda by its name, its
    code, its defaults, the contents of its closure and the globals it reads, and any other object (a
    ``Compose`` of transforms, a ``Lambda`` wrapping a function) by its class and ``vars()``, recursively:
    tensors and arrays by dtype, shape and bytes, numbers and strings by value.

    Args:
        transform: the transform (or collate function).
        role: what it is to the datamodule, for the error message.

    Raises:
        ValueError: a part of it holds state that cannot be read (a lock, a file, a generator); the
            message names the part and how to make it keyable.

    Examples:
        >>> import functools
        >>> def scale(x, factor):
        ...     return x * factor
        >>> transform_fingerprint(functools.partial(scale, factor=2.0)) == transform_fingerprint(
        ...     functools.partial(scale, factor=3.0)
        ... )
        False
    """
    try:
        return Keyer(strict=True).key(transform, role).hex()
    except Unkeyable as error:
        raise ConfigurationError(
            f"The transfer set's {role} {short_repr(transform)} cannot be keyed for the teacher-output cache: "
            f"{error}. Make it an object whose class has a `fingerprint()` method returning a string of what "
            "determines its outputs, or train without CacheReferenceOutputs."
        ) from None


def data_fingerprint(inputs: np.ndarray, transform: Any = None, collate: Any = None) -> str:
    """SHA-256 of what determines a network's inputs on a data set: the inputs, the transform, the collate.

    Args:
        inputs: the training pool's inputs ``(N, ...)``: numbers (hashed by dtype, shape and bytes) or
            strings (hashed one by one).
        transform: the transform applied to each input, keyed by its state
            (:func:`transform_fingerprint`).
        collate: the collate function; one with a ``fingerprint()`` method (a
            :class:`~kdlightning.data.TokenizeCollate`: the tokenizers and ``max_length``) adds what it
            returns, any other is keyed like a transform.

    Raises:
        ValueError: the transform or the collate function cannot be keyed (see :func:`transform_fingerprint`).

    Examples:
        >>> x = np.zeros((4, 2), dtype=np.float32)
        >>> data_fingerprint(x) == data_fingerprint(x.copy()) != data_fingerprint(x, transform="flip")
        True
    """
    digest = hashlib.sha256(b"None" if transform is None else transform_fingerprint(transform).encode())
    if callable(getattr(collate, "fingerprint", None)):
        digest.update(collate.fingerprint().encode())
    elif collate is not None:
        digest.update(transform_fingerprint(collate, "collate_fn").encode())
    if inputs.dtype.kind in "OUS":
        for text in inputs:
            digest.update(str(text).encode() + b"\0")
    else:
        digest.update(str(inputs.dtype).encode() + str(inputs.shape).encode())
        digest.update(np.ascontiguousarray(inputs).view(np.uint8).data)
    return digest.hexdigest()


def transfer_fingerprint(datamodule: Any) -> str:
    """SHA-256 of what determines a reference's outputs on a datamodule's training pool.

    It hashes what the datamodule exposes (see :class:`~kdlightning.data.PartitionedDataModule`): its
    training inputs (``data.train_inputs``), ``train_transform`` and ``collate_fn`` (a
    :class:`~kdlightning.data.TokenizeCollate` adds its tokenizers), with
    :func:`~kdlightning.fingerprint.data_fingerprint`.

    Raises:
        ValueError: the transform or the collate function cannot be keyed (see :func:`transform_fingerprint`).
    """
    return data_fingerprint(
        datamodule.data.train_inputs,
        getattr(datamodule, "train_transform", None),
        getattr(datamodule, "collate_fn", None),
    )


def check_deterministic_transfer(datamodule: Any, probes: int = 4, draws: int = 32, keyed: bool = True) -> None:
    """Raise ``ValueError`` if the cache cannot serve a datamodule's training pool: a random or unkeyable transform.

    Probes the ``train_transform`` on the first ``probes`` samples of the training pool with
    :func:`check_deterministic_transform`, then checks that it and the ``collate_fn`` can be keyed
    (:func:`transform_fingerprint`; transforms are small, so this costs next to nothing).

    Args:
        datamodule: exposes ``train_transform``, ``collate_fn`` and ``data`` (the training pool).
        probes: samples to probe the transform on.
        draws: applications per sample.
        keyed: whether to check that the transform and the collate function can be keyed: a store
            saved to disk needs a key, one kept in memory for a single fit does not.
    """
    transform = getattr(datamodule, "train_transform", None)
    if transform is not None and getattr(transform, "deterministic", None) is not True:
        data = datamodule.data
        samples = (
            data.train_inputs[i] if data.is_text else torch.from_numpy(np.ascontiguousarray(data.train_inputs[i]))
            for i in range(min(probes, len(data.train_labels)))
        )
        check_deterministic_transform(transform, samples, draws)
    if not keyed:
        return
    if transform is not None:
        transform_fingerprint(transform)
    collate = getattr(datamodule, "collate_fn", None)
    if collate is not None and not callable(getattr(collate, "fingerprint", None)):
        transform_fingerprint(collate, "collate_fn")


def check_deterministic_transform(
    transform: Callable[[Any], Any] | None, samples: Iterable[Any], draws: int = 32
) -> None:
    """Raise ``ValueError`` if ``transform`` is random: cached teacher outputs would not match its inputs.

    A transform may declare ``deterministic = True`` (trusted, not probed) or ``False`` (refused).
    Otherwise it is applied ``draws`` times to each sample, each time with other seeds of every global
    random source (torch, numpy's global RNG, Python's ``random``), and must give the same result every
    time: a transform that changes its output with probability ``p`` (a flip with ``p=0.5``) passes with
    probability about ``(1 - p) ** (draws - 1)`` per sample. The random states are restored afterwards,
    so probing does not change the training's randomness.

    Args:
        transform: the transfer set's transform; None passes.
        samples: inputs to probe it on (as the transform receives them).
        draws: applications per sample.
    """
    declared = getattr(transform, "deterministic", None)
    if transform is None or declared is True:
        return
    if declared is False or any(_varies(transform, x, draws) for x in samples):
        how = (
            "declares deterministic = False"
            if declared is False
            else "gives a sample different outputs under different seeds of torch, numpy and Python's random"
        )
        raise ConfigurationError(
            f"The transfer set's train_transform {transform!r} is random (it {how}), so cached teacher outputs "
            "would not match the inputs the student sees. Remove the random transform, or train without "
            "CacheReferenceOutputs."
        )


def _varies(transform: Callable[[Any], Any], x: Any, draws: int) -> bool:
    """Whether ``transform(x)`` changes over ``draws`` calls, each with other seeds of every global RNG.

    The global random states of torch, numpy and Python's ``random`` are restored afterwards.
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng():
            outputs = []
            for seed in range(draws):
                torch.manual_seed(seed)
                np.random.seed(seed)
                random.seed(seed)
                outputs.append(transform(x))
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
    return not all(_same_output(outputs[0], output) for output in outputs[1:])


def _same_output(a: Any, b: Any) -> bool:
    """Whether two transform outputs are equal: tensors, arrays, sequences of them, or ``==``-comparable."""
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return bool(np.array_equal(a, b))
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same_output(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)
