"""The empirical audit of client-level DP (DP-FedAvg): canary clients through the server's real DP aggregation.

What it tests. The claim of a client-level run (ppml.federated.accounting ``client_level_plan``): every site's
update is clipped to ``C`` and each of the ``T = rounds`` rounds is a full Gaussian release (rate 1) of the mean
of ``m = min_sites`` updates with noise standard deviation ``sigma * C / m``. The audit drives the strategy that
``ppml.federated.server_app.build_strategy`` builds from the run's own :class:`RunConfig` (ppml's
``RecordingStrategy`` around Flower's DP wrapper around FedAvg, with the run's sigma, C and m) in-process:
``configure_fit`` then ``aggregate_fit`` with ``FitRes`` objects, round after round, as the ServerApp's workflow
calls them. The method is Andrew et al.'s one-shot estimate (ICLR 2024, "One-shot empirical privacy estimation for
federated learning"): canary clients whose updates are random directions, each canary in the run with
probability 1/2, the included ones submitted in every round (the accounting claims rate 1); each canary is scored
by the inner product of the released model's total change with its direction, and the scores are analysed by
ppml's f-DP one-run test (ppml.evaluation.fdp_audit) against the claimed curve: the Gaussian mechanism at rate 1
composed T times. The reported bound is the epsilon of the most private member of that family the outcome refutes.
Unlike Andrew et al. (canaries among many real clients of the one real run), a ppml federation has a few sites, so
the canaries run in federations of their own beside the real run: the audit tests the configured mechanism, not the
release of the model that was trained (as the per-site white-box audit does).

Canary design. A round releases the mean of the updates it got (FedAvg divides by their number) plus noise for
``m`` updates; so a canary federation has ``m`` slots per round, the fewest sites a round may complete with (the
least noise per update the accountant covers). A canary that is out leaves its slot to a blank client, so every
round has exactly ``m`` updates and a canary's presence moves the mean by ``C / m``, the accounted sensitivity.
(A blank's update is ``1e-9 C`` in a direction orthogonal to its group's canaries, not zero: Flower's clipping
divides by the update's norm.) The canaries are grouped ``m`` to a federation: ``ceil(n / m)`` independent runs of
the strategy (a fresh instance, fresh noise). Within a group the directions are exactly orthogonal, so a canary's
score is its own signal plus the mechanism's noise and nothing else (the f-DP one-run test needs only that the
run is f-DP with respect to each canary). So the model's own dimension suffices (``m + 1 <= d``): no synthetic
dimension is used, the directions live in the ServerApp's initial model shapes (in float64, so the blank update
does not round away). Each canary update is ``canary_norm_factor * C`` long, past the clip bound, so a clip that
does not bind is seen. A noise check (Flower's noise is i.i.d. Gaussian per coordinate) compares the release's
energy orthogonal to the group's directions with the claimed ``T (sigma C / m)^2`` per coordinate: a chi-square
lower-tail p-value. Cost: ``ceil(n / m) * T`` calls of ``aggregate_fit``, about 2 ms each on one core.

No ledger charge: the canaries and blanks are synthetic vectors, so the audit's output is a function of no
person's record (no site's data enters it); it releases nothing about anyone.

Secure aggregation (the client-side clipping wrapper): its clipping runs in each site (Flower's
``fixedclipping_mod``) and SecAgg+ hands the strategy one weighted mean. The audit clips each canary with the
function the mod calls (``compute_clip_model_update``) at the clip bound the wrapper's ``configure_fit`` sends, and
hands every result the exact weighted mean as the SecAgg+ workflow does; SecAgg+'s masking, quantization and the
message plumbing are not driven (they need the Deployment Engine). What it does not test: the sites' local
training, sampling of sites (none is claimed), rounds completing with more than ``m`` sites (more noise per update
than accounted, never less), and anything outside ``aggregate_fit``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from flwr.common import Code, FitRes, Parameters, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server.client_manager import SimpleClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import Strategy
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM, compute_clip_model_update
from scipy import stats

from ppml.evaluation.fdp_audit import SubsampledGaussian, fdp_lower_bound, guess_counts, max_certifiable
from ppml.federated.accounting import SitePlan
from ppml.federated.run_config import RunConfig

StrategyFactory = Callable[[RunConfig, list[np.ndarray]], Strategy]
SOURCE = "client-level audit"
BLANK_NORM = 1e-9  # a blank's update, in units of C: Flower's clipping divides by the update's norm, so not zero


@dataclass(frozen=True)
class ClientAuditSettings:
    """``n_canaries`` (rounded up to a multiple of m); two guess sizes as the white-box audit's; the seed fixes the
    canaries, their inclusion and Flower's noise (numpy's global generator, restored afterwards)."""

    n_canaries: int = 2000
    canary_norm_factor: float = 4.0
    guess_fractions: tuple[float, ...] = (0.01, 0.03)
    confidence: float = 0.95
    mechanism_alpha: float = 1e-3
    seed: int = 0


@dataclass(frozen=True)
class ClientAuditResult:
    claimed_epsilon: float
    delta: float
    lower_bound: float
    max_achievable_bound: float
    bound_alarm: bool
    noise_p_value: float
    mechanism_alpha: float
    confidence: float
    n_canaries: int
    n_included: int
    rounds: int
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def alarm(self) -> bool:
        return self.bound_alarm or self.noise_p_value < self.mechanism_alpha

    @property
    def message(self) -> str:
        text = (
            f"client-level epsilon lower bound {self.lower_bound:.3f} "
            f"{'exceeds' if self.bound_alarm else '<='} claimed {self.claimed_epsilon:.3f} "
            f"({self.confidence:.0%} confidence; at most {self.max_achievable_bound:.2f} detectable with "
            f"{self.n_canaries} canary clients over {self.rounds} rounds)"
        )
        if self.noise_p_value < self.mechanism_alpha:
            text += f"; less noise than claimed (p = {self.noise_p_value:.2g})"
        return ("ALARM: " if self.alarm else "") + text

    def to_dict(self) -> dict[str, Any]:
        return {
            "claimed_epsilon": self.claimed_epsilon,
            "delta": self.delta,
            "epsilon_lower_bound": self.lower_bound,
            "max_achievable_bound": self.max_achievable_bound,
            "bound_alarm": self.bound_alarm,
            "mechanism_checks": {"noise": {"p_value": self.noise_p_value}},
            "mechanism_alpha": self.mechanism_alpha,
            "alarm": self.alarm,
            "message": self.message,
            "confidence": self.confidence,
            "canaries": self.n_canaries,
            "n_included": self.n_included,
            "rounds": self.rounds,
            "details": self.details,
        }


class SlotProxy(ClientProxy):
    """A site the client manager can sample: the audit hands its results to the strategy itself, so Flower never
    calls a method of it."""

    def _unused(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("the client-level audit drives aggregate_fit in-process: no client is contacted")

    get_properties = get_parameters = fit = evaluate = reconnect = _unused


def _manager(sites: int) -> SimpleClientManager:
    manager = SimpleClientManager()
    for i in range(sites):
        manager.register(SlotProxy(f"slot-{i}"))
    return manager


def _split(flat: np.ndarray, shapes: Sequence[tuple[int, ...]]) -> list[np.ndarray]:
    """The flat vector in the model's shapes (float64: the blank update must not round away)."""
    sizes = np.cumsum([math.prod(s) for s in shapes])[:-1]
    return [part.reshape(shape).astype(np.float64) for part, shape in zip(np.split(flat, sizes), shapes, strict=True)]


