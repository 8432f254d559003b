"""Planning a private model selection: which candidates to train, and how much noise each gets.

Two concerns, both settled before any record is touched:

* :func:`derive_candidates` -- a small candidate set from the size of the problem (``n`` training rows, ``d``
  features, the target epsilon), so that a data set of a few thousand rows is not trained with settings tuned for
  Adult (docs/training.md, "Candidates derived from n and d").
* :func:`candidate_dp_configs` -- the per-candidate (epsilon, delta) targets. Every candidate is charged, and with
  ``mode="composed"`` the noise of all candidates is calibrated jointly so that the ledger's composition of the
  whole selection is at most the policy's target: the released model's epsilon *including selection* is the
  target itself.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from ppml.errors import input_error
from ppml.ledger import Charge, DataScope, PlannedRun, compose
from ppml.training.accounting import DPPlan, calibrated_noise_multiplier, epsilon_of_history
from ppml.training.config import DPConfig, ModelSpec, TrainingConfig, fingerprint
from ppml.training.data import TabularSplit, check_training_inputs

CandidateBudget = Literal["each", "split", "composed"]
SelectionMetric = Literal["accuracy", "auc", "balanced_accuracy"]

#: n * epsilon at which the rule's step count reaches its reference (Adult's ~27,000 rows at epsilon 1).
REFERENCE_SIGNAL = 25_000.0
#: Logical steps at the reference signal, and the bounds the rule keeps to.
REFERENCE_STEPS, MIN_STEPS, MAX_STEPS = 400, 100, 1000
#: Below this n * epsilon (or with fewer features) only logistic regression is a candidate.
MLP_MIN_SIGNAL, MLP_MIN_FEATURES = 15_000.0, 8
#: Expected batch ~ BATCH_PER_ROOT_N * sqrt(n), a power of two within these bounds.
BATCH_PER_ROOT_N, MIN_BATCH, MAX_BATCH = 6.0, 32, 4096


@dataclasses.dataclass(frozen=True)
class StepPlan:
    """Batch size, epochs and the resulting logical steps of the derived candidates (shared by all of them)."""

    batch_size: int
    epochs: int
    steps: int
    sample_rate: float


def derive_step_plan(n_records: int, target_epsilon: float) -> StepPlan:
    """Expected batch ~ 6 sqrt(n) and steps ~ 400 sqrt(n eps / 25,000), clamped to [100, 1000].

    Why: with Poisson rate q = B/n and T steps, the calibrated noise per averaged step is sigma C / B ~
    sqrt(T) / (n eps) in DP-SGD's usual regime, so a small n * eps affords fewer steps before the noise swamps the
    signal; a batch growing like sqrt(n) keeps the sampling rate moderate (q ~ 6 / sqrt(n)) on small and large data.
    """
    if n_records < 2:
        raise input_error("training request", "rows", f"{n_records} training rows", "train on at least 2 rows")
    batch = 2 ** round(math.log2(BATCH_PER_ROOT_N * math.sqrt(n_records)))
    batch = int(min(max(batch, MIN_BATCH), MAX_BATCH, max(n_records // 4, 1)))
    signal = n_records * float(target_epsilon)
    wanted = min(max(round(REFERENCE_STEPS * math.sqrt(signal / REFERENCE_SIGNAL)), MIN_STEPS), MAX_STEPS)
    steps_per_epoch = math.ceil(n_records / batch)
    epochs = max(1, round(wanted / steps_per_epoch))
    return StepPlan(batch, epochs, epochs * steps_per_epoch, 1 / steps_per_epoch)


def derive_candidates(
    n_records: int,
    n_features: int,
    target_epsilon: float,
    *,
    seed: int = 0,
    device: str = "auto",
) -> list[TrainingConfig]:
    """The ``training.candidates: auto`` set: one step plan, logistic regression always, an MLP only with signal.

    All candidates share batch size and epochs, so their joint calibration is one accountant call (their histories
    merge); they differ in model and learning rate. Plain SGD on clipped, averaged gradients: the update is bounded
    by the learning rate, so the rates below do not depend on the data's scale. The MLP (``d -> h -> 2``, h = 64
    for d >= 32 else 32) needs n * eps >= 15,000 and d >= 8: more parameters need more signal per noisy step.
    """
    steps = derive_step_plan(n_records, target_epsilon)

    def config(model: ModelSpec, learning_rate: float) -> TrainingConfig:
        return TrainingConfig(
            model=model,
            epochs=steps.epochs,
            batch_size=steps.batch_size,
            max_physical_batch_size=max(2 * steps.batch_size, 1024),
            learning_rate=learning_rate,
            optimizer="sgd",
            seed=seed,
            device=device,  # type: ignore[arg-type]
        )

    if n_records * target_epsilon >= MLP_MIN_SIGNAL and n_features >= MLP_MIN_FEATURES:
        hidden = 64 if n_features >= 32 else 32
        return [config(ModelSpec("mlp", (hidden,)), 0.5), config(ModelSpec("logistic"), 1.0)]
    return [config(ModelSpec("logistic"), 1.0), config(ModelSpec("logistic"), 0.3)]


# ------------------------------------------------------------------------------------- one run's plan


def plan_dp_training(n_records: int, config: TrainingConfig, dp: DPConfig, *, unit: str = "sample rate") -> DPPlan:
    """Calibrate exactly as ``make_private_with_epsilon`` will (same sample rate, epochs and accountant).

    One epoch is the real number of batches, ``ceil(n / batch_size)``: the loop runs that many logical steps per
    epoch and the plan (what the ledger reserves) counts every one of them. (``int(1 / sample_rate)`` would round
    ``1 / (1 / 93)`` down to 92.) ``n_records`` counts subjects for user-level DP; ``unit`` names the rate in the
    error message.
    """
    batches = math.ceil(n_records / config.batch_size)
    sample_rate = 1 / batches
    steps_per_epoch = batches
    planned = steps_per_epoch * config.epochs
    try:
        sigma = calibrated_noise_multiplier(
            float(dp.target_epsilon), float(dp.target_delta), sample_rate, config.epochs, dp.accountant
        )
    except ValueError as error:
        raise input_error(
            "dp config",
            "target_epsilon",
            f"epsilon {dp.target_epsilon:g} is too small for {config.epochs} epochs at {unit} "
            f"{sample_rate:.3g} ({error})",
            "raise epsilon, or train fewer epochs",
        ) from error
    applied = sigma if dp.noise_multiplier_override is None else float(dp.noise_multiplier_override)
    eps_planned = epsilon_of_history([(sigma, sample_rate, planned)], dp.target_delta, dp.accountant)
    eps_charged = epsilon_of_history([(applied, sample_rate, planned)], dp.target_delta, dp.accountant)
    return DPPlan(
        n_records,
        sample_rate,
        steps_per_epoch,
        planned,
        sigma,
        applied,
        eps_planned,
        eps_charged,
        float(dp.target_delta),
        dp.accountant,
    )


# ------------------------------------------------------------------------------------- the selection's budget


def candidate_dp_configs(
    n_records: int,
    candidates: Sequence[TrainingConfig],
    dp: DPConfig,
    mode: CandidateBudget,
    extra: Sequence[Charge] = (),
) -> list[DPConfig]:
    """Per-candidate DP targets such that every candidate can be charged in full.

    ``each``: every candidate at the target (the selection then spends their composition, reported separately).
    ``split``: (eps/k, delta/k) each -- basic composition keeps the whole selection within the target.
    ``composed``: one per-candidate epsilon, as large as possible, such that the ledger's own composition
    (:func:`ppml.ledger.compose`, at the target delta) of all k calibrated runs and the ``extra`` charges (the
    noisy mean predictions of a balanced selection) is at most the target.
    """
    count = len(candidates)
    if mode == "each" or (count == 1 and not extra):
        return [dp] * count
    split = dataclasses.replace(dp, target_epsilon=dp.target_epsilon / count, target_delta=dp.target_delta / count)
    if mode == "split" and not extra:
        return [split] * count
    # composed (and split with extra charges, which basic composition of equal shares cannot hold at the target)
    for per_run in _per_run_epsilons(n_records, candidates, dp):
        configs = [dataclasses.replace(dp, target_epsilon=per_run)] * count
        if selection_epsilon(_plans(n_records, candidates, configs), dp.target_delta, extra) <= dp.target_epsilon:
            return configs
    if extra:
        raise input_error(
            "training request",
            "target_epsilon",
            f"epsilon {dp.target_epsilon:g} leaves no room for {count} candidates and the noisy mean predictions",
            "raise epsilon or use fewer candidates",
        )
    return [split] * count  # the guaranteed fallback: basic composition


def selection_epsilon(plans: Sequence[DPPlan], delta: float, extra: Sequence[Charge] = ()) -> float:
    """The ledger's composition of the calibrated plans (and ``extra`` charges) at ``delta``."""
    charges = [Charge(p.noise_multiplier, p.sample_rate, p.planned_steps, p.epsilon_planned, p.delta) for p in plans]
    return compose([*charges, *extra], delta).epsilon


