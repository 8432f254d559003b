"""The policy file's sections (use case, schema roles, privacy requirements, objectives, collection, preparation,
training, evaluation, release, monitoring, serving): one pydantic model each.

:mod:`ppml.policy` assembles them into the :class:`~ppml.policy.Policy` and loads, hashes and checks it; import
these names from there (``from ppml.policy import IdentifierAction``).
"""

from __future__ import annotations

import math
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ppml.federated.settings import FederationSettings
from ppml.special_categories import SpecialCategoryBasis


class Regulation(StrEnum):
    GDPR = "GDPR"
    HIPAA = "HIPAA"


class LawfulBasis(StrEnum):
    """GDPR Art. 6(1) bases plus the HIPAA permissions relevant to de-identified secondary use."""

    CONSENT = "consent"
    CONTRACT = "contract"
    LEGAL_OBLIGATION = "legal_obligation"
    VITAL_INTERESTS = "vital_interests"
    PUBLIC_TASK = "public_task"
    LEGITIMATE_INTERESTS = "legitimate_interests"
    HIPAA_DEIDENTIFIED = "hipaa_deidentified_data"
    HIPAA_AUTHORIZATION = "hipaa_authorization"
    HIPAA_RESEARCH_WAIVER = "hipaa_research_waiver"


class IdentifierAction(StrEnum):
    """What de-identification does with a direct identifier column."""

    DROP = "drop"
    PSEUDONYMIZE = "pseudonymize"  # keyed HMAC-SHA256, key from an environment variable
    MASK = "mask"  # keep a non-identifying shape, e.g. the e-mail domain or the last two digits
    ZIP3 = "zip3"  # HIPAA Safe Harbor: first three digits, restricted low-population prefixes -> 000
    YEAR = "year"  # HIPAA Safe Harbor: dates reduced to the year


