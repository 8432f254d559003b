"""What a site's ClientApp does with the global model: local DP-SGD or plain SGD rounds, and local evaluation.

Runs inside the site's own process and reads only the site's prepared features. Example-level DP uses Opacus'
DPOptimizer with Poisson sampling at the site's planned sample rate and noise (ppml.federated.accounting), so the
steps a site runs are exactly the steps its ledger scope was charged for.
"""

from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from opacus import PrivacyEngine
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ppml.errors import input_error
from ppml.evaluation.error_rates import group_error_rates
from ppml.evaluation.membership_inference import loss_threshold_attack
from ppml.evaluation.utility import evaluate_utility
from ppml.federated.site_prep import FEATURES_FILE, GROUPS_FILE
from ppml.preparation import LABEL_COLUMN, SPLIT_COLUMN
from ppml.training.config import ModelSpec
from ppml.training.models import build_model


@dataclass(frozen=True)
class Split:
    X: np.ndarray
    y: np.ndarray


def load_site_splits(site_dir: Path, feature_names: list[str]) -> dict[str, Split]:
    """The site's splits, aligned to the federation's feature names (a column the site lacks is all zero)."""
    path = Path(site_dir) / FEATURES_FILE
    if not path.is_file():
        raise input_error(str(path), "(file)", "the site has no prepared features", "prepare the site (its checks)")
    frame = pd.read_parquet(path)
    aligned = frame.reindex(columns=feature_names, fill_value=0.0).to_numpy(dtype=np.float32)
    labels = frame[LABEL_COLUMN].to_numpy(dtype=np.int64)
    return {
        name: Split(aligned[(frame[SPLIT_COLUMN] == name).to_numpy()], labels[(frame[SPLIT_COLUMN] == name).to_numpy()])
        for name in ("train", "validation", "test")
    }


def load_site_groups(site_dir: Path, split: str = "test") -> dict[str, list[str]]:
    """The protected attributes' values of one split's rows, aligned with :func:`load_site_splits` (empty for a
    site prepared before the groups were kept: its group requirement then fails as not measured)."""
    path = Path(site_dir) / GROUPS_FILE
    if not path.is_file():
        return {}
    frame = pd.read_parquet(path)
    rows = frame[frame[SPLIT_COLUMN] == split]
    return {column: rows[column].astype(str).tolist() for column in frame.columns if column != SPLIT_COLUMN}


def new_model(hidden_sizes: list[int], n_features: int, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    kind = "mlp" if hidden_sizes else "logistic"
    return build_model(ModelSpec(kind=kind, hidden_sizes=tuple(hidden_sizes) or (1,)), n_features)


def get_weights(model: nn.Module) -> list[np.ndarray]:
    return [value.detach().cpu().numpy().copy() for value in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[np.ndarray]) -> None:
    keys = list(model.state_dict().keys())
    if len(keys) != len(weights):
        raise input_error("federated model", "parameters", f"{len(weights)} arrays for {len(keys)}", "same model spec")
    model.load_state_dict({k: torch.as_tensor(np.asarray(w)) for k, w in zip(keys, weights, strict=True)})


def dp_sgd_round(
    model: nn.Module,
    train: Split,
    *,
    noise_multiplier: float,
    sample_rate: float,
    steps: int,
    max_grad_norm: float,
    learning_rate: float,
    seed: int,
) -> int:
    """``steps`` DP-SGD steps (Poisson batches of expected size q*n, per-example clipping, Gaussian noise)."""
    generator = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.from_numpy(train.X), torch.from_numpy(train.y))
    loader = DataLoader(data, batch_size=max(1, round(sample_rate * len(data))), generator=generator)
    working = copy.deepcopy(model)  # Opacus hooks the module it wraps; the caller's model stays plain
    optimizer = torch.optim.SGD(working.parameters(), lr=learning_rate)
    engine = PrivacyEngine(accountant="rdp", secure_mode=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        private, optimizer, loader = engine.make_private(
            module=working,
            optimizer=optimizer,
            data_loader=loader,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            poisson_sampling=True,
            noise_generator=generator,
        )
    loss_fn = nn.CrossEntropyLoss()
    done = 0
    while done < steps:
        for X, y in loader:
            if done >= steps:
                break
            optimizer.zero_grad()
            loss_fn(private(X), y).backward()  # an empty Poisson batch is a pure-noise step
            optimizer.step()
            done += 1
    model.load_state_dict(private._module.state_dict())
    return done


def sgd_round(model: nn.Module, train: Split, *, epochs: int, batch_size: int, learning_rate: float, seed: int) -> int:
    """Plain local SGD (client-level DP: the update is clipped and noised as a whole, not per example)."""
    generator = torch.Generator().manual_seed(seed)
    data = TensorDataset(torch.from_numpy(train.X), torch.from_numpy(train.y))
    loader = DataLoader(data, batch_size=batch_size, shuffle=True, generator=generator)
    optimizer = torch.optim.SGD(model.parameters(), lr=learning_rate)
    loss_fn = nn.CrossEntropyLoss()
    steps = 0
    for _ in range(epochs):
        for X, y in loader:
            optimizer.zero_grad()
            loss_fn(model(X), y).backward()
            optimizer.step()
            steps += 1
    return steps


class TorchScorer:
    """The evaluation engines' model protocol (``predict_proba``) over a torch module."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model.eval()

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return torch.softmax(self.model(torch.from_numpy(X)), dim=1)[:, 1].numpy()


def evaluate_site(
    model: nn.Module, splits: dict[str, Split], seed: int, groups: dict[str, list[str]] | None = None
) -> dict[str, float]:
    """Aggregates only: utility on the site's test split, the central gate's FPR/FNR gap between the protected
    groups of that split (``groups``: :func:`load_site_groups`), loss-threshold MIA of train versus test records.

    Only the gaps leave the site, not the groups' rates: a rate of a small group of one site is a small cell."""
    scorer = TorchScorer(model)
    measured = evaluate_utility(scorer, splits["test"], name="federated", groups=groups or None, seed=seed)
    report = measured.to_dict()
    metrics = {f"test_{k}": float(report["metrics"][k]["value"]) for k in ("accuracy", "roc_auc")}
    if measured.groups:
        rates = group_error_rates(measured)
        metrics["group_error_rate_gap"] = float(rates.largest_evidenced_gap)  # what the gate judges
        metrics["group_error_rate_gap_point"] = float(rates.largest_gap)
    attack = loss_threshold_attack(scorer, splits["train"], splits["test"], name="federated", seed=seed)
    metrics["mia_auc"] = float(attack.roc_auc)
    metrics["test_records"] = float(len(splits["test"].y))
    return metrics
