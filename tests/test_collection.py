"""Collection: both record sources, erasure requests, and every kind of bad landing file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest

from ppml.collection import (
    LandingZoneReader,
    SqlTableReader,
    collect_partition,
    load_records_into_table,
    read_erasure_list,
)
from ppml.errors import PPMLError
from ppml.landing_zone import IDENTIFIER_COLUMNS, landing_file, synthesize_records
from ppml.policy import load_policy
from tests.support import GDPR_POLICY, TEST_FIRST_DAY

DAY = TEST_FIRST_DAY


@pytest.fixture(scope="module")
def policy():  # type: ignore[no-untyped-def]
    return load_policy(GDPR_POLICY).policy


def test_synthetic_identifiers_are_deterministic_and_consistent() -> None:
    first = synthesize_records(only_days=[DAY])
    second = synthesize_records(only_days=[DAY])
    pd.testing.assert_frame_equal(first, second)
    assert set(IDENTIFIER_COLUMNS) <= set(first.columns)
    assert first["record_id"].is_unique and first["ssn"].str.fullmatch(r"\d{3}-\d{2}-\d{4}").all()
    birth_year = pd.to_datetime(first["date_of_birth"]).dt.year
    assert ((2026 - birth_year) - first["age"]).between(-1, 1).all()


def test_landing_zone_partition_is_collected(landing_zone: Path, policy) -> None:  # type: ignore[no-untyped-def]
    collected = collect_partition(LandingZoneReader(landing_zone), DAY, policy)
    assert collected.rows_read == len(collected.records) > 300
    assert collected.records["age"].dtype == "int64"
    assert (collected.records["event_date"] == DAY).all()
    assert len(collected.content_sha256) == 64


def test_erasure_requests_are_excluded_and_counted(landing_zone: Path, policy) -> None:  # type: ignore[no-untyped-def]
    reader = LandingZoneReader(landing_zone)
    everyone = collect_partition(reader, DAY, policy).records
    erased = set(everyone["record_id"].iloc[:3])
    collected = collect_partition(reader, DAY, policy, erased)
    assert collected.rows_excluded_by_erasure == 3
    assert not collected.records["record_id"].isin(erased).any()


def test_bundled_erasure_list_reads() -> None:
    loaded = load_policy(GDPR_POLICY)
    subjects = read_erasure_list(loaded.resolve(loaded.policy.collection.erasure_list))
    assert len(subjects) == 40


@pytest.fixture
def zone_copy(landing_zone: Path, tmp_path: Path) -> Path:
    target = tmp_path / "landing"
    shutil.copytree(landing_zone / f"event_date={DAY}", target / f"event_date={DAY}")
    return target


def _rewrite(zone: Path, change) -> Path:  # type: ignore[no-untyped-def]
    path = landing_file(zone, DAY)
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    change(frame, path)
    return path


def test_missing_column(zone_copy: Path, policy) -> None:  # type: ignore[no-untyped-def]
    path = _rewrite(zone_copy, lambda f, p: f.drop(columns=["occupation"]).to_csv(p, index=False))
    with pytest.raises(PPMLError) as error:
        collect_partition(LandingZoneReader(zone_copy), DAY, policy)
    assert str(error.value).startswith(f"{path}: field 'occupation': required column missing")
    assert "fix:" in str(error.value)


def test_wrong_type(zone_copy: Path, policy) -> None:  # type: ignore[no-untyped-def]
    def corrupt_age(frame: pd.DataFrame, path: Path) -> None:
        frame.loc[4, "age"] = "forty"
        frame.to_csv(path, index=False)

    path = _rewrite(zone_copy, corrupt_age)
    with pytest.raises(PPMLError, match=rf"{path}: field 'age': non-integer value at line 6.*fix: write whole numbers"):
        collect_partition(LandingZoneReader(zone_copy), DAY, policy)


def test_no_rows(zone_copy: Path, policy) -> None:  # type: ignore[no-untyped-def]
    _rewrite(zone_copy, lambda f, p: f.iloc[:0].to_csv(p, index=False))
    with pytest.raises(PPMLError, match=r"field '\(rows\)': the partition has no records"):
        collect_partition(LandingZoneReader(zone_copy), DAY, policy)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00binary", "binary or corrupt"),
        (b"", "empty"),
        (b'a,b\n"unterminated,1\n', "corrupt CSV"),
    ],
)
def test_corrupt_file(zone_copy: Path, policy, content: bytes, problem: str) -> None:  # type: ignore[no-untyped-def]
    landing_file(zone_copy, DAY).write_bytes(content)
    with pytest.raises(PPMLError, match=problem):
        collect_partition(LandingZoneReader(zone_copy), DAY, policy)


def test_partition_with_no_file(zone_copy: Path, policy) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PPMLError, match=r"field '\(file\)': no landing file for partition 2026-12-31.*fix:"):
        collect_partition(LandingZoneReader(zone_copy), "2026-12-31", policy)


def test_record_in_the_wrong_day_file(zone_copy: Path, policy) -> None:  # type: ignore[no-untyped-def]
    def misdate(frame: pd.DataFrame, path: Path) -> None:
        frame.loc[0, "event_date"] = "2026-03-02"
        frame.to_csv(path, index=False)

    _rewrite(zone_copy, misdate)
    with pytest.raises(PPMLError, match=r"field 'event_date': record at line 2 is not dated"):
        collect_partition(LandingZoneReader(zone_copy), DAY, policy)


@pytest.mark.postgres
def test_sql_table_source_matches_landing_zone(landing_zone: Path, postgres_database: str, policy) -> None:  # type: ignore[no-untyped-def]
    records = synthesize_records(only_days=[DAY, "2026-03-02"])
    load_records_into_table(postgres_database, "raw_records", records)
    from_sql = collect_partition(SqlTableReader(postgres_database, "raw_records"), DAY, policy)
    from_files = collect_partition(LandingZoneReader(landing_zone), DAY, policy)
    pd.testing.assert_frame_equal(
        from_sql.records.sort_values("record_id").reset_index(drop=True),
        from_files.records.sort_values("record_id").reset_index(drop=True),
    )
    assert from_sql.source.endswith("#raw_records") and "postgresql" in from_sql.source


@pytest.mark.postgres
def test_sql_source_errors(postgres_database: str, policy) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PPMLError, match="table 'absent' does not exist"):
        SqlTableReader(postgres_database, "absent").read_day(DAY)
    with pytest.raises(PPMLError, match="field 'url': cannot connect"):
        SqlTableReader("postgresql+psycopg2://postgres@127.0.0.1:1/none", "raw_records").read_day(DAY)