class Strict(BaseModel):
    """Unknown keys are errors (a typo in a privacy setting must never be silently ignored); numbers are finite."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class DatasetIdentity(Strict):
    """Who the people are: the identity the lifetime privacy ledger and the pseudonym keys are keyed by.

    Two policies over the same people (e.g. a GDPR and a HIPAA variant, or a renamed policy) declare the same
    ``id`` and so share one lifetime budget; only a new ``id`` starts a new account.
    """

    id: str = Field(
        pattern=r"^[a-z0-9][a-z0-9._-]{2,127}$",
        description="Stable identity of the people in the data, e.g. 'adult-census-1994' (lower case).",
    )
    subject_namespace: str = Field(
        min_length=1,
        max_length=200,
        description="The namespace the subject ids live in, e.g. the source system that issues them.",
    )


class UseCase(Strict):
    purpose: str = Field(min_length=10, description="Why the data is processed (GDPR Art. 5(1)(b)).")
    regulation: Regulation
    lawful_basis: LawfulBasis
    data_subjects: str = Field(min_length=3, description="Whose personal data this is.")
    retention_days: int = Field(gt=0, le=36500, description="How long raw records may be kept.")
    controller: str = Field(default="", description="The organisation responsible for the processing.")
    dpo: str = Field(default="", description="Contact of the data protection officer (GDPR Art. 30(1)(a)).")
    recipients: list[str] = Field(
        default_factory=list, description="Who receives the data or the model's outputs (GDPR Art. 30(1)(d))."
    )
    transfers: list[str] = Field(
        default_factory=list,
        description="Transfers to third countries with their safeguards (GDPR Art. 30(1)(e)); empty: none.",
    )
    special_category_basis: SpecialCategoryBasis | None = Field(
        default=None,
        description="The GDPR Art. 9(2) condition; required when a special-category column (race, health ...) is used.",
    )


class QuasiIdentifier(Strict):
    """A quasi-identifier and the generalization hierarchy used to coarsen it.

    ``hierarchy`` is an ARX-format CSV, relative to the policy file; ``hierarchy_spec`` builds one from a short
    spec (interval widths, date granularity or ZIP prefixes) instead.
    """

    hierarchy: Path | None = None
    hierarchy_spec: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _one_source(self) -> QuasiIdentifier:
        if (self.hierarchy is None) == (self.hierarchy_spec is None):
            raise ValueError(
                "both or neither of hierarchy/hierarchy_spec given; "
                "fix: give exactly one of 'hierarchy' (a CSV path) or 'hierarchy_spec'"
            )
        return self


class Label(Strict):
    """The label: binary (``positive_value`` against every other value) or multi-class (no ``positive_value``;
    the classes are ``schema.label_values``, in that order)."""

    column: str
    positive_value: str | None = Field(
        default=None,
        description="The raw label value that counts as the positive class; omit it for a multi-class label.",
    )


class SchemaRoles(Strict):
    subject_id: str = Field(description="The column identifying the data subject (used for erasure requests).")
    event_date: str = Field(description="The column holding the record's event date (YYYY-MM-DD).")
    direct_identifiers: dict[str, IdentifierAction] = Field(min_length=1)
    quasi_identifiers: dict[str, QuasiIdentifier] = Field(min_length=1)
    sensitive_attributes: list[str] = Field(default_factory=list)
    protected_attributes: list[str] = Field(
        default_factory=list, description="Groups for disaggregated utility (fairness) reporting."
    )
    label: Label
    features: list[str] = Field(min_length=1, description="Candidate model features (before risk selection).")
    numeric_columns: list[str] = Field(default_factory=list, description="Columns parsed as integers.")
    value_ranges: dict[str, tuple[float, float]] = Field(
        default_factory=dict, description="Plausible [min, max] per numeric column, checked at collection."
    )
    label_values: list[str] = Field(default_factory=list, description="All allowed raw label values.")
    missing_value_marker: str = Field(
        default="?", description="How the source marks a missing value; it generalizes to '*' like any other value."
    )
    numeric_missing: dict[str, Literal["drop", "category"] | int] = Field(
        default_factory=dict,
        description="Per numeric column, what an empty cell means: 'drop' the record, 'category' (kept as missing, "
        "released as its own 'Unknown' bin next to the value bins), or a public imputation value.",
    )

    @field_validator("numeric_missing", mode="before")
    @classmethod
    def _drop_or_whole_number(cls, value: Any) -> Any:
        for column, rule in (value or {}).items() if isinstance(value, dict) else []:
            if rule not in ("drop", "category") and (isinstance(rule, bool) or not isinstance(rule, int)):
                raise ValueError(
                    f"numeric_missing for '{column}' is {rule!r}; fix: write drop, category, or a whole number to "
                    "impute (a public value, never one computed from the data)"
                )
        return value

    def missing_category_columns(self) -> list[str]:
        """Numeric columns whose empty cells stay missing (``numeric_missing: category``)."""
        return [column for column, rule in self.numeric_missing.items() if rule == "category"]

    @property
    def is_multiclass(self) -> bool:
        """A label without ``positive_value`` is multi-class over ``label_values``."""
        return self.label.positive_value is None

    def label_classes(self) -> list[str]:
        """The class names, index = encoded label: ``[not <positive>, <positive>]`` or ``label_values``."""
        if self.label.positive_value is None:
            return list(self.label_values)
        return [f"not {self.label.positive_value}", self.label.positive_value]

    def encode_label(self, raw: Any) -> Any:
        """Raw label values (a pandas Series, already stripped) as class indices; -1 for a value of no class."""
        if self.label.positive_value is not None:
            return (raw == self.label.positive_value).astype("int64")
        index = {value.strip().rstrip("."): position for position, value in enumerate(self.label_values)}
        return raw.map(index).fillna(-1).astype("int64")

    def _label_is_consistent(self) -> None:
        positive = self.label.positive_value
        if positive is None and len(self.label_values) < 3:
            raise ValueError(
                f"label '{self.label.column}' has no positive_value, so it is multi-class, but label_values lists "
                f"{len(self.label_values)} value(s); fix: list every class in schema.label_values (at least 3), "
                "or give label.positive_value for a binary label"
            )
        if positive is not None and self.label_values and positive not in self.label_values:
            raise ValueError(f"positive_value '{positive}' is not a label value; fix: add it to label_values")

    def columns_by_role(self) -> dict[str, list[str]]:
        """Every column the policy names, by the policy field that names it (in collection order)."""
        return {
            "schema.subject_id": [self.subject_id],
            "schema.event_date": [self.event_date],
            "schema.direct_identifiers": list(self.direct_identifiers),
            "schema.quasi_identifiers": list(self.quasi_identifiers),
            "schema.sensitive_attributes": list(self.sensitive_attributes),
            "schema.features": list(self.features),
            "schema.label": [self.label.column],
        }

    @field_validator("features", "numeric_columns", "sensitive_attributes", "protected_attributes", "label_values")
    @classmethod
    def _listed_once(cls, values: list[str]) -> list[str]:
        repeated = sorted({value for value in values if values.count(value) > 1})
        if repeated:
            raise ValueError(f"{repeated} listed more than once; fix: list each column or value once")
        return values

    @model_validator(mode="after")
    def _roles_are_consistent(self) -> SchemaRoles:
        generalized = {IdentifierAction.ZIP3, IdentifierAction.YEAR}
        direct = set(self.direct_identifiers)
        for column in self.features:
            kept_generalized = self.direct_identifiers.get(column) in generalized and column in self.quasi_identifiers
            if column in direct and not kept_generalized:
                raise ValueError(f"feature '{column}' is a direct identifier; fix: remove it from schema.features")
        if self.label.column in self.features:
            raise ValueError(f"the label '{self.label.column}' is also a feature; fix: remove it from schema.features")
        if self.subject_id not in direct:
            raise ValueError(
                f"subject_id '{self.subject_id}' is not a direct identifier; fix: list it in direct_identifiers"
            )
        for column in self.numeric_missing:
            if column not in self.numeric_columns:
                raise ValueError(
                    f"numeric_missing names '{column}', which is not numeric; fix: add it to numeric_columns"
                )
        for column in self.missing_category_columns():
            if column in self.quasi_identifiers or column == self.label.column:
                role = "the label" if column == self.label.column else "a quasi-identifier"
                raise ValueError(
                    f"numeric_missing is category for '{column}', which is {role}; fix: use drop or a public "
                    "imputation value there (its generalization hierarchy or classes have no missing category)"
                )
        for column, (low, high) in self.value_ranges.items():
            if column not in self.numeric_columns:
                raise ValueError(f"value_ranges names '{column}', which is not numeric; fix: add it to numeric_columns")
            if low > high:
                raise ValueError(f"value_ranges for '{column}' has min {low} above max {high}; fix: swap them")
        self._label_is_consistent()
        overlap = {c for c in direct & set(self.quasi_identifiers) if self.direct_identifiers[c] not in generalized}
        if overlap:
            raise ValueError(
                f"columns {sorted(overlap)} are both direct and quasi-identifiers; fix: a direct identifier can "
                "also be a quasi-identifier only when its action keeps a generalized value (zip3 or year)"
            )
        return self


class LDiversity(Strict):
    attribute: str
    l: float = Field(ge=2)  # noqa: E741 - the model's own name
    variant: Literal["distinct", "entropy", "recursive"] = "distinct"
    c: float | None = Field(default=None, gt=0, description="Only for recursive (c,l)-diversity.")

    @model_validator(mode="after")
    def _c_for_recursive(self) -> LDiversity:
        if self.variant == "recursive" and self.c is None:
            raise ValueError("recursive (c,l)-diversity without c; fix: add c, e.g. c: 2")
        return self


class TCloseness(Strict):
    attribute: str
    t: float = Field(gt=0, le=1)
    variant: Literal["equal", "hierarchical"] = "equal"
    hierarchy: Path | None = None


class PrivacyRequirements(Strict):
    k: int = Field(ge=2, description="k-anonymity: every equivalence class holds at least k records.")
    l_diversity: list[LDiversity] = Field(default_factory=list)
    t_closeness: list[TCloseness] = Field(default_factory=list)
    suppression_limit: float = Field(ge=0, le=0.5, description="Largest share of records that may be removed.")
    epsilon: float = Field(gt=0, le=100, description="Target epsilon of one DP training run.")
    delta: Annotated[float, Field(gt=0, lt=1e-2)] | Literal["auto"] = Field(
        description="Target delta; must also be < 1/n at training time. 'auto' derives it from n (auto_delta)."
    )
    lifetime_epsilon_budget: float = Field(gt=0, description="Total epsilon any data subject may be exposed to.")
    max_reidentification_risk: float = Field(gt=0, le=1, description="Highest prosecutor risk allowed (<= 1/k).")
    max_membership_inference_auc: float = Field(ge=0.5, le=1)
    max_membership_inference_tpr_at_low_fpr: float = Field(default=0.05, gt=0, lt=1)
    low_fpr: float = Field(default=0.01, gt=0, lt=1, description="FPR at which the attack TPR is limited.")
    dp_statistics_epsilon: float = Field(default=0.5, gt=0, description="Epsilon of the OpenDP summary release.")
    keep_previous_generalization_within: float = Field(
        default=0.1,
        ge=0,
        le=1,
        description="A retrain keeps the previous release's generalization while it still satisfies k, l, t and the "
        "suppression limit on the new window and loses at most this fraction more information than the new optimum "
        "(stable features week to week; 0: only on a tie).",
    )
    privacy_unit: Literal["record", "subject"] = Field(
        default="record",
        description="Whom epsilon protects: one record, or one data subject with all their records (user-level "
        "DP-SGD, contribution bounding and per-subject accounting; docs/training.md).",
    )
    max_records_per_subject: int = Field(
        default=1, ge=1, description="privacy_unit subject: at most this many records per subject per window (c)."
    )
    min_eligible_subjects: int = Field(
        default=100,
        ge=1,
        description="privacy_unit subject: a run is refused when fewer subjects than this still have budget.",
    )
    contribution_seed: int = Field(
        default=0, ge=0, description="Seeds which records a subject keeps when it has more than c (reproducible)."
    )
    record_accounting: Literal["dataset", "window"] = Field(
        default="dataset",
        description="privacy_unit record: 'dataset' composes every run on the data set for everyone; 'window' keeps "
        "the budget per daily partition (a record lies in one day, so it is charged only by the runs whose window "
        "held that day; docs/training.md).",
    )

    @field_validator("delta", mode="before")
    @classmethod
    def _number_or_auto(cls, value: Any) -> Any:
        if isinstance(value, str) and value != "auto":
            raise ValueError(f"{value!r} is neither a number nor 'auto'; fix: write e.g. 1.0e-6, or auto")
        return value

    @model_validator(mode="after")
    def _window_accounting_is_per_record(self) -> PrivacyRequirements:
        if self.record_accounting == "window" and self.privacy_unit != "record":
            raise ValueError(
                "record_accounting 'window' applies to privacy_unit 'record' only (the subject unit keeps "
                "per-subject accounts); fix: remove record_accounting or set privacy_unit: record"
            )
        return self

    def delta_for(self, n_records: int) -> float:
        """The delta of a training run on ``n_records`` records: the policy's value, or the auto rule."""
        return auto_delta(n_records) if self.delta == "auto" else float(self.delta)

    @model_validator(mode="after")
    def _budget_covers_one_run(self) -> PrivacyRequirements:
        if self.lifetime_epsilon_budget < self.epsilon:
            raise ValueError(
                f"lifetime_epsilon_budget {self.lifetime_epsilon_budget} is below one run's epsilon {self.epsilon}; "
                "fix: raise the lifetime budget or lower epsilon"
            )
        return self


