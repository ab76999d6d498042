"""DDP helpers for ``tests/test_distributed.py``: a per-rank state saver and a standalone fit script.

Lightning's ``ddp`` strategy relaunches the running script once per extra rank, so DDP runs happen
in subprocesses. Two ways in:

* the script: ``python tests/scripts/ddp_fit.py --method dml --alternate 1 --strategy ddp --out DIR``
  fits a tiny method on the digits with 2 CPU processes (gloo);
* the real CLI: ``python -m kdlightning fit ... --trainer.callbacks+=ddp_fit.RankStateSaver
  --trainer.callbacks.out=DIR`` with ``tests/scripts`` on ``PYTHONPATH``.

Either way every rank ``r`` writes ``DIR/rank{r}.pt`` (see :class:`RankStateSaver`).
Importing this module starts nothing (pytest's ``--doctest-modules`` imports it).
"""

from __future__ import annotations

import argparse
import os
import warnings
from pathlib import Path

import lightning as L
import torch

NETWORKS = ("student", "teacher", "peer", "initial_student")


def snapshot(module: torch.nn.Module) -> dict[str, dict[str, torch.Tensor]]:
    """Copies of the parameters and of the buffers of every network the method holds."""
    return {
        name: {
            "params": {key: value.detach().clone() for key, value in getattr(module, name).named_parameters()},
            "buffers": {key: value.detach().clone() for key, value in getattr(module, name).named_buffers()},
        }
        for name in NETWORKS
        if isinstance(getattr(module, name, None), torch.nn.Module)
    }


class RankStateSaver(L.Callback):
    """Save each rank's networks before and after ``fit`` to ``<out>/rank<global_rank>.pt``.

    The file holds ``init`` and ``final`` (:func:`snapshot`), ``fingerprints`` (one number per
    training batch the rank saw: the ranks must see different data for "weights equal across
    ranks" to prove that gradients were all-reduced), ``world_size``, ``global_step``,
    ``val_acc`` and ``metrics`` (this rank's ``trainer.callback_metrics``).
    """

    def __init__(self, out: str) -> None:
        self.out = out
        self.init: dict = {}
        self.fingerprints: list[float] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            self.init = snapshot(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        x, y = batch[0], batch[1]
        self.fingerprints.append(float(x.double().sum() + 1000.0 * y.double().sum()))

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        out = Path(self.out)
        out.mkdir(parents=True, exist_ok=True)
        val_acc = trainer.callback_metrics.get("val/acc")
        state = {
            "init": self.init,
            "final": snapshot(pl_module),
            "fingerprints": self.fingerprints,
            "world_size": trainer.world_size,
            "global_step": trainer.global_step,
            "val_acc": None if val_acc is None else float(val_acc),
            "metrics": {key: float(value) for key, value in trainer.callback_metrics.items()},
        }
        torch.save(state, out / f"rank{trainer.global_rank}.pt")


def build(method: str, alternate: bool) -> L.LightningModule:
    """A tiny ``VanillaKD`` (BatchNorm teacher), ``DeepMutualLearning`` (MLP student, CNN peer) or
    ``BatchedMembers`` (a control and two VanillaKD points of one MLP student, the BatchNorm teacher)."""
    import copy

    from kdlightning import BatchedMembers, DeepMutualLearning, StudentOnly, VanillaKD
    from kdlightning.models import MLP, SmallCNN

    student = MLP(num_classes=10, in_features=64, hidden_sizes=(16,))
    if method == "vanilla":
        teacher = SmallCNN(num_classes=10, channels=(4, 8))
        return VanillaKD(student=student, teacher=teacher, num_classes=10)
    if method == "batched":
        teacher = SmallCNN(num_classes=10, channels=(4, 8))
        members = {"control": StudentOnly(copy.deepcopy(student), 10)}
        for t, a in ((2.0, 0.3), (4.0, 0.8)):
            members[f"kd_T{t:g}_a{a:g}"] = VanillaKD(copy.deepcopy(student), teacher, 10, temperature=t, alpha=a)
        return BatchedMembers(members)
    return DeepMutualLearning(
        student=student,
        peer=SmallCNN(num_classes=10, channels=(4, 8)),
        num_classes=10,
        alternate=alternate,
        optimizer=lambda params: torch.optim.Adam(params, lr=1e-2),
        peer_optimizer=lambda params: torch.optim.SGD(params, lr=0.05, momentum=0.9),
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--method", choices=["vanilla", "dml", "batched"], required=True)
    parser.add_argument("--alternate", type=int, default=1)
    parser.add_argument("--strategy", default="ddp")
    parser.add_argument("--out", required=True)
    parser.add_argument("--batches", type=int, default=4)
    args = parser.parse_args()

    warnings.filterwarnings("ignore")
    from kdlightning.data import DigitsDataModule
    from kdlightning.trainers import quiet_trainer

    torch.set_num_threads(1)
    L.seed_everything(0, verbose=False)
    trainer = quiet_trainer(
        1,
        [RankStateSaver(args.out)],
        accelerator="cpu",
        devices=2,
        strategy=args.strategy,
        limit_train_batches=args.batches,
        limit_val_batches=2,
    )
    trainer.fit(build(args.method, bool(args.alternate)), datamodule=DigitsDataModule(batch_size=32))
    print(f"rank {trainer.global_rank} (pid {os.getpid()}) done", flush=True)


if __name__ == "__main__":
    main()
