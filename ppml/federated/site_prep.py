"""What every site runs on its own records before it may train: the central pipeline's stages, per site.

Collection (with the policy's typing and GX suite), de-identification, anonymization with release safety, the
independent re-verification of the privacy models, cleaning with risk-bounded feature selection and the cleaned
records' GX suite -- the same engines the central assets call, applied to one site's window. A site whose checks
fail is *refused*: it writes no training features, and the federation will not start with it.

Only the site's summary (counts, check verdicts, the one-hot feature names of its k-anonymous release) leaves the
site; the features themselves stay in the site's own owner-only folder.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ppml.anonymization.policy_config import config_from_policy, rules_from_policy, with_missing_values
from ppml.anonymization.release_safety import safe_release
from ppml.anonymization.verify import verify_release
from ppml.collection import LandingZoneReader, RecordReader, SqlTableReader, collect_partition, read_erasure_list
from ppml.deidentification import deidentify, raw_identifier_leaks
from ppml.errors import PPMLError, input_error
from ppml.expectations import anonymized_records_suite, cleaned_records_suite, raw_records_suite
from ppml.federated.settings import SiteSource
from ppml.landing_zone import landing_file
from ppml.policy import IdentifierAction, LoadedPolicy
from ppml.preparation import LABEL_COLUMN, SPLIT_COLUMN, SPLITS, SplitRatios, clean_records, encode_features
from ppml.private_files import private_dir

FEATURES_FILE = "features.parquet"
#: The protected attributes' (released) values of every row of FEATURES_FILE, same order: the site's own per-group
#: error rates need them; they never leave the site (only the gaps do).
GROUPS_FILE = "groups.parquet"
SUMMARY_FILE = "summary.json"


@dataclass
class SitePreparation:
    """One site's verdict and public aggregates (never a record)."""

    site: str
    passed: bool
    checks: dict[str, bool] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    rows: dict[str, int] = field(default_factory=dict)
    records_in: int = 0
    suppressed: int = 0
    min_class_size: int = 0
    transformation: dict[str, int] = field(default_factory=dict)
    feature_names: list[str] = field(default_factory=list)
    positive_rate: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def read(cls, site_dir: Path) -> SitePreparation:
        path = Path(site_dir) / SUMMARY_FILE
        if not path.is_file():
            raise input_error(str(path), "(file)", "the site has not been prepared", "run the site preparation first")
        return cls(**json.loads(path.read_text(encoding="utf-8")))


def site_reader(site: SiteSource, workspace: Path, environ: dict[str, str] | None = None) -> RecordReader:
    """The site's own source: its landing zone (relative to the workspace) or its SQL table."""
    if site.landing_zone is not None:
        root = Path(site.landing_zone)
        return LandingZoneReader(root if root.is_absolute() else Path(workspace) / root)
    environ = dict(os.environ if environ is None else environ)
    url = environ.get(site.sql_url_env)
    if not url:
        raise input_error(
            f"site {site.name}", "sql_url_env", f"{site.sql_url_env} is not set", "export the site's database URL"
        )
    return SqlTableReader(url, str(site.sql_table))


def window_days(reader: RecordReader, days: list[str]) -> list[str]:
    """The window's days this site delivered (a site need not have records on every day)."""
    if isinstance(reader, LandingZoneReader):
        return [day for day in days if landing_file(reader.root, day).is_file()]
    return days


def collect_site(reader: RecordReader, days: list[str], loaded: LoadedPolicy) -> pd.DataFrame:
    policy = loaded.policy
    erased = (
        read_erasure_list(loaded.resolve(policy.collection.erasure_list)) if policy.collection.erasure_list else set()
    )
    present = window_days(reader, days)
    if not present:
        raise input_error("site source", "(file)", "no records in the training window", "deliver the site's days")
    parts = [collect_partition(reader, day, policy, erased).records for day in present]
    return pd.concat(parts, ignore_index=True)


def _released_columns(loaded: LoadedPolicy, columns: list[str]) -> list[str]:
    """As the central anonymized_records: no direct identifier unless generalized as a QI, no event date."""
    roles = loaded.policy.schema_
    kept = {
        c
        for c, action in roles.direct_identifiers.items()
        if action in {IdentifierAction.ZIP3, IdentifierAction.YEAR} and c in roles.quasi_identifiers
    }
    dropped = (set(roles.direct_identifiers) - kept) | {roles.event_date}
    return [c for c in columns if c not in dropped]


def _check(prep: SitePreparation, name: str, passed: bool, detail: str) -> bool:
    prep.checks[name] = bool(passed)
    if not passed:
        prep.failures.append(f"{name}: {detail}")
        prep.passed = False
    return passed