#: The smallest margin over the trivial predictor the gate accepts (a policy can only ask for more).
TRIVIAL_MARGIN_FLOOR = 0.02

#: The largest delta ``delta: auto`` ever picks (the customary ceiling for data sets of up to ~10,000 records).
AUTO_DELTA_CEILING = 1e-5


def auto_delta(n_records: int) -> float:
    """``delta: auto``: min(1e-5, 1/(10 n)) rounded down to a power of ten, so always below 1/(10 n) < 1/n.

    A power of ten keeps delta constant while n grows within a decade, so the ledger's lifetime delta does not
    move with every new day of data.
    """
    if n_records < 1:
        return AUTO_DELTA_CEILING
    return min(AUTO_DELTA_CEILING, 10.0 ** math.floor(math.log10(1.0 / (10 * n_records))))


class PerformanceObjectives(Strict):
    min_accuracy: float = Field(ge=0, le=1)
    min_roc_auc: float = Field(ge=0.5, le=1)
    max_utility_gap: float = Field(
        default=0.05, ge=0, le=1, description="Largest accuracy loss allowed versus the tuned non-private baseline."
    )
    min_margin_over_trivial: float = Field(
        default=TRIVIAL_MARGIN_FLOOR,
        ge=TRIVIAL_MARGIN_FLOOR,
        lt=0.5,
        description="The 95% CI lower bounds of balanced accuracy and ROC AUC must reach the trivial predictor's "
        "level (0.5; 1/K balanced accuracy for K classes) plus this margin; built into the gate, a policy may "
        "raise it, never lower it.",
    )
    max_group_error_rate_gap: float = Field(
        default=0.35,
        ge=0,
        le=1,
        description="Largest gap in false-positive or false-negative rate between groups of a protected "
        "attribute (equalized-odds difference; groups with at least 30 negatives / positives).",
    )


