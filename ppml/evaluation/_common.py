"""Shared pieces of the evaluation engine: the verdict type, the model protocol and input checks.

Every gate the Dagster layer runs is a :class:`Verdict`: the measured value, the policy limit and whether it
passed, so an auditor reads the evidence rather than a bare boolean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from ppml.errors import input_error

# Probabilities are clipped away from 0 and 1 before logs: float32 softmax saturates near 1 - 6e-8.
PROBABILITY_FLOOR = 1e-7


@runtime_checkable
class ProbabilisticModel(Protocol):
    """Anything with ``predict_proba(X) -> P(y = 1)`` (or (n, K) class probabilities for K > 2 classes); the
    contract's ``TrainedModel`` is one."""

    def predict_proba(self, X: np.ndarray) -> np.ndarray: ...


@runtime_checkable
class LabelledSplit(Protocol):
    """The fields of the contract's ``TabularSplit`` this package reads."""

    X: np.ndarray
    y: np.ndarray


@dataclass(frozen=True)
class Verdict:
    """One policy requirement checked against one measurement.

    ``measured`` is None when the value could not be computed (e.g. a single-class test set); such a verdict
    fails, because a gate that cannot be evaluated must not promote a model.
    """

    requirement: str
    measured: float | None
    limit: float
    comparison: Literal["<=", ">="]
    passed: bool
    detail: str = ""

    @classmethod
    def check(
        cls,
        requirement: str,
        measured: float | None,
        limit: float,
        comparison: Literal["<=", ">="],
        detail: str = "",
    ) -> Verdict:
        if measured is None or not math.isfinite(measured):
            return cls(requirement, None, float(limit), comparison, False, detail or "not measurable")
        passed = measured <= limit if comparison == "<=" else measured >= limit
        return cls(requirement, float(measured), float(limit), comparison, bool(passed), detail)

    def to_dict(self) -> dict[str, Any]:
        return {
            "requirement": self.requirement,
            "measured": self.measured,
            "limit": self.limit,
            "comparison": self.comparison,
            "passed": self.passed,
            "detail": self.detail,
        }


def predict_positive(model: ProbabilisticModel, X: np.ndarray) -> np.ndarray:
    """P(y = 1) as float64 of shape (n,); accepts scikit-learn's (n, 2) output too."""
    p = np.asarray(model.predict_proba(X), dtype=np.float64)
    if p.ndim == 2 and p.shape[1] == 2:
        p = p[:, 1]
    if p.ndim != 1 or p.shape[0] != len(X):
        raise input_error(
            type(model).__name__,
            "predict_proba",
            f"returned shape {p.shape} for {len(X)} rows",
            "return P(y = 1) with shape (n,)",
        )
    return p


def predict_scores(model: ProbabilisticModel, X: np.ndarray) -> np.ndarray:
    """P(y = 1) with shape (n,) for a binary model, every class's probability (n, K) for a multi-class one."""
    p = np.asarray(model.predict_proba(X), dtype=np.float64)
    if p.ndim == 2 and p.shape[1] > 2 and p.shape[0] == len(X):
        return p
    return predict_positive(model, X)


def n_classes_of(p: np.ndarray) -> int:
    """The number of classes a prediction array scores: 2 for P(y = 1) of shape (n,), else its width."""
    return 2 if np.ndim(p) == 1 else int(np.shape(p)[1])


def _true_class_probability(p: np.ndarray, y: np.ndarray) -> np.ndarray:
    """p_y: the probability the model gives each record's true class (p is (n,) binary or (n, K))."""
    y = np.asarray(y, dtype=np.int64)
    if np.ndim(p) == 1:
        return np.where(y == 1, p, 1.0 - np.asarray(p))
    return np.asarray(p)[np.arange(len(y)), y]


def true_label_logit(p_positive: np.ndarray, y: np.ndarray) -> np.ndarray:
    """phi = log(p_y / (1 - p_y)) of the true label, the statistic LiRA models as Gaussian.

    ``p_positive`` is P(y = 1) of shape (n,) or, for a multi-class model, the (n, K) class probabilities: the
    statistic is then the true class's logit against all the others (Carlini et al. 2022 use the same).
    """
    if np.ndim(p_positive) == 2:
        p_y = np.clip(_true_class_probability(p_positive, y), PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
        return np.log(p_y) - np.log1p(-p_y)
    p = np.clip(p_positive, PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    logit = np.log(p) - np.log1p(-p)
    return np.where(np.asarray(y) == 1, logit, -logit)


def cross_entropy(p_positive: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-example cross-entropy from probabilities (clipped, so never infinite); (n,) binary or (n, K)."""
    if np.ndim(p_positive) == 2:
        return -np.log(np.clip(_true_class_probability(p_positive, y), PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR))
    p = np.clip(p_positive, PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    return -np.where(np.asarray(y) == 1, np.log(p), np.log1p(-p))


def check_labels(y: np.ndarray, source: str, n_classes: int = 2) -> np.ndarray:
    """Labels as int64: 0/1, or class indices 0..n_classes-1 of a multi-class label."""
    y = np.asarray(y)
    if n_classes > 2:
        if y.ndim != 1 or (y.size and not np.isin(y, np.arange(n_classes)).all()):
            raise input_error(
                source,
                "y",
                f"labels must be a 1-d array of class indices 0..{n_classes - 1}",
                "encode each class as its index in schema.label_values",
            )
        return y.astype(np.int64)
    if y.ndim != 1 or (y.size and not np.isin(y, (0, 1)).all()):
        raise input_error(source, "y", "labels must be a 1-d array of 0/1", "encode the label as 0/1")
    return y.astype(np.int64)


def check_fraction(value: float, source: str, field: str, *, low: float, high: float, closed: str) -> float:
    """Check ``value`` lies in an interval; ``closed`` is one of "both", "neither", "low", "high"."""
    value = float(value)
    low_ok = value >= low if closed in ("both", "low") else value > low
    high_ok = value <= high if closed in ("both", "high") else value < high
    if not (math.isfinite(value) and low_ok and high_ok):
        left = "[" if closed in ("both", "low") else "("
        right = "]" if closed in ("both", "high") else ")"
        raise input_error(
            source,
            field,
            f"{value} is outside {left}{low}, {high}{right}",
            f"set a value in {left}{low}, {high}{right}",
        )
    return value


def round_list(values: Sequence[float] | np.ndarray, digits: int = 6) -> list[float]:
    return [round(float(v), digits) for v in values]


def finite_or_none(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None
