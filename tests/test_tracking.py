"""The W&B runs every pipeline makes (:mod:`kdlightning.tracking`): flat config keys a user filters by, no
LightningCLI ``_instantiator`` noise, the best validation accuracy kept in the summary; ``kdl fit`` read back
from its offline run with W&B's own records (:mod:`wandb_records`)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from wandb_records import offline_wandb

from kdlightning.errors import ConfigurationError
from kdlightning.tracking import check_logger, flat_config, markdown_tables, network_name, without_instantiator

ROOT = Path(__file__).resolve().parents[1]

FIT = """
seed_everything: 7
model:
  class_path: kdlightning.VanillaKD
  init_args:
    student:
      class_path: kdlightning.models.MLP
      init_args: {{num_classes: 10, in_features: 64, hidden_sizes: [8]}}
    teacher:
      class_path: kdlightning.models.MLP
      init_args: {{num_classes: 10, in_features: 64, hidden_sizes: [16]}}
    temperature: 2.0
    alpha: 0.25
data:
  class_path: kdlightning.data.PartitionedDataModule
  init_args:
    dataset: {{class_path: kdlightning.data.Digits}}
    partitioner:
      class_path: kdlightning.data.DirichletPartitioner
      init_args: {{alpha: 0.5}}
    num_parties: 2
    partition_id: 0
    teacher_partition_id: 1
    batch_size: 64
    seed: 0
trainer:
  accelerator: cpu
  max_epochs: {epochs}
  limit_train_batches: 2
  log_every_n_steps: 1
  enable_progress_bar: false
  enable_model_summary: false
  enable_checkpointing: true
  default_root_dir: {root}
  logger:
    class_path: lightning.pytorch.loggers.WandbLogger
    init_args: {{project: kdl-test, save_dir: {save_dir}, mode: offline}}
"""


@pytest.fixture
def offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """W&B offline, every file of it under ``tmp_path``, no account."""
    pytest.importorskip("wandb")
    return offline_wandb(tmp_path, monkeypatch)


def test_a_kdl_fit_run_has_flat_keys_no_instantiator_and_its_best_validation(offline: Path) -> None:
    from wandb_records import read_runs

    from kdlightning.lightning_cli import KDLightningCLI

    epochs, save_dir = 3, offline / "logs"
    config = offline / "fit.yaml"
    config.write_text(FIT.format(epochs=epochs, root=offline / "root", save_dir=save_dir))
    cli = KDLightningCLI(args=["fit", "-c", str(config)])
    cli.trainer.logger.experiment.finish()  # as `kdl fit`'s exit would: the run's log is complete

    (run,) = read_runs(save_dir)
    assert run.project == "kdl-test" and run.exit_code == 0
    keys = run.config
    assert keys["method"] == "VanillaKD"
    assert (keys["student"], keys["teacher"]) == ("MLP", "MLP")
    assert keys["partition"] == "dirichlet(alpha=0.5)"
    assert keys["seed"] == 7
    assert (keys["temperature"], keys["alpha"], keys["num_classes"]) == (2.0, 0.25, 10)
    assert keys["config"]["model"]["class_path"] == "kdlightning.VanillaKD"  # the nested config beside them
    assert "_instantiator" not in str(keys), sorted(keys)
    accs = [row["val/acc"] for row in run.history if "val/acc" in row]
    assert len(accs) == epochs
    assert run.summary["val/acc"] == {"max": max(accs)}  # the best, not the last

    # the checkpoint still holds what rebuilds the method
    (checkpoint,) = offline.rglob("*.ckpt")  # where Lightning puts it beside a W&B run
    hyperparameters = torch.load(checkpoint, weights_only=False)["hyper_parameters"]
    assert hyperparameters["_instantiator"] == "lightning.pytorch.cli.instantiate_module"
    assert hyperparameters["temperature"] == 2.0, hyperparameters


def test_flat_keys_name_networks_by_class_and_keep_scalar_hyperparameters() -> None:
    from functools import partial

    from kdlightning.models import MLP

    keys = flat_config(
        "tuned_kd",
        partial(MLP, in_features=64),
        {"class_path": "kdlightning.models.SmallCNN"},
        "iid",
        0,
        {"temperature": 4.0, "alpha": 0.5, "optimizer": {"class_path": "torch.optim.Adam"}, "_instantiator": "x"},
    )
    assert keys == {
        "method": "tuned_kd",
        "student": "MLP",
        "teacher": "SmallCNN",
        "partition": "iid",
        "seed": 0,
        "temperature": 4.0,
        "alpha": 0.5,
    }
    assert network_name(torch.nn.Linear(2, 2)) == "Linear"
    nested = {"model": {"_instantiator": "x", "init_args": [{"_instantiator": "y", "a": 1}]}}
    assert without_instantiator(nested) == {"model": {"init_args": [{"a": 1}]}}


def test_a_summary_s_markdown_tables_become_tables_by_heading() -> None:
    text = "# Study\n\n## Gains\n\n| method | gain |\n|:--|--:|\n| kd | 1.5 |\n| dml | 0.2 |\n\ntext\n\n| a |\n|---|\n| 1 |\n"
    assert markdown_tables(text) == {
        "Gains": [{"method": "kd", "gain": "1.5"}, {"method": "dml", "gain": "0.2"}],
        "Gains (2)": [{"a": "1"}],
    }


@pytest.mark.parametrize("logger", ["yes", 1, ["project"]])
def test_a_bad_logger_option_is_named(logger: object) -> None:
    with pytest.raises(ConfigurationError, match="`logger` must be false, true or a dict"):
        check_logger(logger)


@pytest.mark.parametrize("batched", [False, True])
def test_kdl_tune_logs_one_run_per_trial_grouped_by_the_search(offline: Path, batched: bool) -> None:
    from planted import planted_args
    from wandb_records import read_runs

    from kdlightning.tuning import tune

    grid = {"temperature": [1.0, 4.0], "alpha": [0.5]}
    args = planted_args(offline, {"grid": grid, "batched": batched, "logger": {"mode": "offline"}}, max_epochs=2)
    result = tune(args, verbose=False)

    runs = {run.name.split("/")[0]: run for run in read_runs(offline / "search")}
    assert set(runs) == {"trial0", "trial1"}, sorted(runs)
    assert {(run.group, run.job_type, run.project) for run in runs.values()} == {("search", "tune", "kdlightning")}
    for row in result.trials:
        run = runs[f"trial{row['number']}"]
        assert set(run.name.split("/")[1].split(",")) == {f"temperature={row['temperature']:g}", "alpha=0.5"}
        assert run.config["method"] == "VanillaKD" and run.config["trial"] == row["number"]
        assert (run.config["temperature"], run.config["alpha"], run.config["seed"]) == (row["temperature"], 0.5, 0)
        accs = [entry["val/acc"] for entry in run.history]
        assert len(accs) == 2 and accs[-1] == pytest.approx(row["val/acc"])
        assert run.summary["val/acc"] == {"max": max(accs)}


def test_no_logger_makes_no_run(offline: Path) -> None:
    from kdlightning.tracking import log_run, log_summary, wandb_logger

    assert wandb_logger(False) is None
    log_run(False, {"method": "kd"}, [{"val/acc": 0.5}], save_dir=str(offline))
    log_summary(False, {"results": [{"a": 1}]}, save_dir=str(offline))
    assert not list(offline.rglob("*.wandb"))
