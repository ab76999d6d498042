"""Training-speed figures of SPEC §8, each a ratio of units timed in one run (see :mod:`benchmarks.measure`).

On Fashion-MNIST (a CNN teacher, a smaller CNN student) and on a pair of small BERT-style transformers
(token ids, the same data in every run), a unit is one training epoch, the StudentOnly epoch about 0.8 s long:
StudentOnly; VanillaKD reading the teacher's outputs from a cache filled before the rounds; VanillaKD running
its teacher, whose forwards are timed too; DML. A unit is done as :data:`SLICES` fits of a slice of the
epoch's batches, each slice timed as its median batch times its batches (no set-up, validation or epoch
boundary), and a round runs one slice of every unit in turn, :data:`SLICES` times over: a slow patch of the
machine falls on every unit of the round. The rounds, 5 (``--quick``) or 9, follow an untimed warm-up, and each
figure is the median of its per-round ratios with a 95% bootstrap interval and a verdict:

- cached KD epoch ÷ StudentOnly epoch (target ≤ 1.10);
- (uncached KD epoch − its teacher forwards) ÷ StudentOnly epoch, the forwards taken off batch by batch
  (target ≤ 1.05: the uncached epoch within 1 + teacher forward ÷ student epoch + 5%);
- DML epoch ÷ 2 StudentOnly epochs (target ≤ 1.10);
- without ``--quick``, for reference: DML alternating its networks, and uncached KD ÷ a bare PyTorch loop
  doing the same KD (the library's overhead).

Run ``python -m benchmarks.training [--quick] [--json PATH] [--accelerator gpu] [--precision bf16-mixed]``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import logging
import math
import platform
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from benchmarks.measure import FULL_REPEATS, MIN_REPEATS, interleave, paired, report, verdicts
from kdlightning import DeepMutualLearning, DistillationModule, StudentOnly, VanillaKD
from kdlightning.cache import CacheReferenceOutputs
from kdlightning.data import DatasetSource, FashionMNIST, LabelledData, PartitionedDataModule
from kdlightning.losses import distillation_loss
from kdlightning.models import SmallCNN
from kdlightning.trainers import quiet_trainer

SLICES = 3
"""Fits a unit is done in, one after another unit's (see :func:`benchmarks.measure.interleave`)."""


