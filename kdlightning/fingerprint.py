"""Fingerprints of networks and of their inputs, and the probe for random transforms: the cache's helpers.

The teacher-output cache (:mod:`kdlightning.cache`) keys stored logits by these, so two networks
share a key only when they compute the same function: same classes, same weights and buffers, same
forward settings (``self.scale = 2.0``, ``self.scale = torch.tensor(2.0)``, a layer's ``eps``) and,
for a Hugging Face model, the same ``config``; and two transfer sets only when the networks see the
same inputs (:func:`data_fingerprint`, :func:`transfer_fingerprint`). A transform or collate function
is keyed by its state, not by its ``repr`` (:func:`transform_fingerprint`): one whose state cannot be
read is refused, and so is a random one (:func:`check_deterministic_transform`). Each stored output is
also tied to the very inputs it was computed on by :func:`input_digests`, one 64-bit digest per sample
of a batch. Pure torch and numpy: no Lightning.
"""

from __future__ import annotations

import functools
import hashlib
import json
import random
from collections.abc import Callable, Iterable, Mapping
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
    "input_digests",
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
    digest = _pipeline_digest(transform, collate)
    if inputs.dtype.kind in "OUS":
        for text in inputs:
            digest.update(str(text).encode() + b"\0")
    else:
        digest.update(str(inputs.dtype).encode() + str(inputs.shape).encode())
        digest.update(np.ascontiguousarray(inputs).view(np.uint8).data)
    return digest.hexdigest()


def _pipeline_digest(transform: Any, collate: Any) -> Any:
    """A SHA-256 object updated with the keys of a transform and a collate function (None for none)."""
    digest = hashlib.sha256(b"None" if transform is None else transform_fingerprint(transform).encode())
    if callable(getattr(collate, "fingerprint", None)):
        digest.update(collate.fingerprint().encode())
    elif collate is not None:
        digest.update(transform_fingerprint(collate, "collate_fn").encode())
    return digest


def transfer_fingerprint(datamodule: Any) -> str:
    """SHA-256 naming a datamodule's training data in the cache's file names: what it declares and exposes.

    It covers the datamodule's ``cache_key()`` (a method returning a string, or a string attribute) if it
    has one: the identity of its training data as the datamodule names it; and its ``train_transform`` and
    ``collate_fn`` if it has them, keyed by their state (:func:`transform_fingerprint`; a
    :class:`~kdlightning.data.TokenizeCollate` adds its tokenizers and ``max_length``). What a stored
    output was computed on is checked sample by sample besides (:func:`input_digests`), so this key
    only keeps the stores of different data apart; it is not what makes a stale store safe.

    Raises:
        ValueError: the transform or the collate function cannot be keyed (see :func:`transform_fingerprint`),
            or ``cache_key`` is neither a string nor a method returning one.
    """
    digest = _pipeline_digest(getattr(datamodule, "train_transform", None), getattr(datamodule, "collate_fn", None))
    declared = getattr(datamodule, "cache_key", None)
    if declared is not None:
        key = declared() if callable(declared) else declared
        if not isinstance(key, str):
            raise ConfigurationError(
                f"{type(datamodule).__name__}.cache_key must be a string, or a method returning one, that names its "
                f"training data; got {short_repr(key)}."
            )
        digest.update(b"cache_key\0" + key.encode())
    return digest.hexdigest()


_BIT_VIEWS = {
    torch.float64: torch.int64,
    torch.float32: torch.int32,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}
"""The integer dtype whose bits a floating tensor is read as (every bit counts: ``-0.0`` is not ``0.0``)."""

# splitmix64's odd constants, as signed int64, and masks that make int64's arithmetic right shifts logical
_MIX = (-7046029254386353131, -4658895280553007687, -7723592293110705685)
_LOW = {shift: (1 << (64 - shift)) - 1 for shift in (27, 30, 31)}


def _splitmix(z: torch.Tensor) -> torch.Tensor:
    """splitmix64's finaliser on an int64 tensor, element-wise (wrapping products): it spreads every bit over all."""
    z = (z ^ ((z >> 30) & _LOW[30])) * _MIX[1]
    z = (z ^ ((z >> 27) & _LOW[27])) * _MIX[2]
    return z ^ ((z >> 31) & _LOW[31])


def input_digests(inputs: Any, batch_size: int) -> torch.Tensor:
    """64-bit digests ``(B,)`` of each sample's inputs in a batch: equal inputs, equal digests, in every process.

    ``inputs`` is what a network receives: a tensor ``(B, ...)``, or a dict, tuple or list of them (plain
    values such as flags count as settings of the whole batch). Every element's bits are weighted by a
    pseudo-random odd number fixed by its position and summed per sample, with int64 wrap-around, on the
    tensors' device, and the sums mixed (splitmix64's finaliser). In a dict with an
    ``attention_mask`` (tokenized text), the positions the mask leaves out do not count, so a sample's
    digest does not depend on how far its batch is padded.

    Args:
        inputs: the batch's inputs to one network.
        batch_size: ``B``, the number of samples (every tensor's first dimension).

    Raises:
        ValueError: a tensor whose first dimension is not ``B``, or a value that is neither a tensor, a
            container of them nor a plain number, string, bool or None.

    Examples:
        >>> x = torch.arange(12.0).reshape(3, 4)
        >>> first, second = input_digests(x, 3), input_digests(x[[2, 1, 0]], 3)
        >>> bool((first == second.flip(0)).all()), bool(first[0] != first[1])
        (True, True)
    """
    digest: torch.Tensor | None = None
    settings = hashlib.sha256()
    for path, value, mask in _leaves(inputs, "inputs", None):
        if not isinstance(value, torch.Tensor) or value.ndim == 0:
            settings.update(f"{path}\0{value!r}\0".encode())
            continue
        if value.shape[0] != batch_size:
            raise ConfigurationError(
                f"The teacher-output cache reads the batch's {path} as one row per sample, but its shape "
                f"{tuple(value.shape)} does not start with the batch size {batch_size}."
            )
        rows = _row_digests(value, mask)
        salt = tag(path, str(value.dtype).encode(), str(_fixed_shape(value, mask)).encode())
        rows = rows + int.from_bytes(salt[:8], "little", signed=True)
        digest = rows if digest is None else digest * _MIX[2] + rows
    if digest is None:
        digest = torch.zeros(batch_size, dtype=torch.int64)
    return digest + int.from_bytes(settings.digest()[:8], "little", signed=True)


