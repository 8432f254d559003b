"""MLflow logging of training runs: parameters, per-epoch metrics, final epsilon/delta, the model, lineage tags.

Only aggregates leave the trusted boundary: hyper-parameters, metrics, epsilon, feature *names*. The model's input
example is a synthetic all-zero row (data-independent) carrying the feature names, never a training record.
Non-private baselines are tagged ``never-deploy`` and their weights are not logged by default.

Runs are addressed by id through ``MlflowClient`` (no global active run), so a resumed training re-opens its own
MLflow run and keeps appending per-epoch metrics. Registering versions and moving aliases is
:mod:`ppml.deployment`'s job; this module returns the logged model's URI for it.
"""

from __future__ import annotations

import math
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ppml.training.trained_model import EpochReport, TrainedModel

#: Tag keys shared with the Dagster layer and ppml.deployment.
TAG_DAGSTER_RUN = "dagster.run_id"
TAG_WINDOW = "ppml.window"  # first..last (n days); ppml.training.selection_tracking.window_tag writes it
TAG_AS_OF = "ppml.as_of"
TAG_POLICY_HASH = "ppml.policy_sha256"
TAG_DATA_HASH = "ppml.data_sha256"
TAG_GIT_COMMIT = "ppml.git_commit"
TAG_PRIVATE = "ppml.private"
TAG_NEVER_DEPLOY = "never-deploy"
TAG_LEDGER_RUN = "ppml.ledger_run_id"
TAG_LEDGER_REQUEST = "ppml.ledger_request_id"
TAG_CANDIDATE = "ppml.candidate_index"
TAG_SELECTED = "ppml.selected"
TAG_ROLE = "ppml.role"  # "selection" (parent), "candidate", "baseline"


