"""Lifecycle step 7a: deployment through the MLflow model registry, gated by the compliance verdicts.

A registered model version is evidence of what was trained; the ``production`` alias is the decision to serve
it. The alias moves only when every blocking check passed, and the decision — promoted, or refused with the
failing checks — is written to the version's tags and the training run's tags, so the registry itself tells an
auditor why a version is or is not in production.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass, field
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ppml.errors import PPMLError

PRODUCTION_ALIAS = "production"


@dataclass
class PromotionDecision:
    model_name: str
    version: str
    promoted: bool
    failing_checks: list[str] = field(default_factory=list)
    previous_production_version: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@contextmanager
def global_tracking_uri(uri: str) -> Iterator[None]:
    """Some MLflow calls resolve ``models:/`` URIs through the global tracking URI: point it at this client's
    store for the duration of the call, then restore it (several workspaces may share one process)."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def register_version(client: MlflowClient, model_name: str, model_uri: str, run_id: str, tags: dict[str, str]) -> str:
    """Register a logged model as a new version of ``model_name`` (created on first use)."""
    try:
        client.get_registered_model(model_name)
    except MlflowException:
        client.create_registered_model(
            model_name, description="DP-trained model; promoted to 'production' only by the ppml compliance gate."
        )
    with global_tracking_uri(client.tracking_uri):
        version = client.create_model_version(model_name, source=model_uri, run_id=run_id, tags=tags)
    return str(version.version)


def current_production_version(client: MlflowClient, model_name: str) -> str | None:
    try:
        return str(client.get_model_version_by_alias(model_name, PRODUCTION_ALIAS).version)
    except MlflowException:
        return None


def decide_promotion(
    client: MlflowClient,
    model_name: str,
    version: str,
    run_id: str,
    failing_checks: list[str],
    extra_tags: dict[str, str] | None = None,
) -> PromotionDecision:
    """Move the production alias only when nothing failed; record the decision either way."""
    try:
        client.get_model_version(model_name, version)
    except MlflowException:
        raise PPMLError(
            f"MLflow registry: field 'version': {model_name} version {version} does not exist; "
            "fix: re-materialize dp_model so the version is registered"
        ) from None
    previous = current_production_version(client, model_name)
    promoted = not failing_checks
    tags = {
        "ppml.compliance": "passed" if promoted else "failed",
        "ppml.promotion": "promoted" if promoted else "refused",
        "ppml.failing_checks": ",".join(failing_checks) or "none",
        **(extra_tags or {}),
    }
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
        client.set_tag(run_id, key, value)
    if promoted:
        client.set_registered_model_alias(model_name, PRODUCTION_ALIAS, version)
    return PromotionDecision(model_name, version, promoted, failing_checks, previous)


class ServedModel:
    """A model as deployed: loaded back from the MLflow artifact store, predicting P(y = 1).

    Evaluation always scores the artifact that would be served, not the in-memory object that training returned,
    so a model that cannot be loaded fails evaluation instead of being promoted.
    """

    def __init__(self, model_uri: str, tracking_uri: str) -> None:
        import tempfile

        import mlflow.artifacts
        import mlflow.pytorch

        try:
            with tempfile.TemporaryDirectory(prefix="ppml-model-") as scratch, global_tracking_uri(tracking_uri):
                local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=scratch)
                self.module = mlflow.pytorch.load_model(local)
        except Exception as error:  # MLflow raises many kinds: missing run, missing files, corrupt archive
            reason = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            raise PPMLError(
                f"{model_uri}: field 'model artifact': the model cannot be loaded ({reason}); "
                "fix: re-materialize dp_model so the artifact is logged again"
            ) from None
        self.model_uri = model_uri

    def predict_proba(self, X: Any) -> Any:
        import numpy as np
        import torch

        features = torch.as_tensor(np.ascontiguousarray(X, dtype=np.float32))
        with torch.no_grad():
            probabilities = self.module(features)
        if probabilities.shape[1] > 2:  # a multi-class model: every class's probability, (n, K)
            return probabilities.numpy().astype(np.float64)
        return probabilities[:, 1].numpy().astype(np.float64)


def _is_promoted_and_clean(version: Any, excluded: set[str]) -> bool:
    tags = version.tags or {}
    return (
        str(version.version) not in excluded
        and tags.get("ppml.promotion") == "promoted"
        and tags.get("ppml.erasure") != "affected"
        and not tags.get("ppml.retired")
    )


def retire_versions(client: MlflowClient, model_name: str, versions: list[str]) -> dict[str, str | None]:
    """Take the production alias away from retired versions: it moves to the newest promoted version that is
    neither affected nor retired, or is removed when there is none (nothing is served until a retraining passes
    the gate). Returns the production version before and after."""
    before = current_production_version(client, model_name)
    retired = set(versions)
    for version in versions:
        client.set_model_version_tag(model_name, version, "ppml.retired", "erasure")
    if before is None or before not in retired:
        return {"before": before, "after": before}
    candidates = client.search_model_versions(f"name = '{model_name}'")
    clean = sorted(
        (v for v in candidates if _is_promoted_and_clean(v, retired)), key=lambda v: int(v.version), reverse=True
    )
    if clean:
        after: str | None = str(clean[0].version)
        client.set_registered_model_alias(model_name, PRODUCTION_ALIAS, after)
    else:
        after = None
        client.delete_registered_model_alias(model_name, PRODUCTION_ALIAS)
    return {"before": before, "after": after}


def tag_erasure(client: MlflowClient, model_name: str, version: str, run_id: str | None, tags: dict[str, str]) -> None:
    """Record on the registry version (and its training run) that an erasure request reached it."""
    try:
        client.get_model_version(model_name, version)
    except MlflowException:
        return  # the version was deleted from the registry: nothing left to tag
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
        if run_id:
            with suppress(MlflowException):  # a deleted run: the version's tags are the record
                client.set_tag(run_id, key, value)


def rollback(client: MlflowClient, model_name: str) -> tuple[str, str]:
    """Move ``production`` back to the newest earlier version that was promoted and not rolled back, retired or
    reached by an erasure; the version left is tagged ``ppml.rolled_back`` so a second rollback goes further back.
    Returns (from, to)."""
    current = current_production_version(client, model_name)
    if current is None:
        raise PPMLError(
            f"MLflow registry: field '{model_name}@{PRODUCTION_ALIAS}': nothing is in production; "
            "fix: nothing to roll back (promote a version through the compliance gate)"
        )
    earlier = [
        version
        for version in client.search_model_versions(f"name = '{model_name}'")
        if int(version.version) < int(current)
        and _is_promoted_and_clean(version, set())  # an erased-from or retired version is never served again
        and (version.tags or {}).get("ppml.rolled_back") != "true"
    ]
    if not earlier:
        raise PPMLError(
            f"MLflow registry: field '{model_name}': no version before v{current} was promoted; fix: nothing to roll "
            "back to (promote a version through the compliance gate)"
        )
    target = str(max(int(version.version) for version in earlier))
    client.set_model_version_tag(model_name, current, "ppml.rolled_back", "true")
    client.set_registered_model_alias(model_name, PRODUCTION_ALIAS, target)
    return current, target
