"""Lifecycle step 6, privacy testing: membership-inference attacks on a trained model.

Two attacks, both scoring the model's own training records (members) against held-out test records
(non-members) in equal numbers, so that an AUC of 0.5 means "no better than a coin":

* the loss-threshold attack (Yeom et al. 2018): a record the model fits unusually well was probably trained
  on. Cheap and model-agnostic; it is the baseline every model must survive.
* LiRA, offline variant (Carlini et al. 2022, "Membership Inference Attacks From First Principles", §IV):
  reference models trained on data disjoint from the target's training set tell, per record, how confident a
  model is on it when it was NOT trained on it. The target's logit-scaled confidence
  phi = log(p_y / (1 - p_y)) is compared with that Gaussian by a one-sided test. It calibrates away records
  that are easy (or hard) for every model, which the loss attack cannot, so it is far stronger at low FPR.

Results carry ROC AUC, the attacker's advantage max(TPR - FPR), TPR at low FPR (0.1% and 1% by default;
Carlini et al. argue this is the number that matters, because an attack that confidently identifies a few
people is a privacy failure even when its average accuracy is poor) and a down-sampled ROC curve for the
report. Everything is an aggregate over records; no per-record score leaves this module.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import stats

from ppml.errors import input_error
from ppml.evaluation._common import (
    LabelledSplit,
    ProbabilisticModel,
    Verdict,
    check_fraction,
    check_labels,
    cross_entropy,
    predict_scores,
    round_list,
    true_label_logit,
)

DEFAULT_LOW_FPRS = (0.001, 0.01)
ROC_POINTS = 200


@dataclass(frozen=True)
class MIAResult:
    """Outcome of one attack on one model. ``to_dict`` is JSON-serialisable and holds aggregates only."""

    attack: str
    model: str
    n_members: int
    n_non_members: int
    roc_auc: float
    advantage: float
    tpr_at_fpr: dict[float, float]
    roc_fpr: list[float]  # down-sampled, at most ROC_POINTS points, for plotting
    roc_tpr: list[float]
    n_reference_models: int | None = None
    details: dict[str, Any] = field(default_factory=dict)
    _full_fpr: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)
    _full_tpr: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)

    def tpr_at(self, fpr: float) -> float:
        """Largest TPR among thresholds whose FPR does not exceed ``fpr`` (full-resolution curve)."""
        check_fraction(fpr, f"{self.attack} result", "fpr", low=0, high=1, closed="neither")
        return _tpr_at(self._full_fpr, self._full_tpr, fpr)

    @property
    def fpr_resolution(self) -> float:
        """The smallest non-zero FPR this many non-members can measure; TPR at a lower FPR means 0 errors."""
        return 1.0 / self.n_non_members

    def to_dict(self) -> dict[str, Any]:
        return {
            "attack": self.attack,
            "model": self.model,
            "n_members": self.n_members,
            "n_non_members": self.n_non_members,
            "roc_auc": self.roc_auc,
            "advantage": self.advantage,
            "tpr_at_fpr": {f"{k:g}": v for k, v in self.tpr_at_fpr.items()},
            "fpr_resolution": self.fpr_resolution,
            "n_reference_models": self.n_reference_models,
            "roc_curve": {"fpr": self.roc_fpr, "tpr": self.roc_tpr},
            "details": self.details,
        }


def _roc(member_scores: np.ndarray, non_member_scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full ROC (one point per distinct threshold, ties grouped), higher score = predicted member."""
    scores = np.concatenate([member_scores, non_member_scores])
    labels = np.concatenate([np.ones(len(member_scores)), np.zeros(len(non_member_scores))])
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last_of_tie = np.r_[np.nonzero(np.diff(scores))[0], len(scores) - 1]
    tps = np.cumsum(labels)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    tpr = np.r_[0.0, tps / len(member_scores)]
    fpr = np.r_[0.0, fps / len(non_member_scores)]
    return fpr, tpr


