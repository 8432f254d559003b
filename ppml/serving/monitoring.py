"""Monitoring the served model over its prediction log: input and prediction drift, accuracy once labels arrive,
per-group accuracy, and the served version's age -- aggregates only.

The model was trained on *released* features (generalized labels and bins), and the log holds every request in
exactly that form, so input drift compares like with like: per input column, the PSI of the served labels
against the label counts of the version's own training split (recorded in its serving spec at training time).
Prediction drift compares the served scores with the scores the evaluation measured on the test split (recorded
with the training run by ``model_evaluation``). Nothing personal leaves the log: only counts, rates and PSI, and
a group smaller than ``monitoring.min_group_rows`` is suppressed (its count is not shown either).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ppml.errors import PPMLError
from ppml.monitoring import population_stability_index

SCORE_ARTIFACT = "serving/evaluation_scores.json"
SCORE_BINS = 10  # equal-width bins of P(positive) on [0, 1]
REEVALUATE, RETRAIN = "reevaluate", "retrain"
_ISO_DAY = re.compile(r"\d{4}-\d{2}-\d{2}")


def input_reference(X: np.ndarray, feature_names: Sequence[str]) -> dict[str, Any]:
    """Per input column, the count of each released label in the training split (from its one-hot matrix)."""
    totals = np.asarray(X, dtype=np.float64).sum(axis=0)
    counts: dict[str, dict[str, int]] = {}
    for name, total in zip(feature_names, totals, strict=True):
        column, one_hot, label = name.partition("=")
        if not one_hot:  # not a released label (the served models are one-hot only; nothing to compare)
            continue
        counts.setdefault(column, {})[label] = round(float(total))
    return {"rows": len(X), "counts": counts}


def score_bin(score: float) -> str:
    return str(min(int(float(score) * SCORE_BINS), SCORE_BINS - 1))


def score_reference(scores: Iterable[float]) -> dict[str, Any]:
    """The evaluation's score distribution: counts per tenth of [0, 1] and the share predicted positive."""
    values = [float(s) for s in scores]
    if not values:
        raise PPMLError("model_evaluation: field 'test split': no scores to record; fix: evaluate on a test split")
    counts = Counter(score_bin(s) for s in values)
    return {
        "rows": len(values),
        "bins": SCORE_BINS,
        "counts": {b: int(counts.get(b, 0)) for b in map(str, range(SCORE_BINS))},
        "positive_rate": float(np.mean([s >= 0.5 for s in values])),
    }


def log_score_reference(client: Any, run_id: str, reference: Mapping[str, Any]) -> None:
    """Store the evaluation's score distribution with the training run, beside its serving spec."""
    client.log_dict(run_id, dict(reference), SCORE_ARTIFACT)


def load_score_reference(client: Any, run_id: str) -> dict[str, Any] | None:
    """The recorded score distribution, or None when the version was not evaluated since ppml recorded it."""
    try:
        with tempfile.TemporaryDirectory(prefix="ppml-scores-") as scratch:
            return dict(json.loads(Path(client.download_artifacts(run_id, SCORE_ARTIFACT, scratch)).read_text()))
    except Exception:  # MLflow raises many kinds for a missing artifact
        return None


@dataclass
class LogAggregates:
    """What monitoring keeps of the log rows of one served version: counts only, never a row."""

    rows: int = 0
    labels: dict[str, Counter] = field(default_factory=dict)
    scores: Counter = field(default_factory=Counter)
    positives: int = 0
    feedback: int = 0
    correct: int = 0
    groups: dict[tuple[str, str], list[int]] = field(default_factory=dict)  # (attribute, group) -> [n, correct]
    first_at: datetime | None = None
    last_at: datetime | None = None

    def add(
        self,
        released: Mapping[str, str],
        score: float,
        predicted: int,
        feedback: int | None,
        protected: Sequence[str],
        created_at: datetime | None = None,
    ) -> None:
        self.rows += 1
        for column, label in released.items():
            self.labels.setdefault(column, Counter())[label] += 1
        self.scores[score_bin(score)] += 1
        self.positives += int(predicted)
        if created_at is not None:
            self.first_at = min(self.first_at or created_at, created_at)
            self.last_at = max(self.last_at or created_at, created_at)
        if feedback is None:
            return
        hit = int(int(predicted) == int(feedback))
        self.feedback += 1
        self.correct += hit
        for attribute in protected:
            if attribute in released:
                cell = self.groups.setdefault((attribute, released[attribute]), [0, 0])
                cell[0] += 1
                cell[1] += hit


