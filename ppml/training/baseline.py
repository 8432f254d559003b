"""The non-private baseline, tuned the way a competent data scientist would tune it.

The utility gap (how much accuracy privacy costs) is only honest against a strong reference. A baseline trained
with the DP model's settings (a learning rate picked for noisy, clipped gradients, few epochs) is a straw man
that can even lose to the DP model. So the baseline here searches a small, bounded grid over three model
families -- logistic regression, gradient boosting (scikit-learn's HistGradientBoostingClassifier) and the MLP
trained without DP (torch, Adam) -- picks the best on the validation split, and reports what it chose.

Each family's iteration count is chosen inside one fit by early stopping on the validation split (boosting on
its loss, the MLP keeps its best epoch's weights), so the grid stays six fits, each single-threaded: seconds on
35,000 rows x 70 features (bench/baseline_bench.py). The models never leave the caller (no weights are
stored or logged); only the aggregates of :meth:`TunedBaseline.to_dict` are.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ppml.errors import input_error
from ppml.training.config import fingerprint
from ppml.training.data import TabularSplit

if TYPE_CHECKING:
    from ppml.ledger import DataScope, PrivacyLedger
    from ppml.tracking import TrainingTracker

Family = Literal["logistic_regression", "gradient_boosting", "mlp"]
FAMILIES: tuple[Family, ...] = ("logistic_regression", "gradient_boosting", "mlp")


@dataclass(frozen=True)
class BaselineCandidate:
    """One point of the grid: a family and its settings (the iteration budget is an upper bound)."""

    family: Family
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.family not in FAMILIES:
            raise input_error(
                "baseline grid", "family", f"unknown model family {self.family!r}", f"use one of {list(FAMILIES)}"
            )


@dataclass(frozen=True)
class CandidateScore:
    """Validation scores of one candidate at its best iteration; ``settings`` include that iteration count."""

    family: Family
    settings: dict[str, Any]
    validation_accuracy: float
    validation_roc_auc: float | None
    validation_log_loss: float
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "settings": dict(self.settings),
            "validation_accuracy": self.validation_accuracy,
            "validation_roc_auc": self.validation_roc_auc,
            "validation_log_loss": self.validation_log_loss,
            "seconds": self.seconds,
        }


class BinaryModel:
    """``predict_proba(X) -> P(y = 1)`` (or (n, K) class probabilities of a multi-class label) over a fitted
    scikit-learn estimator or a torch module."""

    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], family: Family) -> None:
        self._predict = predict
        self.family = family

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.asarray(self._predict(np.asarray(X, dtype=np.float32)), dtype=np.float64)


@dataclass
class TunedBaseline:
    """The chosen model (kept in memory only), what it was chosen over, and how to train it again."""

    model: BinaryModel
    chosen: CandidateScore
    candidates: list[CandidateScore]
    seconds: float
    seed: int

    def refit(self, split: TabularSplit) -> BinaryModel:
        """The chosen family and settings trained on another split (e.g. LiRA's reference models)."""
        model, _ = fit_candidate(BaselineCandidate(self.chosen.family, self.chosen.settings), split, None, self.seed)
        return model

    def to_dict(self) -> dict[str, Any]:
        """Aggregates only: the family, its settings and the validation scores of every candidate."""
        return {
            "family": self.chosen.family,
            "settings": dict(self.chosen.settings),
            "validation_accuracy": self.chosen.validation_accuracy,
            "validation_roc_auc": self.chosen.validation_roc_auc,
            "selection_metric": "validation accuracy (ties: lower log loss)",
            "candidates": [c.to_dict() for c in self.candidates],
            "seconds": self.seconds,
        }


def default_grid(hidden_sizes: Sequence[int] = (64,)) -> list[BaselineCandidate]:
    """Six fits: two regularisation strengths, two boosting shapes, two MLP learning rates (the MLP uses
    the DP model's architecture, so the gap measures what privacy costs, not a different network)."""
    hidden = [int(h) for h in hidden_sizes] or [64]
    return [
        *(BaselineCandidate("logistic_regression", {"C": c}) for c in (0.1, 1.0)),
        BaselineCandidate("gradient_boosting", {"learning_rate": 0.1, "max_leaf_nodes": 31, "max_iter": 200}),
        BaselineCandidate("gradient_boosting", {"learning_rate": 0.2, "max_leaf_nodes": 15, "max_iter": 200}),
        *(
            BaselineCandidate("mlp", {"hidden_sizes": hidden, "learning_rate": lr, "max_epochs": 15, "batch_size": 256})
            for lr in (1e-3, 3e-3)
        ),
    ]


def tune_baseline(
    train: TabularSplit,
    validation: TabularSplit,
    *,
    grid: Sequence[BaselineCandidate] | None = None,
    hidden_sizes: Sequence[int] = (64,),
    seed: int = 0,
) -> TunedBaseline:
    """Fit every candidate on ``train``, score it on ``validation``, keep the best (highest accuracy, since the
    utility gap is measured in accuracy; ties broken by lower log loss)."""
    _check_splits(train, validation)
    started = time.perf_counter()
    best: tuple[tuple[float, float], BinaryModel, CandidateScore] | None = None
    scores: list[CandidateScore] = []
    for candidate in grid if grid is not None else default_grid(hidden_sizes):
        model, score = fit_candidate(candidate, train, validation, seed)
        assert score is not None  # a validation split was given
        scores.append(score)
        key = (score.validation_accuracy, -score.validation_log_loss)
        if best is None or key > best[0]:
            best = (key, model, score)
    if best is None:
        raise input_error("baseline grid", "grid", "no candidate to try", "give at least one BaselineCandidate")
    _, model, chosen = best
    return TunedBaseline(model, chosen, scores, time.perf_counter() - started, seed)


def fit_candidate(
    candidate: BaselineCandidate, train: TabularSplit, validation: TabularSplit | None, seed: int
) -> tuple[BinaryModel, CandidateScore | None]:
    """Train one candidate; with a validation split, choose its iteration count there and score it."""
    fit = {"logistic_regression": _fit_logistic, "gradient_boosting": _fit_boosting, "mlp": _fit_mlp}
    started = time.perf_counter()
    with single_threaded():
        model, settings, stage_scores = fit[candidate.family](candidate.settings, train, validation, seed)
    if validation is None:
        return model, None
    accuracy, auc, loss = stage_scores
    score = CandidateScore(candidate.family, settings, accuracy, auc, loss, time.perf_counter() - started)
    return model, score


@dataclass
class TunedBaselineResult:
    """The tuned baseline with the ids of its never-deploy MLflow run and its non-private ledger record."""

    baseline: TunedBaseline
    ledger_run_id: str | None
    mlflow_run_id: str | None


def train_tuned_baseline(
    train: TabularSplit,
    validation: TabularSplit,
    *,
    hidden_sizes: Sequence[int] = (64,),
    seed: int = 0,
    ledger: PrivacyLedger | None = None,
    scope: DataScope | None = None,
    tracker: TrainingTracker | None = None,
    tags: Mapping[str, str] | None = None,
    dagster_run_id: str | None = None,
) -> TunedBaselineResult:
    """:func:`tune_baseline`, recorded like every use of the data: an MLflow run tagged never-deploy
    (parameters and validation scores, no weights) and a non-private ledger run outside DP composition."""
    tuned = tune_baseline(train, validation, hidden_sizes=hidden_sizes, seed=seed)
    chosen = tuned.chosen
    params = {
        "baseline_family": chosen.family,
        **{f"baseline_{k}": v for k, v in chosen.settings.items()},
        "candidates_tried": len(tuned.candidates),
        "selection": "validation accuracy",
        "n_features": train.n_features,
        "private": False,
    }
    mlflow_run_id = None
    if tracker is not None:
        mlflow_run_id = tracker.start_run(
            "non-private-baseline", tags={**{k: str(v) for k, v in (tags or {}).items()}, **tracker.baseline_tags()}
        )
        tracker.log_params(mlflow_run_id, params)
        for index, candidate in enumerate(tuned.candidates):
            tracker.log_metrics(
                mlflow_run_id,
                {"candidate_validation_accuracy": candidate.validation_accuracy},
                step=index,
            )
        tracker.log_metrics(
            mlflow_run_id,
            {
                "final_validation_accuracy": chosen.validation_accuracy,
                "final_validation_auc": chosen.validation_roc_auc,
                "tuning_seconds": tuned.seconds,
            },
        )
        tracker.end_run(mlflow_run_id)
    ledger_run_id = None
    if ledger is not None and scope is not None:
        ledger_run_id = ledger.record_non_private(
            scope,
            config={**params, "candidates": [c.to_dict() for c in tuned.candidates]},
            config_fingerprint=fingerprint("tuned-baseline", chosen.family, chosen.settings),
            steps=0,
            mlflow_run_id=mlflow_run_id,
            dagster_run_id=dagster_run_id or (tags or {}).get("dagster.run_id"),
        )
    return TunedBaselineResult(tuned, ledger_run_id, mlflow_run_id)


# ------------------------------------------------------------------------------------------------ families

Scores = tuple[float, float | None, float]
#: Epochs without a better validation score after which the MLP stops (its best epoch's weights are kept).
MLP_PATIENCE = 4


def _fit_logistic(
    settings: dict[str, Any], train: TabularSplit, validation: TabularSplit | None, seed: int
) -> tuple[BinaryModel, dict[str, Any], Scores | None]:
    from sklearn.linear_model import LogisticRegression

    estimator = LogisticRegression(C=float(settings.get("C", 1.0)), max_iter=2000, random_state=seed)
    estimator.fit(train.X, train.y)
    model = BinaryModel(lambda X: _estimator_proba(estimator, X, train.n_classes), "logistic_regression")
    scores = _scores(validation.y, model.predict_proba(validation.X)) if validation is not None else None
    return model, {"C": float(settings.get("C", 1.0))}, scores


def _fit_boosting(
    settings: dict[str, Any], train: TabularSplit, validation: TabularSplit | None, seed: int
) -> tuple[BinaryModel, dict[str, Any], Scores | None]:
    """With validation: early stopping on the validation loss (15 rounds without improvement) inside the
    iteration budget. Without it (a refit): exactly ``max_iter`` rounds."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    shape = {
        "learning_rate": float(settings.get("learning_rate", 0.1)),
        "max_leaf_nodes": int(settings.get("max_leaf_nodes", 31)),
    }
    estimator = HistGradientBoostingClassifier(
        **shape,
        max_iter=int(settings.get("max_iter", 200)),
        early_stopping=validation is not None,
        scoring="loss",
        n_iter_no_change=15,
        random_state=seed,
    )
    if validation is None:
        estimator.fit(train.X, train.y)
        scores = None
    else:
        estimator.fit(train.X, train.y, X_val=validation.X, y_val=validation.y)
        scores = _scores(validation.y, _estimator_proba(estimator, validation.X, train.n_classes))
    model = BinaryModel(lambda X: _estimator_proba(estimator, X, train.n_classes), "gradient_boosting")
    return model, {**shape, "max_iter": int(estimator.n_iter_)}, scores


def _fit_mlp(
    settings: dict[str, Any], train: TabularSplit, validation: TabularSplit | None, seed: int
) -> tuple[BinaryModel, dict[str, Any], Scores | None]:
    """Adam without clipping or noise; with validation, the weights of the best epoch are kept (early stopping
    with patience MLP_PATIENCE), without it, exactly ``epochs`` (or ``max_epochs``) epochs are trained."""
    hidden = tuple(int(h) for h in settings.get("hidden_sizes", (64,)))
    rate = float(settings.get("learning_rate", 1e-3))
    batch = int(settings.get("batch_size", 256))
    epochs = int(settings.get("epochs", settings.get("max_epochs", 20)))
    return _train_mlp(train, validation, seed, hidden, rate, batch, epochs)


def _train_mlp(
    train: TabularSplit,
    validation: TabularSplit | None,
    seed: int,
    hidden: tuple[int, ...],
    rate: float,
    batch: int,
    epochs: int,
) -> tuple[BinaryModel, dict[str, Any], Scores | None]:
    import torch
    import torch.nn.functional as F

    from ppml.training.config import ModelSpec
    from ppml.training.models import build_model

    torch.manual_seed(seed)
    module = build_model(ModelSpec(kind="mlp", hidden_sizes=hidden), train.n_features, train.n_classes)
    optimizer = torch.optim.Adam(module.parameters(), lr=rate)
    shuffle = torch.Generator().manual_seed(seed + 1)
    X, y = torch.tensor(train.X), torch.tensor(train.y)
    best: tuple[tuple[float, float], int, dict[str, torch.Tensor], Scores] | None = None
    for epoch in range(1, epochs + 1):
        module.train()
        for batch_index in torch.randperm(train.n, generator=shuffle).split(batch):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(module(X[batch_index]), y[batch_index]).backward()
            optimizer.step()
        if validation is not None:
            scores = _scores(validation.y, _torch_positive(module, validation.X))
            if best is None or (scores[0], -scores[2]) > best[0]:
                state = {k: v.detach().clone() for k, v in module.state_dict().items()}
                best = ((scores[0], -scores[2]), epoch, state, scores)
            elif epoch - best[1] >= MLP_PATIENCE:
                break
    chosen, scores_out = epochs, None
    if best is not None:
        _, chosen, state, scores_out = best
        module.load_state_dict(state)
    module.eval()
    model = BinaryModel(lambda X_: _torch_positive(module, X_), "mlp")
    return (
        model,
        {"hidden_sizes": list(hidden), "learning_rate": rate, "batch_size": batch, "epochs": chosen},
        scores_out,
    )


# ------------------------------------------------------------------------------------------------ helpers


@contextmanager
def single_threaded() -> Iterator[None]:
    """One thread for OpenMP, BLAS and torch while a baseline fits. These models are small, and on a shared box
    idle-spinning worker threads (OpenMP's default) turned an 8 s boosting fit into 117 s."""
    import torch
    from threadpoolctl import threadpool_limits

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)


def _torch_positive(module: Any, X: np.ndarray) -> np.ndarray:
    import torch

    from ppml.training.trained_model import class_probabilities

    was_training = module.training
    module.eval()
    with torch.no_grad():
        proba = class_probabilities(module(torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))))
    module.train(was_training)
    return proba


