"""Flower apps of the federated experiment: the same ClientApp and ServerApp in simulation and on real machines.

This module runs a :class:`~kdlightning.federated.Federation` (the experiment, which knows nothing of
Flower) on Flower: the apps, the server loop (:func:`serve`, :func:`fedavg`), the simulation
(:func:`run_simulation`, :func:`run`), which ``kdl federate`` calls.

- The **ClientApp** answers two messages. ``query``: send the client's pre-trained model (pre-training it
  on its partition first if it is not cached) and its number of training examples. ``train``: train the
  received global model for ``local_epochs`` with Lightning on the client's partition and send it back
  with its number of examples, FedAvg's weight.
- The **ServerApp** collects the clients' models (one round), builds the starts and runs Flower's
  ``FedAvg`` from each, testing the global model on the global test set after every round (:func:`serve`).

A client finds its partition in its node config (``partition-id``, and ``num-partitions``, which must
equal the experiment's ``num_clients``): Flower's simulation sets both; on a real SuperNode they are
given with ``--node-config "partition-id=3 num-partitions=10"``.

``kdl federate`` passes the :class:`~kdlightning.federated.Federation` to the apps directly. Under
``flwr run``, the module-level :data:`client_app` and :data:`server_app` build it from the run config's
``kdl-config`` (a ``kdl federate`` YAML, shipped with the app) and write to its ``kdl-out``.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable
from typing import Any

from torch import Tensor

from kdlightning.federated.federation import COLLECTION_ROUNDS, Clients, Federation, load_federation
from kdlightning.reporting import read_csv
from kdlightning.trainers import quiet

__all__ = [
    "client_app",
    "client_app_for",
    "fedavg",
    "run",
    "run_simulation",
    "serve",
    "server_app",
    "server_app_for",
]

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")  # no usage reports to Flower's servers
os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # CPU clients: leave the device variables alone

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg


def _partition(federation: Federation, context: Context) -> int:
    """This node's client index, checked against the experiment."""
    config = context.node_config
    if "partition-id" not in config:
        raise ValueError(
            "The node config has no `partition-id`: start the SuperNode with "
            '--node-config "partition-id=<k> num-partitions=<num_clients>".'
        )
    parts = int(config.get("num-partitions", federation.num_clients))
    if parts != federation.num_clients:
        raise ValueError(
            f"The node config says num-partitions={parts}, the experiment has num_clients={federation.num_clients}."
        )
    return int(config["partition-id"])


@functools.lru_cache(maxsize=4)
def _federation_from(config: str, out: str) -> Federation:
    return load_federation(["-c", config, "--out", out])


def _resolve(federation: Federation | None, context: Context) -> Federation:
    """The experiment an app works for: ``federation``, or the one of the run config's ``kdl-config``.

    Every app's work runs in :func:`~kdlightning.trainers.quiet`, in whichever process it runs (Ray workers
    in simulation).
    """
    if federation is not None:
        return federation
    run = context.run_config
    if "kdl-config" not in run:
        raise ValueError(
            "The run config has no `kdl-config`: set it to a `kdl federate` YAML in [tool.flwr.app.config]."
        )
    return _federation_from(str(run["kdl-config"]), str(run.get("kdl-out", "runs/federated")))


def _reply(message: Message, state: dict[str, Tensor], metrics: dict[str, float]) -> Message:
    content = RecordDict({"arrays": ArrayRecord(state), "metrics": MetricRecord(metrics)})
    return Message(content, reply_to=message)


def client_app_for(federation: Federation | None = None) -> ClientApp:
    """The ClientApp of ``federation`` (None: built from the run config's ``kdl-config``)."""
    app = ClientApp()

    @app.query()
    def query(message: Message, context: Context) -> Message:
        fed = _resolve(federation, context)
        client = _partition(fed, context)
        with quiet():
            state, examples = fed.pretrained_client(client)
        return _reply(message, state, {"num-examples": examples, "partition-id": client})

    @app.train()
    def train(message: Message, context: Context) -> Message:
        fed = _resolve(federation, context)
        client = _partition(fed, context)
        server_round = int(message.content["config"]["server-round"])
        state = message.content["arrays"].to_torch_state_dict()
        with quiet():
            trained, examples, loss = fed.train_client(client, state, server_round)
        return _reply(message, trained, {"num-examples": examples, "train_loss": loss})

    return app


def _collect(federation: Federation, grid: Grid, timeout: float = 600.0) -> Clients:
    """One round: every client's pre-trained model and examples, in client order."""
    node_ids = _wait_for_nodes(grid, federation.num_clients, timeout)
    messages = [
        Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type=MessageType.QUERY)
        for node in node_ids
    ]
    clients: dict[int, tuple[dict[str, Tensor], int]] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            raise RuntimeError(f"A client failed to send its pre-trained model: {reply.error.reason}")
        metrics = reply.content["metrics"]
        clients[int(metrics["partition-id"])] = (
            reply.content["arrays"].to_torch_state_dict(),
            int(metrics["num-examples"]),
        )
    missing = sorted(set(range(federation.num_clients)) - set(clients))
    if missing:
        raise RuntimeError(f"Clients {missing} sent no pre-trained model within {timeout:.0f} s.")
    return [clients[k] for k in range(federation.num_clients)]


