"""What a training run returns: the trained classifier with its privacy facts, per-epoch reports, and the
metrics every trainer computes the same way (DP-SGD, the non-private reference, user-level DP-SGD)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ppml.training.config import DPConfig, TrainingConfig
from ppml.training.data import TabularSplit
from ppml.training.models import build_model, make_private_compatible

EpochCallback = Callable[["EpochReport"], None]


@dataclass
class EpochReport:
    """One epoch, as logged to MLflow. ``epsilon`` is the cumulative epsilon after this epoch (None if non-private)."""

    epoch: int
    train_loss: float
    epsilon: float | None
    validation_accuracy: float | None
    seconds: float
    steps: int = 0
    samples: int = 0
    train_seconds: float = 0.0
    validation_auc: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainedModel:
    """A trained classifier plus the privacy facts the ledger, MLflow and the evaluation engine need."""

    module: nn.Module
    config: TrainingConfig
    dp: DPConfig | None
    epsilon: float | None
    delta: float | None
    noise_multiplier: float | None
    sample_rate: float | None
    steps: int
    history: list[EpochReport] = field(default_factory=list)
    feature_names: tuple[str, ...] = ()
    clipping: str | None = None
    device: str = "cpu"
    epsilon_charged: float | None = None  # epsilon of the noise actually added (differs only under fault injection)
    planned_steps: int = 0
    resumed_from_step: int | None = None

    @property
    def n_classes(self) -> int:
        return output_width(self.module)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """P(y = 1) for each row of ``X``, shape (n,); for a multi-class model every class's probability (n, K)."""
        return class_probabilities(self._logits(X))

    def per_example_loss(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Cross-entropy of each example, shape (n,): the signal membership-inference attacks use."""
        logits = self._logits(X)
        target = torch.as_tensor(np.asarray(y), dtype=torch.long)
        return F.cross_entropy(logits, target, reduction="none").numpy().astype(np.float64)

    def evaluate(self, split: TabularSplit) -> dict[str, float]:
        """Accuracy, ROC AUC (NaN with one class) and mean loss on ``split``."""
        return classification_metrics(self.predict_proba(split.X), split.y, self.per_example_loss(split.X, split.y))

    @property
    def samples_per_second(self) -> float:
        seconds = sum(r.train_seconds for r in self.history)
        return sum(r.samples for r in self.history) / seconds if seconds > 0 else float("nan")

    def _logits(self, X: np.ndarray) -> torch.Tensor:
        features = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32))
        self.module.eval()
        outputs = []
        with torch.no_grad():
            for start in range(0, max(len(features), 1), 65536):
                outputs.append(self.module(features[start : start + 65536]))
        return torch.cat(outputs) if outputs else torch.empty(0, self.n_classes)


def output_width(module: nn.Module) -> int:
    """The number of classes a model scores: the width of its last Linear layer."""
    return int([layer for layer in module.modules() if isinstance(layer, nn.Linear)][-1].out_features)


def class_probabilities(logits: torch.Tensor) -> np.ndarray:
    """Softmax of the logits: P(y = 1) with shape (n,) for two classes (the binary contract), else (n, K)."""
    probabilities = torch.softmax(logits, dim=1)
    if probabilities.shape[1] == 2:
        return probabilities[:, 1].cpu().numpy().astype(np.float64)
    return probabilities.cpu().numpy().astype(np.float64)


def standalone_copy(
    config: TrainingConfig, dp: DPConfig, n_features: int, trained: nn.Module, n_classes: int = 2
) -> nn.Module:
    """A clean CPU copy without Opacus hooks or per-sample attributes, in eval mode."""
    fresh = make_private_compatible(build_model(config.model, n_features, n_classes), allow_fixes=dp.allow_layer_fixes)
    fresh.load_state_dict({k: v.detach().cpu().clone() for k, v in trained.state_dict().items()})
    return fresh.eval()


def validation_metrics(
    model: nn.Module, validation: TabularSplit | None, device: torch.device
) -> tuple[float | None, float | None]:
    if validation is None or validation.n == 0:
        return None, None
    was_training = model.training
    model.eval()
    with torch.no_grad():
        proba = class_probabilities(model(torch.from_numpy(validation.X).to(device)))
    model.train(was_training)
    metrics = classification_metrics(proba, validation.y, None)
    return metrics["accuracy"], (None if math.isnan(metrics["auc"]) else metrics["auc"])


def classification_metrics(proba: np.ndarray, y: np.ndarray, losses: np.ndarray | None) -> dict[str, float]:
    from sklearn.metrics import roc_auc_score

    if proba.ndim == 2:  # multi-class: the arg-max class; one-vs-rest macro ROC AUC over the classes present
        accuracy = float((proba.argmax(axis=1) == y).mean()) if len(y) else float("nan")
        return {"accuracy": accuracy, "auc": _macro_auc(y, proba), **_mean_loss(losses)}
    accuracy = float(((proba >= 0.5).astype(np.int64) == y).mean()) if len(y) else float("nan")
    auc = float(roc_auc_score(y, proba)) if len(np.unique(y)) == 2 else float("nan")
    result = {"accuracy": accuracy, "auc": auc}
    if losses is not None:
        result["loss"] = float(losses.mean()) if len(losses) else float("nan")
    return result


def _mean_loss(losses: np.ndarray | None) -> dict[str, float]:
    if losses is None:
        return {}
    return {"loss": float(losses.mean()) if len(losses) else float("nan")}


def _macro_auc(y: np.ndarray, proba: np.ndarray) -> float:
    """One-vs-rest ROC AUC averaged over the classes that have both members and non-members in ``y``."""
    from sklearn.metrics import roc_auc_score

    scores = [
        float(roc_auc_score(y == c, proba[:, c])) for c in range(proba.shape[1]) if 0 < int((y == c).sum()) < len(y)
    ]
    return float(np.mean(scores)) if scores else float("nan")
