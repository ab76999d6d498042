"""FedDF: FedAvg, then the round's client models distilled as an ensemble into the aggregate on the server."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import torch
from test_federated import SMALL, arrival_grid, checked

from kdlightning.federated.apps import client_app_for, fedavg
from kdlightning.losses import ensemble_logits

FEDDF = "kdlightning.federated.feddf.FedDF"


@pytest.fixture
def server_task(monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's task identity, as in a run (Flower reads it when the strategy sends messages)."""
    from flwr.supercore.task_identity import TaskIdentity

    for name, value in (("_run_id", 1), ("_task_id", 1), ("_node_id", 1)):
        monkeypatch.setattr(TaskIdentity, name, value)


def one_round(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strategy: dict | None) -> tuple[object, dict, list]:
    """One round of 3 clients whose trained models are the start plus noise; the global model after it."""
    federation = checked(num_clients=3, rounds=1, starts=["fresh"], progress=False, out=tmp_path, strategy=strategy)
    start = federation.networks.global_network().state_dict()
    generator = torch.Generator().manual_seed(5)
    trained = [
        {key: value + 0.5 * torch.randn(value.shape, generator=generator) for key, value in start.items()}
        for _ in range(3)
    ]
    examples = [40, 70, 25]

    def train_client(client: int, state: dict, server_round: int, callbacks=(), own_architecture=False) -> tuple:
        return trained[client], examples[client], 0.5

    monkeypatch.setattr(federation, "train_client", train_client)
    noted: list = []

    def evaluate(server_round: int, state: dict, failures=(), server_seconds=0.0) -> float:
        noted.extend(failures)
        return federation.evaluate(state)[0]

    grid = arrival_grid(client_app_for(federation), 3, [0, 1, 2])
    model = fedavg(federation, grid, start, evaluate, timeout=60)
    return federation, model, [trained, examples, noted]


def test_feddf_with_no_distillation_is_fedavg_exactly(tmp_path: Path, monkeypatch, server_task) -> None:
    _, plain, _ = one_round(tmp_path / "fedavg", monkeypatch, None)
    strategy = {"class_path": FEDDF, "init_args": {"distillation_epochs": 0}}
    _, none, _ = one_round(tmp_path / "feddf", monkeypatch, strategy)
    assert all(torch.equal(plain[key], none[key]) for key in plain)


def test_feddf_moves_the_global_model_toward_the_ensemble_on_the_public_set(
    tmp_path: Path, monkeypatch, server_task
) -> None:
    _, plain, _ = one_round(tmp_path / "fedavg", monkeypatch, None)
    distilled = {}
    for epochs in (2, 10):
        strategy = {"class_path": FEDDF, "init_args": {"distillation_epochs": epochs}}
        federation, distilled[epochs], (trained, examples, failures) = one_round(
            tmp_path / f"feddf{epochs}", monkeypatch, strategy
        )
        assert not failures
    server = federation.datamodule(None)
    server.setup()
    inputs = torch.stack([item[0] for item in server.train_set])  # the public transfer set
    teachers = []
    for state in trained:
        network = SMALL(num_classes=federation.num_classes)
        network.load_state_dict(state)
        teachers.append(network.eval())

    def divergence(state: dict) -> float:
        """KL(ensemble || model) on the public set, the ensemble weighted by the clients' examples (T = 4)."""
        network = SMALL(num_classes=federation.num_classes)
        network.load_state_dict(state)
        with torch.no_grad():
            target = ensemble_logits([t(inputs) for t in teachers], 4.0, examples).softmax(-1)
            mine = (network.eval()(inputs) / 4.0).log_softmax(-1)
        return float(torch.nn.functional.kl_div(mine, target, reduction="batchmean"))

    # FedAvg's aggregate, then 2 and 10 epochs of distillation: ever closer to the ensemble
    assert divergence(plain) > divergence(distilled[2]) > divergence(distilled[10])


