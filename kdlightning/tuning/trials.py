"""One trial of a search: built from ``kdl fit``'s configs (:func:`parse_search`), run and reported to Optuna."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import lightning as L
import optuna
import yaml
from jsonargparse import Namespace
from lightning.pytorch.callbacks import Checkpoint, ProgressBar
from lightning.pytorch.cli import LightningArgumentParser

from kdlightning.cache import CacheReferenceOutputs, check_deterministic_transfer, module_fingerprint
from kdlightning.data import DatasetSource
from kdlightning.data.datamodules import check_validation
from kdlightning.errors import ConfigurationError
from kdlightning.lightning_cli import KDLightningCLI
from kdlightning.tuning.options import PREFIX, TuneOptions, check_space
from kdlightning.tuning.quiet import quiet

__all__ = [
    "Built",
    "ParsedSearch",
    "TrialBuilder",
    "TrialReporter",
    "cache_supported",
    "final_metrics",
    "parse_search",
    "share_dataset",
    "validate",
    "validate_on",
]


class Built(Protocol):
    """One trial's objects, as :data:`TrialBuilder` returns them (a ``LightningCLI`` has these three)."""

    @property
    def model(self) -> L.LightningModule:
        """The method as the trial starts."""

    @property
    def datamodule(self) -> L.LightningDataModule:
        """The trial's data."""

    @property
    def trainer(self) -> L.Trainer:
        """The trial's trainer."""


TrialBuilder = Callable[[Mapping[str, float], int, Sequence[L.Callback]], Built]
"""Builds one trial from ``(values, seed, callbacks)``: ``values`` by argument name (``{"temperature": 4.0,
"alpha": 0.5}``), seeded with ``seed``, its trainer given ``callbacks``; the model is the method as it
starts (nothing trained)."""


class TrialReporter(L.Callback):
    """Report the validation metric of every epoch to an Optuna trial and stop the trial when pruned.

    After each validation of ``fit`` it records ``(epoch, metric)``, reports it (``trial.report``) when
    ``report`` is on and, if the pruner says so (``trial.should_prune()``), asks the trainer to stop.
    The caller then raises ``optuna.TrialPruned``: stopping the trainer rather than raising inside the
    loop lets ``fit`` end normally, so callbacks such as the teacher-output cache still save their state.

    Args:
        trial: the Optuna trial.
        monitor: the validation metric, a key the method logs (``val/acc``).
        report: report every epoch to the trial (needed by a pruner; skipped otherwise, as each report
            is a write to the storage).
    """

    def __init__(self, trial: optuna.Trial, monitor: str = "val/acc", report: bool = True) -> None:
        self.trial = trial
        self.monitor = monitor
        self.report = report
        self.history: list[tuple[int, float]] = []
        self.val_loss: float | None = None
        self.pruned = False

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Record, report and maybe prune (metrics of the epoch are final here, not in ``on_validation_epoch_end``)."""
        if trainer.sanity_checking or trainer.state.fn != "fit":
            return
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            raise ConfigurationError(
                f"`tune.metric` {self.monitor!r} was not logged by {type(pl_module).__name__}; "
                f"its validation metrics are {sorted(k for k in metrics if k.startswith('val/'))}."
            )
        epoch = trainer.current_epoch + 1  # epochs trained so far: the pruner's resource
        value = float(metrics[self.monitor])
        loss = metrics.get("val/loss")
        self.val_loss = float(loss) if loss is not None else None
        if self.history and self.history[-1][0] == epoch:  # several validations per epoch: keep the last
            self.history[-1] = (epoch, value)
            return
        self.history.append((epoch, value))
        if self.report:
            self.trial.report(value, epoch)
            if self.trial.should_prune():
                self.pruned = True
                trainer.should_stop = True


def validate(built: Built, metric: str) -> float:
    """The validation ``metric`` of ``built``'s model as it is (before training: the start of every trial)."""
    metrics = built.trainer.validate(built.model, datamodule=built.datamodule, verbose=False)[0]
    if metric not in metrics:
        raise ConfigurationError(f"`tune.metric` {metric!r} was not logged; validation logged {sorted(metrics)}.")
    return float(metrics[metric])


def final_metrics(built: Built, reporter: TrialReporter, metric: str) -> tuple[float, float | None]:
    """The metric and validation loss of the trained model: its last validation, or a new one if none ended it."""
    if reporter.history and (reporter.pruned or reporter.history[-1][0] == built.trainer.current_epoch):
        return reporter.history[-1][1], reporter.val_loss
    value = validate(built, metric)
    loss = built.trainer.callback_metrics.get("val/loss")
    return value, float(loss) if loss is not None else None


