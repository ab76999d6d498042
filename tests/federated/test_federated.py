"""`kdl federate`: multi-teacher consolidation, the parameter average, and FedAvg on Flower's simulation."""

from __future__ import annotations

import ast
import copy
import re
import time
from functools import partial
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from kdlightning import MultiTeacherKD
from kdlightning.cache import CacheReferenceOutputs
from kdlightning.data import Digits, IIDPartitioner, PartitionedDataModule, Partitioner
from kdlightning.errors import RunError
from kdlightning.federated import (
    PAPER_REDUCTION,
    Federation,
    FederationConfig,
    Targets,
    accuracy_curves,
    count_to_target,
    load_federation,
    round_reduction,
    rounds_to_target,
    run,
    weighted_average,
)
from kdlightning.federated.records import FederationRecords, federation_record
from kdlightning.losses import ensemble_logits, multi_teacher_terms
from kdlightning.models import MLP, SmallCNN
from kdlightning.reporting import read_csv
from kdlightning.trainers import quiet_trainer

ROOT = Path(__file__).resolve().parents[2]
SMALL = partial(MLP, in_features=64, hidden_sizes=(8,))


def checked(network=SMALL, **settings) -> Federation:
    """A federation of ``network`` with ``settings``, checked (its data split, its networks built)."""
    federation = Federation(FederationConfig(network, **settings))
    federation.check()
    return federation


def test_the_target_is_the_weighted_average_of_the_teachers_softened_predictions() -> None:
    torch.manual_seed(0)
    teachers = [torch.randn(5, 4) * 3 for _ in range(3)]
    weights = [1.0, 2.0, 5.0]
    temperature = 2.5
    by_hand = sum(
        w / sum(weights) * torch.softmax(z.double() / temperature, dim=-1)
        for z, w in zip(teachers, weights, strict=True)
    )
    target = torch.softmax(ensemble_logits(teachers, temperature, weights).double() / temperature, dim=-1)
    torch.testing.assert_close(target, by_hand, rtol=1e-6, atol=1e-7)

    student = torch.randn(5, 4, requires_grad=True)
    terms = multi_teacher_terms(student, teachers, torch.zeros(5, dtype=torch.long), temperature, 1.0, weights)
    log_p_s = torch.log_softmax(student.double() / temperature, dim=-1)
    kl = (by_hand * (by_hand.log() - log_p_s)).sum(-1).mean() * temperature**2
    torch.testing.assert_close(terms["loss"].double(), kl, rtol=1e-5, atol=1e-6)
    terms["loss"].backward()
    assert student.grad is not None and all(z.grad is None for z in teachers)


def test_equal_weights_by_default_and_bad_weights_are_refused() -> None:
    a, b = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    torch.testing.assert_close(ensemble_logits([a, b], 1.0), ensemble_logits([a, b], 1.0, [4.0, 4.0]))
    with pytest.raises(ValueError, match="weights"):
        ensemble_logits([a, b], 1.0, [1.0])
    with pytest.raises(ValueError, match="weights"):
        MultiTeacherKD(SMALL(num_classes=2), [SMALL(num_classes=2)], 2, weights=[-1.0])
    with pytest.raises(ValueError, match="teachers"):
        MultiTeacherKD(SMALL(num_classes=2), [], 2)


