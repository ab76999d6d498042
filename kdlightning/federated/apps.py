"""Flower apps of the federated experiment: the same ClientApp and ServerApp in simulation and on real machines.

This module runs a :class:`~kdlightning.federated.Federation` (the experiment, which knows nothing of
Flower) on Flower: the apps, the server loop (:func:`serve`, :func:`fedavg`), the simulation
(:func:`run_simulation`, :func:`run`), which ``kdl federate`` calls. Every entry point calls
:meth:`~kdlightning.federated.federation.Federation.check` before any client trains.

- The **ClientApp** answers two messages. ``query``: send the client's pre-trained model (pre-training it
  on its partition first if it is not cached) and its number of training examples. ``train``: train the
  received global model for ``local_epochs`` with Lightning on the client's partition and send it back
  with its number of examples, FedAvg's weight. Every reply names the client (its ``partition-id``): the
  server hands a round's replies to the strategy in client order, whatever order they arrive in.
- The **ServerApp** collects the clients' models (one round), builds the starts and runs the federation's
  Flower strategy (``FedAvg`` by default) from each, testing the global model on the global test set after
  every round (:func:`serve`). A client that fails in a round is counted in that round's row (``failures``,
  ``failure``); a round in which no client trained stops the run with an error.

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
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import Tensor

from kdlightning.errors import ConfigurationError, RunError
from kdlightning.federated.aggregate import COLLECTION_ROUNDS
from kdlightning.federated.feddf import PROTOTYPE
from kdlightning.federated.federation import Clients, Federation, load_federation
from kdlightning.federated.strategy import failure_reason
from kdlightning.reporting import read_csv
from kdlightning.tracking import flat_config, network_name, wandb_logger
from kdlightning.trainers import progress_bar, quiet

__all__ = [
    "Proximal",
    "RoundFailures",
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


def _partition(federation: Federation, context: Context) -> int:
    """This node's client index, checked against the experiment."""
    config = context.node_config
    if "partition-id" not in config:
        raise ConfigurationError(
            "The node config has no `partition-id`: start the SuperNode with "
            '--node-config "partition-id=<k> num-partitions=<num_clients>".'
        )
    num_clients = federation.config.num_clients
    parts = int(config.get("num-partitions", num_clients))
    if parts != num_clients:
        raise ConfigurationError(f"The node config says num-partitions={parts}, the experiment has {num_clients=}.")
    return int(config["partition-id"])


@functools.lru_cache(maxsize=4)
def _federation_from(config: str, out: str) -> Federation:
    return load_federation(["-c", config, "--out", out])


def _resolve(federation: Federation | None, context: Context) -> Federation:
    """The experiment an app works for, checked: ``federation``, or the one of the run config's ``kdl-config``.

    Every app's work runs in :func:`~kdlightning.trainers.quiet`, in whichever process it runs (Ray workers
    in simulation).
    """
    if federation is None:
        run = context.run_config
        if "kdl-config" not in run:
            raise ConfigurationError(
                "The run config has no `kdl-config`: set it to a `kdl federate` YAML in [tool.flwr.app.config]."
            )
        federation = _federation_from(str(run["kdl-config"]), str(run.get("kdl-out", "runs/federated")))
    federation.check()
    return federation


def _number(record: Any, key: str) -> float:
    """``record[key]``, a number a Flower record holds (its type allows lists too: these keys hold numbers)."""
    return float(record[key])


def _reply(message: Message, state: dict[str, Tensor], metrics: Mapping[str, float], client: int) -> Message:
    """The reply of client ``client``: its model, its metrics and, apart from the metrics, its ``partition-id``."""
    content = RecordDict(
        {
            "arrays": ArrayRecord(state),
            "metrics": MetricRecord(dict(metrics)),
            "client": ConfigRecord({"partition-id": client}),
        }
    )
    return Message(content, reply_to=message)


def _client_order(reply: Message) -> tuple[int, int, int]:
    """Sort key of a training reply: the clients' in client order (``partition-id``), then the others by node."""
    if reply.has_error() or "client" not in reply.content.config_records:
        return (1, 0, reply.metadata.src_node_id)
    return (0, int(_number(reply.content.config_records["client"], "partition-id")), reply.metadata.src_node_id)