def test_a_diverging_distillation_keeps_the_plain_aggregate_and_says_so_in_the_round(
    tmp_path: Path, monkeypatch, server_task
) -> None:
    _, plain, _ = one_round(tmp_path / "fedavg", monkeypatch, None)
    strategy = {"class_path": FEDDF, "init_args": {"distillation_epochs": 1}}

    def diverging(*args, **kwargs):
        raise FloatingPointError("Non-finite training loss at global step 0 (epoch 0): loss=nan\nLower the lr.")

    from kdlightning.federated import Federation

    monkeypatch.setattr(Federation, "distil_round", lambda self, *a, **k: diverging())
    _, kept, (_, _, failures) = one_round(tmp_path / "feddf", monkeypatch, strategy)
    assert all(torch.equal(plain[key], kept[key]) for key in plain)
    assert failures == ["server distillation kept the plain aggregate: Non-finite training loss at global step 0 "
                        "(epoch 0): loss=nan"]  # fmt: skip


@pytest.mark.parametrize(
    ("init_args", "message"),
    [
        ({"distillation_epochs": -1}, r"`strategy.distillation_epochs` must be an integer >= 0"),
        ({"distillation_epochs": 1.5}, r"`strategy.distillation_epochs` must be an integer >= 0"),
        ({"weighting": "size"}, r"`strategy.weighting` must be one of \['examples', 'uniform'\]"),
        ({"distiller": None}, r"`strategy.init_args` sets \['distiller'\]: the federation gives it"),
    ],
)
def test_bad_feddf_settings_are_refused_naming_them(tmp_path: Path, init_args: dict, message: str) -> None:
    from kdlightning.federated import Federation, FederationConfig

    federation = Federation(
        FederationConfig(SMALL, num_clients=2, strategy={"class_path": FEDDF, "init_args": init_args}, out=tmp_path)
    )
    with pytest.raises(ValueError, match=message):
        federation.server_strategy()


@pytest.mark.parametrize(("weighting", "expected"), [("examples", [40.0, 70.0, 25.0]), ("uniform", [1.0, 1.0, 1.0])])
def test_the_distillation_gets_every_client_s_model_and_weight(
    tmp_path: Path, monkeypatch, server_task, weighting: str, expected: list
) -> None:
    from kdlightning.federated import Federation

    calls = []

    def recording(self, server_round, aggregate, teachers, weights, settings, prototype=None):
        calls.append((server_round, [client for client, _ in teachers], list(weights), settings.epochs, prototype))
        return aggregate

    monkeypatch.setattr(Federation, "distil_round", recording)
    strategy = {"class_path": FEDDF, "init_args": {"distillation_epochs": 2, "weighting": weighting}}
    one_round(tmp_path, monkeypatch, strategy)
    assert calls == [(1, [0, 1, 2], expected, 2, None)]


def test_the_summary_names_the_server_strategy(tmp_path: Path) -> None:
    strategy = {"class_path": FEDDF, "init_args": {"distillation_epochs": 1}}
    feddf = checked(num_clients=2, rounds=3, starts=["fresh"], out=tmp_path / "feddf", strategy=strategy)
    fedavg_ = checked(num_clients=2, rounds=3, starts=["fresh"], out=tmp_path / "fedavg")
    assert feddf.records.summary([]).startswith(
        "# Federated: Digits, 2 clients (dirichlet(alpha=0.5)), FedDF 3 rounds x "
    )
    assert fedavg_.records.summary([]).startswith(
        "# Federated: Digits, 2 clients (dirichlet(alpha=0.5)), FedAvg 3 rounds x "
    )


@pytest.mark.parametrize(
    ("init_args", "message"),
    [
        ({"temperature": 0}, r"`strategy.temperature` must be a number > 0"),
        ({"early_stop_patience": 0}, r"`strategy.early_stop_patience` must be an integer >= 1"),
        ({"holdout_fraction": 1.0}, r"`strategy.holdout_fraction` must lie in \(0, 1\)"),
    ],
)
def test_bad_distillation_settings_are_refused_naming_them(tmp_path: Path, init_args: dict, message: str) -> None:
    from kdlightning.federated import Federation, FederationConfig

    federation = Federation(
        FederationConfig(SMALL, num_clients=2, strategy={"class_path": FEDDF, "init_args": init_args}, out=tmp_path)
    )
    with pytest.raises(ValueError, match=message):
        federation.server_strategy()


def client_states(federation, count: int, seed: int) -> list[tuple[int, dict]]:
    """``count`` clients' models of the global architecture, each the start plus noise."""
    start = federation.networks.global_network().state_dict()
    generator = torch.Generator().manual_seed(seed)
    return [
        (client, {key: value + 0.5 * torch.randn(value.shape, generator=generator) for key, value in start.items()})
        for client in range(count)
    ]


