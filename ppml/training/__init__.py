"""Model selection and DP-SGD training (lifecycle steps 4-5). See docs/training.md and docs/contracts.md."""

from ppml.training.accountable import AccountableTrainingResult, CandidateResult, train_within_budget
from ppml.training.accounting import DPPlan, PrivacySpendSink, epsilon_of_history
from ppml.training.config import DPConfig, ModelSpec, TrainingConfig
from ppml.training.data import TabularSplit
from ppml.training.dp_sgd import train_dp
from ppml.training.non_private import BaselineResult, train_baseline, train_non_private
from ppml.training.planning import plan_dp_training
from ppml.training.trained_model import EpochReport, TrainedModel

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
