"""Model selection and DP-SGD training (lifecycle steps 4-5). See docs/training.md and docs/contracts.md."""

from ppml.training.accountable import (
    AccountableTrainingResult,
    BaselineResult,
    CandidateResult,
    train_baseline,
    train_within_budget,
)
from ppml.training.config import DPConfig, ModelSpec, TrainingConfig
from ppml.training.data import TabularSplit
from ppml.training.dp_sgd import (
    DPPlan,
    EpochReport,
    PrivacySpendSink,
    TrainedModel,
    epsilon_of_history,
    plan_dp_training,
    train_dp,
    train_non_private,
)

__all__ = [
    "AccountableTrainingResult",
    "BaselineResult",
    "CandidateResult",
    "DPConfig",
    "DPPlan",
    "EpochReport",
    "ModelSpec",
    "PrivacySpendSink",
    "TabularSplit",
    "TrainedModel",
    "TrainingConfig",
    "epsilon_of_history",
    "plan_dp_training",
    "train_baseline",
    "train_dp",
    "train_non_private",
    "train_within_budget",
]
