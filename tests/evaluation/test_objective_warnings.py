"""`ppml validate-policy` warns (exit 0) when an objective is at or below what the trivial predictor reaches."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from ppml.cli import app
from ppml.evaluation import objective_warnings
from tests.support import GDPR_POLICY


def _policy(tmp_path: Path, **objectives: float) -> Path:
    """The demo policy with other objectives, in tmp_path (its relative file paths made absolute)."""
    document = yaml.safe_load(GDPR_POLICY.read_text())
    document["objectives"].update(objectives)
    document["allow_absolute_paths"] = True
    for spec in document["schema"]["quasi_identifiers"].values():
        if "hierarchy" in spec:
            spec["hierarchy"] = str((GDPR_POLICY.parent / spec["hierarchy"]).resolve())
    document["collection"]["erasure_list"] = str(
        (GDPR_POLICY.parent / document["collection"]["erasure_list"]).resolve()
    )
    path = tmp_path / "objectives.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


@pytest.fixture
def landing_csv(tmp_path: Path, landing_zone: Path) -> tuple[Path, float]:
    """One landing day's file and its majority-class share."""
    path = next(landing_zone.glob("event_date=*/records.csv"))
    labels = pd.read_csv(path, usecols=["income"])["income"].str.strip()
    share = float((labels == ">50K").mean())
    return path, max(share, 1 - share)


def _validate(policy: Path, *extra: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(app, ["validate-policy", str(policy), *extra])


def test_accuracy_at_the_majority_share_warns_with_data(tmp_path: Path, landing_csv) -> None:  # type: ignore[no-untyped-def]
    data, majority = landing_csv
    assert 0.7 < majority < 0.8
    policy = _policy(tmp_path, min_accuracy=round(majority - 0.01, 2))
    result = _validate(policy, "--data", str(data))
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    assert "warning:" in output and f"{policy}: field 'objectives.min_accuracy'" in output
    assert f"majority class for everyone ({majority:.4f} on {data})" in output and "fix:" in output
    # The shipped objective (0.78) is above the majority share of this data: no warning.
    shipped = _validate(GDPR_POLICY, "--data", str(data))
    assert shipped.exit_code == 0 and "warning:" not in shipped.output


def test_roc_auc_at_chance_warns_without_data(tmp_path: Path) -> None:
    policy = _policy(tmp_path, min_roc_auc=0.5)
    result = _validate(policy)
    output = " ".join(result.output.split())
    assert result.exit_code == 0 and "content hash" in output  # valid: the table is printed
    assert f"{policy}: field 'objectives.min_roc_auc': 0.5 is at or below what a constant score reaches" in output
    assert "min_accuracy" not in output  # without data, the majority share is unknown


def test_the_warning_follows_the_policys_margin() -> None:
    labels = np.r_[np.ones(80, np.int64), np.zeros(20, np.int64)]
    assert objective_warnings({"min_roc_auc": 0.55, "min_margin_over_trivial": 0.02}, "p.yaml") == []
    (warning,) = objective_warnings({"min_roc_auc": 0.55, "min_margin_over_trivial": 0.1}, "p.yaml")
    assert "above 0.6" in warning
    (accuracy,) = objective_warnings({"min_accuracy": 0.8}, "p.yaml", labels=labels, data="d.csv")
    assert "0.8000 on d.csv" in accuracy
    assert objective_warnings({"min_accuracy": 0.81}, "p.yaml", labels=labels) == []
