"""Federated learning engines without processes: policy schema, the site split, per-site checks, accounting."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ppml.errors import PPMLError
from ppml.federated.accounting import book_sites, client_level_plan, example_level_plan, settle_sites, site_scope
from ppml.federated.runner import run_federation
from ppml.federated.site_prep import FEATURES_FILE, GROUPS_FILE, SitePreparation, prepare_site
from ppml.federated.sites import assign_sites, split_summary, write_federated_landing_zones
from ppml.landing_zone import landing_days, landing_file, synthesize_records
from ppml.ledger import BudgetExceededError, LifetimeBudget, PrivacyLedger
from ppml.policy import load_policy, parse_policy
from tests.federated_support import BUNDLED_DAYS, SITES, federated_document, federated_policy, node_key_pairs

KEY = b"federated test key, 32 bytes!!!"
TLS = {"ca_certificate": "ca.pem", "server_certificate": "server.pem", "server_key": "server.key"}
PAIR = {"private_key": "k", "public_key": "k.pub"}


def test_shipped_federated_policy_is_valid() -> None:
    fed = load_policy(Path(__file__).resolve().parent.parent / "policies" / "adult_federated.yaml").policy.training
    assert fed.mode == "federated" and fed.federation is not None
    assert [s.name for s in fed.federation.sites] == SITES


@pytest.mark.parametrize(
    ("change", "field", "fix"),
    [
        (
            lambda d: d["training"]["federation"]["sites"].append({"name": "north", "landing_zone": "x"}),
            "used twice",
            "give every site its own name",
        ),
        (
            lambda d: d["training"]["federation"]["sites"].append({"name": "west", "landing_zone": "federated/north"}),
            "same source",
            "give every site its own source",
        ),
        (
            lambda d: d["training"]["federation"]["sites"][0].update(sql_table="records"),
            "exactly one source",
            "either landing_zone or sql_table",
        ),
        (lambda d: d["training"]["federation"].update(min_sites=4), "min_sites 4", "lower it"),
        (lambda d: d["training"]["federation"].update(clients_per_round=9), "clients_per_round 9", "lower it"),
        (lambda d: d["training"]["federation"].update(dp_mode="local"), "dp_mode", "allowed values"),
        (lambda d: d["training"].pop("federation"), "no federation section", "add training.federation"),
        (lambda d: d["training"].update(mode="central"), "needs mode: federated", "training.mode: federated"),
        (
            lambda d: d["training"]["federation"].update(node_authentication={"sites": dict.fromkeys(SITES, PAIR)}),
            "node_authentication needs tls",
            "add training.federation.tls or remove node_authentication",
        ),
        (
            lambda d: d["training"]["federation"].update(
                tls=TLS, node_authentication={"sites": dict.fromkeys([*SITES, "west"], PAIR)}
            ),
            "names site 'west'",
            "remove it",
        ),
        (
            lambda d: d["training"]["federation"].update(
                tls=TLS, node_authentication={"sites": dict.fromkeys(SITES[:2], PAIR)}
            ),
            "site 'east' has no key pair",
            "add its private_key and public_key",
        ),
    ],
)
def test_bad_federation_settings_fail_in_one_line(change, field: str, fix: str) -> None:  # type: ignore[no-untyped-def]
    document = copy.deepcopy(federated_document())
    change(document)
    with pytest.raises(PPMLError) as error:
        parse_policy(document, "policies/bad_federated.yaml")
    message = str(error.value)
    assert "\n" not in message and message.startswith("policies/bad_federated.yaml: field 'training")
    assert field in message and fix in message


def _break_missing(pair: dict[str, str], tmp: Path) -> str:
    Path(pair["private_key"]).unlink()
    return "private_key"


def _break_mismatch(pair: dict[str, str], tmp: Path) -> str:
    pair["public_key"] = node_key_pairs(tmp / "other", ["east"])["east"]["public_key"]
    return "public_key"


def _break_readable(pair: dict[str, str], tmp: Path) -> str:
    Path(pair["private_key"]).chmod(0o644)
    return "private_key"


def _break_not_a_key(pair: dict[str, str], tmp: Path) -> str:
    Path(pair["private_key"]).write_text("not a key\n")
    return "private_key"


@pytest.mark.parametrize(
    ("damage", "fix"),
    [
        (_break_missing, "point it at the OpenSSH key file"),
        (_break_mismatch, "use the .pub file written with that private key"),
        (_break_readable, "chmod 600"),
        (_break_not_a_key, "ssh-keygen -t ecdsa -b 384"),
    ],
)
def test_a_bad_node_key_file_refuses_the_run_before_any_charge(damage, fix: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Missing, mismatched, world-readable or unparsable: refused in one line naming the field, no ledger run."""
    tls = {name: str(tmp_path / file) for name, file in TLS.items()}
    for path in tls.values():
        Path(path).write_text("PEM\n")  # tls_files only checks readability; no process starts here
    keys = node_key_pairs(tmp_path / "keys", SITES)
    field = damage(keys["east"], tmp_path)
    policy_path = federated_policy(tmp_path / "policy", tls=tls, node_authentication={"sites": keys})
    ledger = PrivacyLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        with pytest.raises(PPMLError) as refused:
            run_federation(load_policy(policy_path), {}, tmp_path / "federation", ledger, request_key="bad-key")
        message = str(refused.value)
        assert f"field 'training.federation.node_authentication.sites.east.{field}'" in message
        assert "\n" not in message and fix in message and "BEGIN" not in message
        assert ledger.runs() == []
    finally:
        ledger.close()