def client_app_for(federation: Federation | None = None) -> ClientApp:
    """The ClientApp of ``federation`` (None: built from the run config's ``kdl-config``)."""
    app = ClientApp()

    @app.query()
    def query(message: Message, context: Context) -> Message:
        fed = _resolve(federation, context)
        client = _partition(fed, context)
        with quiet():
            state, examples = fed.pretrained_client(client)
        return _reply(message, state, {"num-examples": examples, "partition-id": client}, client)

    @app.train()
    def train(message: Message, context: Context) -> Message:
        fed = _resolve(federation, context)
        client = _partition(fed, context)
        config = message.content.config_records["config"]
        server_round = int(_number(config, "server-round"))
        records = message.content.array_records
        # FedDF sends each other architecture its own prototype; every other client trains the global network
        prototype = fed.networks.prototype_of(client)
        key = "arrays" if prototype is None else PROTOTYPE.format(prototype)
        own = key != "arrays" and key in records
        state = records[key if own else "arrays"].to_torch_state_dict()
        mu = _number(config, "proximal-mu") if "proximal-mu" in config else 0.0  # FedProx's strategy sends it
        callbacks = [Proximal(mu)] if mu else []
        with quiet():
            trained, examples, loss = fed.train_client(client, state, server_round, callbacks, own_architecture=own)
        return _reply(message, trained, {"num-examples": examples, "train_loss": loss}, client)

    return app


class Proximal(L.Callback):
    r"""FedProx's proximal term :math:`\frac{\mu}{2} \lVert w - w^t \rVert^2` in a client's local training.

    Adds its gradient, :math:`\mu (w - w^t)`, to every trainable parameter's gradient before each optimizer
    step, :math:`w^t` being the global model the fit started from (Li et al., "Federated Optimization in
    Heterogeneous Networks", MLSys 2020). The logged training loss leaves the term out.

    Args:
        mu: the proximal weight, ``>= 0`` (FedProx's ``proximal_mu``).
    """

    def __init__(self, mu: float) -> None:
        if mu < 0:
            raise ConfigurationError(f"`proximal_mu` must be >= 0, got {mu!r}.")
        self.mu = mu
        self.anchor: list[Tensor] = []

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Keep the global model the local training starts from."""
        self.anchor = [p.detach().clone() for p in pl_module.parameters() if p.requires_grad]

    @torch.no_grad()
    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        r"""Add :math:`\mu (w - w^t)` to the gradients (unscaled by now under mixed precision)."""
        trainable = [p for p in pl_module.parameters() if p.requires_grad]
        for parameter, anchor in zip(trainable, self.anchor, strict=True):
            if parameter.grad is not None:
                parameter.grad.add_(parameter - anchor, alpha=self.mu)


def _collect(federation: Federation, grid: Grid, timeout: float = 600.0) -> Clients:
    """One round: every client's pre-trained model and examples, in client order."""
    num_clients = federation.config.num_clients
    node_ids = _wait_for_nodes(grid, num_clients, timeout)
    messages = [
        Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type=MessageType.QUERY)
        for node in node_ids
    ]
    clients: dict[int, tuple[dict[str, Tensor], int]] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            raise RunError(f"A client failed to send its pre-trained model: {reply.error.reason}")
        metrics = reply.content.metric_records["metrics"]
        clients[int(_number(metrics, "partition-id"))] = (
            reply.content.array_records["arrays"].to_torch_state_dict(),
            int(_number(metrics, "num-examples")),
        )
    missing = sorted(set(range(num_clients)) - set(clients))
    if missing:
        raise RunError(f"Clients {missing} sent no pre-trained model within {timeout:.0f} s.")
    return [clients[k] for k in range(num_clients)]


