"""Atomic file writes: a reader (or a run killed mid-write) sees the old file or the new one, never a part."""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import struct
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from kdlightning.errors import StorageError

__all__ = ["UNREADABLE", "atomic_path", "save_figure", "write_text_atomic"]

UNREADABLE = (
    OSError,
    EOFError,
    RuntimeError,
    ValueError,  # UnicodeDecodeError among them
    pickle.UnpicklingError,
    KeyError,
    IndexError,
    struct.error,
    AssertionError,
    TypeError,
    AttributeError,
)
"""What ``torch.load`` raises on a truncated, garbage or foreign file.

Its unpickler reads foreign bytes as opcodes, so text or a damaged file fails in many ways: a text
file starting with ``h`` looks up a memo entry that was never stored (``KeyError``), a CSV pops an
empty stack (``IndexError``), a truncated legacy (non-zip) file unpacks too few bytes
(``struct.error``), a damaged archive calls a rebuild function with the wrong arguments
(``TypeError``, ``AttributeError``) or fails torch's own checks (``AssertionError``).
"""

_FULL = 1 << 20
"""Free bytes below which a failed write counts as the device being full."""


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it replaces ``path`` in one step.

    When the block fails the temporary file is removed and ``path`` keeps its old content. A block that
    fails because the device is full (an ``OSError`` with ``ENOSPC``, or ``torch.save``'s ``RuntimeError``
    with no space left) raises :class:`~kdlightning.errors.StorageError` (an ``OSError`` with ``ENOSPC``)
    naming the device's path.

    Examples:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text()
        'done'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    tmp = Path(name)
    umask = os.umask(0)
    os.umask(umask)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the usual permissions
        os.replace(tmp, path)
    except (OSError, RuntimeError) as error:
        if not _device_full(error, path.parent):
            raise
        raise StorageError(
            errno.ENOSPC,
            f"No space left on the device at '{path.parent}' to write '{path.name}'; nothing was "
            "written (the previous file, if any, is kept). Free some space and run the same command again.",
        ) from error
    finally:
        if tmp.exists():
            tmp.unlink()


def _device_full(error: BaseException, directory: Path) -> bool:
    """Whether ``error`` came of the device holding ``directory`` being full (read before the partial file goes)."""
    if isinstance(error, OSError):
        return error.errno == errno.ENOSPC
    try:  # torch.save reports a failed write as a RuntimeError without the errno
        return shutil.disk_usage(directory).free < _FULL
    except OSError:
        return False


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def save_figure(figure: Any, path: str | os.PathLike[str]) -> Path:
    """Write a matplotlib ``figure`` to ``path`` as a PNG (100 dpi), atomically; return ``path``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    return path
