"""Lifecycle step 6, compliance evidence: an empirical lower bound on epsilon from ONE training run.

The accountant's epsilon is an upper bound that is only as good as the code that adds the noise and the
arithmetic that accounts for it. Steinke, Nasr and Jagielski (NeurIPS 2023, "Privacy Auditing with One (1)
Training Run") turn a single training run into a statistical test of that claim:

1. m canaries are made; each is included in the training set independently with probability 1/2.
2. The model is trained once. Each canary is scored (higher = "looks trained on").
3. The auditor guesses "in" for the k+ highest scores and "out" for the k- lowest, abstaining on the rest:
   r = k+ + k- guesses, v of them correct.
4. If training were (eps, delta)-DP, the number of correct guesses would be stochastically dominated by
   Binomial(r, e^eps / (1 + e^eps)) up to a delta term (their Theorem 5.2 / Proposition 5.7), so

       p(eps) = P[Binomial(r, q) >= v] + 2 m delta * max_{i=1..v} P[v - i <= Binomial(r, q) < v] / i,
       q = e^eps / (1 + e^eps),

   is a valid p-value for "the run was (eps, delta)-DP". The lower bound is the largest eps with
   p(eps) < beta (95% confidence: beta = 0.05); it is found by bisection since p is increasing in eps.

If that lower bound exceeds the epsilon the accountant claims, the claim is false with 95% confidence: a DP
bug (noise not added, clipping skipped) or wrong accounting. The bound is loose for honest training (a black-
box one-run audit of DP-SGD at eps = 1 typically certifies well under 1), so it detects gross failures, which
is what a compliance gate needs; it cannot prove that a model is private.

Canary design (see docs/evaluation.md): each canary is a typical record (the feature mean) plus a large value
in a feature column of its own that no real record uses, with a random label. Its own column makes its
influence on the model separable from every other record's, so a non-private run memorises the label of
every included canary while an excluded canary's prediction is left where initialisation put it. The audit
run trains with Adam because Adam only post-processes the privatised gradient (the DP guarantee is unchanged)
while it amplifies the rare, consistent gradient a canary contributes to its own column.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import special, stats

from ppml.errors import input_error
from ppml.evaluation._common import (
    PROBABILITY_FLOOR,
    LabelledSplit,
    ProbabilisticModel,
    Verdict,
    check_fraction,
    check_labels,
    predict_positive,
    predict_scores,
    true_label_logit,
)

SOURCE = "epsilon audit"


def _check_counts(m: int, r: int, v: int) -> None:
    if not (0 <= v <= r <= m and m >= 1):
        raise input_error(
            SOURCE,
            "m/r/v",
            f"need 0 <= correct ({v}) <= guesses ({r}) <= canaries ({m})",
            "count guesses among the canaries only",
        )


def epsilon_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """P-value of ">= v of r guesses correct" if the run were (epsilon, delta)-DP (Steinke et al. 2023).

    ``m`` canaries were each included with probability 1/2; the auditor made ``r`` guesses, ``v`` correct.
    """
    _check_counts(m, r, v)
    if epsilon < 0 or not 0 <= delta <= 1:
        raise input_error(
            SOURCE, "epsilon/delta", f"epsilon {epsilon}, delta {delta}", "use epsilon >= 0 and delta in [0, 1]"
        )
    q = float(special.expit(epsilon))
    tail = float(stats.binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if delta == 0 or v == 0:
        return min(tail, 1.0)
    i = np.arange(1, v + 1)
    window = stats.binom.sf(v - i - 1, r, q) - tail  # P[v - i <= Binomial(r, q) < v]
    alpha = float(np.max(window / i))
    return min(tail + alpha * delta * 2 * m, 1.0)


def epsilon_lower_bound(
    m: int, r: int, v: int, *, delta: float, confidence: float = 0.95, tolerance: float = 1e-6
) -> float:
    """Largest epsilon that ``v`` correct of ``r`` guesses on ``m`` canaries refutes at ``confidence``.

    Returns 0 when even epsilon = 0 cannot be refuted (e.g. no better than chance).
    """
    _check_counts(m, r, v)
    check_fraction(confidence, SOURCE, "confidence", low=0, high=1, closed="neither")
    check_fraction(delta, SOURCE, "delta", low=0, high=1, closed="low")
    beta = 1 - confidence
    if r == 0 or epsilon_p_value(m, r, v, 0.0, delta) >= beta:
        return 0.0
    low, high = 0.0, 1.0
    while epsilon_p_value(m, r, v, high, delta) < beta:
        low, high = high, high * 2
        if high > 1e4:  # v = r with r large: any epsilon is refuted up to numerical precision
            return low
    while high - low > tolerance:
        middle = (low + high) / 2
        if epsilon_p_value(m, r, v, middle, delta) < beta:
            low = middle
        else:
            high = middle
    return low


@dataclass(frozen=True)
class GuessOutcome:
    k_plus: int
    k_minus: int
    correct: int
    lower_bound: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "k_plus": self.k_plus,
            "k_minus": self.k_minus,
            "correct": self.correct,
            "lower_bound": self.lower_bound,
        }


@dataclass(frozen=True)
class AuditResult:
    """The one-run audit's evidence: lower bound next to the accountant's claim, and the alarm."""

    claimed_epsilon: float
    delta: float
    lower_bound: float
    confidence: float
    alarm: bool
    n_canaries: int
    n_included: int
    best: GuessOutcome
    outcomes: list[GuessOutcome]
    canary_auc: float | None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def message(self) -> str:
        if self.alarm:
            return (
                f"ALARM: empirical epsilon lower bound {self.lower_bound:.3f} exceeds the accountant's "
                f"epsilon {self.claimed_epsilon:.3f} at {self.confidence:.0%} confidence; the DP "
                "implementation or its accounting is broken"
            )
        return (
            f"empirical epsilon lower bound {self.lower_bound:.3f} <= accountant's epsilon "
            f"{self.claimed_epsilon:.3f} ({self.confidence:.0%} confidence)"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "claimed_epsilon": self.claimed_epsilon,
            "delta": self.delta,
            "lower_bound": self.lower_bound,
            "epsilon_lower_bound": self.lower_bound,  # the name ppml.compliance reads
            "canaries": self.n_canaries,
            "confidence": self.confidence,
            "alarm": self.alarm,
            "message": self.message,
            "n_canaries": self.n_canaries,
            "n_included": self.n_included,
            "best": self.best.to_dict(),
            "outcomes": [o.to_dict() for o in self.outcomes],
            "canary_auc": self.canary_auc,
            "details": self.details,
        }


def audit_from_scores(
    scores: np.ndarray,
    included: np.ndarray,
    *,
    claimed_epsilon: float,
    delta: float,
    guess_fractions: Sequence[float] = (0.05, 0.1, 0.2),
    confidence: float = 0.95,
    details: dict[str, Any] | None = None,
) -> AuditResult:
    """Guess the top and bottom ``f * m`` canaries for each f; bound with a Bonferroni-corrected confidence.

    The guess counts are fixed before the scores are seen; trying several and keeping the best is paid for by
    splitting the error probability between them, so the reported bound keeps its 95% guarantee.
    """
    scores = np.asarray(scores, dtype=np.float64)
    included = np.asarray(included, dtype=bool)
    m = len(scores)
    if m == 0 or len(included) != m or not np.isfinite(scores).all():
        raise input_error(
            SOURCE, "scores", f"{m} finite scores needed for {len(included)} canaries", "score every canary once"
        )
    if not math.isfinite(claimed_epsilon) or claimed_epsilon < 0:
        raise input_error(
            SOURCE, "claimed_epsilon", f"{claimed_epsilon}", "pass the accountant's epsilon of the audited run"
        )
    check_fraction(confidence, SOURCE, "confidence", low=0, high=1, closed="neither")
    if not guess_fractions:
        raise input_error(SOURCE, "guess_fractions", "empty", "give at least one fraction in (0, 0.5]")
    for f in guess_fractions:
        check_fraction(f, SOURCE, "guess_fractions", low=0, high=0.5, closed="high")
    per_test = 1 - (1 - confidence) / len(guess_fractions)
    # Ties are broken by a fixed random order so equal scores cannot favour inclusion order.
    tie_break = np.random.default_rng(12345).random(m)
    order = np.lexsort((tie_break, -scores))
    outcomes = []
    for f in guess_fractions:
        k = max(1, round(f * m))
        correct = int(included[order[:k]].sum() + (~included[order[m - k :]]).sum())
        bound = epsilon_lower_bound(m, 2 * k, correct, delta=delta, confidence=per_test)
        outcomes.append(GuessOutcome(k, k, correct, bound))
    best = max(outcomes, key=lambda o: o.lower_bound)
    canary_auc = None
    if 0 < included.sum() < m:
        ranks = stats.rankdata(scores)
        n_in = int(included.sum())
        canary_auc = float((ranks[included].sum() - n_in * (n_in + 1) / 2) / (n_in * (m - n_in)))
    return AuditResult(
        claimed_epsilon=float(claimed_epsilon),
        delta=float(delta),
        lower_bound=best.lower_bound,
        confidence=confidence,
        alarm=best.lower_bound > claimed_epsilon,
        n_canaries=m,
        n_included=int(included.sum()),
        best=best,
        outcomes=outcomes,
        canary_auc=canary_auc,
        details={"bonferroni_tests": len(guess_fractions), **(details or {})},
    )


@dataclass(frozen=True)
class AuditSettings:
    """How the audit run is built. The DP mechanism audited (noise, clipping, sampling, accounting, model
    architecture) comes from the caller's configs; these settings only make the audit sensitive and cheap."""

    n_canaries: int = 1000
    canary_scale: float = 5.0
    max_base_records: int | None = 5000
    epochs: int = 10
    batch_size: int = 256
    learning_rate: float = 3e-3
    optimizer: str = "adam"
    guess_fractions: tuple[float, ...] = (0.05, 0.1, 0.2)
    confidence: float = 0.95
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass(frozen=True)
class Canaries:
    """Canary records in the widened feature space, their labels and which ones the coin put in training."""

    X: np.ndarray  # (m, d + m) float32
    y: np.ndarray  # (m,) int64
    included: np.ndarray  # (m,) bool
    anchor: np.ndarray  # (d + m,) the canary without its own column: the score's reference point