def mean_prediction_noise(n_records: int) -> float:
    """Gaussian noise (standard deviation, in records) of each candidate's summed training prediction.

    2 % of n (at least 25): the mean prediction's error stays a few per cent of a 20 % class at a cost that is
    small next to training (at n = 6,000 and 2 candidates: noise multiplier 85, zCDP rho 7e-5 against ~0.02 for
    epsilon 1).
    """
    return max(25.0, 0.02 * n_records)


def mean_prediction_charge(n_records: int, candidates: int, dp: DPConfig) -> Charge:
    """The k noisy sums as the ledger sees them: one Gaussian step at rate 1.

    Each record changes each candidate's sum of predicted probabilities (in [0, 1]) by at most 1, so the vector of
    k sums has L2 sensitivity sqrt(k) under add/remove: per-sum noise sigma is noise multiplier sigma / sqrt(k).
    """
    multiplier = mean_prediction_noise(n_records) / math.sqrt(candidates)
    epsilon = epsilon_of_history([(multiplier, 1.0, 1)], dp.target_delta, dp.accountant)
    return Charge(multiplier, 1.0, 1, epsilon, float(dp.target_delta))


def _per_run_epsilons(n_records: int, candidates: Sequence[TrainingConfig], dp: DPConfig) -> list[float]:
    """Per-run epsilons to try, largest first.

    When every candidate has the same sampling rate and epochs (the derived set), k runs are one history of k times
    the steps: its calibrated sigma gives the per-run epsilon directly. Otherwise a geometric descent from
    eps / sqrt(k) (RDP's rate for k similar runs) towards eps / k.
    """
    count = len(candidates)
    shapes = {(c.batch_size, c.epochs) for c in candidates}
    tries: list[float] = []
    if len(shapes) == 1:
        reference = candidates[0]
        plan = plan_dp_training(n_records, reference, dp)
        joint = calibrated_noise_multiplier(
            float(dp.target_epsilon),
            float(dp.target_delta),
            plan.sample_rate,
            reference.epochs * count,
            dp.accountant,
        )
        single = epsilon_of_history([(joint, plan.sample_rate, plan.planned_steps)], dp.target_delta, dp.accountant)
        tries += [single * shrink for shrink in (1.0, 0.98, 0.95, 0.92, 0.88)]
    tries += [dp.target_epsilon / math.sqrt(count) * 0.85**i for i in range(6)]
    floor = dp.target_epsilon / (count + 1)  # below this, eps/k each (the fallback) is as good
    return [t for t in tries if math.isfinite(t) and t > floor]


