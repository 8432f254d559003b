"""The federation's run configuration: what the ServerApp and every ClientApp are told (no record, no path of
a site). Flower passes it as flat TOML values; lists and plans travel as JSON strings."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the ClientApp's key-exchange stages must not import torch (accounting does)
    from ppml.federated.accounting import SitePlan


@dataclass(frozen=True)
class RunConfig:
    dp_mode: str
    secure_aggregation: bool
    rounds: int
    sites: int
    sampled_sites: int
    min_sites: int
    local_epochs: int
    learning_rate: float
    batch_size: int
    max_grad_norm: float
    client_clipping_norm: float
    round_timeout_s: float
    hidden_sizes: list[int]
    feature_names: list[str]
    site_plans: dict[str, dict[str, Any]]
    seed: int
    result_dir: str

    def to_flower(self) -> dict[str, str | int | float | bool]:
        flat: dict[str, str | int | float | bool] = {}
        for key, value in asdict(self).items():
            flat[key.replace("_", "-")] = json.dumps(value) if isinstance(value, list | dict) else value
        return flat

    @classmethod
    def from_flower(cls, values: dict[str, Any]) -> RunConfig:
        fields = {}
        for key in cls.__dataclass_fields__:
            value = values[key.replace("_", "-")]
            fields[key] = json.loads(value) if key in ("hidden_sizes", "feature_names", "site_plans") else value
        return cls(**fields)

    def plan(self, site: str) -> SitePlan:
        from ppml.federated.accounting import SitePlan

        return SitePlan(**self.site_plans[site])

    @property
    def client_noise_multiplier(self) -> float:
        """DP-FedAvg's noise multiplier (the same for every site: one server-side release per round)."""
        return float(next(iter(self.site_plans.values()))["noise_multiplier"])