def test_early_stopping_holds_out_part_of_the_public_set_and_keeps_the_best_weights(
    tmp_path: Path, monkeypatch
) -> None:
    from kdlightning.federated import Federation
    from kdlightning.federated.server_distillation import ServerDistillation

    lively = partial(torch.optim.SGD, lr=30.0)  # the held-out loss soon rises: early stopping must act
    federation = checked(num_clients=3, out=tmp_path, optimizer=lively)
    fits = []
    build = Federation._trainer

    def spying(self, epochs, callbacks=(), validate=False):
        trainer = build(self, epochs, callbacks, validate)
        fits.append(trainer)
        return trainer

    monkeypatch.setattr(Federation, "_trainer", spying)
    teachers = client_states(federation, 3, seed=1)
    aggregate = federation.networks.global_network().state_dict()
    settings = ServerDistillation(epochs=60, temperature=2.0, patience=1, holdout_fraction=0.25)
    state = federation.distil_round(1, aggregate, teachers, [1.0, 1.0, 1.0], settings)

    trainer = fits[-1]
    model, data = trainer.lightning_module, trainer.datamodule
    assert model.temperature == 2.0  # the strategy's, over the consolidation's 4.0
    public = data.public_index
    trained, held = data.train_set.index, data.val_set.index
    assert len(held) == round(0.25 * len(public)) and set(trained) | set(held) == set(public)
    assert not set(trained) & set(held)  # the held-out share is never trained on
    assert trainer.current_epoch < 60  # stopped: the distillation loss on the held-out share stopped falling
    best = next(c for c in trainer.callbacks if type(c).__name__ == "RestoreBest")
    assert best.best == min(best.history) and best.history.index(best.best) < len(best.history) - 1
    assert all(torch.equal(state[key], best.state["student"][key]) for key in state)  # the best, not the last


def test_without_patience_the_whole_public_set_is_trained_on_for_every_epoch(tmp_path: Path, monkeypatch) -> None:
    from kdlightning.federated import Federation
    from kdlightning.federated.server_distillation import ServerDistillation

    federation = checked(num_clients=3, out=tmp_path)
    fits = []
    build = Federation._trainer
    monkeypatch.setattr(Federation, "_trainer", lambda self, *a, **k: fits.append(build(self, *a, **k)) or fits[-1])
    aggregate = federation.networks.global_network().state_dict()
    federation.distil_round(1, aggregate, client_states(federation, 3, 2), [1.0] * 3, ServerDistillation(epochs=3))
    trainer = fits[-1]
    assert trainer.current_epoch == 3 and trainer.lightning_module.temperature == 4.0
    assert sorted(trainer.datamodule.train_set.index) == sorted(trainer.datamodule.public_index)


def test_clients_of_other_architectures_train_their_prototype_distilled_from_the_whole_ensemble(
    tmp_path: Path, monkeypatch, server_task
) -> None:
    from kdlightning.federated import Federation
    from kdlightning.federated.aggregate import weighted_average

    narrow = partial(SMALL.func, in_features=64, hidden_sizes=(5,))
    strategy = {"class_path": FEDDF, "init_args": {"distillation_epochs": 1}}
    federation = checked(
        num_clients=4, client_networks=[SMALL, narrow], rounds=2, starts=["fresh"], out=tmp_path, strategy=strategy
    )
    received, trained, examples = {}, {}, [40, 70, 25, 55]

    def train_client(client, state, server_round, callbacks=(), own_architecture=False):
        received[(server_round, client)] = (own_architecture, state)
        trained[(server_round, client)] = {key: value + client + server_round for key, value in state.items()}
        return trained[(server_round, client)], examples[client], 0.5

    monkeypatch.setattr(federation, "train_client", train_client)
    distilled = []

    def distil_round(self, server_round, aggregate, teachers, weights, settings, prototype=None):
        distilled.append((server_round, prototype, [client for client, _ in teachers], list(weights)))
        return {key: value * 2 for key, value in aggregate.items()}  # marks what the server distilled

    monkeypatch.setattr(Federation, "distil_round", distil_round)
    strategies = []
    build = federation.server_strategy
    monkeypatch.setattr(federation, "server_strategy", lambda: strategies.append(build()) or strategies[-1])
    start = federation.networks.global_network().state_dict()
    grid = arrival_grid(client_app_for(federation), 4, [3, 1, 0, 2])
    final = fedavg(federation, grid, start, lambda *a, **k: 0.0, timeout=60)

    # clients 1 and 3 (the narrow MLP) train their architecture's prototype, the others the global network
    shapes = {key: value.shape for key, value in federation.networks.client_network(1).state_dict().items()}
    for (_, client), (own, state) in received.items():
        assert own == (client % 2 == 1)
        if own:
            assert {key: value.shape for key, value in state.items()} == shapes
    first = federation.networks.initial_prototypes()[1]
    assert all(torch.equal(received[(1, 1)][1][key], first[key]) for key in first)  # round 1: its initialisation
    # each prototype is aggregated among its own clients, by their examples, then distilled from all four
    narrow_aggregate = weighted_average([trained[(1, 1)], trained[(1, 3)]], [70.0, 55.0])
    assert all(torch.allclose(received[(2, 3)][1][key], 2 * narrow_aggregate[key]) for key in narrow_aggregate)
    global_aggregate = weighted_average([trained[(2, 0)], trained[(2, 2)]], [40.0, 25.0])
    assert all(torch.allclose(final[key], 2 * global_aggregate[key]) for key in final)
    assert distilled == [
        (r, prototype, [0, 1, 2, 3], [40.0, 70.0, 25.0, 55.0]) for r in (1, 2) for prototype in (None, 1)
    ]
    assert set(strategies[-1].server_seconds) == {1, 2}


