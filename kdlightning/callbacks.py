"""Lightning callbacks that report on a run or keep its best weights.

Add them to ``trainer.callbacks`` (in YAML by ``class_path``).

The teacher-output cache, a callback too, lives with its store in :mod:`kdlightning.cache`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelSummary as LightningModelSummary
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.model_summary import get_formatted_model_size, get_human_readable_count

from kdlightning.data.partitioners import plot_partition
from kdlightning.data.text import TokenizeCollate
from kdlightning.errors import ConfigurationError, InputTypeError

__all__ = ["FitSummary", "LogPartition", "ModelSummary", "RestoreBest", "SavePretrained"]


class LogPartition(L.Callback):
    """Log how the data set is partitioned across parties, once per run (per trainer), to every logger.

    Writes ``partition_stats.csv`` (samples per party and class, with totals) and
    ``partition_stats.png`` (:func:`~kdlightning.data.plot_partition`) into each logger's directory; a
    logger with ``log_table`` / ``log_image`` (``WandbLogger``) also gets them as the table
    ``data/partition_stats`` and the image ``data/partition``. Rank zero writes; a trainer without
    loggers writes nothing. In YAML::

        trainer:
          callbacks+:
            - class_path: kdlightning.callbacks.LogPartition

    It needs a datamodule that exposes its partition as :class:`~kdlightning.data.PartitionedDataModule`
    does (``partition_stats()``, ``parts``, ``data``); with another datamodule it warns and logs nothing.
    """

    def __init__(self) -> None:
        self._logged: set[int] = set()  # the trainers (by id) that have logged: fit, then test, log once

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        """After the datamodule's ``setup`` (its partition is made): log it, the first time a logger is there."""
        if id(trainer) in self._logged or not trainer.loggers:
            return
        self._logged.add(id(trainer))
        datamodule = getattr(trainer, "datamodule", None)  # set by Lightning for a fit with a datamodule
        if datamodule is None or not all(hasattr(datamodule, name) for name in ("partition_stats", "parts", "data")):
            rank_zero_warn(
                f"LogPartition: {type(datamodule).__name__} exposes no partition (`partition_stats()`, `parts`, "
                "`data`), so none is logged; use it with kdlightning.data.PartitionedDataModule."
            )
            return
        if trainer.global_rank != 0:
            return
        stats = datamodule.partition_stats()  # (num_parties, num_classes)
        columns = ["party", *(f"class_{c}" for c in range(stats.shape[1])), "total"]
        rows = [[party, *counts.tolist(), int(counts.sum())] for party, counts in enumerate(stats)]
        title = f"{getattr(datamodule, 'partitioner', 'partition')}, {len(datamodule.parts)} parties"
        for logger in trainer.loggers:
            directory = Path(getattr(logger, "log_dir", None) or logger.save_dir or ".")
            directory.mkdir(parents=True, exist_ok=True)
            csv_path = directory / "partition_stats.csv"
            csv_path.write_text("\n".join(",".join(map(str, row)) for row in [columns, *rows]) + "\n")
            png = directory / "partition_stats.png"
            plot_partition(datamodule.data.train_labels, datamodule.parts, png, title=title)
            if hasattr(logger, "log_table"):  # W&B: a table and an image in the run
                wandb: Any = logger
                wandb.log_table(key="data/partition_stats", columns=columns, data=rows)
                wandb.log_image(key="data/partition", images=[str(png)])


