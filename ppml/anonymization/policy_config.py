"""Build an :class:`AnonymizationConfig` from a validated policy (the asset and ``ppml anonymize --policy``)."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd

from ppml.anonymization.engine import AnonymizationConfig
from ppml.anonymization.hierarchy import Hierarchy, HierarchySpec
from ppml.anonymization.models import LDiversity, TCloseness
from ppml.anonymization.release_safety import ReleaseRules
from ppml.errors import input_error
from ppml.policy import LoadedPolicy

__all__ = ["config_from_policy", "rules_from_policy", "with_missing_values"]

#: columns the de-identification stage derives from a keyed hash: nobody without the key can compute them
_KEYED_COLUMNS = {"split_bucket": "keyed-hash split bucket (0-99): not computable without the HMAC key"}


def config_from_policy(
    loaded: LoadedPolicy,
    *,
    metric: str = "loss",
    source: str | None = None,
    column_names: dict[str, str] | None = None,
    max_optimal_nodes: int = 100_000,
) -> AnonymizationConfig:
    """The policy's QIs (in policy order), hierarchies, k, l, t and suppression limit as an engine config.

    ``column_names`` renames policy columns to data columns when they differ (e.g. ``marital_status`` ->
    ``marital-status``). The risk threshold is the policy's ``max_reidentification_risk``.
    """
    policy = loaded.policy
    rename = column_names or {}
    where = str(loaded.path)
    quasi: dict[str, Hierarchy | HierarchySpec] = {}
    for name, qi in policy.schema_.quasi_identifiers.items():
        field = f"schema.quasi_identifiers.{name}"
        if qi.hierarchy is not None:
            quasi[rename.get(name, name)] = Hierarchy.from_csv(loaded.resolve(qi.hierarchy))
        elif qi.hierarchy_spec is not None:
            quasi[rename.get(name, name)] = HierarchySpec(dict(qi.hierarchy_spec), f"{where}: {field}.hierarchy_spec")
        else:  # pragma: no cover - the policy model forbids it
            raise input_error(where, field, "no hierarchy", "give 'hierarchy' or 'hierarchy_spec'")
    privacy = policy.privacy
    l_models = tuple(LDiversity(rename.get(m.attribute, m.attribute), m.l, m.variant, m.c) for m in privacy.l_diversity)
    t_models = []
    sensitive_hierarchies: dict[str, Hierarchy] = {}
    for index, m in enumerate(privacy.t_closeness):
        attribute = rename.get(m.attribute, m.attribute)
        t_models.append(TCloseness(attribute, m.t, m.variant))
        if m.variant == "hierarchical":
            if m.hierarchy is None:
                raise input_error(
                    where,
                    f"privacy.t_closeness.{index}.hierarchy",
                    "hierarchical t-closeness needs the attribute's hierarchy",
                    "add 'hierarchy: <ARX CSV>' or use variant: equal",
                )
            sensitive_hierarchies[attribute] = Hierarchy.from_csv(loaded.resolve(m.hierarchy))
    return AnonymizationConfig(
        quasi_identifiers=quasi,
        k=privacy.k,
        l_diversity=l_models,
        t_closeness=tuple(t_models),
        suppression_limit=privacy.suppression_limit,
        metric=metric,
        sensitive_hierarchies=sensitive_hierarchies,
        max_optimal_nodes=max_optimal_nodes,
        risk_threshold=privacy.max_reidentification_risk,
        source=source or where,
    )


def rules_from_policy(loaded: LoadedPolicy, *, source: str | None = None) -> ReleaseRules:
    """The policy's ``release`` section as engine rules; sensitive attributes are not attacker knowledge."""
    release = loaded.policy.release
    not_known = {
        column: "sensitive attribute (schema.sensitive_attributes): protected by l-diversity/t-closeness"
        for column in loaded.policy.schema_.sensitive_attributes
    }
    return ReleaseRules(
        default_action=release.default_action.value,
        columns={column: action.value for column, action in release.columns.items()},
        max_uniqueness=release.max_uniqueness,
        dependence_threshold=release.dependence_threshold,
        bins=release.bins,
        not_attacker_knowledge={**_KEYED_COLUMNS, **not_known},
        source=source or str(loaded.path),
    )


def with_missing_values(config: AnonymizationConfig, data: pd.DataFrame, marker: str) -> AnonymizationConfig:
    """Let the source's missing-value marker through every hierarchy that lacks it.

    A missing value is its own category ("unknown") and becomes ``*`` at the top level, like any other value;
    the alternative — dropping records with a missing quasi-identifier — would bias the training data.
    """
    hierarchies = dict(config.quasi_identifiers)
    for column, hierarchy in hierarchies.items():
        if not isinstance(hierarchy, Hierarchy) or marker in hierarchy.values():
            continue
        if (data[column].astype(str) == marker).any():
            row = (marker,) * (hierarchy.height - 1) + (hierarchy.rows[0][-1],)
            hierarchies[column] = Hierarchy((*hierarchy.rows, row), hierarchy.source)
    return replace(config, quasi_identifiers=hierarchies)
