"""A registered production version from a small real training, built with the engines the assets call."""

from __future__ import annotations

import functools
import numbers
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from tests.support import TEST_FIRST_DAY, days

RATE = 30  # the registered fixture's serving.requests_per_minute
BUDGET = 60  # the registered fixture's serving.queries_per_client (rows)


@dataclass
class Registered:
    policy: Path
    tracking_uri: str
    model_name: str
    run_id: str
    model_uri: str
    spec: dict[str, Any]
    deidentified: pd.DataFrame  # the training window as de-identification left it (raw QIs, no identifiers)
    raw: pd.DataFrame  # the collected records, identifiers included (to check they never reach the log)
    released_inputs: pd.DataFrame  # per kept raw record: the prepared feature values training used
    kept_raw_rows: list[int]  # the raw row each released row comes from
    features: pd.DataFrame  # the one-hot matrix (feature_names + label + split) of the released rows
    as_of: str = ""  # the training window's last day, in the run's lineage tag as dp_model writes it


def register_small_model(landing: Path, policy: Path, n_days: int = 2) -> Registered:
    """Collect, de-identify, anonymize (release safety included), prepare, train for one epoch, log the model
    with its serving spec, register it and promote it: the production version ppml serve loads. (The serving
    tests need a registered model, not a private one: without DP-SGD's noise calibration this takes seconds;
    DP training is tested in tests/training.) The session's MLflow store is shared; the policy name is unique."""
    from mlflow import MlflowClient

    from ppml.anonymization.policy_config import config_from_policy, rules_from_policy, with_missing_values
    from ppml.anonymization.release_safety import safe_release
    from ppml.collection import LandingZoneReader, collect_partition
    from ppml.deidentification import deidentify, hmac_key_from_env
    from ppml.deployment import decide_promotion, register_version
    from ppml.policy import load_policy
    from ppml.preparation import LABEL_COLUMN, SPLIT_COLUMN, clean_records, encode_features
    from ppml.serving.monitoring import input_reference, log_score_reference, score_reference
    from ppml.serving.spec import generalization_spec, log_serving_spec, serving_spec
    from ppml.tracking import TrainingTracker
    from ppml.training import TabularSplit, TrainingConfig, train_non_private
    from ppml_assets.anonymization import released_columns

    loaded = load_policy(policy)
    roles = loaded.policy.schema_
    reader = LandingZoneReader(landing)
    raw = pd.concat(
        [collect_partition(reader, day, loaded.policy).records for day in days(TEST_FIRST_DAY, n_days)],
        ignore_index=True,
    )
    deidentified, _ = deidentify(raw, loaded.policy, hmac_key_from_env(), "serving test")
    config = with_missing_values(config_from_policy(loaded), deidentified, roles.missing_value_marker)
    columns = released_columns(loaded, list(deidentified.columns))
    safety = safe_release(deidentified[columns], config, rules_from_policy(loaded))
    release = safety.anonymization
    generalization = generalization_spec(safety.config, release.transformation, safety.binned_columns)
    preparation = loaded.policy.preparation
    cleaned, report = clean_records(
        release.data,
        loaded.policy,
        max_share_below_k=preparation.max_share_below_k,
        bin_candidates=tuple(preparation.numeric_bins),
    )
    inputs = [c for c in cleaned.columns if c not in (LABEL_COLUMN, SPLIT_COLUMN)]
    matrix = encode_features(cleaned, inputs)
    X, y = matrix.split("train")
    trained = train_non_private(
        TabularSplit(X, y, tuple(matrix.feature_names)),
        TrainingConfig(epochs=2, batch_size=128, learning_rate=0.01),
    )
    tracking_uri = os.environ["MLFLOW_TRACKING_URI"]
    tracker = TrainingTracker(tracking_uri, experiment_name="serving-test")
    run_id = tracker.start_run("serving-test")
    model_uri = tracker.log_model(run_id, trained)
    spec = serving_spec(
        generalization,
        report.to_dict(),
        matrix.feature_names,
        policy_sha256=loaded.content_hash,
        missing_value_marker=roles.missing_value_marker,
        reference=input_reference(X, matrix.feature_names),
    )
    client = MlflowClient(tracking_uri=tracking_uri)
    log_serving_spec(client, run_id, spec)
    X_test, _ = matrix.split("test")  # what model_evaluation records: the test split's score distribution
    log_score_reference(client, run_id, score_reference(trained.predict_proba(X_test)))
    as_of = days(TEST_FIRST_DAY, n_days)[-1]
    client.set_tag(run_id, "ppml.partitions", f"as-of {as_of} ({n_days} days)")  # as dp_model's lineage tags
    tracker.end_run(run_id)
    model_name = f"ppml-{loaded.policy.name}"
    version = register_version(client, model_name, model_uri, run_id, {})
    decide_promotion(client, model_name, version, run_id, [])
    kept = [int(i) for i in release.kept_rows.nonzero()[0]]
    return Registered(
        policy,
        tracking_uri,
        model_name,
        run_id,
        model_uri,
        spec,
        deidentified,
        raw,
        cleaned[inputs],
        kept,
        matrix.features,
        as_of,
    )


def promote_again(registered: Registered) -> str:
    """A second version of the same artifact, promoted: what a retraining that passed the gate does."""
    from mlflow import MlflowClient

    from ppml.deployment import decide_promotion, register_version

    client = MlflowClient(tracking_uri=registered.tracking_uri)
    version = register_version(client, registered.model_name, registered.model_uri, registered.run_id, {})
    decide_promotion(client, registered.model_name, version, registered.run_id, [])
    return version


@functools.cache
def _request_columns(policy: Path) -> tuple[str, ...]:
    from ppml.policy import load_policy
    from ppml.serving.app import request_columns

    return tuple(request_columns(load_policy(policy).policy))


def raw_record(registered: Registered, row: int) -> dict[str, Any]:
    """A de-identified training record's model inputs in their raw form (ints as ints), as a client sends them."""
    record = registered.deidentified.iloc[row]
    columns = _request_columns(registered.policy)
    return {c: (int(record[c]) if isinstance(record[c], numbers.Number) else str(record[c])) for c in columns}


def server_env(home: Path, registered: Registered, keys: list[str]) -> dict[str, str]:
    return {
        **os.environ,
        "PPML_HOME": str(home),
        "MLFLOW_TRACKING_URI": registered.tracking_uri,
        "PPML_SERVE_API_KEY": ",".join(keys),
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
    }


@contextmanager
def serve_in_process(policy: Path, registered: Registered, log_url: str, key: str, served: Any = None) -> Iterator[str]:
    """The real FastAPI app under uvicorn on loopback in a thread, serving the production version (or the
    already loaded ``served`` one) with its own prediction log; yields the base URL."""
    import socket
    import threading
    import time

    import uvicorn
    from mlflow import MlflowClient

    from ppml.policy import load_policy
    from ppml.serving.app import RegistryFollower, api_keys_from_env, create_app
    from ppml.serving.prediction_log import PredictionLog
    from ppml.serving.registry import load_production

    client = MlflowClient(tracking_uri=registered.tracking_uri)
    follower = RegistryFollower(client, served or load_production(client, registered.model_name), 60.0)
    log = PredictionLog(log_url)
    app = create_app(load_policy(policy), follower, log, api_keys_from_env({"PPML_SERVE_API_KEY": key}))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)
        log.close()
