"""Keys of Python values by their state: equal for equal state, in every process.

The cache keys what determines a frozen reference's outputs (:mod:`kdlightning.fingerprint`): a
transform, a collate function, a network's settings. Their ``repr`` often leaves their parameters
out (a lambda, a ``functools.partial`` of a local function), so they are keyed by what they hold:
:class:`Keyer` reads a value's state recursively, and raises :class:`Unkeyable` naming the part it
cannot read. Pure torch and numpy: no Lightning.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import types
from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["Keyer", "Unkeyable", "qualified", "short_repr", "tag"]

_SCALARS = (type(None), bool, int, float, complex, str, bytes, type(...), type(NotImplemented))
"""Values keyed by their ``repr`` (bytes by themselves): the ``repr`` is the whole value."""

_NAMED = (torch.dtype, torch.device, torch.layout, torch.memory_format, np.dtype)
"""Values keyed by their ``str``."""

_BUILTIN_CALLABLES = (
    types.BuiltinFunctionType,
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
    types.MethodWrapperType,
    types.ClassMethodDescriptorType,
    np.ufunc,
)
"""Callables implemented in C: keyed by their qualified name (and the object a bound one belongs to)."""

_MODULE_STATE = frozenset({"_parameters", "_buffers", "_modules"})
"""The private attributes of an ``nn.Module`` that hold its state (its other private ones are torch's bookkeeping)."""


def qualified(kind: Any) -> str:
    """``module.qualname`` of a class or function."""
    name = getattr(kind, "__qualname__", None) or getattr(kind, "__name__", "?")
    return f"{getattr(kind, '__module__', None) or ''}.{name}"


def tag(kind: str, *parts: bytes) -> bytes:
    """SHA-256 of ``kind`` and ``parts``, each part length-prefixed so that no two lists of parts collide."""
    digest = hashlib.sha256(kind.encode())
    for part in parts:
        digest.update(len(part).to_bytes(8, "little") + part)
    return digest.digest()


def _public(attributes: dict[str, Any]) -> dict[str, Any]:
    """The public entries of a function's ``__dict__``.

    Private ones are bookkeeping: an ``id()`` that ``torch.compile`` stores, ``__wrapped__`` (whose
    function the wrapper's closure holds).
    """
    return {name: value for name, value in attributes.items() if not name.startswith("_")}


def _global_names(code: types.CodeType) -> set[str]:
    """The names ``code`` and the functions defined in it look up (globals among them)."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names


class Unkeyable(Exception):
    """A value whose state cannot be read, found at ``path`` (``train_transform.lambd.<closure lock>``)."""

    def __init__(self, path: str, value: Any, why: str) -> None:
        self.path, self.kind, self.why = path, qualified(type(value)), why
        super().__init__(f"{path} (a {self.kind}) {why}")


class Keyer:
    """Keys values by their state: SHA-256 digests equal for equal state, in every process.

    Numbers, strings, bytes and ``None`` by value; tensors and arrays by dtype, shape and bytes; tuples,
    lists, dicts and sets by their items; enums, classes, modules and C functions by name; an object with a
    ``fingerprint()`` method by what it returns; a ``functools.partial`` by its function, arguments and
    keywords; a bound method by its function and object; a Python function (a lambda too) by its name, its
    code (bytecode, constants, names), its defaults, its public attributes, the contents of its closure
    and, when ``strict``, the globals it reads; an ``nn.Module`` by its class, parameters, buffers, submodules and
    public attributes. Any other object, when ``strict``, by what pickle saves of it (``__reduce_ex__``:
    its class, arguments and state, its ``vars()`` for a plain object), and :class:`Unkeyable` when
    pickle cannot save it (a lock, an open file, a generator); when not ``strict``, by its class only.
    """

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self._memo: dict[int, tuple[Any, bytes]] = {}  # id -> (value kept alive so its id is not reused, key)
        self._active: list[int] = []  # ids of the containers being keyed: a cycle back to one is marked
        self._lenient: Keyer | None = None

    def key(self, value: Any, path: str) -> bytes:
        """The key of ``value``; :class:`Unkeyable` naming ``path`` where a part of it cannot be read."""
        try:
            return self._key(value, path)
        except RecursionError:
            raise Unkeyable(path, value, "is nested too deeply to read") from None

    def _key(self, value: Any, path: str) -> bytes:
        if isinstance(value, enum.Enum):
            return tag("enum", qualified(type(value)).encode(), value.name.encode())
        if type(value) in _SCALARS:
            return tag(type(value).__name__, value if isinstance(value, bytes) else repr(value).encode())
        if isinstance(value, torch.Tensor):
            return tag(
                "tensor", str(value.dtype).encode(), str(tuple(value.shape)).encode(), _tensor_bytes(value, path)
            )
        if isinstance(value, np.ndarray):
            if value.dtype.hasobject:
                return tag("object array", str(value.shape).encode(), self._key(value.tolist(), path))
            data = np.ascontiguousarray(value).tobytes()
            return tag("array", value.dtype.str.encode(), str(value.shape).encode(), data)
        if isinstance(value, np.generic):
            return tag("numpy scalar", value.dtype.str.encode(), value.tobytes())
        if isinstance(value, _NAMED):
            return tag(qualified(type(value)), str(value).encode())
        if isinstance(value, types.ModuleType):
            return tag("python module", value.__name__.encode())
        if isinstance(value, type):
            return tag("class", qualified(value).encode())
        if isinstance(value, _BUILTIN_CALLABLES):
            owner = getattr(value, "__self__", None)
            bound = (
                b"" if owner is None or isinstance(owner, types.ModuleType) else self._key(owner, f"{path}.__self__")
            )
            return tag("builtin", qualified(value).encode(), bound)
        ident = id(value)
        if ident in self._memo:
            return self._memo[ident][1]
        if ident in self._active:
            return tag("cycle", str(len(self._active) - self._active.index(ident)).encode())
        self._active.append(ident)
        try:
            key = self._composite(value, path)
        finally:
            self._active.pop()
        self._memo[ident] = (value, key)
        return key

    def _composite(self, value: Any, path: str) -> bytes:
        kind = qualified(type(value)).encode()
        if callable(getattr(type(value), "fingerprint", None)):
            return tag("fingerprint", kind, self._key(value.fingerprint(), f"{path}.fingerprint()"))
        if isinstance(value, (tuple, list)):
            if all(type(item) in _SCALARS for item in value):  # numbers and strings (a mean, a size): in one go
                return tag("plain sequence", kind, repr(list(value)).encode())
            return tag("sequence", kind, *(self._key(item, f"{path}[{i}]") for i, item in enumerate(value)))
        if isinstance(value, (dict, types.MappingProxyType)):
            items = sorted(self._key(k, f"{path}[{k!r}]") + self._key(v, f"{path}[{k!r}]") for k, v in value.items())
            return tag("mapping", kind, *items)
        if isinstance(value, (set, frozenset)):
            return tag("set", kind, *sorted(self._key(item, f"{path}{{}}") for item in value))
        if isinstance(value, (range, slice)):
            return tag("range", kind, self._key((value.start, value.stop, value.step), path))
        if isinstance(value, functools.partial):
            parts = (value.func, value.args, value.keywords, vars(value))
            names = ("func", "args", "keywords", "__dict__")
            return tag("partial", kind, *(self._key(part, f"{path}.{n}") for part, n in zip(parts, names, strict=True)))
        if isinstance(value, types.MethodType):
            return tag("method", self._key(value.__func__, f"{path}.__func__"), self._key(value.__self__, path))
        if isinstance(value, types.FunctionType):
            return self._function(value, path)
        if isinstance(value, types.CodeType):
            return self._code(value, path)
        if isinstance(value, nn.Module):
            state = [n for n in vars(value) if n in _MODULE_STATE or not (n.startswith("_") or n == "training")]
            return tag("nn.Module", kind, *self._attributes(value, sorted(state), path))
        if not self.strict:
            return tag("object", kind)
        return self._reduced(value, kind, path)

    def _reduced(self, value: Any, kind: bytes, path: str) -> bytes:
        """Key an object of another kind by what pickle would save of it: ``__reduce_ex__``, its state by name."""
        try:
            reduced = value.__reduce_ex__(4)
        except Exception as error:  # what pickle raises on a value it cannot save: TypeError mostly
            raise Unkeyable(path, value, f"has no state that can be read ({type(error).__name__}: {error})") from None
        if isinstance(reduced, str):  # a singleton, saved by its name
            return tag("named object", kind, reduced.encode())
        rebuild, arguments, state, *rest = (*reduced, None, None)[:6]
        if isinstance(state, dict):
            items = [name.encode() + b"\0" + self._key(state[name], f"{path}.{name}") for name in sorted(state)]
        else:
            items = [self._key(state, path)]
        rest = [None if part is None or callable(part) else list(part) for part in rest]
        parts = (self._key(rebuild, path), self._key(arguments, path), *items, self._key(rest, path))
        return tag("object", kind, *parts)

    def _attributes(self, value: Any, names: list[str], path: str) -> list[bytes]:
        state = vars(value)
        return [name.encode() + b"\0" + self._key(state[name], f"{path}.{name}") for name in names]

    def _function(self, function: types.FunctionType, path: str) -> bytes:
        code = function.__code__
        parts = [
            qualified(function).encode(),
            self._code(code, path),
            self._key(function.__defaults__, f"{path}.__defaults__"),
            self._key(function.__kwdefaults__, f"{path}.__kwdefaults__"),
            self._key(_public(vars(function)), f"{path}.__dict__"),
        ]
        for name, cell in zip(code.co_freevars, function.__closure__ or (), strict=True):
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell: a name the enclosing function had not assigned yet
                parts.append(f"{name}\0empty".encode())
                continue
            parts.append(name.encode() + b"\0" + self._key(contents, f"{path}.<closure {name}>"))
        if self.strict:
            parts.extend(self._globals(function, path))
        return tag("function", *parts)

    def _globals(self, function: types.FunctionType, path: str) -> list[bytes]:
        """Keys of the globals ``function`` reads: functions by name and code, other values leniently.

        A value of unknown kind counts by its class (a module-level logger does not make a transform
        unkeyable); a global function by its name and code, not the globals it reads in turn.
        """
        if self._lenient is None:
            self._lenient = Keyer(strict=False)
        names = sorted(_global_names(function.__code__) & function.__globals__.keys())
        parts = []
        for name in names:
            value = function.__globals__[name]
            where = f"{path}.<global {name}>"
            if isinstance(value, types.FunctionType):
                key = tag("global function", qualified(value).encode(), self._code(value.__code__, where))
            else:
                try:
                    key = self._lenient.key(value, where)
                except Unkeyable:
                    key = tag("object", qualified(type(value)).encode())
            parts.append(name.encode() + b"\0" + key)
        return parts

    def _code(self, code: types.CodeType, path: str) -> bytes:
        consts = [self._code(c, path) if isinstance(c, types.CodeType) else self._key(c, path) for c in code.co_consts]
        shape = (code.co_argcount, code.co_posonlyargcount, code.co_kwonlyargcount, code.co_flags)
        names = (code.co_names, code.co_varnames, code.co_freevars, code.co_cellvars)
        return tag("code", repr(shape).encode(), repr(names).encode(), code.co_code, *consts)


def _tensor_bytes(tensor: torch.Tensor, path: str) -> bytes:
    """A tensor's elements as bytes (from any device); :class:`Unkeyable` for a meta or sparse tensor."""
    if tensor.layout != torch.strided or tensor.device.type == "meta":
        raise Unkeyable(path, tensor, f"is a {tensor.layout} tensor on {tensor.device}, whose values cannot be read")
    try:
        flat = tensor.detach().resolve_conj().resolve_neg().cpu().contiguous().reshape(-1)
        return flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b""
    except RuntimeError as error:  # a quantized or otherwise opaque tensor
        raise Unkeyable(path, tensor, f"has values that cannot be read ({error})") from None


def short_repr(value: Any, limit: int = 200) -> str:
    """``repr(value)``, cut to ``limit`` characters (the type's name if it has no usable ``repr``)."""
    try:
        text = repr(value)
    except Exception:  # a repr that fails still leaves the type to name
        text = f"<{qualified(type(value))}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