class Timed(nn.Module):
    """Wraps a network and accumulates the wall time of its forward passes."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.seconds = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.network(x)
        self.seconds += time.perf_counter() - start
        return out


class EpochTimer(L.Callback):
    """Wall time of every training batch (optimizer steps included) and of a timed teacher's forwards in it.

    Figures are medians over the batches of the steady epochs, times the batches of an epoch: robust
    to the noise of a shared machine, and free of validation and epoch-boundary costs.
    """

    def __init__(self, teacher: Timed | None = None) -> None:
        self.teacher = teacher
        self.batches: list[list[float]] = []
        self.teacher_batches: list[list[float]] = []
        self._start = self._teacher_start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.batches.append([])
        self.teacher_batches.append([])

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._start = time.perf_counter()
        self._teacher_start = self.teacher.seconds if self.teacher is not None else 0.0

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self.batches[-1].append(time.perf_counter() - self._start)
        if self.teacher is not None:
            self.teacher_batches[-1].append(self.teacher.seconds - self._teacher_start)


class SyntheticTokens(DatasetSource):
    """Token-id sequences whose class is set by a few marker tokens: a text task for BERT-style models."""

    def __init__(self, num_samples: int, length: int = 32, vocab: int = 500, num_classes: int = 4) -> None:
        self.num_samples, self.length, self.vocab, self.num_classes = num_samples, length, vocab, num_classes

    def load(self) -> LabelledData:
        rng = np.random.default_rng(0)
        n = self.num_samples + 512
        labels = rng.integers(0, self.num_classes, n)
        tokens = rng.integers(self.num_classes + 1, self.vocab, (n, self.length))
        tokens[:, 1:4] = labels[:, None] + 1  # marker tokens
        tokens[:, 0] = 0  # [CLS]
        return LabelledData(tokens[512:], labels[512:], tokens[:512], labels[:512], num_classes=self.num_classes)


class Subsample(DatasetSource):
    """The first ``num_samples`` training samples of another source (a full epoch then sees each once)."""

    def __init__(self, source: DatasetSource, num_samples: int) -> None:
        self.source, self.num_samples = source, num_samples

    def load(self) -> LabelledData:
        data = self.source.load()
        n = self.num_samples
        return LabelledData(
            data.train_inputs[:n], data.train_labels[:n], data.test_inputs, data.test_labels, data.num_classes
        )


class TokenClassifier(nn.Module):
    """A Hugging Face sequence classifier called on token ids alone."""

    def __init__(self, hidden: int, layers: int, vocab: int = 500, num_classes: int = 4, length: int = 32) -> None:
        super().__init__()
        from transformers import BertConfig, BertForSequenceClassification

        config = BertConfig(
            vocab_size=vocab,
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=max(1, hidden // 32),
            intermediate_size=4 * hidden,
            max_position_embeddings=length,
            num_labels=num_classes,
        )
        self.model = BertForSequenceClassification(config)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids).logits


def quiet() -> None:
    warnings.filterwarnings("ignore", message=r".*(module\(s\) in eval mode|does not have many workers|LeafSpec).*")
    warnings.filterwarnings("ignore", category=UserWarning, module="lightning")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)


def fit_epochs(
    model: DistillationModule,
    data: PartitionedDataModule,
    epochs: int,
    batches: int,
    callbacks: list | None = None,
    settings: dict[str, Any] | None = None,
) -> EpochTimer:
    """Train ``model`` for ``epochs`` epochs (of ``batches`` batches: the whole data set); return the epoch timer.

    ``settings`` are Trainer arguments (``accelerator``, ``precision``); the accelerator defaults to the CPU.
    """
    teacher = getattr(model, "teacher", None)
    timer = EpochTimer(teacher if isinstance(teacher, Timed) else None)
    trainer = quiet_trainer(
        epochs,
        [timer, *(callbacks or [])],
        **{"accelerator": "cpu", **(settings or {})},
        limit_train_batches=batches,
        limit_val_batches=0,
    )
    trainer.fit(model, datamodule=data)
    return timer


def steady(timer: EpochTimer, skip: int = 1) -> float:
    """Epoch time: the median batch time after the first ``skip`` epochs (warm-up, cache filling) × batches."""
    batches = [t for epoch in timer.batches[skip:] for t in epoch]
    return statistics.median(batches) * len(timer.batches[-1])


def steady_teacher(timer: EpochTimer, skip: int = 1) -> float:
    """The teacher's forward time per epoch, from the median per batch after the first ``skip`` epochs."""
    batches = [t for epoch in timer.teacher_batches[skip:] for t in epoch]
    return statistics.median(batches) * len(timer.teacher_batches[-1])


def steady_without_teacher(timer: EpochTimer, skip: int = 1) -> float:
    """Epoch time less the teacher's forwards, batch by batch: the median of (batch - its forwards) × batches.

    Taken within each batch, the difference is free of the teacher's own jitter, which a difference of two
    epoch figures would carry whole.
    """
    pairs = zip(timer.batches[skip:], timer.teacher_batches[skip:], strict=True)
    rest = [total - teacher for batch, forwards in pairs for total, teacher in zip(batch, forwards, strict=True)]
    return statistics.median(rest) * len(timer.batches[-1])


