"""Fair federated starts (one common initialisation, the best client), heterogeneous clients through `kdl federate`,
and the experiment across scenarios and seeds with its intervals."""

from __future__ import annotations

import dataclasses
import math
from functools import partial
from pathlib import Path

import pytest
import torch

from kdlightning import pipeline
from kdlightning.cli import run as kdl
from kdlightning.data import DirichletPartitioner, IIDPartitioner, PartitionedDataModule
from kdlightning.federated import (
    FederatedExperiment,
    Federation,
    FederationConfig,
    Targets,
    accuracy_curves,
    count_to_target,
    load_experiment,
    load_federation,
    start_results,
    weighted_average,
)
from kdlightning.federated.experiment import cell_directory
from kdlightning.federated.experiment_records import ExperimentRecords
from kdlightning.federated.records import FederationRecords
from kdlightning.models import MLP
from kdlightning.reporting import read_csv
from kdlightning.stats import mean_interval

ROOT = Path(__file__).resolve().parents[2]
SMALL = partial(MLP, in_features=64, hidden_sizes=(8,))
WIDER = partial(MLP, in_features=64, hidden_sizes=(12,))


def checked(network=SMALL, **settings) -> Federation:
    """A federation of ``network`` with ``settings``, checked (its data split, its networks built)."""
    federation = Federation(FederationConfig(network, **settings))
    federation.check()
    return federation