def _tpr_at(fpr: np.ndarray, tpr: np.ndarray, target: float) -> float:
    allowed = fpr <= target + 1e-12
    return float(tpr[allowed].max()) if allowed.any() else 0.0


def _downsample(fpr: np.ndarray, tpr: np.ndarray, points: int) -> tuple[list[float], list[float]]:
    """Keep the ends and points spaced evenly on a log-FPR axis, so the low-FPR region stays visible."""
    if len(fpr) <= points:
        return round_list(fpr), round_list(tpr)
    positive = np.nonzero(fpr > 0)[0]
    keep = {0, len(fpr) - 1}
    if positive.size:
        targets = np.geomspace(fpr[positive[0]], 1.0, points - 2)
        keep.update(np.searchsorted(fpr, targets, side="right") - 1)
    idx = np.array(sorted(i for i in keep if 0 <= i < len(fpr)))
    return round_list(fpr[idx]), round_list(tpr[idx])


def attack_metrics(
    member_scores: np.ndarray,
    non_member_scores: np.ndarray,
    *,
    attack: str,
    model: str = "model",
    low_fprs: Sequence[float] = DEFAULT_LOW_FPRS,
    n_reference_models: int | None = None,
    details: dict[str, Any] | None = None,
) -> MIAResult:
    """AUC, advantage, TPR at each low FPR and the ROC curve from attack scores (higher = member)."""
    source = f"{attack} attack"
    member_scores = np.asarray(member_scores, dtype=np.float64)
    non_member_scores = np.asarray(non_member_scores, dtype=np.float64)
    if len(member_scores) == 0 or len(non_member_scores) == 0:
        raise input_error(
            source,
            "scores",
            "needs at least one member and one non-member",
            "evaluate on non-empty training and held-out sets",
        )
    if not (np.isfinite(member_scores).all() and np.isfinite(non_member_scores).all()):
        raise input_error(source, "scores", "attack scores must be finite", "check the model's outputs")
    for fpr in low_fprs:
        check_fraction(fpr, source, "low_fprs", low=0, high=1, closed="neither")
    fpr, tpr = _roc(member_scores, non_member_scores)
    auc = float(np.trapezoid(tpr, fpr))
    roc_fpr, roc_tpr = _downsample(fpr, tpr, ROC_POINTS)
    return MIAResult(
        attack=attack,
        model=model,
        n_members=len(member_scores),
        n_non_members=len(non_member_scores),
        roc_auc=auc,
        advantage=float(np.max(tpr - fpr)),
        tpr_at_fpr={float(f): _tpr_at(fpr, tpr, f) for f in low_fprs},
        roc_fpr=roc_fpr,
        roc_tpr=roc_tpr,
        n_reference_models=n_reference_models,
        details=details or {},
        _full_fpr=fpr,
        _full_tpr=tpr,
    )