def cache_supported(built: Built) -> bool:
    """Whether the method has frozen references to cache and the data allows it (else warn)."""
    if not getattr(built.model, "frozen_names", ()):
        return False
    datamodule = built.datamodule
    reason = None
    try:  # batches without sample indices are refused at the first one, by the cache itself
        check_deterministic_transfer(datamodule)
        model: Any = built.model  # a DistillationModule: it has frozen references
        for name in model.frozen_names:  # what the cache keys on disk must be readable
            module_fingerprint(getattr(model, name), strict=True)
    except ValueError as error:
        reason = str(error)
    if reason is not None:
        warnings.warn(f"The teacher-output cache is off, so the teacher runs in every trial: {reason}", stacklevel=3)
    return reason is None


def share_dataset(built: Built, held: DatasetSource | None) -> DatasetSource | None:
    """Give ``built``'s datamodule the search's ``held`` data set source if its own is the same; return the one to hold.

    A source loads its data once per instance (:meth:`~kdlightning.data.datasets.DatasetSource.data`), and every
    trial builds its datamodule anew: a datamodule whose ``dataset`` equals ``held`` in type and
    configuration (``vars()``) gets ``held`` instead, so the trials of a search read the data set once.
    With no source held yet, the datamodule's own is the one to hold.
    """
    source = getattr(built.datamodule, "dataset", None)
    if not isinstance(source, DatasetSource):
        return held
    if held is None:
        return source
    if source is not held and type(source) is type(held) and _same_config(source, held):
        datamodule: Any = built.datamodule  # it has a `dataset`: the source was read from it
        datamodule.dataset = held
    return held


def validate_on(datamodule: Any, validation: Any) -> None:
    """Point ``datamodule``'s validation split at ``validation`` (``tune.validation``), or raise ``ValueError``.

    ``own`` leaves the datamodule as configured. ``public`` needs a datamodule with a public split held out before
    partitioning (a :class:`~kdlightning.data.PartitionedDataModule` with ``public_fraction`` > 0); the trial then
    validates there. A list of both is a study's (two searches), not one search's.
    """
    if not isinstance(validation, str):
        raise ConfigurationError(
            f"`tune.validation` must be 'own' or 'public' for one search, got {validation!r} (a study runs both)."
        )
    if validation == "own":
        return
    if not hasattr(datamodule, "validation") or not getattr(datamodule, "public_fraction", 0.0):
        raise ConfigurationError(
            "`tune.validation: public` needs a datamodule with a public split: a PartitionedDataModule with "
            f"`public_fraction` > 0, got {type(datamodule).__name__}"
            f" with public_fraction={getattr(datamodule, 'public_fraction', None)!r}."
        )
    check_validation("public", datamodule.public_fraction, getattr(datamodule, "transfer", "own"))
    datamodule.validation = "public"


def _same_config(a: object, b: object) -> bool:
    """Whether two objects' attributes (``vars()``, a source's configuration) are equal; False if they cannot tell."""
    try:
        return bool(getattr(a, "__dict__", None) == getattr(b, "__dict__", None))
    except (TypeError, ValueError):  # attributes such as arrays that do not compare to one bool
        return False


@dataclass
class ParsedSearch:
    """What ``kdl tune``'s arguments describe: arguments of :class:`~kdlightning.tuning.search.Search`, by name."""

    build: TrialBuilder
    method: type
    options: TuneOptions
    out: Path
    description: Any
    config_text: str
    seed: int | None


def parse_search(args: Sequence[str]) -> ParsedSearch:
    """Parse ``kdl tune``'s arguments; trials are built from the parsed configuration (no parsing per trial)."""
    with quiet():
        cli = _SearchCLI([str(arg) for arg in args])
    parser, config = cli.parser, cli.config
    options = TuneOptions(**config.tune.as_dict())
    if options.logger is not False and is_wandb(config.get("trainer.logger")):  # the trials' runs take its arguments
        given = config.trainer.logger.get("init_args")
        settings = {
            **(given.as_dict() if given is not None else {}),
            **(options.logger if options.logger is not True else {}),
        }
        options.logger = {key: value for key, value in settings.items() if value is not None}
    out = Path(config.out).expanduser()
    seed = config.get("seed_everything")
    text = parser.dump(config, skip_none=False, skip_check=True)
    method = _import(config.model.class_path)
    searched = set(check_space(options, method))
    description = yaml.safe_load(text)  # what makes trials comparable: all but the search and the searched values
    for key in ("tune", "out", "seed_everything"):
        description.pop(key, None)
    init_args = (description.get("model") or {}).get("init_args") or {}
    for key in searched:
        init_args.pop(key[len(PREFIX) :], None)

    def build(values: Mapping[str, float], trial_seed: int, trial_callbacks: Sequence[L.Callback]) -> Built:
        return _SearchCLI(
            parsed=(parser, config),
            values={PREFIX + name: value for name, value in values.items()},
            seed=trial_seed,
            callbacks=trial_callbacks,
            keep_logger=options.logger is not False,
            root=str(out / "trials"),
        )

    seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    return ParsedSearch(build, method, options, out, description, text, seed)


