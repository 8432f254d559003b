"""White-box one-run audit of DP-SGD: gradient canaries inserted into the steps, observed through every update.

The threat model of DP-SGD's accountant lets the adversary see every noisy update and choose a record's
gradient (Nasr et al. 2023, "Tight auditing of differentially private machine learning"). The audit plays
that adversary inside one real training run (Steinke, Nasr & Jagielski 2023):

* m **Dirac gradient canaries**: canary i is a record slot whose per-example gradient is ``Z e_{k_i}`` (a
  distinct parameter coordinate ``k_i``, random sign, pre-clip norm Z = 10 C), each put in the training set
  with probability 1/2 (an excluded canary's slot has gradient 0, which is the same as being absent). The slots
  are rows of the training set, so **the run's own sampler** draws them like real records, and their gradients
  are clipped by **the clipper's own clip-factor function** before they join the clipped sum.
* The auditor sees each logical step's noisy sum and, white-box, the real records' clipped sum (it knows the
  model and the batch), so it observes ``o_t = canary part + noise``. Real records are sampled independently
  of the canaries, so this is still a post-processing of a mechanism the claimed (epsilon, delta) covers.
* Score of canary i: the Poisson-mixture log-likelihood ratio ``sum_t log(1 - q + q exp((x_it - 1/2) /
  s_t^2))`` with ``x_it = sign_i o_t[k_i] / C`` and ``s_t`` the noise scale estimated from ``o_t`` itself
  (median absolute value over all coordinates): the Neyman-Pearson statistic for one canary.
* The guesses (top and bottom fractions of the scores) are analysed with the f-DP one-run test of
  Mahloujifar, Melis & Chaudhuri 2024 (:mod:`ppml.evaluation.fdp_audit`) against the claimed mechanism's own
  privacy curve (Poisson-subsampled Gaussian with the accounted rate, the calibrated noise and the steps
  taken); the bound is the epsilon of the most private mechanism of that family the guesses refute. Steinke et
  al.'s one-point (epsilon, delta) test is kept in the details for comparison (it is looser for Gaussian noise).

A one-run bound cannot refute a claim that is only a small factor too optimistic, and a sampler or an
accountant can be wrong without making the run much less private at the audited noise level. So the white-box
auditor also tests the mechanism against its claim (each a p-value, gate at ``mechanism_alpha``):

* **noise**: per step, ``||noise_t||^2 / (sigma C)^2 ~ chi^2_D`` under the claim (lower tail, Bonferroni over
  steps), with ``noise_t = o_t - canary part`` -- catches noise scaled down or skipped on some steps;
* **sampling rate**: the canary slots' draws ``~ Binomial(m T, q_claimed)`` -- catches an accountant fed a
  rate the sampler does not use;
* **sampling law**: per-slot counts ``K_i ~ Binomial(T, q)`` independently (dispersion chi^2_m, two-sided) --
  catches fixed-size shuffled batches claimed as Poisson (every record exactly once per epoch).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats

from ppml.errors import input_error
from ppml.evaluation._common import LabelledSplit, Verdict, check_labels
from ppml.evaluation.audit import audit_from_scores
from ppml.evaluation.fdp_audit import (
    SubsampledGaussian,
    fdp_lower_bound,
    guess_counts,
    max_certifiable,
)
from ppml.training.accounting import DPPlan
from ppml.training.dp_steps import StepHook

SOURCE = "white-box audit"
NOISE_FLOOR = 1e-3  # smallest noise scale (in units of C) a score assumes: noise 0 gives finite, huge scores


@dataclass(frozen=True)
class WhiteBoxSettings:
    """The audit run: (at most) ``max_base_records`` real records plus m canary slots, sampled at
    ``sample_rate`` for ``epochs`` epochs (T = epochs / sample_rate steps). Rate 1/2 x 20 steps, 4,000 canaries and
    two guess sizes gave the f-DP bound the most power in simulation (docs/evaluation.md); the noise is
    calibrated by the caller's DPConfig for exactly this run."""

    n_canaries: int = 4000
    canary_norm_factor: float = 10.0
    max_base_records: int | None = 5000
    sample_rate: float = 0.5
    epochs: int = 10
    guess_fractions: tuple[float, ...] = (0.01, 0.03)
    confidence: float = 0.95
    mechanism_alpha: float = 1e-3
    seed: int = 0
    #: When set, the batch size that makes exactly this many batches per epoch (rate 1 / batches_per_epoch) instead
    #: of ``sample_rate``: a federated site's audit reproduces the site's planned rate whatever the canary count.
    batches_per_epoch: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