def _flat(arrays: Sequence[np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays])


def _fit_res(arrays: list[np.ndarray] | Parameters) -> FitRes:
    parameters = arrays if isinstance(arrays, Parameters) else ndarrays_to_parameters(arrays)
    return FitRes(Status(Code.OK, ""), parameters, 1, {})  # weight 1: the ClientApp's client-level weight


def _round(
    strategy: Strategy, config: RunConfig, server_round: int, current: list[np.ndarray], submitted: list[list]
) -> list[np.ndarray]:
    """One round as the ServerApp's workflow runs it: configure_fit, the sites' results, aggregate_fit."""
    manager = _manager(config.sites)
    instructions = strategy.configure_fit(server_round, ndarrays_to_parameters(current), manager)
    proxies = [proxy for proxy, _ in instructions]
    if config.secure_aggregation:  # each site clips (fixedclipping_mod), SecAgg+ hands over one weighted mean
        bound = float(instructions[0][1].config[KEY_CLIPPING_NORM])
        for arrays in submitted:
            compute_clip_model_update(arrays, current, bound)
        mean = [np.mean([arrays[i] for arrays in submitted], axis=0) for i in range(len(current))]
        results = [(proxies[k % len(proxies)], _fit_res(mean)) for k in range(len(submitted))]
    else:
        results = [(proxies[k % len(proxies)], _fit_res(arrays)) for k, arrays in enumerate(submitted)]
    aggregated, _ = strategy.aggregate_fit(server_round, results, [])
    if aggregated is None:
        raise RuntimeError(f"round {server_round}: the strategy released no model")
    return parameters_to_ndarrays(aggregated)


def run_group(
    config: RunConfig,
    factory: StrategyFactory,
    directions: np.ndarray,
    included: np.ndarray,
    norm: float,
    shapes: Sequence[tuple[int, ...]],
) -> np.ndarray:
    """One federation of ``m`` canary slots (in: direction * norm every round; out: a blank) over all rounds;
    returns the released model's total change (flat). ``directions`` has one more row than slots: the blanks'."""
    start = _flat([np.zeros(s) for s in shapes])
    strategy = factory(config, _split(start, shapes))
    current = start.copy()
    blank = BLANK_NORM * config.client_clipping_norm * directions[-1]
    for server_round in range(1, config.rounds + 1):
        submitted = [
            _split(current + (norm * direction if inside else blank), shapes)
            for direction, inside in zip(directions[:-1], included, strict=True)
        ]
        current = _flat(_round(strategy, config, server_round, _split(current, shapes), submitted))
    return current - start