def _plans(n_records: int, candidates: Sequence[TrainingConfig], configs: Sequence[DPConfig]) -> list[DPPlan]:
    return [plan_dp_training(n_records, c, d) for c, d in zip(candidates, configs, strict=True)]


# ------------------------------------------------------------------------------------- the request's plan


@dataclasses.dataclass(frozen=True)
class SelectionPlan:
    """Everything decided before the ledger is asked: the candidates, their DP targets and calibrated plans."""

    candidates: list[TrainingConfig]
    dps: list[DPConfig]
    plans: list[DPPlan]
    planned: list[PlannedRun]
    request_key: str
    budget: CandidateBudget
    metric: SelectionMetric
    target_delta: float
    mean_prediction: Charge | None = None  # the noisy mean predictions of a balanced selection (one run)


def validate_request(
    train: TabularSplit,
    validation: TabularSplit | None,
    candidates: Sequence[TrainingConfig],
    dp: DPConfig,
    candidate_budget: str,
    selection_metric: str,
    checkpoint_dir: Path | None,
) -> list[TrainingConfig]:
    """Every input of a training request, refused with one line before anything is planned or reserved."""
    check_training_inputs(train, None, dp)  # the validation split is checked more strictly below
    if validation is None or not isinstance(validation, TabularSplit) or validation.n == 0:
        raise input_error(
            getattr(validation, "name", "validation split"),
            "rows",
            "model selection needs a non-empty validation split",
            "keep a validation share in the policy's split ratios",
        )
    if validation.n_features != train.n_features:
        raise input_error(
            validation.name,
            "X",
            f"{validation.n_features} features, training has {train.n_features}",
            "encode both splits with the same feature pipeline",
        )
    candidate_list = list(candidates)
    if not candidate_list or not all(isinstance(c, TrainingConfig) for c in candidate_list):
        raise input_error(
            "training request",
            "candidates",
            "no candidate configuration",
            "give at least one TrainingConfig (policy: training.candidates)",
        )
    if candidate_budget not in ("each", "split", "composed"):
        raise input_error(
            "training request",
            "candidate_budget",
            f"unknown mode {candidate_budget!r}",
            "use 'each', 'split' or 'composed'",
        )
    if selection_metric not in ("accuracy", "auc", "balanced_accuracy"):
        raise input_error(
            "training request",
            "selection_metric",
            f"unknown metric {selection_metric!r}",
            "use 'accuracy', 'auc' or 'balanced_accuracy'",
        )
    if checkpoint_dir is None:
        raise input_error("training request", "checkpoint_dir", "missing", "pass a folder for checkpoints")
    return candidate_list


