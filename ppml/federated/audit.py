"""The empirical privacy audits of a federated run: per site for example-level DP, per federation for client-level.

With example-level DP the mechanism a person's record goes through is *its site's* DP-SGD: the site's noise
multiplier, Poisson sample rate and steps (ppml.federated.accounting). So each site runs the central lifecycle's
one-run white-box audit (:func:`ppml.evaluation.audit_whitebox.run_whitebox_audit`: gradient canaries in the
DP-SGD steps, the f-DP bound against the claimed curve, the noise and sampling checks) on its *own* training
records, with its own sample rate and the same epochs, so the audit run's noise is calibrated like the site's.
Only the audit's aggregates leave the site.

Each audit trains on the site's records: a DP release charged to the site's ledger scope ``site:<name>``
through the reservation path (:class:`ppml.evaluation.charged_audit.ChargedAuditTraining`, as the central
``privacy_audit``): refused over the lifetime budget, pre-charged before its first step, settled after.

What it audits, honestly: the claim "sigma, q and T steps at clip bound C give the site's epsilon", run by ppml's
DP-SGD trainer (``train_dp``, Opacus' optimizer with ppml's step hook) -- not the ClientApp's own loop
(``local_training.dp_sgd_round``), which uses the same Opacus DPOptimizer but no audit hook. A site whose whole
training split fits one batch (planned rate 1) is audited at rate 1/2 (the audit needs a rate below 1).

Client-level DP (DP-FedAvg: the server's noise on the clipped site updates) is audited once for the federation by
:func:`audit_client_dp` (ppml.federated.client_audit): ``evaluation.gradient_canaries`` canary *clients* through
the strategy ``build_strategy`` builds from the run's own configuration (sigma, C, m = min_sites, the SecAgg+
variant's client-side clipping), scored against the plan's claim (rate 1, T = rounds). Its canaries are synthetic,
so it reads no site's records and charges no ledger.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ppml.errors import PPMLError
from ppml.evaluation.audit_whitebox import WhiteBoxSettings, run_whitebox_audit
from ppml.evaluation.charged_audit import ChargedAuditTraining
from ppml.federated.accounting import SitePlan, site_scope
from ppml.federated.client_audit import ClientAuditSettings, StrategyFactory, audit_client_level
from ppml.federated.local_training import get_weights, load_site_splits, new_model
from ppml.federated.runner import FederatedOutcome, run_config
from ppml.ledger import LifetimeBudget, PrivacyLedger
from ppml.policy import LoadedPolicy
from ppml.training.config import DPConfig, ModelSpec, TrainingConfig
from ppml.training.data import TabularSplit
from ppml.training.dp_steps import StepHook

AUDIT_PURPOSE = "federated white-box audit"


def audited(loaded: LoadedPolicy) -> bool:
    """Example-level DP with gradient canaries: the policy asks for the per-site audit."""
    fed = loaded.policy.training.federation
    return fed is not None and fed.dp_mode == "example" and loaded.policy.evaluation.gradient_canaries > 0


def client_audited(loaded: LoadedPolicy) -> bool:
    """Client-level DP with gradient canaries: the policy asks for the federation's client-level audit."""
    fed = loaded.policy.training.federation
    return fed is not None and fed.dp_mode == "client" and loaded.policy.evaluation.gradient_canaries > 0


def site_audit_setup(loaded: LoadedPolicy, plan: SitePlan) -> tuple[TrainingConfig, DPConfig, WhiteBoxSettings]:
    """The audit run of one site: its model, optimizer and clip bound, its epsilon and delta, its sample rate and
    epochs (so the calibrated noise is the site's planned one)."""
    training = loaded.policy.training
    fed = training.federation
    assert fed is not None
    spec = ModelSpec(kind="mlp", hidden_sizes=tuple(training.hidden_sizes)) if training.model == "mlp" else None
    config = TrainingConfig(
        model=spec or ModelSpec(kind="logistic"),
        epochs=fed.rounds * fed.local_epochs,
        batch_size=fed.batch_size,
        learning_rate=fed.learning_rate,
        optimizer="sgd",
        seed=training.seed,
        device="cpu",
    )
    dp = DPConfig(
        target_epsilon=loaded.policy.privacy.epsilon,
        target_delta=plan.delta,
        max_grad_norm=training.max_grad_norm,
        accountant=training.accountant,  # type: ignore[arg-type]
    )
    settings = WhiteBoxSettings(
        n_canaries=loaded.policy.evaluation.gradient_canaries,
        batches_per_epoch=max(2, round(1 / plan.sample_rate)),  # the site's rate 1 / batches
        epochs=fed.rounds * fed.local_epochs,
        seed=training.seed,
    )
    return config, dp, settings


