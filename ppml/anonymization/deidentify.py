"""Direct identifiers before a file-to-file anonymization (``ppml anonymize --policy``): the release never holds one.

The same rules as the ``anonymized_records`` asset: every direct identifier the policy names is removed, except
those whose action keeps a Safe Harbor generalization (``zip3``, ``year``) and that are quasi-identifiers, which
are generalized with :mod:`ppml.deidentification`'s own functions; the event date is removed; under HIPAA ages
over 89 are top-coded. Pseudonyms are never released, so no HMAC key is needed. A column the policy does not
name but whose name says it is a direct identifier (``email``, ``ssn``, ...) stops the run, naming the columns.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ppml.deidentification import SAFE_HARBOR_MAX_AGE, _category_of, year_of, zip3
from ppml.errors import input_error
from ppml.policy import IdentifierAction, Policy, Regulation

__all__ = ["deidentify_for_release"]


def _unlisted_identifiers(data: pd.DataFrame, policy: Policy) -> list[str]:
    roles = policy.schema_
    known = {column for names in roles.columns_by_role().values() for column in names}
    known |= set(roles.quasi_identifiers) | set(roles.numeric_columns)
    return [str(c) for c in data.columns if c not in known and _category_of(str(c)) != "R"]


def deidentify_for_release(data: pd.DataFrame, policy: Policy, source: str) -> tuple[pd.DataFrame, dict[str, str]]:
    """The input without raw direct identifiers, and what was done to each one the input held."""
    roles = policy.schema_
    unlisted = _unlisted_identifiers(data, policy)
    if unlisted:
        raise input_error(
            source,
            ", ".join(unlisted),
            f"column(s) {unlisted} look like direct identifiers but the policy does not name them",
            "list them under schema.direct_identifiers (or rename them if they are not identifiers)",
        )
    out = data.copy()
    actions: dict[str, str] = {}
    for column, action in roles.direct_identifiers.items():
        if column not in out.columns:
            continue
        if action is IdentifierAction.ZIP3 and column in roles.quasi_identifiers:
            out[column], actions[column] = zip3(out[column]), "zip3"
        elif action is IdentifierAction.YEAR and column in roles.quasi_identifiers:
            out[column], actions[column] = year_of(out[column], source, column).astype(str), "year"
        else:
            out, actions[column] = out.drop(columns=[column]), "dropped"
    if roles.event_date in out.columns:
        out, actions[roles.event_date] = out.drop(columns=[roles.event_date]), "dropped"
    if policy.use_case.regulation is Regulation.HIPAA and "age" in out.columns:
        ages = pd.to_numeric(out["age"], errors="coerce")
        out["age"] = np.where(ages > SAFE_HARBOR_MAX_AGE - 1, str(SAFE_HARBOR_MAX_AGE), out["age"].astype(str))
    return out, actions