def _wait_for_nodes(grid: Grid, count: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= count:
            return nodes[:count]
        if time.monotonic() > deadline:
            raise RunError(f"Only {len(nodes)} of {count} clients connected within {timeout:.0f} s.")
        time.sleep(0.5)


class RoundFailures(Grid):
    """``grid`` as the strategy sees it, noting the clients that fail each training round.

    A client fails a round when its reply carries an error (its ClientApp raised) or when no reply comes
    within the timeout. A round in which every sampled client failed raises ``RuntimeError`` naming the round
    and ``start``: the strategy would keep the previous global model and count the round as run.

    A training round's replies reach the strategy in client order (the ``partition-id`` each client sends),
    whatever order they arrive in: the strategy sums the clients' float32 models in that order, so the
    global model (to the last bit) and its test loss do not depend on which client finished first.

    Args:
        grid: the grid of the connected clients.
        start: the start being run, named in the error.
    """

    def __init__(self, grid: Grid, start: str) -> None:
        self.grid, self.start = grid, start
        self.failures: dict[int, list[str]] = {}
        """The errors of each training round's failed clients, by round (1-based)."""

    def set_run(self, run: Any) -> None:
        """Set the run of the wrapped grid."""
        self.grid.set_run(run)

    @property
    def run(self) -> Any:
        """The wrapped grid's run."""
        return self.grid.run

    def create_message(
        self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str, ttl: float | None = None
    ) -> Message:
        """The wrapped grid's message."""
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        """The connected clients' node IDs."""
        return self.grid.get_node_ids()

    def get_nodes(self) -> Iterable[Any]:
        """The connected clients."""
        return self.grid.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        """Push ``messages`` through the wrapped grid."""
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        """Pull replies through the wrapped grid."""
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        """Send ``messages`` and wait for the replies: a training round's in client order, its failures noted.

        See the class.
        """
        messages = list(messages)
        replies = list(self.grid.send_and_receive(messages, timeout=timeout))
        if not any(message.metadata.message_type == MessageType.TRAIN for message in messages):
            return replies
        replies.sort(key=_client_order)
        server_round = len(self.failures) + 1  # the strategy sends one training message set per round
        errors = [reply.error.reason or f"error code {reply.error.code}" for reply in replies if reply.has_error()]
        waited = "" if timeout is None else f" within {timeout:.0f} s"
        errors += [f"no reply{waited}"] * max(0, len(messages) - len(replies))
        self.failures[server_round] = errors
        if len(errors) >= len(messages):
            raise RunError(
                f"Round {server_round} of the `{self.start}` start: none of the {len(messages)} sampled clients "
                f"trained. The first error: {failure_reason(errors[0]) if errors else 'none'}"
            )
        return replies


def fedavg(
    federation: Federation,
    grid: Grid,
    state: dict[str, Tensor],
    evaluate: Callable[..., float],
    timeout: float = 3600.0,
    start: str = "",
) -> dict[str, Tensor]:
    """Run the federation's strategy from ``state`` for ``config.rounds`` rounds, testing each round's model.

    Args:
        federation: the experiment, checked; its ``server_strategy()`` (``FedAvg`` by default) runs the rounds.
        grid: the grid of the connected clients.
        state: the start's global model.
        evaluate: called as ``evaluate(server_round, state, failures=[...], server_seconds=s)`` after every round
            (and for round 0, the start itself), with the errors of the clients that failed the round and the
            seconds the server spent on the round's model beyond aggregating (FedDF's distillation); returns the
            test accuracy.
        timeout: seconds to wait for the clients in each round.
        start: the start's name, for the error of a round in which no client trained.

    Returns:
        The final global model's state.
    """
    config = federation.config
    _wait_for_nodes(grid, config.num_clients, timeout)
    strategy = federation.server_strategy()
    observed = RoundFailures(grid, start)

    def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        # a strategy that works on the server (FedDF) may say why a round kept its plain aggregate
        server = getattr(strategy, "server_failures", {}).get(server_round, [])
        failures = [*observed.failures.get(server_round, []), *server]
        seconds = getattr(strategy, "server_seconds", {}).get(server_round, 0.0)
        state = arrays.to_torch_state_dict()
        return MetricRecord({"test_acc": evaluate(server_round, state, failures=failures, server_seconds=seconds)})

    result = strategy.start(
        grid=observed,
        initial_arrays=ArrayRecord(state),
        num_rounds=config.rounds,
        timeout=timeout,
        train_config=ConfigRecord({"local-epochs": config.local_epochs}),
        evaluate_fn=evaluate_fn,
    )
    return result.arrays.to_torch_state_dict()


def serve(federation: Federation, grid: Grid, collect: Callable[[], Clients] | None = None) -> list[dict[str, Any]]:
    """The server's work: build every start that has not finished and run the strategy from it with ``grid``.

    Args:
        federation: the experiment (checked here first).
        grid: Flower's grid of the connected clients.
        collect: gathers the clients' pre-trained models (one communication round); by default a ``query``
            message to every client.

    Returns:
        The rows of ``rounds.csv``: each round's global model is tested and recorded as it comes (with a
        progress bar over starts x rounds, and to W&B if ``config.logger``).
    """
    federation.check()
    federation.check_resume()
    records, config = federation.records, federation.config
    finished = records.finished_starts()
    rows: list[dict[str, Any]] = [row for start in federation.starts for row in finished.get(start, [])]
    todo = [start for start in federation.starts if start not in finished]
    if not todo:
        return rows
    if collect is None:
        collect = functools.partial(_collect, federation, grid)
    clients = collect() if any(COLLECTION_ROUNDS[start] for start in todo) else []
    bar = progress_bar(
        len(todo) * config.rounds, "round", enabled=None if config.progress else False, description="federate"
    )
    try:
        for start, state in federation.build_starts(clients, todo).items():
            tracker = _tracker(federation, start)
            try:
                evaluate = _recorder(federation, rows, start, bar, tracker)
                records.save_model(start, fedavg(federation, grid, state, evaluate, start=start))
            finally:
                if tracker is not None:
                    tracker.experiment.finish()
    finally:
        bar.close()
    records.plot(rows)
    return rows


def _recorder(
    federation: Federation, rows: list[dict[str, Any]], start: str, bar: Any, tracker: Any
) -> Callable[..., float]:
    """``start``'s ``evaluate`` for :func:`fedavg`: test the round's model, record its row, advance ``bar``, log."""
    began = time.perf_counter()

    def evaluate(
        server_round: int, state: dict[str, Tensor], failures: Sequence[str] = (), server_seconds: float = 0.0
    ) -> float:
        accuracy, loss = federation.evaluate(state)
        seconds = time.perf_counter() - began
        row = federation.records.record_round(
            rows, start, server_round, accuracy, loss, seconds, failures, server_seconds
        )
        if tracker is not None:
            metrics = {"test/acc": row["test_acc"], "test/loss": row["test_loss"], "failures": row["failures"]}
            tracker.log_metrics(metrics, step=server_round)
        if server_round > 0:
            bar.set_postfix_str(f"{start} acc {accuracy:.3f}" + (f", {len(failures)} failed" if failures else ""))
            bar.update(1)
        return accuracy

    return evaluate


def _tracker(federation: Federation, start: str) -> Any:
    """A W&B logger for ``start`` when ``config.logger`` asks for one (else None), grouped by the experiment."""
    config = federation.config
    if config.logger is False:
        return None
    settings: dict[str, Any] = {
        "save_dir": str(config.out),
        "group": config.out.name,
        "job_type": "federate",
        "name": start,
    }
    if isinstance(config.logger, dict):
        settings.update(config.logger)
    if settings["group"] != config.out.name:  # a cell of a larger experiment: its runs carry the cell's name
        settings["name"] = f"{config.out.name}/{start}"
    tracker = wandb_logger(True, **settings)
    assert tracker is not None
    flat = flat_config(student=network_name(config.network), partition=config.partitioner, seed=config.seed)
    tracker.log_hyperparams(
        {
            **flat,
            "start": start,
            "strategy": config.strategy,
            "num_clients": config.num_clients,
            "partitioner": str(config.partitioner),
            "rounds": config.rounds,
            "local_epochs": config.local_epochs,
            "seed": config.seed,
        }
    )
    return tracker


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
    """Check the experiment, run it in Flower's simulation (a virtual SuperNode per client); return ``rounds.csv``."""
    from flwr.simulation import run_simulation as flower_simulation

    federation.check()
    config = federation.config
    config.out.mkdir(parents=True, exist_ok=True)
    errors: list[BaseException] = []
    cores = os.cpu_count() or 1
    backend: dict[str, Any] = {
        "client_resources": {"num_cpus": config.cpus_per_client, "num_gpus": 0.0},
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
            num_supernodes=config.num_clients,
            backend_config=backend,
            verbose_logging=verbose,
        )
    finally:
        flower.setLevel(level)
    if errors:
        raise errors[0]
    if not threading.main_thread().is_alive():  # pragma: no cover - interpreter shutting down
        return []
    rows = read_csv(config.out / "rounds.csv")
    if not all(start in {r["start"] for r in rows} for start in federation.starts):
        raise RunError(f"The simulation ended before every start ran; see the log and {config.out}.")
    return rows


def run(federation: Federation, verbose: bool = False) -> list[dict[str, Any]]:
    """Check ``federation``, then run (or resume) it in Flower's simulation here; return the rows of ``rounds.csv``.

    Starts that ran all their rounds are kept; when every start has, nothing runs.
    """
    federation.check()
    federation.check_resume()
    rows = federation.records.finished_rows()
    return rows if rows is not None else run_simulation(federation, verbose=verbose)


client_app = client_app_for()
"""The ClientApp for ``flwr run`` (``clientapp = "kdlightning.federated.apps:client_app"``)."""

server_app = server_app_for()
"""The ServerApp for ``flwr run`` (``serverapp = "kdlightning.federated.apps:server_app"``)."""