def test_site_split_is_reproducible_disjoint_and_non_iid() -> None:
    records = synthesize_records(only_days=[d.isoformat() for d in landing_days()[-6:]])
    sites = assign_sites(records, SITES)
    assert sites.equals(assign_sites(records.sample(frac=1, random_state=3), SITES).loc[records.index])
    assert records.groupby(sites)["record_id"].nunique().sum() == records["record_id"].nunique()  # one site each
    summary = split_summary(records, sites)
    sizes = sorted(summary.records.values())
    assert len(set(sizes)) == 3 and sizes[-1] > 1.3 * sizes[0]  # unequal sizes
    rates = summary.positive_rate.values()
    assert max(rates) - min(rates) > 0.05  # non-IID labels
    with pytest.raises(PPMLError, match="use 2 to 5 sites"):
        assign_sites(records, ["only"])


@pytest.fixture(scope="module")
def prepared_sites(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, Path]]:
    """Three bundled sites (the window's last days), each prepared by the central engines on its own records."""
    home = tmp_path_factory.mktemp("federated-sites")
    policy_path = federated_policy(home / "policy")
    loaded = load_policy(policy_path)
    days = [d.isoformat() for d in landing_days()[-BUNDLED_DAYS:]]
    write_federated_landing_zones(home / "federated", SITES, only_days=days)
    dirs = {}
    for site in loaded.policy.training.federation.sites:
        dirs[site.name] = home / "sites" / site.name
        prepare_site(loaded, site, days, KEY, home, dirs[site.name])
    return home, policy_path, dirs


def test_every_site_is_prepared_by_its_own_checks(prepared_sites: tuple[Path, Path, dict[str, Path]]) -> None:
    _, _, dirs = prepared_sites
    for site, folder in dirs.items():
        prep = SitePreparation.read(folder)
        assert prep.passed, prep.failures
        assert set(prep.checks) == {
            "raw_records_expectations",
            "no_raw_direct_identifiers",
            "anonymized_records_expectations",
            "privacy_models_hold",
            "cleaned_records_expectations",
        }
        assert prep.min_class_size >= 5 and prep.rows["train"] > 200
        assert (folder / FEATURES_FILE).stat().st_mode & 0o077 == 0
        features = pd.read_parquet(folder / FEATURES_FILE)
        assert not {"record_id", "name", "ssn", "email"} & set(features.columns), site
        groups = pd.read_parquet(folder / GROUPS_FILE)  # the site's own per-group evaluation reads it
        assert (folder / GROUPS_FILE).stat().st_mode & 0o077 == 0 and len(groups) == len(features)
        assert list(groups["split"]) == list(features["split"]) and {"sex", "race"} <= set(groups.columns)