def test_heterogeneous_teachers_are_distilled_with_each_teachers_outputs_cached(tmp_path: Path) -> None:
    data = PartitionedDataModule(
        Digits(), IIDPartitioner(), num_parties=3, transfer="public", public_fraction=0.2, batch_size=64
    )
    teachers = [SmallCNN(num_classes=10, channels=(4, 8)), MLP(num_classes=10, in_features=64, hidden_sizes=(16,))]
    calls = {"n": 0}
    for teacher in teachers:
        teacher.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    student = SMALL(num_classes=10)
    before = copy.deepcopy(student.state_dict())
    model = MultiTeacherKD(student, teachers, 10, temperature=2.0, weights=[1.0, 3.0])
    assert "teachers" not in model.hparams and model.hparams["weights"] == [1.0, 3.0]
    trainer = quiet_trainer(3, [CacheReferenceOutputs(cache_dir=str(tmp_path))], limit_val_batches=0)
    trainer.fit(model, datamodule=data)
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    assert any(not torch.equal(v, student.state_dict()[k]) for k, v in before.items())
    batches = -(-len(data.public_index) // 64)
    assert calls["n"] == 2 * batches  # each teacher ran over the transfer set once, in the first epoch
    assert set(model.state_dict()) == {f"student.{k}" for k in student.state_dict()}  # teachers not checkpointed


def test_weighted_average_and_round_arithmetic() -> None:
    states = [
        {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(4)},
        {"w": torch.tensor([4.0, 8.0]), "n": torch.tensor(8)},
    ]
    average = weighted_average(states, [300, 100])
    torch.testing.assert_close(average["w"], torch.tensor([1.75, 3.5]))
    assert average["n"].dtype == torch.int64 and int(average["n"]) == 5
    with pytest.raises(ValueError, match="architecture"):
        weighted_average([states[0], {"w": torch.zeros(3), "n": torch.tensor(1)}], [1, 1])
    assert rounds_to_target([0.2, 0.6, 0.9], 0.6) == 1  # index 0 is round 0, the start before any FedAvg round
    assert rounds_to_target([0.7, 0.8], 0.6) == 0
    assert rounds_to_target([0.2, 0.5], 0.6) is None
    assert round_reduction(4, 0, extra_rounds=1) == pytest.approx(75.0)  # met at round 0: the collection round only
    assert round_reduction(0, 2) is None
    assert round_reduction(10, 3, extra_rounds=1) == pytest.approx(60.0)
    assert round_reduction(10, None) is None


class Starved(Partitioner):
    """Client 1 gets no sample."""

    @property
    def name(self) -> str:
        return "starved"

    def partition(self, labels, num_parties: int, seed: int) -> list[np.ndarray]:
        index = np.arange(len(labels))
        return [index, np.empty(0, dtype=np.int64), *[np.empty(0, dtype=np.int64)] * (num_parties - 2)]


def test_a_client_with_an_empty_partition_gets_a_clear_error(tmp_path: Path) -> None:
    federation = checked(partitioner=Starved(), num_clients=2, out=tmp_path)
    with pytest.raises(ValueError, match="Party 1 has 0 samples"):
        federation.train_client(1, federation.networks.global_network().state_dict(), server_round=1)


def test_a_client_model_with_another_class_count_gets_a_clear_error(tmp_path: Path) -> None:
    wrong = partial(MLP, in_features=64, hidden_sizes=(8,), num_classes=7)
    with pytest.warns(UserWarning, match="average"):  # the clients' network is not the global one
        federation = checked(client_networks=[lambda n: wrong()], num_clients=2, pretrain_epochs=1, out=tmp_path)
    with pytest.raises(ValueError, match=r"\(\d+, 7\).*num_classes=10"):
        federation.pretrained_client(0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_clients": 1}, "num_clients"),
        ({"rounds": 0}, "rounds"),
        ({"public_fraction": 0.0}, "public_fraction"),
        ({"starts": ["warm"]}, "starts"),
        ({"target_accuracy": 1.5}, "target_accuracy"),
    ],
)
def test_bad_experiments_fail_at_construction(kwargs: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=message):
        FederationConfig(SMALL, out=tmp_path, **kwargs)


