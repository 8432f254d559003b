"""The client-level DP audit (ppml.federated.client_audit): canary clients through the server's real DP strategy.

No process is started: the audit drives ``build_strategy``'s strategy in-process, as the ServerApp's workflow
calls it. The bundled federation's shape: 5 rounds, min_sites 2, clip bound 1, epsilon 1 at delta 1e-5 (sigma
8.44 at rate 1), the ServerApp's MLP (32 hidden units) over 40 features, 2,000 canaries (about 5 s a run).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping, DifferentialPrivacyServerSideFixedClipping

from ppml.federated.accounting import SitePlan, client_level_plan
from ppml.federated.audit import audit_client_dp, client_audited
from ppml.federated.client_audit import ClientAuditSettings, audit_client_level
from ppml.federated.gate import FEDERATION_SCOPE, federated_requirements
from ppml.federated.planted_strategies import PlantedStrategyBug, planted_strategy
from ppml.federated.report import federated_evidence, write_federated_report
from ppml.federated.run_config import RunConfig
from ppml.federated.runner import FederatedOutcome
from ppml.federated.server_app import RecordingStrategy, build_strategy
from ppml.federated.site_prep import SitePreparation
from ppml.policy import load_policy, parse_policy
from tests.federated_support import SITES, federated_document, federated_policy

FEATURES = [f"f{i}" for i in range(40)]
SHAPES = [(32, 40), (32,), (2, 32), (2,)]  # the ServerApp's MLP: new_model([32], 40) as get_weights returns it
SETTINGS = ClientAuditSettings(n_canaries=2000, seed=0)


def _plan() -> SitePlan:
    fed = parse_policy(federated_document(rounds=5, dp_mode="client"), "p").training.federation
    return client_level_plan("north", fed, 1.0, 1e-5, "prv")


def _config(secure_aggregation: bool, plan: SitePlan) -> RunConfig:
    return RunConfig(
        *("client", secure_aggregation, plan.rounds, 3, 3, 2, 1, 0.5, 256, 1.0, 1.0, 300.0, [32], FEATURES),
        site_plans={site: {**plan.to_dict(), "site": site} for site in SITES},
        seed=7,
        result_dir="",
    )


def test_the_audit_drives_the_strategy_build_strategy_builds() -> None:
    """The wrapper class and its parameters are the run's (sigma, C, m = min_sites); every round aggregates
    exactly m results, over the plan's T rounds, through ppml's RecordingStrategy."""
    plan, built = _plan(), []

    def recording(config: RunConfig, initial: list[np.ndarray]) -> RecordingStrategy:
        strategy = build_strategy(config, initial)
        built.append(strategy)
        return strategy  # type: ignore[return-value]

    for secure, wrapper in (
        (False, DifferentialPrivacyServerSideFixedClipping),
        (True, DifferentialPrivacyClientSideFixedClipping),
    ):
        built.clear()
        settings = ClientAuditSettings(n_canaries=20, seed=1)
        result = audit_client_level(_config(secure, plan), plan, SHAPES, settings, strategy_factory=recording)
        assert len(built) == 10 and result.n_canaries == 20 and result.rounds == plan.rounds == 5
        dp = built[0].inner
        assert type(dp) is wrapper
        assert (dp.noise_multiplier, dp.clipping_norm, dp.num_sampled_clients) == (plan.noise_multiplier, 1.0, 2)
        assert [r["results"] for r in built[0].rounds] == [2] * 5
        assert result.details["secure_aggregation"] is secure and result.details["dimension"] == 1378


@pytest.mark.parametrize("secure_aggregation", [False, True])
def test_an_honest_federation_is_not_refused(secure_aggregation: bool) -> None:
    plan = _plan()
    result = audit_client_level(_config(secure_aggregation, plan), plan, SHAPES, SETTINGS)
    assert not result.alarm and not result.bound_alarm and result.noise_p_value > 0.01
    assert result.lower_bound <= result.claimed_epsilon == pytest.approx(plan.epsilon)
    assert result.max_achievable_bound > 4.0  # 2,000 canaries could certify up to ~4.7 for this family


@pytest.mark.parametrize("secure_aggregation", [False, True])
def test_a_third_of_the_noise_is_refused_by_the_bound(secure_aggregation: bool) -> None:
    plan = _plan()
    factory = planted_strategy(PlantedStrategyBug.NOISE_X1_3)
    result = audit_client_level(_config(secure_aggregation, plan), plan, SHAPES, SETTINGS, strategy_factory=factory)
    assert result.bound_alarm and result.lower_bound > plan.epsilon and result.alarm
    assert result.noise_p_value < 1e-6 and "ALARM" in result.message


@pytest.mark.parametrize("secure_aggregation", [False, True])
def test_clipping_off_is_refused_by_the_bound_alone(secure_aggregation: bool) -> None:
    """Server-side: the wrapper forgets to clip; SecAgg+ variant: it sends the sites an infinite clip bound. The
    noise is the claimed one (the noise check passes); the canaries' 4 C updates refute the curve."""
    plan = _plan()
    factory = planted_strategy(PlantedStrategyBug.CLIPPING_OFF)
    result = audit_client_level(_config(secure_aggregation, plan), plan, SHAPES, SETTINGS, strategy_factory=factory)
    assert result.bound_alarm and result.lower_bound > plan.epsilon
    assert result.noise_p_value > 0.01