def test_a_site_whose_checks_fail_is_refused(tmp_path: Path, prepared_sites: tuple[Path, Path, dict]) -> None:
    home, policy_path, dirs = prepared_sites
    loaded = load_policy(policy_path)
    site = loaded.policy.training.federation.sites[2]
    day = landing_days()[-1].isoformat()
    bad_home = tmp_path / "bad"
    frame = pd.read_csv(landing_file(home / "federated" / site.name, day), dtype=str, keep_default_na=False)
    frame.loc[0, "age"] = "430"  # outside value_ranges: the raw records' GX suite fails
    target = landing_file(bad_home / "federated" / site.name, day)
    target.parent.mkdir(parents=True)
    frame.to_csv(target, index=False)
    prep = prepare_site(loaded, site, [day], KEY, bad_home, tmp_path / "east")
    assert not prep.passed and prep.checks == {"raw_records_expectations": False}
    assert not (tmp_path / "east" / FEATURES_FILE).exists()
    ledger = PrivacyLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    with pytest.raises(PPMLError) as error:
        run_federation(loaded, {**dirs, "east": tmp_path / "east"}, tmp_path / "work", ledger, request_key="r")
    assert "\n" not in str(error.value) and str(error.value).startswith("site east: field 'checks'")
    assert ledger.runs() == []  # refused before anything was charged


def test_sites_are_pre_charged_and_settled_per_scope(tmp_path: Path) -> None:
    fed = parse_policy(federated_document(rounds=4), "p").training.federation
    plans = [example_level_plan(s, n, fed, 1.0, 1e-5, "prv") for s, n in [("north", 1400), ("south", 900)]]
    assert all(0.9 < p.epsilon <= 1.0 for p in plans) and plans[0].noise_multiplier < plans[1].noise_multiplier
    ledger = PrivacyLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    lifetime = LifetimeBudget(1.2, 1e-5)  # one run fits; a second composes (RDP) to ~1.4 and is refused
    bookings = book_sites(ledger, "people", plans, lifetime, request_key="run-1", config={})
    charged = {r.id: r for r in ledger.runs()}
    assert all(charged[b.run_id].epsilon_charged == pytest.approx(b.plan.epsilon) for b in bookings)  # before
    settle_sites(ledger, bookings, {"north": 4, "south": 2}, failed=None)
    runs = {b.site: ledger.run(b.run_id) for b in bookings}
    assert runs["north"].status == "completed" and runs["south"].status == "failed"
    assert runs["south"].epsilon_charged == pytest.approx(plans[1].epsilon)  # a lost site keeps its pre-charge
    for plan in plans:  # parallel composition: each site's scope holds its own charge only
        assert ledger.spent(site_scope("people", plan.site), 1e-5).epsilon == pytest.approx(plan.epsilon, rel=0.02)
    with pytest.raises(BudgetExceededError):
        book_sites(ledger, "people", plans, lifetime, request_key="run-2", config={})
    assert {r.status for r in ledger.runs() if r.request_id not in {b.request_id for b in bookings}} <= {"refused"}
    client = client_level_plan("north", fed, 1.0, 1e-5, "prv")
    assert client.sample_rate == 1.0 and client.steps == 4 and 0.9 < client.epsilon <= 1.0


def test_federated_code_location_loads() -> None:
    """``dagster dev -m ppml_assets.federated`` (docs/federated.md): the definitions load and validate."""
    from dagster import Definitions

    from ppml_assets.federated import defs

    Definitions.validate_loadable(defs)
    assert {key.to_user_string() for key in defs.resolve_asset_graph().get_all_asset_keys()} == {
        "federated_sites",
        "federated_model",
    }


