"""Measurements the documents need that the gate does not: model curves, identifier-pattern scans of the release,
the ledger's history. Aggregates only (curve points, bin rates, counts), never a record."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pandas as pd

#: Value shapes of the Safe Harbor identifier classes that can be recognised in a value (45 CFR 164.514(b)(2)).
IDENTIFIER_PATTERNS = {
    "D": re.compile(r"^\+?\(?\d{3}\)?[-. ]?\d{3}[-. ]?\d{4}$"),  # telephone (NANP shape)
    "F": re.compile(r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$", re.IGNORECASE),  # e-mail
    "G": re.compile(r"^\d{3}-\d{2}-\d{4}$"),  # social security number
    "N": re.compile(r"^(https?://|www\.)", re.IGNORECASE),  # web URL
    "O": re.compile(r"^\d{1,3}(\.\d{1,3}){3}$"),  # IPv4 address
    "B": re.compile(r"^\d{5}(-\d{4})?$"),  # five-digit ZIP code
}


def identifier_pattern_scan(frame: pd.DataFrame) -> dict[str, Any]:
    """How many values of each released text column have the shape of a telephone number, e-mail, SSN, URL, IP
    address or five-digit ZIP: the check that shows those Safe Harbor classes absent from the release."""
    text = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c])]
    matches: dict[str, int] = dict.fromkeys(IDENTIFIER_PATTERNS, 0)
    columns_with_matches: dict[str, list[str]] = {key: [] for key in IDENTIFIER_PATTERNS}
    for column in text:
        values = pd.Series(frame[column].dropna().astype(str).unique())
        for key, pattern in IDENTIFIER_PATTERNS.items():
            found = int(values.str.match(pattern).sum())
            if found:
                matches[key] += found
                columns_with_matches[key].append(column)
    return {
        "columns_scanned": text,
        "values_scanned": int(sum(frame[c].nunique() for c in text)),
        "distinct_values_matching": matches,
        "columns_with_matches": columns_with_matches,
    }


def model_curves(y_true: np.ndarray, proba: np.ndarray, points: int = 101, bins: int = 10) -> dict[str, Any]:
    """ROC curve (at most ``points`` points) and a ``bins``-bin reliability diagram of a binary model on the test
    split, from its positive-class scores (``ServedModel.predict_proba``: shape (n,), or (n, 2)); a multi-class
    model gets none (per-class curves would need a choice of class the policy has not made)."""
    from sklearn.metrics import roc_curve

    proba = np.asarray(proba)
    if proba.ndim == 2 and proba.shape[1] == 2:
        proba = proba[:, 1]
    if proba.ndim != 1:  # (n, K) class probabilities of a multi-class model
        return {"binary": False}
    score = proba
    fpr, tpr, _ = roc_curve(y_true, score)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(points, len(fpr))).round().astype(int))
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(score, edges[1:-1]), 0, bins - 1)
    calibration = []
    for index in range(bins):
        mask = which == index
        if mask.any():
            calibration.append(
                {
                    "bin": [float(edges[index]), float(edges[index + 1])],
                    "mean_predicted": float(score[mask].mean()),
                    "observed_rate": float(np.asarray(y_true)[mask].mean()),
                    "count": int(mask.sum()),
                }
            )
    return {
        "binary": True,
        "roc": {"fpr": [round(float(v), 6) for v in fpr[keep]], "tpr": [round(float(v), 6) for v in tpr[keep]]},
        "calibration": calibration,
    }


def ledger_history(runs: list[Any]) -> list[dict[str, Any]]:
    """Every charged ledger run of the data set in time order, with the running sum of epsilon (basic
    composition: an upper bound of what the ledger's accountant composes, so it may over-count, never under)."""
    charged = sorted(
        (r for r in runs if r.kind in ("dp", "pure_dp") and r.status != "refused" and r.epsilon_charged is not None),
        key=lambda r: r.created_at,
    )
    total = 0.0
    history = []
    for run in charged:
        total += float(run.epsilon_charged)
        history.append(
            {
                "created_at": run.created_at.isoformat(),
                "kind": run.kind,
                "status": run.status,
                "epsilon": float(run.epsilon_charged),
                "cumulative_epsilon_basic": total,
                "dagster_run_id": run.dagster_run_id,
                "partitions": len(run.partitions),
            }
        )
    return history