class GradientCanaries(StepHook):
    """The audit's :class:`StepHook`: inserts the Dirac canaries and records what the auditor observes."""

    def __init__(self, n_real: int, n_parameters: int, n_canaries: int, clip_bound: float, settings, rng) -> None:  # type: ignore[no-untyped-def]
        self.n_real, self.m, self.clip_bound_claimed = n_real, n_canaries, float(clip_bound)
        self.norm = settings.canary_norm_factor * self.clip_bound_claimed
        self.coords = torch.from_numpy(rng.choice(n_parameters, size=n_canaries, replace=False))
        self.signs = torch.from_numpy(rng.choice([-1.0, 1.0], size=n_canaries).astype(np.float32))
        self.included = torch.from_numpy(rng.random(n_canaries) < 0.5)
        self.participation = torch.zeros(n_canaries, dtype=torch.long)
        self.plan_seen: DPPlan | None = None
        self._slots: list[torch.Tensor] = []
        self._clean: torch.Tensor | None = None
        self._canary = torch.zeros(0)
        self.projections: list[np.ndarray] = []  # per step: sign_i o_t[k_i] / C
        self.noise_scale: list[float] = []  # per step: robust scale of o_t / C (what the scores may use)
        self.noise_sq: list[float] = []  # per step: ||noise_t||^2 (mechanism check only)

    def plan(self, plan: DPPlan) -> DPPlan:
        self.plan_seen = plan  # the claim: calibrated sigma, accounted sample rate, steps
        return plan

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        slot = indices >= self.n_real
        self._slots.append(indices[slot] - self.n_real)
        return indices[~slot]

    def before_noise(self, grads: torch.Tensor, clip_factors: Callable[[torch.Tensor], torch.Tensor]) -> None:
        slots = torch.cat(self._slots) if self._slots else torch.empty(0, dtype=torch.long)
        self._slots = []
        self.participation.index_add_(0, slots, torch.ones_like(slots))
        self._clean = grads.detach().clone()
        inside = slots[self.included[slots]]
        norms = torch.full((len(inside),), self.norm, dtype=grads.dtype, device=grads.device)
        values = self.signs[inside].to(grads.device) * self.norm * clip_factors(norms)
        grads.index_add_(0, self.coords[inside].to(grads.device), values)
        self._canary = grads.detach() - self._clean

    def after_noise(self, grads: torch.Tensor) -> None:
        observed = (grads.detach() - self._clean).cpu()
        c = self.clip_bound_claimed
        self.projections.append((self.signs * observed[self.coords] / c).numpy().astype(np.float64))
        self.noise_scale.append(float(observed.abs().median()) / 0.6745 / c)
        self.noise_sq.append(float((observed - self._canary.cpu()).double().square().sum()))

    def scores(self, sample_rate: float) -> np.ndarray:
        """Poisson-mixture log-likelihood ratio of each canary over all steps (from the observations only)."""
        x = np.stack(self.projections, axis=1)  # (m, T)
        s2 = np.maximum(np.asarray(self.noise_scale), NOISE_FLOOR) ** 2
        q = min(max(sample_rate, 1e-12), 1 - 1e-12)
        return np.logaddexp(math.log1p(-q), math.log(q) + (x - 0.5) / s2).sum(axis=1)


