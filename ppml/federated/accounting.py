"""Privacy accounting of a federated run, planned before it starts and charged to each site's ledger scope.

Example-level DP: each site runs DP-SGD (Opacus) on its own records; a person is in exactly one site, so each
site's scope ``site:<name>`` is charged the composition of *its* sampled Gaussian steps over every round
(parallel composition across sites, which are disjoint in people).

Client-level DP (DP-FedAvg): every site's update is clipped to ``C`` and the server adds Gaussian noise of
standard deviation ``sigma * C / m`` to the mean of ``m`` updates. Flower samples a fixed number of sites per
round without replacement; Opacus' accountants analyse Poisson sampling, so ppml does not claim amplification by
sampling: each round is charged as a full Gaussian mechanism (sample rate 1), which over-counts, never under.
``m`` is the policy's ``min_sites`` (a round that completes with more sites gets more noise than needed, never
less). A site-level guarantee covers every person of the site, so each site's scope is charged the same epsilon.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any

from ppml.federated.settings import FederationSettings
from ppml.ledger import DataScope, LifetimeBudget, PrivacyLedger
from ppml.ledger.store import PlannedRun
from ppml.training.dp_sgd import calibrated_noise_multiplier, epsilon_of_history

SITE_PARTITION = "site:{}"


@dataclass(frozen=True)
class SitePlan:
    """The DP mechanism one site's records go through during the whole run."""

    site: str
    mode: str
    noise_multiplier: float
    sample_rate: float
    steps_per_round: int
    rounds: int
    epsilon: float
    delta: float
    accountant: str

    @property
    def steps(self) -> int:
        return self.steps_per_round * self.rounds

    def epsilon_after(self, rounds: int) -> float:
        """Epsilon spent after ``rounds`` rounds (what a site that stopped early has used)."""
        steps = self.steps_per_round * max(0, min(rounds, self.rounds))
        return epsilon_of_history([(self.noise_multiplier, self.sample_rate, steps)], self.delta, self.accountant)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def example_level_plan(
    site: str, n_train: int, fed: FederationSettings, epsilon: float, delta: float, accountant: str
) -> SitePlan:
    """Calibrate the site's DP-SGD noise so all rounds' steps together spend ``epsilon`` (as Opacus would)."""
    batches = max(1, math.ceil(n_train / fed.batch_size))
    sample_rate = 1 / batches
    epochs = fed.rounds * fed.local_epochs
    sigma = calibrated_noise_multiplier(float(epsilon), float(delta), sample_rate, epochs, accountant)
    steps_per_round = fed.local_epochs * batches
    spent = epsilon_of_history([(sigma, sample_rate, steps_per_round * fed.rounds)], delta, accountant)
    return SitePlan(site, "example", float(sigma), sample_rate, steps_per_round, fed.rounds, spent, delta, accountant)


def client_level_plan(site: str, fed: FederationSettings, epsilon: float, delta: float, accountant: str) -> SitePlan:
    """One Gaussian release per round, no amplification claimed (see the module docstring)."""
    sigma = calibrated_noise_multiplier(float(epsilon), float(delta), 1.0, fed.rounds, accountant)
    spent = epsilon_of_history([(sigma, 1.0, fed.rounds)], delta, accountant)
    return SitePlan(site, "client", float(sigma), 1.0, 1, fed.rounds, spent, delta, accountant)


def site_scope(dataset_id: str, site: str) -> DataScope:
    return DataScope(dataset=dataset_id, partitions=(SITE_PARTITION.format(site),), partitions_disjoint=True)


def planned_run(plan: SitePlan, config: dict[str, Any]) -> PlannedRun:
    canonical = json.dumps({"plan": plan.to_dict(), **config}, sort_keys=True, default=str)
    return PlannedRun(
        candidate_index=0,
        config_fingerprint=hashlib.sha256(canonical.encode()).hexdigest(),
        config={"federated": plan.mode, "site": plan.site, **config},
        accountant=plan.accountant,
        target_epsilon=plan.epsilon,
        target_delta=plan.delta,
        noise_multiplier=plan.noise_multiplier,
        noise_multiplier_applied=plan.noise_multiplier,
        sample_rate=plan.sample_rate,
        planned_steps=plan.steps,
        epsilon_planned=plan.epsilon,
    )


@dataclass(frozen=True)
class SiteBooking:
    site: str
    request_id: str
    run_id: str
    plan: SitePlan


def book_sites(
    ledger: PrivacyLedger,
    dataset_id: str,
    plans: list[SitePlan],
    lifetime: LifetimeBudget,
    *,
    request_key: str,
    config: dict[str, Any],
    dagster_run_id: str | None = None,
) -> list[SiteBooking]:
    """Reserve and pre-charge every site's whole plan before any site trains (a refusal raises before that).

    All sites are reserved first, then pre-charged, so a refusal of one site leaves no other site charged.
    """
    reservations = []
    try:
        for plan in plans:
            reservation = ledger.reserve(
                site_scope(dataset_id, plan.site),
                [planned_run(plan, config)],
                lifetime,
                request_key=f"{request_key}:{plan.site}",
                dagster_run_id=dagster_run_id,
            )
            reservations.append(SiteBooking(plan.site, reservation.request_id, reservation.run_ids[0], plan))
    except BaseException:
        for booking in reservations:  # a reservation alone charges nothing; close it as refused
            ledger.fail_run(booking.run_id, "federation refused: another site's reservation was refused")
            ledger.finish_request(booking.request_id, selected_run_id=None, status="refused")
        raise
    for booking in reservations:
        ledger.pre_charge(booking.run_id, steps=booking.plan.steps, epsilon=booking.plan.epsilon)
    return reservations


def settle_sites(
    ledger: PrivacyLedger, bookings: list[SiteBooking], rounds_done: dict[str, int], *, failed: str | None
) -> None:
    """Complete each site's ledger run with what it spent; a site that dropped out or a failed run keeps its
    whole pre-charge (the ledger may over-count, never under-count)."""
    for booking in bookings:
        done = rounds_done.get(booking.site, 0)
        if failed is None and done >= booking.plan.rounds:
            ledger.complete_run(booking.run_id, steps=booking.plan.steps, epsilon=booking.plan.epsilon)
            ledger.finish_request(booking.request_id, selected_run_id=booking.run_id)
        else:
            reason = failed or f"site {booking.site} completed {done} of {booking.plan.rounds} rounds"
            ledger.record_progress(
                booking.run_id, steps=booking.plan.steps_per_round * done, epsilon=booking.plan.epsilon_after(done)
            )
            ledger.fail_run(booking.run_id, reason)
            ledger.finish_request(booking.request_id, selected_run_id=None, status="failed", message=reason)
