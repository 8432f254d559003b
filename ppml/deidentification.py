"""Lifecycle step 2b: de-identification of direct identifiers, including HIPAA Safe Harbor.

Raw direct identifiers never leave this stage: each one is dropped, replaced by a keyed HMAC-SHA256 pseudonym,
masked, or generalized the Safe Harbor way (ZIP to three digits with the restricted low-population prefixes set
to ``000``, dates to the year, ages over 89 into one ``90`` (= 90 or older) category). The HMAC key comes from
an environment variable and is never logged; without the key nobody can link a pseudonym back to a person, and
with it the controller can still honour erasure requests (GDPR Art. 11, 17).

The stage also derives ``split_bucket`` (0–99) from the keyed hash of the subject id, so that the train /
validation / test split is stable per data subject without any identifier travelling further.

Pseudonyms are domain-separated per purpose: the HMAC key is not ``PPML_HMAC_KEY`` itself but a key derived from
it with HKDF-SHA256 (RFC 5869) for the policy's data-set identity and purpose (:func:`purpose_key`). Two policies
with different purposes produce unlinkable pseudonyms from one secret (GDPR Art. 5(1)(b), purpose limitation),
while the same policy -- renamed, re-versioned or retrained -- keeps the same pseudonyms and the same split.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ppml.errors import PPMLError, input_error
from ppml.policy import IdentifierAction, Policy, Regulation

HMAC_KEY_ENV = "PPML_HMAC_KEY"
MIN_KEY_LENGTH = 32
SPLIT_BUCKET_COLUMN = "split_bucket"

#: Three-digit ZIP prefixes whose areas held 20,000 people or fewer in the 2000 census (HHS guidance on
#: 45 CFR 164.514(b)(2)(i)(B)); Safe Harbor requires them to be replaced by 000.
RESTRICTED_ZIP3 = frozenset(
    {
        "036",
        "059",
        "063",
        "102",
        "203",
        "556",
        "692",
        "790",
        "821",
        "823",
        "830",
        "831",
        "878",
        "879",
        "884",
        "890",
        "893",
    }
)
SAFE_HARBOR_MAX_AGE = 90

#: The 18 identifier categories of 45 CFR 164.514(b)(2)(i), with the column kinds that usually carry them.
SAFE_HARBOR_CATEGORIES = {
    "A": "Names",
    "B": "Geographic subdivisions smaller than a state (ZIP codes beyond 3 digits)",
    "C": "Dates (except year) directly related to an individual; ages over 89",
    "D": "Telephone numbers",
    "E": "Fax numbers",
    "F": "E-mail addresses",
    "G": "Social Security numbers",
    "H": "Medical record numbers",
    "I": "Health plan beneficiary numbers",
    "J": "Account numbers",
    "K": "Certificate/license numbers",
    "L": "Vehicle identifiers and serial numbers",
    "M": "Device identifiers and serial numbers",
    "N": "Web URLs",
    "O": "IP addresses",
    "P": "Biometric identifiers",
    "Q": "Full-face photographs",
    "R": "Any other unique identifying number, characteristic or code",
}
_CATEGORY_BY_COLUMN = [
    (re.compile(r"name"), "A"),
    (re.compile(r"zip|postal|street|address|city|county"), "B"),
    (re.compile(r"date|dob|birth"), "C"),
    (re.compile(r"phone|mobile"), "D"),
    (re.compile(r"fax"), "E"),
    (re.compile(r"email|e_mail"), "F"),
    (re.compile(r"ssn|social_security"), "G"),
    (re.compile(r"mrn|medical_record"), "H"),
    (re.compile(r"beneficiary|health_plan"), "I"),
    (re.compile(r"account|iban"), "J"),
    (re.compile(r"licen[cs]e|certificate"), "K"),
    (re.compile(r"vehicle|plate|vin"), "L"),
    (re.compile(r"device|serial|imei"), "M"),
    (re.compile(r"url|website"), "N"),
    (re.compile(r"\bip\b|ip_address"), "O"),
    (re.compile(r"biometric|fingerprint|voice"), "P"),
    (re.compile(r"photo|image|face"), "Q"),
]


def hmac_key_from_env(environ: dict[str, str] | None = None) -> bytes:
    """The pseudonymization key; refusing weak or missing keys is safer than silently hashing without one."""
    value = (environ if environ is not None else os.environ).get(HMAC_KEY_ENV, "")
    if len(value) < MIN_KEY_LENGTH:
        raise PPMLError(
            f"environment: field '{HMAC_KEY_ENV}': {'missing' if not value else 'shorter than 32 characters'}; "
            f"fix: export {HMAC_KEY_ENV} with a random secret of at least {MIN_KEY_LENGTH} characters "
            "(e.g. `python -c 'import secrets; print(secrets.token_hex(32))'`)"
        )
    return value.encode()


#: HKDF salt of the per-purpose pseudonym keys (a fixed, public domain label; the secret is PPML_HMAC_KEY).
PURPOSE_KEY_SALT = b"ppml/pseudonym-key/v1"


def purpose_key(master_key: bytes, policy: Policy) -> bytes:
    """The pseudonymization key of one data-set identity and purpose, derived from the master key (HKDF-SHA256).

    The purpose is compared with its whitespace collapsed, so re-wrapping the YAML text keeps the pseudonyms; the
    policy's name and version are deliberately not part of it.
    """
    purpose = " ".join(policy.use_case.purpose.split())
    info = b"\x1f".join([b"dataset", policy.dataset.id.encode(), b"purpose", purpose.encode()])
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=PURPOSE_KEY_SALT, info=info).derive(master_key)


def pseudonymize(values: pd.Series, key: bytes, column: str) -> pd.Series:
    """Keyed HMAC-SHA256, domain-separated per column so equal values in two columns do not link."""
    prefix = column.encode() + b"\x1f"
    return values.map(lambda v: hmac.new(key, prefix + str(v).encode(), hashlib.sha256).hexdigest()[:32])


def split_buckets(subject_ids: pd.Series, key: bytes) -> pd.Series:
    """A stable bucket 0..99 per subject; coarse on purpose so that it identifies nobody."""
    digests = subject_ids.map(lambda v: hmac.new(key, b"split\x1f" + str(v).encode(), hashlib.sha256).digest())
    return digests.map(lambda d: int.from_bytes(d[:8], "big") % 100).astype("int64")


def mask(values: pd.Series, column: str) -> pd.Series:
    """Keep a shape that is useful for data quality but identifies nobody (e-mail domain, last digits)."""
    text = values.astype(str)
    if "email" in column:
        return text.str.replace(r"^[^@]*", "***", regex=True)
    digits_only = text.str.replace(r"\d(?=(?:\D*\d){2})", "*", regex=True)
    return digits_only.where(text.str.contains(r"\d"), "***")


def zip3(values: pd.Series) -> pd.Series:
    prefixes = values.astype(str).str.strip().str[:3]
    return prefixes.where(~prefixes.isin(RESTRICTED_ZIP3) & prefixes.str.fullmatch(r"\d{3}"), "000")


def year_of(values: pd.Series, source: str, column: str) -> pd.Series:
    parsed = pd.to_datetime(values, errors="coerce", format="ISO8601")
    if parsed.isna().any():
        raise input_error(source, column, "value that is not an ISO date", "write dates as YYYY-MM-DD")
    return parsed.dt.year.astype("int64")


@dataclass
class DeidentificationReport:
    actions: dict[str, str]
    columns_out: list[str]
    ages_top_coded: int = 0
    zip3_restricted: int = 0
    safe_harbor_checklist: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "actions": self.actions,
            "columns_out": self.columns_out,
            "ages_top_coded": self.ages_top_coded,
            "zip3_restricted": self.zip3_restricted,
            "safe_harbor_checklist": self.safe_harbor_checklist,
        }


def safe_harbor_name_category(column: str) -> str | None:
    """The Safe Harbor class a column's name says it carries (A-Q), or None when no name pattern matches."""
    lowered = column.lower()
    return next((category for pattern, category in _CATEGORY_BY_COLUMN if pattern.search(lowered)), None)