@dataclass(frozen=True)
class WhiteBoxResult:
    claimed_epsilon: float
    delta: float
    lower_bound: float
    max_achievable_bound: float
    bound_alarm: bool
    mechanism: dict[str, dict[str, float]]
    mechanism_alpha: float
    confidence: float
    n_canaries: int
    n_included: int
    steps: int
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def mechanism_alarm(self) -> bool:
        return min(c["p_value"] for c in self.mechanism.values()) < self.mechanism_alpha

    @property
    def alarm(self) -> bool:
        return self.bound_alarm or self.mechanism_alarm

    @property
    def message(self) -> str:
        failed = [name for name, c in self.mechanism.items() if c["p_value"] < self.mechanism_alpha]
        parts = [
            f"white-box epsilon lower bound {self.lower_bound:.3f} "
            f"{'exceeds' if self.bound_alarm else '<='} claimed {self.claimed_epsilon:.3f} "
            f"({self.confidence:.0%} confidence; at most {self.max_achievable_bound:.2f} detectable with "
            f"{self.n_canaries} canaries)"
        ]
        if failed:
            parts.append(f"mechanism differs from its claim: {', '.join(failed)} (p < {self.mechanism_alpha:g})")
        return ("ALARM: " if self.alarm else "") + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {
            "claimed_epsilon": self.claimed_epsilon,
            "delta": self.delta,
            "epsilon_lower_bound": self.lower_bound,
            "max_achievable_bound": self.max_achievable_bound,
            "bound_alarm": self.bound_alarm,
            "mechanism_checks": self.mechanism,
            "mechanism_alpha": self.mechanism_alpha,
            "mechanism_alarm": self.mechanism_alarm,
            "alarm": self.alarm,
            "message": self.message,
            "confidence": self.confidence,
            "canaries": self.n_canaries,
            "n_included": self.n_included,
            "steps": self.steps,
            "details": self.details,
        }


def mechanism_checks(canaries: GradientCanaries, n_parameters: int) -> dict[str, dict[str, float]]:
    """p-values of "the noise, the sampling rate and the sampling law are the claimed ones"."""
    plan = canaries.plan_seen
    assert plan is not None
    steps = len(canaries.noise_sq)
    std = plan.noise_multiplier * canaries.clip_bound_claimed
    ratios = np.asarray(canaries.noise_sq) / (std**2)
    per_step = stats.chi2.cdf(ratios, df=n_parameters)
    noise_p = float(min(1.0, steps * per_step.min()))
    q = plan.accounted_sample_rate or plan.sample_rate
    counts = canaries.participation.numpy()
    total = int(counts.sum())
    rate_p = float(stats.binomtest(total, canaries.m * steps, q).pvalue)
    dispersion = float(((counts - steps * q) ** 2).sum() / (steps * q * (1 - q)))
    lower = stats.chi2.cdf(dispersion, df=canaries.m)
    law_p = float(min(1.0, 2 * min(lower, 1 - lower)))
    return {
        "noise": {"p_value": noise_p, "min_ratio_to_claimed_variance": float(ratios.min() / n_parameters)},
        "sampling_rate": {"p_value": rate_p, "observed_rate": total / (canaries.m * steps), "claimed_rate": q},
        "sampling_law": {"p_value": law_p, "dispersion_ratio": dispersion / canaries.m},
    }


def claimed_mechanism(canaries: GradientCanaries) -> SubsampledGaussian:
    """What the run's accountant claims it ran: the calibrated noise, the accounted rate, the steps taken."""
    plan = canaries.plan_seen
    assert plan is not None
    rate = plan.accounted_sample_rate or plan.sample_rate
    return SubsampledGaussian(float(rate), float(plan.noise_multiplier), len(canaries.projections))