def test_federated_bench_smoke(prepared_sites: tuple[Path, Path, dict[str, Path]]) -> None:
    """bench/federated_bench.py on a toy size: its central DP-SGD baseline and its table (the federated modes run
    the same run_federation the deployment tests run)."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("federated_bench", Path("bench/federated_bench.py").resolve())
    bench = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    spec.loader.exec_module(bench)  # type: ignore[union-attr]
    _, _, dirs = prepared_sites
    names = bench.global_feature_names([SitePreparation.read(folder) for folder in dirs.values()])
    row = bench.central(dirs, names, epochs=1, epsilon=1.0, delta=1e-5)
    assert 0.5 < row["accuracy"] <= 1 and row["epsilon"] <= 1.0
    args = argparse.Namespace(
        days=8, rounds=1, local_epochs=1, learning_rate=0.5, modes="central", secure_aggregation=False
    )
    table = bench.render(args, {"records": {}}, {"central": row})
    assert "| central |" in table and "load average" in table


@pytest.mark.postgres
def test_a_site_reads_its_own_sql_table(
    prepared_sites: tuple[Path, Path, dict[str, Path]],
    postgres_database: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A site may hold its records in its own SQL table (URL from the environment): same records, same result."""
    from ppml.collection import load_records_into_table
    from ppml.federated.settings import SiteSource

    home, policy_path, dirs = prepared_sites
    loaded = load_policy(policy_path)
    days = [d.isoformat() for d in landing_days()[-BUNDLED_DAYS:]]
    frames = [
        pd.read_csv(landing_file(home / "federated" / "east", day), dtype=str, keep_default_na=False)
        for day in days
        if landing_file(home / "federated" / "east", day).is_file()
    ]
    load_records_into_table(postgres_database, "east_records", pd.concat(frames), replace=True)
    monkeypatch.setenv("PPML_TEST_EAST_URL", postgres_database)
    site = SiteSource(name="east", sql_table="east_records", sql_url_env="PPML_TEST_EAST_URL")
    prep = prepare_site(loaded, site, days, KEY, tmp_path, tmp_path / "east")
    assert prep.passed, prep.failures
    assert prep.rows == SitePreparation.read(dirs["east"]).rows
    monkeypatch.delenv("PPML_TEST_EAST_URL")
    with pytest.raises(PPMLError, match="PPML_TEST_EAST_URL is not set; fix: export the site's database URL"):
        prepare_site(loaded, site, days, KEY, tmp_path, tmp_path / "east")


def test_gate_and_report_have_a_section_per_site(
    prepared_sites: tuple[Path, Path, dict[str, Path]], tmp_path: Path
) -> None:
    """Every site must meet the objectives (a site that did not evaluate fails); the report has one section per
    site and one for the federation, owner-only, without the sites' feature labels."""
    from ppml.federated.gate import federated_requirements
    from ppml.federated.report import federated_evidence, write_federated_report
    from ppml.federated.runner import FederatedOutcome

    _, policy_path, dirs = prepared_sites
    loaded = load_policy(policy_path)
    fed = loaded.policy.training.federation
    preps = {name: SitePreparation.read(folder) for name, folder in dirs.items()}
    plans = {name: example_level_plan(name, p.rows["train"], fed, 1.0, 1e-5, "prv") for name, p in preps.items()}
    good = {
        "test_accuracy": 0.85,
        "test_roc_auc": 0.9,
        "mia_auc": 0.51,
        "test_records": 200.0,
        "group_error_rate_gap": 0.0,
    }
    history = {"rounds": [{"round": 1, "results": 2, "failures": 1}], "site_metrics": {"north": good, "south": good}}
    outcome = FederatedOutcome([], [], plans, {"north": 5, "south": 5, "east": 0}, history, {"north": "r1"})
    passed_audit = {"epsilon_lower_bound": 0.1, "claimed_epsilon": 1.0, "alarm": False, "message": "ok"}
    outcome.audits = {"north": passed_audit, "south": passed_audit}  # east's audit did not run
    passed_lira = {"auc": 0.52, "tpr_at_low_fpr": 0.01, "low_fpr": 0.01, "n_reference_models": 2, "ledger_runs": []}
    outcome.lira = {"north": passed_lira, "south": passed_lira}  # nor its LiRA
    verdicts = federated_requirements(loaded.policy, outcome)
    assert all(v.passed for v in verdicts if v.scope != "east")
    assert [v.requirement for v in verdicts if v.scope == "east" and not v.passed] == [
        "min_accuracy",
        "min_roc_auc",
        "max_membership_inference_auc",
        "max_group_error_rate_gap",
        "whitebox_epsilon_within_claim",
        "max_membership_inference_tpr_at_low_fpr",
    ]
    evidence = federated_evidence(loaded, preps, outcome, verdicts, {"registered_model": "m", "version": 1})
    assert evidence["federation"]["passed"] is False and [s["name"] for s in evidence["sites"]] == SITES
    json_path, html_path = write_federated_report(evidence, tmp_path / "report")
    html = html_path.read_text()
    assert all(f"Site {name}" in html for name in SITES) and "not promoted" in html
    assert json_path.stat().st_mode & 0o077 == 0 and "feature_names" not in json_path.read_text()


