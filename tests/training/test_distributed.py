"""DPDDP data-parallel DP-SGD launched with torchrun: 2 CPU processes (gloo) on this machine, charged to the ledger."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ppml.ledger import DataScope, LifetimeBudget, PrivacyLedger
from ppml.training import plan_dp_training
from ppml.training.distributed import load_run_config, main
from tests.training.conftest import make_splits

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


def _torchrun(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    return subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "ppml.training.distributed",
            "--data",
            str(tmp_path / "data.npz"),
            "--config",
            str(tmp_path / "run.json"),
            "--out",
            str(tmp_path / "out"),
            *extra,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


def _ledger_args(url: str, lifetime: float = 8.0) -> list[str]:
    return ["--ledger-url", url, "--dataset", "synthetic-people", "--lifetime-epsilon", str(lifetime)]


@pytest.mark.parametrize("clipping", ["bk", "ghost"])
def test_two_process_dpddp_training_with_torchrun(tmp_path, clipping: str) -> None:
    train, validation = make_splits(n_train=1600, n_validation=400)
    np.savez(
        tmp_path / "data.npz",
        X_train=train.X,
        y_train=train.y,
        X_validation=validation.X,
        y_validation=validation.y,
        feature_names=np.array(train.feature_names),
    )
    run = {
        "training": {
            "model": {"kind": "mlp", "hidden_sizes": [16]},
            "epochs": 3,
            "batch_size": 200,
            "max_physical_batch_size": 64,
            "learning_rate": 0.02,
            "seed": 1,
            "device": "cpu",
        },
        "dp": {"target_epsilon": 3.0, "target_delta": 1e-5, "accountant": "rdp", "dp_seed": 3, "clipping": clipping},
    }
    (tmp_path / "run.json").write_text(json.dumps(run))
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    completed = _torchrun(tmp_path, "--checkpoint-dir", str(tmp_path / "checkpoint"), *_ledger_args(url))
    assert completed.returncode == 0, completed.stderr[-4000:]
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    config, dp = load_run_config(tmp_path / "run.json")
    plan = plan_dp_training(train.n, config, dp)
    assert result["world_size"] == 2 and result["backend"] == "gloo" and result["clipping"] == clipping
    assert result["steps"] == plan.planned_steps and result["noise_multiplier"] == pytest.approx(plan.noise_multiplier)
    assert 0 < result["epsilon"] <= dp.target_epsilon
    assert result["validation"]["accuracy"] > 0.75
    digests = {json.loads((tmp_path / "out" / f"rank{k}.json").read_text())["weights_sha256"] for k in (0, 1)}
    assert len(digests) == 1  # the replicas ended identical: one noisy update, applied everywhere
    assert (tmp_path / "checkpoint" / "dp_checkpoint.pt").exists()
    ledger = PrivacyLedger(url)
    try:  # the launch was charged: one completed run, charged what it trained
        (row,) = ledger.runs("synthetic-people")
        assert row.id == result["ledger_run_id"] and row.status == "completed" and row.kind == "dp"
        assert row.steps_charged == plan.planned_steps and row.epsilon_charged == pytest.approx(
            result["epsilon_charged"]
        )
        spent = ledger.spent(DataScope("synthetic-people"), dp.target_delta).epsilon
        assert 0 < spent <= row.epsilon_charged + 1e-9  # composition may be tighter (PRV), never more than charged
    finally:
        ledger.close()


def test_the_entry_point_refuses_to_train_without_a_ledger(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    args = ["--data", str(tmp_path / "d.npz"), "--config", str(tmp_path / "c.json"), "--out", str(tmp_path / "o")]
    os.environ.pop("PPML_LEDGER_URL", None)
    assert main(args) == 2
    message = capsys.readouterr().err.strip()
    assert "field '--ledger-url'" in message and "fix:" in message and "\n" not in message
    assert main([*args, "--ledger-url", "sqlite:///x.db", "--dataset", "d"]) == 2
    assert "--lifetime-epsilon" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_launch_over_the_lifetime_budget_is_refused_on_every_rank(tmp_path) -> None:  # type: ignore[no-untyped-def]
    train, _ = make_splits(n_train=800, n_validation=200)
    np.savez(tmp_path / "data.npz", X_train=train.X, y_train=train.y)
    run = {
        "training": {"model": {"kind": "logistic"}, "epochs": 1, "batch_size": 100, "device": "cpu"},
        "dp": {"target_epsilon": 3.0, "target_delta": 1e-5, "accountant": "rdp"},
    }
    (tmp_path / "run.json").write_text(json.dumps(run))
    url = f"sqlite:///{tmp_path / 'ledger.db'}"
    completed = _torchrun(tmp_path, *_ledger_args(url, lifetime=2.0))
    assert completed.returncode != 0
    assert "training refused for data set 'synthetic-people'" in completed.stderr
    assert not (tmp_path / "out").exists()
    ledger = PrivacyLedger(url)
    try:
        assert [r.status for r in ledger.runs("synthetic-people")] == ["refused"]
        assert ledger.spent(DataScope("synthetic-people"), 1e-5).epsilon == 0.0
        assert ledger.budget_status("synthetic-people", LifetimeBudget(2.0, 1e-5))[0].runs == 0
    finally:
        ledger.close()
