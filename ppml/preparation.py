"""Lifecycle step 3: cleaning, risk-limiting feature selection, encoding and a split stable per data subject.

Anonymization makes the quasi-identifiers k-anonymous, but every extra feature the model sees is also in the
released training set: a precise ``hours_per_week`` or ``education_num`` next to generalized quasi-identifiers
can single people out again. So feature selection here is privacy-driven first: a candidate feature that an
attacker could know is admitted only if, together with the quasi-identifiers and the features already admitted,
at most ``max_share_below_k`` of the records fall into groups smaller than k. Numeric features are tried at
successively coarser quantile bins before being dropped. Sensitive attributes are exempt (an attacker does not
know them; l-diversity protects them) and are kept as features when the policy lists them.

scikit-learn is not needed for this encoding: the matrix is a plain one-hot of categories and bins, built with
pandas so that feature names stay readable in MLflow and in the report.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd

from ppml.deidentification import SPLIT_BUCKET_COLUMN
from ppml.errors import PPMLError
from ppml.policy import Policy, SchemaRoles

LABEL_COLUMN = "label"
SPLIT_COLUMN = "split"
SPLITS = ("train", "validation", "test")
MISSING_CATEGORY = "Unknown"


@dataclass(frozen=True)
class SplitRatios:
    """Buckets 0..99 from de-identification map to splits: [0, train) train, then validation, then test."""

    train: int = 70
    validation: int = 15

    def assign(self, buckets: pd.Series) -> pd.Series:
        return pd.Series(
            np.select(
                [buckets < self.train, buckets < self.train + self.validation],
                ["train", "validation"],
                "test",
            ),
            index=buckets.index,
        )


@dataclass
class FeatureDecision:
    feature: str
    decision: str  # "kept", "binned", "dropped", "quasi-identifier", "sensitive"
    bins: int | None = None
    share_below_k: float | None = None
    reason: str = ""


@dataclass
class PreparationReport:
    rows_in: int
    rows_out: int
    rows_dropped_missing_label: int
    decisions: list[FeatureDecision] = field(default_factory=list)
    bin_edges: dict[str, list[float]] = field(default_factory=dict)
    share_below_k: float = 0.0

    @property
    def selected(self) -> list[str]:
        return [d.feature for d in self.decisions if d.decision != "dropped"]

    def to_dict(self) -> dict[str, object]:
        return {
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "rows_dropped_missing_label": self.rows_dropped_missing_label,
            "selected_features": self.selected,
            "decisions": [asdict(d) for d in self.decisions],
            "bin_edges": self.bin_edges,
            "share_below_k": self.share_below_k,
        }


def share_in_small_groups(frame: pd.DataFrame, columns: list[str], k: int) -> float:
    """Share of records whose combination of ``columns`` is held by fewer than k records."""
    if not columns or frame.empty:
        return 0.0
    sizes = frame.groupby(columns, dropna=False, sort=False)[columns[0]].transform("size")
    return float((sizes < k).mean())


def quantile_bins(values: pd.Series, bins: int) -> tuple[pd.Series, list[float]]:
    """Bin integers into at most ``bins`` quantile intervals; zero-inflated columns keep 0 as its own bin.

    A missing value (``numeric_missing: category``) is its own category, ``Unknown``; the edges come from the
    values present only.
    """
    numbers = pd.to_numeric(values, errors="raise").astype(float)
    missing = numbers.isna().to_numpy()
    numbers = numbers[~missing] if missing.any() else numbers
    positive = numbers[numbers > 0]
    zero_heavy = (numbers == 0).mean() > 0.5 and len(positive) > 0
    source = positive if zero_heavy else numbers
    quantiles = np.unique(np.quantile(source, np.linspace(0, 1, bins + 1))) if len(source) else np.array([])
    edges = [float(q) for q in quantiles[1:-1]]
    if zero_heavy:
        edges = [0.0, *[e for e in edges if e > 0]]
    labels = _interval_labels(edges)
    codes = (
        np.searchsorted(np.asarray(edges), numbers.to_numpy(), side="right") if edges else np.zeros(len(numbers), int)
    )
    binned = np.asarray(labels, dtype=object)[codes]
    if missing.any():
        full = np.full(len(values), MISSING_CATEGORY, dtype=object)
        full[~missing] = binned
        binned = full
    return pd.Series(binned, index=values.index), edges


def _interval_labels(edges: list[float]) -> list[str]:
    if not edges:
        return ["all"]
    labels = [f"<={edges[0]:g}"]
    labels += [f"({low:g},{high:g}]" for low, high in itertools.pairwise(edges)]
    labels.append(f">{edges[-1]:g}")
    return labels


def apply_bins(values: pd.Series, edges: list[float]) -> pd.Series:
    """Apply stored bin edges (used by monitoring to profile new raw partitions the same way); a missing value
    (``numeric_missing: category``) is the ``Unknown`` category, as in training."""
    labels = _interval_labels(edges)
    parsed = pd.to_numeric(values, errors="coerce")
    kept_missing = values.isna().to_numpy()  # <NA> of a nullable column; unparsable text stays bin 0 as before
    numbers = parsed.fillna(0).to_numpy(dtype=float)
    codes = np.searchsorted(np.asarray(edges), numbers, side="right") if edges else np.zeros(len(values), int)
    binned = np.asarray(labels, dtype=object)[codes]
    binned[kept_missing] = MISSING_CATEGORY
    return pd.Series(binned, index=values.index)


def clean_records(
    anonymized: pd.DataFrame,
    policy: Policy,
    *,
    max_share_below_k: float = 0.05,
    bin_candidates: tuple[int, ...] = (10, 5, 3, 2),
    ratios: SplitRatios | None = None,
) -> tuple[pd.DataFrame, PreparationReport]:
    """Clean anonymized records and select features that keep re-identification risk bounded.

    Returns a frame with the selected features (as strings: categories, generalized values or bins), ``label``
    (0/1, or the class index in ``schema.label_values`` of a multi-class label) and ``split``.
    """
    roles = policy.schema_
    k = policy.privacy.k
    ratios = ratios or SplitRatios()
    frame = anonymized.copy()
    label_raw = frame[roles.label.column].astype(str).str.strip().str.rstrip(".")
    has_label = label_raw.ne("") & label_raw.ne("?")
    frame = frame[has_label].reset_index(drop=True)
    label = roles.encode_label(label_raw[has_label].reset_index(drop=True))
    _refuse_unknown_classes(label, label_raw[has_label].reset_index(drop=True), roles)
    if SPLIT_BUCKET_COLUMN not in frame.columns:
        raise PPMLError(
            f"anonymized_records: field '{SPLIT_BUCKET_COLUMN}': missing; fix: re-run de-identification, which adds it"
        )
    report = PreparationReport(
        rows_in=len(anonymized), rows_out=len(frame), rows_dropped_missing_label=int((~has_label).sum())
    )

    qis = [column for column in roles.quasi_identifiers if column in frame.columns]
    text = pd.DataFrame(index=frame.index)
    for column in qis:
        text[column] = frame[column].astype(str).replace({"?": MISSING_CATEGORY})
    admitted = list(qis)
    for column in roles.features:
        if column in qis:
            report.decisions.append(FeatureDecision(column, "quasi-identifier", reason="generalized by anonymization"))
            continue
        action = policy.release.action_for(column, column in roles.sensitive_attributes)
        if column not in frame.columns and action == "drop":
            report.decisions.append(FeatureDecision(column, "dropped", reason="dropped by release safety"))
            continue
        if column not in frame.columns:
            raise PPMLError(
                f"anonymized_records: field '{column}': feature listed in schema.features is missing; "
                "fix: keep it in the released columns or remove it from the policy's features"
            )
        if column in roles.sensitive_attributes:
            text[column] = frame[column].astype(str).replace({"?": MISSING_CATEGORY})
            report.decisions.append(FeatureDecision(column, "sensitive", reason="protected by l-diversity"))
            continue
        # a column release safety generalized or binned holds labels, not numbers: it is categorical here
        numeric = [c for c in roles.numeric_columns if c == column and _all_numbers(_present(frame[c], roles))]
        decision = _admit(frame, text, column, admitted, k, max_share_below_k, bin_candidates, numeric)
        report.decisions.append(decision)
        if decision.decision != "dropped":
            admitted.append(column)
            if decision.bins is not None:
                text[column], report.bin_edges[column] = quantile_bins(frame[column], decision.bins)
            else:
                text[column] = frame[column].astype(str).replace({"?": MISSING_CATEGORY})
    report.share_below_k = share_in_small_groups(text, admitted, k)

    cleaned = text[[d.feature for d in report.decisions if d.decision != "dropped"]].copy()
    cleaned[LABEL_COLUMN] = label
    cleaned[SPLIT_COLUMN] = ratios.assign(frame[SPLIT_BUCKET_COLUMN].astype("int64"))
    return cleaned, report


def _refuse_unknown_classes(label: pd.Series, raw: pd.Series, roles: SchemaRoles) -> None:
    """A multi-class label value that is not one of label_values would silently become no class: refuse it."""
    unknown = label.lt(0)
    if unknown.any():
        raise PPMLError(
            f"anonymized_records: field '{roles.label.column}': {int(unknown.sum())} record(s) hold a label value "
            f"that is not in schema.label_values (e.g. {raw[unknown].iloc[0]!r}); fix: add the class to "
            "schema.label_values, or correct the data"
        )


def _present(values: pd.Series, roles: SchemaRoles) -> pd.Series:
    """The values to type-check: a ``numeric_missing: category`` column's missing cells are not numbers."""
    return values.dropna() if values.name in roles.missing_category_columns() else values