def _anonymize(loaded: LoadedPolicy, deidentified: pd.DataFrame, prep: SitePreparation, source: str) -> pd.DataFrame:
    policy = loaded.policy
    columns = _released_columns(loaded, list(deidentified.columns))
    config = with_missing_values(
        config_from_policy(loaded, source=source), deidentified, policy.schema_.missing_value_marker
    )
    safety = safe_release(deidentified[columns], config, rules_from_policy(loaded))
    result = safety.anonymization
    prep.records_in, prep.suppressed = int(result.records_in), int(result.suppressed_records)
    prep.min_class_size, prep.transformation = int(result.min_class_size), dict(result.transformation)
    dropped = set(safety.to_dict().get("dropped", []))
    suite = anonymized_records_suite(
        policy, result.data, [c for c in columns if c not in dropped], input_rows=len(deidentified)
    )
    _check(prep, "anonymized_records_expectations", suite.success, suite.summary())
    violations = verify_release(
        result.data,
        config,
        original=deidentified,
        forbidden_columns=[c for c in policy.schema_.direct_identifiers if c not in config.quasi_identifiers],
        handles=safety.handles,
    )
    _check(prep, "privacy_models_hold", not violations, "; ".join(v.detail for v in violations))
    return result.data


def prepare_site(
    loaded: LoadedPolicy, site: SiteSource, days: list[str], master_key: bytes, workspace: Path, site_dir: Path
) -> SitePreparation:
    """Run the site's stages; write its features (0600) and summary into ``site_dir`` only if every check passed."""
    policy = loaded.policy
    source = f"site {site.name}"
    prep = SitePreparation(site=site.name, passed=True)
    site_dir = private_dir(Path(site_dir))
    for name in (FEATURES_FILE, GROUPS_FILE):  # a refused site must not keep an earlier run's features
        (site_dir / name).unlink(missing_ok=True)
    raw = collect_site(site_reader(site, workspace), days, loaded)
    suite = raw_records_suite(policy, raw)
    if _check(prep, "raw_records_expectations", suite.success, suite.summary()):
        deidentified, _ = deidentify(raw, policy, master_key, source)
        leaks = raw_identifier_leaks(raw, deidentified, policy)
        if _check(prep, "no_raw_direct_identifiers", not leaks, f"raw values of {leaks} survived"):
            try:
                anonymized = _anonymize(loaded, deidentified, prep, f"{source}: anonymized_records")
            except PPMLError as error:  # no transformation satisfies the models: the site cannot release
                _check(prep, "anonymized_records_expectations", False, str(error))
            else:
                if prep.passed:
                    _features(loaded, anonymized, prep, site_dir)
    _write_summary(prep, site_dir)
    return prep


def _features(loaded: LoadedPolicy, anonymized: pd.DataFrame, prep: SitePreparation, site_dir: Path) -> None:
    policy = loaded.policy
    settings = policy.preparation
    cleaned, _ = clean_records(
        anonymized,
        policy,
        max_share_below_k=settings.max_share_below_k,
        bin_candidates=tuple(settings.numeric_bins),
        ratios=SplitRatios(settings.train_percent, settings.validation_percent),
    )
    roles = policy.schema_
    allowed = [c for c in [*roles.quasi_identifiers, *roles.features] if c in cleaned.columns]
    suite = cleaned_records_suite(
        cleaned,
        [*dict.fromkeys(allowed), LABEL_COLUMN, SPLIT_COLUMN],
        LABEL_COLUMN,
        SPLIT_COLUMN,
        len(roles.label_classes()),
    )
    if not _check(prep, "cleaned_records_expectations", suite.success, suite.summary()):
        return
    matrix = encode_features(cleaned, [c for c in cleaned.columns if c not in (LABEL_COLUMN, SPLIT_COLUMN)])
    counts = matrix.features[SPLIT_COLUMN].value_counts()
    prep.rows = {split: int(counts.get(split, 0)) for split in SPLITS}
    prep.feature_names = list(matrix.feature_names)
    prep.positive_rate = round(float(matrix.features[LABEL_COLUMN].mean()), 4)
    path = site_dir / FEATURES_FILE
    matrix.features.to_parquet(path, index=False)
    os.chmod(path, 0o600)
    _write_groups(loaded, cleaned, site_dir)


def _write_groups(loaded: LoadedPolicy, cleaned: pd.DataFrame, site_dir: Path) -> None:
    """Protected-attribute values aligned with the features' rows (encode_features keeps the cleaned order), as
    the central evaluation reads them from cleaned_records."""
    present = [a for a in loaded.policy.schema_.protected_attributes if a in cleaned.columns]
    groups = cleaned[present].astype(str).reset_index(drop=True)
    groups[SPLIT_COLUMN] = cleaned[SPLIT_COLUMN].to_numpy()
    path = site_dir / GROUPS_FILE
    groups.to_parquet(path, index=False)
    os.chmod(path, 0o600)


def _write_summary(prep: SitePreparation, site_dir: Path) -> None:
    path = site_dir / SUMMARY_FILE
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(prep.to_dict(), indent=1, sort_keys=True), encoding="utf-8")
    os.chmod(temporary, 0o600)
    os.replace(temporary, path)


def global_feature_names(preparations: list[SitePreparation]) -> list[str]:
    """The federation's one-hot columns: the union of the sites' names (labels of k-anonymous releases)."""
    return sorted({name for prep in preparations for name in prep.feature_names})