def _category_of(column: str) -> str:
    lowered = column.lower()
    for pattern, category in _CATEGORY_BY_COLUMN:
        if pattern.search(lowered):
            return category
    return "R"


def safe_harbor_checklist(
    policy: Policy, frame_columns: list[str], report: DeidentificationReport
) -> list[dict[str, str]]:
    """One row per Safe Harbor category: which columns carried it, what was done, and the verdict."""
    by_category: dict[str, list[str]] = {key: [] for key in SAFE_HARBOR_CATEGORIES}
    for column in policy.schema_.direct_identifiers:
        by_category[_category_of(column)].append(column)
    rows = []
    for key, title in SAFE_HARBOR_CATEGORIES.items():
        columns = by_category[key]
        treatments = [f"{column}: {report.actions[column]}" for column in columns]
        if key == "C" and "age" in policy.schema_.quasi_identifiers:
            treatments.append(f"age: top-coded at {SAFE_HARBOR_MAX_AGE} ({report.ages_top_coded} records)")
        leaked = [column for column in columns if column in report.columns_out and report.actions[column] in {"mask"}]
        verdict = "fail" if leaked else ("handled" if columns else "not present")
        rows.append(
            {
                "category": key,
                "identifier": title,
                "treatment": "; ".join(treatments) or "-",
                "verdict": verdict,
            }
        )
    return rows