class TrainingTracker:
    """Thin MLflow client for training runs (tracking URI from the argument, else ``MLFLOW_TRACKING_URI``)."""

    def __init__(
        self, tracking_uri: str | None = None, experiment_name: str = "ppml-training", *, git_commit: str | None = None
    ) -> None:
        import mlflow
        from mlflow import MlflowClient

        self.tracking_uri = tracking_uri or mlflow.get_tracking_uri()
        self.client = MlflowClient(tracking_uri=self.tracking_uri)
        experiment = self.client.get_experiment_by_name(experiment_name)
        self.experiment_id = (
            experiment.experiment_id if experiment is not None else self.client.create_experiment(experiment_name)
        )
        self.git_commit = git_commit if git_commit is not None else current_git_commit()

    # ------------------------------------------------------------------------------------------------ runs

    def start_run(
        self,
        name: str,
        *,
        tags: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
        run_id: str | None = None,
    ) -> str:
        """Start a run, or re-open ``run_id`` (a resumed training) and mark it running again."""
        all_tags = {TAG_GIT_COMMIT: self.git_commit, **{k: str(v) for k, v in (tags or {}).items()}}
        if parent_run_id:
            all_tags["mlflow.parentRunId"] = parent_run_id
        if run_id is not None:
            self.client.update_run(run_id, status="RUNNING")
            for key, value in all_tags.items():
                self.client.set_tag(run_id, key, value)
            return run_id
        run = self.client.create_run(self.experiment_id, run_name=name, tags=all_tags)
        return run.info.run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def set_tags(self, run_id: str, tags: Mapping[str, Any]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, str(value))

    def log_params(self, run_id: str, params: Mapping[str, Any]) -> None:
        """Parameters are immutable in MLflow; re-logging the same value on resume is accepted."""
        from mlflow.entities import Param

        existing = self.client.get_run(run_id).data.params
        fresh = [Param(k, _param(v)) for k, v in params.items() if k not in existing]
        for start in range(0, len(fresh), 100):
            self.client.log_batch(run_id, params=fresh[start : start + 100])

    def log_metrics(self, run_id: str, metrics: Mapping[str, float | None], step: int | None = None) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        batch = [
            Metric(k, float(v), now, step or 0) for k, v in metrics.items() if v is not None and math.isfinite(float(v))
        ]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def log_epoch(self, run_id: str, report: EpochReport) -> None:
        """Per-epoch metrics: loss, epsilon so far, validation accuracy/AUC, timing."""
        self.log_metrics(
            run_id,
            {
                "train_loss": report.train_loss,
                "epsilon": report.epsilon,
                "validation_accuracy": report.validation_accuracy,
                "validation_auc": report.validation_auc,
                "epoch_seconds": report.seconds,
                "samples_per_second": report.samples / report.train_seconds if report.train_seconds else None,
            },
            step=report.epoch,
        )

    def log_training(self, run_id: str, model: TrainedModel, extra_params: Mapping[str, Any] | None = None) -> None:
        """Parameters (sigma, C, sample rate, steps, epochs, batch, lr, accountant, model) and final metrics."""
        self.log_params(run_id, {**training_params(model), **(extra_params or {})})
        final = {"steps": model.steps, "samples_per_second": model.samples_per_second}
        if model.epsilon is not None:
            final |= {
                "final_epsilon": model.epsilon,
                "final_delta": model.delta,
                "epsilon_charged": model.epsilon_charged,
            }
        if model.history:
            final |= {
                "final_validation_accuracy": model.history[-1].validation_accuracy,
                "final_validation_auc": model.history[-1].validation_auc,
                "final_train_loss": model.history[-1].train_loss,
            }
        self.log_metrics(run_id, final)

    def log_model(self, run_id: str, model: TrainedModel, *, name: str = "model") -> str:
        """Log the model (class probabilities out) in MLflow's ``pt2`` format (torch.export: loading it runs no
        pickled code) with a tensor signature; return its URI for registration (ppml.deployment).

        The input example is two all-zero rows -- data-independent, never a training record; two rows keep the
        batch dimension dynamic in the exported graph. Feature names go to ``feature_names.json`` and a param."""
        import mlflow
        import mlflow.pytorch
        import numpy as np
        import torch
        from mlflow.models import infer_signature

        n_features = _n_features(model.module)
        example = np.zeros((2, n_features), dtype=np.float32)
        serving = torch.nn.Sequential(*model.module, torch.nn.Softmax(dim=1)).eval()
        with torch.no_grad():
            output = serving(torch.from_numpy(example)).numpy()
        signature = infer_signature(example, output)
        previous_uri = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(self.tracking_uri)
        try:
            with mlflow.start_run(run_id=run_id, nested=True):
                info = mlflow.pytorch.log_model(
                    serving,
                    name=name,
                    signature=signature,
                    input_example=example,
                    serialization_format="pt2",
                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
                )
                if model.feature_names:
                    mlflow.log_dict({"feature_names": list(model.feature_names)}, "feature_names.json")
        finally:
            mlflow.set_tracking_uri(previous_uri)
        self.client.update_run(run_id, status="RUNNING")
        return info.model_uri

    def baseline_tags(self) -> dict[str, str]:
        return {TAG_PRIVATE: "false", TAG_NEVER_DEPLOY: "true", TAG_ROLE: "baseline"}


def training_params(model: TrainedModel) -> dict[str, Any]:
    """The parameters the issue asks for, under short stable names (aggregates only)."""
    params: dict[str, Any] = {
        **model.config.to_params(),
        "n_features": len(model.feature_names) or None,
        "device": model.device,
        "private": model.dp is not None,
    }
    if model.dp is not None:
        params |= {
            **model.dp.to_params(),
            "noise_multiplier": model.noise_multiplier,
            "sigma": model.noise_multiplier,
            "C": model.dp.max_grad_norm,
            "sample_rate": model.sample_rate,
            "planned_steps": model.planned_steps,
            "clipping_impl": model.clipping,
        }
    return {k: v for k, v in params.items() if v is not None}


def current_git_commit(repository: Path | None = None) -> str:
    """HEAD of the working tree ppml runs from (``unknown`` outside git); ``PPML_GIT_COMMIT`` overrides."""
    if os.environ.get("PPML_GIT_COMMIT"):
        return os.environ["PPML_GIT_COMMIT"]
    root = repository or Path(__file__).resolve().parent.parent
    try:
        result = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return result.stdout.strip() if result.returncode == 0 else "unknown"


def _param(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def _n_features(module: Any) -> int:
    import torch

    for layer in module.modules():
        if isinstance(layer, torch.nn.Linear):
            return int(layer.in_features)
    raise ValueError("model has no Linear layer")
