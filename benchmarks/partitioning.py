"""Partitioning speed: kdlightning's partitioners against flwr-datasets', side by side (SPEC §8).

    python -m benchmarks.partitioning            # 9 rounds, with flwr (its venv created on first use)
    python -m benchmarks.partitioning --quick    # 5 rounds of the same units
    python -m benchmarks.partitioning --no-flwr  # our figures only

1,000,000 labels (10 classes, uniform) are split into 1,000 parties by our ``dirichlet``
(alpha 0.5) and ``label_skew`` (2 classes per party), and by flwr-datasets'
``DirichletPartitioner`` and ``PathologicalPartitioner`` on the same labels. flwr-datasets 0.6.1
needs ``datasets<5`` while the project pins datasets 5.2.0, so flwr runs in its own virtualenv,
``.venv-flwr`` (created from ``benchmarks/requirements-flwr.txt`` on first use unless
``--no-install``), in a subprocess (``benchmarks/flwr_partition.py``) that reads the labels from a
temporary ``.npy`` and times only the partitioning; see that file for exactly what is timed.
If flwr cannot be run, our figures are still printed with the reason flwr was skipped.

A full run (not ``--quick``) also times our ``shards``, ``sized`` (the linear rule) and ``inner_dirichlet``
against flwr-datasets' ``ShardPartitioner``, ``LinearPartitioner`` and ``InnerDirichletPartitioner``, and our
``natural`` (one party per id, and ids grouped) and ``feature_skew`` against its ``NaturalIdPartitioner``,
``GroupedNaturalIdPartitioner`` and ``ContinuousPartitioner``, on a natural id and a real-valued property per label.

The units run interleaved over 5 (``--quick``) or 9 rounds (see :mod:`benchmarks.measure`): ours, each
partitioner called several times (about a second); flwr, one subprocess kept for the whole run that times,
each round, several index computations of each of its partitioners (as many as fill about a second, each
partitioner its own count; its start and the dataset's build untimed). The figures: our
Dirichlet's seconds per call (target < 1 s) and flwr's seconds ÷ ours per call for every partitioner (target:
faster, ≥ 1), each a median over the rounds with a 95% bootstrap interval and a verdict.

Settings, chosen so that both sides do the same job in one Dirichlet draw:

- ours: ``dirichlet(labels, 1000, alpha=0.5, seed=0, min_size=0)`` and
  ``label_skew(labels, 1000, classes_per_party=2, seed=0)``, each returning one sorted int64
  index array per party (validation, the within-class shuffle and the per-party sort included);
- flwr: ``DirichletPartitioner(num_partitions=1000, partition_by="label", alpha=0.5,
  min_partition_size=0, self_balancing=False, shuffle=False, seed=0)`` and
  ``PathologicalPartitioner(num_partitions=1000, partition_by="label", num_classes_per_partition=2,
  class_assignment_mode="first-deterministic", shuffle=False, seed=0)`` ("first-deterministic",
  like ours, gives every class to at least one party; ``shuffle=False`` spares flwr a pass);
- full run, ours: ``shards(labels, 1000, shards_per_party=2, seed=0)`` (2,000 shards of 500, none left over),
  ``sized(labels, 1000, "linear", seed=0)`` and, on the first 100,000 labels,
  ``inner_dirichlet(labels[:100_000], 100, sizes=[1000] * 100, alpha=0.5, seed=0)``;
- full run, flwr: ``ShardPartitioner(num_partitions=1000, partition_by="label", num_shards_per_partition=2,
  shuffle=False, seed=0)`` (the same 2,000 shards of 500; flwr sorts the dataset by label, a step of its job),
  ``LinearPartitioner(num_partitions=1000)`` (the same sizes; flwr hands out contiguous runs where ours draws the
  samples at random and sorts them) and ``InnerDirichletPartitioner(partition_sizes=[1000] * 100,
  partition_by="label", alpha=0.5, shuffle=False, seed=0)`` on the same 100,000 labels. Inner Dirichlet runs on
  fewer labels because flwr's draws one sample at a time in Python: seconds for 100,000 labels, minutes for
  1,000,000;
- full run, both, on one natural id per label (1,000 ids, uniform) and one property per label (uniform in [0, 1)):
  ours ``natural(ids)`` (a party per id), ``natural(ids, 100, seed=0, balance="values")`` (10 ids a party) and
  ``feature_skew(property, 1000, strictness=0.5, seed=0)``; flwr ``NaturalIdPartitioner(partition_by="natural_id")``,
  ``GroupedNaturalIdPartitioner(partition_by="natural_id", group_size=10, mode="allow-bigger")`` (flwr groups the
  ids in their order of first appearance, ours deals them at random) and ``ContinuousPartitioner(num_partitions=1000,
  partition_by="property", strictness=0.5, shuffle=False, seed=0)`` (flwr blends the standardised property with
  Gaussian noise, ours the normalised rank with uniform noise; both sort once and cut into equal runs).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.measure import FULL_REPEATS, MIN_REPEATS, Figure, as_json, interleave, paired, timed
from kdlightning.data.feature_skew import feature_skew
from kdlightning.data.natural import natural
from kdlightning.data.partition_sizes import inner_dirichlet, sized
from kdlightning.data.partitioners import dirichlet, iid, label_skew, quantity_skew
from kdlightning.data.shards import shards

ROOT = Path(__file__).resolve().parents[1]
FLWR_VENV = ROOT / ".venv-flwr"
FLWR_REQUIREMENTS = Path(__file__).resolve().parent / "requirements-flwr.txt"
FLWR_SCRIPT = Path(__file__).resolve().parent / "flwr_partition.py"

NUM_LABELS = 1_000_000
NUM_CLASSES = 10
NUM_PARTIES = 1000
ALPHA = 0.5
CLASSES_PER_PARTY = 2
BETA = 0.5
SHARDS_PER_PARTY = 2
INNER_LABELS = 100_000
"""Labels inner Dirichlet splits (the first of the 1,000,000): flwr's one-sample-at-a-time loop is slow."""
INNER_PARTIES = 100
NUM_IDS = 1000
"""Distinct natural ids among the labels: one party each (and 10 a party when grouped)."""
GROUP_SIZE = 10
STRICTNESS = 0.5
SEED = 0
TARGET_S = 1.0  # SPEC §8: Dirichlet of 1,000,000 labels into 1,000 parties in under a second
UNIT_S = 1.0
"""Seconds of one timed unit: as many calls of a partitioner as that takes."""