def _all_numbers(values: pd.Series) -> bool:
    return bool(pd.to_numeric(values, errors="coerce").notna().all())


def _admit(
    frame: pd.DataFrame,
    text: pd.DataFrame,
    column: str,
    admitted: list[str],
    k: int,
    limit: float,
    bin_candidates: tuple[int, ...],
    numeric_columns: list[str],
) -> FeatureDecision:
    trial = text[admitted].copy()
    if column in numeric_columns:
        for bins in bin_candidates:
            trial[column], _ = quantile_bins(frame[column], bins)
            share = share_in_small_groups(trial, [*admitted, column], k)
            if share <= limit:
                return FeatureDecision(column, "binned", bins=bins, share_below_k=share)
        return FeatureDecision(
            column,
            "dropped",
            share_below_k=share,
            reason=f"even {bin_candidates[-1]} bins leave {share:.1%} below k",
        )
    trial[column] = frame[column].astype(str)
    share = share_in_small_groups(trial, [*admitted, column], k)
    if share <= limit:
        return FeatureDecision(column, "kept", share_below_k=share)
    return FeatureDecision(column, "dropped", share_below_k=share, reason=f"{share:.1%} of records below k")


@dataclass
class FeatureMatrix:
    """A numeric design matrix with readable feature names, per split."""

    features: pd.DataFrame  # float32 one-hot/standardized columns + label + split
    feature_names: list[str]

    def split(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        part = self.features[self.features[SPLIT_COLUMN] == name]
        return part[self.feature_names].to_numpy(dtype=np.float32), part[LABEL_COLUMN].to_numpy(dtype=np.int64)


def encode_features(frame: pd.DataFrame, categorical: list[str], numeric: list[str] | None = None) -> FeatureMatrix:
    """One-hot encode categories and standardize numeric columns (statistics from the train split only)."""
    numeric = numeric or []
    for column in [*categorical, *numeric, LABEL_COLUMN, SPLIT_COLUMN]:
        if column not in frame.columns:
            raise PPMLError(f"cleaned_records: field '{column}': missing; fix: re-run preparation")
    parts = []
    if categorical:
        dummies = pd.get_dummies(frame[categorical].astype(str), prefix_sep="=", dtype=np.float32)
        parts.append(dummies[sorted(dummies.columns)])
    if numeric:
        values = frame[numeric].astype(np.float32)
        train = values[frame[SPLIT_COLUMN] == "train"]
        scale = train.std().replace(0, 1).fillna(1)
        parts.append(((values - train.mean()) / scale).astype(np.float32))
    encoded = pd.concat(parts, axis=1) if parts else pd.DataFrame(index=frame.index)
    names = list(encoded.columns)
    encoded[LABEL_COLUMN] = frame[LABEL_COLUMN].astype("int64").to_numpy()
    encoded[SPLIT_COLUMN] = frame[SPLIT_COLUMN].to_numpy()
    return FeatureMatrix(features=encoded.reset_index(drop=True), feature_names=names)


def raw_adult_feature_matrix(seed: int = 0) -> FeatureMatrix:
    """Raw (non-anonymized) Adult with the official train/test split: the benchmark's reference features.

    Splits: ``test`` is the official test set; ``validation`` is 15% of the official training set, chosen by a
    seeded permutation, so that tuning never looks at the official test set; the rest is ``train``.
    """
    from ppml.landing_zone import INTEGER_COLUMNS, read_bundled_adult

    adult = read_bundled_adult()
    adult[LABEL_COLUMN] = (adult["income"] == ">50K").astype("int64")
    rng = np.random.default_rng(seed)
    is_train = adult["official_split"] == "train"
    validation = np.zeros(len(adult), dtype=bool)
    train_index = np.flatnonzero(is_train.to_numpy())
    validation[rng.permutation(train_index)[: int(0.15 * len(train_index))]] = True
    adult[SPLIT_COLUMN] = np.where(~is_train, "test", np.where(validation, "validation", "train"))
    categorical = [
        c for c in adult.columns if c not in {*INTEGER_COLUMNS, "income", "official_split", LABEL_COLUMN, SPLIT_COLUMN}
    ]
    return encode_features(adult, categorical, INTEGER_COLUMNS)


def prepare_like_training(
    deidentified: pd.DataFrame,
    policy: Policy,
    transformation: dict[str, int],
    hierarchies: dict[str, list[list[str]]],
    decisions: list[dict],
    bin_edges: dict[str, list[float]],
    feature_names: list[str],
) -> tuple[np.ndarray, np.ndarray]:
    """Put new de-identified records through the training window's own pipeline, for re-evaluation.

    Quasi-identifiers are generalized to the levels the anonymization chose (a value the hierarchy does not know
    becomes its top label), numeric features get the training bins, and the one-hot columns are aligned with the
    model's feature names (an unseen category sets no column). Returns (X, y) as the model expects them.
    """
    roles = policy.schema_
    text = pd.DataFrame(index=deidentified.index)
    for column, level in transformation.items():
        if column not in deidentified.columns or column not in hierarchies:
            continue
        rows = hierarchies[column]
        mapping = {row[0]: row[level] for row in rows}
        top = rows[0][-1]
        generalized = deidentified[column].astype(str).map(mapping).fillna(top)
        text[column] = generalized.replace({roles.missing_value_marker: MISSING_CATEGORY})
    for decision in decisions:
        column = decision["feature"]
        if decision["decision"] in ("dropped", "quasi-identifier"):
            continue
        if column in bin_edges:
            text[column] = apply_bins(deidentified[column], bin_edges[column])
        else:
            text[column] = deidentified[column].astype(str).replace({roles.missing_value_marker: MISSING_CATEGORY})
    kept = [d["feature"] for d in decisions if d["decision"] != "dropped"]
    dummies = pd.get_dummies(text[kept].astype(str), prefix_sep="=", dtype=np.float32)
    X = dummies.reindex(columns=feature_names, fill_value=0.0).to_numpy(dtype=np.float32)
    label = deidentified[roles.label.column].astype(str).str.strip().str.rstrip(".")
    y = roles.encode_label(label).to_numpy()
    known = y >= 0  # a record with no label (or an unknown class) cannot be scored
    return X[known], y[known]
