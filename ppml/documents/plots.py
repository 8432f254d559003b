"""The report's plots as PNG files (matplotlib, Agg backend: no display, identical on every machine), each with
labelled axes and ticks: model ROC and reliability diagram, epsilon over retrains from the ledger, per-group
accuracy with 95% Wilson intervals, and information loss per quasi-identifier. PNG rather than SVG because the
PDF library embeds it as is. Every plot is drawn from evidence fields only; one whose data the run did not
produce is not drawn."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ppml.documents.facts import Facts

DPI = 110


def _figure(width: float = 5.2, height: float = 3.6) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(width, height), dpi=DPI)
    axes.grid(True, alpha=0.3)
    return figure, axes


def _save(figure: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    figure.savefig(path, format="png", metadata={"Software": None})
    plt.close(figure)
    return path


def roc_plot(f: Facts, path: Path) -> Path | None:
    roc = f.get("model_evaluation.curves.roc")
    if not roc:
        return None
    figure, axes = _figure()
    auc = f.get("model_evaluation.dp.roc_auc")
    axes.plot(roc["fpr"], roc["tpr"], color="#2471a3", label=f"DP model (AUC {auc:.3f})" if auc else "DP model")
    axes.plot([0, 1], [0, 1], linestyle="--", color="#999", label="chance")
    axes.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    axes.set_title("ROC curve of the DP model on the test split")
    axes.legend(loc="lower right")
    return _save(figure, path)


def calibration_plot(f: Facts, path: Path) -> Path | None:
    bins = f.get("model_evaluation.curves.calibration")
    if not bins:
        return None
    figure, axes = _figure()
    axes.plot([0, 1], [0, 1], linestyle="--", color="#999", label="perfect calibration")
    axes.plot(
        [b["mean_predicted"] for b in bins],
        [b["observed_rate"] for b in bins],
        marker="o",
        color="#c0392b",
        label=f"DP model (ECE {f.get('model_evaluation.dp.ece', 0):.3f})",
    )
    axes.set(xlabel="mean predicted probability", ylabel="observed positive rate", xlim=(0, 1), ylim=(0, 1.01))
    axes.set_title("Reliability diagram (10 bins, test split)")
    axes.legend(loc="upper left")
    return _save(figure, path)


def epsilon_plot(f: Facts, path: Path) -> Path | None:
    history = f.get("ledger_history")
    if not history:
        return None
    figure, axes = _figure()
    runs = list(range(1, len(history) + 1))
    axes.plot(
        runs,
        [h["cumulative_epsilon_basic"] for h in history],
        marker="o",
        color="#7d3c98",
        label="running sum of charges (upper bound)",
    )
    axes.bar(runs, [h["epsilon"] for h in history], color="#d2b4de", label="epsilon charged by the run")
    spent = f.get("ledger.spent_all_runs")
    if spent is not None:
        axes.axhline(spent, color="#1e8449", linestyle=":", label=f"ledger's composed total ({spent:.3f})")
    budget = f.get("ledger.lifetime_budget")
    if budget is not None:
        axes.axhline(budget, color="#c0392b", linestyle="--", label=f"lifetime budget ({budget})")
    axes.set(xlabel="charged ledger run (time order)", ylabel="epsilon")
    axes.set_xticks(runs if len(runs) <= 20 else runs[:: max(1, len(runs) // 10)])
    axes.set_title("Privacy budget spent on these people, run by run")
    axes.legend(loc="upper left", fontsize=7)
    return _save(figure, path)


def wilson_interval(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a proportion (sound for small groups, unlike the normal approximation)."""
    if n <= 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def group_plot(f: Facts, path: Path) -> Path | None:
    groups = [g for g in f.get("model_evaluation.groups") or [] if g.get("n")]
    if not groups:
        return None
    figure, axes = _figure(5.6, 0.9 + 0.32 * len(groups))
    labels = [f"{g['attribute']}={g['group']} (n={g['n']})" for g in groups]
    accuracy = [g["dp_accuracy"] for g in groups]
    intervals = [wilson_interval(g["dp_accuracy"] * g["n"], int(g["n"])) for g in groups]
    lower = [a - lo for a, (lo, _) in zip(accuracy, intervals, strict=True)]
    upper = [hi - a for a, (_, hi) in zip(accuracy, intervals, strict=True)]
    positions = list(range(len(groups)))
    axes.errorbar(accuracy, positions, xerr=[lower, upper], fmt="o", color="#2471a3", capsize=3)
    axes.set_yticks(positions, labels, fontsize=7)
    axes.set(xlabel="accuracy of the DP model (95% Wilson interval)", xlim=(0, 1))
    axes.invert_yaxis()
    axes.set_title("Accuracy per protected group (test split)")
    return _save(figure, path)


def information_loss_plot(f: Facts, path: Path) -> Path | None:
    loss = f.get("anonymization.quality.per_attribute")
    if not loss:
        return None
    figure, axes = _figure(5.2, 0.9 + 0.3 * len(loss))
    names = sorted(loss, key=lambda name: loss[name])
    axes.barh(names, [loss[n] for n in names], color="#b9770e")
    axes.set(xlabel="information loss (0 = kept exact, 1 = fully generalized)", xlim=(0, 1))
    axes.tick_params(axis="y", labelsize=7)
    axes.set_title("Information loss per quasi-identifier")
    return _save(figure, path)


PLOTS: dict[str, Callable[[Facts, Path], Path | None]] = {
    "roc": roc_plot,
    "calibration": calibration_plot,
    "epsilon_over_retrains": epsilon_plot,
    "group_accuracy": group_plot,
    "information_loss": information_loss_plot,
}


def draw_plots(evidence: dict[str, Any], directory: Path) -> dict[str, Path]:
    """Every plot the evidence supports, as ``directory/<name>.png``."""
    directory.mkdir(parents=True, exist_ok=True)
    facts = Facts(evidence)
    drawn = {name: draw(facts, directory / f"{name}.png") for name, draw in PLOTS.items()}
    return {name: path for name, path in drawn.items() if path is not None}
