"""Planted bugs of the server's client-level DP aggregation: fault injection that tests the client-level audit.

Each entry is a strategy factory passed as ``audit_client_level(..., strategy_factory=...)``, a keyword argument
of the engine only: no policy can name one and the assets never build one (as ppml.evaluation.planted_bugs for the
central audit). The claim stays the run's plan (its sigma, rate 1, T rounds); what differs is the strategy that
runs, built by the real ``build_strategy`` and then broken in one place:

==============  ==============================================================================================
noise_x1/3      Flower's DP wrapper built with a third of the planned noise multiplier
noise_x1/2      ... with half of it
clipping_off    server-side wrapper: aggregates the updates unclipped (then adds the noise for C);
                client-side wrapper (SecAgg+): tells the sites an infinite clip bound
==============  ==============================================================================================
"""

from __future__ import annotations

import enum
import math
from typing import Any

import numpy as np
from flwr.common import FitRes, Parameters, Scalar
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import (
    DifferentialPrivacyClientSideFixedClipping,
    DifferentialPrivacyServerSideFixedClipping,
    Strategy,
)
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, add_gaussian_noise_to_params

from ppml.federated.client_audit import StrategyFactory
from ppml.federated.run_config import RunConfig
from ppml.federated.server_app import RecordingStrategy, build_strategy


class PlantedStrategyBug(enum.Enum):
    NOISE_X1_3 = "noise_x1/3"
    NOISE_X1_2 = "noise_x1/2"
    CLIPPING_OFF = "clipping_off"


class ForgotToClip(DifferentialPrivacyServerSideFixedClipping):
    """Server-side DP that averages the raw updates, then adds the noise calibrated for clip bound C."""

    def aggregate_fit(
        self, server_round: int, results: list[tuple[ClientProxy, FitRes]], failures: list[Any]
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if failures:
            return None, {}
        aggregated, metrics = self.strategy.aggregate_fit(server_round, results, failures)
        if aggregated:
            aggregated = add_gaussian_noise_to_params(
                aggregated, self.noise_multiplier, self.clipping_norm, self.num_sampled_clients
            )
        return aggregated, metrics


class SendsNoClipBound(DifferentialPrivacyClientSideFixedClipping):
    """Client-side DP whose instructions carry an infinite clip bound: the sites' clipping never binds."""

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: Any) -> Any:
        instructions = super().configure_fit(server_round, parameters, client_manager)
        for _, fit_ins in instructions:
            fit_ins.config[KEY_CLIPPING_NORM] = math.inf
        return instructions


def _dp_wrapper(strategy: Strategy) -> Any:
    assert isinstance(strategy, RecordingStrategy), "build_strategy wraps the DP strategy in RecordingStrategy"
    return strategy.inner


def _noise_scaled(factor: float) -> StrategyFactory:
    def factory(config: RunConfig, initial: list[np.ndarray]) -> Strategy:
        strategy = build_strategy(config, initial)
        _dp_wrapper(strategy).noise_multiplier *= factor
        return strategy

    return factory


def _clipping_off(config: RunConfig, initial: list[np.ndarray]) -> Strategy:
    strategy = build_strategy(config, initial)
    dp = _dp_wrapper(strategy)
    broken = SendsNoClipBound if isinstance(dp, DifferentialPrivacyClientSideFixedClipping) else ForgotToClip
    strategy.inner = broken(dp.strategy, dp.noise_multiplier, dp.clipping_norm, dp.num_sampled_clients)  # type: ignore[attr-defined]
    return strategy


def planted_strategy(bug: PlantedStrategyBug | str) -> StrategyFactory:
    """The strategy factory of one corpus entry."""
    bug = PlantedStrategyBug(bug)
    if bug is PlantedStrategyBug.NOISE_X1_3:
        return _noise_scaled(1 / 3)
    if bug is PlantedStrategyBug.NOISE_X1_2:
        return _noise_scaled(1 / 2)
    return _clipping_off
