"""A search's Optuna storage, and its recovery from killed workers.

Optuna fails and re-queues the trials of workers whose heartbeat went silent
(``RetryHeartbeatStaleTrialCallback`` on the storage), but only after the grace period. A trial also
records its ``worker`` (``host:pid``), so a restarted search fails this machine's dead processes'
trials at once instead of waiting.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
from collections.abc import Mapping
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from kdlightning.tuning.options import Param, TuneOptions

__all__ = ["is_dead", "is_done", "open_storage", "recover", "search_fingerprint", "study_attrs", "worker"]


def open_storage(url: str, heartbeat_interval: int | None) -> optuna.storages.RDBStorage:
    """The RDB storage at ``url``; with heartbeats, a trial silent for two intervals is failed and retried."""
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    retry = RetryHeartbeatStaleTrialCallback() if heartbeat_interval is not None else None
    return optuna.storages.RDBStorage(
        url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval, heartbeat_stale_trial_callback=retry
    )


def search_fingerprint(description: Any, space: Mapping[str, Param], options: TuneOptions) -> str:
    """SHA-256 of what makes trials comparable: the ``description`` (method, data, trainer) and the search."""
    search = {
        "space": {k: [p.values, p.low, p.high, p.log] for k, p in space.items()},
        "sampler": options.sampler,
        "metric": options.metric,
        "direction": options.direction,
    }
    return hashlib.sha256(json.dumps([description, search], sort_keys=True, default=str).encode()).hexdigest()


def study_attrs(storage: optuna.storages.BaseStorage, name: str) -> dict[str, Any] | None:
    """The user attributes of study ``name``, or None if the storage has no such study."""
    try:
        return storage.get_study_user_attrs(storage.get_study_id_from_name(name))
    except KeyError:
        return None


def recover(study: optuna.Study, storage: optuna.storages.BaseStorage) -> None:
    """Fail the trials a kill left running, then queue a retry of every failed trial not retried yet.

    Trials whose heartbeat is stale are failed (and queued) by Optuna; those of this machine's dead
    processes (:func:`is_dead`) at once. Trials that failed with a caught error (a non-finite loss,
    recorded as ``error``) are results and are not retried.
    """
    optuna.storages.fail_stale_trials(study)
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    dead = [trial.number for trial in running if is_dead(trial.user_attrs.get("worker"))]
    if dead:  # told through a plain handle: a GridSampler's after-trial hook would stop a study not optimizing
        handle = optuna.load_study(
            study_name=study.study_name, storage=storage, sampler=optuna.samplers.RandomSampler()
        )
        for number in dead:
            with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):  # finished meanwhile
                handle.tell(number, state=TrialState.FAIL, skip_if_finished=True)
    retry = RetryHeartbeatStaleTrialCallback()
    trials = study.get_trials(deepcopy=False)
    retried = {number for trial in trials for number in retry.retry_history(trial)}
    for trial in trials:
        if trial.state == TrialState.FAIL and "error" not in trial.user_attrs and trial.number not in retried:
            retry(study, trial)


def worker() -> str:
    """This process, as ``host:pid``."""
    return f"{socket.gethostname()}:{os.getpid()}"


def is_dead(worker: str | None) -> bool:
    """True if ``worker`` (``host:pid``) is a process of this machine that no longer runs (or is this one)."""
    host, _, pid = (worker or "").rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False
    if int(pid) == os.getpid():  # this process runs no trial while it recovers
        return True
    if os.name != "posix":
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def is_done(trial: FrozenTrial) -> bool:
    """A trial with a result: completed, pruned, or failed with a recorded error (a diverging point)."""
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED) or (
        trial.state == TrialState.FAIL and "error" in trial.user_attrs
    )
