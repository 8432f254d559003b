"""Detection power of the white-box audit: the planted-bug corpus x seeds, and false alarms on honest runs.

Setting (small but real): raw UCI Adult (``ppml.preparation.raw_adult_feature_matrix``), a random sample of
``--records`` training records, an MLP(``--hidden``) trained by ``ppml.training.train_dp`` (book-keeping
clipping, Opacus noise and the PRV accountant, or ``--accountant rdp``) with the white-box audit's settings
(Poisson rate 0.2, 10 epochs = 50 steps, ``--canaries`` gradient canaries). Each bug is a planted fault
(ppml.evaluation.planted_bugs) at claimed epsilon 1; honest runs at ``--epsilons`` (1 and 4). "caught" = the
gate's verdict refuses promotion (bound above the claim, or a mechanism check rejecting the claim at p < 0.001);
the columns say which fired.

    nice -n 10 .venv/bin/python bench/audit_bench.py --seeds 10 --honest-seeds 20 --out bench/results/audit.md
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import logging  # noqa: E402

import numpy as np  # noqa: E402

from ppml.evaluation.audit_whitebox import WhiteBoxSettings, run_whitebox_audit, whitebox_verdict  # noqa: E402
from ppml.evaluation.planted_bugs import PlantedBug, planted_bug  # noqa: E402
from ppml.preparation import raw_adult_feature_matrix  # noqa: E402
from ppml.training import DPConfig, ModelSpec, TabularSplit, TrainingConfig  # noqa: E402


def one_run(train: TabularSplit, args: argparse.Namespace, bug: PlantedBug | None, epsilon: float, seed: int) -> dict:
    config = TrainingConfig(
        model=ModelSpec("mlp", (args.hidden,)), learning_rate=0.1, optimizer="sgd", seed=seed, device="cpu"
    )
    dp = DPConfig(target_epsilon=epsilon, target_delta=1e-5, dp_seed=1000 + seed, accountant=args.accountant)
    settings = WhiteBoxSettings(n_canaries=args.canaries, max_base_records=args.records, seed=seed)
    result = run_whitebox_audit(train, config, dp, settings=settings, fault=planted_bug(bug) if bug else None)
    failed = [name for name, check in result.mechanism.items() if check["p_value"] < result.mechanism_alpha]
    return {
        "caught": not whitebox_verdict(result).passed,
        "bound": result.lower_bound,
        "claimed": result.claimed_epsilon,
        "bound_alarm": result.bound_alarm,
        "checks": failed,
        "max": result.max_achievable_bound,
        "canaries": result.n_canaries,
    }


def row(name: str, epsilon: float, runs: list[dict]) -> str:
    caught = sum(r["caught"] for r in runs)
    by_bound = sum(r["bound_alarm"] for r in runs)
    checks = sorted({c for r in runs for c in r["checks"]})
    ratio = [r["bound"] / r["claimed"] for r in runs]
    return (
        f"| {name} | {epsilon:g} | {caught}/{len(runs)} | {by_bound}/{len(runs)} | {', '.join(checks) or '-'} | "
        f"{np.median(ratio):.2f} ({min(ratio):.2f}-{max(ratio):.2f}) |"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--honest-seeds", type=int, default=20)
    parser.add_argument("--records", type=int, default=1000)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--canaries", type=int, default=4000)
    parser.add_argument("--bugs", nargs="*", default=[b.value for b in PlantedBug])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 4.0], help="claimed epsilons of honest runs")
    parser.add_argument("--accountant", choices=["prv", "rdp"], default="prv", help="rdp: the quick smoke test's")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)  # the planted bugs' "fault injection" warnings
    X, y = raw_adult_feature_matrix().split("train")
    train = TabularSplit(X=X.astype(np.float32), y=y.astype(np.int64))
    started = time.perf_counter()
    lines = [
        "| run | claimed ε | caught (refused) | by the bound | by mechanism checks "
        "| bound / claimed ε, median (range) |",
        "|---|---|---|---|---|---|",
    ]
    runs: list[dict] = []
    for epsilon in args.epsilons:
        runs = [one_run(train, args, None, epsilon, seed) for seed in range(args.honest_seeds)]
        lines.append(row("honest", epsilon, runs))
        print(lines[-1], flush=True)
    for bug in args.bugs:
        runs = [one_run(train, args, PlantedBug(bug), 1.0, seed) for seed in range(args.seeds)]
        lines.append(row(bug, 1.0, runs))
        print(lines[-1], flush=True)
    footer = (
        f"\n{runs[0]['canaries']} gradient canaries, at most ε ≈ {runs[0]['max']:.2f} certifiable; "
        f"{args.records} Adult records, MLP({args.hidden}); {time.perf_counter() - started:.0f} s in all."
    )
    table = "\n".join(lines) + "\n" + footer + "\n"
    print(footer)
    if args.out:
        command = " ".join(["bench/audit_bench.py", *(sys.argv[1:] if argv is None else argv)])
        args.out.write_text(f"# White-box audit detection power\n\n`{command}`\n\n{table}")


if __name__ == "__main__":
    main()
