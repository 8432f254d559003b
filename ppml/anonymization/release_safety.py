"""Release safety: no released column may undo the anonymization of the quasi-identifiers.

k-anonymity holds over the quasi-identifiers (QIs) the policy names, but every other column of the release is
also in the attacker's hands if they can know it. Each released non-QI column is therefore tested as a
re-identification handle against the release of the policy's QIs:

- **dependence**: does it reveal a QI's value at a finer level than released? (``education_num`` is a recoding
  of ``education``: knowing it undoes ``education``'s generalization.) Measured as the share of the QI's
  generalized-away information the column restores, ``1 - H(raw | released, column) / H(raw | released)``, over
  the records whose (released QI, column) group holds at least k records (smaller groups are test 3's matter,
  and a singleton would "determine" anything);
- **uniqueness**: the share of released records whose value of the column is unique (exact ``fnlwgt``);
- **k with the column**: the smallest class, and the share of records in classes below k, over the QIs as
  released plus the column.

The policy's ``release`` section then decides per column: ``generalize`` (it becomes a QI with an automatic
hierarchy, so the search covers it), ``bin`` (quantile bins, then a QI), ``drop``, ``keep`` (released unchanged:
the policy states that an attacker cannot know it; sensitive attributes are kept this way by their role) or
``refuse`` (the release stops with one line naming the column and the fix when any test flags it; a column that
passes every test becomes a QI whose only coarser level is ``*``). Every attacker-knowable column kept in the
release is a QI of the final search, so k holds over the QIs plus all of them together. Nothing is released
silently: every column's figures and decision are in :meth:`ReleaseSafetyResult.to_dict`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from ppml.anonymization.engine import AnonymizationConfig, AnonymizationResult, anonymize
from ppml.anonymization.hierarchy import Hierarchy
from ppml.anonymization.release_hierarchies import as_integers, generalization_hierarchy, quantile_binning
from ppml.errors import PPMLError

__all__ = [
    "ACTIONS",
    "ColumnDecision",
    "ColumnFigures",
    "ReleaseRules",
    "ReleaseSafetyResult",
    "attacker_class_sizes",
    "column_figures",
    "safe_release",
]

ACTIONS = ("generalize", "bin", "drop", "keep", "refuse")
#: actions after which the column is in the release as a quasi-identifier of the final search
HANDLE_ACTIONS = ("generalize", "bin", "refuse")


@dataclass(frozen=True)
class ReleaseRules:
    """The policy's ``release`` section as the engine sees it (see docs/policy.md)."""

    default_action: str = "refuse"
    columns: Mapping[str, str] = field(default_factory=dict)
    max_uniqueness: float = 0.01
    dependence_threshold: float = 0.9
    bins: int = 10
    #: columns an attacker cannot know, with the reason (sensitive attributes, keyed-hash buckets)
    not_attacker_knowledge: Mapping[str, str] = field(default_factory=dict)
    source: str = "release"

    def action_for(self, column: str) -> tuple[str, str]:
        """The action for a column and where it comes from (the policy's list, the column's role, the default)."""
        if column in self.columns:
            return self.columns[column], f"release.columns.{column}"
        if column in self.not_attacker_knowledge:
            return "keep", self.not_attacker_knowledge[column]
        return self.default_action, "release.default_action"


@dataclass(frozen=True)
class ColumnFigures:
    """The three handle tests of one released column, measured against one release."""

    distinct_values: int
    uniqueness: float
    dependence: float
    dependent_quasi_identifier: str | None
    min_class_size_with_column: int
    share_below_k_with_column: float

    def problems(self, rules: ReleaseRules, k: int) -> list[str]:
        """Why the column is a re-identification handle (empty: it passes every test)."""
        found = []
        if self.dependence >= rules.dependence_threshold:
            found.append(
                f"it determines '{self.dependent_quasi_identifier}' finer than released (dependence "
                f"{self.dependence:.2f} >= dependence_threshold {rules.dependence_threshold:g})"
            )
        if self.uniqueness > rules.max_uniqueness:
            found.append(
                f"it is unique for {self.uniqueness:.1%} of records (above max_uniqueness {rules.max_uniqueness:g})"
            )
        if self.min_class_size_with_column < k:
            found.append(
                f"with it the quasi-identifiers leave {self.share_below_k_with_column:.1%} of records in classes "
                f"below k = {k} (smallest {self.min_class_size_with_column})"
            )
        return found

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class ColumnDecision:
    column: str
    action: str
    decided_by: str
    before: ColumnFigures
    problems: list[str]
    released_as: str = ""
    after: ColumnFigures | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "action": self.action,
            "decided_by": self.decided_by,
            "released_as": self.released_as,
            "handle": self.action in HANDLE_ACTIONS,
            "problems": list(self.problems),
            "before": self.before.to_dict(),
            "after": self.after.to_dict() if self.after is not None else None,
        }