def run_whitebox_audit(
    train: LabelledSplit,
    config: Any,
    dp: Any,
    *,
    settings: WhiteBoxSettings = WhiteBoxSettings(),
    fault: StepHook | None = None,
    train_fn: Callable[..., Any] | None = None,
    subjects: np.ndarray | None = None,
) -> WhiteBoxResult:
    """One DP-SGD run on (a sample of) ``train`` plus canary slots; bound epsilon and test the mechanism.

    ``config``/``dp``: the production TrainingConfig (model spec, optimizer and seed kept; batch size and epochs
    set from ``settings``) and the DPConfig whose claim is audited. ``fault``: a planted bug
    (:mod:`ppml.evaluation.planted_bugs`), for testing the audit only. ``train_fn(split, config, dp, step_hook=)``
    defaults to ``train_dp``; the pipeline passes one that charges the ledger.

    ``subjects`` (subject index per row of ``train``): audit the *user-level* trainer instead (privacy unit
    ``subject``): each canary is a one-record subject, the batch size and rate count subjects, and
    ``train_fn(split, config, dp, step_hook=, subjects=)`` defaults to ``train_user_level``.
    """
    from ppml.evaluation.planted_bugs import ChainedHooks

    _check_settings(settings)
    split, canaries, codes, n_parameters = _canary_split(train, config, dp, settings, subjects)
    units = split.n if codes is None else int(codes.max()) + 1  # what the sampler draws: records or subjects
    if settings.batches_per_epoch is None and codes is not None:  # ceil: an odd count keeps 1/2, not 1/3
        batch = max(1, math.ceil(settings.sample_rate * units))
    elif settings.batches_per_epoch is None:
        batch = max(1, round(settings.sample_rate * units))
    else:
        batch = math.ceil(units / settings.batches_per_epoch)
    audit_config = dataclasses.replace(config, epochs=settings.epochs, batch_size=batch, device="cpu")
    hook = canaries if fault is None else ChainedHooks([fault, canaries])
    model = _audit_training(train_fn, split, audit_config, dp, hook, codes)
    m, base_records = canaries.m, canaries.n_real
    if model.epsilon is None or not canaries.projections:
        raise input_error(SOURCE, "train_fn", "the audit run reported no DP steps", "audit train_dp")
    included = canaries.included.numpy()
    delta = float(model.delta or dp.target_delta)
    scores = canaries.scores(float(model.sample_rate))
    claimed = claimed_mechanism(canaries)
    outcomes = guess_counts(scores, included, settings.guess_fractions)
    bound = fdp_lower_bound(
        outcomes, m, claimed, delta=delta, claimed_epsilon=float(model.epsilon), confidence=settings.confidence
    )
    one_point = audit_from_scores(  # Steinke et al.'s (epsilon, delta) test, for comparison only
        scores,
        included,
        claimed_epsilon=float(model.epsilon),
        delta=delta,
        guess_fractions=settings.guess_fractions,
        confidence=settings.confidence,
    )
    return WhiteBoxResult(
        claimed_epsilon=float(model.epsilon),
        delta=delta,
        lower_bound=bound.lower_bound,
        max_achievable_bound=max_certifiable(
            m, settings.guess_fractions, claimed, delta=delta, confidence=settings.confidence
        ),
        bound_alarm=bound.claim_refuted,
        mechanism=mechanism_checks(canaries, n_parameters),
        mechanism_alpha=settings.mechanism_alpha,
        confidence=settings.confidence,
        n_canaries=m,
        n_included=int(included.sum()),
        steps=len(canaries.projections),
        details={
            "settings": settings.to_dict(),
            "base_records": base_records,
            "privacy_unit": "record" if codes is None else "subject",
            "parameters": n_parameters,
            "sample_rate": model.sample_rate,
            "noise_multiplier": model.noise_multiplier,
            "claimed_mechanism": dataclasses.asdict(claimed),
            "fdp_bound": bound.to_dict(),
            "one_point_bound": one_point.lower_bound,
            "canary_auc": one_point.canary_auc,
            "fault_injection": type(fault).__name__ if fault is not None else None,
        },
    )