def on_device(settings: dict[str, Any] | None) -> tuple[torch.device, Any]:
    """The device and the autocast context a hand-written loop uses to match the Trainer ``settings``."""
    accelerator = (settings or {}).get("accelerator", "cpu")
    device = torch.device("cuda" if accelerator in ("gpu", "cuda") else "cpu")
    precision = str((settings or {}).get("precision", "32-true"))
    if precision.startswith("bf16") or precision.startswith("16"):
        dtype = torch.bfloat16 if precision.startswith("bf16") else torch.float16
        return device, lambda: torch.autocast(device.type, dtype=dtype)
    return device, contextlib.nullcontext


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def teacher_forward_epoch(
    teacher: nn.Module, data: PartitionedDataModule, batches: int, settings: dict[str, Any] | None = None
) -> float:
    """Seconds for the teacher's forward passes over one epoch of training batches."""
    device, autocast = on_device(settings)
    teacher.to(device).eval()
    loader = data.train_dataloader()
    start = time.perf_counter()
    with torch.no_grad(), autocast():
        for i, (x, _, _) in enumerate(loader):
            if i == batches:
                break
            teacher(x.to(device))
    _synchronize(device)
    return time.perf_counter() - start


def bare_loop_epoch(
    student: nn.Module,
    teacher: nn.Module,
    data: PartitionedDataModule,
    batches: int,
    settings: dict[str, Any] | None = None,
) -> float:
    """The same uncached vanilla KD epoch as a hand-written PyTorch loop (what a user writes alone)."""
    device, autocast = on_device(settings)
    student.to(device)
    teacher.to(device)
    optimizer = torch.optim.Adam(student.parameters(), lr=1e-3)
    teacher.eval()
    student.train()
    times = []
    for _ in range(2):
        start = time.perf_counter()
        for i, (x, y, _) in enumerate(data.train_dataloader()):
            if i == batches:
                break
            x, y = x.to(device), y.to(device)
            with autocast():
                with torch.no_grad():
                    target = teacher(x)
                loss = distillation_loss(student(x), target, y, 4.0, 0.5)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        _synchronize(device)
        times.append(time.perf_counter() - start)
    return times[-1]


