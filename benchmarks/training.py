"""Training-speed figures of SPEC §8, measured as ratios in one run.

On Fashion-MNIST (a CNN teacher, a smaller CNN student) and on a pair of small BERT-style
transformers (token ids, the same data in every run), it times steady-state training epochs of
``StudentOnly``, ``VanillaKD`` with and without the teacher-output cache, a plain hand-written
PyTorch loop doing the same uncached KD, and ``DeepMutualLearning`` steps, and prints:

- cached KD epoch ÷ StudentOnly epoch (target ≤ 1.10);
- uncached KD epoch ÷ StudentOnly epoch, beside its bound 1 + teacher forward ÷ student epoch + 5%
  (the teacher's forwards timed inside that KD epoch; also timed alone, for reference);
- DML step ÷ (2 × StudentOnly step) (target ≤ 1.10), for ``alternate=False`` and ``alternate=True``;
- kdlightning's uncached KD epoch ÷ the bare loop's (the library's overhead).

Run ``python -m benchmarks.training [--quick] [--json PATH] [--accelerator gpu] [--precision bf16-mixed]``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import logging
import platform
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch import nn

from kdlightning import DeepMutualLearning, DistillationModule, StudentOnly, VanillaKD
from kdlightning.cache import CacheReferenceOutputs
from kdlightning.data import DatasetSource, FashionMNIST, LabelledData, PartitionedDataModule
from kdlightning.losses import distillation_loss
from kdlightning.models import SmallCNN
from kdlightning.trainers import quiet_trainer


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
    epochs: int,
    repeats: int = 2,
    settings: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every timing of one workload (student, teacher, data), the fastest of ``repeats`` interleaved runs."""
    data.prepare_data()
    data.setup("fit")
    torch.manual_seed(0)
    student, teacher = make_student(), make_teacher()
    fresh = lambda: copy.deepcopy(student)  # noqa: E731
    num_classes = data.num_classes
    runs: dict[str, list[float]] = {}

    def fit(model: DistillationModule, callbacks: list | None = None) -> EpochTimer:
        return fit_epochs(model, data, epochs, batches, callbacks, settings)

    def record(key: str, value: float) -> None:
        runs.setdefault(key, []).append(value)

    # Every configuration runs `repeats` times, interleaved, and keeps its fastest: on a shared
    # machine the slowest runs measure the neighbours, not the code.
    for _ in range(repeats):
        record("only", steady(fit(StudentOnly(fresh(), num_classes))))
        cache = [CacheReferenceOutputs()]
        record(
            "cached",
            steady(fit(VanillaKD(fresh(), copy.deepcopy(teacher), num_classes), cache)),
        )
        timer = fit(VanillaKD(fresh(), Timed(copy.deepcopy(teacher)), num_classes))
        record("uncached", steady(timer))
        record("in_loop", steady_teacher(timer))
        record("forward", teacher_forward_epoch(copy.deepcopy(teacher), data, batches, settings))
        record("bare", bare_loop_epoch(fresh(), copy.deepcopy(teacher), data, batches, settings))
        for alternate in (False, True):
            model = DeepMutualLearning(fresh(), copy.deepcopy(student), num_classes, alternate=alternate)
            record(f"dml_{alternate}", steady(fit(model)))
    best = {key: min(values) for key, values in runs.items()}
    only, cached, uncached, in_loop = best["only"], best["cached"], best["uncached"], best["in_loop"]
    forward, bare, dml = best["forward"], best["bare"], {False: best["dml_False"], True: best["dml_True"]}
    return {
        "workload": name,
        "batches_per_epoch": batches,
        "student_only_epoch_s": only,
        "kd_cached_epoch_s": cached,
        "kd_uncached_epoch_s": uncached,
        "teacher_forward_epoch_s": forward,
        "teacher_forward_in_kd_epoch_s": in_loop,
        "bare_loop_kd_epoch_s": bare,
        "dml_joint_epoch_s": dml[False],
        "dml_alternate_epoch_s": dml[True],
        "kd_cached_over_student": cached / only,
        "kd_uncached_over_student": uncached / only,
        "kd_uncached_bound": 1.0 + in_loop / only + 0.05,
        "kd_uncached_bound_standalone_forward": 1.0 + forward / only + 0.05,
        "dml_over_two_students": dml[False] / (2 * only),
        "dml_alternate_over_two_students": dml[True] / (2 * only),
        "kd_over_bare_loop": uncached / bare,
    }


