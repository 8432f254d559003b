"""train_within_budget against PostgreSQL and MLflow: selection, charging, refusal, bad input, resume after failure."""

from __future__ import annotations

import dataclasses
import uuid

import numpy as np
import pytest

from ppml.errors import PPMLError
from ppml.ledger import BudgetExceededError, DataScope, PrivacyLedger
from ppml.tracking import TrainingTracker
from ppml.training import DPConfig, ModelSpec, TabularSplit, TrainingConfig, train_baseline, train_within_budget

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.filterwarnings("ignore:Full backward hook", "ignore:Secure RNG", "ignore:Optimal order"),
]

CANDIDATES = [
    TrainingConfig(model=ModelSpec("mlp", (16,)), epochs=2, batch_size=200, learning_rate=0.02, seed=1, device="cpu"),
    TrainingConfig(model=ModelSpec("logistic"), epochs=2, batch_size=200, learning_rate=0.05, seed=1, device="cpu"),
]
DP = DPConfig(target_epsilon=2.0, target_delta=1e-5, accountant="rdp", dp_seed=4)
TAGS = {
    "dagster.run_id": "run-1",
    "ppml.policy_sha256": "p" * 64,
    "ppml.data_sha256": "d" * 64,
    "ppml.window": "2026-03-07..2026-03-07 (1 day)",
}


@pytest.fixture
def ledger(postgres_database):
    ledger = PrivacyLedger(postgres_database)
    yield ledger
    ledger.close()


@pytest.fixture
def tracker():
    return TrainingTracker(experiment_name=f"test-{uuid.uuid4().hex[:8]}", git_commit="0" * 40)


def _scope(train: TabularSplit) -> DataScope:
    return DataScope("synthetic", ("2026-03-07",), train.record_set_hash())


def _mlflow_runs(tracker: TrainingTracker) -> list:
    return tracker.client.search_runs([tracker.experiment_id])


def test_selects_on_validation_logs_and_charges_every_candidate(splits, ledger, tracker, tmp_path) -> None:
    import mlflow

    from ppml.training.progress import add_listener, remove_listener

    train, validation = splits
    heard: list[str] = []
    add_listener(heard.append)
    result = train_within_budget(
        train,
        validation,
        CANDIDATES,
        DP,
        ledger=ledger,
        scope=_scope(train),
        lifetime_epsilon=10.0,
        checkpoint_dir=tmp_path,
        tracker=tracker,
        tags=TAGS,
    )
    remove_listener(heard.append)
    # per-epoch progress for the CLI's display: every candidate's every epoch, with the epsilon spent so far
    assert {line.split(" eps ")[0] for line in heard} == {f"candidate {c} epoch {e}/2" for c in (1, 2) for e in (1, 2)}
    assert result.epsilon <= DP.target_epsilon
    # selection on validation: the best validation accuracy (then AUC) wins -- which one depends on the DP noise
    best = max(result.candidates, key=lambda c: (c.validation_accuracy, c.validation_auc))
    assert result.selected_index == best.index and result.model is best.model
    assert result.epsilon_including_selection > result.epsilon
    runs = ledger.runs("synthetic")
    assert [r.status for r in runs] == ["completed", "completed"]
    assert all(r.steps_charged == r.steps_completed == r.planned_steps for r in runs)
    assert result.lifetime_spent.epsilon >= result.epsilon and result.lifetime_remaining < 10.0
    selected = tracker.client.get_run(result.mlflow_run_id)
    for param in ("sigma", "C", "sample_rate", "planned_steps", "epochs", "batch_size", "lr", "accountant", "model"):
        assert param in selected.data.params, param
    for metric in ("final_epsilon", "final_delta", "epsilon_including_selection", "final_validation_accuracy"):
        assert metric in selected.data.metrics, metric
    epsilons = tracker.client.get_metric_history(result.mlflow_run_id, "epsilon")
    assert [m.step for m in epsilons] == [1, 2] and epsilons[-1].value == pytest.approx(result.epsilon)
    for key, value in TAGS.items():
        assert selected.data.tags[key] == value
    assert selected.data.tags["ppml.git_commit"] == "0" * 40 and selected.data.tags["ppml.selected"] == "true"
    assert selected.data.tags["ppml.ledger_run_id"] == result.ledger_run_id
    assert selected.data.tags["mlflow.parentRunId"] == result.mlflow_parent_run_id
    assert len(_mlflow_runs(tracker)) == 3
    served = mlflow.pyfunc.load_model(result.model_uri)
    probabilities = served.predict(validation.X[:5])
    np.testing.assert_allclose(np.asarray(probabilities).sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(probabilities)[:, 1], result.model.predict_proba(validation.X[:5]), rtol=1e-4)


def test_over_budget_training_is_refused_with_spent_requested_limit(splits, ledger, tracker, tmp_path) -> None:
    train, validation = splits
    scope = _scope(train)
    first = train_within_budget(
        train,
        validation,
        CANDIDATES[:1],
        DP,
        ledger=ledger,
        scope=scope,
        lifetime_epsilon=2.1,
        checkpoint_dir=tmp_path,
        tracker=tracker,
    )
    runs_before = len(_mlflow_runs(tracker))
    with pytest.raises(BudgetExceededError) as refused:  # the budget is (nearly) exhausted: refused up front
        train_within_budget(
            train,
            validation,
            CANDIDATES[1:],
            DP,
            ledger=ledger,
            scope=scope,
            lifetime_epsilon=2.1,
            checkpoint_dir=tmp_path,
            tracker=tracker,
        )
    message = str(refused.value)
    assert f"spent epsilon {first.lifetime_spent.epsilon:.4g}" in message
    assert "requested epsilon" in message and "> limit 2.1" in message
    assert len(_mlflow_runs(tracker)) == runs_before  # nothing trained, logged or registered
    assert [r.status for r in ledger.runs("synthetic")] == ["completed", "refused"]


