"""Child process for the kill -9 and concurrency tests (run as ``python -m tests.training._ledger_child``).

``train``: one accountable training on synthetic data; every finished optimizer step is written to a progress
file (ground truth of what the process actually spent, for the under-count check); prints a JSON result.
``reserve``: waits at a start line, then tries ``--attempts`` reservations of one fixed run; prints how many fit.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

TRAINING_CONFIG = {"epochs": 5, "batch_size": 50, "learning_rate": 0.02, "seed": 2, "device": "cpu"}
DP_CONFIG = {"target_epsilon": 2.0, "target_delta": 1e-5, "accountant": "rdp", "dp_seed": 9}


def configs():
    from ppml.training import DPConfig, ModelSpec, TrainingConfig

    return TrainingConfig(model=ModelSpec("mlp", (16,)), **TRAINING_CONFIG), DPConfig(**DP_CONFIG)


def data():
    from tests.training.conftest import make_splits

    return make_splits(n_train=3000, n_validation=300)


def train(args: argparse.Namespace) -> None:
    import ppml.training.accountable as accountable
    from ppml.ledger import DataScope, PrivacyLedger

    progress = os.open(args.progress, os.O_WRONLY | os.O_CREAT, 0o600)

    def record_step(step: int) -> None:
        os.pwrite(progress, f"{step:>12}\n".encode(), 0)
        if args.step_delay:
            time.sleep(args.step_delay)

    accountable.train_dp = functools.partial(accountable.train_dp, on_step=record_step)
    train_split, validation = data()
    config, dp = configs()
    ledger = PrivacyLedger(args.ledger)
    result = accountable.train_within_budget(
        train_split,
        validation,
        [config],
        dp,
        ledger=ledger,
        scope=DataScope("synthetic", ("2026-03-07",)),
        lifetime_epsilon=10.0,
        checkpoint_dir=Path(args.checkpoints),
        dagster_run_id=args.dagster_run_id,
    )
    weights = b"".join(p.detach().numpy().tobytes() for p in result.model.module.parameters())
    print(
        json.dumps(
            {
                "ledger_run_id": result.ledger_run_id,
                "epsilon": result.epsilon,
                "steps": result.model.steps,
                "resumed": result.resumed,
                "resumed_from_step": result.candidates[0].resumed_from_step,
                "weights": weights.hex(),
            }
        )
    )


def reserve(args: argparse.Namespace) -> None:
    from ppml.ledger import BudgetExceededError, DataScope, LifetimeBudget, PlannedRun, PrivacyLedger

    plan = PlannedRun(**json.loads(args.plan))
    ledger = PrivacyLedger(args.ledger, migrate=False)
    while time.time() < args.start_at:  # both processes start together
        time.sleep(0.001)
    accepted = 0
    for attempt in range(args.attempts):
        try:
            ledger.reserve(
                DataScope("shared"),
                [plan],
                LifetimeBudget(args.limit, plan.target_delta),
                request_key=f"{os.getpid()}-{attempt}",
            )
            accepted += 1
        except BudgetExceededError:
            pass
    print(json.dumps({"accepted": accepted}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["train", "reserve"])
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--progress")
    parser.add_argument("--checkpoints")
    parser.add_argument("--dagster-run-id")
    parser.add_argument("--step-delay", type=float, default=0.0)
    parser.add_argument("--plan")
    parser.add_argument("--limit", type=float)
    parser.add_argument("--attempts", type=int, default=1)
    parser.add_argument("--start-at", type=float, default=0.0)
    args = parser.parse_args()
    (train if args.mode == "train" else reserve)(args)


if __name__ == "__main__":
    main()
