"""Lifecycle step 1: the policy file — objectives and privacy requirements as validated, versioned code.

A policy is the contract an auditor signs: why the data is processed (purpose, regulation, lawful basis), what
each column is (schema roles), which privacy guarantees must hold (k, l, t, suppression, epsilon, delta, budgets,
risk limits) and which performance the model must reach. Every later stage reads its settings from here, and
the policy's content hash travels with every artefact so that evidence can be tied to the exact policy text.

pydantic validates the YAML because it gives typed, documented models with precise error locations; every
validation error is turned into one line naming the file, the field and the fix.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ppml.errors import PPMLError, PPMLErrors
from ppml.policy_sections import (  # the sections, re-exported: callers import them from here
    AUTO_DELTA_CEILING,
    TRIVIAL_MARGIN_FLOOR,
    Collection,
    DatasetIdentity,
    EvaluationSettings,
    IdentifierAction,
    Label,
    LawfulBasis,
    LDiversity,
    Monitoring,
    PerformanceObjectives,
    PreparationSettings,
    PrivacyRequirements,
    QuasiIdentifier,
    Regulation,
    ReleaseAction,
    ReleaseSettings,
    SchemaRoles,
    ServingSettings,
    Strict,
    TCloseness,
    TrainingSettings,
    UseCase,
    auto_delta,
)
from ppml.special_categories import special_category_columns
from ppml.strict_yaml import load_strict_yaml

#: The data shipped inside the ppml package (generic hierarchies, the bundled data set): always readable.
BUNDLED_DATA_DIR = Path(__file__).resolve().parent / "data"

POLICY_SCHEMA_VERSION = 1


class Policy(Strict):
    """A validated privacy policy. Construct it with :func:`load_policy`."""

    policy_version: Literal[1] = POLICY_SCHEMA_VERSION
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{2,63}$")
    dataset: DatasetIdentity
    use_case: UseCase
    schema_: SchemaRoles = Field(alias="schema")
    collection: Collection
    privacy: PrivacyRequirements
    objectives: PerformanceObjectives
    preparation: PreparationSettings = Field(default_factory=PreparationSettings)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    evaluation: EvaluationSettings = Field(default_factory=EvaluationSettings)
    monitoring: Monitoring = Field(default_factory=Monitoring)
    release: ReleaseSettings = Field(default_factory=ReleaseSettings)
    serving: ServingSettings = Field(default_factory=ServingSettings)
    files_root: Path = Field(
        default=Path("."),
        description="Folder (relative to the policy file) that every file the policy names must lie in.",
    )
    allow_absolute_paths: bool = Field(default=False, description="Allow absolute paths anywhere on the machine.")

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, allow_inf_nan=False)

    @field_validator("files_root")
    @classmethod
    def _relative_root(cls, value: Path) -> Path:
        if value.is_absolute():
            raise ValueError("files_root must be relative to the policy file; fix: write e.g. '.' or '..'")
        return value

    @field_validator("name")
    @classmethod
    def _lower(cls, value: str) -> str:
        return value.lower()

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Policy:
        roles = self.schema_
        known = set(roles.features) | set(roles.quasi_identifiers) | {roles.label.column}
        for attribute in [*roles.sensitive_attributes, *roles.protected_attributes]:
            if attribute not in known:
                raise ValueError(f"'{attribute}' is not a feature or quasi-identifier; fix: add it to schema.features")
        for model in [*self.privacy.l_diversity, *self.privacy.t_closeness]:
            if model.attribute not in roles.sensitive_attributes:
                raise ValueError(f"'{model.attribute}' is not sensitive; fix: list it in schema.sensitive_attributes")
        roles_named = {*roles.quasi_identifiers, *roles.direct_identifiers, roles.subject_id, roles.event_date}
        for column in self.release.columns:
            if column in roles_named:
                raise ValueError(
                    f"release.columns names '{column}', a quasi-identifier, direct identifier, subject id or event "
                    "date; fix: remove it (those are generalized or de-identified by their own stage)"
                )
        self._special_categories_have_a_basis()
        if self.privacy.max_reidentification_risk + 1e-12 < 1 / self.privacy.k:
            # k-anonymity alone guarantees prosecutor risk <= 1/k; a stricter limit needs a larger k.
            raise ValueError(
                f"max_reidentification_risk {self.privacy.max_reidentification_risk} is below 1/k = "
                f"{1 / self.privacy.k:.4f}; fix: raise k to at least "
                f"{math.ceil(1 / self.privacy.max_reidentification_risk - 1e-9)} or relax the limit"
            )
        return self

    def special_category_columns(self) -> dict[str, str]:
        """Columns the model uses (features, quasi-identifiers, sensitive attributes, label) that hold an
        Art. 9(1) special category, by name."""
        roles = self.schema_
        used = [*roles.features, *roles.quasi_identifiers, *roles.sensitive_attributes, roles.label.column]
        return special_category_columns(list(dict.fromkeys(used)))

    def _special_categories_have_a_basis(self) -> None:
        if self.use_case.regulation is not Regulation.GDPR or self.use_case.special_category_basis is not None:
            return
        found = self.special_category_columns()
        if found:
            listed = ", ".join(f"{column} ({category})" for column, category in found.items())
            raise ValueError(
                f"special-category data is used ({listed}) but use_case.special_category_basis is not set; fix: "
                "state the GDPR Art. 9(2) condition (e.g. explicit_consent, archiving_research_statistics) or "
                "remove those columns"
            )


class LoadedPolicy(BaseModel):
    """A policy together with where it came from and the hash of its canonical content."""

    model_config = ConfigDict(frozen=True, arbitrary_types_allowed=True)

    policy: Policy
    path: Path
    content_hash: str

    def resolve(self, relative: Path) -> Path:
        """Resolve a path written in the policy relative to the policy file's folder."""
        return relative if relative.is_absolute() else (self.path.parent / relative).resolve()

    def named_files(self) -> dict[str, Path]:
        """Every file the policy names, by the field that names it (resolved, symlinks followed)."""
        return {field: self.resolve(written) for field, written in _written_paths(self.policy).items()}

    def hierarchy_paths(self) -> dict[str, Path]:
        return {
            column: self.resolve(qi.hierarchy)
            for column, qi in self.policy.schema_.quasi_identifiers.items()
            if qi.hierarchy is not None
        }