def deidentify(
    frame: pd.DataFrame, policy: Policy, key: bytes, source: str
) -> tuple[pd.DataFrame, DeidentificationReport]:
    """Apply the policy's action to every direct identifier; return the de-identified frame and a report.

    ``key`` is the master key (``PPML_HMAC_KEY``); pseudonyms and split buckets use its per-purpose derivation.
    """
    key = purpose_key(key, policy)
    roles = policy.schema_
    out = frame.copy()
    out[SPLIT_BUCKET_COLUMN] = split_buckets(out[roles.subject_id], key)
    actions: dict[str, str] = {}
    report = DeidentificationReport(actions=actions, columns_out=[])
    for column, action in roles.direct_identifiers.items():
        if column not in out.columns:
            raise input_error(source, column, "direct identifier named by the policy is missing", "fix the policy")
        actions[column] = action.value
        if action is IdentifierAction.DROP:
            out = out.drop(columns=[column])
        elif action is IdentifierAction.PSEUDONYMIZE:
            out[column] = pseudonymize(out[column], key, column)
        elif action is IdentifierAction.MASK:
            out[column] = mask(out[column], column)
        elif action is IdentifierAction.ZIP3:
            restricted = out[column].astype(str).str[:3].isin(RESTRICTED_ZIP3)
            report.zip3_restricted = int(restricted.sum())
            out[column] = zip3(out[column])
        elif action is IdentifierAction.YEAR:
            out[column] = year_of(out[column], source, column)
    if policy.use_case.regulation is Regulation.HIPAA and "age" in out.columns:
        ages = pd.to_numeric(out["age"], errors="coerce")
        over = ages > SAFE_HARBOR_MAX_AGE - 1
        report.ages_top_coded = int(over.sum())
        out["age"] = np.where(over, SAFE_HARBOR_MAX_AGE, ages).astype("int64")
    report.columns_out = list(out.columns)
    if policy.use_case.regulation is Regulation.HIPAA:
        report.safe_harbor_checklist = safe_harbor_checklist(policy, list(frame.columns), report)
    return out, report


def raw_identifier_leaks(raw: pd.DataFrame, released: pd.DataFrame, policy: Policy) -> list[str]:
    """Direct-identifier columns whose raw values still appear verbatim in the released frame.

    The invariant test of this stage: no raw value of a dropped, pseudonymized or masked identifier may appear
    in any column of the output. Returns the offending identifier column names (never the values).
    """
    leaks = []
    released_values = set()
    for column in released.columns:
        if not pd.api.types.is_numeric_dtype(released[column]):  # numbers cannot carry a text identifier
            released_values.update(released[column].astype(str).unique())
    for column, action in policy.schema_.direct_identifiers.items():
        if action in {IdentifierAction.ZIP3, IdentifierAction.YEAR} or column not in raw.columns:
            continue
        raw_values = set(raw[column].astype(str).unique())
        if raw_values & released_values:
            leaks.append(column)
    return leaks


def identifier_reference_columns(policy: Policy) -> list[str]:
    """The identifier columns whose raw values must never reappear (dropped, pseudonymized, masked): what the
    compliance stage's leakage scan needs to know once the raw copies are gone (ZIP3/year values legitimately
    reappear generalized)."""
    generalized = {IdentifierAction.ZIP3, IdentifierAction.YEAR}
    return [c for c, action in policy.schema_.direct_identifiers.items() if action not in generalized]