def test_building_a_federation_does_no_work_and_its_check_fails_before_any_client_trains(
    tmp_path: Path, no_training
) -> None:
    loaded = []

    class Counted(Digits):
        def load(self):
            loaded.append(1)
            return super().load()

    federation = Federation(
        FederationConfig(
            SMALL,
            client_networks=[partial(MLP, in_features=64, hidden_sizes=(12,))],
            dataset=Counted(),
            starts=["average"],
            out=tmp_path,
        )
    )
    assert not loaded and not federation.checked
    with pytest.raises(RunError, match=r"check\(\)"):
        _ = federation.starts
    with pytest.warns(UserWarning, match="average"), pytest.raises(ValueError, match="only `average`"):
        federation.check()
    assert loaded and not (tmp_path / "clients").exists()


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any `Trainer.fit` fails the test: the arguments must be checked before a network trains."""

    def no_fit(*args, **kwargs) -> None:
        raise AssertionError("a network was trained before the arguments were checked")

    monkeypatch.setattr(L.Trainer, "fit", no_fit)


@pytest.mark.parametrize(
    ("option", "message"),
    [("--consolidation.init_args.temperature=-1", "`temperature`"), ("--consolidation.alpha=1.5", "`alpha`")],
)
def test_bad_distillation_values_fail_before_any_client_trains(
    option: str, message: str, tmp_path: Path, no_training
) -> None:
    """SPEC §9: `kdl federate --consolidation.temperature=-1` fails at construction, not after pre-training ten clients."""
    federation = load_federation(
        ["-c", str(ROOT / "configs" / "federated" / "digits.yaml"), "--out", str(tmp_path), option]
    )
    with pytest.raises(ValueError, match=message):
        federation.check()
    assert not (tmp_path / "clients").exists()


def test_the_consolidation_is_the_configured_factory_called_with_the_clients_weights(tmp_path: Path) -> None:
    built = []

    def consolidation(student, teachers, num_classes, weights=None) -> MultiTeacherKD:
        built.append(weights)
        return MultiTeacherKD(student, teachers, num_classes, temperature=2.0, weights=weights)

    federation = Federation(FederationConfig(SMALL, num_clients=2, consolidation=consolidation, out=tmp_path))
    assert built == []  # building the federation builds nothing
    federation.check()
    assert built == [[1.0]]  # the check builds it once, from fresh networks
    with pytest.raises(TypeError, match="MultiTeacherKD"):
        checked(num_clients=2, consolidation=lambda s, t, n, weights: s, out=tmp_path)
    with pytest.raises(ValueError, match="max_epochs"):
        FederationConfig(SMALL, num_clients=2, trainer={"max_epochs": 3}, out=tmp_path)
    assert federation.config.trainer == {}
    assert FederationConfig(SMALL, num_clients=2, trainer={"precision": "64-true"}, out=tmp_path).trainer


def _imports(module: str) -> set[str]:
    """Every module ``kdlightning/federated/<module>.py`` imports (``from a import b`` counts ``a`` and ``a.b``)."""
    tree = ast.parse((ROOT / "kdlightning" / "federated" / f"{module}.py").read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            names |= {node.module or "", *(f"{node.module}.{alias.name}" for alias in node.names)}
    return names


def test_the_experiment_layer_imports_no_flower_and_the_apps_layer_points_one_way() -> None:
    import subprocess
    import sys

    code = (
        "import sys, kdlightning.federated;"
        "assert not any(m == 'flwr' or m.startswith('flwr.') for m in sys.modules), 'flwr imported';"
        "assert 'kdlightning.federated.apps' not in sys.modules, 'apps imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    for module in ("aggregate", "config", "networks", "records", "federation", "experiment_records"):
        flower = [name for name in _imports(module) if name.startswith(("flwr", "kdlightning.federated.apps"))]
        assert not flower, module
    assert "kdlightning.federated.federation" in _imports("apps")


def test_fedavg_on_flower_averages_the_clients_by_their_examples(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One simulated round with 2 clients: the global model is the example-weighted mean of the clients' models."""
    with pytest.warns(UserWarning, match="average"):
        federation = checked(
            client_networks=[SMALL, partial(MLP, in_features=64, hidden_sizes=(12,))],  # teachers of two architectures
            num_clients=2,
            pretrain_epochs=2,
            consolidation_epochs=2,
            rounds=1,
            starts=["fresh", "average", "consolidated"],
            out=tmp_path,
        )
    assert federation.starts == ["fresh", "consolidated"]
    rows = run(federation)
    assert {(r["start"], r["round"]) for r in rows} == {(s, str(n)) for s in ("fresh", "consolidated") for n in (0, 1)}
    start = federation.networks.global_network().state_dict()
    final = torch.load(tmp_path / "models" / "fresh.pt", weights_only=True)
    assert any(not torch.equal(start[k], final[k]) for k in start)
    clients = [federation.train_client(k, start, server_round=1) for k in range(2)]
    expected = weighted_average([state for state, _, _ in clients], [n for _, n, _ in clients])
    for key in expected:
        torch.testing.assert_close(final[key], expected[key], rtol=1e-5, atol=1e-6)
    assert (tmp_path / "accuracy.png").read_bytes()[:4] == b"\x89PNG"
    assert f"{PAPER_REDUCTION}%" in (tmp_path / "summary.md").read_text()
    assert len(list((tmp_path / "clients").glob("*.pt"))) == 2

    from kdlightning.federated import apps

    calls = {"n": 0}
    monkeypatch.setattr(apps, "run_simulation", lambda *a, **k: calls.__setitem__("n", 1))  # finished: not run again
    assert [r["test_acc"] for r in run(federation)] == [r["test_acc"] for r in read_csv(tmp_path / "rounds.csv")]
    assert calls["n"] == 0


