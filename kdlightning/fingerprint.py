"""Fingerprints of networks and of their inputs, and the probe for random transforms: the cache's helpers.

The teacher-output cache (:mod:`kdlightning.cache`) keys stored logits by these, so two networks
share a key only when they compute the same function: same classes, same weights and buffers, same
plain forward settings (``self.scale = 2.0``, a layer's ``eps``) and, for a Hugging Face model,
the same ``config``; and two transfer sets only when the networks see the same inputs
(:func:`data_fingerprint`, :func:`transfer_fingerprint`). It serves only transfer sets whose
transform is deterministic (:func:`check_deterministic_transform`). Pure torch and numpy: no Lightning.
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

__all__ = [
    "check_deterministic_transfer",
    "check_deterministic_transform",
    "data_fingerprint",
    "module_fingerprint",
    "module_settings",
    "transfer_fingerprint",
]

_PLAIN = (bool, int, float, str, type(None))


def _is_plain(value: Any) -> bool:
    """A number, string, bool or None, or a tuple or list of plain values."""
    if isinstance(value, (tuple, list)):
        return all(_is_plain(item) for item in value)
    return isinstance(value, _PLAIN)


def module_settings(module: nn.Module) -> dict[str, Any]:
    """The plain settings a module's ``forward`` may read: public, non-``training`` attributes of plain type.

    Tensors, submodules and private (``_``-prefixed) attributes are left out: weights and buffers are
    hashed from the state dict, submodules on their own.
    """
    return {
        name: value
        for name, value in sorted(vars(module).items())
        if name != "training" and not name.startswith("_") and _is_plain(value)
    }


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


def module_fingerprint(module: nn.Module) -> str:
    """SHA-256 of what determines a module's outputs; equal for modules that compute the same function.

    It covers, for every submodule, its name, class and :func:`module_settings`, a Hugging Face
    ``config`` (hashed once per config object), and the state dict (parameters and buffers with their
    dtypes). Settings of another kind (callables, objects) are not covered.

    Examples:
        >>> from torch import nn
        >>> module_fingerprint(nn.LayerNorm(4)) == module_fingerprint(nn.LayerNorm(4, eps=1e-3))
        False
    """
    digest = hashlib.sha256()
    configs: set[int] = set()
    for name, submodule in module.named_modules():
        kind = f"{type(submodule).__module__}.{type(submodule).__qualname__}"
        settings = json.dumps(module_settings(submodule), sort_keys=True)
        digest.update(f"{name}\0{kind}\0{settings}\0".encode())
        config = getattr(submodule, "config", None)
        if config is not None and id(config) not in configs:
            configs.add(id(config))
            digest.update((_config_text(config) or "").encode())
    _update_with_state(digest, module)
    return digest.hexdigest()


def data_fingerprint(inputs: np.ndarray, transform: Any = None, collate: Any = None) -> str:
    """SHA-256 of what determines a network's inputs on a data set: the inputs, the transform, the collate.

    Args:
        inputs: the training pool's inputs ``(N, ...)``: numbers (hashed by dtype, shape and bytes) or
            strings (hashed one by one).
        transform: the transform applied to each input, hashed by its ``repr``.
        collate: the collate function; one with a ``fingerprint()`` method (a
            :class:`~kdlightning.data.TokenizeCollate`: the tokenizers and ``max_length``) adds it.

    Examples:
        >>> x = np.zeros((4, 2), dtype=np.float32)
        >>> data_fingerprint(x) == data_fingerprint(x.copy()) != data_fingerprint(x, transform="flip")
        True
    """
    digest = hashlib.sha256(repr(transform).encode())
    if callable(getattr(collate, "fingerprint", None)):
        digest.update(collate.fingerprint().encode())
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
    """
    return data_fingerprint(
        datamodule.data.train_inputs,
        getattr(datamodule, "train_transform", None),
        getattr(datamodule, "collate_fn", None),
    )


def check_deterministic_transfer(datamodule: Any, probes: int = 4, draws: int = 32) -> None:
    """Raise ``ValueError`` if a datamodule's ``train_transform`` is random (cached outputs would be wrong).

    Probes the transform on the first ``probes`` samples of the training pool with
    :func:`check_deterministic_transform`.
    """
    transform = getattr(datamodule, "train_transform", None)
    if transform is None or getattr(transform, "deterministic", None) is True:
        return
    data = datamodule.data
    samples = (
        data.train_inputs[i] if data.is_text else torch.from_numpy(np.ascontiguousarray(data.train_inputs[i]))
        for i in range(min(probes, len(data.train_labels)))
    )
    check_deterministic_transform(transform, samples, draws)


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
        raise ValueError(
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