def measure(
    name: str,
    make_student: Callable[[], nn.Module],
    make_teacher: Callable[[], nn.Module],
    data: PartitionedDataModule,
    batches: int,
    repeats: int,
    full: bool,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every figure of one workload (student, teacher, data): its units interleaved over ``repeats`` rounds.

    A unit is one training epoch of ``batches`` batches in a fit of its own, timed as its median batch times its
    batches (no set-up, validation or epoch boundary, and no single slow batch: a garbage collection, a scheduler
    hiccup): StudentOnly, VanillaKD reading the teacher's outputs from a cache
    filled before the rounds, VanillaKD running the teacher (whose forwards in that epoch are timed too) and
    DML; with ``full``, also DML alternating its networks and a bare PyTorch loop doing the uncached KD.
    """
    data.prepare_data()
    data.setup("fit")
    torch.manual_seed(0)
    student, teacher = make_student(), make_teacher()
    per_slice = math.ceil(batches / SLICES)
    fresh = lambda: copy.deepcopy(student)  # noqa: E731
    num_classes = data.num_classes
    forwards: list[float] = []  # the uncached KD slices' teacher forwards
    rests: list[float] = []  # and their batches less those forwards

    with tempfile.TemporaryDirectory(prefix="kdl-bench-cache-") as cache_dir:

        def epoch(model: DistillationModule, callbacks: list | None = None, length: int = per_slice) -> float:
            timer = fit_epochs(model, data, 1, length, callbacks, settings)
            if timer.teacher_batches[-1] and isinstance(getattr(model, "teacher", None), Timed):
                forwards.append(steady_teacher(timer, skip=0))
                rests.append(steady_without_teacher(timer, skip=0))
            return steady(timer, skip=0)

        def cached(length: int = per_slice) -> float:
            model = VanillaKD(fresh(), copy.deepcopy(teacher), num_classes)
            return epoch(model, [CacheReferenceOutputs(cache_dir)], length)

        units: dict[str, Callable[[], float]] = {
            "student_only": lambda: epoch(StudentOnly(fresh(), num_classes)),
            "kd_cached": cached,
            "kd_uncached": lambda: epoch(VanillaKD(fresh(), Timed(copy.deepcopy(teacher)), num_classes)),
            "dml": lambda: epoch(DeepMutualLearning(fresh(), copy.deepcopy(student), num_classes)),
        }
        if full:
            units["dml_alternate"] = lambda: epoch(
                DeepMutualLearning(fresh(), copy.deepcopy(student), num_classes, alternate=True)
            )
            units["bare_loop"] = lambda: bare_loop_epoch(fresh(), copy.deepcopy(teacher), data, per_slice, settings)
        cached(batches)  # fills the cache on disk for every sample: the rounds' cached slices read it
        fit_epochs(DeepMutualLearning(fresh(), copy.deepcopy(student), num_classes), data, 1, 5, None, settings)
        forwards.clear()
        rests.clear()
        seconds = interleave(units, repeats, SLICES)
    forwards, rests = ([sum(per[i : i + SLICES]) for i in range(0, len(per), SLICES)] for per in (forwards, rests))
    only = seconds["student_only"]
    figures = [
        paired("cached KD epoch ÷ StudentOnly epoch", seconds["kd_cached"], only, target=1.10),
        paired(
            "(uncached KD epoch - its teacher forwards) ÷ StudentOnly epoch",
            rests,
            only,
            target=1.05,
        ),
        paired("DML epoch ÷ 2 StudentOnly epochs", seconds["dml"], only, target=1.10, scale=0.5),
        paired("uncached KD epoch ÷ StudentOnly epoch", seconds["kd_uncached"], only),
        paired(
            "its bound: 1 + teacher forwards ÷ StudentOnly epoch + 5%",
            [1.05 * o + f for o, f in zip(only, forwards, strict=True)],
            only,
        ),
    ]
    if full:
        figures.append(
            paired("DML (alternate) epoch ÷ 2 StudentOnly epochs", seconds["dml_alternate"], only, scale=0.5)
        )
        figures.append(
            paired("uncached KD epoch ÷ bare PyTorch loop epoch", seconds["kd_uncached"], seconds["bare_loop"])
        )
    return {
        "workload": name,
        "batches_per_epoch": batches,
        "seconds": {**seconds, "teacher_forwards_in_kd": forwards, "kd_uncached_less_forwards": rests},
        "figures": {figure.name: figure for figure in figures},
    }


def workloads(unit_seconds: float) -> list[tuple[str, Callable, Callable, PartitionedDataModule, int]]:
    """(name, student, teacher, data, batches per epoch) of each workload, its StudentOnly epoch ``unit_seconds`` long.

    The batches per epoch come from a short calibration fit of the student (its median batch time).
    """
    result = []
    fashion = FashionMNIST()
    if (fashion.root / "train-labels-idx1-ubyte.gz").exists() or (fashion.root / "train-labels-idx1-ubyte").exists():
        student = lambda: SmallCNN(num_classes=10, channels=(16, 32))  # noqa: E731
        batches = _calibrated(student, lambda n: _single_party(Subsample(fashion, _pool(n, 128)), 128), unit_seconds)
        data = _single_party(Subsample(fashion, _pool(batches, 128)), 128)
        teacher = lambda: SmallCNN(num_classes=10, channels=(64, 128))  # noqa: E731
        result.append(("Fashion-MNIST, SmallCNN(64,128) -> SmallCNN(16,32)", student, teacher, data, batches))
    student = lambda: TokenClassifier(hidden=64, layers=2)  # noqa: E731
    tokens = lambda n: _single_party(SyntheticTokens(num_samples=_pool(n, 32)), 32)  # noqa: E731
    batches = _calibrated(student, tokens, unit_seconds)
    teacher = lambda: TokenClassifier(hidden=256, layers=4)  # noqa: E731
    result.append(("tokens, BERT 4x256 -> BERT 2x64", student, teacher, tokens(batches), batches))
    return result


def _calibrated(student: Callable[[], nn.Module], data: Callable[[int], PartitionedDataModule], seconds: float) -> int:
    """Batches whose StudentOnly epoch lasts about ``seconds``: from the median batch of a short fit (10 batches)."""
    probe = data(10)
    probe.prepare_data()
    probe.setup("fit")
    timer = fit_epochs(StudentOnly(student(), probe.num_classes), probe, 2, 10)
    per_batch = statistics.median(timer.batches[-1])
    return max(10, math.ceil(seconds / per_batch))


VAL_FRACTION = 0.02


def _pool(batches: int, batch_size: int) -> int:
    """Pool size whose training split (after the validation hold-out) is exactly ``batches`` full batches.

    A leftover partial batch would be left out of a different sample each epoch (the limit on
    batches per epoch), and the batch holding a never-seen sample would miss the cache.
    """
    pool = batches * batch_size
    while pool - round(VAL_FRACTION * pool) < batches * batch_size:
        pool += 1
    return pool


def _single_party(source: DatasetSource, batch_size: int) -> PartitionedDataModule:
    return PartitionedDataModule(dataset=source, num_parties=1, batch_size=batch_size, val_fraction=VAL_FRACTION)


def run(quick: bool = False, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure every workload; the headline figures are the first's (Fashion-MNIST when installed).

    Args:
        quick: 5 rounds of the three targets' units; else 9 rounds, with the reference units too (DML alternating,
            a bare loop). A StudentOnly epoch lasts about 0.8 s either way.
        settings: Trainer arguments of every fit (``accelerator``, ``precision``; the CPU by default).
    """
    quiet()
    unit, repeats = 0.8, MIN_REPEATS if quick else FULL_REPEATS
    rows = [measure(name, s, t, d, b, repeats, not quick, settings) for name, s, t, d, b in workloads(unit)]
    device, _ = on_device(settings)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    threads = torch.get_num_threads()
    return {
        "machine": f"{platform.machine()}, {threads} threads, torch {torch.__version__}, {where}{described(settings)}",
        "unit_seconds": unit,
        "repeats": repeats,
        "rows": rows,
    }


def format_table(figures: dict[str, Any]) -> str:
    """Every workload's figures, each with its interval, spread and verdict."""
    lines = [
        f"Training speed ({figures['machine']}; a unit is one epoch in a fit of its own, the StudentOnly one about "
        f"{figures['unit_seconds']:.1f} s; {figures['repeats']} interleaved rounds; median [95% bootstrap interval])",
    ]
    for row in figures["rows"]:
        lines.append(f"- {row['workload']}, {row['batches_per_epoch']} batches an epoch:")
        lines += [f"  - {name}: {figure}" for name, figure in row["figures"].items()]
    return "\n".join(lines)


def targets_met(figures: dict[str, Any]) -> dict[str, str]:
    """Each SPEC §8 training target's verdict, per workload."""
    return verdicts(figures["rows"], lambda row: row["workload"].split(",")[0])


def described(settings: dict[str, Any] | None) -> str:
    """``settings`` as ``, key=value`` pairs for a table's title."""
    return "".join(f", {key}={value}" for key, value in (settings or {}).items())


def trainer_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The Trainer arguments ``--accelerator`` and ``--precision`` ask for (none when unset)."""
    return {key: value for key in ("accelerator", "precision") if (value := getattr(args, key)) is not None}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer batches and epochs")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument("--accelerator", help="Trainer accelerator of every fit (default: cpu), e.g. gpu")
    parser.add_argument("--precision", help="Trainer precision of every fit, e.g. bf16-mixed (default: 32-true)")
    args = parser.parse_args(argv)
    figures = run(quick=args.quick, settings=trainer_settings(args))
    report(figures, format_table, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