class Collection(Strict):
    training_window_days: int = Field(ge=1, le=3660, description="Daily partitions one training run uses.")
    erasure_list: Path | None = Field(
        default=None, description="CSV of subject ids that objected or asked for erasure (GDPR Art. 17, 21)."
    )
    duplicate_subject_ids: Literal["refuse", "keep_first", "allow"] = Field(
        default="refuse",
        description="A subject id seen twice in one partition: refuse it, keep its first record, or allow it "
        "(data sets with several records per person).",
    )
    erasure_action: Literal["retire", "keep"] = Field(
        default="retire",
        description="What happens to registered model versions trained on a subject who later asked for erasure: "
        "retire (tagged retired, production alias moved away, the next run retrains without them) or keep (tagged, "
        "with the per-person epsilon bound stated in the report).",
    )
    raw_copy: Literal["delete", "encrypt"] = Field(
        default="delete",
        description="What happens to a partition's raw copy once its de-identification passed its check: deleted, "
        "or kept encrypted under a key derived from PPML_HMAC_KEY; either way purged after use_case.retention_days.",
    )


class PreparationSettings(Strict):
    max_share_below_k: float = Field(
        default=0.05, ge=0, le=1, description="Largest share of records a feature may put in groups smaller than k."
    )
    numeric_bins: list[Annotated[int, Field(ge=2)]] = Field(
        default_factory=lambda: [10, 5, 3, 2], description="Quantile bin counts tried, finest first."
    )
    train_percent: int = Field(default=70, ge=10, le=90)
    validation_percent: int = Field(default=15, ge=5, le=45)

    @model_validator(mode="after")
    def _leaves_a_test_split(self) -> PreparationSettings:
        if self.train_percent + self.validation_percent >= 100:
            raise ValueError("train_percent + validation_percent leave no test split; fix: keep their sum below 100")
        return self