class FitSummary(L.Callback):
    """When ``fit`` ends, say in one line how it went: the best validation score and where the checkpoints are.

    ``kdl fit`` adds it to every run. The score is the checkpoint callback's monitored metric when it has
    one (``ModelCheckpoint(monitor="val/acc")``), else the last ``monitor`` value logged.

    Args:
        monitor: the metric reported when no checkpoint callback monitors one.
    """

    def __init__(self, monitor: str = "val/acc") -> None:
        self.monitor = monitor

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Print the summary line (rank zero), below the finished progress bar.

        Lightning's rich progress bar is drawn until the trainer's teardown, after this hook: drawn again
        below the summary, it would leave a copy of itself after the last line. It is closed first.
        """
        bar = trainer.progress_bar_callback
        if isinstance(bar, RichProgressBar):
            bar.teardown(trainer, pl_module, "fit")
        rank_zero_info(self.line(trainer))

    def line(self, trainer: L.Trainer) -> str:
        """``fit ended after N epochs: best val/acc 0.9512 (checkpoint ...); last checkpoint ...``."""
        parts = [f"fit ended after {trainer.current_epoch} epochs"]
        checkpoint: Any = trainer.checkpoint_callback  # a ModelCheckpoint, or another Checkpoint, or None
        best = getattr(checkpoint, "best_model_score", None)
        if checkpoint is not None and best is not None and getattr(checkpoint, "monitor", None):
            parts.append(f"best {checkpoint.monitor} {float(best):.4f} ({checkpoint.best_model_path})")
        elif self.monitor in trainer.callback_metrics:
            parts.append(f"{self.monitor} {float(trainer.callback_metrics[self.monitor]):.4f}")
        last = getattr(checkpoint, "last_model_path", "") if checkpoint is not None else ""
        if last:
            parts.append(f"last checkpoint {last}")
        return "; ".join(parts)


class ModelSummary(LightningModelSummary):
    """Lightning's model summary, without the rows that say nothing about a KD run.

    Left out: the metric containers (the ``metrics`` row: torchmetrics objects, no parameters) and the
    FLOPs column when no FLOPs were counted (Lightning counts them only for a model with an
    ``example_input_array``). ``kdl fit`` uses it in place of Lightning's; ``max_depth`` and the rest are
    Lightning's.
    """

    @staticmethod
    def summarize(
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int = 0,
        **summarize_kwargs: Any,
    ) -> None:
        """Log the table (rank zero)."""
        rank_zero_info(
            "\n"
            + format_summary(
                summary_data, total_parameters, trainable_parameters, model_size, total_training_modes, total_flops
            )
        )


def format_summary(
    summary_data: list[tuple[str, list[str]]],
    total_parameters: int,
    trainable_parameters: int,
    model_size: float,
    total_training_modes: dict[str, int],
    total_flops: int = 0,
) -> str:
    """The summary table of :class:`ModelSummary`: columns of ``summary_data``, then the totals.

    Examples:
        >>> print(format_summary([(" ", ["0", "1"]), ("Name", ["student", "metrics"]), ("Type", ["MLP", "ModuleDict"]),
        ...                       ("Params", ["2.4 K", "0"]), ("FLOPs", ["0", "0"])], 2400, 2400, 0.0096,
        ...                      {"train": 4, "eval": 0}))
          | Name    | Type | Params
        ------------------------------
        0 | student | MLP  | 2.4 K
        ------------------------------
        2.4 K     Trainable params
        0         Non-trainable params
        2.4 K     Total params
        0.010     Total estimated model params size (MB)
        4         Modules in train mode
        0         Modules in eval mode
    """
    names = dict(summary_data).get("Name", [])
    rows = [i for i, name in enumerate(names) if not (name == "metrics" or name.startswith("metrics."))]
    columns = [
        (title, [values[i] for i in rows])
        for title, values in summary_data
        if not (title == "FLOPs" and not total_flops)
    ]
    widths = [max([len(title), *(len(str(v)) for v in values)]) for title, values in columns]
    divider = "-" * (sum(widths) + 3 * len(columns))
    lines = [" | ".join(f"{title:<{w}}" for (title, _), w in zip(columns, widths, strict=True)).rstrip(), divider]
    for row in range(len(rows)):
        cells = [f"{values[row]!s:<{w}}" for (_, values), w in zip(columns, widths, strict=True)]
        lines.append(" | ".join(cells).rstrip())
    lines.append(divider)
    totals = [
        (get_human_readable_count(trainable_parameters), "Trainable params"),
        (get_human_readable_count(total_parameters - trainable_parameters), "Non-trainable params"),
        (get_human_readable_count(total_parameters), "Total params"),
        (get_formatted_model_size(model_size), "Total estimated model params size (MB)"),
        (total_training_modes.get("train", 0), "Modules in train mode"),
        (total_training_modes.get("eval", 0), "Modules in eval mode"),
    ]
    if total_flops:
        totals.append((get_human_readable_count(total_flops), "Total FLOPs"))
    lines += [f"{value!s:<10}{label}" for value, label in totals]
    return "\n".join(lines)


class SavePretrained(L.Callback):
    """When ``fit`` ends, write the trained student as a Hugging Face directory that ``from_pretrained`` loads.

    The network's own ``save_pretrained`` writes its config and weights; the tokenizer the datamodule
    tokenized the network's inputs with (a :class:`~kdlightning.data.TokenizeCollate`) is saved beside them,
    so ``AutoModelForSequenceClassification.from_pretrained(dirpath)`` and ``AutoTokenizer.from_pretrained(dirpath)``
    give the distilled model ready to use. In YAML::

        trainer:
          callbacks+:
            - class_path: kdlightning.callbacks.SavePretrained
              init_args: {dirpath: runs/transformers/vanilla_kd/student}

    Args:
        dirpath: the directory; default ``<trainer.default_root_dir>/<network>``.
        network: the trained network to write: ``"student"``, or DML's ``"peer"``.
        best: write the weights of the checkpoint callback's best checkpoint (``best_model_path``) rather
            than the last ones, when there is one.

    Raises:
        TypeError: at the end of ``fit``, if the network has no ``save_pretrained`` (it is not a
            ``transformers`` model): save its ``state_dict`` instead, as the checkpoints do.
    """

    def __init__(self, dirpath: str | None = None, network: str = "student", best: bool = False) -> None:
        self.dirpath, self.network, self.best = dirpath, network, best
        self.saved: Path | None = None
        """Where the last ``fit`` wrote the network."""

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Write the network (and its tokenizer) on rank zero."""
        module: Any = getattr(pl_module, self.network, None)  # a transformers model has save_pretrained
        if not hasattr(module, "save_pretrained"):
            raise InputTypeError(
                f"SavePretrained: `{self.network}` is a {type(module).__name__}, which has no `save_pretrained` (a "
                "transformers model has); its weights are in the checkpoints' state_dict."
            )
        if not trainer.is_global_zero:
            return
        directory = Path(self.dirpath) if self.dirpath else Path(trainer.default_root_dir) / self.network
        best = getattr(trainer.checkpoint_callback, "best_model_path", "") if self.best else ""
        if best:
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            prefix = f"{self.network}."
            module = copy.deepcopy(module)
            module.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
        module.save_pretrained(directory)
        collate = getattr(getattr(trainer, "datamodule", None), "collate_fn", None)
        if isinstance(collate, TokenizeCollate):
            tokenizer: Any = collate.tokenizers.get(self.network, collate.tokenizers.get("student"))
            if hasattr(tokenizer, "save_pretrained"):
                tokenizer.save_pretrained(directory)
        self.saved = directory
        rank_zero_info(f"the {self.network} is saved to {directory} (from_pretrained loads it)")