class TestBadInputRegistersNothing:
    """Issue item 9 through the accountable entry point: a clear PPMLError, no ledger charge, no MLflow run."""

    def _call(self, train, validation, ledger, tracker, tmp_path, dp=DP, candidates=CANDIDATES[:1]):
        return train_within_budget(
            train,
            validation,
            candidates,
            dp,
            ledger=ledger,
            scope=_scope(train),
            lifetime_epsilon=10.0,
            checkpoint_dir=tmp_path,
            tracker=tracker,
        )

    def test_each_bad_input(self, splits, ledger, tracker, tmp_path) -> None:
        train, validation = splits
        with pytest.raises(PPMLError, match="target_epsilon"):
            self._call(train, validation, ledger, tracker, tmp_path, dp=dataclasses.replace(DP, target_epsilon=0))
        with pytest.raises(PPMLError, match="not below 1/n"):
            self._call(
                train, validation, ledger, tracker, tmp_path, dp=dataclasses.replace(DP, target_delta=1.0 / train.n)
            )
        with pytest.raises(PPMLError, match="training split is empty"):
            self._call(train.subset(np.arange(0)), validation, ledger, tracker, tmp_path)
        with pytest.raises(PPMLError, match="only one class"):
            self._call(train.subset(np.flatnonzero(train.y == 0)), validation, ledger, tracker, tmp_path)
        with pytest.raises(PPMLError, match="non-numeric"):
            bad = train.X.astype(object)
            bad[0, 3] = "Private"
            self._call(
                TabularSplit(bad, train.y, train.feature_names, "adult/train"), validation, ledger, tracker, tmp_path
            )
        with pytest.raises(PPMLError, match="validation split"):
            self._call(train, validation.subset(np.arange(0)), ledger, tracker, tmp_path)
        with pytest.raises(PPMLError, match="lifetime_epsilon"):
            train_within_budget(
                train,
                validation,
                CANDIDATES[:1],
                DP,
                ledger=ledger,
                scope=_scope(train),
                lifetime_epsilon=0.0,
                checkpoint_dir=tmp_path,
                tracker=tracker,
            )
        assert ledger.runs() == [] and _mlflow_runs(tracker) == []


class _FailingTracker(TrainingTracker):
    """A real tracker whose per-epoch logging fails once at epoch 2 (e.g. the MLflow server going away)."""

    failures = 1

    def log_epoch(self, run_id, report):
        if report.epoch == 2 and self.failures:
            self.failures -= 1
            raise ConnectionError("MLflow unreachable")
        super().log_epoch(run_id, report)


def test_failed_training_keeps_its_charge_and_resumes_without_double_counting(splits, ledger, tmp_path) -> None:
    train, validation = splits
    config = dataclasses.replace(CANDIDATES[0], epochs=3)
    tracker = _FailingTracker(experiment_name=f"test-{uuid.uuid4().hex[:8]}", git_commit="1" * 40)
    call = dict(ledger=ledger, scope=_scope(train), lifetime_epsilon=10.0, checkpoint_dir=tmp_path, tracker=tracker)
    with pytest.raises(ConnectionError):
        train_within_budget(train, validation, [config], DP, **call)
    [failed] = ledger.runs("synthetic")
    per_epoch = failed.planned_steps // 3
    assert failed.status == "failed" and failed.steps_charged == 2 * per_epoch >= failed.steps_completed
    assert failed.charge().epsilon == failed.epsilon_charged > 0
    result = train_within_budget(train, validation, [config], DP, **call)
    assert result.resumed and result.candidates[0].resumed_from_step == per_epoch  # the epoch-1 checkpoint
    [done] = ledger.runs("synthetic")
    assert done.id == failed.id and done.status == "completed" and done.steps_charged == done.planned_steps
    assert done.epsilon_charged == pytest.approx(result.epsilon)
    spent = result.lifetime_spent  # one run, counted once (PRV may bound it below the RDP-reported epsilon)
    assert spent.runs == 1 and spent.basic_epsilon == pytest.approx(result.epsilon)
    assert done.mlflow_run_id == result.mlflow_run_id  # the same MLflow run continued
    epochs = [m.step for m in tracker.client.get_metric_history(result.mlflow_run_id, "epsilon")]
    assert sorted(set(epochs)) == [1, 2, 3]


def test_baseline_is_never_deploy_and_outside_composition(splits, ledger, tracker) -> None:
    train, validation = splits
    baseline = train_baseline(
        train, CANDIDATES[0], validation=validation, ledger=ledger, scope=_scope(train), tracker=tracker, tags=TAGS
    )
    run = tracker.client.get_run(baseline.mlflow_run_id)
    assert run.data.tags["never-deploy"] == "true" and run.data.tags["ppml.private"] == "false"
    assert not tracker.client.list_artifacts(baseline.mlflow_run_id)  # no weights of a non-private model
    [row] = ledger.runs("synthetic")
    assert row.kind == "non_private" and row.charge() is None
    assert ledger.spent(_scope(train), 1e-5).epsilon == 0.0