def audit_site(
    loaded: LoadedPolicy,
    site: str,
    site_dir: Path,
    plan: SitePlan,
    feature_names: list[str],
    ledger: PrivacyLedger,
    *,
    request_key: str,
    dagster_run_id: str | None = None,
    fault: StepHook | None = None,
) -> dict[str, Any]:
    """One site's audit on its own training split, charged to its scope; a refusal (budget) is reported, not
    raised, so the gate fails that site instead of losing the trained model. ``fault``: tests of the audit only."""
    train = load_site_splits(site_dir, feature_names)["train"]
    split = TabularSplit(train.X, train.y, tuple(feature_names))
    config, dp, settings = site_audit_setup(loaded, plan)
    lifetime = LifetimeBudget(loaded.policy.privacy.lifetime_epsilon_budget, plan.delta)
    charged = ChargedAuditTraining(
        ledger,
        site_scope(loaded.policy.dataset.id, site),
        lifetime,
        dagster_run_id,
        purpose=f"{AUDIT_PURPOSE} {request_key}",
    )
    site_mechanism = {"noise_multiplier": plan.noise_multiplier, "sample_rate": plan.sample_rate, "steps": plan.steps}
    try:
        result = run_whitebox_audit(split, config, dp, settings=settings, train_fn=charged, fault=fault)
    except PPMLError as error:
        return {
            "error": str(error).splitlines()[0],
            "ledger_run": charged.run_ids[-1] if charged.run_ids else None,
            "site_mechanism": site_mechanism,
        }
    return {**result.to_dict(), "ledger_run": charged.run_ids[-1], "site_mechanism": site_mechanism}


def audit_sites(
    loaded: LoadedPolicy,
    site_dirs: dict[str, Path],
    outcome: FederatedOutcome,
    ledger: PrivacyLedger,
    *,
    request_key: str,
    dagster_run_id: str | None = None,
    faults: dict[str, StepHook] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every site's audit (in the policy's site order) when :func:`audited`; {} otherwise."""
    if not audited(loaded):
        return {}
    fed = loaded.policy.training.federation
    assert fed is not None
    return {
        site.name: audit_site(
            loaded,
            site.name,
            site_dirs[site.name],
            outcome.plans[site.name],
            outcome.feature_names,
            ledger,
            request_key=request_key,
            dagster_run_id=dagster_run_id,
            fault=(faults or {}).get(site.name),
        )
        for site in fed.sites
    }


def audit_client_dp(
    loaded: LoadedPolicy, outcome: FederatedOutcome, *, strategy_factory: StrategyFactory | None = None
) -> dict[str, Any] | None:
    """The client-level audit of the run the policy configured (None when not :func:`client_audited`): the same
    RunConfig the ServerApp got and the ServerApp's initial model shapes; every site holds the same client-level
    plan, so the claim is the first site's. A model too small for the canary slots is reported, not raised, so
    the gate fails the run instead of losing the trained model. ``strategy_factory``: tests of the audit only."""
    if not client_audited(loaded):
        return None
    fed = loaded.policy.training.federation
    assert fed is not None
    plan = outcome.plans[fed.sites[0].name]
    config = run_config(loaded, outcome.feature_names, outcome.plans, Path())  # the audit writes no result
    shapes = [w.shape for w in get_weights(new_model(config.hidden_sizes, len(config.feature_names), config.seed))]
    settings = ClientAuditSettings(
        n_canaries=loaded.policy.evaluation.gradient_canaries, seed=loaded.policy.training.seed
    )
    try:
        result = audit_client_level(config, plan, shapes, settings, strategy_factory=strategy_factory)
    except ValueError as error:
        return {"error": str(error).splitlines()[0]}
    return result.to_dict()
