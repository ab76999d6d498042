"""Train a control, vanilla KD at four (temperature, alpha) points and DP-KD as batched members: one fit.

Every member continues the same pre-trained MLP student on scikit-learn's bundled digits, against one small
CNN teacher, each with its own objective; the teacher runs once per batch for all of them. Each member gets
the weights its own separate fit would give it. Prints every member's validation and test accuracy and the
best member on validation. 14 seconds on 2 CPU cores, pre-training included, with no download::

    python examples/batched_members.py [--epochs 10] [--seed 0]
"""

from __future__ import annotations

import argparse
import copy

import lightning as L

from kdlightning import BatchedMembers, DataPartitioningKD, StudentOnly, VanillaKD
from kdlightning.data import DigitsDataModule
from kdlightning.models import MLP, SmallCNN
from kdlightning.trainers import quiet, quiet_trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10, help="epochs of every member")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    L.seed_everything(args.seed, verbose=False)
    data = DigitsDataModule(seed=args.seed)
    student, teacher = MLP(in_features=64, hidden_sizes=[32]), SmallCNN(channels=[16, 32])
    with quiet():
        for network in (student, teacher):  # each party's pre-training
            quiet_trainer(15, accelerator="cpu").fit(StudentOnly(network, 10), datamodule=data)
        members = {
            "control": StudentOnly(copy.deepcopy(student), 10),
            **{
                f"kd_T{t:g}_a{a:g}": VanillaKD(copy.deepcopy(student), teacher, 10, temperature=t, alpha=a)
                for t in (1.0, 4.0)
                for a in (0.25, 0.75)
            },
            "dpkd": DataPartitioningKD(copy.deepcopy(student), teacher, 10),
        }
        batched = BatchedMembers(members)
        trainer = quiet_trainer(args.epochs, accelerator="cpu")
        trainer.fit(batched, datamodule=data)
        tested = trainer.test(batched, datamodule=data, verbose=False)[0]
    validation = batched.validation_history[-1]
    print(f"{'member':<14}{'val acc':>9}{'test acc':>10}")
    for name in batched.member_names:
        print(f"{name:<14}{validation[name][0]:>9.3f}{tested[f'test/acc_{name}']:>10.3f}")
    best = max(batched.member_names, key=lambda name: validation[name][0])
    print(f"best on validation: {best}; its network: batched.member_network({best!r})")


if __name__ == "__main__":
    main()