def _estimator_proba(estimator: Any, X: np.ndarray, n_classes: int) -> np.ndarray:
    """P(y = 1) of a binary estimator; (n, K) of a multi-class one, a class it never saw in training at 0."""
    proba = estimator.predict_proba(X)
    if n_classes == 2:
        return proba[:, 1]
    full = np.zeros((len(proba), n_classes), dtype=np.float64)
    full[:, np.asarray(estimator.classes_, dtype=np.int64)] = proba
    return full


def _scores(y: np.ndarray, p: np.ndarray) -> Scores:
    """Accuracy at 0.5 (arg-max for K classes), ROC AUC (one-vs-rest macro; None with one class) and log loss."""
    from sklearn.metrics import roc_auc_score

    p = np.clip(np.asarray(p, dtype=np.float64), 1e-7, 1 - 1e-7)
    if p.ndim == 2:
        aucs = [float(roc_auc_score(y == c, p[:, c])) for c in range(p.shape[1]) if 0 < (y == c).sum() < len(y)]
        loss = float(-np.mean(np.log(p[np.arange(len(y)), y])))
        return float((p.argmax(axis=1) == y).mean()), (float(np.mean(aucs)) if aucs else None), loss
    accuracy = float(((p >= 0.5) == (y == 1)).mean())
    auc = float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else None
    loss = float(-np.mean(np.where(y == 1, np.log(p), np.log1p(-p))))
    return accuracy, auc, loss


def _check_splits(train: TabularSplit, validation: TabularSplit) -> None:
    train.require_trainable()
    if validation.n == 0 or validation.n_features != train.n_features:
        raise input_error(
            validation.name,
            "X",
            f"{validation.n} validation rows with {validation.n_features} features (training has {train.n_features})",
            "tune on a non-empty validation split encoded like the training split",
        )
    if len(np.unique(validation.y)) < 2 or not all(math.isfinite(v) for v in validation.X.sum(axis=0)):
        raise input_error(
            validation.name,
            "y",
            "the validation split holds one class only (or non-finite features), so it cannot rank candidates",
            "use a larger validation split (preparation.validation_percent)",
        )
