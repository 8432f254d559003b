"""Contribution bounding for the privacy unit ``subject``: at most ``c`` records per data subject per window.

A person-level guarantee needs a bound on how much one person can change a training run. User-level DP-SGD
(:mod:`ppml.training.user_level`) clips each subject's *summed* gradient, so the bound holds whatever the number
of records; bounding contributions to ``c`` records still matters for utility (a subject with 20 records would
otherwise have its clipped sum dominated by its own records) and is what the report states.

Which records a subject keeps is reproducible and data-independent of other subjects: every record is ranked by
``sha256(seed, pseudonym, record key)`` and the ``c`` lowest ranks are kept. The same seed and data give the same
selection on every rerun (so a resumed run trains on the same records); a different seed gives a different one.
No personal value is logged or reported: only counts.
"""

from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from ppml.errors import input_error


@dataclass(frozen=True)
class ContributionReport:
    """Aggregates of one bounding: reported in the asset metadata, MLflow and the compliance report."""

    max_records_per_subject: int
    seed: int
    subjects: int
    records_before: int
    records_after: int
    records_dropped: int
    subjects_bounded: int  # subjects that had more than c records
    largest_contribution_before: int
    largest_contribution_after: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def bound_contributions(
    frame: pd.DataFrame,
    subject_column: str,
    max_records: int,
    *,
    seed: int = 0,
    record_key_columns: list[str] | None = None,
    source: str = "training window",
) -> tuple[pd.DataFrame, ContributionReport]:
    """Keep at most ``max_records`` rows per subject, chosen reproducibly; return the rows and a report.

    ``record_key_columns`` identify a record within its subject (e.g. the event date); by default every column but
    the subject's, so identical duplicates rank identically and the choice does not depend on row order.
    """
    _check(frame, subject_column, max_records, source)
    if frame.empty:
        return frame.copy(), ContributionReport(max_records, seed, 0, 0, 0, 0, 0, 0, 0)
    subjects = frame[subject_column].astype(str)
    keys = record_key_columns or [c for c in frame.columns if c != subject_column]
    missing = [c for c in keys if c not in frame.columns]
    if missing:
        raise input_error(source, missing[0], "record key column not in the data", "name columns of the data set")
    rank = _ranks(subjects, frame[keys], seed)
    order = pd.DataFrame({"subject": subjects.to_numpy(), "rank": rank, "row": np.arange(len(frame))})
    order = order.sort_values(["subject", "rank", "row"], kind="mergesort")
    position = order.groupby("subject", sort=False).cumcount().to_numpy()
    kept_rows = np.sort(order["row"].to_numpy()[position < max_records])
    counts = subjects.value_counts()
    kept = frame.iloc[kept_rows]
    report = ContributionReport(
        max_records_per_subject=int(max_records),
        seed=int(seed),
        subjects=int(counts.size),
        records_before=len(frame),
        records_after=len(kept),
        records_dropped=len(frame) - len(kept),
        subjects_bounded=int((counts > max_records).sum()),
        largest_contribution_before=int(counts.max()),
        largest_contribution_after=int(min(counts.max(), max_records)),
    )
    return kept, report


def subject_index(subjects: pd.Series | np.ndarray) -> tuple[np.ndarray, int]:
    """Dense integer ids 0..m-1 of each row's subject (the order user-level DP-SGD samples subjects in)."""
    codes, uniques = pd.factorize(pd.Series(np.asarray(subjects)).astype(str), sort=True)
    return codes.astype(np.int64), len(uniques)


def _check(frame: pd.DataFrame, subject_column: str, max_records: int, source: str) -> None:
    """Bad input is refused before anything is selected: no column, empty ids, or a bound below one record."""
    if isinstance(max_records, bool) or not isinstance(max_records, int | np.integer) or max_records < 1:
        raise input_error(
            "policy",
            "privacy.max_records_per_subject",
            f"must be an integer >= 1, got {max_records!r}",
            "set how many records one subject may contribute per training window, e.g. 4",
        )
    if not subject_column or subject_column not in frame.columns:
        raise input_error(
            source,
            f"schema.subject_id ({subject_column or 'unset'})",
            "privacy_unit 'subject' needs the subject-id column, and the data has none by that name",
            "keep the pseudonymized subject id through to training, or set privacy.privacy_unit: record",
        )
    values = frame[subject_column]
    empty = values.isna() | (values.astype(str).str.strip() == "")
    if len(frame) and empty.all():
        raise input_error(
            source,
            subject_column,
            "the subject-id column is empty: no record can be attributed to a subject",
            "fill the subject id (it is pseudonymized before training) or set privacy.privacy_unit: record",
        )
    if empty.any():
        raise input_error(
            source,
            subject_column,
            f"{int(empty.sum())} record(s) without a subject id: their contribution cannot be bounded",
            "fill the subject id of every record or remove those records at the source",
        )


def _ranks(subjects: pd.Series, keys: pd.DataFrame, seed: int) -> np.ndarray:
    """A keyed hash per record: reproducible, independent of row order, uniform within each subject."""
    key_text = keys.astype(str).agg("\x1f".join, axis=1) if len(keys.columns) else pd.Series("", index=keys.index)
    prefix = f"ppml-contribution:{int(seed)}\x1e"
    ranks = np.empty(len(subjects), dtype=np.uint64)
    for i, (subject, key) in enumerate(zip(subjects.to_numpy(), key_text.to_numpy(), strict=True)):
        digest = hashlib.sha256(f"{prefix}{subject}\x1e{key}".encode()).digest()
        ranks[i] = int.from_bytes(digest[:8], "big")
    return ranks
