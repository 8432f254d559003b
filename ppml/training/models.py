"""Model construction, made Opacus-compatible up front.

Models are plain ``nn.Sequential`` stacks so that book-keeping clipping (see :mod:`ppml.training.book_keeping`) can
walk them layer by layer. Every model passes Opacus' ModuleValidator before training: BatchNorm mixes the examples
of a batch (one record's gradient then depends on the others, so per-example clipping no longer bounds its
influence); it is replaced by GroupNorm when the config allows layer fixes, and refused with a clear message
otherwise.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from opacus.validators import ModuleValidator
from torch import nn

from ppml.errors import PPMLError, input_error
from ppml.training.config import ModelSpec, TrainingConfig

log = logging.getLogger(__name__)


def build_model(spec: ModelSpec, n_features: int, n_classes: int = 2) -> nn.Sequential:
    """Logistic regression is one Linear layer; the MLP is Linear/ReLU stacks. Both emit one logit per class
    (two for a binary label: softmax and cross-entropy serve every K alike)."""
    if n_features < 1:
        raise input_error(
            "model spec", "n_features", "the feature matrix has no columns", "select at least one training feature"
        )
    if spec.kind == "logistic":
        return nn.Sequential(nn.Linear(n_features, n_classes))
    layers: list[nn.Module] = []
    width = n_features
    for hidden in spec.hidden_sizes:
        layers.append(nn.Linear(width, hidden))
        if spec.batch_norm:
            layers.append(nn.BatchNorm1d(hidden))
        layers.append(nn.ReLU())
        width = hidden
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


def make_private_compatible(model: nn.Module, *, allow_fixes: bool, source: str = "model spec") -> nn.Module:
    """Return a model that Opacus accepts, fixing BatchNorm only when allowed; refuse anything else clearly."""
    errors = ModuleValidator.validate(model, strict=False)
    if not errors:
        return model
    summary = "; ".join(sorted({str(e).splitlines()[0] for e in errors}))
    if not allow_fixes:
        raise input_error(
            source,
            "batch_norm",
            f"the model is not compatible with DP-SGD ({summary}): BatchNorm couples the examples of a batch, so "
            "per-example clipping no longer bounds one record's influence",
            "set batch_norm: false, or allow_layer_fixes: true to replace BatchNorm by GroupNorm",
        )
    fixed = ModuleValidator.fix(model)
    remaining = ModuleValidator.validate(fixed, strict=False)
    if remaining:
        raise PPMLError(
            f"{source}: the model cannot be made DP-compatible: "
            f"{'; '.join(str(e).splitlines()[0] for e in remaining)}; fix: use a logistic or plain MLP model"
        )
    log.warning("model fixed for DP-SGD: %s (BatchNorm replaced by GroupNorm)", summary)
    return fixed


def supports_book_keeping(model: nn.Module) -> bool:
    """Book-keeping clipping is implemented for Sequential stacks of Linear layers and parameter-free layers."""
    if not isinstance(model, nn.Sequential):
        return False
    for layer in model:
        has_params = any(p.requires_grad for p in layer.parameters(recurse=True))
        if has_params and type(layer) is not nn.Linear:
            return False
    return any(type(layer) is nn.Linear for layer in model)


def resolve_device(requested: str) -> torch.device:
    """'auto' is CUDA when present, else CPU; asking for CUDA on a machine without it is an error, not a fallback."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise input_error(
            "training config", "device", "CUDA was requested but no GPU is visible", "use device: auto or cpu"
        )
    return torch.device(requested)


def resolve_clipping(requested: str, model: nn.Module) -> str:
    """``auto`` is book-keeping where the model allows it (one backward pass), else Opacus' ghost clipping."""
    if requested == "auto":
        return "bk" if supports_book_keeping(model) else "ghost"
    if requested == "bk" and not supports_book_keeping(model):
        raise input_error(
            "dp config",
            "clipping",
            "book-keeping clipping needs a stack of Linear layers",
            "use clipping: ghost (or auto)",
        )
    return requested


def make_optimizer(parameters: Any, config: TrainingConfig) -> torch.optim.Optimizer:
    """The config's optimizer; DP and non-private runs build it alike so their comparison is fair."""
    if config.optimizer == "adam":
        return torch.optim.Adam(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        parameters, lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
    )