@dataclass(frozen=True)
class MonitoringSettings:
    """The policy's thresholds (``monitoring`` section) and the accuracy objective the gate applies."""

    input_psi_threshold: float
    prediction_psi_threshold: float
    min_serving_rows: int
    min_feedback_rows: int
    min_group_rows: int
    max_model_age_days: float
    min_accuracy: float

    @classmethod
    def from_policy(cls, policy: Any) -> MonitoringSettings:
        monitoring = policy.monitoring
        return cls(
            input_psi_threshold=monitoring.drift_psi_threshold,
            prediction_psi_threshold=monitoring.prediction_psi_threshold,
            min_serving_rows=monitoring.min_serving_rows,
            min_feedback_rows=monitoring.min_feedback_rows,
            min_group_rows=monitoring.min_group_rows,
            max_model_age_days=monitoring.max_model_age_days,
            min_accuracy=policy.objectives.min_accuracy,
        )


def _input_drift(aggregates: LogAggregates, reference: Mapping[str, Any], threshold: float) -> dict[str, Any]:
    psi = {
        column: round(population_stability_index(expected, dict(aggregates.labels.get(column, {}))), 6)
        for column, expected in sorted(reference["counts"].items())
    }
    drifted = sorted(column for column, value in psi.items() if value > threshold)
    return {
        "psi": psi,
        "max_psi": max(psi.values(), default=0.0),
        "threshold": threshold,
        "drifted_features": drifted,
        "reference_rows": int(reference["rows"]),
    }


def _prediction_drift(aggregates: LogAggregates, reference: Mapping[str, Any] | None, threshold: float) -> dict:
    served_rate = aggregates.positives / aggregates.rows if aggregates.rows else None
    if reference is None:
        return {"status": "no evaluation scores recorded for this version", "served_positive_rate": served_rate}
    psi = round(population_stability_index(reference["counts"], dict(aggregates.scores)), 6)
    return {
        "status": "drifted" if psi > threshold else "stable",
        "psi": psi,
        "threshold": threshold,
        "served_positive_rate": round(served_rate, 4) if served_rate is not None else None,
        "evaluation_positive_rate": round(float(reference["positive_rate"]), 4),
        "evaluation_rows": int(reference["rows"]),
    }


def _accuracy(aggregates: LogAggregates, settings: MonitoringSettings) -> dict[str, Any]:
    """Accuracy on the predictions whose true label arrived, with per-group accuracy; small cells suppressed."""
    if aggregates.feedback < settings.min_feedback_rows:
        return {
            "status": f"not enough feedback ({aggregates.feedback} labels < {settings.min_feedback_rows})",
            "labels": aggregates.feedback,
            "accuracy": None,
            "groups": [],
        }
    groups, suppressed = [], 0
    for (attribute, group), (n, correct) in sorted(aggregates.groups.items()):
        if n < settings.min_group_rows:
            suppressed += 1
            continue
        groups.append({"attribute": attribute, "group": group, "n": n, "accuracy": round(correct / n, 4)})
    accuracy = aggregates.correct / aggregates.feedback
    return {
        "status": "below objective" if accuracy < settings.min_accuracy else "meets objective",
        "labels": aggregates.feedback,
        "accuracy": round(accuracy, 4),
        "min_accuracy": settings.min_accuracy,
        "groups": groups,
        "groups_suppressed": suppressed,
        "min_group_rows": settings.min_group_rows,
    }