def plan_selection(
    train: TabularSplit,
    validation: TabularSplit,
    candidates: Sequence[TrainingConfig],
    dp: DPConfig,
    candidate_budget: CandidateBudget,
    selection_metric: SelectionMetric,
    scope: DataScope,
) -> SelectionPlan:
    """Calibrate every candidate's noise (jointly under ``composed``) and fingerprint the request."""
    candidate_list = list(candidates)
    balanced = selection_metric == "balanced_accuracy"
    count = mean_prediction_charge(train.n, len(candidate_list), dp) if balanced else None
    dps = candidate_dp_configs(train.n, candidate_list, dp, candidate_budget, [count] if count else ())
    plans = [plan_dp_training(train.n, config, c_dp) for config, c_dp in zip(candidate_list, dps, strict=True)]
    planned = [
        planned_run(i, train, config, c_dp, plan)
        for i, (config, c_dp, plan) in enumerate(zip(candidate_list, dps, plans, strict=True))
    ]
    if count is not None:
        planned.append(mean_prediction_run(len(candidate_list), train, dp, count))
    request_key = fingerprint(
        "request",
        scope,
        train.record_set_hash(),
        validation.record_set_hash(),
        candidate_list,
        dps if candidate_budget == "composed" else dps[0],
        candidate_budget,
        selection_metric,
    )
    return SelectionPlan(
        candidate_list, dps, plans, planned, request_key, candidate_budget, selection_metric, dp.target_delta, count
    )


def planned_run(
    index: int,
    train: TabularSplit,
    config: TrainingConfig,
    dp: DPConfig,
    plan: DPPlan,
    *,
    world_size: int = 1,
    described: dict[str, Any] | None = None,
) -> PlannedRun:
    """The ledger reservation of one DP-SGD run (its planned charge), whoever launches it."""
    return PlannedRun(
        candidate_index=index,
        config_fingerprint=fingerprint("dp-run", train.record_set_hash(), config, dp, world_size),
        config={**config.to_params(), **dp.to_params(), **(described or {})},
        accountant=dp.accountant,
        target_epsilon=dp.target_epsilon,
        target_delta=dp.target_delta,
        noise_multiplier=plan.noise_multiplier,
        noise_multiplier_applied=plan.noise_multiplier_applied,
        sample_rate=plan.sample_rate,
        planned_steps=plan.planned_steps,
        epsilon_planned=plan.epsilon_charged_planned,
    )


def mean_prediction_run(index: int, train: TabularSplit, dp: DPConfig, charge: Charge) -> PlannedRun:
    """The Gaussian sums of the candidates' training predictions, reserved like a one-step DP run."""
    return PlannedRun(
        candidate_index=index,
        config_fingerprint=fingerprint("mean-prediction", train.record_set_hash(), charge, dp),
        config={"mechanism": "gaussian_sum_of_predictions", "noise_std": mean_prediction_noise(train.n)},
        accountant=dp.accountant,
        target_epsilon=charge.epsilon,
        target_delta=charge.delta,
        noise_multiplier=charge.noise_multiplier,
        noise_multiplier_applied=charge.noise_multiplier,
        sample_rate=1.0,
        planned_steps=1,
        epsilon_planned=charge.epsilon,
    )