class TrainingSettings(Strict):
    candidates: Literal["auto", "listed"] = Field(
        default="auto",
        description="auto: candidates derived from n, d and epsilon (docs/training.md); listed: one per "
        "candidate_learning_rates entry with model, hidden_sizes, epochs and batch_size as given.",
    )
    selection_metric: Literal["accuracy", "auc", "balanced_accuracy"] = "accuracy"
    model: Literal["logistic", "mlp"] = "mlp"
    hidden_sizes: list[Annotated[int, Field(gt=0)]] = Field(default_factory=lambda: [64])
    candidate_learning_rates: list[Annotated[float, Field(gt=0)]] = Field(default_factory=lambda: [0.05])
    epochs: int = Field(default=5, ge=1, le=1000)
    batch_size: int = Field(default=512, ge=1)
    max_grad_norm: float = Field(default=1.0, gt=0)
    accountant: Literal["prv", "rdp"] = "prv"
    train_non_private_baseline: bool = True
    seed: int = 0
    mode: Literal["central", "federated"] = Field(
        default="central", description="central: one pooled training set; federated: sites train on Flower."
    )
    federation: FederationSettings | None = Field(default=None, description="Sites and rounds (mode: federated).")

    @model_validator(mode="after")
    def _federation_matches_mode(self) -> TrainingSettings:
        if self.mode == "federated" and self.federation is None:
            raise ValueError("mode is federated but there is no federation section; fix: add training.federation")
        if self.mode == "central" and self.federation is not None:
            raise ValueError("a federation section needs mode: federated; fix: set training.mode: federated")
        return self


