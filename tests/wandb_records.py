"""Read offline W&B runs back, as W&B itself records them.

wandb 0.31 has no Python reader of offline runs (its ``DataStore`` went with the Go core), and writes no
``files/wandb-summary.json`` offline: a run is its ``run-<id>.wandb`` file, a LevelDB-style log of
``wandb.proto.wandb_internal_pb2.Record`` messages. :func:`read_run` decodes it with W&B's own protobuf records
and gathers what a run holds: its name, group and job type, its config, its history rows and its summary.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class OfflineRun:
    """What an offline run's records hold."""

    path: Path
    name: str
    group: str
    job_type: str
    project: str
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None
    files: list[str] = field(default_factory=list)


def records(path: Path) -> list:
    """Decode a ``.wandb`` file: a 7-byte header (``:W&B``, magic, version), then LevelDB log chunks
    (32 KiB blocks; each chunk: crc32 (4), little-endian length (2), type (1: full, 2: first,
    3: middle, 4: last)) carrying serialized ``wandb_internal_pb2.Record`` messages."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B transaction log: {data[:7]!r}"
    block, pos, buf, found = 32 * 1024, 7, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # block trailer
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4 : pos + 6], "little"), data[pos + 6]
        if kind == 0:  # zero padding at the end
            break
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        buf = chunk if kind in (1, 2) else buf + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(buf)
            found.append(record)
            buf = b""
    return found


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


def finished_records(log: Path, timeout: float = 60.0) -> list:
    """The records of ``log`` once its run's ``exit`` record is written.

    ``run.finish()`` returns before W&B's service has flushed every record to the file: wait for it.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = records(log)
        except Exception:  # a record half written: read again
            found = []
        if any(record.WhichOneof("record_type") == "exit" for record in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def read_run(directory: Path) -> OfflineRun:
    """The offline run in ``directory`` (an ``offline-run-*`` folder), once finished."""
    (log,) = sorted(directory.glob("run-*.wandb"))
    run: OfflineRun | None = None
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    exit_code, files = None, []
    for record in finished_records(log):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            info = record.run
            run = OfflineRun(log, info.display_name, info.run_group, info.job_type, info.project)
            config.update({_key(item): json.loads(item.value_json) for item in info.config.update})
        elif kind == "config":
            config.update({_key(item): json.loads(item.value_json) for item in record.config.update})
        elif kind == "history":
            history.append({_key(item): json.loads(item.value_json) for item in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                *parents, last = list(item.nested_key) or [item.key]
                into = summary
                for parent in parents:
                    into = into.setdefault(parent, {})
                into[last] = json.loads(item.value_json)
        elif kind == "exit":
            exit_code = record.exit.exit_code
        elif kind == "files":
            files += [item.path for item in record.files.files]
    assert run is not None, f"{log} has no run record"
    config.pop("_wandb", None)
    run.config, run.history, run.summary, run.exit_code, run.files = config, history, summary, exit_code, files
    return run


def read_runs(save_dir: Path) -> list[OfflineRun]:
    """Every offline run under ``save_dir`` (a ``WandbLogger``'s ``save_dir``: runs lie in its ``wandb/``)."""
    return [read_run(path) for path in sorted((Path(save_dir) / "wandb").glob("offline-run-*"))]


def offline_wandb(tmp_path: Path, monkeypatch: Any) -> Path:
    """W&B offline, every file of it under ``tmp_path``, no account (``monkeypatch``: pytest's, restores it all)."""
    for name in ("wandb_dir", "wandb_cache", "wandb_config", "wandb_data"):
        (tmp_path / name).mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb_dir"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb_cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb_config"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb_data"))
    monkeypatch.setenv("WANDB_DISABLE_GIT", "true")
    return tmp_path
