"""Fingerprints of networks: a hash of everything that determines their outputs.

The teacher-output cache (:mod:`kdlightning.cache`) keys stored logits by these, so two networks
share a key only when they compute the same function: same classes, same weights and buffers, same
plain forward settings (``self.scale = 2.0``, a layer's ``eps``) and, for a Hugging Face model,
the same ``config``. Pure torch: no Lightning.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

__all__ = ["module_fingerprint", "module_settings"]

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
