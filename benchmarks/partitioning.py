"""Partitioning speed: kdlightning's partitioners against flwr-datasets', side by side (SPEC §8).

    python -m benchmarks.partitioning            # full run (about a minute with flwr)
    python -m benchmarks.partitioning --quick    # fewer repeats, flwr's best case only
    python -m benchmarks.partitioning --no-flwr  # our figures only

1,000,000 labels (10 classes, uniform) are split into 1,000 parties by our ``dirichlet``
(alpha 0.5) and ``label_skew`` (2 classes per party), and by flwr-datasets'
``DirichletPartitioner`` and ``PathologicalPartitioner`` on the same labels. flwr-datasets 0.6.1
needs ``datasets<5`` while the project pins datasets 5.2.0, so flwr runs in its own virtualenv,
``.venv-flwr`` (created from ``benchmarks/requirements-flwr.txt`` on first use unless
``--no-install``), in a subprocess (``benchmarks/flwr_partition.py``) that reads the labels from a
temporary ``.npy`` and times only the partitioning; see that file for exactly what is timed.
If flwr cannot be run, our figures are still printed with the reason flwr was skipped.

Settings, chosen so that both sides do the same job in one Dirichlet draw:

- ours: ``dirichlet(labels, 1000, alpha=0.5, seed=0, min_size=0)`` and
  ``label_skew(labels, 1000, classes_per_party=2, seed=0)``, each returning one sorted int64
  index array per party (validation, the within-class shuffle and the per-party sort included);
- flwr: ``DirichletPartitioner(num_partitions=1000, partition_by="label", alpha=0.5,
  min_partition_size=0, self_balancing=False, shuffle=False, seed=0)`` and
  ``PathologicalPartitioner(num_partitions=1000, partition_by="label", num_classes_per_partition=2,
  class_assignment_mode="first-deterministic", shuffle=False, seed=0)`` ("first-deterministic",
  like ours, gives every class to at least one party; ``shuffle=False`` spares flwr a pass).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from kdlightning.data.partitioners import dirichlet, iid, label_skew, quantity_skew

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
SEED = 0
TARGET_S = 1.0  # SPEC §8: Dirichlet of 1,000,000 labels into 1,000 parties in under a second


def best_of(repeats: int, fn: Callable[[], Any]) -> float:
    """Best wall time of ``fn()`` over ``repeats`` calls, in seconds."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


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


def run_flwr(labels: np.ndarray, quick: bool, install: bool) -> tuple[dict[str, Any] | None, str]:
    """Time flwr-datasets in its own venv on ``labels``; return its JSON figures or the skip reason."""
    python, reason = flwr_python(install)
    if python is None:
        return None, reason
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "labels.npy"
        np.save(path, labels)
        command = [
            str(python),
            str(FLWR_SCRIPT),
            f"--labels={path}",
            f"--parties={NUM_PARTIES}",
            f"--alpha={ALPHA}",
            f"--classes-per-party={CLASSES_PER_PARTY}",
            f"--seed={SEED}",
            f"--repeats={2 if quick else 3}",
        ]
        if not quick:
            command += ["--default-format", "--load-all"]
        env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-3:]
        return None, f"flwr_partition.py exited with {done.returncode}: {' / '.join(tail)}"
    return json.loads(done.stdout.strip().splitlines()[-1]), ""


