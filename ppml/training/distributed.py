"""Data-parallel DP-SGD with Opacus' DPDDP on torch.distributed, launched with torchrun.

    torchrun --standalone --nproc_per_node=2 -m ppml.training.distributed \\
        --data splits.npz --config run.json --out result_dir [--checkpoint-dir ckpt]

Every rank loads the same arrays; Opacus' distributed Poisson sampler gives each rank its shard of every logical
batch, each rank clips its own examples (book-keeping or ghost clipping), rank 0 alone adds the Gaussian noise and
the gradients are summed across ranks -- the same mechanism, and the same accountant history, as one process with
the whole batch. The backend is NCCL when CUDA is available (one GPU per rank, ``LOCAL_RANK``), else gloo.
Rank 0 writes ``model.pt`` (state dict) and ``result.json`` (aggregates only); every rank writes a digest of its
final weights to ``rank<k>.json`` so a test can check that replicas agree.

``--data`` is an ``.npz`` with ``X_train``, ``y_train`` and optionally ``X_validation``, ``y_validation``,
``feature_names``; ``--config`` is JSON ``{"training": {...TrainingConfig}, "dp": {...DPConfig}}``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ppml.training.config import DPConfig, ModelSpec, TrainingConfig
from ppml.training.data import TabularSplit
from ppml.training.dp_sgd import train_dp


def load_run_config(path: Path) -> tuple[TrainingConfig, DPConfig]:
    raw = json.loads(Path(path).read_text())
    training = dict(raw.get("training", {}))
    model = training.pop("model", {})
    if isinstance(model, dict):
        model = ModelSpec(**{**model, "hidden_sizes": tuple(model.get("hidden_sizes", (64,)))})
    return TrainingConfig(model=model, **training), DPConfig(**raw["dp"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ppml.training.distributed", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint-dir", type=Path, default=None)
    args = parser.parse_args(argv)

    config, dp = load_run_config(args.config)
    use_cuda = torch.cuda.is_available() and config.device in ("auto", "cuda")
    backend = "nccl" if use_cuda else "gloo"
    torch.distributed.init_process_group(backend=backend)
    rank, world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        config = _with_device(config, f"cuda:{local_rank}")
    else:
        config = _with_device(config, "cpu")
    try:
        arrays = np.load(args.data, allow_pickle=False)
        names = tuple(str(n) for n in arrays["feature_names"]) if "feature_names" in arrays else ()
        train = TabularSplit(arrays["X_train"], arrays["y_train"], names, f"{args.data.name}/train")
        validation = (
            TabularSplit(arrays["X_validation"], arrays["y_validation"], names, f"{args.data.name}/validation")
            if "X_validation" in arrays
            else None
        )
        model = train_dp(train, config, dp, validation=validation, checkpoint_dir=args.checkpoint_dir)
        args.out.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.module.parameters()))
        (args.out / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "weights_sha256": digest.hexdigest()}))
        if rank == 0:
            torch.save(model.module.state_dict(), args.out / "model.pt")
            result: dict[str, Any] = {
                "world_size": world_size,
                "backend": backend,
                "epsilon": model.epsilon,
                "delta": model.delta,
                "noise_multiplier": model.noise_multiplier,
                "sample_rate": model.sample_rate,
                "steps": model.steps,
                "planned_steps": model.planned_steps,
                "clipping": model.clipping,
                "history": [r.to_dict() for r in model.history],
                "validation": model.evaluate(validation) if validation is not None else None,
            }
            (args.out / "result.json").write_text(json.dumps(result, indent=2))
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()
    return 0


def _with_device(config: TrainingConfig, device: str) -> TrainingConfig:
    import dataclasses

    return dataclasses.replace(config, device="cuda" if device.startswith("cuda") else "cpu")


if __name__ == "__main__":
    sys.exit(main())
