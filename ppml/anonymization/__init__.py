"""Anonymization engine: optimal full-domain generalization with record suppression (ARX-compatible).

Plain module, no Dagster: the CLI (``ppml anonymize``) and the ``anonymized_records`` asset call the same
:func:`anonymize`. See docs/anonymization.md for the algorithm, the models and the benchmark against ARX.
"""

from ppml.anonymization.engine import AnonymizationConfig, AnonymizationResult, anonymize
from ppml.anonymization.hierarchy import Hierarchy, HierarchySpec
from ppml.anonymization.models import KAnonymity, LDiversity, TCloseness
from ppml.anonymization.risk import RiskProfile, risk_from_frame, risk_from_sizes

__all__ = [
    "AnonymizationConfig",
    "AnonymizationResult",
    "Hierarchy",
    "HierarchySpec",
    "KAnonymity",
    "LDiversity",
    "RiskProfile",
    "TCloseness",
    "anonymize",
    "risk_from_frame",
    "risk_from_sizes",
]
