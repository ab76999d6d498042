"""Pre-train five parties' MLPs on their own digits, Dirichlet(0.5) shares, in one fit (OwnDataMembers).

Each party's network trains on its own data for the same epochs as its own fit would, in one Lightning fit for
all five (:class:`~kdlightning.methods.OwnDataMembers` on a :class:`~kdlightning.data.MemberStreams`). With
``--check``, each is also pre-trained in its own fit, and the largest weight difference between the two is
printed (float32 noise). A few seconds on 2 CPU cores, with no download::

    python examples/pretrain_parties.py [--epochs 30] [--seed 0] [--check]
"""

from __future__ import annotations

import argparse
import copy

import lightning as L

from kdlightning import OwnDataMembers, StudentOnly
from kdlightning.data import Digits, DirichletPartitioner, MemberStreams, PartitionedDataModule
from kdlightning.models import MLP
from kdlightning.trainers import quiet, quiet_trainer

PARTIES = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30, help="epochs of every party's pre-training")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--check", action="store_true", help="also pre-train each party in its own fit")
    args = parser.parse_args()
    source = Digits()
    data = [
        PartitionedDataModule(
            dataset=source, partitioner=DirichletPartitioner(0.5), num_parties=PARTIES, partition_id=k, seed=args.seed
        )
        for k in range(PARTIES)
    ]
    L.seed_everything(args.seed, verbose=False)
    networks = [MLP(in_features=64, hidden_sizes=[32]) for _ in range(PARTIES)]
    parties = OwnDataMembers({f"party{k}": StudentOnly(copy.deepcopy(n), 10) for k, n in enumerate(networks)})
    with quiet():
        quiet_trainer(1, accelerator="cpu").fit(parties, datamodule=MemberStreams(data, args.epochs))
        print(
            f"{'party':<8}{'samples':>8}{'test acc':>10}" + (f"{'max |Δw| to its own fit':>26}" if args.check else "")
        )
        for k, datamodule in enumerate(data):
            trained = StudentOnly(parties.member_network(f"party{k}"), 10)
            accuracy = quiet_trainer(1, accelerator="cpu").test(trained, datamodule=datamodule, verbose=False)[0]
            line = f"party{k:<3}{len(datamodule.train_set):>8}{accuracy['test/acc']:>10.3f}"
            if args.check:
                alone = StudentOnly(copy.deepcopy(networks[k]), 10)
                quiet_trainer(args.epochs, accelerator="cpu", limit_val_batches=0).fit(alone, datamodule=datamodule)
                together = trained.student.state_dict()
                gap = max(
                    (together[key] - value).abs().max().item() for key, value in alone.student.state_dict().items()
                )
                line += f"{gap:>26.2e}"
            print(line)


if __name__ == "__main__":
    main()
