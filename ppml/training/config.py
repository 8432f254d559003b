"""Training configuration: what a policy or run config may choose, validated before any data is touched.

Configurations are frozen dataclasses so that they can be hashed into a fingerprint: the ledger uses the fingerprint
to recognise an interrupted run of the same configuration, and MLflow logs the same values as parameters.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from ppml.errors import PPMLError, input_error

ModelKind = Literal["logistic", "mlp"]
OptimizerName = Literal["sgd", "adam"]
DeviceName = Literal["auto", "cpu", "cuda"]
AccountantName = Literal["prv", "rdp"]
# "auto": book-keeping when the model is a stack of Linear layers, else Opacus ghost clipping, else hooks.
ClippingMode = Literal["auto", "bk", "ghost", "hooks"]


@dataclass(frozen=True)
class ModelSpec:
    """Architecture of the classifier. ``batch_norm`` exists to show that ModuleValidator fixes or refuses it."""

    kind: ModelKind = "mlp"
    hidden_sizes: tuple[int, ...] = (64,)
    batch_norm: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_sizes", tuple(int(h) for h in self.hidden_sizes))
        if self.kind not in ("logistic", "mlp"):
            raise input_error("model spec", "kind", f"unknown model kind {self.kind!r}", "use 'logistic' or 'mlp'")
        if self.kind == "mlp" and (not self.hidden_sizes or min(self.hidden_sizes) < 1):
            raise input_error(
                "model spec",
                "hidden_sizes",
                f"an MLP needs positive layer sizes, got {self.hidden_sizes}",
                "give at least one hidden size, e.g. [64]",
            )

    def describe(self) -> str:
        """Short name for logs and MLflow, e.g. ``mlp(64)`` or ``logistic``."""
        if self.kind == "logistic":
            return "logistic"
        return f"mlp({','.join(str(h) for h in self.hidden_sizes)}{',bn' if self.batch_norm else ''})"


@dataclass(frozen=True)
class TrainingConfig:
    """Hyper-parameters shared by private and non-private training.

    ``batch_size`` is the expected logical batch (Poisson sampling draws each record with probability
    ``batch_size / n``); ``max_physical_batch_size`` caps what is pushed through the model at once
    (Opacus BatchMemoryManager). ``seed`` fixes model initialisation and non-private shuffling; the randomness
    that DP relies on (Poisson sampling and noise) is governed by :attr:`DPConfig.dp_seed`.
    """

    model: ModelSpec = field(default_factory=ModelSpec)
    epochs: int = 10
    batch_size: int = 256
    max_physical_batch_size: int = 1024
    learning_rate: float = 1e-3
    optimizer: OptimizerName = "adam"
    seed: int = 0
    device: DeviceName = "auto"
    weight_decay: float = 0.0
    momentum: float = 0.0

    def __post_init__(self) -> None:
        source = "training config"
        for name in ("epochs", "batch_size", "max_physical_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise input_error(source, name, f"must be a positive integer, got {value!r}", f"set {name} >= 1")
        if not _finite_positive(self.learning_rate):
            raise input_error(
                source,
                "learning_rate",
                f"must be a finite positive number, got {self.learning_rate!r}",
                "set e.g. learning_rate: 0.001",
            )
        if self.optimizer not in ("sgd", "adam"):
            raise input_error(source, "optimizer", f"unknown optimizer {self.optimizer!r}", "use 'sgd' or 'adam'")
        if self.device not in ("auto", "cpu", "cuda"):
            raise input_error(source, "device", f"unknown device {self.device!r}", "use 'auto', 'cpu' or 'cuda'")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise input_error(source, "weight_decay", f"must be >= 0, got {self.weight_decay!r}", "set 0 or more")
        if not (math.isfinite(self.momentum) and 0 <= self.momentum < 1):
            raise input_error(source, "momentum", f"must be in [0, 1), got {self.momentum!r}", "set e.g. 0.9")

    def to_params(self) -> dict[str, Any]:
        """Flat, aggregate-only parameters for MLflow and the ledger."""
        return {
            "model": self.model.describe(),
            "model_kind": self.model.kind,
            "hidden_sizes": ",".join(str(h) for h in self.model.hidden_sizes) if self.model.kind == "mlp" else "",
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "max_physical_batch_size": self.max_physical_batch_size,
            "lr": self.learning_rate,
            "optimizer": self.optimizer,
            "seed": self.seed,
            "weight_decay": self.weight_decay,
            "momentum": self.momentum,
        }


@dataclass(frozen=True)
class DPConfig:
    """Differential-privacy parameters of one training run.

    ``noise_multiplier_override`` is fault injection only: the optimizer adds noise with this sigma while the
    reported epsilon stays the one calibrated for ``target_epsilon`` (so tests can show that the empirical audit
    catches a broken DP implementation). The ledger always charges the noise actually added. Never set by a policy.

    ``dp_seed`` seeds Poisson sampling and noise. ``None`` (the default) draws them from OS entropy, because a
    seed that is logged or guessable lets anyone replay the sampling and subtract the noise; set it only for
    tests and research. Checkpoints keep the generator state, so a resumed run continues the same randomness.
    """

    target_epsilon: float
    target_delta: float
    max_grad_norm: float = 1.0
    accountant: AccountantName = "prv"
    noise_multiplier_override: float | None = None
    clipping: ClippingMode = "auto"
    dp_seed: int | None = None
    allow_layer_fixes: bool = True

    def __post_init__(self) -> None:
        source = "dp config"
        if not _finite_positive(self.target_epsilon):
            raise input_error(
                source,
                "target_epsilon",
                f"must be a finite number > 0, got {self.target_epsilon!r}",
                "set a positive epsilon in the policy, e.g. 1.0",
            )
        if not (isinstance(self.target_delta, int | float) and 0 < self.target_delta < 1):
            raise input_error(
                source,
                "target_delta",
                f"must be in (0, 1), got {self.target_delta!r}",
                "set delta below 1/n, e.g. 1e-5",
            )
        if not _finite_positive(self.max_grad_norm):
            raise input_error(
                source,
                "max_grad_norm",
                f"must be a finite number > 0, got {self.max_grad_norm!r}",
                "set a clipping bound such as 1.0",
            )
        if self.accountant not in ("prv", "rdp"):
            raise input_error(source, "accountant", f"unknown accountant {self.accountant!r}", "use 'prv' or 'rdp'")
        if self.clipping not in ("auto", "bk", "ghost", "hooks"):
            raise input_error(
                source, "clipping", f"unknown clipping mode {self.clipping!r}", "use auto, bk, ghost or hooks"
            )
        override = self.noise_multiplier_override
        if override is not None and not (math.isfinite(override) and override >= 0):
            raise input_error(source, "noise_multiplier_override", f"must be >= 0, got {override!r}", "leave it unset")

    def check_delta_for(self, n_records: int, source: str) -> None:
        """delta must be below 1/n: a larger delta allows releasing a whole record with probability delta*n."""
        if n_records > 0 and self.target_delta >= 1.0 / n_records:
            raise input_error(
                source,
                "target_delta",
                f"delta {self.target_delta:g} is not below 1/n = {1.0 / n_records:.3g} for n = {n_records} records",
                f"set target_delta below {1.0 / n_records:.3g} (e.g. {_suggest_delta(n_records):g})",
            )

    def to_params(self) -> dict[str, Any]:
        return {
            "target_epsilon": self.target_epsilon,
            "target_delta": self.target_delta,
            "max_grad_norm": self.max_grad_norm,
            "accountant": self.accountant,
            "clipping": self.clipping,
            "dp_seeded": self.dp_seed is not None,
            "noise_override": self.noise_multiplier_override is not None,
        }


def fingerprint(*parts: Any) -> str:
    """Stable SHA-256 over dataclasses / JSON-able values: identifies 'the same configuration' across restarts."""

    def normalise(value: Any) -> Any:
        if hasattr(value, "__dataclass_fields__"):
            return {k: normalise(v) for k, v in asdict(value).items()}
        if isinstance(value, dict):
            return {str(k): normalise(v) for k, v in sorted(value.items())}
        if isinstance(value, list | tuple):
            return [normalise(v) for v in value]
        return value

    payload = json.dumps([normalise(p) for p in parts], sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _finite_positive(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _suggest_delta(n_records: int) -> float:
    target = 1.0 / (10 * n_records)
    return float(f"{10 ** math.floor(math.log10(target)):.0e}")


__all__ = [
    "AccountantName",
    "ClippingMode",
    "DPConfig",
    "ModelSpec",
    "PPMLError",
    "TrainingConfig",
    "fingerprint",
]
