"""The HTTP service (FastAPI): schemas from the policy, privacy at the interface, the registry followed.

Every request is authenticated by an API key from the environment, counted against its client's rate limit and
lifetime query budget (rows scored, persisted in the prediction log), screened for direct identifiers (refused
or dropped as ``serving.identifiers`` says, never echoed or logged), put through the served version's serving
spec, and answered with the label only or a rounded probability. A background thread reads the ``production``
alias every ``serving.poll_seconds`` and swaps version and spec in one assignment, so no request is dropped and
every request is scored by one consistent version, named in its response.
"""

import hashlib
import hmac
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Mapping
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from mlflow import MlflowClient
from pydantic import BaseModel, ConfigDict, Field, create_model

from ppml.errors import PPMLError
from ppml.policy import IdentifierAction, LoadedPolicy, Policy, Regulation, ReleaseAction
from ppml.serving.prediction_log import PredictionLog
from ppml.serving.registry import ServedVersion, load_version, production_version

API_KEY_ENV = "PPML_SERVE_API_KEY"
MIN_API_KEY_LENGTH = 16
log = logging.getLogger("ppml.serving")


def api_keys_from_env(environ: Mapping[str, str]) -> dict[str, str]:
    """Comma-separated keys from PPML_SERVE_API_KEY -> {client fingerprint: key}; refused when unset or weak."""
    raw = environ.get(API_KEY_ENV, "").strip()
    if not raw:
        raise PPMLError(
            f"environment: field '{API_KEY_ENV}': not set, and the service never runs unauthenticated; fix: export "
            f"{API_KEY_ENV}=<one or more comma-separated keys of >= {MIN_API_KEY_LENGTH} characters> (or use --demo)"
        )
    keys = [key.strip() for key in raw.split(",") if key.strip()]
    if any(len(key) < MIN_API_KEY_LENGTH for key in keys):
        raise PPMLError(
            f"environment: field '{API_KEY_ENV}': a key is shorter than {MIN_API_KEY_LENGTH} characters; fix: use "
            "random keys, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return {client_fingerprint(key): key for key in keys}


def client_fingerprint(key: str) -> str:
    """The name a client has in the log and the budget: a hash of its key, never the key."""
    return "client-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def label_names(policy: Policy) -> tuple[str, str]:
    """(negative, positive) raw label values for responses."""
    positive = policy.schema_.label.positive_value
    others = [value for value in policy.schema_.label_values if value != positive]
    return (others[0] if others else f"not {positive}"), positive


def request_columns(policy: Policy) -> list[str]:
    """The candidate features a request may carry: the policy's features that the release does not drop."""
    roles = policy.schema_
    return [
        column
        for column in roles.features
        if column in roles.quasi_identifiers
        or policy.release.action_for(column, column in roles.sensitive_attributes) is not ReleaseAction.DROP
    ]


def record_model(policy: Policy) -> type[BaseModel]:
    """The request record, typed from the policy: integers within value_ranges, text otherwise, all optional
    (a missing category is the policy's missing-value category; a missing number the served version needs is
    refused). Unknown fields are screened by the endpoint, so that identifiers are refused, not echoed."""
    roles = policy.schema_
    fields: dict[str, Any] = {}
    for column in request_columns(policy):
        if column in roles.numeric_columns:
            low, high = roles.value_ranges.get(column, (None, None))
            fields[column] = (Annotated[int, Field(ge=low, le=high)] | None, None)
        else:
            fields[column] = (str | None, Field(default=None, max_length=200))
    return create_model("PredictionRecord", __config__=ConfigDict(extra="allow"), **fields)


class Prediction(BaseModel):
    label: str
    probability: float | None = Field(default=None, description="Only when serving.output is 'probability'.")


class PredictionResponse(BaseModel):
    request_id: str
    model_name: str
    model_version: str
    prediction: Prediction


class BatchResponse(BaseModel):
    request_id: str
    model_name: str
    model_version: str
    predictions: list[Prediction]


class Feedback(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request_id: str = Field(min_length=32, max_length=32)
    row: int = Field(default=0, ge=0)
    label: str = Field(min_length=1, max_length=200)


class ClientLimits:
    """Per-client sliding one-minute rate limit and lifetime row budget (seeded from the prediction log)."""

    def __init__(self, per_minute: int, budget: int, used: Mapping[str, int]) -> None:
        self.per_minute, self.budget = per_minute, budget
        self.used = dict(used)
        self.recent: dict[str, deque[float]] = {}
        self._lock = threading.Lock()

    def admit(self, client: str, rows: int) -> None:
        now = time.monotonic()
        with self._lock:
            window = self.recent.setdefault(client, deque())
            while window and now - window[0] >= 60.0:
                window.popleft()
            if len(window) >= self.per_minute:
                retry = max(1, int(60.0 - (now - window[0])) + 1)
                raise HTTPException(
                    429,
                    f"rate limit: {self.per_minute} requests per minute (serving.requests_per_minute)",
                    headers={"Retry-After": str(retry)},
                )
            if self.used.get(client, 0) + rows > self.budget:
                raise HTTPException(
                    429, f"query budget exhausted: {self.budget} rows per client (serving.queries_per_client)"
                )
            window.append(now)
            self.used[client] = self.used.get(client, 0) + rows


class RegistryFollower:
    """Holds the served version and follows the production alias from a daemon thread."""

    def __init__(self, client: MlflowClient, served: ServedVersion, poll_seconds: float) -> None:
        self.client, self.current, self.poll_seconds = client, served, poll_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ppml-registry-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> None:
        """Switch when the alias points elsewhere; a version that fails to load is reported and not served."""
        current = self.current
        version = production_version(self.client, current.model_name)
        if version is None or version == current.version:
            return
        try:
            self.current = load_version(self.client, current.model_name, version)  # one atomic assignment
            log.warning("ppml serve: now serving %s v%s (was v%s)", current.model_name, version, current.version)
        except PPMLError as error:
            log.warning("ppml serve: keeping v%s: %s", current.version, error)

    def _run(self) -> None:
        while not self._stop.wait(self.poll_seconds):
            try:
                self.check()
            except Exception as error:  # the registry may be briefly unreachable: keep serving, try again
                log.warning(
                    "ppml serve: registry check failed (%s); keeping v%s", type(error).__name__, self.current.version
                )


def deidentify_record(policy: Policy, values: dict[str, Any], position: int) -> dict[str, Any]:
    """What de-identification does to a model input before anonymization: the Safe Harbor generalizations of
    identifiers that are quasi-identifiers (ZIP to three digits, dates to the year) and, under HIPAA, ages over
    89 into one category (ppml.deidentification.deidentify, for one record)."""
    import pandas as pd

    from ppml.deidentification import SAFE_HARBOR_MAX_AGE, year_of, zip3
    from ppml.policy import Regulation

    out = dict(values)
    for column, action in policy.schema_.direct_identifiers.items():
        if out.get(column) is None:
            continue
        if action is IdentifierAction.ZIP3:
            out[column] = str(zip3(pd.Series([out[column]])).iloc[0])
        elif action is IdentifierAction.YEAR:
            try:
                out[column] = int(year_of(pd.Series([out[column]]), f"record {position}", column).iloc[0])
            except PPMLError as error:
                raise HTTPException(422, str(error)) from None
    if policy.use_case.regulation is Regulation.HIPAA and isinstance(out.get("age"), int):
        out["age"] = min(out["age"], SAFE_HARBOR_MAX_AGE)
    return out


class PredictionService:
    """Screening, scoring, logging and coarsening of one request, for the version served at its start."""

    def __init__(self, loaded: LoadedPolicy, follower: RegistryFollower, prediction_log: PredictionLog) -> None:
        self.policy, self.follower, self.log = loaded.policy, follower, prediction_log
        settings = self.policy.serving
        self.settings = settings
        self.limits = ClientLimits(
            settings.requests_per_minute, settings.queries_per_client, prediction_log.rows_per_client()
        )
        self.negative, self.positive = label_names(self.policy)
        roles = self.policy.schema_
        self.identifiers = {*roles.direct_identifiers, roles.subject_id}
        self.fields = list(record_model(self.policy).model_fields)
        # the identifiers de-identification generalizes (ZIP3, YEAR) that are also model inputs: usually none
        self.generalized_identifiers = any(
            action in (IdentifierAction.ZIP3, IdentifierAction.YEAR) and column in self.fields
            for column, action in roles.direct_identifiers.items()
        ) or (self.policy.use_case.regulation is Regulation.HIPAA and "age" in self.fields)

    def screen(self, record: BaseModel, position: int) -> dict[str, Any]:
        """Refuse (or drop) direct identifiers and unknown fields, naming the field only; de-identify the rest."""
        values = {name: record.__dict__[name] for name in self.fields}  # pydantic keeps the fields in __dict__
        for column in sorted(record.model_extra or {}):
            if column in self.identifiers and self.settings.identifiers == "drop":
                continue
            if column in self.identifiers:
                raise HTTPException(
                    400,
                    f"record {position}: field '{column}' is a direct identifier (schema.direct_identifiers) "
                    "and the service refuses it; fix: remove it from the request",
                )
            raise HTTPException(422, f"record {position}: field '{column}' is not a model input; fix: remove it")
        return deidentify_record(self.policy, values, position) if self.generalized_identifiers else values

    def score(self, client: str, records: list[BaseModel]) -> tuple[str, ServedVersion, list[Prediction]]:
        self.limits.admit(client, len(records))
        served = self.follower.current  # one version for the whole request, even if the alias moves meanwhile
        raw = [self.screen(record, position) for position, record in enumerate(records)]
        numeric = self.policy.schema_.numeric_columns
        for position, values in enumerate(raw):
            for column in served.builder.columns:
                if column in numeric and values.get(column) is None:
                    raise HTTPException(422, f"record {position}: field '{column}' is required by v{served.version}")
        released = [served.builder.released_values(values) for values in raw]
        scores = [float(p) for p in served.predict(released)]
        labels = [int(p >= 0.5) for p in scores]
        request_id = uuid.uuid4().hex
        self.log.record(request_id, client, served.model_name, served.version, released, scores, labels)
        probability = self.settings.output == "probability"
        out = [
            Prediction(
                label=self.positive if label else self.negative,
                probability=round(p, self.settings.probability_decimals) if probability else None,
            )
            for p, label in zip(scores, labels, strict=True)
        ]
        return request_id, served, out

    def feedback(self, client: str, body: Feedback) -> dict[str, int]:
        if body.label not in (self.positive, self.negative):
            raise HTTPException(422, f"field 'label': use {self.positive!r} or {self.negative!r}")
        if self.log.feedback(client, body.request_id, body.row, int(body.label == self.positive)) == 0:
            raise HTTPException(404, "no prediction of this client with this request_id and row")
        return {"updated": 1}


def create_app(
    loaded: LoadedPolicy, follower: RegistryFollower, prediction_log: PredictionLog, api_keys: Mapping[str, str]
) -> FastAPI:
    """The FastAPI application; the follower already holds a loaded production version."""
    policy = loaded.policy
    service = PredictionService(loaded, follower, prediction_log)
    Record = record_model(policy)
    Batch = create_model(
        "PredictionBatch",
        __config__=ConfigDict(extra="forbid"),
        records=(list[Record], Field(min_length=1, max_length=policy.serving.max_batch_rows)),  # type: ignore[valid-type]
    )
    app = FastAPI(
        title=f"ppml serve: {policy.name}",
        description=f"Predictions of the production version of ppml-{policy.name}. Purpose: {policy.use_case.purpose}",
        version=str(policy.policy_version),
    )
    key_header = APIKeyHeader(name="X-API-Key", auto_error=False)

    @app.exception_handler(RequestValidationError)
    def _validation(_: Request, error: RequestValidationError) -> JSONResponse:
        # pydantic's errors quote the input; a request's values are personal data, so only location and reason
        details = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "")} for e in error.errors()]
        return JSONResponse({"detail": details}, status_code=422)

    async def authenticate(key: Annotated[str | None, Depends(key_header)]) -> str:  # no I/O: on the event loop
        for client, expected in api_keys.items():
            if key is not None and hmac.compare_digest(key.encode(), expected.encode()):
                return client
        raise HTTPException(401, f"missing or wrong API key (header X-API-Key; keys come from {API_KEY_ENV})")

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    def ready() -> dict[str, str]:
        served = follower.current
        return {"status": "ready", "model_name": served.model_name, "model_version": served.version}

    # The endpoints are coroutines that hand only the scoring (model and log I/O) to the thread pool: a plain
    # ``def`` endpoint costs FastAPI a second thread hand-off to validate the response (bench/serving_bench.py).
    @app.post("/predict", response_model=PredictionResponse, response_model_exclude_none=True)
    async def predict(record: Record, client: Annotated[str, Depends(authenticate)]) -> PredictionResponse:  # type: ignore[valid-type]
        request_id, served, out = await run_in_threadpool(service.score, client, [record])
        return PredictionResponse(
            request_id=request_id, model_name=served.model_name, model_version=served.version, prediction=out[0]
        )

    @app.post("/predict/batch", response_model=BatchResponse, response_model_exclude_none=True)
    async def predict_batch(batch: Batch, client: Annotated[str, Depends(authenticate)]) -> BatchResponse:  # type: ignore[valid-type]
        request_id, served, out = await run_in_threadpool(service.score, client, list(batch.records))
        return BatchResponse(
            request_id=request_id, model_name=served.model_name, model_version=served.version, predictions=out
        )

    @app.post("/feedback")
    def feedback(body: Feedback, client: Annotated[str, Depends(authenticate)]) -> dict[str, int]:
        return service.feedback(client, body)

    return app