def _leaves(value: Any, path: str, mask: torch.Tensor | None) -> Iterable[tuple[str, Any, torch.Tensor | None]]:
    """``(path, value, attention mask or None)`` of every tensor or plain value in ``value``, in a fixed order."""
    if isinstance(value, torch.Tensor) or _is_plain(value):
        yield path, value, mask
    elif isinstance(value, Mapping):
        found = value.get("attention_mask")
        inner = found if isinstance(found, torch.Tensor) and found.ndim >= 2 else mask
        for key in sorted(value, key=str):
            yield from _leaves(value[key], f"{path}[{key!r}]", inner)
    elif isinstance(value, (tuple, list)):
        for position, item in enumerate(value):
            yield from _leaves(item, f"{path}[{position}]", mask)
    else:
        raise ConfigurationError(
            f"The teacher-output cache cannot read the batch's {path}, a {qualified(type(value))}: a network's "
            "inputs must be tensors (B, ...), or dicts, tuples or lists of them. Train without CacheReferenceOutputs."
        )


def _masks(value: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether ``mask`` (B, L) covers ``value``'s leading dimensions (B, L, ...)."""
    return mask is not None and tuple(value.shape[: mask.ndim]) == tuple(mask.shape)


def _fixed_shape(value: torch.Tensor, mask: torch.Tensor | None) -> tuple[int, ...]:
    """The part of a tensor's shape that does not vary with padding."""
    return tuple(value.shape[mask.ndim :]) if mask is not None and _masks(value, mask) else tuple(value.shape[1:])


@functools.lru_cache(maxsize=64)
def _weights(length: int, device: torch.device) -> torch.Tensor:
    """The odd int64 weights ``(length,)`` of positions ``1 .. length``: the same in every process."""
    positions = torch.arange(1, length + 1, device=device, dtype=torch.int64)
    return _splitmix(positions * _MIX[0]) | 1


def _row_digests(value: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Digests ``(B,)`` of a tensor's rows: ``sum_k bits[b, k] * w[k]`` (int64, wrapping), then mixed.

    The weights ``w`` are odd pseudo-random numbers fixed by position, so two rows that differ get the same
    sum only by accident, with a chance of the order of 2^-64 (a linear hash over the bits: one product and
    one sum per element, about as cheap as a copy of the batch).
    """
    value = value.detach()
    if value.is_complex():
        value = torch.view_as_real(value)
    if value.dtype in _BIT_VIEWS:
        bits = value.contiguous().view(_BIT_VIEWS[value.dtype])
    elif value.dtype.is_floating_point:  # float8 and other narrow floats: their values, exactly
        bits = value.to(torch.float64).view(torch.int64)
    else:
        bits = value
    bits = bits.reshape(len(value), -1)  # (B, K)
    terms = bits * _weights(bits.shape[1], bits.device)  # (B, K) int64
    if mask is not None and _masks(value, mask):
        keep = (mask != 0).reshape(*mask.shape, *([1] * (value.ndim - mask.ndim))).expand(value.shape)
        terms = terms * keep.reshape(len(value), -1)  # padded positions count for nothing
    return _splitmix(terms.sum(dim=1))


def check_deterministic_transfer(datamodule: Any, probes: int = 4, draws: int = 32, keyed: bool = True) -> None:
    """Raise ``ValueError`` if the cache cannot serve a datamodule's training data: a random or unkeyable transform.

    A datamodule that exposes a ``train_transform`` and its raw training inputs (``data.train_inputs``, as
    :class:`~kdlightning.data.PartitionedDataModule` does) has the transform probed on the first ``probes``
    of them with :func:`check_deterministic_transform`. Any other datamodule's randomness shows during the
    fit: a sample whose inputs differ from one epoch to the next (:func:`input_digests`) stops it. With
    ``keyed``, the ``train_transform`` and ``collate_fn`` must also be keyable
    (:func:`transform_fingerprint`; transforms are small, so this costs next to nothing).

    Args:
        datamodule: the datamodule; what it does not expose is not checked here.
        probes: samples to probe the transform on.
        draws: applications per sample.
        keyed: whether to check that the transform and the collate function can be keyed: a store
            saved to disk needs a key, one kept in memory for a single fit does not.
    """
    transform = getattr(datamodule, "train_transform", None)
    inputs = getattr(getattr(datamodule, "data", None), "train_inputs", None)
    if transform is not None and getattr(transform, "deterministic", None) is not True and inputs is not None:
        text = inputs.dtype.kind in "OUS"
        samples = (
            inputs[i] if text else torch.from_numpy(np.ascontiguousarray(inputs[i]))
            for i in range(min(probes, len(inputs)))
        )
        check_deterministic_transform(transform, samples, draws)
    elif getattr(transform, "deterministic", None) is False:
        check_deterministic_transform(transform, (), draws)  # refused as it declares, with nothing to probe
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