def make_canaries(
    base_X: np.ndarray, n_canaries: int, *, scale: float, rng: np.random.Generator, n_classes: int = 2
) -> Canaries:
    """Canary i = mean record + ``scale`` in new column d + i, random label (one of ``n_classes``), included with
    probability 1/2."""
    if n_canaries < 10:
        raise input_error(
            SOURCE,
            "n_canaries",
            f"{n_canaries} canaries",
            "use at least 10 (1000 gives a bound that can exceed epsilon = 1 reliably)",
        )
    if not (math.isfinite(scale) and scale > 0):
        raise input_error(SOURCE, "canary_scale", f"{scale}", "use a positive scale, e.g. 5")
    base_X = np.asarray(base_X, dtype=np.float32)
    d = base_X.shape[1]
    anchor = np.concatenate([base_X.mean(axis=0), np.zeros(n_canaries, dtype=np.float32)]).astype(np.float32)
    X = np.tile(anchor, (n_canaries, 1))
    X[np.arange(n_canaries), d + np.arange(n_canaries)] = scale
    y = rng.integers(0, n_classes, size=n_canaries).astype(np.int64)
    included = rng.random(n_canaries) < 0.5
    return Canaries(X=X, y=y, included=included, anchor=anchor)


def canary_scores(model: ProbabilisticModel, canaries: Canaries) -> np.ndarray:
    """How much the canary's own column moves the logit towards its label, relative to the anchor record.

    Subtracting the anchor's logit removes what the rest of the data taught the model, so an excluded canary
    scores around 0 whatever its label, and an included one scores high once the model fitted its label.
    """

    scores = predict_scores(model, canaries.X)
    if scores.ndim == 2:  # multi-class: the true-class logit log(p_y / (1 - p_y)), canary minus anchor
        anchor = np.repeat(predict_scores(model, canaries.anchor[None]), len(canaries.y), axis=0)
        return true_label_logit(scores, canaries.y) - true_label_logit(anchor, canaries.y)

    def logit(p: np.ndarray) -> np.ndarray:
        p = np.clip(p, PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
        return np.log(p) - np.log1p(-p)

    shift = logit(scores) - logit(predict_positive(model, canaries.anchor[None]))[0]
    return np.where(canaries.y == 1, shift, -shift)


def run_one_run_audit(
    train: LabelledSplit,
    config: Any,
    dp: Any,
    *,
    settings: AuditSettings = AuditSettings(),
    train_fn: Callable[..., Any] | None = None,
) -> AuditResult:
    """Train once with ``train_dp`` on (a sample of) ``train`` plus canaries, score them, bound epsilon.

    ``config`` is the production ``TrainingConfig`` (its model spec, seed and device are kept; epochs, batch
    size, learning rate and optimizer come from ``settings``) and ``dp`` the ``DPConfig`` whose claim is
    audited; the claimed epsilon is the one the accountant reports for the audit run itself.
    """
    from ppml.training import TabularSplit, train_dp

    train_fn = train_fn or train_dp
    if settings.n_canaries < 10:
        raise input_error(SOURCE, "n_canaries", f"{settings.n_canaries}", "use at least 10 canaries")
    rng = np.random.default_rng(settings.seed)
    X = np.asarray(train.X, dtype=np.float32)
    n_classes = int(getattr(train, "n_classes", 2))
    y = check_labels(train.y, SOURCE, n_classes)
    if settings.max_base_records is not None and len(y) > settings.max_base_records:
        keep = rng.choice(len(y), size=settings.max_base_records, replace=False)
        X, y = X[keep], y[keep]
    if len(y) < settings.batch_size:
        raise input_error(
            SOURCE,
            "train",
            f"{len(y)} records for batch size {settings.batch_size}",
            "audit on more records or lower AuditSettings.batch_size",
        )
    canaries = make_canaries(X, settings.n_canaries, scale=settings.canary_scale, rng=rng, n_classes=n_classes)
    widened = np.hstack([X, np.zeros((len(y), settings.n_canaries), dtype=np.float32)])
    names = tuple(getattr(train, "feature_names", ()) or ())
    if names:
        names = names + tuple(f"audit_canary_{i}" for i in range(settings.n_canaries))
    audit_split = TabularSplit(
        X=np.vstack([widened, canaries.X[canaries.included]]).astype(np.float32),
        y=np.concatenate([y, canaries.y[canaries.included]]).astype(np.int64),
        feature_names=names,
        n_classes=n_classes,
    )
    audit_config = dataclasses.replace(
        config,
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        max_physical_batch_size=min(config.max_physical_batch_size, max(settings.batch_size, 256)),
        learning_rate=settings.learning_rate,
        optimizer=settings.optimizer,
    )
    started = time.perf_counter()
    model = train_fn(audit_split, audit_config, dp)
    seconds = time.perf_counter() - started
    if model.epsilon is None:
        raise input_error(
            SOURCE, "train_fn", "the audit run reported no epsilon", "audit a DP training function (train_dp)"
        )
    scores = canary_scores(model, canaries)
    return audit_from_scores(
        scores,
        canaries.included,
        claimed_epsilon=float(model.epsilon),
        delta=float(model.delta or dp.target_delta),
        guess_fractions=settings.guess_fractions,
        confidence=settings.confidence,
        details={
            "settings": settings.to_dict(),
            "base_records": len(y),
            "noise_multiplier": model.noise_multiplier,
            "sample_rate": model.sample_rate,
            "steps": model.steps,
            "noise_multiplier_override": getattr(dp, "noise_multiplier_override", None),
            "epsilon_of_noise_added": getattr(model, "epsilon_charged", None),
            "training_seconds": round(seconds, 2),
            "canary_design": "mean record + scale in a dedicated column per canary, random label, p(include)=1/2",
        },
    )


def audit_verdict(result: AuditResult) -> Verdict:
    """The gate: empirical epsilon lower bound <= the accountant's epsilon."""
    return Verdict.check(
        "empirical_epsilon_within_claim", result.lower_bound, result.claimed_epsilon, "<=", result.message
    )