_FIXES = {
    "missing": "add the field",
    "extra_forbidden": "remove it or fix its spelling (see docs/policy.md for the allowed fields)",
    "enum": "use one of the allowed values",
    "literal_error": "use one of the allowed values",
    "finite_number": "write a finite number (.inf and .nan are not allowed)",
    "int_from_float": "write a whole number",
}


#: Location parts pydantic adds for validators and union members (``delta: float | 'auto'``), not field names.
_TAG_PREFIXES = ("function-", "constrained-", "literal[")
_TAG_NAMES = {"float", "int", "str", "bool"}


def _field_path(location: tuple[Any, ...]) -> str:
    parts = [str(p) for p in location if not (isinstance(p, str) and (p.startswith(_TAG_PREFIXES) or p in _TAG_NAMES))]
    return ".".join("schema" if p == "schema_" else p for p in parts) or "(document)"


def _describe(error: dict[str, Any]) -> str:
    kind = error["type"]
    message = error["msg"].removeprefix("Value error, ")
    if "fix:" in message:
        return message
    fix = _FIXES.get(kind)
    if fix is None:
        if kind.endswith("_type") or kind.endswith("_parsing"):
            fix = "write a value of the expected type"
        else:
            fix = "change the value so that it satisfies the rule stated here"
    return f"{message}; fix: {fix}"


