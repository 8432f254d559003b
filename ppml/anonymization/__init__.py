"""Anonymization engine: optimal full-domain generalization with record suppression (ARX-compatible).

Plain module, no Dagster: the CLI (``ppml anonymize``) and the ``anonymized_records`` asset call the same
:func:`anonymize`. See docs/anonymization.md for the algorithm, the models and the benchmark against ARX.
"""

from ppml.anonymization._kernels import warm_up
from ppml.anonymization.engine import AnonymizationConfig, AnonymizationResult, anonymize
from ppml.anonymization.hierarchy import Hierarchy, HierarchySpec
from ppml.anonymization.models import KAnonymity, LDiversity, TCloseness
from ppml.anonymization.policy_config import config_from_policy
from ppml.anonymization.risk import RiskProfile, risk_from_frame, risk_from_sizes
from ppml.anonymization.verify import Violation, class_statistics, verify_release

__all__ = [
    "AnonymizationConfig",
    "AnonymizationResult",
    "Hierarchy",
    "HierarchySpec",
    "KAnonymity",
    "LDiversity",
    "RiskProfile",
    "TCloseness",
    "Violation",
    "anonymize",
    "class_statistics",
    "config_from_policy",
    "risk_from_frame",
    "risk_from_sizes",
    "verify_release",
    "warm_up",
]