def test_every_federated_config_parses(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from text_assets import stand_in_minilm

    from kdlightning.federated import load_experiment

    monkeypatch.chdir(tmp_path)  # the text config reads models/all-MiniLM-L6-v2
    stand_in_minilm(tmp_path)
    paths = sorted((ROOT / "configs" / "federated").glob("*.yaml"))
    assert len(paths) == 8
    paths += sorted((ROOT / "examples" / "flower_app").glob("*.yaml"))
    strategies = set()
    for path in paths:
        experiment = load_experiment(["-c", str(path), "--out", str(tmp_path)])
        assert experiment.cells
        for federation in experiment.cells.values():
            assert federation.config.num_clients >= 2 and federation.config.starts
            strategies.add(type(federation.server_strategy()).__name__)  # its class and init_args, checked
    assert strategies == {"FedAvg", "FedDF"}


def test_kdl_dispatches_federate(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys) -> None:
    from kdlightning.cli import main
    from kdlightning.federated import apps

    ran = {}
    monkeypatch.setattr(
        apps, "run", lambda federation, verbose=False: ran.setdefault("out", federation.config.out) and []
    )
    (tmp_path / "summary.md").write_text("# summary\n")
    main(["federate", "-c", str(ROOT / "configs" / "federated" / "digits.yaml"), "--out", str(tmp_path), "--rounds=3"])
    assert ran["out"] == tmp_path
    assert "# summary" in capsys.readouterr().out


def test_the_deployed_apps_build_the_experiment_from_the_run_config(tmp_path: Path) -> None:
    from flwr.app import Context, RecordDict

    from kdlightning.federated.apps import _partition, _resolve

    feddf = ROOT / "examples" / "flower_app" / "feddf.yaml"
    run_config = {"kdl-config": str(feddf), "kdl-out": str(tmp_path / "feddf")}
    federation = _resolve(None, Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config=run_config))
    strategy = federation.server_strategy()  # FedDF, given the federation's distillation and networks
    assert type(strategy).__name__ == "FedDF" and strategy.architectures is federation.networks
    assert strategy.distiller == federation.distil_round and strategy.settings.patience == 1

    config = ROOT / "examples" / "flower_app" / "federation.yaml"
    context = Context(
        run_id=1,
        node_id=7,
        node_config={"partition-id": 3, "num-partitions": 10},
        state=RecordDict(),
        run_config={"kdl-config": str(config), "kdl-out": str(tmp_path)},
    )
    federation = _resolve(None, context)
    assert federation.checked and federation.config.out == tmp_path and federation.config.num_clients == 10
    assert _partition(federation, context) == 3
    context.node_config["num-partitions"] = 4
    with pytest.raises(ValueError, match=r"num-partitions=4.*num_clients=10"):
        _partition(federation, context)
    with pytest.raises(ValueError, match="kdl-config"):
        _resolve(None, Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={}))


def _rows(curves: dict[str, list[float]]) -> list[dict]:
    return [
        {"start": start, "round": r, "test_acc": acc, "test_loss": 0.0, "seconds": 0.0}
        for start, accuracies in curves.items()
        for r, acc in enumerate(accuracies)
    ]