@dataclass
class ReleaseSafetyResult:
    """The final anonymization (QIs plus handles), its config, and one decision per released non-QI column."""

    anonymization: AnonymizationResult
    config: AnonymizationConfig
    policy_quasi_identifiers: list[str]
    decisions: list[ColumnDecision]
    rules: ReleaseRules

    @property
    def handles(self) -> list[str]:
        """Released non-QI columns an attacker could know: QIs of the final search."""
        return [d.column for d in self.decisions if d.action in HANDLE_ACTIONS]

    @property
    def binned_columns(self) -> list[str]:
        """Columns replaced by quantile bins: their released level-0 values are bin labels."""
        return [d.column for d in self.decisions if d.action == "bin"]

    @property
    def attacker_knowledge(self) -> list[str]:
        """Every attribute the k check covers: the policy's QIs and the handles."""
        return [*self.policy_quasi_identifiers, *self.handles]

    def to_dict(self) -> dict[str, Any]:
        sizes = attacker_class_sizes(self.anonymization.data, self.attacker_knowledge)
        return {
            "rules": {
                "default_action": self.rules.default_action,
                "max_uniqueness": self.rules.max_uniqueness,
                "dependence_threshold": self.rules.dependence_threshold,
                "bins": self.rules.bins,
            },
            "k": int(self.config.k),
            "attacker_knowledge": self.attacker_knowledge,
            "handles": self.handles,
            "min_class_size_over_attacker_knowledge": int(sizes.min()) if sizes.size else 0,
            "dropped": [d.column for d in self.decisions if d.action == "drop"],
            "kept_not_attacker_knowledge": [d.column for d in self.decisions if d.action == "keep"],
            "columns": [d.to_dict() for d in self.decisions],
        }


# ------------------------------------------------------------------------------------------------------------
# Measurements
# ------------------------------------------------------------------------------------------------------------


def attacker_class_sizes(release: pd.DataFrame, attributes: list[str]) -> np.ndarray:
    """Equivalence-class sizes of the release over the given attributes (what the k verdict is judged on)."""
    if release.empty:
        return np.zeros(0, dtype=np.int64)
    return release.groupby(list(attributes), dropna=False, sort=False).size().to_numpy()


def _codes(values: pd.Series) -> np.ndarray:
    return pd.factorize(values.astype(str), use_na_sentinel=False)[0].astype(np.int64)


def _conditional_entropy(target: np.ndarray, given: np.ndarray) -> float:
    """Plug-in H(target | given) in bits."""
    joint = pd.DataFrame({"g": given, "t": target}).value_counts().to_numpy(dtype=float)
    marginal = pd.Series(given).value_counts().to_numpy(dtype=float)
    n = float(len(target))

    def entropy(counts: np.ndarray) -> float:
        p = counts / n
        return float(-(p * np.log2(p)).sum())

    return max(entropy(joint) - entropy(marginal), 0.0)


def _dependence(raw: np.ndarray, released: np.ndarray, column: np.ndarray, k: int) -> float:
    """Share of the QI's hidden information (raw given released) that the column restores, on groups >= k."""
    group = released * (int(column.max()) + 1) + column
    sizes = pd.Series(group).map(pd.Series(group).value_counts()).to_numpy()
    rows = sizes >= k
    if not rows.any():
        return 0.0
    hidden = _conditional_entropy(raw[rows], released[rows])
    if hidden <= 1e-12:
        return 0.0
    return float(1.0 - _conditional_entropy(raw[rows], group[rows]) / hidden)


def column_figures(
    release: pd.DataFrame,
    raw_quasi_identifiers: pd.DataFrame,
    quasi_identifiers: list[str],
    generalized: list[str],
    column: str,
    k: int,
) -> ColumnFigures:
    """The three tests of ``column`` against ``release`` (``raw_quasi_identifiers``: the same rows, raw QIs)."""
    values = release[column]
    counts = values.astype(str).map(values.astype(str).value_counts())
    best, best_qi = 0.0, None
    if len(release):
        column_codes = _codes(values)
        for qi in generalized:
            score = _dependence(_codes(raw_quasi_identifiers[qi]), _codes(release[qi]), column_codes, k)
            if score > best + 1e-12:
                best, best_qi = score, qi
    keys = [*(qi for qi in quasi_identifiers if qi != column), column]
    sizes = release.groupby(keys, dropna=False, sort=False)[column].transform("size")
    return ColumnFigures(
        distinct_values=int(values.nunique(dropna=False)),
        uniqueness=float((counts == 1).mean()) if len(release) else 0.0,
        dependence=round(best, 6),
        dependent_quasi_identifier=best_qi,
        min_class_size_with_column=int(sizes.min()) if len(release) else 0,
        share_below_k_with_column=float((sizes < k).mean()) if len(release) else 0.0,
    )


