"""GDPR Art. 9(1) special categories recognised from column names, and the Art. 9(2) conditions a policy may cite.

Processing race or ethnic origin, health, genetic or biometric data, religion, political opinions, trade-union
membership or sex life / sexual orientation is prohibited unless one of the Art. 9(2) conditions applies, so a
GDPR policy that uses such a column (as a feature, quasi-identifier, sensitive attribute or label) must name
one. The match is on column names, as the policy draft's identifier guesses are: it cannot see meaning a name
hides, which is why ``ppml init`` marks its guess CONFIRM. Sex or gender alone is not an Art. 9 category (it
is a protected attribute for the fairness report).
"""

from __future__ import annotations

import re
from enum import StrEnum


class SpecialCategoryBasis(StrEnum):
    """The conditions of GDPR Art. 9(2) (a)-(j) under which special-category data may be processed."""

    EXPLICIT_CONSENT = "explicit_consent"  # (a)
    EMPLOYMENT_SOCIAL_SECURITY = "employment_social_security"  # (b)
    VITAL_INTERESTS = "vital_interests"  # (c)
    NOT_FOR_PROFIT_BODY = "not_for_profit_body"  # (d)
    MADE_PUBLIC_BY_SUBJECT = "made_public_by_subject"  # (e)
    LEGAL_CLAIMS = "legal_claims"  # (f)
    SUBSTANTIAL_PUBLIC_INTEREST = "substantial_public_interest"  # (g)
    HEALTH_OR_SOCIAL_CARE = "health_or_social_care"  # (h)
    PUBLIC_HEALTH = "public_health"  # (i)
    ARCHIVING_RESEARCH_STATISTICS = "archiving_research_statistics"  # (j)


ARTICLE_9_2_POINT = dict(zip(SpecialCategoryBasis, "abcdefghij", strict=True))

_PATTERNS = [
    (re.compile(r"race|racial|ethnic"), "racial or ethnic origin"),
    (re.compile(r"politic"), "political opinions"),
    (re.compile(r"religio|belief|faith"), "religious or philosophical beliefs"),
    (re.compile(r"trade_?union"), "trade-union membership"),
    (re.compile(r"genetic|genom|\bdna\b"), "genetic data"),
    (re.compile(r"biometric|fingerprint"), "biometric data"),
    (re.compile(r"health|diagnos|disease|medical|clinical|covid|symptom|disab|pregnan|\bbmi\b"), "health"),
    (re.compile(r"sexual|orientation|sex_life"), "sex life or sexual orientation"),
]


def special_category_of(column: str) -> str | None:
    lowered = column.lower()
    return next((category for pattern, category in _PATTERNS if pattern.search(lowered)), None)


def special_category_columns(columns: list[str]) -> dict[str, str]:
    """The columns whose names say they hold an Art. 9(1) category, with that category."""
    found = {column: special_category_of(column) for column in columns}
    return {column: category for column, category in found.items() if category}