def _audit_training(
    train_fn: Callable[..., Any] | None, split: Any, config: Any, dp: Any, hook: StepHook, codes: np.ndarray | None
) -> Any:
    """The audited run: record-level DP-SGD, or user-level DP-SGD when there are subject codes."""
    from ppml.training import train_dp
    from ppml.training.user_level import train_user_level

    if codes is None:
        return (train_fn or train_dp)(split, config, dp, step_hook=hook)
    if train_fn is None:
        return train_user_level(split, codes, config, dp, step_hook=hook)
    return train_fn(split, config, dp, step_hook=hook, subjects=codes)


def _canary_split(
    train: LabelledSplit, config: Any, dp: Any, settings: WhiteBoxSettings, subjects: np.ndarray | None = None
) -> tuple[Any, Any, np.ndarray | None, int]:
    """(A sample of) the base records plus one zero-feature slot per canary, the canaries, the subject code of
    every row (None for the record unit; a canary is its own subject after the real ones) and the number of model
    parameters (one coordinate per canary: no cross-talk between canaries)."""
    from ppml.training import TabularSplit
    from ppml.training.models import build_model

    rng = np.random.default_rng(settings.seed)
    X = np.asarray(train.X, dtype=np.float32)
    n_classes = int(getattr(train, "n_classes", 2))  # a multi-class model has K outputs: more coordinates
    y = check_labels(train.y, SOURCE, n_classes)
    if subjects is not None and np.shape(subjects) != (len(y),):
        raise input_error(SOURCE, "subjects", f"{np.shape(subjects)} for {len(y)} rows", "one subject per row")
    if settings.max_base_records is not None and len(y) > settings.max_base_records:
        keep = rng.choice(len(y), size=settings.max_base_records, replace=False)
        X, y = X[keep], y[keep]
        subjects = None if subjects is None else np.asarray(subjects)[keep]
    n_parameters = sum(p.numel() for p in build_model(config.model, X.shape[1], n_classes).parameters())
    m = min(settings.n_canaries, n_parameters)
    canaries = GradientCanaries(len(y), n_parameters, m, dp.max_grad_norm, settings, rng)
    split = TabularSplit(
        X=np.vstack([X, np.zeros((m, X.shape[1]), dtype=np.float32)]),
        y=np.concatenate([y, np.zeros(m, dtype=np.int64)]),
        feature_names=tuple(getattr(train, "feature_names", ()) or ()),
        n_classes=n_classes,
    )
    if subjects is None:
        return split, canaries, None, n_parameters
    _, real = np.unique(np.asarray(subjects), return_inverse=True)  # dense codes 0..s-1 of the kept rows
    codes = np.concatenate([real.astype(np.int64), real.max(initial=-1) + 1 + np.arange(m, dtype=np.int64)])
    return split, canaries, codes, n_parameters


def whitebox_verdict(result: WhiteBoxResult) -> Verdict:
    """Passes when the guesses do not refute the claimed curve and no mechanism check rejects the claim."""
    limit = result.claimed_epsilon if not result.alarm else -math.inf
    return Verdict.check("whitebox_epsilon_within_claim", result.lower_bound, limit, "<=", result.message)


def _check_settings(settings: WhiteBoxSettings) -> None:
    if settings.n_canaries < 10:
        raise input_error(SOURCE, "n_canaries", f"{settings.n_canaries}", "use at least 10 (2000 recommended)")
    if settings.batches_per_epoch is not None and settings.batches_per_epoch < 2:
        raise input_error(SOURCE, "batches_per_epoch", f"{settings.batches_per_epoch}", "use at least 2 (rate 1/2)")
    if not 0 < settings.sample_rate < 1:
        raise input_error(SOURCE, "sample_rate", f"{settings.sample_rate}", "use a rate in (0, 1), e.g. 0.2")
    if not (math.isfinite(settings.canary_norm_factor) and settings.canary_norm_factor >= 1):
        raise input_error(SOURCE, "canary_norm_factor", f"{settings.canary_norm_factor}", "use >= 1, e.g. 10")
