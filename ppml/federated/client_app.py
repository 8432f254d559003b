"""ppml's Flower ClientApp: runs inside one site's SuperNode and reads only that site's prepared features.

The SuperNode's ``--node-config`` names the site and its folder; the run config carries the global feature names
and the site's DP plan. With client-level DP under SecAgg+, the site clips its own update (Flower's
``fixedclipping_mod``) before SecAgg+ masks it, because the server can no longer clip an update it cannot see.
torch, Opacus and the evaluation engines are imported only when a message needs them: SecAgg+'s key-exchange
stages each start a fresh ClientApp process and need none of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from flwr.client import ClientApp, NumPyClient
from flwr.client.mod import fixedclipping_mod, secaggplus_mod
from flwr.common import Context, Message

from ppml.federated.progress import record_round
from ppml.federated.run_config import RunConfig


class SiteClient(NumPyClient):
    def __init__(self, site: str, site_dir: Path, config: RunConfig) -> None:
        self.site, self.site_dir, self.config = site, site_dir, config

    def _model(self, parameters: list[np.ndarray]) -> Any:
        from ppml.federated.local_training import new_model, set_weights

        model = new_model(self.config.hidden_sizes, len(self.config.feature_names), self.config.seed)
        set_weights(model, parameters)
        return model

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:
        from ppml.federated.local_training import dp_sgd_round, get_weights, load_site_splits, sgd_round

        server_round = int(config.get("round", 0))
        splits = load_site_splits(self.site_dir, self.config.feature_names)
        model = self._model(parameters)
        seed = self.config.seed * 1000 + server_round
        if self.config.dp_mode == "example":
            plan = self.config.plan(self.site)
            steps = dp_sgd_round(
                model,
                splits["train"],
                noise_multiplier=plan.noise_multiplier,
                sample_rate=plan.sample_rate,
                steps=plan.steps_per_round,
                max_grad_norm=self.config.max_grad_norm,
                learning_rate=self.config.learning_rate,
                seed=seed,
            )
            weight = len(splits["train"].y)
        else:
            steps = sgd_round(
                model,
                splits["train"],
                epochs=self.config.local_epochs,
                batch_size=self.config.batch_size,
                learning_rate=self.config.learning_rate,
                seed=seed,
            )
            weight = 1  # DP-FedAvg averages clipped updates with equal weights (the accounted sensitivity)
        record_round(self.site_dir, server_round, steps)
        return get_weights(model), weight, {"steps": steps}

    def evaluate(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[float, int, dict]:
        from ppml.federated.local_training import evaluate_site, load_site_groups, load_site_splits

        splits = load_site_splits(self.site_dir, self.config.feature_names)
        groups = load_site_groups(self.site_dir, "test")
        metrics = evaluate_site(self._model(parameters), splits, self.config.seed, groups)
        return 1.0 - metrics["test_accuracy"], int(metrics["test_records"]), {**metrics, "site": self.site}


def client_fn(context: Context) -> Any:
    site = str(context.node_config["site"])
    site_dir = Path(str(context.node_config["site-dir"]))
    return SiteClient(site, site_dir, RunConfig.from_flower(dict(context.run_config))).to_client()


def privacy_mods(message: Message, context: Context, call_next: Any) -> Message:
    """SecAgg+ (and, for client-level DP, clipping inside it) as the run config says, per message."""
    config = RunConfig.from_flower(dict(context.run_config))
    if not config.secure_aggregation:
        return call_next(message, context)
    if config.dp_mode == "client":
        return secaggplus_mod(message, context, lambda m, c: fixedclipping_mod(m, c, call_next))
    return secaggplus_mod(message, context, call_next)


app = ClientApp(client_fn=client_fn, mods=[privacy_mods])
