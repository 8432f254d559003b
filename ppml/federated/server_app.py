"""ppml's Flower ServerApp: FedAvg over the sites, with SecAgg+ and the policy's DP mode.

Runs in the SuperLink's ServerApp process. It never reads a site's files: it knows the sites only as Flower
nodes, gets their (summed, under SecAgg+) updates and their evaluation aggregates, and writes the final model
and the run's history into its own result folder.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from flwr.common import Context, EvaluateRes, FitRes, Parameters, Scalar, ndarrays_to_parameters
from flwr.server import Grid, LegacyContext, ServerApp, ServerConfig
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    FedAvg,
    Strategy,
)
from flwr.server.workflow import DefaultWorkflow, SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_PARAMS_RECORD

from ppml.federated.local_training import get_weights, new_model
from ppml.federated.run_config import RunConfig

RESULT_FILE = "result.json"
MODEL_FILE = "model.npz"


class TooFewSites(RuntimeError):
    """A round completed with fewer sites than the policy's min_sites."""


class RecordingStrategy(Strategy):
    """Delegates to the configured strategy; records each round's participants and enforces min_sites."""

    def __init__(self, inner: Strategy, config: RunConfig) -> None:
        self.inner, self.config = inner, config
        self.rounds: list[dict[str, Any]] = []
        self.site_metrics: dict[str, dict[str, float]] = {}

    def initialize_parameters(self, client_manager: ClientManager) -> Parameters | None:
        return self.inner.initialize_parameters(client_manager)

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> Any:
        return self.inner.configure_fit(server_round, parameters, client_manager)

    def aggregate_fit(self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list) -> Any:
        # Under SecAgg+ the workflow hands over one summed result; the workflow itself refused fewer than
        # reconstruction_threshold (= min_sites) survivors.
        if not self.config.secure_aggregation and len(results) < self.config.min_sites:
            raise TooFewSites(
                f"round {server_round}: {len(results)} site(s) replied, min_sites is {self.config.min_sites}"
            )
        aggregated = self.inner.aggregate_fit(server_round, results, failures)
        self.rounds.append(
            {"round": server_round, "results": len(results), "failures": len(failures), "at": time.time()}
        )
        return aggregated

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager) -> Any:
        if server_round < self.config.rounds:
            return []  # sites evaluate the final model only
        return self.inner.configure_evaluate(server_round, parameters, client_manager)

    def aggregate_evaluate(
        self, server_round: int, results: list[tuple[ClientProxy, EvaluateRes]], failures: list
    ) -> tuple[float | None, dict[str, Scalar]]:
        for _, res in results:
            metrics = dict(res.metrics)
            site = str(metrics.pop("site"))
            self.site_metrics[site] = {k: float(v) for k, v in metrics.items()}
        return self.inner.aggregate_evaluate(server_round, results, failures)

    def evaluate(self, server_round: int, parameters: Parameters) -> Any:
        return None


def build_strategy(config: RunConfig, initial: list[np.ndarray]) -> Strategy:
    fraction = config.sampled_sites / config.sites
    strategy: Strategy = FedAvg(
        fraction_fit=fraction,
        fraction_evaluate=1.0,
        min_fit_clients=config.min_sites,
        min_evaluate_clients=config.min_sites,
        min_available_clients=config.min_sites,
        initial_parameters=ndarrays_to_parameters(initial),
        on_fit_config_fn=lambda server_round: {"round": server_round},
        accept_failures=True,
    )
    if config.dp_mode == "client":
        wrapper = (
            DifferentialPrivacyClientSideFixedClipping
            if config.secure_aggregation
            else DifferentialPrivacyServerSideFixedClipping
        )
        # noise std = sigma * C / min_sites: a round that completes with more sites is noisier than accounted,
        # never less (ppml.federated.accounting)
        strategy = wrapper(strategy, config.client_noise_multiplier, config.client_clipping_norm, config.min_sites)
    return RecordingStrategy(strategy, config)


class TimedGrid:
    """The Grid, with the policy's round timeout on every exchange: Flower's default fit and evaluate workflows
    wait without one, so a SuperNode that died mid-round would hold the round until its heartbeat expired."""

    def __init__(self, grid: Grid, timeout_s: float) -> None:
        self._grid, self._timeout_s = grid, timeout_s

    def send_and_receive(self, messages: Any, *, timeout: float | None = None) -> Any:
        return self._grid.send_and_receive(messages, timeout=min(timeout or self._timeout_s, self._timeout_s))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)


def wait_for_sites(grid: Grid, count: int, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while len(grid.get_node_ids()) < count and time.monotonic() < deadline:
        time.sleep(0.5)
    return len(grid.get_node_ids())


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = RunConfig.from_flower(dict(context.run_config))
    connected = wait_for_sites(grid, config.sites, config.round_timeout_s)
    if connected < config.sites:
        raise TooFewSites(f"{connected} of {config.sites} sites connected within {config.round_timeout_s} s")
    initial = get_weights(new_model(config.hidden_sizes, len(config.feature_names), config.seed))
    strategy = build_strategy(config, initial)
    legacy = LegacyContext(
        context=context,
        config=ServerConfig(num_rounds=config.rounds, round_timeout=config.round_timeout_s),
        strategy=strategy,
    )
    fit_workflow = None
    if config.secure_aggregation:
        fit_workflow = SecAggPlusWorkflow(
            num_shares=config.sampled_sites,
            reconstruction_threshold=config.min_sites,
            timeout=config.round_timeout_s,
        )
    started = time.time()
    DefaultWorkflow(fit_workflow=fit_workflow)(TimedGrid(grid, config.round_timeout_s), legacy)  # type: ignore[arg-type]
    final = legacy.state.array_records[MAIN_PARAMS_RECORD].to_numpy_ndarrays()
    write_result(Path(config.result_dir), final, strategy, initial, time.time() - started)


def write_result(
    result_dir: Path, final: list[np.ndarray], strategy: RecordingStrategy, initial: list[np.ndarray], seconds: float
) -> None:
    result_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    np.savez(result_dir / MODEL_FILE, *final)
    os.chmod(result_dir / MODEL_FILE, 0o600)
    model_bytes = int(sum(w.nbytes for w in initial))
    result = {
        "rounds": strategy.rounds,
        "site_metrics": strategy.site_metrics,
        "model_bytes": model_bytes,
        "seconds": round(seconds, 3),
    }
    path = result_dir / RESULT_FILE
    path.write_text(json.dumps(result, indent=1), encoding="utf-8")
    os.chmod(path, 0o600)
