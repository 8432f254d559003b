"""Training benchmark: DP-SGD (Opacus) against the same model trained non-privately on UCI Adult.

    .venv/bin/python bench/training_bench.py            # full: throughput + accuracy at eps 0.5, 1, 3, 8
    .venv/bin/python bench/training_bench.py --quick    # minutes: fewer candidates, eps 1 only

Features: ``ppml.preparation.raw_adult_feature_matrix`` -- raw Adult, official train/test split, 15% of the
official training set held out for validation, 108 features after one-hot encoding. Model selection (DP and
non-private) looks at the validation split only; the test split is scored once, for the table.

Throughput: the MLP 108->64->2 at the same batch size (physical cap twice the batch, so that neither side splits a
batch), each mode in a fresh process (so peak memory is its own):
non-private, DP with book-keeping clipping (ppml, one backward pass), Opacus ghost clipping (two backward passes)
and Opacus hooks (per-example gradients). Samples per second count optimisation time only (per-epoch validation
and accounting excluded, for both sides) over ~100 steps after a warm-up epoch, best of 3 interleaved rounds (other
jobs on a shared machine only ever slow a run down). Peak memory is the growth of
the process's peak resident set during training (CPU) or ``torch.cuda.max_memory_allocated`` (GPU).

Anonymized features: with ``--anonymized-features PATH`` (or the newest ``$PPML_HOME/assets/training_features``
parquet that ``make demo`` materialized) the selected eps=1 configuration is also trained on the features the
Dagster graph trains on and scored on that graph's own test split.

Writes the markdown table to stdout and to ``bench/results/training.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ppml.training import DPConfig, ModelSpec, TabularSplit, TrainingConfig, train_dp, train_non_private  # noqa: E402

RESULTS = REPO / "bench" / "results" / "training.md"
MODEL = ModelSpec("mlp", (64,))
DELTA = 1e-5

#: DP candidates: large logical batches (Poisson-sampled, split by BatchMemoryManager), the usual DP-SGD regime.
DP_GRID = [
    {"batch_size": 1024, "epochs": 20, "learning_rate": 2e-3, "optimizer": "adam", "max_grad_norm": 1.0},
    {"batch_size": 2048, "epochs": 30, "learning_rate": 3e-3, "optimizer": "adam", "max_grad_norm": 1.0},
    {"batch_size": 4096, "epochs": 40, "learning_rate": 5e-3, "optimizer": "adam", "max_grad_norm": 1.0},
    {"batch_size": 1024, "epochs": 15, "learning_rate": 0.5, "optimizer": "sgd", "momentum": 0.9, "max_grad_norm": 1.0},
]
NON_PRIVATE_GRID = [
    {"batch_size": 256, "epochs": 5, "learning_rate": 1e-3, "optimizer": "adam"},
    {"batch_size": 256, "epochs": 10, "learning_rate": 1e-3, "optimizer": "adam"},
    {"batch_size": 256, "epochs": 20, "learning_rate": 1e-3, "optimizer": "adam"},
    {"batch_size": 1024, "epochs": 20, "learning_rate": 3e-3, "optimizer": "adam"},
]
MODES = ["non-private", "dp-bk", "dp-ghost", "dp-hooks"]


LOAD_AT_START = os.getloadavg()[0]


def load_adult() -> dict[str, TabularSplit]:
    from ppml.preparation import raw_adult_feature_matrix

    matrix = raw_adult_feature_matrix(seed=0)
    names = tuple(matrix.feature_names)
    return {s: TabularSplit(*matrix.split(s), names, f"adult/{s}") for s in ("train", "validation", "test")}


def load_feature_parquet(path: Path) -> dict[str, TabularSplit]:
    import pandas as pd

    frame = pd.read_parquet(path)
    names = [c for c in frame.columns if c not in ("label", "split")]
    return {
        s: TabularSplit(
            frame.loc[frame["split"] == s, names].to_numpy(np.float32),
            frame.loc[frame["split"] == s, "label"].to_numpy(np.int64),
            tuple(names),
            f"{path.name}/{s}",
        )
        for s in ("train", "validation", "test")
    }


def _config(entry: dict[str, Any], device: str) -> tuple[TrainingConfig, float]:
    entry = dict(entry)
    clip = entry.pop("max_grad_norm", 1.0)
    return TrainingConfig(model=MODEL, max_physical_batch_size=8192, seed=0, device=device, **entry), clip


# ----------------------------------------------------------------------------------------------------- accuracy


def select_dp(
    splits: dict[str, TabularSplit], epsilon: float, grid: list[dict], device: str, dp_seed: int
) -> dict[str, Any]:
    """Train every candidate at epsilon, pick the best validation accuracy, score the pick on test once."""
    best = None
    tried = []
    for entry in grid:
        config, clip = _config(entry, device)
        dp = DPConfig(epsilon, DELTA, max_grad_norm=clip, dp_seed=dp_seed)
        model = train_dp(splits["train"], config, dp, validation=splits["validation"])
        validation_accuracy = model.history[-1].validation_accuracy
        tried.append(validation_accuracy)
        if best is None or validation_accuracy > best[0]:
            best = (validation_accuracy, entry, model)
    validation_accuracy, entry, model = best
    test = model.evaluate(splits["test"])
    return {
        "epsilon": epsilon,
        "reported_epsilon": model.epsilon,
        "config": entry,
        "candidates": len(grid),
        "validation_accuracy": validation_accuracy,
        "test_accuracy": test["accuracy"],
        "test_auc": test["auc"],
        "noise_multiplier": model.noise_multiplier,
    }


def select_non_private(splits: dict[str, TabularSplit], grid: list[dict], device: str) -> dict[str, Any]:
    best = None
    for entry in grid:
        config, _ = _config(entry, device)
        model = train_non_private(splits["train"], config, validation=splits["validation"])
        validation_accuracy = model.history[-1].validation_accuracy
        if best is None or validation_accuracy > best[0]:
            best = (validation_accuracy, entry, model)
    validation_accuracy, entry, model = best
    test = model.evaluate(splits["test"])
    return {
        "config": entry,
        "validation_accuracy": validation_accuracy,
        "test_accuracy": test["accuracy"],
        "test_auc": test["auc"],
    }


# --------------------------------------------------------------------------------------------------- throughput


def measure_one(mode: str, batch_size: int, epochs: int, device: str, threads: int) -> dict[str, Any]:
    """Run in a fresh process: train ``epochs`` epochs in ``mode`` and report throughput and peak memory."""
    torch.set_num_threads(threads)
    splits = load_adult()
    train = splits["train"]
    config = TrainingConfig(
        model=MODEL,
        epochs=epochs,
        batch_size=batch_size,
        # The physical cap only bounds memory. At cap = batch size about half of DP's Poisson batches (size
        # Binomial(n, q), mean = batch size) exceed it and go through the model in two halves, which measures the
        # splitter, not DP; at twice the batch neither side ever splits (the non-private batch is never split).
        max_physical_batch_size=2 * batch_size,
        learning_rate=2e-3,
        optimizer="adam",
        seed=0,
        device=device,
    )
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    rss_before = _rss_mib()
    if mode == "non-private":
        model = train_non_private(train, config)
    else:
        clipping = mode.split("-", 1)[1]
        model = train_dp(train, config, DPConfig(1.0, DELTA, clipping=clipping, dp_seed=0))
    measured = model.history[1:] or model.history  # the first epoch is warm-up
    throughput = sum(r.samples for r in measured) / sum(r.train_seconds for r in measured)
    peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else _peak_rss_mib() - rss_before
    return {
        "mode": mode,
        "batch_size": batch_size,
        "samples_per_second": throughput,
        "peak_memory_mib": peak,
        "memory_kind": "cuda allocated" if cuda else "CPU peak RSS growth",
    }


def measure_all(batches: list[int], steps: int, rounds: int, device: str, threads: int) -> list[dict[str, Any]]:
    """Every (mode, batch) in its own process, about ``steps`` optimizer steps after a warm-up epoch. Rounds
    interleave the modes so that machine load hits all alike; the best round of each counts (load from other jobs
    only ever slows a run down, so the least disturbed round is the closest to the machine's speed)."""
    samples: dict[tuple[str, int], list[dict[str, Any]]] = {}
    n_train = 27677
    for _ in range(rounds):
        for batch in batches:
            epochs = 1 + max(2, math.ceil(steps * batch / n_train))
            for mode in MODES:
                command = [
                    sys.executable,
                    __file__,
                    "--measure-one",
                    json.dumps(
                        {"mode": mode, "batch_size": batch, "epochs": epochs, "device": device, "threads": threads}
                    ),
                ]
                out = subprocess.run(
                    command,
                    capture_output=True,
                    text=True,
                    check=True,
                    cwd=REPO,
                    env={**os.environ, "OMP_NUM_THREADS": str(threads)},
                )
                samples.setdefault((mode, batch), []).append(json.loads(out.stdout.strip().splitlines()[-1]))
    rows = []
    for runs in samples.values():
        rows.append(
            {
                **runs[0],
                "samples_per_second": max(r["samples_per_second"] for r in runs),
                "peak_memory_mib": max(r["peak_memory_mib"] for r in runs),
            }
        )
    return rows


def _rss_mib() -> float:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------------------- report


def render(
    args: argparse.Namespace,
    throughput: list[dict],
    accuracy: list[dict],
    baseline: dict | None,
    anonymized: dict | None,
    seconds: float,
) -> str:
    lines = [
        "# Training benchmark (UCI Adult, MLP 108->64->2)",
        "",
        f"Command: `{' '.join(['.venv/bin/python', 'bench/training_bench.py', *args.argv])}`  ",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), torch "
        f"{torch.__version__}, {args.threads} thread(s), device {_device_name(args.device)}; wall time "
        f"{seconds / 60:.1f} min.  ",
        f"Load average when the run started: {LOAD_AT_START:.2f} (ratios are only comparable on an otherwise idle "
        "machine). " + ("" if args.device == "cuda" else "GPU figures: pending (no GPU was available)."),
        "",
    ]
    if throughput:
        lines += [
            "## Throughput and memory (same model, same batch; eps=1, delta=1e-5 for DP)",
            "",
            "| batch | mode | samples/s | vs non-private | peak memory (MiB) |",
            "|---:|---|---:|---:|---:|",
        ]
        reference = {r["batch_size"]: r["samples_per_second"] for r in throughput if r["mode"] == "non-private"}
        for row in sorted(throughput, key=lambda r: (r["batch_size"], MODES.index(r["mode"]))):
            ratio = row["samples_per_second"] / reference[row["batch_size"]]
            lines.append(
                f"| {row['batch_size']} | {row['mode']} | {row['samples_per_second']:,.0f} | "
                f"{ratio:.2f}x | {row['peak_memory_mib']:.1f} |"
            )
        lines += [
            "",
            f"Memory: {throughput[0]['memory_kind']}. Samples/s: optimisation time only (no validation or "
            "accounting, either side), ~100 steps after a warm-up epoch, best of the interleaved rounds.",
            "",
        ]
    if accuracy or baseline:
        lines += [
            "## Test accuracy and AUC (configuration selected on the validation split)",
            "",
            "| features | training | epsilon (delta=1e-5) | selected configuration | validation acc | "
            "test accuracy | test AUC |",
            "|---|---|---:|---|---:|---:|---:|",
        ]
        if baseline:
            lines.append(
                f"| raw (108) | non-private | inf | {_short(baseline['config'])} | "
                f"{baseline['validation_accuracy']:.4f} | {baseline['test_accuracy']:.4f} | "
                f"{baseline['test_auc']:.4f} |"
            )
        for row in accuracy:
            lines.append(
                f"| raw (108) | DP-SGD | {row['epsilon']:g} (reported {row['reported_epsilon']:.3f}) | "
                f"{_short(row['config'])} | {row['validation_accuracy']:.4f} | {row['test_accuracy']:.4f} | "
                f"{row['test_auc']:.4f} |"
            )
        if anonymized:
            lines.append(
                f"| anonymized graph features ({anonymized['features']}) | DP-SGD | 1 | "
                f"{_short(anonymized['config'])} | {anonymized['validation_accuracy']:.4f} | "
                f"{anonymized['test_accuracy']:.4f} | {anonymized['test_auc']:.4f} |"
            )
        else:
            lines.append(
                "| anonymized graph features | DP-SGD | 1 | pending: run `make demo`, then this bench "
                "(it reads the materialized training_features) | | | |"
            )
        if anonymized:
            lines += [
                "",
                f"Anonymized features: `{anonymized['path']}` (the graph's materialized training_features; "
                "its own hash-based test split).",
            ]
        if accuracy:
            lines += [
                "",
                f"Each DP row selects among {accuracy[0]['candidates']} candidate configurations; every "
                "candidate is trained at the row's epsilon, so the released model's epsilon including "
                "selection is their composition (docs/training.md). The test split is scored once per row.",
            ]
        lines.append("")
    return "\n".join(lines)


