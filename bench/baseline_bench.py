"""Tuned non-private baseline benchmark: how long the grid takes, what it picks, and what the straw man loses.

    .venv/bin/python bench/baseline_bench.py              # raw Adult, plus the demo's features if materialized
    .venv/bin/python bench/baseline_bench.py --rounds 3   # best of 3 rounds for the timing

Data: ``ppml.preparation.raw_adult_feature_matrix`` (raw Adult, official test split, 108 features) and, when
``make demo`` has materialized it, the newest ``$PPML_HOME/assets/training_features`` parquet (the anonymized
features the Dagster graph trains on, ~35,000 rows x ~70 features). For each: the wall time of
``tune_baseline`` (the six-fit grid, single-threaded), the family and settings it chose, its test accuracy and
ROC AUC, and the same for the "straw man" -- the DP model's settings from ``policies/adult_gdpr.yaml`` trained
without noise, which is what ``non_private_baseline`` trained before.

Writes the markdown table to stdout and to ``bench/results/baseline.md``.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ppml.evaluation import utility_report  # noqa: E402
from ppml.training import TabularSplit, train_non_private  # noqa: E402
from ppml.training.baseline import single_threaded, tune_baseline  # noqa: E402

RESULTS = REPO / "bench" / "results" / "baseline.md"
POLICY = REPO / "policies" / "adult_gdpr.yaml"


def raw_adult() -> dict[str, TabularSplit]:
    from ppml.preparation import raw_adult_feature_matrix

    matrix = raw_adult_feature_matrix(seed=0)
    return {s: TabularSplit(*matrix.split(s), tuple(matrix.feature_names), f"adult/{s}") for s in _SPLITS}


def demo_features() -> dict[str, TabularSplit] | None:
    home = Path(os.environ.get("PPML_HOME", REPO / ".ppml"))
    files = sorted((home / "assets" / "training_features").glob("**/*.parquet"), key=lambda p: p.stat().st_mtime)
    if not files:
        return None
    frame = pd.read_parquet(files[-1])
    names = [c for c in frame.columns if c not in ("label", "split")]
    return {
        s: TabularSplit(
            frame.loc[frame["split"] == s, names].to_numpy(np.float32),
            frame.loc[frame["split"] == s, "label"].to_numpy(np.int64),
            tuple(names),
            f"demo/{s}",
        )
        for s in _SPLITS
    }


_SPLITS = ("train", "validation", "test")


def straw_man(splits: dict[str, TabularSplit]):  # type: ignore[no-untyped-def]
    from ppml.policy import load_policy
    from ppml.training import ModelSpec, TrainingConfig

    settings = load_policy(POLICY).policy.training
    config = TrainingConfig(
        model=ModelSpec("mlp", tuple(settings.hidden_sizes)),
        epochs=settings.epochs,
        batch_size=settings.batch_size,
        max_physical_batch_size=max(settings.batch_size, 1024),
        learning_rate=settings.candidate_learning_rates[0],
        optimizer="sgd",
        seed=settings.seed,
    )
    with single_threaded():
        return train_non_private(splits["train"], config, validation=splits["validation"])


def measure(name: str, splits: dict[str, TabularSplit], rounds: int) -> str:
    seconds = []
    for _ in range(rounds):
        started = time.perf_counter()
        tuned = tune_baseline(splits["train"], splits["validation"], hidden_sizes=(64,), seed=7)
        seconds.append(time.perf_counter() - started)
    test = splits["test"]
    ours = utility_report(test.y, tuned.model.predict_proba(test.X), n_resamples=0)
    straw = utility_report(test.y, straw_man(splits).predict_proba(test.X), n_resamples=0)
    settings = ", ".join(f"{k}={v}" for k, v in tuned.chosen.settings.items())
    shape = f"{splits['train'].n:,} x {splits['train'].n_features}"
    return (
        f"| {name} | {shape} | {min(seconds):.1f} | {tuned.chosen.family} ({settings}) | "
        f"{ours.value('accuracy'):.4f} | {ours.value('roc_auc'):.4f} | "
        f"{straw.value('accuracy'):.4f} | {straw.value('roc_auc'):.4f} |"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1, help="timing rounds (the best is reported)")
    args = parser.parse_args()
    rows = [measure("raw Adult (official test split)", raw_adult(), args.rounds)]
    demo = demo_features()
    if demo is not None:
        rows.append(measure("demo training_features (anonymized)", demo, args.rounds))
    table = "\n".join(
        [
            f"Tuned baseline, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
            f"load average {os.getloadavg()[0]:.1f}; command: `.venv/bin/python bench/baseline_bench.py "
            f"--rounds {args.rounds}`",
            "",
            "| features | train rows x features | tuning seconds (6 fits) | chosen | test accuracy | test ROC AUC "
            "| straw man accuracy | straw man ROC AUC |",
            "|---|---|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    RESULTS.write_text(table + "\n")


if __name__ == "__main__":
    main()
