"""A study's Weights & Biases runs (:class:`StudyRuns`): one per row of ``results.csv``, one of its summary.

A cell trains its control, methods and tuned KD's grid as batched members of one fit; each run (each row) is
still its own W&B run, logged when its step of the cell ends from what the member recorded: its validation per
epoch, its test accuracy before and after, its gain. All are grouped by the study (``out``'s name) and named
``<scenario>/seed<seed>/<method>``; the summary run (``summary``) holds the study's tables and plots.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from kdlightning.reporting import hyperparameters_of, read_csv
from kdlightning.study.config import StudyConfig
from kdlightning.tracking import flat_config, log_run, log_summary, markdown_tables, network_name

__all__ = ["StudyRuns"]

REPORTS = ("summary.md", "guidance.md")
"""The study's Markdown reports whose tables the summary run logs."""


class StudyRuns:
    """The W&B runs of a study with a ``logger`` (nothing without one).

    Args:
        config: the study's configuration (its ``logger``, ``out``, networks and settings).
    """

    def __init__(self, config: StudyConfig) -> None:
        self.config = config

    @property
    def enabled(self) -> bool:
        """Whether the study logs to W&B."""
        return self.config.logger is not False

    @property
    def group(self) -> str:
        """The runs' W&B group: the ``logger``'s ``group``, else the study's directory name."""
        logger = self.config.logger
        given = logger.get("group") if isinstance(logger, Mapping) else None
        return str(given or self.config.out.resolve().name)

    def settings(self, name: str, job_type: str) -> dict[str, Any]:
        """The ``WandbLogger`` defaults of run ``name`` (the ``logger`` option's own settings win)."""
        return {"save_dir": str(self.config.out), "group": self.group, "name": name, "job_type": job_type}

    def study_settings(self) -> dict[str, Any]:
        """The study's settings every run's config holds under ``study``."""
        config = self.config
        names = ("num_parties", "student_party", "teacher_party", "pretrain_epochs", "epochs", "batch_size")
        return {
            "out": str(config.out),
            "dataset": type(config.dataset).__name__,
            **{name: getattr(config, name) for name in names},
            "val_fraction": config.val_fraction,
            "batched": config.batched,
        }

    def log_rows(
        self, rows: Sequence[Mapping[str, Any]], histories: Mapping[str, Sequence[Mapping[str, float]]]
    ) -> None:
        """Log each row (as ``results.csv`` holds it) as a W&B run; ``histories``: each run's validation per epoch."""
        if not self.enabled:
            return
        config = self.config
        for row in rows:
            method, scenario, seed = str(row["method"]), str(row["scenario"]), int(row["seed"])
            values = hyperparameters_of(row)
            history = list(histories.get(method, ()))
            if not history and isinstance(values.get("val_acc"), (int, float)):  # a tuned run: its chosen point's
                history = [{"val/acc": float(values["val_acc"])}]
            run_config = flat_config(
                method=method,
                student=network_name(config.student),
                teacher=network_name(config.teacher),
                partition=scenario,
                seed=seed,
                hyperparameters=values,
                method_class=row.get("class"),
                validation=row.get("validation"),
            )
            run_config["study"] = self.study_settings()
            after, before = _number(row.get("acc_after")), _number(row.get("acc_before"))
            summary = {
                "test/acc": after,
                "acc_before": before,
                "acc_after": after,
                "acc_teacher": _number(row.get("acc_teacher")),
                "gain": None if after is None or before is None else 100.0 * (after - before),
                "error": row.get("error") or None,
            }
            name = f"{scenario}/seed{seed}/{method}"
            log_run(config.logger, run_config, history, summary, **self.settings(name, "study"))

    def log_summary(self) -> None:
        """Log the study's tables (``results.csv``, those of ``summary.md`` and ``guidance.md``) and plots."""
        if not self.enabled:
            return
        out = self.config.out
        tables: dict[str, list[dict[str, Any]]] = {"results": read_csv(out / "results.csv")}
        for report in REPORTS:
            path = out / report
            if path.is_file():
                for heading, rows in markdown_tables(path.read_text()).items():
                    tables[f"{Path(report).stem}/{heading}"] = list(rows)
        config = {"study": self.study_settings(), "methods": [*self.config.methods], "tuned_kd": self.config.tuned_kd}
        config["scenarios"] = [str(scenario) for scenario in self.config.scenarios]
        config["seeds"] = list(self.config.seeds)
        images = sorted(out.glob("*.png"))
        log_summary(self.config.logger, tables, images, config, **self.settings("summary", "study-summary"))


def _number(value: Any) -> float | None:
    """A ``results.csv`` cell as a number (None where it is empty)."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