def _measure_all(
    result: AnonymizationResult, data: pd.DataFrame, policy_qis: list[str], columns: list[str], k: int
) -> dict[str, ColumnFigures]:
    """Figures of every column against one anonymization result of ``data``."""
    raw = data.loc[result.kept_rows, policy_qis].reset_index(drop=True)
    generalized = [qi for qi in policy_qis if result.transformation.get(qi, 0) > 0]
    release = result.data
    return {
        column: column_figures(release, raw, [*result.transformation], generalized, column, k) for column in columns
    }


# ------------------------------------------------------------------------------------------------------------
# Decisions and the release
# ------------------------------------------------------------------------------------------------------------


def _refusal(rules: ReleaseRules, column: str, decided_by: str, problem: str, fix: str) -> PPMLError:
    return PPMLError(f"{rules.source}: field '{decided_by}': released column '{column}': {problem}; fix: {fix}")


def _decide(
    rules: ReleaseRules, figures: Mapping[str, ColumnFigures], data: pd.DataFrame, k: int
) -> list[ColumnDecision]:
    decisions = []
    for column, before in figures.items():
        action, decided_by = rules.action_for(column)
        problems = before.problems(rules, k)
        if action == "refuse" and problems:
            raise _refusal(
                rules,
                column,
                decided_by,
                f"re-identification handle: {problems[0]}",
                f"set release.columns.{column} to generalize, bin or drop (or keep if an attacker cannot know it)",
            )
        if action == "bin" and as_integers(data[column], allow_missing=True) is None:
            raise _refusal(
                rules, column, decided_by, "bin needs an integer column", f"set release.columns.{column} to generalize"
            )
        decisions.append(ColumnDecision(column, action, decided_by, before, problems))
    return decisions


def _handle_hierarchies(
    decisions: list[ColumnDecision], data: pd.DataFrame, bins: int
) -> tuple[pd.DataFrame, dict[str, Hierarchy]]:
    """The data for the final search (binned columns replaced) and each handle's hierarchy."""
    prepared = data.copy(deep=False)
    hierarchies: dict[str, Hierarchy] = {}
    for decision in decisions:
        column = decision.column
        if decision.action == "bin":
            prepared[column], hierarchies[column] = quantile_binning(data[column], bins, column)
        elif decision.action == "generalize":
            hierarchies[column] = generalization_hierarchy(data[column], column)
        elif decision.action == "refuse":  # passed every test: released as is unless the search must coarsen it
            distinct = sorted({str(v) for v in data[column]})
            hierarchies[column] = Hierarchy(tuple((v, "*") for v in distinct), f"release safety: '{column}'")
    dropped = [d.column for d in decisions if d.action == "drop"]
    return prepared.drop(columns=dropped), hierarchies


def safe_release(data: pd.DataFrame, config: AnonymizationConfig, rules: ReleaseRules) -> ReleaseSafetyResult:
    """Anonymize ``data`` so that k holds over the QIs and every released column an attacker could know.

    Raises :class:`PPMLError` (one line naming the column and the fix) when a column under ``refuse`` is a
    handle, or when a handle still determines a QI finer than released after its action; nothing is released.
    """
    policy_qis = list(config.quasi_identifiers)
    others = [c for c in data.columns if c not in config.quasi_identifiers]
    first = anonymize(data, config)
    decisions = _decide(rules, _measure_all(first, data, policy_qis, others, config.k), data, config.k)
    prepared, handles = _handle_hierarchies(decisions, data, rules.bins)
    if handles:
        final_config = replace(config, quasi_identifiers={**config.quasi_identifiers, **handles})
        final = anonymize(prepared, final_config)
    else:
        final_config = config
        final = replace(first, data=first.data.drop(columns=[d.column for d in decisions if d.action == "drop"]))
    # handle hierarchies are built from the data: their labels are not public categories
    final.public_categories = {qi: v for qi, v in final.public_categories.items() if qi in config.quasi_identifiers}
    released = [d.column for d in decisions if d.action != "drop"]
    after = _measure_all(final, prepared, policy_qis, released, config.k)
    for decision in decisions:
        _record_outcome(decision, final, after.get(decision.column), rules)
    return ReleaseSafetyResult(final, final_config, policy_qis, decisions, rules)


def _record_outcome(
    decision: ColumnDecision, final: AnonymizationResult, after: ColumnFigures | None, rules: ReleaseRules
) -> None:
    """Describe how the column was released; stop when a handle still undoes a QI's generalization."""
    decision.after = after
    if decision.action == "drop":
        decision.released_as = "dropped"
        return
    if decision.action == "keep":
        decision.released_as = "unchanged (not attacker knowledge)"
        return
    level = final.transformation[decision.column]
    kind = "quantile bins" if decision.action == "bin" else "hierarchy"
    decision.released_as = f"quasi-identifier, {kind} level {level}"
    if after is not None and after.dependence >= rules.dependence_threshold:
        raise _refusal(
            rules,
            decision.column,
            decision.decided_by,
            f"even as a quasi-identifier (level {level}) it determines '{after.dependent_quasi_identifier}' finer "
            f"than released (dependence {after.dependence:.2f})",
            f"set release.columns.{decision.column} to drop",
        )
