"""DDP on 2 CPU processes (gloo): gradients are all-reduced, trained networks stay in sync, frozen ones never move.

Lightning's ``ddp`` strategy relaunches the running script once per extra rank, so each run is a
subprocess: the real CLI (``python -m kdlightning fit``) or ``tests/scripts/ddp_fit.py``. Every rank
saves its networks before and after ``fit`` (``tests/scripts/ddp_fit.py::RankStateSaver``) and the
tests compare the ranks' files.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tests" / "scripts"
BATCHES = 4  # training batches per rank

pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    env = os.environ.copy()
    # A pytest that itself runs under torchrun/SLURM must not hand its rank to the children.
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "PL_GLOBAL_SEED"):
        env.pop(key, None)
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        WANDB_MODE="offline",
        OMP_NUM_THREADS="1",
        PYTHONWARNINGS="ignore",
        PYTHONPATH=os.pathsep.join([str(SCRIPTS), str(ROOT), *filter(None, [env.get("PYTHONPATH")])]),
    )
    return env


def _run(cmd: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``cmd`` in its own session; on a hang kill the whole group (the relaunched rank included)."""
    proc = subprocess.Popen(
        cmd, cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"DDP run hung for more than {timeout} s (a rank waiting on a collective?):\n{out[-4000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, None)


def _script(tmp_path: Path, method: str, strategy: str, alternate: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(SCRIPTS / "ddp_fit.py"), "--method", method, "--strategy", strategy]
    cmd += ["--alternate", str(int(alternate)), "--out", str(tmp_path / "ranks"), "--batches", str(BATCHES)]
    return _run(cmd, cwd=tmp_path)


def _ranks(tmp_path: Path) -> list[dict]:
    files = sorted((tmp_path / "ranks").glob("rank*.pt"))
    assert [f.name for f in files] == ["rank0.pt", "rank1.pt"], files
    return [torch.load(f, weights_only=True) for f in files]


def _assert_common(ranks: list[dict], steps: int) -> None:
    r0, r1 = ranks
    assert r0["world_size"] == r1["world_size"] == 2
    assert r0["global_step"] == r1["global_step"] == steps
    assert len(r0["fingerprints"]) == len(r1["fingerprints"]) == BATCHES
    # Each rank trained on its own shard: equal weights below are the all-reduce's doing.
    assert r0["fingerprints"] != r1["fingerprints"]
    # torchmetrics accuracy is reduced over the ranks.
    assert r0["metrics"]["val/acc"] == r1["metrics"]["val/acc"]


def _assert_trained_in_sync(ranks: list[dict], name: str) -> None:
    """``name``'s parameters moved from a common start and are bit-identical on both ranks.

    Parameters only: without ``sync_batchnorm`` a trained network's BatchNorm running statistics are
    per rank in DDP (rank 0's are broadcast at each forward, so the last step's update stays local).
    """
    r0, r1 = ranks
    init0, init1 = r0["init"][name]["params"], r1["init"][name]["params"]
    final0, final1 = r0["final"][name]["params"], r1["final"][name]["params"]
    assert init0.keys() == final0.keys() == final1.keys() and len(final0) > 0
    for key in final0:
        assert torch.equal(init0[key], init1[key]), f"{name}.{key} started differently on the two ranks"
        assert not torch.equal(final0[key], init0[key]), f"{name}.{key} was not trained"
        assert torch.equal(final0[key], final1[key]), (
            f"{name}.{key} differs across ranks after training (max abs diff "
            f"{(final0[key] - final1[key]).abs().max().item():.3g}): gradients were not all-reduced"
        )


def _assert_frozen(ranks: list[dict], name: str) -> None:
    """``name``'s parameters *and* buffers (BatchNorm statistics) are exactly what they were."""
    for rank in ranks:
        for kind in ("params", "buffers"):
            init, final = rank["init"][name][kind], rank["final"][name][kind]
            assert init.keys() == final.keys()
            for key in init:
                assert torch.equal(init[key], final[key]), f"frozen {name}.{key} changed during training"
    assert any("running_mean" in key for key in ranks[0]["final"][name]["buffers"])  # a BatchNorm teacher


@pytest.fixture(scope="module")
def vanilla_cli_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict], torch.nn.Module]:
    """``kdl fit`` of the digits VanillaKD config under ``ddp`` on 2 CPU processes (one run, shared)."""
    from kdlightning.models import SmallCNN

    tmp_path = tmp_path_factory.mktemp("vanilla_ddp")
    # The config's teacher is "the student of runs/digits/teacher": provide that checkpoint in the cwd.
    ckpt = tmp_path / "runs" / "digits" / "teacher" / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir(parents=True)
    torch.manual_seed(1)
    teacher = SmallCNN(num_classes=10, channels=(32, 64))
    torch.save({"state_dict": {f"student.{k}": v for k, v in teacher.state_dict().items()}}, ckpt)

    saver = {"class_path": "ddp_fit.RankStateSaver", "init_args": {"out": str(tmp_path / "ranks")}}
    cmd = [sys.executable, "-m", "kdlightning", "fit"]
    cmd += ["-c", str(ROOT / "configs/_base/trainer.yaml"), "-c", str(ROOT / "configs/digits/vanilla_kd.yaml")]
    cmd += ["-c", str(ROOT / "configs/_base/cache.yaml")]  # the teacher-output cache, saved to runs/cache
    cmd += [
        "--trainer.strategy=ddp",
        "--trainer.devices=2",
        "--trainer.accelerator=cpu",
        "--trainer.max_epochs=1",
        f"--trainer.limit_train_batches={BATCHES}",
        "--trainer.limit_val_batches=2",
        "--trainer.num_sanity_val_steps=0",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.callbacks+={json.dumps(saver)}",
    ]
    result = _run(cmd, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-6000:]
    return tmp_path, _ranks(tmp_path), teacher