def _wait_for_nodes(grid: Grid, count: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes[:count]
        if time.monotonic() > deadline:
            raise RuntimeError(f"Only {len(nodes)} of {count} clients connected within {timeout:.0f} s.")
        time.sleep(0.5)


def fedavg(
    federation: Federation,
    grid: Grid,
    state: dict[str, Tensor],
    evaluate: Callable[[int, dict[str, Tensor]], float],
    timeout: float = 3600.0,
) -> dict[str, Tensor]:
    """Run Flower's FedAvg from ``state`` for ``federation.rounds`` rounds; ``evaluate`` tests each round's model.

    Returns the final global model's state.
    """
    _wait_for_nodes(grid, federation.num_clients, timeout)
    sampled = max(2, round(federation.fraction_train * federation.num_clients))
    strategy = FedAvg(
        fraction_train=federation.fraction_train,
        fraction_evaluate=0.0,  # the server tests the global model on the global test set instead
        min_train_nodes=min(sampled, federation.num_clients),
        min_evaluate_nodes=0,
        min_available_nodes=federation.num_clients,
    )

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        return MetricRecord({"test_acc": evaluate(server_round, arrays.to_torch_state_dict())})

    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(state),
        num_rounds=federation.rounds,
        timeout=timeout,
        train_config=ConfigRecord({"local-epochs": federation.local_epochs}),
        evaluate_fn=evaluate_fn,
    )
    return result.arrays.to_torch_state_dict()


def serve(federation: Federation, grid: Grid, collect: Callable[[], Clients] | None = None) -> list[dict[str, Any]]:
    """The server's work: build every start that has not finished and run FedAvg from it with ``grid``.

    Args:
        federation: the experiment.
        grid: Flower's grid of the connected clients.
        collect: gathers the clients' pre-trained models (one communication round); by default a ``query``
            message to every client.

    Returns:
        The rows of ``rounds.csv``: each round's global model is tested and recorded as it comes.
    """
    finished = federation.finished_starts()
    rows: list[dict[str, Any]] = [row for start in federation.starts for row in finished.get(start, [])]
    todo = [start for start in federation.starts if start not in finished]
    if not todo:
        return rows
    if collect is None:
        collect = functools.partial(_collect, federation, grid)
    clients = collect() if any(COLLECTION_ROUNDS[start] for start in todo) else []
    for start, state in federation.build_starts(clients, todo).items():
        evaluate = functools.partial(federation.record_round, rows, start, began=time.perf_counter())
        federation.save_model(start, fedavg(federation, grid, state, evaluate))
    federation.plot(rows)
    return rows


def server_app_for(federation: Federation | None = None, errors: list[BaseException] | None = None) -> ServerApp:
    """The ServerApp of ``federation`` (None: built from the run config); exceptions are also put in ``errors``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        fed = _resolve(federation, context)
        try:
            with quiet():
                serve(fed, grid)
        except BaseException as error:
            if errors is not None:
                errors.append(error)
            raise

    return app


def run_simulation(federation: Federation, verbose: bool = False) -> list[dict[str, Any]]:
    """Run the experiment in Flower's simulation (one virtual SuperNode per client); return ``rounds.csv``'s rows."""
    from flwr.simulation import run_simulation as flower_simulation

    federation.out.mkdir(parents=True, exist_ok=True)
    errors: list[BaseException] = []
    cores = os.cpu_count() or 1
    backend = {
        "client_resources": {"num_cpus": federation.cpus_per_client, "num_gpus": 0.0},
        "init_args": {"num_cpus": cores, "num_gpus": 0, "log_to_driver": verbose},
    }
    flower = logging.getLogger("flwr")
    level = flower.level
    if not verbose:  # Flower's per-round log lines and its notices (e.g. that run_simulation is deprecated)
        flower.setLevel(logging.ERROR)
    try:
        flower_simulation(
            server_app=server_app_for(federation, errors),
            client_app=client_app_for(federation),
            num_supernodes=federation.num_clients,
            backend_config=backend,
            verbose_logging=verbose,
        )
    finally:
        flower.setLevel(level)
    if errors:
        raise errors[0]
    if not threading.main_thread().is_alive():  # pragma: no cover - interpreter shutting down
        return []
    rows = read_csv(federation.out / "rounds.csv")
    if not all(start in {r["start"] for r in rows} for start in federation.starts):
        raise RuntimeError(f"The simulation ended before every start ran; see the log and {federation.out}.")
    return rows


def run(federation: Federation, verbose: bool = False) -> list[dict[str, Any]]:
    """Run (or resume) ``federation`` in Flower's simulation on this machine; return the rows of ``rounds.csv``.

    Starts that ran all their rounds are kept; when every start has, nothing runs.
    """
    rows = federation.finished_rows()
    return rows if rows is not None else run_simulation(federation, verbose=verbose)


client_app = client_app_for()
"""The ClientApp for ``flwr run`` (``clientapp = "kdlightning.federated.apps:client_app"``)."""

server_app = server_app_for()
"""The ServerApp for ``flwr run`` (``serverapp = "kdlightning.federated.apps:server_app"``)."""