def test_a_start_at_the_target_after_collection_is_charged_only_its_collection_round(tmp_path: Path) -> None:
    """SPEC §7: a start that meets the target at round 0 needs only its collection round."""
    fresh = [0.1, 0.5, 0.8, 0.92]
    curves = accuracy_curves(_rows({"fresh": fresh, "consolidated": [0.95, 0.96, 0.97, 0.97]}))
    assert count_to_target(curves, "fresh", 0.9).total == 3  # fresh: three FedAvg rounds, no collection
    met = count_to_target(curves, "consolidated", 0.9)
    assert (met.rounds, met.total, met.censored) == (0, 1, False)  # 1 = the collection round alone
    assert met.reduction == pytest.approx(100 * (1 - 1 / 3))
    late = count_to_target(
        accuracy_curves(_rows({"fresh": fresh, "consolidated": [0.5, 0.91, 0.97]})), "consolidated", 0.9
    )
    assert (late.total, late.reduction) == (2, pytest.approx(100 * (1 - 2 / 3)))

    records = FederationRecords(
        out=tmp_path,
        starts=["fresh", "consolidated"],
        rounds=3,
        targets=Targets(accuracy=0.9),
        dataset="Digits",
        num_clients=2,
        partitioner="iid",
        local_epochs=1,
        seed=0,
    )
    summary = records.summary(_rows({"fresh": fresh, "consolidated": [0.95, 0.96, 0.97, 0.97]}))
    assert "| consolidated | 0.9500 | 0.9700 | 1 (+66.7%) |" in summary  # the page renders what was counted


def test_each_round_reshuffles_each_clients_batches_and_a_rerun_repeats_them(tmp_path: Path) -> None:
    federation = checked(num_clients=2, out=tmp_path)
    twin = checked(num_clients=2, out=tmp_path / "twin")

    def first_batch(fed: Federation, server_round: int) -> list[int]:
        _, _, index = next(iter(fed.train_loader(0, server_round)))
        return index.tolist()

    assert first_batch(federation, 1) != first_batch(federation, 2)
    assert first_batch(federation, 1) == first_batch(twin, 1) and first_batch(federation, 2) == first_batch(twin, 2)
    assert sorted(federation.train_loader(0, 1).sampler) == sorted(federation.train_loader(0, 2).sampler)  # same data

    start = federation.networks.global_network().state_dict()  # no randomness of its own: only the order differs
    one, two, again = (federation.train_client(0, start, r)[0] for r in (1, 2, 1))
    assert any(not torch.equal(one[k], two[k]) for k in one)
    assert all(torch.equal(one[k], again[k]) for k in one)


def test_fedprox_pulls_a_clients_local_model_towards_the_global_one(tmp_path: Path) -> None:
    from kdlightning.federated.apps import Proximal

    federation = checked(num_clients=2, local_epochs=3, out=tmp_path)
    start = federation.networks.global_network().state_dict()

    def drift(callbacks: list) -> float:
        state = federation.train_client(0, start, 1, callbacks)[0]
        return sum(float((state[k] - start[k]).pow(2).sum()) for k in start) ** 0.5

    free, pulled = drift([]), drift([Proximal(50.0)])
    assert pulled < 0.5 * free
    assert drift([Proximal(0.0)]) == pytest.approx(free)
    with pytest.raises(ValueError, match="proximal_mu"):
        Proximal(-1.0)


@pytest.mark.parametrize(
    ("strategy", "message"),
    [
        ({"class_path": "flwr.serverapp.strategy.FedNope"}, "cannot import"),
        ({"class_path": "no_such_module.FedAvg"}, "cannot import"),
        ({"class_path": "torch.nn.Linear"}, "Flower strategy"),
        ({"class_path": "FedProx", "init_args": {"mu": 0.1}}, "does not take"),
        ({"class_path": "FedAvg", "init_args": {"fraction_train": 0.5}}, "fraction_train"),
        ({"init_args": {"proximal_mu": 0.1}}, "class_path"),
    ],
)
def test_a_bad_strategy_fails_before_any_client_trains(
    strategy: dict, message: str, tmp_path: Path, no_training
) -> None:
    with pytest.raises(ValueError, match=rf"`strategy.*{message}|{message}.*`strategy"):
        checked(num_clients=2, strategy=strategy, out=tmp_path)