def monitoring_report(
    aggregates: LogAggregates,
    input_ref: Mapping[str, Any],
    score_ref: Mapping[str, Any] | None,
    settings: MonitoringSettings,
    age_days: float,
) -> dict[str, Any]:
    """Every monitoring verdict for one served version, and the actions they call for (``reevaluate`` on input or
    prediction drift, ``retrain`` on accuracy below the objective or a version older than the policy allows)."""
    enough = aggregates.rows >= settings.min_serving_rows
    report: dict[str, Any] = {
        "rows": aggregates.rows,
        "min_serving_rows": settings.min_serving_rows,
        "first_at": aggregates.first_at.isoformat() if aggregates.first_at else None,
        "last_at": aggregates.last_at.isoformat() if aggregates.last_at else None,
        "input_drift": _input_drift(aggregates, input_ref, settings.input_psi_threshold) if enough else None,
        "prediction_drift": (
            _prediction_drift(aggregates, score_ref, settings.prediction_psi_threshold) if enough else None
        ),
        "accuracy": _accuracy(aggregates, settings),
        "age": {
            "days": round(age_days, 3),
            "max_days": settings.max_model_age_days,
            "status": "too old" if age_days > settings.max_model_age_days else "ok",
        },
    }
    if not enough:
        report["drift_status"] = f"not enough predictions ({aggregates.rows} rows < {settings.min_serving_rows})"
    reasons: dict[str, list[str]] = {REEVALUATE: [], RETRAIN: []}
    if enough and report["input_drift"]["drifted_features"]:
        reasons[REEVALUATE].append(f"input drift in {', '.join(report['input_drift']['drifted_features'])}")
    if enough and report["prediction_drift"].get("status") == "drifted":
        reasons[REEVALUATE].append(f"prediction drift (PSI {report['prediction_drift']['psi']:.3f})")
    if report["accuracy"]["status"] == "below objective":
        reasons[RETRAIN].append(f"accuracy {report['accuracy']['accuracy']:.3f} < {settings.min_accuracy}")
    if report["age"]["status"] == "too old":
        reasons[RETRAIN].append(f"served for {age_days:.1f} days > {settings.max_model_age_days}")
    report["actions"] = {action: why for action, why in reasons.items() if why}
    return report


def input_reference_of(spec: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The training split's label counts recorded in a serving spec, refused in one line when it predates them."""
    reference = spec.get("reference")
    if not isinstance(reference, dict) or "counts" not in reference:
        raise PPMLError(
            f"{source}: field 'serving/preprocessing.json reference': the serving spec has no training "
            "distribution (trained before ppml recorded it); fix: retrain (materialize dp_model) and promote"
        )
    return reference


def aggregate_log(log: Any, model_name: str, version: str, since: datetime, protected: Sequence[str]) -> LogAggregates:
    """Fold one served version's log rows into counts (streamed: the rows are never held together)."""
    aggregates = LogAggregates()
    for released, score, predicted, feedback, created_at in log.served_rows(model_name, version, since):
        if created_at is not None and created_at.tzinfo is None:  # SQLite returns UTC without the zone
            created_at = created_at.replace(tzinfo=UTC)
        aggregates.add(json.loads(released), score, predicted, feedback, protected, created_at)
    return aggregates


def trained_as_of(tags: Mapping[str, str]) -> str | None:
    """The as-of day a training run's lineage tags name (``ppml.partitions`` "as-of D (N days)" or a window)."""
    for key in ("ppml.window", "ppml.partitions"):
        days = _ISO_DAY.findall(tags.get(key, ""))
        if days:
            return days[-1]
    return None


def monitor_production(client: Any, log: Any, policy: Any, now: datetime | None = None) -> dict[str, Any]:
    """The monitoring report of the version in production now: its log rows of the policy's serving window
    against the references recorded with its training run, plus its age (since it was registered)."""
    from ppml.serving.registry import production_version
    from ppml.serving.spec import load_serving_spec

    now = now or datetime.now(UTC)
    model_name = f"ppml-{policy.name}"
    version = production_version(client, model_name)
    if version is None:
        raise PPMLError(
            f"MLflow registry: field '{model_name}@production': no version is in production, so nothing is "
            "served to monitor; fix: promote a version (ppml run) and serve it (ppml serve)"
        )
    registered = client.get_model_version(model_name, version)
    source = f"{model_name} v{version}"
    spec = load_serving_spec(client, registered.run_id, source)
    since = now - timedelta(days=policy.monitoring.serving_window_days)
    protected = list(policy.schema_.protected_attributes)
    aggregates = aggregate_log(log, model_name, str(version), since, protected)
    registered_at = datetime.fromtimestamp(registered.creation_timestamp / 1000, tz=UTC)
    report = monitoring_report(
        aggregates,
        input_reference_of(spec, source),
        load_score_reference(client, registered.run_id),
        MonitoringSettings.from_policy(policy),
        (now - registered_at).total_seconds() / 86400,
    )
    run_tags = client.get_run(registered.run_id).data.tags
    return {
        "model_name": model_name,
        "model_version": str(version),
        "trained_as_of": trained_as_of(run_tags),
        "window_days": policy.monitoring.serving_window_days,
        "window_start": since.isoformat(),
        "evaluated_at": now.isoformat(),
        **report,
    }