class _SearchCLI(KDLightningCLI):
    """``KDLightningCLI`` with the ``tune`` section and ``--out``.

    ``_SearchCLI(args)`` parses ``kdl tune``'s arguments and instantiates nothing. With ``parsed`` (the
    parser and configuration of that parse) it builds one trial's method, datamodule and trainer: the
    trial's ``values`` are set on a copy of the parsed configuration, as the overrides
    ``--model.init_args.temperature=4.0`` would set them, so a trial costs no parsing. The trial's trainer
    keeps the configured callbacks except checkpointing, progress bars and teacher caches (the search
    adds its own ``callbacks``), logs only if ``keep_logger``, and skips the sanity check.
    """

    def __init__(
        self,
        args: list[str] | None = None,
        parsed: tuple[LightningArgumentParser, Namespace] | None = None,
        values: Mapping[str, float] | None = None,
        seed: int | None = None,
        callbacks: Sequence[L.Callback] = (),
        keep_logger: bool = False,
        root: str | None = None,
    ) -> None:
        self._parsed = parsed
        self._values = dict(values or {})
        self._seed = seed
        self._keep_logger = keep_logger
        self._root = root
        super().__init__(
            args=args,
            run=False,
            save_config_callback=None,
            trainer_defaults={"callbacks": list(callbacks)},
            load_from_checkpoint_support=False,  # trials keep state dicts, not Lightning checkpoints
            parser_kwargs={
                "prog": "kdl tune",
                "description": "Tuned KD: search a method's float arguments on the validation split, then test "
                "the chosen point once. Takes `kdl fit`'s -c configs plus a `tune:` section.",
            },
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        """Add ``tune`` (:class:`TuneOptions`) and ``--out`` to ``kdl fit``'s arguments."""
        super().add_arguments_to_parser(parser)
        parser.add_class_arguments(TuneOptions, "tune", instantiate=False)
        parser.add_argument("--out", type=str, default="runs/tune", help="Directory of the search's files.")

    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        """Reuse the search's parser when building a trial."""
        if self._parsed is None:
            super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        else:
            self.parser = self._parsed[0]

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse ``args``, or take a copy of the parsed configuration with the trial's values and seed."""
        if self._parsed is None:
            super().parse_arguments(parser, args)
            return
        config = self._parsed[1].clone()
        for key, value in self._values.items():
            config[key] = float(value)
        config["seed_everything"] = self._seed
        self.config = config

    def before_instantiate_classes(self) -> None:
        """Give the trial's trainer its quiet, checkpoint-free settings."""
        if self._parsed is None:
            return
        config = self.config
        callbacks = config.get("trainer.callbacks") or []
        if not isinstance(callbacks, list):
            callbacks = [callbacks]
        config["trainer.callbacks"] = [c for c in callbacks if not _is_replaced_callback(c)]
        config["trainer.enable_checkpointing"] = False
        config["trainer.enable_progress_bar"] = False
        config["trainer.enable_model_summary"] = False
        config["trainer.num_sanity_val_steps"] = 0
        if self._root is not None:
            config["trainer.default_root_dir"] = self._root
        if not self._keep_logger or is_wandb(config.get("trainer.logger")):  # W&B: a run per trial, by the search
            config["trainer.logger"] = False

    def instantiate_classes(self) -> None:
        """Instantiate the method, datamodule and trainer only when building a trial."""
        if self._parsed is not None:
            super().instantiate_classes()


def is_wandb(logger: Any) -> bool:
    """Whether a config's ``trainer.logger`` is a ``WandbLogger`` (by ``class_path``, or built)."""
    class_path = logger.get("class_path") if hasattr(logger, "get") else None
    if isinstance(class_path, str):
        return class_path.rsplit(".", 1)[-1] == "WandbLogger"
    return type(logger).__name__ == "WandbLogger"


def _import(class_path: str) -> type:
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _is_replaced_callback(callback: Any) -> bool:
    """Checkpointing, progress bars and teacher caches are the search's business in a trial."""
    class_path = callback.get("class_path") if hasattr(callback, "get") else None
    if not isinstance(class_path, str):
        return isinstance(callback, (Checkpoint, ProgressBar, CacheReferenceOutputs))
    try:
        cls = _import(class_path)
    except (ImportError, AttributeError):
        return False
    return isinstance(cls, type) and issubclass(cls, (Checkpoint, ProgressBar, CacheReferenceOutputs))
