"""Per-subject privacy accounting with an individual privacy filter (``privacy.privacy_unit: subject``).

The data-set ledger (:mod:`ppml.ledger.store`) composes every run on a data set, as if every person were in every
run. Here each subject's account holds only the subject-unit runs that could have included them: a run includes
exactly the *eligible* subjects of its training window, and the others' data never reach it. Subjects with the
same history form a **cohort** (its id: the hash of its history when it was created; the set-based moves are in
:mod:`ppml.ledger.subject_moves`), so storage grows with distinct histories, not with runs x subjects.

**The filter** (soundness in docs/training.md). Every run is charged by its Renyi-DP at one order ``alpha``
fixed per data set when its first subject-unit reservation is made (from the lifetime budget alone, never from
data). A subject is eligible for a run only if its composed RDP plus the run's RDP stays within
``B = lifetime_epsilon - conv(alpha, lifetime_delta)`` (``conv``: the RDP-to-(epsilon, delta) conversion at one
order, Balle et al. 2020, Thm. 21); otherwise it is excluded from the run's training set and counted. By the
individual Renyi filter of Feldman & Zrnic (2021, "Individual privacy accounting via a Renyi filter") the whole
adaptive sequence is then ``(alpha, B)``-RDP for every subject, i.e. ``(lifetime_epsilon, lifetime_delta)``-DP.

**Crash safety** is the data-set ledger's: the cohort moves happen in the reservation's transaction, under the
data set's lock row (concurrent reservations serialise and see each other), at the run's full planned charge; a
run that dies keeps counting what it was pre-charged (a cohort refers to run ids, whose charges only grow until
settled at least at what ran). Nothing is ever un-charged.

Record-unit runs on the same data set (made before the policy switched, or releases that are not per subject)
may have included anyone, so they count for every subject, converted to a group of ``record_unit_group_size``
records: a record-level Gaussian run is charged as the Gaussian mechanism of sensitivity ``g`` (noise multiplier
``sigma / g``, no subsampling amplification), a pure ``epsilon`` release as ``g * epsilon``.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import math
import uuid
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import sqlalchemy as sa
from opacus.accountants.analysis import rdp as rdp_analysis
from sqlalchemy.engine import Connection

from ppml.errors import PPMLError, input_error
from ppml.ledger import subject_moves as cohort_sql
from ppml.ledger.composition import PURE_DP, RDP_ORDERS, Charge
from ppml.ledger.records import (
    REFUSED,
    RUNNING,
    DataScope,
    LedgerRun,
    LifetimeBudget,
    PlannedRun,
)
from ppml.ledger.records import utc_now as _now
from ppml.ledger.schema import datasets, requests, runs, subject_cohorts, subjects
from ppml.ledger.store import PrivacyLedger
from ppml.ledger.subject_moves import subject_key

#: ``ppml_ledger_runs.privacy_unit`` of a user-level run.
SUBJECT_UNIT = "subject"
#: The cohort of subjects no subject-unit run has included yet.
EMPTY_COHORT = hashlib.sha256(b"ppml-cohort:").hexdigest()
_CHUNK = 5000


class SubjectsExhaustedError(PPMLError):
    """Too few subjects still have budget for this run: it is refused (and recorded as refused)."""

    def __init__(self, message: str, *, eligible: int, excluded: int, required: int) -> None:
        super().__init__(message)
        self.eligible, self.excluded, self.required = eligible, excluded, required


@dataclass(frozen=True)
class SubjectReservation:
    """A reserved subject-unit request: train on ``eligible`` only (the others were excluded and counted)."""

    request_id: str
    run_ids: tuple[str, ...]
    eligible: tuple[str, ...]  # the pseudonyms passed in, in their order, that the run may include
    excluded: int
    filter_order: float
    max_epsilon_before: float
    max_epsilon_after: float
    run_epsilon: float  # the run's own per-person epsilon at the filter order

    def to_dict(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "eligible_subjects": len(self.eligible),
            "excluded_subjects": self.excluded,
            "filter_order": self.filter_order,
            "max_subject_epsilon_before": self.max_epsilon_before,
            "max_subject_epsilon_after": self.max_epsilon_after,
            "run_epsilon_at_filter_order": self.run_epsilon,
        }


def filter_order(lifetime: LifetimeBudget) -> float:
    """The Renyi order that admits the most Gaussian runs for this budget (a function of the budget alone).

    For Gaussian-like RDP (linear in the order), the runs that fit are proportional to ``B(alpha) / alpha``.
    """
    candidates = [a for a in RDP_ORDERS if rdp_budget(lifetime, a) > 0]
    if not candidates:
        raise input_error(
            "policy",
            "privacy.lifetime_epsilon_budget",
            f"{lifetime.epsilon:g} at delta {lifetime.delta:g} leaves no Renyi budget at any order",
            "raise the lifetime budget or the lifetime delta",
        )
    return float(max(candidates, key=lambda a: rdp_budget(lifetime, a) / a))


def _conversion(order: float, delta: float) -> float:
    """What converting ``(order, rho)``-RDP to (epsilon, delta) adds to rho (Balle et al. 2020, Thm. 21; the
    conversion Opacus' RDP accountant uses, valid at any single order > 1)."""
    return math.log((order - 1) / order) - (math.log(delta) + math.log(order)) / (order - 1)


def rdp_budget(lifetime: LifetimeBudget, order: float) -> float:
    """The RDP every subject may reach at ``order``: converts to exactly the lifetime (epsilon, delta)."""
    return lifetime.epsilon - _conversion(order, lifetime.delta)


def epsilon_at_order(rdp: float, order: float, delta: float) -> float:
    """(epsilon, delta) of an ``(order, rdp)``-RDP guarantee; 0 when nothing was charged at all."""
    return 0.0 if rdp <= 0 else max(rdp + _conversion(order, delta), 0.0)


def charge_rdp(charge: Charge, order: float, group_size: int = 1) -> float:
    """RDP at ``order`` of one run's charge for one subject; ``group_size > 1`` for record-unit runs."""
    if charge.steps <= 0:
        return 0.0
    if charge.mechanism == PURE_DP:
        epsilon = group_size * charge.epsilon
        return float(min(epsilon, order * epsilon**2 / 2)) if math.isfinite(epsilon) else math.inf
    if charge.noise_multiplier <= 0:
        return math.inf
    sigma, rate = charge.noise_multiplier, charge.sample_rate
    if group_size > 1:
        sigma, rate = sigma / group_size, 1.0  # sensitivity g, no amplification: a valid upper bound
    return charge.steps * _step_rdp(float(rate), float(sigma), float(order))


@functools.lru_cache(maxsize=4096)
def _step_rdp(rate: float, sigma: float, order: float) -> float:
    """RDP of one subsampled-Gaussian step (steps compose additively; cached: runs share few (q, sigma))."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = rdp_analysis.compute_rdp(q=rate, noise_multiplier=sigma, steps=1, orders=[order])
    return float(np.asarray(value, dtype=float).reshape(-1)[0])


class SubjectAccounts:
    """The per-subject side of a :class:`PrivacyLedger` (same database, same lock, same runs table)."""

    def __init__(self, ledger: PrivacyLedger) -> None:
        self.ledger = ledger

    # ------------------------------------------------------------------------------------------- reserve

    def reserve(
        self,
        scope: DataScope,
        planned: Sequence[PlannedRun],
        lifetime: LifetimeBudget,
        pseudonyms: Sequence[str],
        *,
        min_eligible: int,
        request_key: str,
        record_unit_group_size: int,
        dagster_run_id: str | None = None,
    ) -> SubjectReservation:
        """Exclude exhausted subjects, then reserve the runs' full spend for the eligible ones -- or refuse.

        Refused when fewer than ``min_eligible`` subjects remain; the refusal is recorded (zero charge).
        """
        _check_reserve(planned, min_eligible, record_unit_group_size)
        wanted = unique_pseudonyms(pseudonyms)
        keys = cohort_sql.subject_keys(scope.dataset, wanted)
        with self.ledger._locked(scope) as connection:
            order, lifetime = self._fixed_order(connection, scope.dataset, lifetime)
            existing = self.ledger._runs(connection, scope.dataset)
            cohort_rdp, cohort_rows = self._cohort_state(
                connection, scope.dataset, existing, order, record_unit_group_size
            )
            cohort_sql.load_request(connection, keys)
            decision = _decide(
                connection, scope.dataset, cohort_rdp, planned, order, rdp_budget(lifetime, order) * (1 + 1e-12)
            )
            excluded_keys = decision.excluded_keys(connection, scope.dataset)
            # (the common case excludes nobody: no pass over a million pseudonyms then)
            eligible = (
                [p for p, k in zip(wanted, keys, strict=True) if k not in excluded_keys] if excluded_keys else wanted
            )
            excluded = len(wanted) - len(eligible)
            refused = len(eligible) < min_eligible
            request_id = self._insert_request(connection, scope, request_key, planned, refused, dagster_run_id)
            run_ids = tuple(
                self.ledger._insert_planned(
                    connection, scope, request_id, p, REFUSED if refused else RUNNING, dagster_run_id, _now()
                )
                for p in planned
            )
            connection.execute(runs.update().where(runs.c.id.in_(run_ids)).values(privacy_unit=SUBJECT_UNIT))
            detail = {"eligible": len(eligible), "excluded": excluded, "required": min_eligible, "order": order}
            worst_before = decision.worst_before()
            if refused:
                message = _refusal(scope, detail, lifetime, epsilon_at_order(worst_before, order, lifetime.delta))
                connection.execute(requests.update().where(requests.c.id == request_id).values(message=message))
                self.ledger._event(connection, scope.dataset, None, REFUSED, None, None, dagster_run_id, message)
            else:
                moves = [
                    cohort_sql.CohortMove(c, *_known_cohort(cohort_rows, c, scope.dataset), included=n)
                    for c, n in decision.per_cohort.items()
                    if decision.fits[c]
                ]
                new = decision.new_subjects if decision.new_fits else 0
                cohort_sql.apply_moves(connection, scope.dataset, moves, new, run_ids, EMPTY_COHORT, _now())
                self.ledger._event(
                    connection, scope.dataset, None, "subject_filter", None, None, dagster_run_id, json.dumps(detail)
                )
            cohort_sql.drop_request(connection)
        if refused:
            raise SubjectsExhaustedError(message, eligible=len(eligible), excluded=excluded, required=min_eligible)
        return SubjectReservation(
            request_id=request_id,
            run_ids=run_ids,
            eligible=tuple(eligible),
            excluded=excluded,
            filter_order=order,
            max_epsilon_before=epsilon_at_order(worst_before, order, lifetime.delta),
            max_epsilon_after=epsilon_at_order(decision.worst_after(), order, lifetime.delta),
            run_epsilon=epsilon_at_order(decision.run_rdp, order, lifetime.delta),
        )

    # ------------------------------------------------------------------------------------------- reading

    def subject_epsilons(
        self, dataset: str, lifetime: LifetimeBudget, pseudonyms: Iterable[str], *, record_unit_group_size: int
    ) -> dict[str, float]:
        """Each subject's composed epsilon at the lifetime delta (the filter's bound), by pseudonym."""
        wanted = list(dict.fromkeys(str(p) for p in pseudonyms))
        keys = {subject_key(dataset, p): p for p in wanted}
        with self.ledger.engine.connect() as connection:
            order, lifetime = self._stored_filter(connection, dataset, lifetime)
            existing = self.ledger._runs(connection, dataset)
            cohort_rdp = self._cohort_rdp(connection, dataset, existing, order, record_unit_group_size)
            current = self._cohorts_of(connection, dataset, list(keys))
        return {
            keys[k]: epsilon_at_order(
                cohort_rdp.get(current.get(k, EMPTY_COHORT), cohort_rdp[EMPTY_COHORT]), order, lifetime.delta
            )
            for k in keys
        }

    def cohorts(self, dataset: str) -> list[dict[str, Any]]:
        """Cohorts with their run histories and subject counts (aggregates only)."""
        with self.ledger.engine.connect() as connection:
            rows = connection.execute(sa.select(subject_cohorts).where(subject_cohorts.c.dataset == dataset)).mappings()
            return [{"cohort": r["cohort"], "runs": json.loads(r["runs"]), "subjects": r["subjects"]} for r in rows]

    def summary(self, dataset: str, lifetime: LifetimeBudget, *, record_unit_group_size: int) -> dict[str, Any]:
        """Subjects, cohorts and the highest per-subject epsilon against the budget (for the report)."""
        with self.ledger.engine.connect() as connection:
            order, lifetime = self._stored_filter(connection, dataset, lifetime)
            existing = self.ledger._runs(connection, dataset)
            cohort_rdp = self._cohort_rdp(connection, dataset, existing, order, record_unit_group_size)
            counts = dict(
                connection.execute(
                    sa.select(subject_cohorts.c.cohort, subject_cohorts.c.subjects).where(
                        subject_cohorts.c.dataset == dataset, subject_cohorts.c.subjects > 0
                    )
                ).all()
            )
        worst = max((cohort_rdp[c] for c in counts if c in cohort_rdp), default=cohort_rdp[EMPTY_COHORT])
        return {
            "subjects": int(sum(counts.values())),
            "cohorts": len(counts),
            "filter_order": order,
            "max_subject_epsilon": epsilon_at_order(worst, order, lifetime.delta),
            "lifetime_epsilon": lifetime.epsilon,
            "lifetime_delta": lifetime.delta,
        }

    # ------------------------------------------------------------------------------------------- internals

    def _fixed_order(
        self, connection: Connection, dataset: str, lifetime: LifetimeBudget
    ) -> tuple[float, LifetimeBudget]:
        """The data set's filter order and lifetime delta: fixed at its first subject-unit reservation, from the
        budget alone. A later, smaller delta (more people under ``delta: auto``) is used as it is stricter; a
        larger one never is: the filter's Renyi budget never grows (docs/training.md)."""
        row = connection.execute(
            sa.select(datasets.c.filter_order, datasets.c.filter_delta).where(datasets.c.dataset == dataset)
        ).one_or_none()
        order = row.filter_order if row is not None else None
        delta = row.filter_delta if row is not None else None
        if order is None or delta is None:
            order = filter_order(lifetime) if order is None else float(order)
            delta = lifetime.delta
            connection.execute(
                datasets.update().where(datasets.c.dataset == dataset).values(filter_order=order, filter_delta=delta)
            )
        return float(order), _at_delta(lifetime, min(float(delta), lifetime.delta))

    def _stored_filter(
        self, connection: Connection, dataset: str, lifetime: LifetimeBudget
    ) -> tuple[float, LifetimeBudget]:
        """Read-only :meth:`_fixed_order` (the order and delta a reservation would use now)."""
        row = connection.execute(
            sa.select(datasets.c.filter_order, datasets.c.filter_delta).where(datasets.c.dataset == dataset)
        ).one_or_none()
        order = row.filter_order if row is not None and row.filter_order is not None else filter_order(lifetime)
        delta = row.filter_delta if row is not None and row.filter_delta is not None else lifetime.delta
        return float(order), _at_delta(lifetime, min(float(delta), lifetime.delta))

    def _cohort_rdp(
        self, connection: Connection, dataset: str, existing: list[LedgerRun], order: float, group: int
    ) -> dict[str, float]:
        """Each cohort's RDP at ``order``: every record-unit run (as a group of ``group``) plus its own runs."""
        return self._cohort_state(connection, dataset, existing, order, group)[0]

    def _cohort_state(
        self, connection: Connection, dataset: str, existing: list[LedgerRun], order: float, group: int
    ) -> tuple[dict[str, float], dict[str, tuple[list[str], int]]]:
        """Each cohort's RDP at ``order`` (record-unit runs as a group of ``group``, plus its own runs) and its
        (history, size)."""
        per_run: dict[str, float] = {}
        base = 0.0
        for run in existing:
            charge = run.charge()
            if charge is None:
                continue
            if run.privacy_unit == SUBJECT_UNIT:
                per_run[run.id] = charge_rdp(charge, order)
            else:
                base += charge_rdp(charge, order, group)
        result = {EMPTY_COHORT: base}
        rows: dict[str, tuple[list[str], int]] = {}
        query = sa.select(subject_cohorts.c.cohort, subject_cohorts.c.runs, subject_cohorts.c.subjects).where(
            subject_cohorts.c.dataset == dataset
        )
        for cohort, run_list, size in connection.execute(query):
            history = json.loads(run_list)
            rows[cohort] = (history, int(size))
            result[cohort] = base + math.fsum(per_run.get(run_id, 0.0) for run_id in history)
        return result, rows

    @staticmethod
    def _cohorts_of(connection: Connection, dataset: str, keys: list[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for start in range(0, len(keys), _CHUNK):
            chunk = keys[start : start + _CHUNK]
            query = sa.select(subjects.c.subject, subjects.c.cohort).where(
                subjects.c.dataset == dataset, subjects.c.subject.in_(chunk)
            )
            found.update(dict(connection.execute(query).all()))
        return found

    def _insert_request(
        self,
        connection: Connection,
        scope: DataScope,
        request_key: str,
        planned: Sequence[PlannedRun],
        refused: bool,
        dagster_run_id: str | None,
    ) -> str:
        request_id, now = str(uuid.uuid4()), _now()
        connection.execute(
            requests.insert().values(
                id=request_id,
                dataset=scope.dataset,
                request_key=request_key,
                status=REFUSED if refused else RUNNING,
                candidates=len(planned),
                dagster_run_id=dagster_run_id,
                created_at=now,
                updated_at=now,
                message=None,
            )
        )
        return request_id


@dataclass
class _Decision:
    """The filter's decision for one request, per cohort (subjects sharing a history share their RDP)."""

    per_cohort: dict[str, int]  # requested subjects per existing cohort
    new_subjects: int
    cohort_rdp: dict[str, float]
    run_rdp: float
    limit: float

    @property
    def base(self) -> float:
        return self.cohort_rdp[EMPTY_COHORT]

    @property
    def fits(self) -> dict[str, bool]:
        return {c: self.cohort_rdp.get(c, self.base) + self.run_rdp <= self.limit for c in self.per_cohort}

    @property
    def new_fits(self) -> bool:
        return self.base + self.run_rdp <= self.limit

    def excluded_keys(self, connection: Connection, dataset: str) -> set[str]:
        bad = [c for c, ok in self.fits.items() if not ok]
        new = bool(self.new_subjects) and not self.new_fits
        return cohort_sql.requested_in(connection, dataset, bad, new=new) if bad or new else set()

    def worst_before(self) -> float:
        values = [self.cohort_rdp.get(c, self.base) for c in self.per_cohort]
        return max([*values, *([self.base] if self.new_subjects else [])], default=self.base)

    def worst_after(self) -> float:
        fits = self.fits
        values = [self.cohort_rdp.get(c, self.base) + self.run_rdp for c in self.per_cohort if fits[c]]
        if self.new_subjects and self.new_fits:
            values.append(self.base + self.run_rdp)
        return max(values, default=0.0)


def _decide(
    connection: Connection,
    dataset: str,
    cohort_rdp: dict[str, float],
    planned: Sequence[PlannedRun],
    order: float,
    limit: float,
) -> _Decision:
    per_cohort = cohort_sql.requested_per_cohort(connection, dataset)
    total = connection.execute(sa.text(f"SELECT count(*) FROM {cohort_sql.REQUEST_TABLE}")).scalar_one()
    run_rdp = math.fsum(charge_rdp(p.charge(), order) for p in planned)
    return _Decision(per_cohort, int(total) - sum(per_cohort.values()), cohort_rdp, run_rdp, limit)


def _known_cohort(rows: dict[str, tuple[list[str], int]], cohort: str, dataset: str) -> tuple[list[str], int]:
    if cohort not in rows:
        raise PPMLError(
            f"privacy ledger: field 'ppml_ledger_subject_cohorts': data set {dataset!r} has subjects in a cohort "
            "with no row; fix: restore the ledger from a backup (it was edited by hand)"
        )
    return rows[cohort]


def _at_delta(lifetime: LifetimeBudget, delta: float) -> LifetimeBudget:
    return LifetimeBudget(lifetime.epsilon, delta, lifetime.warn_fraction)


def _check_reserve(planned: Sequence[PlannedRun], min_eligible: int, group_size: int) -> None:
    if not planned:
        raise input_error("ledger", "candidates", "nothing to reserve", "pass at least one planned run")
    if isinstance(min_eligible, bool) or not isinstance(min_eligible, int) or min_eligible < 1:
        raise input_error(
            "policy", "privacy.min_eligible_subjects", f"must be >= 1, got {min_eligible!r}", "set e.g. 100"
        )
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise input_error(
            "ledger",
            "record_unit_group_size",
            f"must be an integer >= 1, got {group_size!r}",
            "pass the most records one subject had in a record-unit run (the policy's max_records_per_subject)",
        )


def unique_pseudonyms(pseudonyms: Sequence[Any]) -> list[str]:
    """The request's distinct pseudonyms as text, refused in one line when one is missing or blank.

    C-level passes only (``dict.fromkeys``, ``map``): at a million subjects a Python-level check per pseudonym
    cost more than the ledger's SQL."""
    unique = dict.fromkeys(pseudonyms)
    if None in unique:
        raise _missing_pseudonym()
    if not all(map(isinstance, unique, itertools.repeat(str))):  # not all text: compare as text, as the keys are formed
        unique = dict.fromkeys(map(str, unique))
    if "" in unique or any(map(str.isspace, unique)):
        raise _missing_pseudonym()
    return list(unique)


def _missing_pseudonym() -> PPMLError:
    return input_error(
        "training window",
        "schema.subject_id",
        "a record without a subject pseudonym reached per-subject accounting",
        "fill the subject id of every record (it is pseudonymized before training)",
    )


def _refusal(scope: DataScope, detail: dict[str, Any], lifetime: LifetimeBudget, worst: float) -> str:
    return (
        f"privacy ledger: field 'privacy.min_eligible_subjects': training refused for data set {scope.dataset!r}: "
        f"only {detail['eligible']} subject(s) have budget left for this run ({detail['excluded']} excluded, "
        f"{detail['required']} required; highest per-subject epsilon {worst:.4g} of {lifetime.epsilon:.4g} at "
        f"delta {lifetime.delta:g}); fix: wait for new subjects, lower the per-run epsilon or the number of "
        "candidates, or lower min_eligible_subjects if the objectives allow"
    )
