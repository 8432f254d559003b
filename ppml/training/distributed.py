"""Data-parallel DP-SGD with Opacus' DPDDP on torch.distributed, launched with torchrun.

    torchrun --standalone --nproc_per_node=2 -m ppml.training.distributed \\
        --data splits.npz --config run.json --out result_dir [--checkpoint-dir ckpt] \\
        --ledger-url sqlite:///ledger.db --dataset adult-census-1994 --lifetime-epsilon 8 [--partitions a,b]

The run is charged to the lifetime privacy ledger like every DP training: before any rank reads a record, rank 0
reserves the run's full planned spend for the data set (``--dataset``, the policy's ``dataset.id``) -- or every rank
stops with the ledger's refusal -- pre-charges each segment of steps before it runs, and settles at the end. There
is no way to train without a ledger: missing ledger arguments stop the launch with one line.

Every rank loads the same arrays; Opacus' distributed Poisson sampler gives each rank its shard of every logical
batch, each rank clips its own examples (book-keeping or ghost clipping), rank 0 alone adds the Gaussian noise and
the gradients are summed across ranks -- the same mechanism, and the same accountant history, as one process with
the whole batch. The backend is NCCL when CUDA is available (one GPU per rank, ``LOCAL_RANK``), else gloo.
Rank 0 writes ``model.pt`` (state dict) and ``result.json`` (aggregates only); every rank writes a digest of its
final weights to ``rank<k>.json`` so a test can check that replicas agree.

``--data`` is an ``.npz`` with ``X_train``, ``y_train`` and optionally ``X_validation``, ``y_validation``,
``feature_names``, ``n_classes`` (default 2); ``--config`` is JSON
``{"training": {...TrainingConfig}, "dp": {...DPConfig}}``.
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

from ppml.errors import PPMLError
from ppml.ledger import DataScope, LifetimeBudget, PrivacyLedger
from ppml.ledger.spend import LedgerSpendSink
from ppml.training.config import DPConfig, ModelSpec, TrainingConfig, fingerprint
from ppml.training.data import TabularSplit
from ppml.training.dp_sgd import train_dp
from ppml.training.planning import plan_dp_training, planned_run


def load_run_config(path: Path) -> tuple[TrainingConfig, DPConfig]:
    raw = json.loads(Path(path).read_text())
    training = dict(raw.get("training", {}))
    model = training.pop("model", {})
    if isinstance(model, dict):
        model = ModelSpec(**{**model, "hidden_sizes": tuple(model.get("hidden_sizes", (64,)))})
    return TrainingConfig(model=model, **training), DPConfig(**raw["dp"])


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ppml.training.distributed", description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--checkpoint-dir", type=Path, default=None)
    parser.add_argument("--ledger-url", default=os.environ.get("PPML_LEDGER_URL"), help="SQLAlchemy URL of the ledger")
    parser.add_argument("--dataset", default=None, help="the data-set identity (policy dataset.id) charged")
    parser.add_argument("--partitions", default="", help="comma-separated partition keys the data covers")
    parser.add_argument("--lifetime-epsilon", type=float, default=None, help="the policy's lifetime epsilon budget")
    parser.add_argument("--lifetime-delta", type=float, default=None, help="default: the run's target delta")
    return parser


def _ledger_arguments(args: argparse.Namespace) -> None:
    """Refuse, in one line, to train without somewhere to charge the run."""
    for flag, value in (
        ("--ledger-url", args.ledger_url),
        ("--dataset", args.dataset),
        ("--lifetime-epsilon", args.lifetime_epsilon),
    ):
        if value in (None, ""):
            raise PPMLError(
                f"ppml.training.distributed: field '{flag}': missing -- a DP training must be charged to the lifetime "
                "privacy ledger; fix: pass --ledger-url (or set PPML_LEDGER_URL), --dataset (the policy's "
                "dataset.id) and --lifetime-epsilon (the policy's lifetime_epsilon_budget)"
            )


def _reserve(
    args: argparse.Namespace, train: TabularSplit, config: TrainingConfig, dp: DPConfig, world_size: int
) -> tuple[PrivacyLedger, str, str]:
    """Rank 0: reserve the run's full planned spend (refused over budget); returns ledger, request and run id."""
    plan = plan_dp_training(train.n, config, dp)
    scope = DataScope(
        args.dataset, tuple(p for p in args.partitions.split(",") if p), record_set_hash=train.record_set_hash()
    )
    lifetime = LifetimeBudget(args.lifetime_epsilon, args.lifetime_delta or dp.target_delta)
    described = {"world_size": world_size, "launcher": "torchrun"}
    planned = planned_run(0, train, config, dp, plan, world_size=world_size, described=described)
    run_fingerprint = planned.config_fingerprint
    ledger = PrivacyLedger(args.ledger_url)
    try:
        reservation = ledger.reserve(scope, [planned], lifetime, request_key=fingerprint("torchrun", run_fingerprint))
    except BaseException:
        ledger.close()
        raise
    return ledger, reservation.request_id, reservation.run_ids[0]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        _ledger_arguments(args)
    except PPMLError as error:
        print(error, file=sys.stderr)
        return 2

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
    ledger = run_id = request_id = None
    try:
        arrays = np.load(args.data, allow_pickle=False)
        names = tuple(str(n) for n in arrays["feature_names"]) if "feature_names" in arrays else ()
        classes = int(arrays["n_classes"]) if "n_classes" in arrays else 2
        train = TabularSplit(arrays["X_train"], arrays["y_train"], names, f"{args.data.name}/train", classes)
        validation = (
            TabularSplit(arrays["X_validation"], arrays["y_validation"], names, f"{args.data.name}/validation", classes)
            if "X_validation" in arrays
            else None
        )
        refusal = [""]
        if rank == 0:
            try:
                ledger, request_id, run_id = _reserve(args, train, config, dp, world_size)
            except Exception as error:  # every rank must hear of it, or the others wait at the broadcast for good
                refusal = [str(error) if isinstance(error, PPMLError) else f"ledger: {type(error).__name__}: {error}"]
        torch.distributed.broadcast_object_list(refusal, src=0)
        if refusal[0]:
            if rank == 0:
                print(refusal[0], file=sys.stderr)
            return 3
        sink = LedgerSpendSink(ledger, run_id) if ledger is not None and run_id is not None else None
        try:
            model = train_dp(
                train, config, dp, validation=validation, checkpoint_dir=args.checkpoint_dir, spend_sink=sink
            )
        except BaseException as error:
            if ledger is not None and run_id is not None:
                ledger.fail_run(run_id, f"{type(error).__name__}: {error}")  # keeps what was pre-charged
                ledger.finish_request(request_id, selected_run_id=None, status="failed")
            raise
        if ledger is not None and run_id is not None:
            ledger.complete_run(run_id, steps=model.steps, epsilon=float(model.epsilon_charged or 0.0))
            ledger.finish_request(request_id, selected_run_id=run_id)
        _write_outputs(args.out, rank, world_size, backend, model, validation, run_id)
        torch.distributed.barrier()
    finally:
        if ledger is not None:
            ledger.close()
        torch.distributed.destroy_process_group()
    return 0


def _write_outputs(out: Path, rank: int, world_size: int, backend: str, model: Any, validation: Any, run_id) -> None:  # type: ignore[no-untyped-def]
    out.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(b"".join(p.detach().numpy().tobytes() for p in model.module.parameters()))
    (out / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "weights_sha256": digest.hexdigest()}))
    if rank == 0:
        torch.save(model.module.state_dict(), out / "model.pt")
        result: dict[str, Any] = {
            "world_size": world_size,
            "backend": backend,
            "ledger_run_id": run_id,
            "epsilon": model.epsilon,
            "epsilon_charged": model.epsilon_charged,
            "delta": model.delta,
            "noise_multiplier": model.noise_multiplier,
            "sample_rate": model.sample_rate,
            "steps": model.steps,
            "planned_steps": model.planned_steps,
            "clipping": model.clipping,
            "history": [r.to_dict() for r in model.history],
            "validation": model.evaluate(validation) if validation is not None else None,
        }
        (out / "result.json").write_text(json.dumps(result, indent=2))


def _with_device(config: TrainingConfig, device: str) -> TrainingConfig:
    import dataclasses

    return dataclasses.replace(config, device="cuda" if device.startswith("cuda") else "cpu")


if __name__ == "__main__":
    sys.exit(main())
