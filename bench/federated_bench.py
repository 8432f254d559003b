"""Federated Adult at epsilon = 1: each DP mode on Flower's Deployment Engine versus central DP-SGD on the pooled
sites, with rounds, bytes per round and wall time (docs/federated.md). Never part of ``make test``.

    .venv/bin/python bench/federated_bench.py --days 30 --rounds 5 --out bench/results/federated.md

The sites are the bundled federated variant (ppml/federated/sites.py) over the window's last ``--days`` days,
each prepared by its own checks; "central" pools the sites' prepared training splits and trains ppml's DP-SGD
(ppml.training.dp_sgd.train_dp) at the same epsilon and delta, evaluated on the same pooled test records.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ppml.evaluation.utility import evaluate_utility
from ppml.federated.local_training import TorchScorer, load_site_splits, new_model, set_weights
from ppml.federated.runner import run_federation
from ppml.federated.site_prep import SitePreparation, global_feature_names, prepare_site
from ppml.federated.sites import write_federated_landing_zones
from ppml.landing_zone import landing_days
from ppml.ledger import PrivacyLedger
from ppml.policy import load_policy

REPO = Path(__file__).resolve().parent.parent
POLICY = REPO / "policies" / "adult_federated.yaml"
SITES = ["north", "south", "east"]


def policy_variant(folder: Path, **federation: object) -> Path:
    """The shipped federated policy with absolute file paths (it is written outside the repository)."""
    document = yaml.safe_load(POLICY.read_text())
    for qi in document["schema"]["quasi_identifiers"].values():
        qi["hierarchy"] = str((POLICY.parent / qi["hierarchy"]).resolve())
    document["collection"]["erasure_list"] = str((POLICY.parent / document["collection"]["erasure_list"]).resolve())
    document["allow_absolute_paths"] = True
    document["training"]["federation"].update(federation)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def pooled(site_dirs: dict[str, Path], names: list[str], split: str) -> tuple[np.ndarray, np.ndarray]:
    parts = [load_site_splits(folder, names)[split] for folder in site_dirs.values()]
    return np.concatenate([p.X for p in parts]), np.concatenate([p.y for p in parts])


def utility(scorer: object, X: np.ndarray, y: np.ndarray) -> dict[str, float]:
    from ppml.federated.local_training import Split

    report = evaluate_utility(scorer, Split(X, y), name="bench", n_resamples=50).to_dict()  # type: ignore[arg-type]
    return {k: float(report["metrics"][k]["value"]) for k in ("accuracy", "roc_auc")}


def central(
    site_dirs: dict[str, Path], names: list[str], epochs: int, epsilon: float, delta: float, learning_rate: float = 0.5
) -> dict:
    from ppml.training.config import DPConfig, ModelSpec, TrainingConfig
    from ppml.training.data import TabularSplit
    from ppml.training.dp_sgd import train_dp

    X, y = pooled(site_dirs, names, "train")
    config = TrainingConfig(
        model=ModelSpec(kind="mlp", hidden_sizes=(32,)),
        epochs=epochs,
        batch_size=256,
        learning_rate=learning_rate,
        optimizer="sgd",
        seed=7,
        device="cpu",
    )
    started = time.perf_counter()
    model = train_dp(TabularSplit(X, y, tuple(names)), config, DPConfig(epsilon, delta, dp_seed=7))
    X_test, y_test = pooled(site_dirs, names, "test")
    return {
        **utility(model, X_test, y_test),
        "seconds": time.perf_counter() - started,
        "rounds": "-",
        "bytes_per_round": "-",
        "epsilon": model.epsilon if hasattr(model, "epsilon") else epsilon,
    }


def federated(work: Path, site_dirs: dict[str, Path], mode: str, secagg: bool, args: argparse.Namespace) -> dict:
    rounds, local_epochs = args.rounds, args.local_epochs
    loaded = load_policy(
        policy_variant(
            work / f"policy-{mode}-{secagg}",
            rounds=rounds,
            local_epochs=local_epochs,
            learning_rate=args.learning_rate,
            dp_mode=mode,
            secure_aggregation=secagg,
            round_timeout_s=600,
        )
    )
    ledger = PrivacyLedger(f"sqlite:///{work / f'ledger-{mode}-{secagg}.db'}")
    started = time.perf_counter()
    outcome = run_federation(loaded, site_dirs, work / f"federation-{mode}-{secagg}", ledger, request_key=mode)
    seconds = time.perf_counter() - started
    model = new_model([32], len(outcome.feature_names), 7)
    set_weights(model, outcome.weights)
    X_test, y_test = pooled(site_dirs, outcome.feature_names, "test")
    sites = len(site_dirs)
    return {
        **utility(TorchScorer(model), X_test, y_test),
        "seconds": seconds,
        "rounds": rounds,
        "bytes_per_round": 2 * sites * int(outcome.history["model_bytes"]),
        "epsilon": max(p.epsilon for p in outcome.plans.values()),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--local-epochs", type=int, default=2)
    parser.add_argument("--epsilon", type=float, default=1.0)
    parser.add_argument("--learning-rate", type=float, default=0.5, help="SGD learning rate, central and sites")
    parser.add_argument("--modes", default="central,example,client", help="comma list of central, example, client")
    parser.add_argument("--secure-aggregation", action="store_true", help="federated modes under SecAgg+")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    os.environ.setdefault("PPML_HMAC_KEY", "federated bench key, not a secret")
    work = Path(tempfile.mkdtemp(prefix="ppml-federated-bench-"))
    days = [d.isoformat() for d in landing_days()[-args.days :]]
    split = write_federated_landing_zones(work / "federated", SITES, only_days=days)
    loaded = load_policy(policy_variant(work / "policy"))
    site_dirs = {s.name: work / "sites" / s.name for s in loaded.policy.training.federation.sites}
    for site in loaded.policy.training.federation.sites:
        prepare_site(loaded, site, days, os.environ["PPML_HMAC_KEY"].encode(), work, site_dirs[site.name])
    names = global_feature_names([SitePreparation.read(folder) for folder in site_dirs.values()])
    rows = {}
    for mode in args.modes.split(","):
        if mode == "central":
            epochs = args.rounds * args.local_epochs
            rows[mode] = central(site_dirs, names, epochs, args.epsilon, 1e-5, args.learning_rate)
        else:
            rows[mode] = federated(work, site_dirs, mode, args.secure_aggregation, args)
    table = render(args, split.to_dict(), rows)
    print(table)
    if args.out:
        args.out.write_text(table, encoding="utf-8")
    return 0


def render(args: argparse.Namespace, split: dict, rows: dict[str, dict]) -> str:
    secagg = " --secure-aggregation" if args.secure_aggregation else ""
    load = Path("/proc/loadavg").read_text().split()[:3] if Path("/proc/loadavg").is_file() else ["?"]
    lines = [
        "# Federated benchmark",
        "",
        f"Command: `.venv/bin/python bench/federated_bench.py --days {args.days} --rounds {args.rounds} "
        f"--local-epochs {args.local_epochs} --learning-rate {args.learning_rate} --modes {args.modes}{secagg}`",
        f"Date: {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}; load average at the end: {' '.join(load)}",
        f"Sites (records, positive rate): {split}",
        "",
        "| mode | accuracy | ROC AUC | epsilon | rounds | bytes per round | wall s |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, row in rows.items():
        lines.append(
            f"| {mode} | {row['accuracy']:.4f} | {row['roc_auc']:.4f} | {float(row['epsilon']):.3f} | {row['rounds']} "
            f"| {row['bytes_per_round']} | {row['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
