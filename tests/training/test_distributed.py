"""DPDDP data-parallel DP-SGD launched with torchrun: 2 CPU processes (gloo) on this machine."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ppml.training import plan_dp_training
from ppml.training.distributed import load_run_config
from tests.training.conftest import make_splits

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]


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
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent)) or "torchrun"
    completed = subprocess.run(
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
            "--checkpoint-dir",
            str(tmp_path / "checkpoint"),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
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