def workloads(quick: bool) -> list[tuple[str, Callable, Callable, PartitionedDataModule, int]]:
    """(name, student, teacher, data, batches per epoch) of each workload."""
    result = []
    fashion = FashionMNIST()
    if (fashion.root / "train-labels-idx1-ubyte.gz").exists() or (fashion.root / "train-labels-idx1-ubyte").exists():
        batches = 20 if quick else 80
        data = _single_party(Subsample(fashion, _pool(batches, 128)), 128)
        result.append(
            (
                "Fashion-MNIST, SmallCNN(64,128) -> SmallCNN(16,32)",
                lambda: SmallCNN(num_classes=10, channels=(16, 32)),
                lambda: SmallCNN(num_classes=10, channels=(64, 128)),
                data,
                batches,
            )
        )
    batches = 10 if quick else 40
    result.append(
        (
            "tokens, BERT 4x256 -> BERT 2x64",
            lambda: TokenClassifier(hidden=64, layers=2),
            lambda: TokenClassifier(hidden=256, layers=4),
            _single_party(SyntheticTokens(num_samples=_pool(batches, 32)), 32),
            batches,
        )
    )
    return result


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


HEADLINE_KEYS = (
    "kd_cached_over_student",
    "kd_uncached_over_student",
    "kd_uncached_bound",
    "dml_over_two_students",
    "dml_alternate_over_two_students",
    "kd_over_bare_loop",
)
"""The figures :func:`run` reports at the top level (those of the first workload)."""


def run(quick: bool = False, settings: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure every workload; the headline keys are those of the first (Fashion-MNIST when installed).

    ``settings`` are Trainer arguments of every fit (``accelerator``, ``precision``; the CPU by default).
    """
    quiet()
    epochs = 3 if quick else 4
    rows = [measure(name, s, t, d, b, epochs, settings=settings) for name, s, t, d, b in workloads(quick)]
    headline = rows[0]
    device, _ = on_device(settings)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    threads = torch.get_num_threads()
    return {
        "machine": f"{platform.machine()}, {threads} threads, torch {torch.__version__}, {where}{described(settings)}",
        "epochs": epochs,
        "rows": rows,
        **{key: headline[key] for key in HEADLINE_KEYS},
    }


def format_table(figures: dict[str, Any]) -> str:
    """The figures as a Markdown table, one column per workload."""
    rows = figures["rows"]
    lines = [
        f"Training speed ({figures['machine']}; epoch = median batch time of epochs 2..{figures['epochs']} x batches, "
        "best of 2 interleaved runs)",
        "",
        "| figure | target | " + " | ".join(row["workload"] for row in rows) + " |",
        "|---|---|" + "---|" * len(rows),
    ]
    spec = [
        ("StudentOnly epoch (s)", "", "student_only_epoch_s", "{:.2f}"),
        ("VanillaKD cached epoch (s)", "", "kd_cached_epoch_s", "{:.2f}"),
        ("VanillaKD uncached epoch (s)", "", "kd_uncached_epoch_s", "{:.2f}"),
        ("teacher forward, one epoch alone (s)", "", "teacher_forward_epoch_s", "{:.2f}"),
        ("teacher forward inside the uncached KD epoch (s)", "", "teacher_forward_in_kd_epoch_s", "{:.2f}"),
        ("bare PyTorch KD loop epoch (s)", "", "bare_loop_kd_epoch_s", "{:.2f}"),
        ("**cached KD ÷ StudentOnly**", "≤ 1.10", "kd_cached_over_student", "{:.3f}"),
        ("**uncached KD ÷ StudentOnly**", "≤ bound", "kd_uncached_over_student", "{:.3f}"),
        ("bound: 1 + teacher fwd (in KD) ÷ student epoch + 5%", "", "kd_uncached_bound", "{:.3f}"),
        ("same bound with the teacher forward timed alone", "", "kd_uncached_bound_standalone_forward", "{:.3f}"),
        ("**DML step ÷ 2 StudentOnly steps** (alternate=False)", "≤ 1.10", "dml_over_two_students", "{:.3f}"),
        ("DML step ÷ 2 StudentOnly steps (alternate=True)", "", "dml_alternate_over_two_students", "{:.3f}"),
        ("uncached KD ÷ bare PyTorch loop", "", "kd_over_bare_loop", "{:.3f}"),
    ]
    for label, target, key, fmt in spec:
        lines.append(f"| {label} | {target} | " + " | ".join(fmt.format(row[key]) for row in rows) + " |")
    return "\n".join(lines)


def targets_met(figures: dict[str, Any]) -> dict[str, bool]:
    """Each SPEC §8 training target, per workload."""
    met = {}
    for row in figures["rows"]:
        name = row["workload"].split(",")[0]
        met[f"{name}: cached KD <= 1.10"] = row["kd_cached_over_student"] <= 1.10
        met[f"{name}: uncached KD <= bound"] = row["kd_uncached_over_student"] <= row["kd_uncached_bound"]
        met[f"{name}: DML <= 1.10"] = row["dml_over_two_students"] <= 1.10
    return met


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
    print(format_table(figures))
    met = targets_met(figures)
    print("\ntargets met: " + ", ".join(f"{name}: {'yes' if ok else 'NO'}" for name, ok in met.items()))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0 if all(met.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