def run(quick: bool = False, flwr: bool = True, install: bool = True) -> dict[str, Any]:
    """Time our partitioners (and flwr-datasets' where it runs) on 1,000,000 labels into 1,000 parties.

    Args:
        quick: Fewer repeats; flwr only on its best case (Arrow-formatted dataset, indices only).
        flwr: Run flwr-datasets side by side.
        install: Create ``.venv-flwr`` if it is missing.

    Returns:
        Figures in seconds (``*_s``) and ratios (``*_speedup_vs_flwr*`` = flwr seconds / ours;
        ``None`` where flwr was skipped), plus ``flwr_skipped`` (the reason, or ``None``), the
        settings, and the raw flwr output under ``flwr``.
    """
    labels = np.random.default_rng(SEED).integers(0, NUM_CLASSES, NUM_LABELS)
    repeats = 3 if quick else 7
    ours = {
        "dirichlet": best_of(repeats, lambda: dirichlet(labels, NUM_PARTIES, ALPHA, SEED, min_size=0)),
        "label_skew": best_of(repeats, lambda: label_skew(labels, NUM_PARTIES, CLASSES_PER_PARTY, SEED)),
        "iid": best_of(repeats, lambda: iid(labels, NUM_PARTIES, SEED)),
        "quantity_skew": best_of(repeats, lambda: quantity_skew(labels, NUM_PARTIES, BETA, SEED)),
    }
    ours["dirichlet_min_size_1"] = best_of(repeats, lambda: dirichlet(labels, NUM_PARTIES, ALPHA, SEED))
    figures: dict[str, Any] = {
        "num_labels": NUM_LABELS,
        "num_classes": NUM_CLASSES,
        "num_parties": NUM_PARTIES,
        "repeats": repeats,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        **{f"{name}_1m_1000_s": seconds for name, seconds in ours.items()},
    }
    flwr_figures, reason = run_flwr(labels, quick, install) if flwr else (None, "--no-flwr was given")
    figures["flwr"] = flwr_figures
    figures["flwr_skipped"] = None if flwr_figures is not None else reason
    for name in ("dirichlet", "label_skew"):
        entry = (flwr_figures or {}).get(name, {})
        for suffix, key in (
            ("", "index_s"),
            ("_default_format", "index_default_format_s"),
            ("_load_all", "load_all_s"),
        ):
            seconds = entry.get(key)
            figures[f"flwr_{name}_1m_1000{suffix}_s"] = seconds
            figures[f"{name}_speedup_vs_flwr{suffix}"] = None if seconds is None else seconds / ours[name]
    speedup = figures["dirichlet_speedup_vs_flwr"]
    figures["dirichlet_target_met"] = ours["dirichlet"] < TARGET_S and (speedup is None or speedup > 1.0)
    return figures


def _cell(value: float | None, kind: str) -> str:
    if value is None:
        return "-"
    return f"{value:.1f}x" if kind == "ratio" else f"{value:.3f}"