class EvaluationSettings(Strict):
    reference_models: int = Field(default=2, ge=0, le=64, description="LiRA reference models (0 = skip LiRA).")
    audit_canaries: int = Field(default=0, ge=0, description="Canaries of the one-run epsilon audit (0 = skip).")
    gradient_canaries: int = Field(
        default=0,
        ge=0,
        le=100_000,
        description="Gradient canaries of the white-box one-run audit (0 = skip; capped at the model's parameters).",
    )


class ReleaseAction(StrEnum):
    """What the release-safety step does with a released column that is not a quasi-identifier."""

    GENERALIZE = "generalize"  # becomes a quasi-identifier with an automatic hierarchy
    BIN = "bin"  # quantile bins (never the exact value), then a quasi-identifier
    DROP = "drop"
    KEEP = "keep"  # released unchanged: the policy states an attacker cannot know it
    REFUSE = "refuse"  # stop the release if any handle test flags it


class ReleaseSettings(Strict):
    """Release safety: each released non-QI column is tested as a re-identification handle (docs/anonymization.md)."""

    default_action: ReleaseAction = Field(
        default=ReleaseAction.REFUSE, description="Action for released columns not listed in 'columns'."
    )
    max_uniqueness: float = Field(
        default=0.01, ge=0, le=1, description="Largest share of records a column may hold a unique value for."
    )
    dependence_threshold: float = Field(
        default=0.9, gt=0, le=1, description="A column restoring this share of a QI's generalized detail is a handle."
    )
    bins: int = Field(default=10, ge=2, le=1000, description="Quantile bins of the 'bin' action (finest level).")
    columns: dict[str, ReleaseAction] = Field(default_factory=dict, description="Column -> action.")

    @model_validator(mode="after")
    def _keep_is_explicit(self) -> ReleaseSettings:
        if self.default_action is ReleaseAction.KEEP:
            raise ValueError(
                "default_action keep would release every unlisted column unchecked; fix: use generalize, bin, drop "
                "or refuse, and list the columns an attacker cannot know under release.columns as keep"
            )
        return self

    def action_for(self, column: str, sensitive: bool = False) -> ReleaseAction:
        """The action the release applies to ``column`` (sensitive attributes are kept unless listed)."""
        if column in self.columns:
            return self.columns[column]
        return ReleaseAction.KEEP if sensitive else self.default_action


class Monitoring(Strict):
    """Training-data drift, and the served model's monitoring over the prediction log (docs/serving.md)."""

    drift_psi_threshold: float = Field(default=0.2, gt=0, description="Input drift: PSI per feature above it.")
    retrain_cron: str = Field(default="0 3 * * 1", min_length=9)
    prediction_psi_threshold: float = Field(default=0.2, gt=0, description="Served vs evaluation score PSI.")
    serving_window_days: float = Field(default=7.0, gt=0, le=366, description="Log rows monitored: the last days.")
    min_serving_rows: int = Field(default=500, ge=1, description="Predictions needed before drift is judged.")
    min_feedback_rows: int = Field(default=200, ge=1, description="Labels needed before accuracy is judged.")
    min_group_rows: int = Field(default=20, ge=1, description="Smaller groups are suppressed, never shown.")
    max_model_age_days: float = Field(default=14.0, gt=0, description="Retrain when the served version is older.")


class ServingSettings(Strict):
    """``ppml serve``: what a client may ask and learn (docs/serving.md); the defaults are the safe end."""

    output: Literal["label", "probability"] = Field(
        default="label", description="label only, or the probability rounded to probability_decimals."
    )
    probability_decimals: int = Field(default=1, ge=0, le=4)
    queries_per_client: int = Field(default=10_000, ge=1, description="Rows one API key may score, ever.")
    requests_per_minute: int = Field(default=60, ge=1, description="Requests one API key may send per minute.")
    max_batch_rows: int = Field(default=100, ge=1, le=10_000)
    identifiers: Literal["refuse", "drop"] = Field(
        default="refuse", description="A request carrying a direct identifier: refused (4xx) or the field dropped."
    )
    poll_seconds: float = Field(default=30.0, gt=0, le=3600, description="How often the registry alias is read.")