def _balanced_sample(
    members: LabelledSplit,
    non_members: LabelledSplit,
    max_per_side: int | None,
    rng: np.random.Generator,
    source: str,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Equal numbers of members and non-members, so AUC and advantage are not skewed by class prevalence."""
    n = min(len(members.y), len(non_members.y))
    if max_per_side is not None:
        n = min(n, max_per_side)
    if n < 2:
        raise input_error(
            source,
            "members/non_members",
            f"{len(members.y)} members and {len(non_members.y)} non-members",
            "evaluate on at least 2 training and 2 held-out records",
        )
    m_idx = rng.choice(len(members.y), size=n, replace=False)
    n_idx = rng.choice(len(non_members.y), size=n, replace=False)
    classes = _n_classes(members)
    return (
        np.asarray(members.X)[m_idx],
        check_labels(members.y, source, classes)[m_idx],
        np.asarray(non_members.X)[n_idx],
        check_labels(non_members.y, source, classes)[n_idx],
    )


def _n_classes(split: LabelledSplit) -> int:
    """The label's number of classes: a TabularSplit says so; any other split is binary."""
    return int(getattr(split, "n_classes", 2))


def loss_threshold_attack(
    model: ProbabilisticModel,
    members: LabelledSplit,
    non_members: LabelledSplit,
    *,
    name: str = "model",
    max_per_side: int | None = 5000,
    low_fprs: Sequence[float] = DEFAULT_LOW_FPRS,
    seed: int = 0,
) -> MIAResult:
    """Loss-threshold attack: score = -cross-entropy of the true label (members = training records)."""
    rng = np.random.default_rng(seed)
    xm, ym, xn, yn = _balanced_sample(members, non_members, max_per_side, rng, "loss-threshold attack")
    member_scores = -cross_entropy(predict_scores(model, xm), ym)
    non_member_scores = -cross_entropy(predict_scores(model, xn), yn)
    return attack_metrics(
        member_scores,
        non_member_scores,
        attack="loss_threshold",
        model=name,
        low_fprs=low_fprs,
        details={"score": "negative cross-entropy of the true label"},
    )


def reference_partitions(
    n_pool: int,
    n_reference_models: int,
    *,
    reference_size: int | None,
    min_reference_size: int,
    target_size: int,
    source: str = "LiRA",
) -> int:
    """Size of each reference model's training set; raise if the pool cannot give every model its own data."""
    if n_reference_models < 1:
        raise input_error(
            source,
            "n_reference_models",
            f"{n_reference_models} reference models",
            "use at least 1 (or skip LiRA by setting evaluation.reference_models to 0)",
        )
    needed = n_reference_models * min_reference_size
    if n_pool < needed:
        affordable = n_pool // min_reference_size
        raise input_error(
            source,
            "n_reference_models",
            f"{n_reference_models} reference models on disjoint data need at least {n_reference_models} x "
            f"{min_reference_size} = {needed} records, but the reference pool has {n_pool}",
            f"lower evaluation.reference_models to at most {affordable} or supply a reference pool of "
            f"at least {needed} records disjoint from the training set",
        )
    size = reference_size if reference_size is not None else min(target_size, n_pool // n_reference_models)
    if size < min_reference_size or size * n_reference_models > n_pool:
        raise input_error(
            source,
            "reference_size",
            f"{n_reference_models} disjoint sets of {size} records do not fit in a pool of {n_pool} "
            f"(minimum {min_reference_size} each)",
            f"use a reference_size between {min_reference_size} and {n_pool // n_reference_models}",
        )
    return size


def lira_offline_attack(
    model: ProbabilisticModel,
    members: LabelledSplit,
    non_members: LabelledSplit,
    reference_pool: LabelledSplit,
    train_reference: Callable[[Any], ProbabilisticModel],
    n_reference_models: int,
    *,
    name: str = "model",
    reference_size: int | None = None,
    min_reference_size: int = 200,
    variance: Literal["auto", "global", "per_example"] = "auto",
    max_per_side: int | None = 5000,
    low_fprs: Sequence[float] = DEFAULT_LOW_FPRS,
    seed: int = 0,
) -> MIAResult:
    """Offline LiRA with ``n_reference_models`` reference models, each trained on its own disjoint slice.

    ``reference_pool`` must be disjoint from the target's training set AND from ``non_members`` (a reference
    model that saw a non-member would make it look like a member); e.g. the separate Adult test file.
    ``train_reference(split)`` should mimic the target's training (same architecture and, for a DP target,
    the same DP training): the split passed to it is of the same class as ``reference_pool``.

    With fewer than 32 reference models the per-example variance is unreliable, so ``variance="auto"``
    uses one variance pooled over all examples (Carlini et al. §VI-A); ranking by z-score is then the same
    as ranking by phi minus the reference mean.
    """
    source = "LiRA"
    n_pool = len(reference_pool.y)
    size = reference_partitions(
        n_pool,
        n_reference_models,
        reference_size=reference_size,
        min_reference_size=min_reference_size,
        target_size=len(members.y),
        source=source,
    )
    if variance not in ("auto", "global", "per_example"):
        raise input_error(source, "variance", f"unknown value '{variance}'", "use auto, global or per_example")
    if variance == "per_example" and n_reference_models < 2:
        raise input_error(
            source,
            "variance",
            "per-example variance needs at least 2 reference models",
            "use variance='global' or more reference models",
        )
    rng = np.random.default_rng(seed)
    xm, ym, xn, yn = _balanced_sample(members, non_members, max_per_side, rng, source)
    x_eval = np.concatenate([xm, xn])
    y_eval = np.concatenate([ym, yn])

    order = rng.permutation(n_pool)
    started = time.perf_counter()
    phi_ref = _reference_logits(reference_pool, order, size, n_reference_models, train_reference, x_eval, y_eval)
    training_seconds = time.perf_counter() - started
    phi_target = true_label_logit(predict_scores(model, x_eval), y_eval)
    scores, use_global = _lira_scores(phi_target, phi_ref, variance)
    n = len(ym)
    return attack_metrics(
        scores[:n],
        scores[n:],
        attack="lira_offline",
        model=name,
        low_fprs=low_fprs,
        n_reference_models=n_reference_models,
        details={
            "reference_size": size,
            "variance": "per_example" if not use_global and n_reference_models > 1 else "global",
            "reference_training_seconds": round(training_seconds, 2),
            "statistic": "phi = log(p_y / (1 - p_y)) of the true label; one-sided Gaussian test vs OUT models",
        },
    )


def _reference_logits(
    reference_pool: LabelledSplit,
    order: np.ndarray,
    size: int,
    n_reference_models: int,
    train_reference: Callable[[Any], ProbabilisticModel],
    x_eval: np.ndarray,
    y_eval: np.ndarray,
) -> np.ndarray:
    """phi of the true label under each reference model, each trained on its own disjoint slice of the pool."""
    source = "LiRA"
    classes = _n_classes(reference_pool)
    pool_x, pool_y = np.asarray(reference_pool.X), check_labels(reference_pool.y, source, classes)
    split_type = type(reference_pool)
    feature_names = getattr(reference_pool, "feature_names", ())
    # a multi-class split keeps its class count, so a reference model scores every class like the target
    extra = {"n_classes": classes} if classes > 2 else {}
    phi_ref = np.empty((n_reference_models, len(y_eval)))
    for i in range(n_reference_models):
        idx = order[i * size : (i + 1) * size]
        part = split_type(X=pool_x[idx], y=pool_y[idx], feature_names=tuple(feature_names), **extra)
        reference = train_reference(part)
        phi_ref[i] = true_label_logit(predict_scores(reference, x_eval), y_eval)
    return phi_ref


def _lira_scores(phi_target: np.ndarray, phi_ref: np.ndarray, variance: str) -> tuple[np.ndarray, bool]:
    """The one-sided Gaussian test against the OUT models, and whether one pooled variance was used."""
    n_reference_models = len(phi_ref)
    mean = phi_ref.mean(axis=0)
    use_global = variance == "global" or (variance == "auto" and n_reference_models < 32)
    if n_reference_models == 1:
        std = np.ones_like(mean)  # only the ranking matters, and it is phi - mean
    elif use_global:
        std = np.full_like(mean, np.sqrt(phi_ref.var(axis=0, ddof=1).mean()))
    else:
        std = phi_ref.std(axis=0, ddof=1)
    std = np.maximum(std, 1e-6)
    # One-sided test: members have phi above the OUT distribution. The log-probability that an OUT model is
    # at least this unconfident is the score; logcdf keeps resolution in the tail, where low FPR lives.
    return stats.norm.logcdf((phi_target - mean) / std), use_global


def partition_holdout(
    holdout: LabelledSplit, n_non_members: int, *, seed: int = 0
) -> tuple[LabelledSplit, LabelledSplit]:
    """Split one held-out set into evaluation non-members and a disjoint LiRA reference pool."""
    n = len(holdout.y)
    if not 2 <= n_non_members < n:
        raise input_error(
            "held-out split", "n_non_members", f"{n_non_members} of {n} held-out records", f"use between 2 and {n - 1}"
        )
    order = np.random.default_rng(seed).permutation(n)
    split_type = type(holdout)
    names = tuple(getattr(holdout, "feature_names", ()))
    X, y = np.asarray(holdout.X), np.asarray(holdout.y)
    first, rest = order[:n_non_members], order[n_non_members:]
    return (
        split_type(X=X[first], y=y[first], feature_names=names),
        split_type(X=X[rest], y=y[rest], feature_names=names),
    )


def check_mia_limits(max_auc: float, max_tpr_at_low_fpr: float, low_fpr: float, source: str = "policy") -> None:
    """The policy's attack limits must be meaningful: AUC in [0.5, 1], FPR in (0, 1), TPR in (0, 1]."""
    check_fraction(max_auc, source, "privacy.max_membership_inference_auc", low=0.5, high=1, closed="both")
    check_fraction(low_fpr, source, "privacy.low_fpr", low=0, high=1, closed="neither")
    check_fraction(
        max_tpr_at_low_fpr, source, "privacy.max_membership_inference_tpr_at_low_fpr", low=0, high=1, closed="high"
    )


def mia_verdicts(
    results: Sequence[MIAResult],
    *,
    max_auc: float,
    max_tpr_at_low_fpr: float,
    low_fpr: float,
    source: str = "policy",
) -> list[Verdict]:
    """Two verdicts per attack: AUC <= max_auc and TPR at ``low_fpr`` <= max_tpr_at_low_fpr."""
    check_mia_limits(max_auc, max_tpr_at_low_fpr, low_fpr, source)
    verdicts = []
    for result in results:
        label = f"{result.attack} on {result.model}"
        verdicts.append(
            Verdict.check(
                f"membership_inference_auc[{result.attack}]",
                result.roc_auc,
                max_auc,
                "<=",
                f"{label}: AUC over {result.n_members} members and {result.n_non_members} non-members",
            )
        )
        note = ""
        if low_fpr < result.fpr_resolution:
            note = f"; FPR {low_fpr:g} is below the resolution 1/{result.n_non_members} (0 false positives)"
        verdicts.append(
            Verdict.check(
                f"membership_inference_tpr_at_{low_fpr:g}_fpr[{result.attack}]",
                result.tpr_at(low_fpr),
                max_tpr_at_low_fpr,
                "<=",
                f"{label}: TPR at FPR {low_fpr:g}{note}",
            )
        )
    return verdicts


def strongest_attack(results: Sequence[MIAResult], *, low_fpr: float) -> dict[str, Any]:
    """The worst case over attacks, for the gate: the highest AUC and the highest TPR at ``low_fpr``, each with
    the attack that reached it (they can differ: loss attacks often win on AUC, LiRA at low FPR)."""
    if not results:
        raise input_error("membership inference", "results", "no attack results", "run at least one attack")
    check_fraction(low_fpr, "policy", "privacy.low_fpr", low=0, high=1, closed="neither")
    by_auc = max(results, key=lambda r: r.roc_auc)
    by_tpr = max(results, key=lambda r: r.tpr_at(low_fpr))
    return {
        "name": by_auc.attack if by_auc is by_tpr else f"{by_auc.attack} (AUC), {by_tpr.attack} (TPR)",
        "auc": by_auc.roc_auc,
        "auc_attack": by_auc.attack,
        "tpr_at_low_fpr": by_tpr.tpr_at(low_fpr),
        "tpr_attack": by_tpr.attack,
        "low_fpr": low_fpr,
        "model": by_auc.model,
    }


def write_roc_curves(results: Sequence[MIAResult], path: Path | str) -> Path:
    """Save the down-sampled ROC curves as one CSV (attack, model, fpr, tpr) for the report's plot."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["attack", "model", "fpr", "tpr"])
        for result in results:
            for fpr, tpr in zip(result.roc_fpr, result.roc_tpr, strict=True):
                writer.writerow([result.attack, result.model, fpr, tpr])
    return path