def flwr_python(install: bool) -> tuple[Path | None, str]:
    """The ``.venv-flwr`` interpreter if flwr-datasets imports there (creating the venv if allowed).

    Returns:
        The interpreter, or ``None`` and the reason flwr is skipped.
    """
    python = FLWR_VENV / "bin" / "python"
    probe = [str(python), "-c", "import flwr_datasets, datasets"]
    if python.exists() and subprocess.run(probe, capture_output=True).returncode == 0:
        return python, ""
    if not install:
        return None, f"{FLWR_VENV} has no working flwr-datasets and --no-install was given"
    print(f"creating {FLWR_VENV.name} from {FLWR_REQUIREMENTS.relative_to(ROOT)} (once) ...", flush=True)
    steps = [
        [sys.executable, "-m", "venv", str(FLWR_VENV)],
        [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", "-r", str(FLWR_REQUIREMENTS)],
    ]
    for step in steps:
        done = subprocess.run(step, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
            return None, f"`{' '.join(step[-4:])}` failed: {' / '.join(tail)}"
    # Keep git from listing the venv even where the repository's .gitignore does not name it.
    (FLWR_VENV / ".gitignore").write_text("*\n")
    if subprocess.run(probe, capture_output=True).returncode != 0:
        return None, f"flwr-datasets does not import in {FLWR_VENV}"
    return python, ""


class FlwrUnits:
    """flwr-datasets in its venv, one subprocess for all the rounds: each call times one unit there.

    The subprocess reads the labels and builds its dataset once (untimed), then times ``calls`` index computations
    of each of its partitioners per call (``flwr_partition.py --serve``); closing it gives its settings and
    checks.
    """

    def __init__(self, python: Path, labels_path: Path, calls: int, extra: Sequence[str] = ()) -> None:
        command = [
            str(python),
            str(FLWR_SCRIPT),
            f"--labels={labels_path}",
            f"--group-size={GROUP_SIZE}",
            f"--strictness={STRICTNESS}",
            f"--parties={NUM_PARTIES}",
            f"--alpha={ALPHA}",
            f"--classes-per-party={CLASSES_PER_PARTY}",
            f"--shards-per-party={SHARDS_PER_PARTY}",
            f"--inner-samples={INNER_LABELS}",
            f"--inner-parties={INNER_PARTIES}",
            f"--seed={SEED}",
            "--repeats=1",
            f"--calls={calls}",
            "--serve",
            *extra,
        ]
        env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self._read()  # ready

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            tail = (self.process.stderr.read() if self.process.stderr else "").strip().splitlines()[-3:]
            raise RuntimeError(f"flwr_partition.py stopped: {' / '.join(tail)}")
        return json.loads(line)

    def unit(self, calls: int | dict[str, int] | None = None) -> dict[str, float]:
        """One unit's seconds, per partitioner (``dirichlet``, ``label_skew``, ...).

        Args:
            calls: calls of every partitioner, or of each by name; None for the default.
        """
        assert self.process.stdin is not None
        self.process.stdin.write("go\n" if calls is None else f"go {json.dumps(calls)}\n")
        self.process.stdin.flush()
        return self._read()

    def close(self) -> dict[str, Any]:
        """End the subprocess; its closing figures (settings, checks, the reference timings it was asked for)."""
        out, err = self.process.communicate(timeout=900)
        if self.process.returncode != 0:
            raise RuntimeError(f"flwr_partition.py exited with {self.process.returncode}: {err.strip()[-300:]}")
        return json.loads(out.strip().splitlines()[-1])


def columns_for(num_labels: int) -> dict[str, np.ndarray]:
    """A natural id (``NUM_IDS`` of them, uniform) and a real-valued property (uniform in [0, 1)) per label."""
    rng = np.random.default_rng(SEED + 1)
    return {"natural_id": rng.integers(0, NUM_IDS, num_labels), "property": rng.random(num_labels)}


def run(quick: bool = False, flwr: bool = True, install: bool = True) -> dict[str, Any]:
    """Every figure: our partitioners (and flwr-datasets' where it runs) on 1,000,000 labels into 1,000 parties.

    Args:
        quick: 5 rounds (else 9) of the same units; without ``quick``, our other partitioners too, and flwr
            times its default-format dataset and loading every party, once, for reference.
        flwr: Run flwr-datasets side by side.
        install: Create ``.venv-flwr`` if it is missing.
    """
    labels = np.random.default_rng(SEED).integers(0, NUM_CLASSES, NUM_LABELS)
    repeats = MIN_REPEATS if quick else FULL_REPEATS
    ours: dict[str, Callable[[], Any]] = {
        "dirichlet": lambda: dirichlet(labels, NUM_PARTIES, ALPHA, SEED, min_size=0),
        "label_skew": lambda: label_skew(labels, NUM_PARTIES, CLASSES_PER_PARTY, SEED),
    }
    if not quick:  # against flwr's counterparts
        inner_labels, inner_sizes = labels[:INNER_LABELS], [INNER_LABELS // INNER_PARTIES] * INNER_PARTIES
        ours["shards"] = lambda: shards(labels, NUM_PARTIES, SHARDS_PER_PARTY, SEED)
        ours["sized_linear"] = lambda: sized(labels, NUM_PARTIES, "linear", SEED)
        ours["inner_dirichlet"] = lambda: inner_dirichlet(inner_labels, INNER_PARTIES, inner_sizes, ALPHA, SEED)
        columns = columns_for(NUM_LABELS)
        ids, values = columns["natural_id"], columns["property"]
        ours["natural"] = lambda: natural(ids)
        ours["natural_grouped"] = lambda: natural(ids, NUM_IDS // GROUP_SIZE, SEED, balance="values")
        ours["feature_skew"] = lambda: feature_skew(values, NUM_PARTIES, STRICTNESS, SEED)
    if not quick:  # for reference
        ours["iid"] = lambda: iid(labels, NUM_PARTIES, SEED)
        ours["quantity_skew"] = lambda: quantity_skew(labels, NUM_PARTIES, BETA, SEED)
        ours["dirichlet_min_size_1"] = lambda: dirichlet(labels, NUM_PARTIES, ALPHA, SEED)
    calls = {name: max(1, round(UNIT_S / timed(call))) for name, call in ours.items()}
    units: dict[str, Callable[[], float]] = {
        name: (lambda call=call, n=calls[name]: sum(timed(call) for _ in range(n))) for name, call in ours.items()
    }
    python, reason = flwr_python(install) if flwr else (None, "--no-flwr was given")
    flwr_rounds: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        labels_path = Path(tmp) / "labels.npy"
        np.save(labels_path, labels)
        columns_path = Path(tmp) / "columns.npz"
        if not quick:
            np.savez(columns_path, **columns_for(NUM_LABELS))
        flwr_units: FlwrUnits | None = None
        flwr_calls: dict[str, int] = {}  # calls of each flwr partitioner in one unit
        if python is not None:
            reference = ["--default-format", "--load-all", "--more", f"--columns={columns_path}"] if not quick else []
            flwr_units = FlwrUnits(python, labels_path, 1, reference)
            flwr_units.unit()  # a warm-up
            flwr_calls = {name: max(1, round(UNIT_S / seconds)) for name, seconds in flwr_units.unit().items()}

            def flwr_round() -> float:
                assert flwr_units is not None
                flwr_rounds.append(flwr_units.unit(flwr_calls))
                return flwr_rounds[-1]["dirichlet"]

            units["flwr"] = flwr_round
        seconds = interleave(units, repeats)
        flwr_final = flwr_units.close() if flwr_units is not None else None
    each = {name: [value / calls[name] for value in seconds[name]] for name in ours}
    figures = [
        Figure("our dirichlet, seconds a call", tuple(each["dirichlet"]), target=TARGET_S, unit=" s"),
        *(Figure(f"our {name}, seconds a call", tuple(each[name]), unit=" s") for name in ours if name != "dirichlet"),
    ]
    if flwr_rounds:
        for name in flwr_calls:
            theirs = [entry[name] / flwr_calls[name] for entry in flwr_rounds]
            # flwr's LinearPartitioner hands out contiguous runs, a lighter job than ours: no target
            target = None if name == "sized_linear" else 1.0
            figures.append(paired(f"flwr's {name} ÷ ours (speed-up)", theirs, each[name], target=target, at_most=False))
    return {
        "num_labels": NUM_LABELS,
        "num_classes": NUM_CLASSES,
        "num_parties": NUM_PARTIES,
        "repeats": repeats,
        "calls_per_unit": {**calls, **({f"flwr {name}": n for name, n in flwr_calls.items()} if flwr_rounds else {})},
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "seconds": seconds,
        "flwr": flwr_final,
        "flwr_skipped": None if flwr_rounds else reason,
        "figures": {figure.name: figure for figure in figures},
    }


def targets_met(figures: dict[str, Any]) -> dict[str, str]:
    """The partitioning targets' verdicts."""
    return {name: figure.verdict for name, figure in figures["figures"].items() if figure.target is not None}


def format_table(figures: dict[str, Any]) -> str:
    """The figures, each with its interval, spread and verdict, and what flwr ran."""
    lines = [
        f"Partitioning {figures['num_labels']:,} labels ({figures['num_classes']} classes) into "
        f"{figures['num_parties']:,} parties ({figures['repeats']} interleaved rounds; units of "
        f"{figures['calls_per_unit']} calls):",
        *(f"- {name}: {figure}" for name, figure in figures["figures"].items()),
        f"ours: kdlightning.data.partitioners, numpy {figures['numpy']}, Python {figures['python']}, "
        f"{figures['cpus']} CPUs; dirichlet(..., min_size=0) and label_skew(..., classes_per_party=2), seed 0; "
        "each returns one sorted int64 index array per party.",
    ]
    if "shards" in figures["calls_per_unit"]:
        lines.append(
            f"ours too: shards(..., shards_per_party={SHARDS_PER_PARTY}), sized(..., 'linear') and inner_dirichlet on "
            f"the first {INNER_LABELS:,} labels into {INNER_PARTIES} parties of {INNER_LABELS // INNER_PARTIES:,} "
            f"(alpha={ALPHA}); natural on {NUM_IDS:,} ids (a party each, and {GROUP_SIZE} a party by "
            f"balance='values') and feature_skew(..., strictness={STRICTNESS})."
        )
    flwr = figures["flwr"]
    if flwr is None:
        lines.append(f"flwr-datasets skipped: {figures['flwr_skipped']}")
        return "\n".join(lines)
    d, p = flwr["dirichlet"], flwr["label_skew"]

    def settings(entry: dict[str, Any]) -> str:
        return ", ".join(f"{key}={value!r}" for key, value in entry["settings"].items())

    lines += [
        f"flwr: flwr-datasets {flwr['flwr_datasets']} (datasets {flwr['datasets']}, numpy {flwr['numpy']}, "
        f"Python {flwr['python']}) in {FLWR_VENV.name}, one subprocess for the run:",
        *(f"  {entry['class']}({settings(entry)})" for entry in flwr.values() if isinstance(entry, dict)),
        "  flwr = computing every party's indices (flwr does it on first use; triggered by the num_partitions "
        'property, no rows selected) on Dataset.from_dict({"label": labels}).with_format("arrow"), where '
        "flwr's np.array(dataset['label']) is a zero-copy read: flwr's best case.",
        "  With shuffle=False flwr hands each party a contiguous run of each class in dataset order (no random "
        "choice of samples, no sort); ours draws the samples at random and sorts each party's indices.",
        f"  flwr's splits (checked, untimed): dirichlet covers all samples={d['check']['covers_all']}, "
        f"disjoint={d['check']['disjoint']}; pathological covers all={p['check']['covers_all']}, classes per "
        f"party {p['check']['classes_per_party_min']}..{p['check']['classes_per_party_max']}.",
        *(
            f"  flwr's {name} (checked, untimed): covers all samples={flwr[name]['check']['covers_all']}, "
            f"disjoint={flwr[name]['check']['disjoint']}, party sizes {flwr[name]['check']['min_size']}.."
            f"{flwr[name]['check']['max_size']}, classes per party {flwr[name]['check']['classes_per_party_min']}.."
            f"{flwr[name]['check']['classes_per_party_max']}."
            for name in ("shards", "sized_linear", "inner_dirichlet", "natural", "natural_grouped", "feature_skew")
            if name in flwr
        ),
    ]
    if "default_column_s" in flwr:
        reference, rd, rp = flwr, d, p
        lines.append(
            f"  once, for reference: on the default-format Dataset flwr's dirichlet takes "
            f"{rd['index_default_format_s']:.2f} s and its pathological {rp['index_default_format_s']:.2f} s "
            f"(np.array(dataset['label']) alone {reference['default_column_s']:.2f} s); loading every party "
            f"(load_partition x1000) {rd['load_all_s']:.2f} s and {rp['load_all_s']:.2f} s."
        )
        lines += [
            f"  and its {name}: {flwr[name]['index_default_format_s']:.2f} s on the default-format Dataset; loading "
            f"every party {flwr[name]['load_all_s']:.2f} s."
            for name in ("shards", "sized_linear", "inner_dirichlet", "natural", "natural_grouped", "feature_skew")
            if name in flwr
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 rounds (else 9); no flwr reference figures")
    parser.add_argument("--no-flwr", action="store_true", help="skip flwr-datasets")
    parser.add_argument("--no-install", action="store_true", help=f"do not create {FLWR_VENV.name}")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args(argv)
    figures = run(quick=args.quick, flwr=not args.no_flwr, install=not args.no_install)
    print(format_table(figures))
    if args.json:
        print(json.dumps(figures, indent=2, default=as_json))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
