"""Done-when proofs against PostgreSQL with real processes: a kill -9 never under-counts and resumes without
double counting; concurrent reservations never lose an update (and never overspend)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ppml.ledger import Charge, PlannedRun, PrivacyLedger, compose
from ppml.training import epsilon_of_history, plan_dp_training, train_dp
from tests.training._ledger_child import configs, data

pytestmark = [
    pytest.mark.postgres,
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore:Full backward hook", "ignore:Secure RNG", "ignore:Optimal order"),
]

REPO = Path(__file__).resolve().parents[2]


def _child(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.training._ledger_child", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
    )


def _steps_done(progress: Path) -> int:
    text = progress.read_text().strip() if progress.exists() else ""
    return int(text) if text else 0


def test_kill_minus_9_is_never_under_counted_and_resumes_exactly(postgres_database, tmp_path) -> None:
    config, dp = configs()
    train, validation = data()
    plan = plan_dp_training(train.n, config, dp)  # 60 steps per epoch, 300 in all
    progress, checkpoints = tmp_path / "progress", tmp_path / "checkpoints"
    PrivacyLedger(postgres_database).close()  # migrate once, outside the timed child

    victim = _child(
        "train",
        "--ledger",
        postgres_database,
        "--progress",
        str(progress),
        "--checkpoints",
        str(checkpoints),
        "--dagster-run-id",
        "run-killed",
        "--step-delay",
        "0.004",
    )
    deadline = time.time() + 90
    while _steps_done(progress) < plan.steps_per_epoch * 2 + 7:  # in the middle of the third epoch
        assert victim.poll() is None, victim.communicate()
        assert time.time() < deadline, "the child never reached epoch 3"
        time.sleep(0.005)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    actually_done = _steps_done(progress)

    ledger = PrivacyLedger(postgres_database)
    [crashed] = ledger.runs("synthetic")
    assert crashed.status == "running"  # nobody told the ledger: the process vanished
    assert crashed.steps_charged >= actually_done  # never under-counted ...
    assert crashed.steps_charged % plan.steps_per_epoch == 0  # ... because whole epochs are pre-charged
    assert crashed.epsilon_charged >= epsilon_of_history(
        [(plan.noise_multiplier, plan.sample_rate, actually_done)], dp.target_delta, dp.accountant
    )
    assert crashed.charge().steps == plan.planned_steps  # a dead-looking run still reserves its whole plan
    assert crashed.steps_completed < actually_done <= crashed.steps_charged

    survivor = _child(
        "train",
        "--ledger",
        postgres_database,
        "--progress",
        str(tmp_path / "progress2"),
        "--checkpoints",
        str(checkpoints),
        "--dagster-run-id",
        "run-resumed",
    )
    out, err = survivor.communicate(timeout=120)
    assert survivor.returncode == 0, err[-3000:]
    resumed = json.loads(out.strip().splitlines()[-1])
    assert resumed["resumed"] and resumed["ledger_run_id"] == crashed.id
    assert resumed["resumed_from_step"] == crashed.steps_completed  # the last checkpoint (end of epoch 2)
    assert resumed["resumed_from_step"] % plan.steps_per_epoch == 0
    assert _steps_done(tmp_path / "progress2") == plan.planned_steps  # it continued from there, not from 0

    [final] = ledger.runs("synthetic")  # one row: not double-counted
    assert final.id == crashed.id and final.status == "completed" and final.dagster_run_id == "run-resumed"
    assert final.steps_charged == final.steps_completed == plan.planned_steps
    reference = train_dp(train, config, dp, validation=validation)  # the same run, never interrupted
    assert resumed["epsilon"] == pytest.approx(reference.epsilon, rel=1e-12)
    assert final.epsilon_charged == pytest.approx(reference.epsilon, rel=1e-12)
    weights = b"".join(p.detach().numpy().tobytes() for p in reference.module.parameters()).hex()
    assert resumed["weights"] == weights  # model, optimizer, sampler position and noise state were restored
    kinds = [e["kind"] for e in ledger.events(run_id=final.id)]
    assert kinds[0] == "reserved" and "resumed" in kinds and kinds[-1] == "completed"
    ledger.close()


def _plan(steps: int = 300) -> PlannedRun:
    sigma, rate, delta = 1.2, 0.02, 1e-5
    epsilon = epsilon_of_history([(sigma, rate, steps)], delta, "prv")
    return PlannedRun(0, "fp", {}, "prv", epsilon, delta, sigma, sigma, rate, steps, epsilon)


@pytest.mark.parametrize("backend", ["postgres", "sqlite"])
def test_concurrent_reservations_never_lose_an_update(backend, request, tmp_path) -> None:
    url = request.getfixturevalue("postgres_database") if backend == "postgres" else f"sqlite:///{tmp_path}/l.db"
    plan = _plan()
    fits = [compose([plan.charge()] * k, plan.target_delta).epsilon for k in range(1, 6)]
    limit = (fits[2] + fits[3]) / 2  # exactly three runs fit, the fourth would overspend
    PrivacyLedger(url).close()
    start_at = time.time() + 8  # after both interpreters have imported everything
    children = [
        _child(
            "reserve",
            "--ledger",
            url,
            "--plan",
            json.dumps(plan.__dict__ | {"config": {}}),
            "--limit",
            str(limit),
            "--attempts",
            "3",
            "--start-at",
            str(start_at),
        )
        for _ in range(2)
    ]
    accepted = 0
    for child in children:
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err[-3000:]
        accepted += json.loads(out.strip().splitlines()[-1])["accepted"]
    ledger = PrivacyLedger(url)
    running = [r for r in ledger.runs("shared") if r.status == "running"]
    refused = [r for r in ledger.runs("shared") if r.status == "refused"]
    assert accepted == len(running) == 3 and len(refused) == 3  # no lost reservation, no overspend
    spent = compose([r.charge() for r in running], plan.target_delta)
    assert spent.epsilon <= limit
    assert compose([*[r.charge() for r in running], plan.charge()], plan.target_delta).epsilon > limit
    assert isinstance(running[0].charge(), Charge)
    ledger.close()