def test_vanilla_kd_ddp_via_cli(vanilla_cli_run: tuple[Path, list[dict], torch.nn.Module]) -> None:
    """``kdl fit`` with the digits VanillaKD config under ``ddp``: student all-reduced, teacher untouched."""
    tmp_path, ranks, teacher = vanilla_cli_run
    _assert_common(ranks, steps=BATCHES)
    _assert_trained_in_sync(ranks, "student")
    _assert_frozen(ranks, "teacher")
    # The teacher is the checkpoint's network on both ranks.
    for rank in ranks:
        for key, value in teacher.named_parameters():
            assert torch.equal(rank["final"]["teacher"]["params"][key], value.detach())

    # Rank 0 wrote the config's checkpoint: the synced student, no teacher.
    state = torch.load(tmp_path / "runs/digits/vanilla_kd/checkpoints/last.ckpt", weights_only=False)["state_dict"]
    assert not any(key.startswith("teacher.") for key in state)
    final = ranks[0]["final"]["student"]["params"]
    assert {key.removeprefix("student.") for key in state} == set(final)
    for key, value in final.items():
        assert torch.equal(state[f"student.{key}"], value)


def test_teacher_output_cache_gathers_every_ranks_rows(vanilla_cli_run) -> None:
    """Each rank caches the teacher's logits of its own samples; the saved store holds both ranks' rows."""
    from kdlightning.data import Digits

    tmp_path, _, teacher = vanilla_cli_run
    (path,) = (tmp_path / "runs" / "cache").glob("*.pt")
    state = torch.load(path, weights_only=True)
    rows = state["filled"].nonzero().squeeze(1)  # pool indices
    assert len(rows) == 2 * BATCHES * 64  # both ranks' batches, no overlap
    inputs = torch.from_numpy(Digits().load().train_inputs)[rows]
    with torch.no_grad():
        expected = teacher.eval()(inputs)
    torch.testing.assert_close(state["values"][rows], expected, rtol=1e-5, atol=1e-5)


def test_ddp_val_loss_is_reduced_across_ranks(vanilla_cli_run: tuple[Path, list[dict], torch.nn.Module]) -> None:
    """Every rank must see the same ``val/loss`` (the scheduler's monitor), as they do ``val/acc``."""
    _, (r0, r1), _ = vanilla_cli_run
    assert r0["metrics"]["val/acc"] == r1["metrics"]["val/acc"]
    assert r0["metrics"]["val/loss"] == r1["metrics"]["val/loss"], (
        r0["metrics"]["val/loss"],
        r1["metrics"]["val/loss"],
    )


@pytest.mark.parametrize(
    ("alternate", "strategy"),
    [
        pytest.param(False, "ddp", id="joint-ddp"),
        pytest.param(True, "ddp", id="alternate-ddp"),
    ],
)
def test_dml_ddp_student_and_peer_in_sync(tmp_path: Path, alternate: bool, strategy: str) -> None:
    """DML's two networks, each with its own optimizer, are both trained and stay in sync across ranks."""
    result = _script(tmp_path, "dml", strategy, alternate)
    assert result.returncode == 0, result.stdout[-6000:]
    ranks = _ranks(tmp_path)
    _assert_common(ranks, steps=2 * BATCHES)  # manual optimization: one global step per optimizer step
    _assert_trained_in_sync(ranks, "student")
    _assert_trained_in_sync(ranks, "peer")
    assert ranks[0]["metrics"]["val/acc_peer"] == ranks[1]["metrics"]["val/acc_peer"]


def test_batched_members_ddp_in_sync_with_metrics_reduced(tmp_path: Path) -> None:
    """Batched members under ``ddp``: the stacked students all-reduced, the teacher untouched, the members'
    validation figures reduced across ranks (each rank saw its own shard)."""
    result = _script(tmp_path, "batched", "ddp")
    assert result.returncode == 0, result.stdout[-6000:]
    ranks = _ranks(tmp_path)
    r0, r1 = ranks
    assert r0["global_step"] == r1["global_step"] == BATCHES
    assert r0["fingerprints"] != r1["fingerprints"]
    _assert_trained_in_sync(ranks, "student")
    _assert_frozen(ranks, "teacher")
    assert next(iter(r0["final"]["student"]["params"].values())).shape[0] == 3  # the members, stacked
    assert r0["metrics"]["val/acc_best"] == r1["metrics"]["val/acc_best"]