def test_half_the_noise_is_caught_by_the_noise_check() -> None:
    """At epsilon 1 the bound has too little power for half the noise (it reaches ~0.85 < 1); the noise check
    (the release's energy orthogonal to the canaries) refuses it."""
    plan = _plan()
    factory = planted_strategy(PlantedStrategyBug.NOISE_X1_2)
    result = audit_client_level(_config(True, plan), plan, SHAPES, SETTINGS, strategy_factory=factory)
    assert not result.bound_alarm and result.noise_p_value < 1e-6 and result.alarm


def test_the_gate_blocks_a_refuted_client_level_claim_and_the_report_shows_it(tmp_path: Path) -> None:
    """Wiring: a client-level policy with gradient canaries gets a federation-scoped requirement from the audit of
    its own run configuration; a planted bug fails it, an audit that did not run fails it, the report shows it."""
    path = federated_policy(tmp_path / "policy", rounds=5, dp_mode="client", min_sites=2)
    document = yaml.safe_load(path.read_text())
    document["evaluation"]["gradient_canaries"] = 1000  # the audit's canary count (two audits: keep it cheap)
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    loaded = load_policy(path)
    assert client_audited(loaded) and loaded.policy.evaluation.gradient_canaries == 1000
    fed = loaded.policy.training.federation
    plans = {s: client_level_plan(s, fed, 1.0, 1e-5, "prv") for s in SITES}
    good = {"test_accuracy": 0.85, "test_roc_auc": 0.9, "mia_auc": 0.5, "group_error_rate_gap": 0.0}
    outcome = FederatedOutcome(
        [], FEATURES, plans, dict.fromkeys(SITES, 5), {"site_metrics": dict.fromkeys(SITES, good)}
    )

    def federation_verdicts() -> list:
        return [v for v in federated_requirements(loaded.policy, outcome) if v.scope == FEDERATION_SCOPE]

    [missing] = federation_verdicts()
    assert missing.requirement == "client_level_epsilon_within_claim" and not missing.passed
    outcome.client_audit = audit_client_dp(loaded, outcome)
    assert outcome.client_audit is not None and not outcome.client_audit["alarm"]
    assert outcome.client_audit["details"]["dimension"] == 1378  # the ServerApp's initial model: MLP [32], 40 in
    verdicts = federated_requirements(loaded.policy, outcome)
    assert all(v.passed for v in verdicts)
    outcome.client_audit = audit_client_dp(loaded, outcome, strategy_factory=planted_strategy("clipping_off"))
    verdicts = federated_requirements(loaded.policy, outcome)
    [refused] = [v for v in verdicts if not v.passed]
    assert refused.scope == FEDERATION_SCOPE and refused.measured > refused.limit == pytest.approx(
        plans["north"].epsilon
    )
    preps = {s: SitePreparation(s, True, {"k_anonymity": True}, rows={"train": 600}) for s in SITES}
    evidence = federated_evidence(loaded, preps, outcome, verdicts, {"registered_model": "m", "version": 1})
    assert evidence["federation"]["passed"] is False
    assert evidence["federation"]["client_audit"]["alarm"] is True
    assert evidence["federation"]["requirements"] == [refused.to_dict()]
    html = write_federated_report(evidence, tmp_path / "report")[1].read_text()
    assert "Client-level audit" in html and "ALARM: client-level epsilon lower bound" in html
    assert "not promoted" in html and "client_level_epsilon_within_claim" in html
    from mlflow import MlflowClient

    from ppml.federated.tracking import log_federated_run

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.create_experiment("fed", artifact_location=(tmp_path / "artifacts").as_uri())
    outcome.weights = [np.zeros(2)]
    registry = log_federated_run(client, experiment, loaded, outcome, verdicts)
    logged = client.get_run(registry["mlflow_run_id"]).data.metrics
    assert registry["promoted"] is False and logged["federation.client_audit_alarm"] == 1.0
    assert logged["federation.client_audit_epsilon_lower_bound"] == pytest.approx(refused.measured)