def policy_content_hash(document: dict[str, Any]) -> str:
    """SHA-256 of the policy's canonical JSON, so formatting or comment changes do not change the version."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def named_files_hash(files: dict[str, Path]) -> str:
    """SHA-256 over the bytes of every file a policy names (by field), so editing a hierarchy or the erasure list
    changes the policy version. A file that does not exist (``check_files=False``) is hashed as absent."""
    digest = hashlib.sha256()
    for field_name, path in sorted(files.items()):
        content = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "absent"
        digest.update(f"{field_name}\x1f{content}\x1e".encode())
    return digest.hexdigest()


def versioned_content_hash(document: dict[str, Any], loaded: LoadedPolicy) -> str:
    """The policy version: its canonical content plus the content of every file it names."""
    files = loaded.named_files()
    if not files:
        return policy_content_hash(document)
    return policy_content_hash({"policy": document, "files": named_files_hash(files)})


def parse_policy(document: Any, source: str) -> Policy:
    """Validate a parsed policy document; every problem at once (PPMLErrors, one line each), so a user fixes a
    draft in one pass rather than one error per run."""
    if not isinstance(document, dict):
        raise PPMLError(f"{source}: field '(document)': the policy must be a YAML mapping; fix: see policies/")
    try:
        return Policy.model_validate(document)
    except ValidationError as exc:
        first_per_field: dict[str, dict[str, Any]] = {}
        for error in exc.errors():  # a union field fails once per member: its first (most specific) reason
            first_per_field.setdefault(_field_path(error["loc"]), error)
        lines = [f"{source}: field '{field}': {_describe(error)}" for field, error in first_per_field.items()]
        raise (PPMLErrors(lines) if len(lines) > 1 else PPMLError(lines[0])) from None


def load_policy(path: str | Path, *, check_files: bool = True) -> LoadedPolicy:
    """Read, validate and hash a policy YAML file.

    With ``check_files`` the hierarchy and erasure-list files the policy names must exist, so a typo fails at
    validation time rather than halfway through a run.
    """
    policy_path = Path(path).resolve()
    source = str(path)
    if not policy_path.is_file():
        raise PPMLError(f"{source}: field '(file)': policy file not found; fix: pass an existing YAML file")
    document = load_strict_yaml(policy_path, source)
    policy = parse_policy(document, source)
    loaded = LoadedPolicy(policy=policy, path=policy_path, content_hash="")
    check_paths_confined(loaded, source)  # before hashing: a file outside the allowed tree is never read
    loaded = loaded.model_copy(update={"content_hash": versioned_content_hash(document, loaded)})
    if check_files:
        check_named_files(loaded, source)
    return loaded


def check_paths_confined(loaded: LoadedPolicy, source: str) -> None:
    """Files a policy names lie under its ``files_root`` (or the bundled data), unless absolute paths are allowed.

    A policy is often written by someone other than the operator who runs it: without this, a policy could make
    the pipeline read any file the operator can read (``erasure_list: /etc/shadow``).
    """
    policy = loaded.policy
    root = (loaded.path.parent / policy.files_root).resolve()
    for field, written in _written_paths(policy).items():
        if written.is_absolute() and policy.allow_absolute_paths:
            continue
        resolved = loaded.resolve(written)
        if resolved.is_relative_to(root) or resolved.is_relative_to(BUNDLED_DATA_DIR):
            continue
        if written.is_absolute():
            problem, fix = f"absolute path {written} is not allowed", "give a path relative to the policy file"
        else:
            problem, fix = f"{written} resolves to {resolved}, outside {root}", f"move the file under {root}"
        raise PPMLError(
            f"{source}: field '{field}': {problem}; fix: {fix}, or set files_root (or allow_absolute_paths: true)"
        )


def _written_paths(policy: Policy) -> dict[str, Path]:
    paths = {
        f"schema.quasi_identifiers.{column}.hierarchy": qi.hierarchy
        for column, qi in policy.schema_.quasi_identifiers.items()
        if qi.hierarchy is not None
    }
    for index, model in enumerate(policy.privacy.t_closeness):
        if model.hierarchy is not None:
            paths[f"privacy.t_closeness.{index}.hierarchy"] = model.hierarchy
    if policy.collection.erasure_list is not None:
        paths["collection.erasure_list"] = policy.collection.erasure_list
    return paths


def check_named_files(loaded: LoadedPolicy, source: str) -> None:
    """Every named file exists, every hierarchy (file or spec) is a valid tree — at validation, not mid-run."""
    from ppml.anonymization.hierarchy import Hierarchy, HierarchySpec  # lazy: both import this module
    from ppml.collection import read_erasure_list

    for field, file in loaded.named_files().items():
        if not file.is_file():
            raise PPMLError(
                f"{source}: field '{field}': file {file} not found; "
                "fix: give an existing file's path relative to the policy file (or remove an optional field)"
            )
        try:
            if field.endswith(".hierarchy"):
                Hierarchy.from_csv(file)
            else:
                read_erasure_list(file)
        except PPMLError as error:
            raise PPMLError(f"{source}: field '{field}': {error}") from None
    for column, qi in loaded.policy.schema_.quasi_identifiers.items():
        if qi.hierarchy_spec is not None:
            HierarchySpec(dict(qi.hierarchy_spec), f"{source}: schema.quasi_identifiers.{column}.hierarchy_spec")


def check_columns_exist(policy: Policy, columns: set[str], source: str) -> None:
    """Fail when the policy names a column the data does not have (a common copy-paste error)."""
    for field, names in policy.schema_.columns_by_role().items():
        for name in names:
            if name not in columns:
                raise PPMLError(
                    f"{source}: field '{field}': unknown column '{name}' (data has {sorted(columns)}); "
                    "fix: correct the column name in the policy"
                )


def bundled_policy_path(name: str = "adult_gdpr") -> Path:
    """The policies shipped with ppml (used by `ppml demo` and as templates)."""
    return Path(__file__).resolve().parent.parent / "policies" / f"{name}.yaml"


__all__ = [
    "AUTO_DELTA_CEILING",
    "BUNDLED_DATA_DIR",
    "POLICY_SCHEMA_VERSION",
    "TRIVIAL_MARGIN_FLOOR",
    "Collection",
    "DatasetIdentity",
    "EvaluationSettings",
    "IdentifierAction",
    "LDiversity",
    "Label",
    "LawfulBasis",
    "LoadedPolicy",
    "Monitoring",
    "PerformanceObjectives",
    "Policy",
    "PreparationSettings",
    "PrivacyRequirements",
    "QuasiIdentifier",
    "Regulation",
    "ReleaseAction",
    "ReleaseSettings",
    "SchemaRoles",
    "ServingSettings",
    "Strict",
    "TCloseness",
    "TrainingSettings",
    "UseCase",
    "auto_delta",
    "bundled_policy_path",
    "check_columns_exist",
    "check_named_files",
    "check_paths_confined",
    "load_policy",
    "named_files_hash",
    "parse_policy",
    "policy_content_hash",
    "versioned_content_hash",
]
