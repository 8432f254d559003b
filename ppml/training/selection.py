"""Choosing among trained candidates: validation scores, the balanced-accuracy shift, the best candidate.

Everything here is post-processing of DP outputs (the trained candidates and the noisy class count); the choice
looks at the validation split only, never at test.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ppml.training.config import DPConfig, TrainingConfig
from ppml.training.data import TabularSplit
from ppml.training.trained_model import TrainedModel


@dataclass
class CandidateResult:
    """One trained candidate configuration."""

    index: int
    config: TrainingConfig
    dp: DPConfig
    ledger_run_id: str
    mlflow_run_id: str | None
    model: TrainedModel
    validation_accuracy: float | None
    validation_auc: float | None
    resumed_from_step: int | None
    validation_balanced_accuracy: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "model": self.config.model.describe(),
            "ledger_run_id": self.ledger_run_id,
            "mlflow_run_id": self.mlflow_run_id,
            "epsilon": self.model.epsilon,
            "delta": self.model.delta,
            "noise_multiplier": self.model.noise_multiplier,
            "sample_rate": self.model.sample_rate,
            "steps": self.model.steps,
            "validation_accuracy": self.validation_accuracy,
            "validation_auc": self.validation_auc,
            "validation_balanced_accuracy": self.validation_balanced_accuracy,
            "target_epsilon": self.dp.target_epsilon,
            "resumed_from_step": self.resumed_from_step,
            "config": self.config.to_params(),
        }


def validation_scores(model: TrainedModel, validation: TabularSplit) -> dict[str, float | None]:
    """Accuracy, ROC AUC and balanced accuracy (threshold 0.5) of the final model on the validation split.

    Multi-class: the arg-max class, the mean recall over the classes present, and the one-vs-rest macro ROC AUC.
    """
    proba = model.predict_proba(validation.X)
    if proba.ndim == 2:
        return _multiclass_scores(proba, validation.y)
    predicted = proba >= 0.5
    y = validation.y.astype(bool)
    accuracy = float((predicted == y).mean()) if y.size else None
    rates = [float(predicted[y == label].mean()) if (y == label).any() else None for label in (True, False)]
    balanced = None if None in rates else 0.5 * (rates[0] + 1.0 - rates[1])  # type: ignore[operator]
    auc = None
    if y.any() and not y.all():
        from sklearn.metrics import roc_auc_score

        auc = float(roc_auc_score(y, proba))
    return {"accuracy": accuracy, "auc": auc, "balanced_accuracy": balanced}


def _multiclass_scores(proba: np.ndarray, y: np.ndarray) -> dict[str, float | None]:
    from sklearn.metrics import roc_auc_score

    if not y.size:
        return {"accuracy": None, "auc": None, "balanced_accuracy": None}
    predicted = proba.argmax(axis=1)
    present = [c for c in range(proba.shape[1]) if (y == c).any()]
    recalls = [float((predicted[y == c] == c).mean()) for c in present]
    aucs = [float(roc_auc_score(y == c, proba[:, c])) for c in present if not (y == c).all()]
    return {
        "accuracy": float((predicted == y).mean()),
        "auc": float(np.mean(aucs)) if aucs else None,
        "balanced_accuracy": float(np.mean(recalls)) if len(present) >= 2 else None,
    }


def balanced_at_mean_prediction(
    result: CandidateResult, mean_prediction: float | np.ndarray, validation: TabularSplit
) -> CandidateResult:
    """Post-processing for balanced accuracy: shift the positive logit by -log(m / (1 - m)).

    ``m`` is the candidate's own (noisy) mean predicted probability on its training data. The shift puts the
    decision at threshold 0.5 where the model's score passes its average, i.e. the Bayes rule for balanced
    accuracy (p(1|x) / prior > p(0|x) / (1 - prior)) once the intercept is recalibrated so that the mean
    prediction equals the prior -- without trusting the noisy model to be calibrated (DP models on an 80/20 label
    predicted 8 % positives on average). Validation scores are those of the shifted model. A multi-class
    candidate gets one mean per class (a vector) and every class logit is shifted by -log(m_c): the arg-max of
    p(c|x) / m_c, the same rule for K classes.
    """
    module = copy.deepcopy(result.model.module)
    last = [layer for layer in module.modules() if isinstance(layer, nn.Linear)][-1]
    with torch.no_grad():
        if np.ndim(mean_prediction) == 1:  # multi-class: divide every class's probability by its mean prediction
            last.bias -= torch.log(torch.as_tensor(np.asarray(mean_prediction), dtype=last.bias.dtype))
        else:
            last.bias[1] -= math.log(mean_prediction / (1.0 - mean_prediction))
    model = dataclasses.replace(result.model, module=module)
    scores = validation_scores(model, validation)
    return dataclasses.replace(
        result,
        model=model,
        validation_accuracy=scores["accuracy"],
        validation_auc=scores["auc"],
        validation_balanced_accuracy=scores["balanced_accuracy"],
    )


def select_best(results: list[CandidateResult], metric: str) -> CandidateResult:
    """Best validation metric; ties go to the other metrics, then to the smaller epsilon."""
    order = {
        "accuracy": ("validation_accuracy", "validation_auc", "validation_balanced_accuracy"),
        "auc": ("validation_auc", "validation_accuracy", "validation_balanced_accuracy"),
        "balanced_accuracy": ("validation_balanced_accuracy", "validation_auc", "validation_accuracy"),
    }[metric]

    def score(result: CandidateResult) -> tuple[float, ...]:
        values = [getattr(result, name) for name in order]
        return (*(v if v is not None else -1.0 for v in values), -(result.model.epsilon or 0.0))

    return max(results, key=score)