def test_a_global_network_no_client_has_learns_from_the_ensemble_alone(
    tmp_path: Path, monkeypatch, server_task
) -> None:
    from kdlightning.federated import Federation

    narrow = partial(SMALL.func, in_features=64, hidden_sizes=(5,))
    strategy = {"class_path": FEDDF, "init_args": {"distillation_epochs": 1}}
    federation = checked(num_clients=2, client_networks=[narrow], rounds=2, starts=["fresh"], out=tmp_path,
                         strategy=strategy)  # fmt: skip
    monkeypatch.setattr(
        federation, "train_client", lambda client, state, r, callbacks=(), own_architecture=False: (state, 10, 0.5)
    )
    monkeypatch.setattr(
        Federation, "distil_round", lambda self, r, aggregate, *a, **k: {n: v + 1 for n, v in aggregate.items()}
    )
    start = federation.networks.global_network().state_dict()
    final = fedavg(
        federation, arrival_grid(client_app_for(federation), 2, [0, 1]), start, lambda *a, **k: 0.0, timeout=60
    )
    assert all(torch.allclose(final[key], start[key] + 2) for key in start)  # distilled in each of the 2 rounds


def test_a_rounds_teacher_outputs_serve_every_prototype_and_leave_the_result_unchanged(
    tmp_path: Path, monkeypatch
) -> None:
    from lightning import Callback

    from kdlightning.federated.server_distillation import ServerDistillation

    narrow = partial(SMALL.func, in_features=64, hidden_sizes=(5,))
    federation = checked(num_clients=2, client_networks=[SMALL, narrow], starts=["fresh"], out=tmp_path)
    torch.manual_seed(4)
    teachers = [(0, federation.networks.global_network().state_dict())]
    teachers.append((1, federation.networks.client_network(1).state_dict()))
    prototypes = {None: federation.networks.global_network().state_dict(), 1: teachers[1][1]}
    settings = ServerDistillation(epochs=3)

    def distilled(server_round: int) -> dict:
        return {
            k: federation.distil_round(server_round, state, teachers, [1.0, 3.0], settings, k)
            for k, state in prototypes.items()
        }

    cached = distilled(1)
    stores = sorted(path.name for path in (tmp_path / "cache" / "rounds" / "1").iterdir())
    assert len(stores) == 2  # one per teacher, shared by both prototypes and every epoch
    distilled(2)
    assert [path.name for path in (tmp_path / "cache" / "rounds").iterdir()] == ["2"]  # round 1's removed
    monkeypatch.setattr("kdlightning.federated.federation.CacheReferenceOutputs", lambda cache_dir: Callback())
    uncached = distilled(1)
    for k in cached:  # the same logits, up to the last bits a batch's size can change in a matrix product
        for key in cached[k]:
            torch.testing.assert_close(cached[k][key], uncached[k][key], rtol=1e-5, atol=1e-6)