def format_table(figures: dict[str, Any]) -> str:
    """The figures of :func:`run` as a text table with notes."""
    flwr = figures["flwr"]
    header = ["strategy", "ours", "flwr", "speedup", "flwr default-format", "speedup", "flwr load x1000", "speedup"]
    rows = []
    for name, label in (
        ("dirichlet", f"dirichlet(alpha={ALPHA})"),
        ("label_skew", f"label_skew(k={CLASSES_PER_PARTY})"),
    ):
        rows.append(
            [
                label,
                _cell(figures[f"{name}_1m_1000_s"], "s"),
                _cell(figures[f"flwr_{name}_1m_1000_s"], "s"),
                _cell(figures[f"{name}_speedup_vs_flwr"], "ratio"),
                _cell(figures[f"flwr_{name}_1m_1000_default_format_s"], "s"),
                _cell(figures[f"{name}_speedup_vs_flwr_default_format"], "ratio"),
                _cell(figures[f"flwr_{name}_1m_1000_load_all_s"], "s"),
                _cell(figures[f"{name}_speedup_vs_flwr_load_all"], "ratio"),
            ]
        )
    rows.append(["dirichlet(alpha=0.5, min_size=1)", _cell(figures["dirichlet_min_size_1_1m_1000_s"], "s")] + ["-"] * 6)
    rows.append(["iid", _cell(figures["iid_1m_1000_s"], "s")] + ["-"] * 6)
    rows.append([f"quantity_skew(beta={BETA})", _cell(figures["quantity_skew_1m_1000_s"], "s")] + ["-"] * 6)
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(row: list[str]) -> str:
        cells = (
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        return "  ".join(cells).rstrip()

    if flwr is None:
        repeats_flwr = "flwr skipped"
    elif "default_column_s" in flwr:
        repeats_flwr = f"flwr best of {flwr['repeats']}, default-format and load x1000 once"
    else:
        repeats_flwr = f"flwr best of {flwr['repeats']}"
    lines = [
        f"Partitioning {figures['num_labels']:,} labels ({figures['num_classes']} classes) into "
        f"{figures['num_parties']:,} parties: seconds (ours best of {figures['repeats']}; {repeats_flwr}); "
        "speedup = flwr seconds / ours",
        line(header),
        line(["-" * w for w in widths]),
        *[line(row) for row in rows],
        "",
        f"ours: kdlightning.data.partitioners, numpy {figures['numpy']}, Python {figures['python']}, "
        f"{figures['cpus']} CPUs; dirichlet(..., min_size=0) and label_skew(..., classes_per_party=2), seed 0; "
        "each returns one sorted int64 index array per party.",
    ]
    if flwr is None:
        lines.append(f"flwr-datasets skipped: {figures['flwr_skipped']}")
    else:
        d, p = flwr["dirichlet"], flwr["label_skew"]

        def settings(entry: dict[str, Any]) -> str:
            return ", ".join(f"{key}={value!r}" for key, value in entry["settings"].items())

        lines += [
            f"flwr: flwr-datasets {flwr['flwr_datasets']} (datasets {flwr['datasets']}, numpy {flwr['numpy']}, "
            f"Python {flwr['python']}) in {FLWR_VENV.name}, a subprocess:",
            f"  {d['class']}({settings(d)})",
            f"  {p['class']}({settings(p)})",
            "  flwr = computing every party's indices (flwr does it on first use; triggered by the num_partitions "
            'property, no rows selected) on Dataset.from_dict({"label": labels}).with_format("arrow"), where '
            "flwr's np.array(dataset['label']) is a zero-copy read: flwr's best case, used for the headline ratio.",
            "  With shuffle=False flwr hands each party a contiguous run of each class in dataset order (no random "
            "choice of samples, no sort); ours draws the samples at random and sorts each party's indices.",
            f"  Dataset.from_dict took {flwr['build_s']:.3f} s, not timed.",
        ]
        if "default_column_s" in flwr:
            lines.append(
                "  flwr default-format = the same on the default-format Dataset from_dict returns; there "
                f"np.array(dataset['label']) alone takes {flwr['default_column_s']:.2f} s (datasets 4's lazy Column)."
            )
        if "load_all_s" in d:
            lines.append(
                "  flwr load x1000 = load_partition(i) for every party (index computation included), arrow format."
            )
        lines.append(
            f"  flwr's splits (checked, untimed): dirichlet covers all samples={d['check']['covers_all']}, "
            f"disjoint={d['check']['disjoint']}; pathological covers all={p['check']['covers_all']}, classes per "
            f"party {p['check']['classes_per_party_min']}..{p['check']['classes_per_party_max']}."
        )
    verdict = "met" if figures["dirichlet_target_met"] else "MISSED"
    if flwr is None:
        verdict += " for the 1 s part; the flwr comparison was not run"
    lines.append(f"SPEC §8 target (Dirichlet < {TARGET_S:g} s and faster than flwr-datasets side by side): {verdict}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats; flwr's best case only")
    parser.add_argument("--no-flwr", action="store_true", help="skip flwr-datasets")
    parser.add_argument("--no-install", action="store_true", help=f"do not create {FLWR_VENV.name}")
    parser.add_argument("--json", action="store_true", help="also print the figures as JSON")
    args = parser.parse_args(argv)
    figures = run(quick=args.quick, flwr=not args.no_flwr, install=not args.no_install)
    print(format_table(figures))
    if args.json:
        print(json.dumps(figures, indent=2, default=str))
    return 0 if figures["dirichlet_target_met"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