def _short(entry: dict[str, Any]) -> str:
    text = f"batch {entry['batch_size']}, {entry['epochs']} ep, {entry['optimizer']} lr {entry['learning_rate']:g}"
    if "max_grad_norm" in entry:
        text += f", C {entry['max_grad_norm']:g}"
    return text


def _device_name(device: str) -> str:
    if device == "cuda" or (device == "auto" and torch.cuda.is_available()):
        return torch.cuda.get_device_name()
    return "cpu"


def _find_anonymized(explicit: Path | None) -> Path | None:
    if explicit is not None:
        return explicit
    home = Path(os.environ.get("PPML_HOME", REPO / ".ppml"))
    files = sorted((home / "assets" / "training_features").glob("*.parquet"), key=lambda p: p.stat().st_mtime)
    return files[-1] if files else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="eps 1 only, 2 DP candidates, 1 round, 2 batch sizes")
    parser.add_argument("--epsilons", type=float, nargs="+", default=None)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: stable on a shared machine)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--dp-seed", type=int, default=0)
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--skip-accuracy", action="store_true")
    parser.add_argument("--anonymized-features", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--measure-one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.argv = [a for a in sys.argv[1:]]
    if args.measure_one:
        spec = json.loads(args.measure_one)
        print(
            json.dumps(measure_one(spec["mode"], spec["batch_size"], spec["epochs"], spec["device"], spec["threads"]))
        )
        return
    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    epsilons = args.epsilons or ([1.0] if args.quick else [0.5, 1.0, 3.0, 8.0])
    dp_grid = [DP_GRID[0], DP_GRID[2]] if args.quick else DP_GRID
    throughput: list[dict] = []
    if not args.skip_throughput:
        batches = [256, 4096] if args.quick else [256, 1024, 4096]
        throughput = measure_all(
            batches, steps=100, rounds=args.rounds or (1 if args.quick else 3), device=args.device, threads=args.threads
        )
        print(json.dumps(throughput), file=sys.stderr)
    accuracy: list[dict] = []
    baseline = anonymized = None
    if not args.skip_accuracy:
        splits = load_adult()
        baseline = select_non_private(splits, NON_PRIVATE_GRID[1:2] if args.quick else NON_PRIVATE_GRID, args.device)
        print(json.dumps(baseline), file=sys.stderr)
        for epsilon in epsilons:
            accuracy.append(select_dp(splits, epsilon, dp_grid, args.device, args.dp_seed))
            print(json.dumps(accuracy[-1]), file=sys.stderr)
        path = _find_anonymized(args.anonymized_features)
        if path is not None and path.exists():
            graph = load_feature_parquet(path)
            picked = next((a for a in accuracy if a["epsilon"] == 1.0), accuracy[0])
            result = select_dp(graph, 1.0, [picked["config"]], args.device, args.dp_seed)
            anonymized = {**result, "features": graph["train"].n_features, "path": str(path)}
    report = render(args, throughput, accuracy, baseline, anonymized, time.perf_counter() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report + "\n")
    print(report)


if __name__ == "__main__":
    main()