class RestoreBest(L.Callback):
    """Keep, in memory, the trained networks' weights where ``monitor`` was best; load them back when ``fit`` ends.

    Beside Lightning's ``EarlyStopping``, a fit then ends at its best validation, not its last, with no checkpoint
    written (e.g. the server's distillation in a FedDF round). The networks are those the method trains
    (:meth:`~kdlightning.methods.DistillationModule.trainable_modules`); a fit that never validated keeps its last
    weights.

    Args:
        monitor: the logged metric, e.g. ``val/loss_kd``.
        mode: ``"min"`` or ``"max"``: whether lower or higher is better.
    """

    def __init__(self, monitor: str = "val/loss", mode: str = "min") -> None:
        if mode not in ("min", "max"):
            raise ConfigurationError(f"`mode` must be 'min' or 'max', got {mode!r}.")
        self.monitor, self.mode = monitor, mode
        self.best: float | None = None
        """The best value of ``monitor`` seen in the current fit."""
        self.history: list[float] = []
        """Every value of ``monitor`` seen in the current fit, in order."""
        self.state: dict[str, dict[str, torch.Tensor]] | None = None

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Forget the previous fit's best."""
        self.best, self.state, self.history = None, None, []

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Keep the trained networks' weights if ``monitor`` improved."""
        logged = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or logged is None:
            return
        value = float(logged)
        self.history.append(value)
        if self.best is None or (value < self.best if self.mode == "min" else value > self.best):
            self.best = value
            self.state = {
                name: {key: tensor.detach().clone() for key, tensor in module.state_dict().items()}
                for name, module in _trained(pl_module).items()
            }

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Load the best weights back into the trained networks."""
        if self.state is not None:
            for name, module in _trained(pl_module).items():
                module.load_state_dict(self.state[name])


def _trained(pl_module: L.LightningModule) -> dict[str, Any]:
    trainable = getattr(pl_module, "trainable_modules", None)
    if trainable is None:
        raise InputTypeError(
            f"RestoreBest restores a kdlightning method's trained networks; {type(pl_module).__name__} has no "
            "`trainable_modules()`."
        )
    return dict(trainable())