def test_each_site_measures_the_group_error_rate_gap_and_the_gate_can_refuse(
    prepared_sites: tuple[Path, Path, dict[str, Path]], tmp_path: Path
) -> None:
    """The central gate's FPR/FNR rule inside a site: a model that predicts ">50K" for every man and for no woman
    has the largest possible gap; only the gaps leave the site; a gap over the limit refuses promotion."""
    from ppml.federated.gate import federated_requirements
    from ppml.federated.local_training import evaluate_site, load_site_groups, load_site_splits, new_model
    from ppml.federated.runner import FederatedOutcome
    from ppml.federated.tracking import log_federated_run

    _, policy_path, dirs = prepared_sites
    loaded = load_policy(policy_path)
    names = sorted({n for folder in dirs.values() for n in SitePreparation.read(folder).feature_names})
    splits = load_site_splits(dirs["south"], names)
    model = new_model([], len(names), seed=0)  # logistic: the "sex=Male" column alone decides
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].weight[1, names.index("sex=Male")] = 10.0
        model[0].bias.copy_(torch.tensor([1.0, 0.0]))
    fair = evaluate_site(model, splits, seed=0, groups=load_site_groups(dirs["south"], "test"))
    assert fair["group_error_rate_gap"] == 0.0  # 25 women in the test split: too few to compare (suppressed)
    assert set(fair) >= {"group_error_rate_gap", "group_error_rate_gap_point", "test_accuracy"}
    on_train = {**splits, "test": splits["train"]}  # enough people of each sex in the training split
    biased = evaluate_site(model, on_train, seed=0, groups=load_site_groups(dirs["south"], "train"))
    assert biased["group_error_rate_gap"] > 0.8 and biased["group_error_rate_gap_point"] == pytest.approx(1.0)
    assert all(isinstance(v, float) for v in biased.values())  # aggregates only
    fed = loaded.policy.training.federation
    plans = {s: example_level_plan(s, 600, fed, 1.0, 1e-5, "prv") for s in SITES}
    good = {"test_accuracy": 0.85, "test_roc_auc": 0.9, "mia_auc": 0.5, "group_error_rate_gap": 0.0}
    metrics = {"north": good, "east": good, "south": {**good, "group_error_rate_gap": biased["group_error_rate_gap"]}}
    audit = {"epsilon_lower_bound": 0.1, "claimed_epsilon": 1.0, "alarm": False, "message": "ok"}
    outcome = FederatedOutcome(
        [np.zeros(2)],
        names,
        plans,
        dict.fromkeys(SITES, 1),
        {"site_metrics": metrics},
        audits=dict.fromkeys(SITES, audit),
        lira={key: {"auc": 0.5, "tpr_at_low_fpr": 0.0} for key in SITES},
    )
    verdicts = federated_requirements(loaded.policy, outcome)
    failed = [(v.scope, v.requirement) for v in verdicts if not v.passed]
    assert failed == [("south", "max_group_error_rate_gap")]
    assert [v.scope for v in verdicts if v.requirement == "max_group_error_rate_gap"] == SITES
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("fed", artifact_location=(tmp_path / "artifacts").as_uri())
    registry = log_federated_run(client, experiment, loaded, outcome, verdicts)
    assert registry["promoted"] is False
    logged = client.get_run(registry["mlflow_run_id"]).data.metrics
    assert logged["south.group_error_rate_gap"] == pytest.approx(biased["group_error_rate_gap"])


