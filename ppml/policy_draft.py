"""`ppml init --data FILE`: draft a commented policy for review from a CSV of the user's own records.

A first policy is the hardest step for a new user: every column needs a role, every quasi-identifier a
generalization hierarchy, and the privacy settings safe values. The draft guesses all of it from column names
and values (identifier patterns, cardinality, types, ranges) and marks every guess with ``# CONFIRM:`` so that a
data protection officer reviews it before anything runs. Guessing is deliberately cautious: a column that looks
identifying is dropped rather than kept, and a column ppml cannot type safely is left out with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ppml.errors import input_error
from ppml.policy_draft_render import render_policy

#: Name tokens that make a column a direct identifier (whatever its values), with the action and the reason.
IDENTIFIER_TOKENS: dict[str, tuple[str, str]] = {
    "email": ("drop", "an e-mail address"),
    "mail": ("drop", "an e-mail address"),
    "phone": ("drop", "a phone number"),
    "telephone": ("drop", "a phone number"),
    "mobile": ("drop", "a phone number"),
    "fax": ("drop", "a fax number"),
    "ssn": ("drop", "a national identification number"),
    "passport": ("drop", "a passport number"),
    "nhs": ("drop", "a national health number"),
    "nino": ("drop", "a national insurance number"),
    "address": ("drop", "a postal address"),
    "street": ("drop", "a street address"),
    "zip": ("drop", "a postal code (or zip3 under HIPAA Safe Harbor)"),
    "zipcode": ("drop", "a postal code (or zip3 under HIPAA Safe Harbor)"),
    "postcode": ("drop", "a postal code"),
    "postal": ("drop", "a postal code"),
    "dob": ("drop", "a date of birth (or year under HIPAA Safe Harbor)"),
    "birth": ("drop", "a date of birth (or year under HIPAA Safe Harbor)"),
    "birthdate": ("drop", "a date of birth (or year under HIPAA Safe Harbor)"),
    "birthday": ("drop", "a date of birth"),
    "ip": ("drop", "an IP address"),
}
NAME_QUALIFIERS_NOT_PERSONAL = {
    "clinic", "hospital", "company", "org", "organisation", "organization", "product", "file", "drug", "test",
    "ward", "site", "facility", "department", "brand", "city", "country", "street", "lab", "device",
}  # fmt: skip
SUBJECT_TOKENS = {"subject", "patient", "person", "member", "customer", "client", "user", "participant", "mrn"}
ID_TOKENS = {"id", "identifier", "uuid", "mrn", "key", "no", "number", "rownames", "index"}
QUASI_TOKENS = {
    "age", "sex", "gender", "race", "ethnicity", "ethnic", "marital", "married", "education", "region", "country",
    "nationality", "religion", "city", "state", "county", "language", "citizenship",
}  # fmt: skip
LABEL_TOKENS = {"label", "target", "outcome", "result", "class", "diagnosis", "status", "y", "churn", "default"}
POSITIVE_VALUES = ("positive", "yes", "true", "1", "y", ">50k", "pos", "high", "disease", "died", "dead")
DATE_TOKENS = {"date", "day", "time", "timestamp", "dt", "visit", "admission", "event"}
EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$", re.IGNORECASE)
PHONE = re.compile(r"^\+?\(?\d[\d\s().-]{5,18}\d$")
NATIONAL_ID = re.compile(r"^\d{3}-\d{2}-\d{4}$")
ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}")
NEAR_UNIQUE = 0.9
MAX_CATEGORIES = 100


@dataclass
class ColumnProfile:
    """What the draft knows about one column: its type, cardinality, empty cells and range."""

    name: str
    tokens: set[str]
    kind: str  # integer, decimal, date, text
    distinct: int
    rows: int
    empty: int
    low: float | None = None
    high: float | None = None
    values: list[str] = field(default_factory=list)

    @property
    def distinct_share(self) -> float:
        return self.distinct / max(self.rows - self.empty, 1)


@dataclass
class DraftRoles:
    """The guessed role of every column, with the reasons the draft prints as comments."""

    subject_id: str
    event_date: str | None
    direct: dict[str, tuple[str, str]] = field(default_factory=dict)  # column -> (action, reason)
    quasi: dict[str, dict[str, object]] = field(default_factory=dict)  # column -> hierarchy entry
    label: str = ""
    positive_value: str = ""
    label_values: list[str] = field(default_factory=list)
    label_candidates: list[str] = field(default_factory=list)
    features: list[str] = field(default_factory=list)
    numeric: dict[str, tuple[float, float]] = field(default_factory=dict)
    numeric_missing: dict[str, str] = field(default_factory=dict)
    left_out: dict[str, str] = field(default_factory=dict)  # column -> why it is not used
    date_candidates: list[str] = field(default_factory=list)
    profiles: dict[str, ColumnProfile] = field(default_factory=dict)
    hierarchy_files: dict[str, list[list[str]]] = field(default_factory=dict)


@dataclass(frozen=True)
class DraftResult:
    policy_path: Path
    hierarchy_paths: list[Path]
    notes: list[str]


def tokens_of(name: str) -> set[str]:
    """Lower-case words of a column name: ``fakeFirstName`` and ``fake_first_name`` give {fake, first, name}."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", name)
    return {token for token in re.split(r"[^a-z0-9]+", spaced.lower()) if token}


