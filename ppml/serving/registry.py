"""The served model: the registry's ``production`` version, its artifact and its serving spec, loaded together.

A version and its spec are one unit: the service swaps both at once when the alias moves, so a request is
always prepared with the recipe of the model that scores it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from ppml.deployment import PRODUCTION_ALIAS, ServedModel
from ppml.errors import PPMLError
from ppml.serving.spec import FeatureBuilder, load_serving_spec


@dataclass
class ServedVersion:
    model_name: str
    version: str
    run_id: str
    model: ServedModel
    builder: FeatureBuilder
    spec: dict[str, Any] = field(repr=False)

    def predict(self, released: list[dict[str, str]]) -> Any:
        """P(positive class) for records already in their released form."""
        return self.model.predict_proba(self.builder.matrix(released))


def production_version(client: MlflowClient, model_name: str) -> str | None:
    """The version the alias points at now (``None``: no model, or nothing promoted yet)."""
    try:
        return str(client.get_model_version_by_alias(model_name, PRODUCTION_ALIAS).version)
    except MlflowException:
        return None


def load_version(client: MlflowClient, model_name: str, version: str) -> ServedVersion:
    """Load one registered version with the serving spec of the run that trained it."""
    try:
        registered = client.get_model_version(model_name, version)
    except MlflowException:
        raise PPMLError(
            f"MLflow registry: field '{model_name}': version {version} does not exist; fix: promote a trained version"
        ) from None
    source = f"{model_name} v{version}"
    spec = load_serving_spec(client, registered.run_id, source)
    model = ServedModel(f"models:/{model_name}/{version}", client.tracking_uri)
    return ServedVersion(model_name, str(version), registered.run_id, model, FeatureBuilder(spec), spec)


def load_production(client: MlflowClient, model_name: str) -> ServedVersion:
    """The production version, refused in one line when nothing was promoted."""
    version = production_version(client, model_name)
    if version is None:
        raise PPMLError(
            f"MLflow registry ({client.tracking_uri}): field '{model_name}@{PRODUCTION_ALIAS}': no version is in "
            "production; fix: run the lifecycle (ppml run / ppml demo) until the compliance gate promotes one"
        )
    return load_version(client, model_name, version)
