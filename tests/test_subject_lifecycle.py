"""The lifecycle with ``privacy_unit: subject`` on the repeated-subject landing zone (issue 10, items 1-2): the
window is contribution-bounded before anonymization, dp_model trains per person through the per-subject filter,
and the ledger, the asset metadata and the report state the per-person epsilon, eligible and excluded subjects."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pandas as pd
import pytest
from dagster import instance_for_test

from ppml.landing_zone import write_landing_zone
from ppml.landing_zone_repeated import synthesize_repeated_subject_records
from ppml.ledger import LifetimeBudget, PrivacyLedger
from ppml.ledger.subjects import SubjectAccounts
from ppml.policy import load_policy
from ppml_assets.subjects import RELEASE_SUBJECTS
from tests.graph_support import graph_workspace, write_policy
from tests.support import REPO_ROOT, TEST_FIRST_DAY, days


def _weekly_bench():  # type: ignore[no-untyped-def]
    """bench/weekly_bench.py as a module (bench/ is not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("weekly_bench", REPO_ROOT / "bench" / "weekly_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SUBJECT_SETTINGS = {
    "privacy__privacy_unit": "subject",
    "privacy__max_records_per_subject": 2,
    "privacy__min_eligible_subjects": 200,
    "privacy__dp_statistics_epsilon": 0.05,
    "evaluation__reference_models": 0,
    "evaluation__audit_canaries": 0,
    "evaluation__gradient_canaries": 1000,  # the user-level trainer's white-box audit, through the filter
    "training__batch_size": 128,
    "training__candidates": "listed",  # one candidate (the policy's learning rate): a small, fast test
    "training__epochs": 5,
    "training__train_non_private_baseline": False,  # its tuning grid is the record unit's, tested elsewhere
    "objectives__min_accuracy": 0.6,
    "objectives__min_roc_auc": 0.6,
    "objectives__max_utility_gap": 0.3,
    "objectives__max_group_error_rate_gap": 0.6,
}


@pytest.mark.slow
def test_subject_unit_lifecycle_on_the_repeated_subject_landing_zone(tmp_path: Path) -> None:
    window = days(TEST_FIRST_DAY, 6)
    raw = synthesize_repeated_subject_records(only_days=window)
    assert raw["record_id"].value_counts().max() > 2  # people repeat beyond the bound c = 2
    landing = tmp_path / "landing"
    write_landing_zone(landing, raw)
    policy = write_policy(tmp_path, **SUBJECT_SETTINGS)
    workspace = graph_workspace(tmp_path / "home", landing, policy)
    with instance_for_test() as instance:
        assert workspace.run("requirements_job", instance).success
        assert workspace.collect(instance, window[0], window[-1]).success
        result = workspace.run("training_job", instance, partition_key=window[-1])
        assert result.asset_materializations_for_node("dp_model"), [
            e.message for e in result.all_events if e.is_failure
        ]
        anonymized = result.asset_materializations_for_node("anonymized_records")[0].metadata
    bounding = anonymized["contribution_bounding"].value
    assert bounding["largest_contribution_after"] == 2 and bounding["subjects_bounded"] > 0
    released = pd.read_parquet(workspace.home / "assets" / "anonymized_records" / f"{window[-1]}.parquet")
    assert "record_id" not in released.columns  # the pseudonym never enters the release
    side = workspace.home / "assets" / RELEASE_SUBJECTS / f"{window[-1]}.parquet"
    assert stat.S_IMODE(os.stat(side).st_mode) == 0o600 and len(pd.read_parquet(side)) == len(released)

    trained = json.loads((workspace.home / "assets" / "dp_model" / f"{window[-1]}.json").read_text())
    subjects = trained["subjects"]
    assert trained["privacy_unit"] == "subject" and trained["clipping"] == "user_level"
    assert subjects["eligible_subjects"] >= 200 and subjects["excluded_subjects"] == 0
    assert 0 < subjects["epsilon_per_person"] <= 1.0 + 1e-9

    # the ledger, independently: every subject's epsilon (filter bound) within budget and equal to the highest one
    loaded = load_policy(policy)
    ledger = PrivacyLedger(f"sqlite:///{workspace.home / 'ledger.db'}")
    try:
        lifetime = LifetimeBudget(8.0, subjects["accounts"]["lifetime_delta"])
        summary = SubjectAccounts(ledger).summary(loaded.policy.dataset.id, lifetime, record_unit_group_size=2)
    finally:
        ledger.close()
    assert summary["subjects"] == subjects["eligible_subjects"]
    # the audit ran after dp_model, through the filter: its people's accounts grew by the audit run's epsilon
    assert summary["max_subject_epsilon"] > subjects["max_subject_epsilon_after"]
    assert subjects["epsilon_per_person"] < summary["max_subject_epsilon"] <= 8.0
    # the weekly bench's independent recomputation (Opacus, best order per cohort) never exceeds the filter's bound
    recomputed = _weekly_bench().independent_max_epsilon(
        f"sqlite:///{workspace.home / 'ledger.db'}", loaded.policy.dataset.id, lifetime.delta, True, 2
    )
    assert subjects["epsilon_per_person"] < recomputed <= summary["max_subject_epsilon"] + 1e-9

    evidence = json.loads((workspace.home / "reports" / window[-1] / "evidence.json").read_text())
    stated = evidence["training"]["subjects"]
    assert stated["eligible_subjects"] == subjects["eligible_subjects"] and stated["excluded_subjects"] == 0
    html = (workspace.home / "reports" / window[-1] / "report.html").read_text()
    assert "ε per person" in html and f'<td class="num">{subjects["eligible_subjects"]}</td>' in html
    audit = evidence["audit"]["whitebox"]  # the user-level trainer audited, not train_dp
    assert audit["details"]["privacy_unit"] == "subject" and not audit["alarm"], audit["message"]
    charge = audit["subject_ledger"]
    assert charge["people_in_audit"] == subjects["eligible_subjects"] and charge["excluded"] == 0
    ledger = PrivacyLedger(f"sqlite:///{workspace.home / 'ledger.db'}")
    try:
        run = ledger.run(charge["ledger_run"])
    finally:
        ledger.close()
    assert run.status == "completed" and run.privacy_unit == "subject"
    assert run.epsilon_charged == pytest.approx(audit["claimed_epsilon"], rel=1e-6)
    lifetime_verdict = next(v for v in evidence["checks"] if v["name"] == "lifetime_budget")
    assert lifetime_verdict["measured"] == pytest.approx(summary["max_subject_epsilon"])


def test_release_pseudonyms_align_with_the_training_rows_and_a_mismatch_is_refused(tmp_path: Path) -> None:
    import numpy as np

    from ppml.errors import PPMLError
    from ppml_assets.subjects import bounded_window, training_pseudonyms, write_release_subjects
    from resources import AssetStore

    policy = write_policy(tmp_path, privacy__privacy_unit="subject", privacy__max_records_per_subject=1)
    loaded = load_policy(policy)
    window = pd.DataFrame(
        {"record_id": ["a", "a", "b", "c", "d"], "event_date": ["d1", "d2", "d1", "d1", "d2"], "income": ["<=50K"] * 5}
    )
    bounded, report = bounded_window(loaded, window, "window")
    assert report["records_after"] == 4 and bounded["record_id"].is_unique
    store = AssetStore(base_dir=str(tmp_path / "assets"))
    kept = np.array([True, True, False, True])  # the engine suppressed the third record
    write_release_subjects(store, "2026-03-02", loaded, bounded, kept)
    release = bounded[kept].drop(columns=["record_id"]).reset_index(drop=True)
    release.loc[1, "income"] = "?"  # cleaning drops an unlabelled row
    store.write_private("anonymized_records", "2026-03-02", release)
    features = pd.DataFrame({"split": ["train", "test"]})
    expected = bounded["record_id"].to_numpy()[kept][[0, 2]][:1]
    assert training_pseudonyms(store, "2026-03-02", loaded, features).tolist() == expected.tolist()
    with pytest.raises(PPMLError, match=r"training_features\[2026-03-02\]: field 'rows'.*fix:"):
        training_pseudonyms(store, "2026-03-02", loaded, pd.DataFrame({"split": ["train"] * 3}))
    with pytest.raises(PPMLError, match=r"field 'kept_rows'"):
        write_release_subjects(store, "2026-03-02", loaded, bounded, kept[:2])
    assert bounded_window(load_policy(write_policy(tmp_path)), window, "window") == (window, None)  # record unit


def test_weekly_bench_refuses_too_few_days_for_its_weeks(capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as caught:
        _weekly_bench().main(["--weeks", "52", "--days", "400", "--window", "90"])
    assert caught.value.code == 2 and "--days 400 is too short" in capsys.readouterr().err