def test_each_site_audits_its_mechanism_charged_to_its_scope(
    prepared_sites: tuple[Path, Path, dict[str, Path]], tmp_path: Path
) -> None:
    """Example-level DP: each site's white-box audit runs on its own records with its own sample rate and epochs,
    is charged to its own ledger scope (pre-charged, completed), and the gate holds its verdict: a site whose
    audit run adds no noise (a planted bug) raises the alarm and fails the gate; a refused audit fails it too."""
    from ppml.evaluation.planted_bugs import PlantedBug, planted_bug
    from ppml.federated.audit import AUDIT_PURPOSE, audit_sites
    from ppml.federated.gate import federated_requirements
    from ppml.federated.report import federated_evidence, write_federated_report
    from ppml.federated.runner import FederatedOutcome, plan_sites

    _, _, dirs = prepared_sites  # the same sites, with two rounds of one local epoch: fewer audit steps
    loaded = load_policy(federated_policy(tmp_path / "policy", rounds=2, local_epochs=1))
    preps = {name: SitePreparation.read(folder) for name, folder in dirs.items()}
    plans = plan_sites(loaded, list(preps.values()))
    names = sorted({n for prep in preps.values() for n in prep.feature_names})
    outcome = FederatedOutcome([], names, plans, dict.fromkeys(SITES, 5), {"site_metrics": {}})
    ledger = PrivacyLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    faults = {"east": planted_bug(PlantedBug.NOISE_X0)}
    outcome.audits = audit_sites(loaded, dirs, outcome, ledger, request_key="run-1", faults=faults)
    assert list(outcome.audits) == SITES
    for site, audit in outcome.audits.items():
        run = ledger.run(audit["ledger_run"])
        assert run.status == "completed" and run.partitions == (f"site:{site}",) and run.epsilon_charged > 0.9
        assert AUDIT_PURPOSE in json.dumps(run.config)
        spent = ledger.spent(site_scope(loaded.policy.dataset.id, site), plans[site].delta).epsilon
        if site not in faults:  # (the planted bug's run is charged the epsilon of no noise: infinite)
            assert spent == pytest.approx(run.epsilon_charged, rel=0.02)  # the audit is the scope's only charge
        # the site's own mechanism: its planned noise, sample rate and number of steps
        assert audit["details"]["sample_rate"] == pytest.approx(plans[site].sample_rate)
        assert audit["details"]["noise_multiplier"] == pytest.approx(plans[site].noise_multiplier)
        assert audit["steps"] == plans[site].steps
    assert outcome.audits["east"]["alarm"] and outcome.audits["east"]["mechanism_checks"]["noise"]["p_value"] < 1e-3
    verdicts = {(v.scope, v.requirement): v for v in federated_requirements(loaded.policy, outcome)}
    for site in SITES:
        verdict = verdicts[(site, "whitebox_epsilon_within_claim")]
        assert verdict.passed is (not outcome.audits[site]["alarm"])
        assert verdict.measured == outcome.audits[site]["epsilon_lower_bound"]
    assert not verdicts[("east", "whitebox_epsilon_within_claim")].passed
    evidence = federated_evidence(loaded, preps, outcome, list(verdicts.values()), {"version": 1})
    html = write_federated_report(evidence, tmp_path / "report")[1].read_text()
    assert "White-box audit" in html and outcome.audits["north"]["ledger_run"] in html
    assert "projections" not in json.dumps(evidence)  # aggregates only: no per-canary scores
    privacy = loaded.policy.privacy.model_copy(update={"lifetime_epsilon_budget": 1.0})  # a scope holds ~1
    refused = loaded.model_copy(update={"policy": loaded.policy.model_copy(update={"privacy": privacy})})
    again = audit_sites(refused, dirs, outcome, ledger, request_key="run-2")
    assert "budget" in again["north"]["error"].lower() and again["north"]["ledger_run"] is None


def _pooled_site(dirs: dict[str, Path], target: Path) -> Path:
    """One site directory holding the three small sites' records: a validation split large enough for LiRA's
    reference models (each site of the 8-day test window alone has fewer than 2 x 200 validation records)."""
    frames = [pd.read_parquet(folder / FEATURES_FILE) for folder in dirs.values()]
    target.mkdir(parents=True)
    pd.concat(frames, ignore_index=True).fillna(0.0).to_parquet(target / FEATURES_FILE)
    return target