def test_clients_of_the_global_architecture_pretrain_from_one_common_initialisation(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.warns(UserWarning, match="average"):
        federation = checked(client_networks=[SMALL, WIDER], num_clients=3, pretrain_epochs=1, seed=3, out=tmp_path)
    initial = {}
    pretrain_once = pipeline.pretrain_once

    def record(path, network, train):
        initial[len(initial)] = {k: v.clone() for k, v in network.state_dict().items()}
        return pretrain_once(path, network, train)

    monkeypatch.setattr(pipeline, "pretrain_once", record)
    trained = [federation.pretrained_client(k)[0] for k in range(3)]
    common = federation.networks.global_network().state_dict()
    for client in (0, 2):  # the global architecture: the global network's initialisation, whatever the client
        assert all(torch.equal(initial[client][k], common[k]) for k in common)
    assert initial[1]["net.1.weight"].shape != common["net.1.weight"].shape  # another architecture: its own
    assert any(not torch.equal(trained[0][k], trained[2][k]) for k in common)  # then each trains on its own data

    other_seed = checked(num_clients=2, seed=4, out=tmp_path / "other").networks
    assert all(
        torch.equal(other_seed.initial_client_network(0).state_dict()[k], v)
        for k, v in other_seed.initial_client_network(1).state_dict().items()
    )
    assert any(not torch.equal(other_seed.global_network().state_dict()[k], common[k]) for k in common)


def test_the_average_start_averages_clients_from_the_common_initialisation(tmp_path: Path) -> None:
    federation = checked(num_clients=3, pretrain_epochs=2, out=tmp_path)
    clients = [federation.pretrained_client(k) for k in range(3)]
    average = federation.build_starts(clients, ["average"])["average"]
    expected = weighted_average([state for state, _ in clients], [float(n) for _, n in clients])
    for key, value in expected.items():
        torch.testing.assert_close(average[key], value)
    accuracy, loss = federation.evaluate(average)
    assert 0.0 <= accuracy <= 1.0 and math.isfinite(loss)


def test_the_best_client_start_is_the_client_most_accurate_on_the_public_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    federation = checked(num_clients=3, pretrain_epochs=3, out=tmp_path)
    trained, examples = federation.pretrained_client(1)
    untrained = [federation.networks.client_network(k).state_dict() for k in (0, 2)]
    clients = [(untrained[0], examples), (trained, examples), (untrained[1], examples)]

    def no_test_set(self):
        raise AssertionError("the best client was chosen on the test set")

    monkeypatch.setattr(PartitionedDataModule, "test_dataloader", no_test_set)
    accuracies = federation.client_accuracies(clients)
    assert set(accuracies) == {0, 1, 2} and max(accuracies, key=accuracies.__getitem__) == 1
    best = federation.build_starts(clients, ["best_client"])["best_client"]
    assert all(torch.equal(best[k], trained[k]) for k in trained)

    monkeypatch.setattr(federation, "client_accuracies", lambda clients: {0: 0.5, 2: 0.9, 1: 0.9})
    assert federation.best_client(clients) is clients[2][0]  # the highest; a tie goes to the first client


def test_the_best_client_is_chosen_among_clients_of_the_global_architecture(tmp_path: Path) -> None:
    with pytest.warns(UserWarning, match="average"):
        federation = checked(client_networks=[WIDER, SMALL], num_clients=2, out=tmp_path)
    assert federation.starts == ["fresh", "consolidated", "best_client"]
    clients = [(federation.networks.client_network(k).state_dict(), 10) for k in range(2)]
    assert set(federation.client_accuracies(clients)) == {1}
    with pytest.warns(UserWarning, match="best_client"):
        others = checked(client_networks=[WIDER], num_clients=2, starts=["fresh", "best_client"], out=tmp_path)
    assert others.starts == ["fresh"]


def _write_config(path: Path, body: str) -> Path:
    path.write_text(
        "network: {class_path: kdlightning.models.MLP, init_args: {in_features: 64, hidden_sizes: [8]}}\n"
        "dataset: {class_path: kdlightning.data.Digits}\n"
        "num_clients: 3\npretrain_epochs: 1\nconsolidation_epochs: 1\nrounds: 1\nbatch_size: 32\n" + body
    )
    return path


def test_a_heterogeneous_consolidation_runs_end_to_end_through_kdl_federate(tmp_path: Path, capsys) -> None:
    config = _write_config(
        tmp_path / "heterogeneous.yaml",
        "client_networks:\n"
        "  - {class_path: kdlightning.models.MLP, init_args: {in_features: 64, hidden_sizes: [8]}}\n"
        "  - {class_path: kdlightning.models.MLP, init_args: {in_features: 64, hidden_sizes: [16]}}\n"
        "  - {class_path: kdlightning.models.SmallCNN, init_args: {channels: [4, 8]}}\n"
        "starts: [fresh, average, consolidated, best_client]\n",
    )
    out = tmp_path / "run"
    with pytest.warns(UserWarning, match="average"):
        rows = kdl(["federate", "-c", str(config), "--out", str(out)])
    starts = ["fresh", "consolidated", "best_client"]
    assert {(r["start"], r["round"]) for r in rows} == {(s, str(n)) for s in starts for n in (0, 1)}
    assert all(0.0 <= float(r["test_acc"]) <= 1.0 for r in rows)
    printed = capsys.readouterr().out
    for start in starts:
        assert f"| {start} |" in printed
    assert "| average |" not in printed
    assert len(list((out / "clients").glob("*.pt"))) == 3  # each architecture pre-trained, the CNN too


def _by_hand(rows: list[dict[str, str]], fraction: float) -> dict[tuple[str, str], dict[int, float]]:
    """Per (scenario, start), per seed: the reduction in total rounds against fresh, from the rows alone.

    A start that never reaches the target counts as reaching it at the first round not run.
    """
    curves: dict[tuple[str, int], dict[str, dict[int, float]]] = {}
    for row in rows:
        cell = curves.setdefault((row["scenario"], int(row["seed"])), {})
        cell.setdefault(row["start"], {})[int(row["round"])] = float(row["test_acc"])
    values: dict[tuple[str, str], dict[int, float]] = {}
    for (scenario, seed), cell in curves.items():
        target = fraction * max(acc for r, acc in cell["fresh"].items() if r >= 1)
        fresh = next((r for r in sorted(cell["fresh"]) if cell["fresh"][r] >= target), len(cell["fresh"]))
        for start, curve in cell.items():
            reached = next((r for r in sorted(curve) if curve[r] >= target), len(curve))
            if start != "fresh" and fresh:
                values.setdefault((scenario, start), {})[seed] = 100.0 * (1 - (reached + 1) / fresh)
    return values


def test_the_experiment_runs_every_scenario_and_seed_resumes_and_reports_intervals(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    starts = ["fresh", "average", "consolidated", "best_client"]
    config = FederationConfig(
        network=SMALL,
        num_clients=2,
        pretrain_epochs=3,
        consolidation_epochs=2,
        rounds=2,
        batch_size=16,
        target_fractions=[0.9],
        starts=starts,
        out=tmp_path,
    )
    scenarios = [IIDPartitioner(), DirichletPartitioner(alpha=1.0)]
    experiment = FederatedExperiment(config, scenarios=scenarios, seeds=[0, 1])
    rows = experiment.run()
    cells = [("iid", 0), ("iid", 1), ("dirichlet(alpha=1)", 0), ("dirichlet(alpha=1)", 1)]
    expected = {(s, str(seed), start, str(r)) for s, seed in cells for start in starts for r in range(3)}
    written = read_csv(tmp_path / "rounds.csv")
    assert {(r["scenario"], r["seed"], r["start"], r["round"]) for r in written} == expected
    assert len(written) == len(expected) == len(rows)
    assert (tmp_path / "cells" / "dirichlet-alpha-1-seed1" / "rounds.csv").is_file()
    assert [(r["scenario"], r["seed"]) for r in written[:: len(starts) * 3]] == [
        ("iid", "0"),
        ("dirichlet(alpha=1)", "0"),
        ("iid", "1"),
        ("dirichlet(alpha=1)", "1"),
    ]  # seed by seed: an experiment cut short has every scenario at its first seeds
    assert (tmp_path / "accuracy.png").stat().st_size > 0

    from kdlightning.federated import apps

    def no_run(*args, **kwargs):
        raise AssertionError("a finished cell was run again")

    monkeypatch.setattr(apps, "run", no_run)
    resumed = FederatedExperiment(config, scenarios=scenarios, seeds=[0, 1])
    assert [r["test_acc"] for r in resumed.run()] == [r["test_acc"] for r in written]

    assert experiment.records.finished_cells(written) == set(cells)
    by_hand = _by_hand(written, 0.9)
    per_seed = experiment.records.per_seed(written)
    both = [(scenario, start) for (scenario, start), values in by_hand.items() if len(values) >= 2]
    assert both, "no start has a reduction on both seeds of a scenario"
    for (scenario, start), values in by_hand.items():
        found = {seed: result.reduction for seed, result in per_seed[(scenario, start)].items()}
        assert found == pytest.approx(values)
    scenario, start = both[0]  # the page renders the interval of the reductions
    section = (tmp_path / "summary.md").read_text().split(f"## {scenario}\n")[1].split("## ")[0]
    line = next(line for line in section.splitlines() if line.startswith(f"| {start} |"))
    assert mean_interval(list(by_hand[(scenario, start)].values())).format(1, "%") in line


def _curves_rows(curves: dict[tuple[int, str], list[float]], scenario: str = "iid") -> list[dict]:
    """Rows of ``rounds.csv`` from accuracy curves per (seed, start), one accuracy per round from round 0."""
    return [
        {"scenario": scenario, "seed": seed, "start": start, "round": number, "test_acc": accuracy, "test_loss": 1.0}
        for (seed, start), curve in curves.items()
        for number, accuracy in enumerate(curve)
    ]


FRESH = [0.1, 0.5, 0.8, 0.9]  # 3 rounds; its best after round 0 is 0.9: the target 0.81 is met at round 3


def test_a_start_that_never_reaches_a_target_counts_at_the_first_round_not_run_in_the_experiment(
    tmp_path: Path,
) -> None:
    records = ExperimentRecords(
        out=tmp_path,
        cells=[("iid", seed) for seed in range(5)],
        seeds=range(5),
        starts=["fresh", "consolidated"],
        rounds=3,
        targets=Targets(fractions=(0.9,)),
        dataset="Digits",
        num_clients=2,
        local_epochs=1,
    )
    curves = {(seed, "fresh"): FRESH for seed in range(5)}
    curves |= {(seed, "consolidated"): [0.85, 0.86, 0.87, 0.88] for seed in range(4)}  # met as it is: 1 round
    curves[(4, "consolidated")] = [0.5, 0.6, 0.7, 0.75]  # never: counted at round 4, 5 rounds with the collection
    rows = _curves_rows(curves)
    per_seed = records.per_seed(rows)
    consolidated, fresh = per_seed[("iid", "consolidated")], per_seed[("iid", "fresh")]
    assert [consolidated[seed].rounds for seed in range(5)] == [1, 1, 1, 1, 5]
    assert [consolidated[seed].censored for seed in range(5)] == [False] * 4 + [True]
    # 4 seeds save 100 (1 - 1 / 3) = 66.7%; the censored one 100 (1 - 5 / 3) = -66.7%: +40.0% over the 5
    reductions = [consolidated[seed].reduction for seed in range(5)]
    assert reductions == pytest.approx([100 * (1 - 1 / 3)] * 4 + [100 * (1 - 5 / 3)])
    expected = mean_interval(reductions)
    assert expected.mean == pytest.approx(40.0)
    assert [fresh[seed].rounds for seed in range(5)] == [3] * 5 and not any(r.censored for r in fresh.values())
    summary = records.summary(rows)
    assert f"| consolidated | 1.8 [-0.4, 4.0] | {expected.format(1, '%')} | 5 | 1 |" in summary  # as the page shows it


def test_a_fresh_start_that_never_reaches_the_target_is_censored_the_same_way() -> None:
    rows = _curves_rows({(0, "fresh"): FRESH, (0, "consolidated"): [0.9, 0.96, 0.97, 0.97]})
    results = start_results(accuracy_curves(rows), [0.95])
    # fresh never reaches 0.95 in 3 rounds: counted at round 4; consolidated at round 1, 2 rounds with the collection
    (fresh_rounds, *_), (rounds, reduction, *_) = results["fresh"], results["consolidated"]
    assert (fresh_rounds, rounds) == (4, 2)
    assert reduction == pytest.approx(100 * (1 - 2 / 4))
    assert results["fresh"].censored and results["consolidated"].censored  # its reduction rests on fresh's count


def test_a_single_federation_s_summary_counts_a_missed_target_at_the_first_round_not_run(tmp_path: Path) -> None:
    rows = _curves_rows({(0, "fresh"): FRESH, (0, "consolidated"): [0.85, 0.86, 0.87, 0.88]})
    curves, targets = accuracy_curves(rows), Targets(fractions=(0.9, 1.0))
    values = [value for _, value in targets.of(curves)]
    assert values == pytest.approx([0.81, 0.9])
    # targets 0.81 (consolidated: 1 round against 3, +66.7%) and 0.9 (missed: counted at 4 + 1 against 3, -66.7%)
    met, missed = (count_to_target(curves, "consolidated", value) for value in values)
    assert (met.total, met.censored, met.reduction) == (1, False, pytest.approx(100 * (1 - 1 / 3)))
    assert (missed.rounds, missed.total, missed.censored) == (4, 5, True)
    assert missed.reduction == pytest.approx(100 * (1 - 5 / 3)) and not missed.fresh_censored
    records = FederationRecords(
        out=tmp_path,
        starts=["fresh", "consolidated"],
        rounds=3,
        targets=targets,
        dataset="Digits",
        num_clients=2,
        partitioner="iid",
        local_epochs=1,
        seed=0,
    )
    assert "| consolidated | 0.8500 | 0.8800 | 1 (+66.7%) | > 4 (-66.7%) |" in records.summary(rows)  # as shown


def test_the_shipped_heterogeneous_and_scenario_configs_parse(tmp_path: Path) -> None:
    configs = ROOT / "configs" / "federated"
    federation = load_federation(["-c", str(configs / "fashion_mnist_heterogeneous.yaml"), "--out", str(tmp_path)])
    assert federation.config.starts == ("fresh", "consolidated", "best_client")
    assert len(federation.config.client_networks) == 4
    experiment = load_experiment(["-c", str(configs / "fashion_mnist_scenarios.yaml"), "--out", str(tmp_path)])
    assert len(experiment.scenarios) == 5 and len(experiment.seeds) >= 5 and len(experiment.cells) == 25
    names = {str(s) for s in experiment.scenarios}
    assert names >= {"iid", "dirichlet(alpha=0.1)", "label_skew(classes_per_party=2)"}
    single = load_experiment(["-c", str(ROOT / "configs" / "federated" / "digits.yaml"), "--out", str(tmp_path)])
    assert list(single.cells) == [("dirichlet(alpha=0.5)", 0)]


def test_an_experiment_with_duplicate_cells_or_empty_lists_fails_at_construction(tmp_path: Path) -> None:
    config = FederationConfig(SMALL, num_clients=2, out=tmp_path)
    with pytest.raises(ValueError, match="twice"):
        FederatedExperiment(config, scenarios=[IIDPartitioner(), IIDPartitioner()])
    with pytest.raises(ValueError, match="seeds"):
        FederatedExperiment(config, seeds=[])
    with pytest.raises(ValueError, match="scenarios"):
        FederatedExperiment(config, scenarios=[])


def test_an_experiment_resumes_a_cell_in_the_directory_an_earlier_version_named(tmp_path: Path) -> None:
    """Cells were once written to ``dirichlet_alpha_0.5-seed0``: such a cell resumes there, with its finished starts."""
    config = FederationConfig(SMALL, num_clients=2, rounds=1, starts=["fresh"], out=tmp_path)
    cells = tmp_path / "cells"
    earlier = FederatedExperiment(config, seeds=[0]).cells[("dirichlet(alpha=0.5)", 0)]
    assert earlier.config.out == cells / "dirichlet-alpha-0.5-seed0"  # a new experiment's name
    earlier = Federation(dataclasses.replace(earlier.config, out=cells / "dirichlet_alpha_0.5-seed0"))
    earlier.check()
    earlier.check_resume()
    earlier.records.record([{"start": "fresh", "round": r, "test_acc": 0.5, "test_loss": 1.0} for r in (0, 1)])

    experiment = FederatedExperiment(config, seeds=[0, 1])
    directories = [federation.config.out for federation in experiment.cells.values()]
    assert directories == [cells / "dirichlet_alpha_0.5-seed0", cells / "dirichlet-alpha-0.5-seed1"]
    resumed = experiment.cells[("dirichlet(alpha=0.5)", 0)]
    resumed.check()
    resumed.check_resume()  # the same configuration: its rows are kept
    assert set(resumed.records.finished_starts()) == {"fresh"}

    (cells / "dirichlet-alpha-0.5-seed0").mkdir()  # once the current name exists, it is the cell's directory
    assert cell_directory(tmp_path, "dirichlet(alpha=0.5)", 0) == cells / "dirichlet-alpha-0.5-seed0"


def test_an_experiment_s_w_and_b_runs_are_grouped_by_it_and_named_by_cell(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("wandb")
    import lightning.pytorch.loggers as loggers

    from kdlightning.federated.apps import _tracker

    made: list[dict] = []

    class Recording:
        def __init__(self, **settings) -> None:
            made.append(settings)

        def log_hyperparams(self, params) -> None:
            made[-1]["hyperparameters"] = params

    monkeypatch.setattr(loggers, "WandbLogger", Recording)
    config = FederationConfig(SMALL, num_clients=2, logger=True, out=tmp_path / "experiment")
    experiment = FederatedExperiment(config, seeds=[0, 1])
    for cell in experiment.cells.values():
        _tracker(cell, "consolidated")
    assert [(m["group"], m["name"]) for m in made] == [
        ("experiment", "dirichlet-alpha-0.5-seed0/consolidated"),
        ("experiment", "dirichlet-alpha-0.5-seed1/consolidated"),
    ]
    assert [m["hyperparameters"]["seed"] for m in made] == [0, 1]
    mine = FederationConfig(SMALL, num_clients=2, logger={"group": "mine"}, out=tmp_path / "other")
    _tracker(next(iter(FederatedExperiment(mine).cells.values())), "fresh")
    assert (made[-1]["group"], made[-1]["name"]) == ("mine", "dirichlet-alpha-0.5-seed0/fresh")
    alone = Federation(FederationConfig(SMALL, num_clients=2, logger=True, out=tmp_path / "alone"))
    _tracker(alone, "fresh")
    assert (made[-1]["group"], made[-1]["name"]) == ("alone", "fresh")


def test_rounds_of_another_configuration_are_never_resumed(tmp_path: Path) -> None:
    from kdlightning.federated import apps

    def federation(network=SMALL, **changes) -> Federation:
        settings = {"num_clients": 2, "rounds": 1, "starts": ["fresh"], "out": tmp_path / "one"}
        return checked(network, **{**settings, **changes})

    first = federation()
    first.check_resume()  # nothing to resume: the configuration is recorded
    first.records.record([{"start": "fresh", "round": r, "test_acc": 0.5, "test_loss": 1.0} for r in (0, 1)])
    federation().check_resume()  # the same configuration resumes
    federation(rounds=3).check_resume()  # more rounds extend the starts
    with pytest.raises(ValueError, match=r"another configuration(.|\n)*`local_epochs`: 1 in .*, 2 now"):
        apps.run(federation(local_epochs=2))  # before Flower starts
    with pytest.raises(ValueError, match="`networks`"):
        federation(WIDER).check_resume()

    config = FederationConfig(SMALL, num_clients=2, rounds=1, starts=["fresh"], out=tmp_path / "experiment")
    experiment = FederatedExperiment(config, seeds=[0])
    experiment.check()
    rows = [
        {"scenario": "dirichlet(alpha=0.5)", "seed": 0, "start": "fresh", "round": r, "test_acc": 0.5} for r in (0, 1)
    ]
    experiment.records.write(rows)  # rows written before the configuration was recorded: the next run records its own
    assert [r["test_acc"] for r in FederatedExperiment(config, seeds=[0]).run()] == ["0.5", "0.5"]
    with pytest.raises(ValueError, match="`batch_size`"):  # its finished cell would be kept, so it is refused
        FederatedExperiment(dataclasses.replace(config, batch_size=8), seeds=[0]).run()