def _frame(rng: np.random.Generator, dimension: int, count: int) -> np.ndarray:
    """``count`` orthonormal directions, uniformly random in R^dimension (rows)."""
    q, r = np.linalg.qr(rng.normal(size=(dimension, count)))
    return (q * np.sign(np.diag(r))).T


def _noise_p_value(residual_sq: float, dof: int, variance: float) -> float:
    """P[chi2 <= observed] under the claimed noise: small when the release is less noisy than claimed."""
    return float(stats.chi2.cdf(residual_sq / variance, dof)) if dof > 0 and variance > 0 else 1.0


def observe(
    config: RunConfig,
    shapes: Sequence[tuple[int, ...]],
    settings: ClientAuditSettings,
    factory: StrategyFactory,
) -> tuple[np.ndarray, np.ndarray, float, int]:
    """Run every canary group; (scores, included, residual energy, its degrees of freedom)."""
    m, dimension = config.min_sites, sum(math.prod(s) for s in shapes)
    if m + 1 > dimension:
        raise ValueError(f"{m} canary slots need more than {m} model parameters; the model has {dimension}")
    rng = np.random.default_rng(settings.seed)
    groups = math.ceil(settings.n_canaries / m)
    included = rng.random(groups * m) < 0.5
    norm = settings.canary_norm_factor * config.client_clipping_norm
    scores, residual_sq = np.zeros(groups * m), 0.0
    state = np.random.get_state()
    flwr_logger, level = logging.getLogger("flwr"), logging.getLogger("flwr").level
    np.random.seed(settings.seed)  # Flower's noise draws from numpy's global generator
    flwr_logger.setLevel(logging.ERROR)  # INFO lines per client and a WARNING per round otherwise
    try:
        for g in range(groups):
            directions, inside = _frame(rng, dimension, m + 1), included[g * m : (g + 1) * m]
            change = run_group(config, factory, directions, inside, norm, shapes)
            projections = directions @ change
            scores[g * m : (g + 1) * m] = projections[:m] * m / config.client_clipping_norm
            residual_sq += float(change @ change - projections @ projections)
    finally:
        np.random.set_state(state)
        flwr_logger.setLevel(level)
    return scores, included, residual_sq, groups * (dimension - m - 1)


def audit_client_level(
    config: RunConfig,
    plan: SitePlan,
    shapes: Sequence[tuple[int, ...]],
    settings: ClientAuditSettings | None = None,
    *,
    strategy_factory: StrategyFactory | None = None,
) -> ClientAuditResult:
    """The audit of the run configured by ``config`` against its plan's claim (sigma, rate 1, T = rounds).

    ``strategy_factory``: the server's ``build_strategy`` unless a test plants a broken one (never from a policy)."""
    if config.dp_mode != "client":
        raise ValueError(f"the client-level audit needs dp_mode client, not {config.dp_mode!r}")
    from ppml.federated.server_app import build_strategy

    settings = settings or ClientAuditSettings()
    factory = strategy_factory or build_strategy
    scores, included, residual_sq, dof = observe(config, shapes, settings, factory)
    claimed = SubsampledGaussian(1.0, plan.noise_multiplier, config.rounds)
    outcomes = guess_counts(scores, included, settings.guess_fractions)
    n = len(scores)
    with np.errstate(divide="ignore"):  # Opacus' PRV at rate 1 takes log(1 - q)
        bound = fdp_lower_bound(
            outcomes, n, claimed, delta=plan.delta, claimed_epsilon=plan.epsilon, confidence=settings.confidence
        )
        best = max_certifiable(n, settings.guess_fractions, claimed, delta=plan.delta, confidence=settings.confidence)
    std = plan.noise_multiplier * config.client_clipping_norm / config.min_sites
    return ClientAuditResult(
        claimed_epsilon=plan.epsilon,
        delta=plan.delta,
        lower_bound=bound.lower_bound,
        max_achievable_bound=best,
        bound_alarm=bound.claim_refuted,
        noise_p_value=_noise_p_value(residual_sq, dof, config.rounds * std**2),
        mechanism_alpha=settings.mechanism_alpha,
        confidence=settings.confidence,
        n_canaries=n,
        n_included=int(included.sum()),
        rounds=config.rounds,
        details={
            "source": SOURCE,
            "noise_multiplier": plan.noise_multiplier,
            "clipping_norm": config.client_clipping_norm,
            "slots_per_round": config.min_sites,
            "secure_aggregation": config.secure_aggregation,
            "dimension": int(sum(math.prod(s) for s in shapes)),
            "noise_at_bound": bound.noise_at_bound,
            "guesses": bound.guesses,
            "correct": bound.correct,
            "settings": {**settings.__dict__, "guess_fractions": list(settings.guess_fractions)},
        },
    )