def test_each_site_runs_lira_with_reference_models_charged_to_its_scope(
    prepared_sites: tuple[Path, Path, dict[str, Path]], tmp_path: Path
) -> None:
    """Example-level DP: every site runs offline LiRA against the federated model, its DP reference models
    charged to its own scope (completed at the plan); a site whose validation split cannot hold the reference
    models reports why and fails the gate's TPR requirement; client-level DP says why it runs none."""
    from ppml.federated.gate import federated_requirements
    from ppml.federated.local_training import get_weights, new_model
    from ppml.federated.runner import FederatedOutcome, plan_sites
    from ppml.federated.site_lira import CLIENT_LEVEL_NOTE, LIRA_PURPOSE, lira_sites

    _, _, dirs = prepared_sites
    loaded = load_policy(federated_policy(tmp_path / "policy", rounds=2, local_epochs=1))
    pooled = _pooled_site(dirs, tmp_path / "pooled")
    site_dirs = {"north": pooled, "south": dirs["south"], "east": pooled}
    preps = {name: SitePreparation.read(folder) for name, folder in dirs.items()}
    plans = plan_sites(loaded, list(preps.values()))
    names = sorted({n for prep in preps.values() for n in prep.feature_names})
    hidden = list(loaded.policy.training.hidden_sizes) if loaded.policy.training.model == "mlp" else []
    weights = get_weights(new_model(hidden, len(names), seed=0))
    outcome = FederatedOutcome(weights, names, plans, dict.fromkeys(SITES, 2), {"site_metrics": {}})
    ledger = PrivacyLedger(f"sqlite:///{tmp_path / 'ledger.db'}")
    outcome.lira = lira_sites(loaded, site_dirs, outcome, ledger, request_key="run-1")
    assert list(outcome.lira) == SITES
    for site in ("north", "east"):
        lira = outcome.lira[site]
        assert 0 <= lira["auc"] <= 1 and 0 <= lira["tpr_at_low_fpr"] <= 1 and lira["n_reference_models"] == 2
        (run_id,) = lira["ledger_runs"]
        run = ledger.run(run_id)
        assert run.status == "completed" and run.partitions == (f"site:{site}",) and run.epsilon_charged > 0.9
        assert "LiRA reference models" in json.dumps(run.config)
        spent = ledger.spent(site_scope(loaded.policy.dataset.id, site), plans[site].delta).epsilon
        assert spent == pytest.approx(run.epsilon_charged, rel=0.02)
    assert "reference_models" in outcome.lira["south"]["error"] and not outcome.lira["south"]["ledger_runs"]
    assert LIRA_PURPOSE  # the request key's prefix, so a ledger reader sees what the charge was for
    metrics = {"test_accuracy": 0.85, "test_roc_auc": 0.9, "mia_auc": 0.5, "group_error_rate_gap": 0.0}
    outcome.history["site_metrics"] = dict.fromkeys(SITES, metrics)
    verdicts = {(v.scope, v.requirement): v for v in federated_requirements(loaded.policy, outcome)}
    tpr = "max_membership_inference_tpr_at_low_fpr"
    assert not verdicts[("south", tpr)].passed and verdicts[("south", tpr)].measured is None
    for site in ("north", "east"):
        assert verdicts[(site, tpr)].measured == outcome.lira[site]["tpr_at_low_fpr"]
        assert verdicts[(site, "max_membership_inference_auc")].measured == max(0.5, outcome.lira[site]["auc"])
    from ppml.federated.report import federated_evidence, write_federated_report

    evidence = federated_evidence(loaded, preps, outcome, list(verdicts.values()), {"version": 1})
    html = write_federated_report(evidence, tmp_path / "report")[1].read_text()
    assert html.count("Offline LiRA (2 DP reference models") == 2 and html.count("Offline LiRA: <b") == 1
    # over the lifetime budget: refused before any reference model trains, and reported
    privacy = loaded.policy.privacy.model_copy(update={"lifetime_epsilon_budget": 1.0})
    refused = loaded.model_copy(update={"policy": loaded.policy.model_copy(update={"privacy": privacy})})
    again = lira_sites(refused, site_dirs, outcome, ledger, request_key="run-2")
    assert "budget" in again["north"]["error"].lower() and again["north"]["ledger_runs"] == []
    client = load_policy(federated_policy(tmp_path / "client", dp_mode="client"))
    assert lira_sites(client, site_dirs, outcome, ledger, request_key="run-3") == {
        key: {"note": CLIENT_LEVEL_NOTE} for key in SITES
    }
