"""Stopping a long command cleanly: SIGTERM and Ctrl-C end it non-zero, saying what finished.

``timeout``, ``docker stop`` and batch schedulers stop a job with SIGTERM. Lightning turns a SIGTERM
during ``fit`` into a ``SystemExit`` with status 0, so a study or search stopped mid-run would look
finished to the script that started it. :func:`exit_on_signals` wraps a command (``kdl study``, ``kdl
tune``, ``kdl federate``): a SIGTERM or SIGINT raises :class:`Interrupted` in the main thread and,
whatever Lightning or Optuna make of it on the way out, the command exits with ``128 + signal`` (143
for SIGTERM, 130 for Ctrl-C), printing what finished and the command that resumes it. Results already
written stay: the pipelines write their files atomically after every run.
"""

from __future__ import annotations

import _thread
import contextlib
import shlex
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import Any

__all__ = ["Interrupted", "exit_on_signals", "raise_if_stopped"]

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A stop signal arrived (a ``KeyboardInterrupt``, so code that cleans up after Ctrl-C does so here too).

    Args:
        signum: the signal's number.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextlib.contextmanager
def exit_on_signals(command: str, args: Sequence[str], report: Callable[[], str]) -> Iterator[None]:
    """Within the block, SIGTERM and SIGINT stop ``command`` with status ``128 + signal`` and a note on stderr.

    Args:
        command: the command's name, e.g. ``"kdl study"``.
        args: its arguments: rerunning ``command args`` resumes it.
        report: says what finished (e.g. ``"12 of 75 runs are in runs/study/results.csv."``); called after the stop.

    Raises:
        SystemExit: ``128 + signal`` when a signal stopped the block.
    """
    if threading.current_thread() is not threading.main_thread():  # signal handlers live in the main thread
        yield
        return
    received: list[int] = []
    raised: list[bool] = []
    _PENDING.append(received)

    def stop(signum: int, frame: FrameType | None) -> None:
        if raised:  # already stopping: let the clean-up finish
            return
        received[:] = received or [signum]
        raised.append(True)
        raise Interrupted(received[0])

    def ignored(unraisable: Any) -> None:
        """Python ignores an exception raised in ``__del__`` or a weakref callback: deliver the stop again, outside."""
        if not (isinstance(unraisable.exc_value, Interrupted) and received):
            hook(unraisable)
            return
        raised.clear()
        threading.Timer(0.01, _thread.interrupt_main, args=(received[0],)).start()

    previous = {signum: signal.signal(signum, stop) for signum in _SIGNALS}
    hook, sys.unraisablehook = sys.unraisablehook, ignored

    def exit_stopped() -> SystemExit:
        name = signal.Signals(received[0]).name
        resume = shlex.join([*command.split(), *map(str, args)])
        print(f"\n{command}: stopped by {name}. {report()}\nResume with the same command: {resume}", file=sys.stderr)
        return SystemExit(128 + received[0])

    try:
        yield
    except BaseException:
        if not received:
            raise
        raise exit_stopped() from None
    finally:
        _PENDING.remove(received)
        sys.unraisablehook = hook
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if received:  # a signal whose Interrupted something swallowed: the command was stopped all the same
        raise exit_stopped()


_PENDING: list[list[int]] = []
"""The signals received by each active :func:`exit_on_signals` block (empty lists until one arrives)."""


def raise_if_stopped() -> None:
    """Raise :class:`Interrupted` again if a stop signal arrived and something swallowed the first one.

    Long loops call it between their steps (a search's trials, a study's runs): a stop that Lightning or
    Optuna caught on its way out then ends the command at the next step instead of after the last one.
    """
    for received in _PENDING:
        if received:
            raise Interrupted(received[0])