@pytest.mark.parametrize(
    ("strategy", "named"),
    [
        ({"class_path": "FedProx", "init_args": {"proximal_mu": -1}}, "`strategy.init_args.proximal_mu`"),
        ({"class_path": "FedProx", "proximal_mu": -0.5}, "`strategy.proximal_mu`"),
        ({"class_path": "FedProx", "init_args": {"proximal_mu": "strong"}}, "`strategy.init_args.proximal_mu`"),
    ],
)
def test_a_negative_proximal_mu_fails_at_construction_naming_it_and_its_range(
    strategy: dict, named: str, tmp_path: Path, no_training
) -> None:
    with pytest.raises(ValueError, match=re.escape(named) + r" must be a finite number >= 0"):
        FederationConfig(SMALL, num_clients=2, strategy=strategy, out=tmp_path)
    flags = ["--strategy.class_path=FedProx", "--strategy.proximal_mu=-1"]
    with pytest.raises(ValueError, match=r"`strategy\.proximal_mu` must be a finite number >= 0"):
        load_federation(["-c", str(ROOT / "configs" / "federated" / "digits.yaml"), "--out", str(tmp_path), *flags])
    assert not (tmp_path / "clients").exists()


@pytest.mark.parametrize(
    ("class_path", "says"),
    [
        ("FedNope", "cannot import 'flwr.serverapp.strategy.FedNope'"),
        ("FedProxx", "Did you mean `FedProx`?"),
        ("no_such_module.MyStrategy", "cannot import 'no_such_module.MyStrategy'"),
        ("flwr.server.strategy.FedAvg", "legacy strategies: use `flwr.serverapp.strategy.FedAvg`"),
        ("Strategy", "is an abstract Flower strategy"),
        ("torch.nn.Linear", "'torch.nn.Linear' is not a Flower strategy class"),
        (".FedAvg", "must be a dotted path to a class"),
    ],
)
def test_kdl_federate_names_strategy_and_what_it_allows_for_a_class_that_is_not_one(
    class_path: str, says: str, tmp_path: Path, capsys, no_training
) -> None:
    from kdlightning.cli import main

    config = str(ROOT / "configs" / "federated" / "digits.yaml")
    with pytest.raises(SystemExit):
        main(["federate", "-c", config, "--out", str(tmp_path), f"--strategy.class_path={class_path}"])
    error = capsys.readouterr().err
    assert error.startswith("kdl federate: ConfigurationError: `strategy.class_path`") and says in error
    assert "a concrete subclass of `flwr.serverapp.strategy.Strategy`" in error
    assert "(FedAvg, FedProx, FedAdam, ...)" in error
    assert not (tmp_path / "clients").exists()


def test_a_strategy_that_refuses_its_init_args_fails_at_the_check(tmp_path: Path, no_training) -> None:
    strategy = {"class_path": "FedTrimmedAvg", "init_args": {"beta": 0.7}}
    federation = Federation(FederationConfig(SMALL, num_clients=2, strategy=strategy, out=tmp_path))
    with pytest.raises(ValueError, match=r"^`strategy`: FedTrimmedAvg\(\*\*\{'beta': 0\.7\}\) refused .*`beta`"):
        federation.check()


def arrival_grid(client_app, num_clients: int, arrival: list[int]):
    """A Flower grid of ``num_clients`` connected ClientApps that reply in the order of ``arrival`` (partition ids)."""
    from flwr.app import Context, RecordDict
    from flwr.serverapp import Grid

    nodes = {101 + client: client for client in range(num_clients)}

    class Arrival(Grid):
        def get_node_ids(self) -> list[int]:
            return list(nodes)

        def send_and_receive(self, messages, *, timeout=None) -> list:
            replies = {}
            for message in messages:
                client = nodes[message.metadata.dst_node_id]
                config = {"partition-id": client, "num-partitions": num_clients}
                context = Context(
                    run_id=1,
                    node_id=message.metadata.dst_node_id,
                    node_config=config,
                    state=RecordDict(),
                    run_config={},
                )
                replies[client] = client_app(message, context)
            return [replies[client] for client in arrival if client in replies]

        set_run = run = create_message = get_nodes = push_messages = pull_messages = None

    return Arrival()