def profile_column(name: str, values: pd.Series) -> ColumnProfile:
    text = values.astype(str).str.strip()
    filled = text[text.ne("")]
    profile = ColumnProfile(name, tokens_of(name), "text", int(filled.nunique()), len(text), int(text.eq("").sum()))
    profile.values = sorted(filled.unique().tolist())
    numbers = pd.to_numeric(filled, errors="coerce")
    if len(filled) and numbers.notna().all():
        profile.kind = "integer" if (numbers == numbers.round()).all() else "decimal"
        profile.low, profile.high = float(numbers.min()), float(numbers.max())
    elif len(filled) and filled.str.match(ISO_DATE).mean() >= 0.95:
        profile.kind = "date"
    return profile


def read_data(data: Path) -> pd.DataFrame:
    if not data.is_file():
        raise input_error(str(data), "(file)", "data file not found", "pass an existing CSV file with --data")
    try:
        frame = pd.read_csv(data, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise input_error(
            str(data), "(file)", f"not a readable CSV ({type(exc).__name__})", "export UTF-8 CSV"
        ) from None
    if frame.empty:
        raise input_error(str(data), "(rows)", "the file has no records", "export the records with a header line")
    return frame


def _identifier_reason(profile: ColumnProfile) -> tuple[str, str] | None:
    """Why a column looks like a direct identifier, by name or by value pattern; None when it does not."""
    for token in profile.tokens:
        if token in IDENTIFIER_TOKENS:
            return IDENTIFIER_TOKENS[token]
    is_name = "name" in profile.tokens or any(t.endswith("name") for t in profile.tokens)
    if is_name and not profile.tokens & NAME_QUALIFIERS_NOT_PERSONAL:
        return ("drop", "a person's name")
    sample = pd.Series(profile.values[:MAX_CATEGORIES], dtype=str)
    if profile.kind == "text" and len(sample):
        for pattern, reason in ((EMAIL, "e-mail addresses"), (NATIONAL_ID, "SSN-shaped values")):
            if sample.str.match(pattern).mean() >= 0.5:
                return ("drop", f"its values look like {reason}")
        if sample.str.match(PHONE).mean() >= 0.5 and sample.str.contains(r"[\s().-]").mean() >= 0.5:
            return ("drop", "its values look like phone numbers")
    if profile.kind != "decimal" and profile.rows >= 20 and profile.distinct_share >= NEAR_UNIQUE:
        return ("drop", f"near-unique ({profile.distinct} distinct values in {profile.rows} records)")
    if profile.tokens & ID_TOKENS and profile.tokens & SUBJECT_TOKENS:
        return ("pseudonymize", "the data subject's id")
    return None


def _subject_id(direct: dict[str, tuple[str, str]], profiles: dict[str, ColumnProfile]) -> str:
    """The data subject's id: a subject-named id column, else a near-unique id-like column, else the first."""
    ordered = list(direct)
    for test in (
        lambda p: bool(p.tokens & SUBJECT_TOKENS and p.tokens & ID_TOKENS),
        lambda p: bool(p.tokens & ID_TOKENS) and p.distinct_share >= NEAR_UNIQUE,
        lambda p: p.distinct_share >= NEAR_UNIQUE,
    ):
        for column in ordered:
            if test(profiles[column]):
                return column
    return ordered[0]


def _event_date(profiles: dict[str, ColumnProfile], direct: dict[str, tuple[str, str]]) -> tuple[str | None, list[str]]:
    """The ISO date column that dates each record (not a birth date); and day-count columns to derive one from."""
    dates = [p.name for p in profiles.values() if p.kind == "date" and p.name not in direct]
    preferred = [c for c in dates if profiles[c].tokens & {"event", "visit", "admission", "date"}]
    candidates = [
        p.name for p in profiles.values() if p.kind == "integer" and p.tokens & DATE_TOKENS and p.name not in direct
    ]
    return (preferred or dates or [None])[0], candidates


def _pick_label(profiles: dict[str, ColumnProfile], taken: set[str]) -> tuple[str, list[str]]:
    candidates = [
        p.name
        for p in profiles.values()
        if p.name not in taken
        and 2 <= p.distinct <= 10
        and p.kind != "decimal"
        and not p.empty
        and not p.tokens & QUASI_TOKENS
    ]
    named = [c for c in candidates if profiles[c].tokens & LABEL_TOKENS]
    ordered = named + [c for c in candidates if c not in named]
    if not ordered:
        raise input_error(
            "(data)", "label", "no column with 2 to 10 values to predict", "add the outcome column to the CSV"
        )
    return ordered[0], ordered


def _positive_value(values: list[str]) -> str:
    for wanted in POSITIVE_VALUES:
        for value in values:
            if value.lower() == wanted:
                return value
    return values[-1]


def interval_widths(low: float, high: float) -> list[int]:
    """Nested interval widths for a numeric quasi-identifier: about 20 bins first, doubling to a single bin."""
    span = max(high - low, 1.0)
    base = next(w for w in (1, 2, 5, 10, 20, 25, 50, 100, 250, 500, 1000, 10**4, 10**5, 10**6, 10**9) if span / w <= 20)
    widths = [base]
    while widths[-1] < span:
        widths.append(widths[-1] * 2)
    return widths


def _interval_rows(profile: ColumnProfile, widths: list[int], start: int) -> list[list[str]]:
    """ARX rows for a decimal quasi-identifier (value, its bins from fine to coarse, ``*``)."""
    rows = []
    for value in profile.values:
        number = float(value)
        bins = [
            f"{start + int((number - start) // w) * w}-{start + int((number - start) // w) * w + w - 1}" for w in widths
        ]
        rows.append([value, *bins, "*"])
    return rows


def _quasi_identifier(profile: ColumnProfile, roles: DraftRoles) -> None:
    """A hierarchy for a quasi-identifier: an interval spec for integers, a written CSV otherwise."""
    name = profile.name
    if profile.kind == "integer" and profile.low is not None and profile.high is not None:
        widths = interval_widths(profile.low, profile.high)
        start = int(profile.low // widths[0] * widths[0])
        roles.quasi[name] = {"hierarchy_spec": {"type": "interval", "widths": widths, "start": start}}
    elif profile.kind == "date":
        roles.quasi[name] = {"hierarchy_spec": {"type": "date", "levels": ["month", "year", "decade"]}}
    elif profile.kind == "decimal" and profile.low is not None and profile.high is not None:
        widths = interval_widths(profile.low, profile.high)
        start = int(profile.low // widths[0] * widths[0])
        roles.hierarchy_files[name] = _interval_rows(profile, widths, start)
        roles.quasi[name] = {"hierarchy": f"hierarchies/{name}.csv"}
    else:
        roles.hierarchy_files[name] = [[value, "*"] for value in profile.values]
        roles.quasi[name] = {"hierarchy": f"hierarchies/{name}.csv"}


def guess_roles(frame: pd.DataFrame) -> DraftRoles:
    """Every column's likely role (see the module docstring); the draft marks each guess for confirmation."""
    profiles = {column: profile_column(column, frame[column]) for column in frame.columns}
    direct = {c: reason for c, p in profiles.items() if (reason := _identifier_reason(p)) is not None}
    if not direct:
        raise input_error(
            "(data)", "subject_id", "no column identifies the data subject", "add a subject id column to the CSV"
        )
    subject = _subject_id(direct, profiles)
    reason = direct[subject][1]
    direct[subject] = ("pseudonymize", reason if "subject" in reason else f"{reason}; kept as a keyed pseudonym")
    event_date, date_candidates = _event_date(profiles, direct)
    roles = DraftRoles(subject, event_date, direct=direct, profiles=profiles, date_candidates=date_candidates)
    taken = set(direct) | {event_date}
    roles.label, roles.label_candidates = _pick_label(profiles, taken)
    label_profile = profiles[roles.label]
    roles.label_values = list(label_profile.values)
    roles.positive_value = _positive_value(roles.label_values)
    for name, profile in profiles.items():
        if name in taken or name == roles.label:
            continue
        _assign_feature(profile, roles)
    if not roles.quasi:
        fallback = next((f for f in roles.features if profiles[f].kind in ("text", "integer")), None)
        if fallback is None:
            raise input_error("(data)", "quasi_identifiers", "no usable column", "add demographic columns")
        _quasi_identifier(profiles[fallback], roles)
    return roles


def _assign_feature(profile: ColumnProfile, roles: DraftRoles) -> None:
    """A feature (and maybe a quasi-identifier), or left out with the reason."""
    name = profile.name
    is_quasi = bool(profile.tokens & QUASI_TOKENS)
    if profile.kind == "decimal" and (profile.empty or not is_quasi):
        roles.left_out[name] = (
            "decimal numbers; numeric_columns hold whole numbers: round (or scale) it in your export to use it"
        )
        return
    if profile.empty and profile.kind != "integer":
        roles.left_out[name] = (
            f"{profile.empty} empty cells; collection refuses empty text cells: deliver them as the "
            "missing_value_marker '?' to use this column"
        )
        return
    if profile.kind == "text" and profile.distinct > MAX_CATEGORIES:
        roles.left_out[name] = f"{profile.distinct} distinct values (free text?); group it into categories to use it"
        return
    if profile.distinct <= 1:
        roles.left_out[name] = "a single value: it cannot inform a model"
        return
    roles.features.append(name)
    if profile.kind == "integer" and profile.low is not None and profile.high is not None:
        roles.numeric[name] = plausible_range(profile.low, profile.high)
        if profile.empty:
            roles.numeric_missing[name] = "drop"
    if is_quasi:
        _quasi_identifier(profile, roles)


def plausible_range(low: float, high: float) -> tuple[float, float]:
    """The observed range widened by a tenth of its span (never below 0 for non-negative data)."""
    margin = max((high - low) * 0.1, 1.0)
    floor = 0.0 if low >= 0 else low - margin
    return (float(max(floor, int(low - margin))), float(int(high + margin + 0.999)))


def policy_name(data: Path) -> str:
    name = re.sub(r"[^a-z0-9_-]+", "-", data.stem.lower()).strip("-_") or "my-policy"
    return (name if len(name) >= 3 else f"{name}-policy")[:64]


def draft_policy(data: Path, out: Path, *, name: str | None = None, force: bool = False) -> DraftResult:
    """Write the draft policy (and the hierarchy CSVs it names, beside it); return notes for the user."""
    if out.exists() and not force:
        raise input_error(str(out), "(file)", "the file already exists", "pass --force or choose another --out")
    frame = read_data(data)
    roles = guess_roles(frame)
    out.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for column, rows in roles.hierarchy_files.items():
        path = out.parent / "hierarchies" / f"{column}.csv"
        path.parent.mkdir(exist_ok=True)
        path.write_text("".join(";".join(row) + "\n" for row in rows), encoding="utf-8")
        written.append(path)
    out.write_text(render_policy(roles, name or policy_name(data), data, frame), encoding="utf-8")
    notes = [f"{len(roles.direct)} direct identifiers, {len(roles.quasi)} quasi-identifiers, label {roles.label!r}"]
    if roles.event_date is None:
        notes.append(
            "the data has no date column: add 'event_date' (YYYY-MM-DD, the day each record happened)"
            + (f", e.g. derived from {', '.join(roles.date_candidates)}" if roles.date_candidates else "")
            + "; validate-policy --data fails until it exists"
        )
    notes.append(f"review every '# CONFIRM:' line in {out}, then: ppml validate-policy {out} --data {data}")
    return DraftResult(out, written, notes)
