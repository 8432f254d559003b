"""Lifecycle step 6, performance: utility metrics with bootstrap confidence intervals, per protected group.

A single accuracy number hides two things an auditor asks about: how uncertain it is (a test set of a few
thousand rows moves a point or two between resamples) and whom it fails (DP-SGD's clipping and noise cost
small groups more accuracy than large ones). So every metric carries a percentile bootstrap interval, and the
same metrics are broken down by each protected attribute with the worst-group gap.

The bootstrap is vectorised: a resample is a row of multiplicities (how often each record was drawn), and
every metric is a weighted sum over records, so all resamples are a few matrix products instead of a Python
loop. ROC AUC uses the weighted Mann-Whitney statistic over the distinct scores, which handles ties exactly.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import sparse

from ppml.errors import input_error
from ppml.evaluation._common import (
    LabelledSplit,
    ProbabilisticModel,
    check_fraction,
    check_labels,
    finite_or_none,
    predict_scores,
)

METRICS = ("accuracy", "balanced_accuracy", "roc_auc", "f1", "ece", "fpr", "fnr")
# Direction of each metric: for ECE and the error rates lower is better, for the others higher is better.
HIGHER_IS_BETTER = {
    "accuracy": True,
    "balanced_accuracy": True,
    "roc_auc": True,
    "f1": True,
    "ece": False,
    "fpr": False,
    "fnr": False,
}
#: Balanced accuracy and ROC AUC of every trivial predictor (a constant, or a score independent of the record).
TRIVIAL_LEVEL = 0.5


@dataclass(frozen=True)
class MetricEstimate:
    """A point estimate and its percentile bootstrap interval (None where undefined, e.g. one class only)."""

    value: float | None
    ci_low: float | None
    ci_high: float | None

    def to_dict(self) -> dict[str, float | None]:
        return {"value": self.value, "ci_low": self.ci_low, "ci_high": self.ci_high}


@dataclass(frozen=True)
class GroupMetrics:
    """Metrics of one group; ``metrics`` is empty when the group is below the reporting minimum."""

    n: int
    metrics: dict[str, MetricEstimate]
    reported: bool
    n_positive: int = 0  # binary: the positives; multi-class: the smallest class count
    class_counts: tuple[int, ...] = ()  # multi-class only: records per class

    def to_dict(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "reported": self.reported,
            "metrics": {name: m.to_dict() for name, m in self.metrics.items()},
        }


@dataclass(frozen=True)
class GroupBreakdown:
    """All groups of one protected attribute, with the gap between the best and worst reported group."""

    attribute: str
    groups: dict[str, GroupMetrics]
    worst_group: str | None  # by accuracy
    gaps: dict[str, float | None]  # best minus worst reported group, per metric (worst minus best for ECE)
    min_group_size: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "attribute": self.attribute,
            "worst_group": self.worst_group,
            "gaps": self.gaps,
            "min_group_size": self.min_group_size,
            "groups": {name: g.to_dict() for name, g in self.groups.items()},
        }


@dataclass(frozen=True)
class UtilityReport:
    """Utility of one model on one labelled set; aggregates only, safe for metadata and evidence.json.

    A multi-class report (``n_classes`` > 2) holds the macro metrics (docs/evaluation.md); its ``positive_rate``
    is the largest class's share and ``class_shares`` every class's.
    """

    model: str
    n: int
    positive_rate: float
    threshold: float
    confidence: float
    n_resamples: int
    metrics: dict[str, MetricEstimate]
    groups: dict[str, GroupBreakdown] = field(default_factory=dict)
    n_classes: int = 2
    class_shares: tuple[float, ...] = ()

    @property
    def trivial_balanced_accuracy(self) -> float:
        """Balanced accuracy of every record-independent predictor: 1/K (0.5 for a binary label)."""
        return 1.0 / self.n_classes

    def value(self, metric: str) -> float | None:
        return self.metrics[metric].value

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "n": self.n,
            "positive_rate": self.positive_rate,
            "threshold": self.threshold,
            "confidence": self.confidence,
            "n_resamples": self.n_resamples,
            "n_classes": self.n_classes,
            **({"class_shares": list(self.class_shares)} if self.class_shares else {}),
            "metrics": {name: m.to_dict() for name, m in self.metrics.items()},
            "groups": {name: g.to_dict() for name, g in self.groups.items()},
        }


@dataclass(frozen=True)
class ModelComparison:
    """The DP model next to the non-private baseline: overall deltas and per-group accuracy drops."""

    model: str
    baseline: str
    deltas: dict[str, float | None]  # model minus baseline, per metric
    accuracy_gap: float | None  # baseline accuracy minus model accuracy (the cost of privacy)
    group_accuracy_drops: dict[str, dict[str, float]]  # attribute -> group -> baseline minus model accuracy
    largest_group_drop: float | None
    largest_group_drop_at: str | None  # "attribute=group"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "baseline": self.baseline,
            "deltas": self.deltas,
            "accuracy_gap": self.accuracy_gap,
            "group_accuracy_drops": self.group_accuracy_drops,
            "largest_group_drop": self.largest_group_drop,
            "largest_group_drop_at": self.largest_group_drop_at,
        }


def _metric_matrix(
    weights: np.ndarray, y: np.ndarray, p: np.ndarray, threshold: float, n_bins: int
) -> dict[str, np.ndarray]:
    """Every metric for every row of ``weights`` (shape (k, n): multiplicity of each record in a resample)."""
    positive = y == 1
    predicted = p >= threshold
    correct = predicted == positive
    total = weights.sum(axis=1)
    tp = weights @ (predicted & positive).astype(np.float64)
    fp = weights @ (predicted & ~positive).astype(np.float64)
    fn = weights @ (~predicted & positive).astype(np.float64)
    tn = total - tp - fp - fn
    with np.errstate(divide="ignore", invalid="ignore"):
        accuracy = (tp + tn) / total
        balanced = 0.5 * (tp / (tp + fn) + tn / (tn + fp))
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
        fpr = fp / (fp + tn)
        fnr = fn / (fn + tp)

    # Expected calibration error (Guo et al. 2017): top-label confidence in equal-width bins.
    confidence = np.where(predicted, p, 1 - p)
    bins = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    onehot = sparse.csr_matrix((np.ones(len(p)), (np.arange(len(p)), bins)), shape=(len(p), n_bins))
    conf_sum = np.asarray((onehot.multiply(confidence[:, None]).T @ weights.T).T)
    correct_sum = np.asarray((onehot.multiply(correct[:, None].astype(np.float64)).T @ weights.T).T)
    with np.errstate(divide="ignore", invalid="ignore"):
        ece = np.abs(correct_sum - conf_sum).sum(axis=1) / total

    auc = _weighted_auc(weights, positive, p)
    return {
        "accuracy": accuracy,
        "balanced_accuracy": balanced,
        "roc_auc": auc,
        "f1": f1,
        "ece": ece,
        "fpr": fpr,
        "fnr": fnr,
    }


def _weighted_auc(weights: np.ndarray, positive: np.ndarray, p: np.ndarray) -> np.ndarray:
    """ROC AUC as the weighted Mann-Whitney U over distinct scores (ties count one half), per row of weights."""
    unique, inverse = np.unique(p, return_inverse=True)
    rows = np.arange(len(p))
    pos_map = sparse.csr_matrix((positive.astype(np.float64), (rows, inverse)), shape=(len(p), len(unique)))
    neg_map = sparse.csr_matrix(((~positive).astype(np.float64), (rows, inverse)), shape=(len(p), len(unique)))
    w_pos = np.asarray((pos_map.T @ weights.T).T)
    w_neg = np.asarray((neg_map.T @ weights.T).T)
    neg_below = np.cumsum(w_neg, axis=1) - w_neg
    with np.errstate(divide="ignore", invalid="ignore"):
        return (w_pos * (neg_below + 0.5 * w_neg)).sum(axis=1) / (w_pos.sum(axis=1) * w_neg.sum(axis=1))


def _multiclass_metric_matrix(weights: np.ndarray, y: np.ndarray, P: np.ndarray, n_bins: int) -> dict[str, np.ndarray]:
    """The K-class metrics for every row of ``weights``: arg-max accuracy; balanced accuracy = mean recall;
    macro F1; one-vs-rest macro ROC AUC; top-label ECE; macro FPR and FNR (one-vs-rest, averaged over classes).

    Macro averages run over the classes present in the (resampled) set, as scikit-learn's do over the labels
    it is given: a class with no record in a resample has no recall.
    """
    predicted = P.argmax(axis=1)
    total = weights.sum(axis=1)
    correct = predicted == y
    recall, f1, fpr, auc = [], [], [], []
    for c in range(P.shape[1]):
        actual, said = y == c, predicted == c
        support = weights @ actual.astype(np.float64)
        claimed = weights @ said.astype(np.float64)
        tp = weights @ (actual & said).astype(np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            recall.append(np.where(support > 0, tp / support, np.nan))
            f1.append(np.where(support > 0, 2 * tp / (support + claimed), np.nan))
            fpr.append(np.where(support > 0, (claimed - tp) / (total - support), np.nan))
        auc.append(np.where(support > 0, _weighted_auc(weights, actual, P[:, c]), np.nan))
    confidence = P.max(axis=1)
    bins = np.minimum((confidence * n_bins).astype(np.int64), n_bins - 1)
    onehot = sparse.csr_matrix((np.ones(len(y)), (np.arange(len(y)), bins)), shape=(len(y), n_bins))
    conf_sum = np.asarray((onehot.multiply(confidence[:, None]).T @ weights.T).T)
    correct_sum = np.asarray((onehot.multiply(correct[:, None].astype(np.float64)).T @ weights.T).T)
    with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample without any present class: NaN, dropped
        balanced = np.nanmean(np.vstack(recall), axis=0)
        return {
            "accuracy": (weights @ correct.astype(np.float64)) / total,
            "balanced_accuracy": balanced,
            "roc_auc": np.nanmean(np.vstack(auc), axis=0),
            "f1": np.nanmean(np.vstack(f1), axis=0),
            "ece": np.abs(correct_sum - conf_sum).sum(axis=1) / total,
            "fpr": np.nanmean(np.vstack(fpr), axis=0),
            "fnr": 1.0 - balanced,
        }


def _bootstrap_weights(n: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    draws = rng.integers(0, n, size=(n_resamples, n))
    flat = (np.arange(n_resamples)[:, None] * n + draws).ravel()
    return np.bincount(flat, minlength=n_resamples * n).reshape(n_resamples, n).astype(np.float64)


def _estimates(
    y: np.ndarray,
    p: np.ndarray,
    *,
    threshold: float,
    n_resamples: int,
    confidence: float,
    rng: np.random.Generator,
    n_bins: int,
) -> dict[str, MetricEstimate]:
    def matrix(weights: np.ndarray) -> dict[str, np.ndarray]:
        if p.ndim == 2:
            return _multiclass_metric_matrix(weights, y, p, n_bins)
        return _metric_matrix(weights, y, p, threshold, n_bins)

    point = matrix(np.ones((1, len(y))))
    if n_resamples > 0:
        boot = matrix(_bootstrap_weights(len(y), n_resamples, rng))
    alpha = 1 - confidence
    out: dict[str, MetricEstimate] = {}
    for name in METRICS:
        value = finite_or_none(point[name][0])
        low = high = None
        if n_resamples > 0 and value is not None:
            samples = boot[name][np.isfinite(boot[name])]
            if samples.size:
                low, high = (float(q) for q in np.quantile(samples, [alpha / 2, 1 - alpha / 2]))
        out[name] = MetricEstimate(value, low, high)
    return out


def _gap(values: list[float], metric: str) -> float:
    return (max(values) - min(values)) if values else float("nan")


def utility_report(
    y_true: np.ndarray,
    y_prob: np.ndarray,
    *,
    model: str = "model",
    groups: Mapping[str, Sequence[Any] | np.ndarray] | None = None,
    threshold: float = 0.5,
    n_resamples: int = 300,
    confidence: float = 0.95,
    min_group_size: int = 30,
    n_bins: int = 15,
    seed: int = 0,
) -> UtilityReport:
    """Metrics with bootstrap intervals, overall and for each group of each protected attribute.

    ``groups`` maps an attribute name to one group label per record. Groups smaller than ``min_group_size``
    are listed with their size only: metrics on a handful of people are noise and can single them out.
    """
    source = f"utility report '{model}'"
    y, p, n_classes = _checked_scores(y_true, y_prob, source)
    check_fraction(threshold, source, "threshold", low=0, high=1, closed="neither")
    check_fraction(confidence, source, "confidence", low=0, high=1, closed="neither")
    if n_resamples < 0:
        raise input_error(source, "n_resamples", f"{n_resamples} is negative", "use 0 (no intervals) or more")
    rng = np.random.default_rng(seed)
    kwargs = {"threshold": threshold, "n_resamples": n_resamples, "confidence": confidence, "n_bins": n_bins}
    overall = _estimates(y, p, rng=rng, **kwargs)
    breakdowns = {  # after the overall estimates: the bootstrap draws follow in this order
        attribute: _group_breakdown(attribute, labels, y, p, n_classes, min_group_size, source, rng, kwargs)
        for attribute, labels in (groups or {}).items()
    }

    shares = np.bincount(y, minlength=n_classes) / len(y)
    return UtilityReport(
        model=model,
        n=len(y),
        positive_rate=float(y.mean()) if n_classes == 2 else float(shares.max()),
        n_classes=n_classes,
        class_shares=tuple(float(v) for v in shares) if n_classes > 2 else (),
        threshold=threshold,
        confidence=confidence,
        n_resamples=n_resamples,
        metrics=overall,
        groups=breakdowns,
    )


def _checked_scores(y_true: np.ndarray, y_prob: np.ndarray, source: str) -> tuple[np.ndarray, np.ndarray, int]:
    """Labels and scores checked against each other: (y, P(y = 1) of shape (n,) or class probabilities (n, K), K)."""
    p = np.asarray(y_prob, dtype=np.float64)
    n_classes = p.shape[1] if p.ndim == 2 and p.shape[1] > 2 else 2
    p = p if n_classes > 2 else p.reshape(-1)
    y = check_labels(y_true, source, n_classes)
    if len(p) != len(y) or len(y) == 0:
        raise input_error(
            source, "y_prob", f"{len(p)} probabilities for {len(y)} labels", "pass one probability per labelled record"
        )
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise input_error(
            source, "y_prob", "probabilities must be finite and in [0, 1]", "pass P(y = 1) from predict_proba"
        )
    if n_classes > 2 and not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
        raise input_error(
            source, "y_prob", "class probabilities do not sum to 1 per record", "pass softmax outputs (n, K)"
        )
    return y, p, n_classes


def _group_breakdown(
    attribute: str,
    labels: Sequence[Any] | np.ndarray,
    y: np.ndarray,
    p: np.ndarray,
    n_classes: int,
    min_group_size: int,
    source: str,
    rng: np.random.Generator,
    kwargs: dict[str, Any],
) -> GroupBreakdown:
    """Metrics per group of one protected attribute; groups under ``min_group_size`` are listed by size only."""
    labels = np.asarray(labels, dtype=object)
    if len(labels) != len(y):
        raise input_error(
            source,
            f"groups.{attribute}",
            f"{len(labels)} group labels for {len(y)} records",
            "pass one group label per test record",
        )
    labels = np.array(["(missing)" if v is None or v != v else str(v) for v in labels], dtype=object)
    per_group: dict[str, GroupMetrics] = {}
    for name in sorted(set(labels)):
        mask = labels == name
        size = int(mask.sum())
        if size < min_group_size:
            per_group[name] = GroupMetrics(size, {}, reported=False)
            continue
        estimates = _estimates(y[mask], p[mask], rng=rng, **kwargs)
        counts = np.bincount(y[mask], minlength=n_classes)
        per_group[name] = GroupMetrics(
            size,
            estimates,
            reported=True,
            n_positive=int(counts[1]) if n_classes == 2 else int(counts.min()),
            class_counts=tuple(int(c) for c in counts) if n_classes > 2 else (),
        )
    reported = {k: g for k, g in per_group.items() if g.reported}
    gaps: dict[str, float | None] = {}
    for metric in METRICS:
        values = [g.metrics[metric].value for g in reported.values() if g.metrics[metric].value is not None]
        gaps[metric] = finite_or_none(_gap(values, metric)) if len(values) >= 2 else None
    accuracies = {k: g.metrics["accuracy"].value for k, g in reported.items()}
    worst = min(accuracies, key=lambda k: accuracies[k]) if accuracies else None
    return GroupBreakdown(attribute, per_group, worst, gaps, min_group_size)


def evaluate_utility(
    model: ProbabilisticModel,
    split: LabelledSplit,
    *,
    name: str = "model",
    groups: Mapping[str, Sequence[Any] | np.ndarray] | None = None,
    **kwargs: Any,
) -> UtilityReport:
    """:func:`utility_report` of a trained model on a labelled split (e.g. the held-out test split)."""
    return utility_report(split.y, predict_scores(model, split.X), model=name, groups=groups, **kwargs)


def compare_models(model: UtilityReport, baseline: UtilityReport) -> ModelComparison:
    """The private model next to the non-private baseline: what privacy cost, overall and per group."""
    deltas = {}
    for metric in METRICS:
        a, b = model.value(metric), baseline.value(metric)
        deltas[metric] = None if a is None or b is None else a - b
    acc, base_acc = model.value("accuracy"), baseline.value("accuracy")
    drops: dict[str, dict[str, float]] = {}
    largest, largest_at = None, None
    for attribute, breakdown in model.groups.items():
        other = baseline.groups.get(attribute)
        if other is None:
            continue
        drops[attribute] = {}
        for group, metrics in breakdown.groups.items():
            base_group = other.groups.get(group)
            if not (metrics.reported and base_group is not None and base_group.reported):
                continue
            drop = base_group.metrics["accuracy"].value - metrics.metrics["accuracy"].value
            drops[attribute][group] = drop
            if largest is None or drop > largest:
                largest, largest_at = drop, f"{attribute}={group}"
    return ModelComparison(
        model=model.model,
        baseline=baseline.model,
        deltas=deltas,
        accuracy_gap=None if acc is None or base_acc is None else base_acc - acc,
        group_accuracy_drops=drops,
        largest_group_drop=largest,
        largest_group_drop_at=largest_at,
    )


def __getattr__(name: str) -> Any:
    """The verdicts moved to :mod:`ppml.evaluation.objectives`; still importable from here for this session's other
    branches (lazily: that module imports this one)."""
    if name in _MOVED_TO_OBJECTIVES:
        from ppml.evaluation import objectives

        return getattr(objectives, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_MOVED_TO_OBJECTIVES = (
    "GAP_KEYS",
    "OBJECTIVE_KEYS",
    "objective_warnings",
    "trivial_margin_verdicts",
    "trivial_predictor",
    "utility_verdicts",
)