def test_a_rounds_global_model_and_test_loss_do_not_depend_on_the_order_the_clients_reply_in(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The strategy sums the clients' float32 models, so their order decides the last bits: it is the clients'."""
    from flwr.supercore.task_identity import TaskIdentity

    from kdlightning.federated.apps import client_app_for, fedavg

    for name, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 1)):  # the server's task, as in a run
        monkeypatch.setattr(TaskIdentity, name, value)
    federation = checked(num_clients=4, rounds=1, starts=["fresh"], progress=False, out=tmp_path)
    start = federation.networks.global_network().state_dict()
    generator = torch.Generator().manual_seed(3)
    trained = [
        {key: value + torch.randn(value.shape, generator=generator) for key, value in start.items()} for _ in range(4)
    ]
    examples = [37, 52, 61, 29]

    def train_client(client: int, state: dict, server_round: int, callbacks=(), own_architecture=False) -> tuple:
        return trained[client], examples[client], 0.5

    monkeypatch.setattr(federation, "train_client", train_client)
    client_app = client_app_for(federation)
    Arrival = partial(arrival_grid, client_app, 4)

    def one_round(arrival: list[int]) -> tuple[dict, float]:
        losses = []

        def evaluate(server_round: int, state: dict, failures=(), server_seconds=0.0) -> float:
            accuracy, loss = federation.evaluate(state)
            losses.append(loss)
            return accuracy

        return fedavg(federation, Arrival(arrival), start, evaluate, timeout=60), losses[-1]

    (model, loss), *others = [one_round(arrival) for arrival in ([0, 1, 2, 3], [3, 1, 0, 2], [2, 3, 1, 0])]
    assert [other_loss for _, other_loss in others] == [loss, loss]  # exactly, not approximately
    assert all(torch.equal(model[key], other[key]) for other, _ in others for key in model)


def test_strategies_by_class_path_and_on_the_command_line(tmp_path: Path) -> None:
    from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx

    assert isinstance(Federation(FederationConfig(SMALL, num_clients=2, out=tmp_path)).server_strategy(), FedAvg)
    federation = Federation(
        FederationConfig(
            SMALL,
            num_clients=4,
            fraction_train=0.5,
            strategy={"class_path": "flwr.serverapp.strategy.FedAdam", "init_args": {"eta": 0.01}},
            out=tmp_path,
        )
    )
    strategy = federation.server_strategy()
    assert isinstance(strategy, FedAdam) and strategy.eta == 0.01
    assert (strategy.fraction_train, strategy.min_train_nodes, strategy.min_available_nodes) == (0.5, 2, 4)
    config = str(ROOT / "configs" / "federated" / "digits.yaml")
    flags = ["--strategy.class_path=FedProx", "--strategy.proximal_mu=0.25", "--progress=false"]
    federation = load_federation(["-c", config, "--out", str(tmp_path), *flags])
    strategy = {"class_path": "flwr.serverapp.strategy.FedProx", "init_args": {"proximal_mu": 0.25}}
    assert federation.config.strategy == strategy
    assert isinstance(federation.server_strategy(), FedProx) and federation.config.progress is False


def test_a_round_with_no_client_that_trained_stops_the_run_naming_the_round_and_the_start() -> None:
    from flwr.app import Error, Message, MessageType, Metadata, RecordDict
    from flwr.serverapp import Grid

    from kdlightning.federated.apps import RoundFailures

    class Replies(Grid):
        """Answers the first ``ok`` messages, and the others with an error; a grid has nothing else to do here."""

        def __init__(self, ok: int) -> None:
            self.ok = ok

        def send_and_receive(self, messages, *, timeout=None):
            error = Error(0, "<class 'ValueError'>:<'boom'>")
            return [
                Message(RecordDict(), reply_to=m) if k < self.ok else Message(error, reply_to=m)
                for k, m in enumerate(messages)
            ]

        set_run = run = create_message = get_node_ids = push_messages = pull_messages = None

    def messages(n: int, kind: str = MessageType.TRAIN) -> list:
        """What a strategy sends ``n`` clients (built here from its metadata: no run is in progress)."""
        return [
            Message(content=RecordDict(), metadata=Metadata(1, f"m{k}", 0, k + 1, "", "1", time.time(), 600.0, kind))
            for k in range(n)
        ]

    grid = RoundFailures(Replies(ok=1), "consolidated")
    assert len(list(grid.send_and_receive(messages(3), timeout=5))) == 3
    assert grid.failures == {1: ["<class 'ValueError'>:<'boom'>"] * 2}
    grid = RoundFailures(Replies(ok=0), "consolidated")
    grid.send_and_receive(messages(2, MessageType.EVALUATE))  # not a training round: no failure counted
    assert grid.failures == {}
    with pytest.raises(RuntimeError, match=r"Round 1 of the `consolidated` start.*none of the 2.*ValueError: boom$"):
        grid.send_and_receive(messages(2))


def test_a_client_that_fails_a_round_is_reported_in_that_rounds_row(tmp_path: Path) -> None:
    """Client 1 has no data, so its ClientApp raises in every round: the rows count it, the run goes on."""
    from kdlightning.federated.strategy import failure_reason

    config = FederationConfig(
        SMALL, partitioner=Starved(), num_clients=2, rounds=2, starts=["fresh"], progress=False, out=tmp_path
    )
    rows = run(Federation(config))  # run checks the federation first
    assert [(r["round"], r["failures"]) for r in rows] == [("0", "0"), ("1", "1"), ("2", "1")]
    assert rows[0]["failure"] == "" and all("Party 1 has 0 samples" in r["failure"] for r in rows[1:])
    reason = "\x1b[36mray::ClientAppActor.run()\x1b[39m\n  File ...\nValueError: boom\n\n"
    assert failure_reason(reason) == "ValueError: boom"


def test_kdl_federate_runs_fedprox_with_wandb_offline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("wandb")
    from kdlightning.cli import run as kdl

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    config = ROOT / "configs" / "federated" / "digits.yaml"
    args = ["federate", "-c", str(config), "--out", str(tmp_path), "--num_clients=2", "--rounds=1", "--starts=[fresh]"]
    args += ["--strategy.class_path=FedProx", "--strategy.proximal_mu=0.1", "--progress=false"]
    rows = kdl([*args, "--logger={project: kdl-test, group: fedprox}"])
    assert [(r["start"], r["round"], r["failures"]) for r in rows] == [("fresh", "0", "0"), ("fresh", "1", "0")]
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_the_progress_bar_shows_only_when_asked_and_on_a_terminal() -> None:
    from kdlightning.trainers import progress_bar

    assert progress_bar(4, "round", enabled=False).disable
    assert progress_bar(4, "round", enabled=None).disable  # on a terminal only: pytest captures stderr
    assert not progress_bar(4, "fit", enabled=True).disable


def test_the_federation_s_optimizer_trains_every_fit(tmp_path: Path) -> None:
    frozen = partial(torch.optim.SGD, lr=0.0)  # a fit that uses it moves nothing
    federation = checked(num_clients=2, pretrain_epochs=1, consolidation_epochs=1, optimizer=frozen, out=tmp_path)
    initial = federation.networks.initial_client_network(0).state_dict()
    clients = [federation.pretrained_client(k) for k in range(2)]
    assert all(torch.equal(clients[0][0][k], v) for k, v in initial.items())  # the pre-training used it
    start = federation.networks.global_network().state_dict()
    trained, _, _ = federation.train_client(1, start, 1)
    assert all(torch.equal(trained[k], v) for k, v in start.items())  # a local round used it
    consolidated = federation.consolidate(clients)
    assert all(torch.equal(consolidated[k], v) for k, v in start.items())  # so did the consolidation, not its own
    assert federation_record(federation.config, ["x"])["optimizer"] == {
        "class_path": "torch.optim.sgd.SGD",
        "init_args": {"lr": 0.0},
    }
    own = checked(num_clients=2, pretrain_epochs=1, out=tmp_path)
    assert "optimizer" not in federation_record(own.config, ["x"])
    own.pretrained_client(0)  # another optimizer: another pre-trained file, beside the first
    assert len(list((tmp_path / "clients").glob("client0-*.pt"))) == 2


def test_a_partition_that_reads_the_data_is_a_federation_scenario(tmp_path: Path) -> None:
    from kdlightning.data import FeatureSkewPartitioner
    from kdlightning.data.feature_skew import mean_intensity

    federation = checked(num_clients=3, partitioner=FeatureSkewPartitioner(strictness=1.0), out=tmp_path)
    brightness = [mean_intensity(federation.datamodule(k).data.train_inputs[parts]).mean() for k, parts in
                  enumerate(federation.datamodule(0).split_pool()[0])]  # fmt: skip
    assert brightness == sorted(brightness)  # strictness 1: client 0 holds the darkest images, client 2 the brightest
