"""Complete accounting (issue 8, item 1): one ledger, one reservation path, keyed by the people.

Pure epsilon-DP releases compose with DP-SGD runs; the OpenDP summary is reserved, charged and refused like any
training; the ledger scope survives a policy rename and a pre-0002 account keyed by a policy name is kept.
"""

from __future__ import annotations

import pandas as pd
import pytest
import sqlalchemy as sa

from ppml.dp_statistics import release_dp_summary
from ppml.ledger import BudgetExceededError, Charge, DataScope, LifetimeBudget, PrivacyLedger, compose
from ppml.ledger.schema import datasets, runs
from ppml.policy import load_policy
from ppml_assets.common import data_scope, open_ledger
from tests.support import GDPR_POLICY, HIPAA_POLICY
from tests.training.test_ledger import DELTA, planned

LIFETIME = LifetimeBudget(2.0, DELTA)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger(request, tmp_path):  # type: ignore[no-untyped-def]
    url = f"sqlite:///{tmp_path / 'ledger.db'}" if request.param == "sqlite" else None
    store = PrivacyLedger(url or request.getfixturevalue("postgres_database"))
    yield store
    store.close()


def _records(n: int = 400) -> pd.DataFrame:
    return pd.DataFrame({"sex": ["Male", "Female"] * (n // 2), "hours": [40.0, 20.0] * (n // 2)})


def _release(store: PrivacyLedger, scope: DataScope, epsilon: float = 0.5, key: str = "r1", lifetime=LIFETIME):  # type: ignore[no-untyped-def]
    return release_dp_summary(
        _records(),
        epsilon=epsilon,
        ledger=store,
        scope=scope,
        lifetime=lifetime,
        request_key=key,
        categorical={"sex": ["Male", "Female"]},
        numeric={"hours": (1.0, 99.0)},
    )


class TestPureDPComposition:
    def test_a_lone_pure_release_costs_its_epsilon(self) -> None:
        assert compose([Charge.pure(0.5)], DELTA).epsilon == pytest.approx(0.5)

    def test_pure_releases_add_to_dp_sgd_runs_and_never_below(self) -> None:
        gaussian = planned().charge()
        alone = compose([gaussian], DELTA).epsilon
        both = compose([gaussian, Charge.pure(0.5)], DELTA)
        assert alone < both.epsilon <= alone + 0.5 + 1e-9
        many = compose([Charge.pure(0.1)] * 200, DELTA)
        assert many.method == "rdp" and many.epsilon < 20.0  # zCDP-style RDP beats adding 200 x 0.1
        assert many.epsilon > 0.1


class TestDPStatisticsIsCharged:
    def test_the_release_is_in_the_ledger_and_counts_toward_the_lifetime_budget(self, ledger) -> None:  # type: ignore[no-untyped-def]
        scope = DataScope("adult-census-1994", ("2026-04-30",))
        summary, run_id = _release(ledger, scope)
        row = ledger.run(run_id)
        assert row.kind == "pure_dp" and row.status == "completed"
        assert row.epsilon_charged == pytest.approx(0.5) and summary.epsilon_spent <= 0.5 + 1e-9
        assert ledger.spent(scope, DELTA).epsilon == pytest.approx(0.5)
        status = ledger.budget_status(scope.dataset, LIFETIME)[0]
        assert status.runs == 1 and status.remaining_epsilon == pytest.approx(1.5)

    def test_a_release_over_the_lifetime_budget_is_refused_before_reading(self, ledger) -> None:  # type: ignore[no-untyped-def]
        scope = DataScope("adult-census-1994")
        ledger.reserve(scope, [planned()], LIFETIME, request_key="dp-training")
        spent = ledger.spent(scope, DELTA).epsilon
        with pytest.raises(BudgetExceededError, match="lifetime_epsilon"):
            _release(ledger, scope, epsilon=LIFETIME.epsilon - spent + 0.05)
        refused = [r for r in ledger.runs(scope.dataset) if r.kind == "pure_dp"]
        assert [r.status for r in refused] == ["refused"]
        assert ledger.spent(scope, DELTA).epsilon == pytest.approx(spent)  # a refusal charges nothing

    def test_a_failed_release_keeps_its_pre_charge(self, ledger) -> None:  # type: ignore[no-untyped-def]
        scope = DataScope("adult-census-1994")
        with pytest.raises(Exception, match="column not in the data"):
            release_dp_summary(
                _records(),
                epsilon=0.5,
                ledger=ledger,
                scope=scope,
                lifetime=LIFETIME,
                request_key="bad",
                categorical={"no_such_column": None},
            )
        assert ledger.spent(scope, DELTA).epsilon == pytest.approx(0.5)  # never under-count


class TestScopeIsThePeople:
    def test_scope_survives_a_rename_and_is_shared_by_policies_on_the_same_people(self, tmp_path) -> None:  # type: ignore[no-untyped-def]
        import yaml

        document = yaml.safe_load(GDPR_POLICY.read_text())
        document["name"] = "renamed-income-policy"
        document["training"]["epochs"] = 7  # a re-versioned policy too
        renamed = tmp_path / "renamed.yaml"
        renamed.write_text(yaml.safe_dump(document))
        policies = [load_policy(p, check_files=False) for p in (GDPR_POLICY, renamed, HIPAA_POLICY)]
        assert len({p.content_hash for p in policies}) == 3 and len({p.policy.name for p in policies}) == 3
        assert [data_scope(p, "2026-04-30").dataset for p in policies] == ["adult-census-1994"] * 3

    def test_spend_under_the_old_name_still_counts_after_a_rename(self, tmp_path) -> None:  # type: ignore[no-untyped-def]
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
        store = PrivacyLedger(url)
        store.reserve(DataScope("adult-census-1994"), [planned()], LIFETIME, request_key="first")
        spent = store.spent(DataScope("adult-census-1994"), DELTA).epsilon
        store.close()
        loaded = load_policy(GDPR_POLICY)
        renamed = loaded.model_copy(update={"policy": loaded.policy.model_copy(update={"name": "other-name"})})
        store = open_ledger(url, renamed)
        try:
            assert store.spent(data_scope(renamed, "2026-04-30"), DELTA).epsilon == pytest.approx(spent)
        finally:
            store.close()

    def test_a_new_dataset_id_starts_a_new_account(self, ledger) -> None:  # type: ignore[no-untyped-def]
        ledger.reserve(DataScope("adult-census-1994"), [planned()], LIFETIME, request_key="first")
        assert ledger.spent(DataScope("adult-census-1994"), DELTA).epsilon > 0
        assert ledger.spent(DataScope("adult-census-2026-resurvey"), DELTA).epsilon == 0.0

    def test_a_pre_0002_account_keyed_by_the_policy_name_is_merged_not_lost(self, ledger) -> None:  # type: ignore[no-untyped-def]
        legacy = DataScope("adult-income-gdpr")
        ledger.reserve(legacy, [planned()], LIFETIME, request_key="before-upgrade")
        spent = ledger.spent(legacy, DELTA).epsilon
        with ledger.engine.begin() as connection:  # what migration 0002 does to every scope that existed before
            connection.execute(
                datasets.update().where(datasets.c.dataset == legacy.dataset).values(scope_kind="policy_name")
            )
        scope = DataScope("adult-census-1994")
        assert ledger.adopt_policy_name_scope("adult-income-gdpr", scope) == 1
        assert ledger.spent(scope, DELTA).epsilon == pytest.approx(spent)
        assert ledger.adopt_policy_name_scope("adult-income-gdpr", scope) == 0  # once only
        with ledger.engine.connect() as connection:
            assert connection.execute(sa.select(sa.func.count()).where(runs.c.dataset == legacy.dataset)).scalar() == 0
        # a scope created as a data-set identity is never taken by a policy of that name
        other = DataScope("some-dataset-id")
        ledger.reserve(other, [planned()], LIFETIME, request_key="x")
        assert ledger.adopt_policy_name_scope("some-dataset-id", scope) == 0
        assert ledger.spent(other, DELTA).epsilon > 0
