"""DP-SGD training through Opacus: contract, clipping modes, Poisson edge cases, fault injection, resume."""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import pytest
import torch

from ppml.errors import PPMLError
from ppml.training import DPConfig, ModelSpec, TrainingConfig, plan_dp_training, train_dp, train_non_private
from tests.training.conftest import make_splits

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook", "ignore:Secure RNG", "ignore:Optimal order")

CONFIG = TrainingConfig(
    model=ModelSpec("mlp", (16,)),
    epochs=3,
    batch_size=200,
    max_physical_batch_size=64,
    learning_rate=0.02,
    optimizer="adam",
    seed=3,
    device="cpu",
)
# RDP keeps calibration fast on a shared box; PRV (the default) is exercised in test_contract_and_accounting.
DP = DPConfig(target_epsilon=3.0, target_delta=1e-5, dp_seed=11, accountant="rdp")


def test_contract_and_accounting(splits) -> None:
    train, validation = splits
    reports = []
    dp = dataclasses.replace(DP, accountant="prv")
    model = train_dp(train, CONFIG, dp, validation=validation, on_epoch=reports.append)
    plan = plan_dp_training(train.n, CONFIG, dp)
    assert model.epsilon is not None and 0 < model.epsilon <= DP.target_epsilon
    assert model.delta == DP.target_delta and model.epsilon_charged == pytest.approx(model.epsilon)
    assert model.steps == plan.planned_steps == CONFIG.epochs * math.ceil(train.n / CONFIG.batch_size)
    assert model.sample_rate == pytest.approx(1 / math.ceil(train.n / CONFIG.batch_size))
    assert model.noise_multiplier == pytest.approx(plan.noise_multiplier) and model.noise_multiplier > 0.3
    assert model.clipping == "bk" and model.device == "cpu"
    assert [r.epoch for r in reports] == [1, 2, 3] and reports == model.history
    assert all(a.epsilon < b.epsilon for a, b in itertools.pairwise(reports))
    assert reports[-1].epsilon == pytest.approx(model.epsilon)
    assert model.evaluate(validation)["accuracy"] > 0.8
    proba = model.predict_proba(validation.X)
    losses = model.per_example_loss(validation.X, validation.y)
    assert proba.shape == losses.shape == (validation.n,) and ((proba >= 0) & (proba <= 1)).all()
    assert not model.module.training and next(model.module.parameters()).device.type == "cpu"
    assert not any(hasattr(p, "grad_sample") for p in model.module.parameters())


def test_calibration_is_make_private_with_epsilon(splits) -> None:
    """The plan's sigma (what the ledger reserves and the run uses) is Opacus' make_private_with_epsilon sigma."""
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader, TensorDataset

    train, _ = splits
    for accountant in ("prv", "rdp"):
        dp = dataclasses.replace(DP, accountant=accountant)
        model = torch.nn.Linear(train.n_features, 2)
        loader = DataLoader(TensorDataset(torch.from_numpy(train.X), torch.from_numpy(train.y)), batch_size=200)
        _, optimizer, _ = PrivacyEngine(accountant=accountant).make_private_with_epsilon(
            module=model,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
            data_loader=loader,
            target_epsilon=dp.target_epsilon,
            target_delta=dp.target_delta,
            epochs=CONFIG.epochs,
            max_grad_norm=1.0,
        )
        assert plan_dp_training(train.n, CONFIG, dp).noise_multiplier == optimizer.noise_multiplier


def test_index_batches_equal_opacus_batch_memory_manager() -> None:
    """With Opacus' draw, the tensor path samples and splits exactly like Opacus' sampler + BatchMemoryManager."""
    from opacus.data_loader import DPDataLoader
    from opacus.optimizers import DPOptimizer
    from opacus.utils.batch_memory_manager import BatchMemoryManager
    from torch.utils.data import DataLoader, TensorDataset

    from ppml.training.dp_steps import IndexBatchMemoryManager
    from ppml.training.sampling import bernoulli_indices

    def run(manager_class):
        generator = torch.Generator().manual_seed(5)
        dataset = TensorDataset(torch.zeros(500, 1), torch.zeros(500, dtype=torch.long))
        loader = DPDataLoader.from_data_loader(DataLoader(dataset, batch_size=40, generator=generator))
        parameter = torch.nn.Parameter(torch.zeros(1))
        optimizer = DPOptimizer(
            torch.optim.SGD([parameter], lr=1.0), noise_multiplier=1.0, max_grad_norm=1.0, expected_batch_size=40
        )
        seen = []
        extra = {"draw": bernoulli_indices} if manager_class is IndexBatchMemoryManager else {}
        with manager_class(data_loader=loader, max_physical_batch_size=16, optimizer=optimizer, **extra) as batches:
            source = batches.batch_sampler if manager_class is BatchMemoryManager else batches
            for indices in source:
                seen.append((list(map(int, indices)), optimizer._check_skip_next_step()))
        return seen

    ours, theirs = run(IndexBatchMemoryManager), run(BatchMemoryManager)
    assert ours == theirs and len(ours) > 12  # 12 logical batches of ~40, each split into physical ones
    assert any(skip for _, skip in ours) and not ours[-1][1]


def test_book_keeping_ghost_and_hooks_follow_the_same_trajectory(splits) -> None:
    """Same seeds, same sampling and noise: the three clipping implementations must end at the same weights."""
    train, _ = splits
    config = dataclasses.replace(CONFIG, epochs=1)
    weights = {}
    for mode in ("bk", "ghost", "hooks"):
        model = train_dp(train, config, dataclasses.replace(DP, clipping=mode))
        weights[mode] = torch.cat([p.detach().reshape(-1) for p in model.module.parameters()])
    torch.testing.assert_close(weights["bk"], weights["ghost"], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(weights["bk"], weights["hooks"], atol=1e-4, rtol=1e-4)


def test_rdp_accountant_and_logistic_model(splits) -> None:
    train, validation = splits
    config = dataclasses.replace(CONFIG, model=ModelSpec("logistic"), epochs=2, optimizer="sgd", learning_rate=0.5)
    model = train_dp(train, config, DP, validation=validation)
    assert model.epsilon <= DP.target_epsilon and model.dp.accountant == "rdp"
    assert len(list(model.module.parameters())) == 2


def test_poisson_sampling_survives_empty_batches() -> None:
    """With an expected batch of 1 record, about a third of the logical batches are empty: they still get noise."""
    train, _ = make_splits(n_train=60, n_validation=10)
    config = dataclasses.replace(CONFIG, batch_size=1, epochs=1, max_physical_batch_size=4)
    for mode in ("bk", "ghost", "hooks"):
        model = train_dp(train, config, DPConfig(8.0, 1e-3, dp_seed=5, clipping=mode, accountant="rdp"))
        assert model.steps == 60


def test_fault_injection_reports_the_claim_but_charges_the_noise_added(splits) -> None:
    train, _ = splits
    config = dataclasses.replace(CONFIG, epochs=1)
    broken = train_dp(train, config, dataclasses.replace(DP, noise_multiplier_override=0.0))
    assert broken.epsilon <= DP.target_epsilon and broken.epsilon_charged == math.inf
    weaker = train_dp(train, config, dataclasses.replace(DP, noise_multiplier_override=0.5))
    assert weaker.epsilon_charged > weaker.epsilon


def test_batch_norm_is_fixed_or_refused(splits) -> None:
    train, _ = splits
    config = dataclasses.replace(CONFIG, model=ModelSpec("mlp", (8,), batch_norm=True), epochs=1)
    fixed = train_dp(train, config, DP)
    assert fixed.clipping == "ghost"
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in fixed.module.modules())
    assert any(isinstance(m, torch.nn.GroupNorm) for m in fixed.module.modules())
    with pytest.raises(PPMLError, match=r"batch_norm.*BatchNorm couples"):
        train_dp(train, config, dataclasses.replace(DP, allow_layer_fixes=False))


def test_non_private_baseline_learns(splits) -> None:
    train, validation = splits
    model = train_non_private(train, CONFIG, validation=validation)
    assert model.epsilon is None and model.dp is None and model.steps == 3 * math.ceil(train.n / 200)
    assert model.evaluate(validation)["accuracy"] > 0.85


def test_checkpoint_resume_continues_the_same_run(splits, tmp_path) -> None:
    """An interrupted run resumed from its checkpoint ends exactly where an uninterrupted run ends."""
    train, validation = splits
    config = dataclasses.replace(CONFIG, epochs=3)
    reference = train_dp(train, config, DP)

    class Crash(Exception):
        pass

    def crash_in_epoch_two(step: int) -> None:
        if step == 11:  # epoch 2 (6 steps per epoch), after the mid-epoch checkpoint at step 10
            raise Crash

    with pytest.raises(Crash):
        train_dp(train, config, DP, checkpoint_dir=tmp_path, checkpoint_every_steps=4, on_step=crash_in_epoch_two)
    resumed = train_dp(train, config, DP, validation=validation, checkpoint_dir=tmp_path)
    assert resumed.resumed_from_step == 10
    assert resumed.steps == reference.steps and resumed.epsilon == pytest.approx(reference.epsilon, rel=1e-12)
    for ours, theirs in zip(resumed.module.parameters(), reference.module.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-6)
    finished = train_dp(train, config, DP, checkpoint_dir=tmp_path)  # finished checkpoint: no new training
    assert finished.resumed_from_step == reference.steps
    with pytest.raises(PPMLError, match="different run"):
        train_dp(train, dataclasses.replace(config, learning_rate=0.5), DP, checkpoint_dir=tmp_path)


class TestBadInput:
    """Issue item 9: each bad input is one clear PPMLError, raised before anything is trained."""

    def test_epsilon_must_be_positive(self) -> None:
        for epsilon in (0.0, -1.0, math.nan, math.inf):
            with pytest.raises(PPMLError, match="target_epsilon"):
                DPConfig(target_epsilon=epsilon, target_delta=1e-5)

    def test_delta_must_be_below_one_over_n(self, splits) -> None:
        train, _ = splits
        with pytest.raises(PPMLError, match=r"target_delta.*not below 1/n"):
            train_dp(train, CONFIG, DPConfig(1.0, 1.0 / train.n))
        with pytest.raises(PPMLError, match="target_delta"):
            DPConfig(1.0, 0.0)

    def test_empty_training_split(self, splits) -> None:
        train, _ = splits
        empty = train.subset(np.arange(0))
        with pytest.raises(PPMLError, match=r"synthetic/train.*training split is empty"):
            train_dp(empty, CONFIG, DP)
        with pytest.raises(PPMLError, match="empty"):
            train_non_private(empty, CONFIG)

    def test_single_class_label(self, splits) -> None:
        train, _ = splits
        one_class = train.subset(np.flatnonzero(train.y == 1))
        with pytest.raises(PPMLError, match=r"field 'y'.*only one class"):
            train_dp(one_class, CONFIG, DP)

    def test_non_numeric_features(self) -> None:
        import pandas as pd

        from ppml.training import TabularSplit

        X = np.array([[1.0, "Private"], [2.0, "State-gov"]], dtype=object)
        with pytest.raises(PPMLError, match=r"field 'workclass'.*non-numeric"):
            TabularSplit(X, np.array([0, 1]), ("age", "workclass"), "adult/train")
        frame = pd.DataFrame({"age": [30, 40], "workclass": ["Private", "State-gov"], "income": [0, 1]})
        with pytest.raises(PPMLError, match=r"field 'workclass'.*non-numeric"):
            TabularSplit.from_frame(frame, "income", name="adult/train")
        with pytest.raises(PPMLError, match="NaN"):
            TabularSplit(np.array([[np.nan], [1.0]]), np.array([0, 1]), ("age",))
        with pytest.raises(PPMLError, match="labels must be 0 or 1"):
            TabularSplit(np.ones((2, 1)), np.array([0, 2]))

    def test_bad_training_config(self) -> None:
        with pytest.raises(PPMLError, match="batch_size"):
            TrainingConfig(batch_size=0)
        with pytest.raises(PPMLError, match="hidden_sizes"):
            ModelSpec("mlp", ())


def test_book_keeping_noisy_step_equals_opacus_optimizer_step(splits, monkeypatch) -> None:
    """The lean book-keeping step (flat buffers, in-place accumulation over physical batches) adds the same noise,
    scales, accounts and steps exactly like Opacus' DPOptimizerFastGradientClipping."""
    from ppml.training import dp_sgd

    train, _ = splits
    config = dataclasses.replace(CONFIG, epochs=2)  # batch 200 split into physical batches of at most 64
    for dp in (DP, dataclasses.replace(DP, noise_multiplier_override=0.0)):
        lean = train_dp(train, config, dp)
        with monkeypatch.context() as patch:
            patch.setattr(dp_sgd, "BookKeepingNoisyStep", lambda optimizer: None)
            opacus = train_dp(train, config, dp)
        for ours, theirs in zip(lean.module.parameters(), opacus.module.parameters(), strict=True):
            torch.testing.assert_close(ours, theirs, atol=1e-6, rtol=1e-5)
        facts = [(m.steps, m.epsilon, m.epsilon_charged) for m in (lean, opacus)]
        assert facts[0] == facts[1]


class _RecordingSink:
    """A spend sink that keeps what it is told (the ledger's view of the run)."""

    def __init__(self) -> None:
        self.before: list[tuple[int, float]] = []
        self.after: list[tuple[int, float]] = []

    def before_steps(self, *, steps: int, epsilon: float) -> None:
        self.before.append((steps, epsilon))

    def after_steps(self, *, steps: int, epsilon: float) -> None:
        self.after.append((steps, epsilon))


def test_an_epoch_is_every_batch_and_the_accountant_counts_each_step() -> None:
    """93 batches per epoch: ``int(1 / (1 / 93))`` is 92 in floating point, so the old plan dropped a step per epoch.
    The plan, the loop, the accountant and the pre-charge must all count all 93."""
    from ppml.training.accounting import epsilon_of_history

    train, _ = make_splits(n_train=930, n_validation=10, n_features=4)
    config = TrainingConfig(
        model=ModelSpec("logistic"), epochs=1, batch_size=10, learning_rate=0.1, seed=1, device="cpu"
    )
    assert int(1 / (1 / 93)) == 92  # the rounding this test guards against
    plan = plan_dp_training(train.n, config, DP)
    assert plan.steps_per_epoch == plan.planned_steps == 93
    sink = _RecordingSink()
    model = train_dp(train, config, DP, spend_sink=sink)
    assert model.steps == model.planned_steps == 93
    accounted = epsilon_of_history([(plan.noise_multiplier, plan.sample_rate, 93)], DP.target_delta, DP.accountant)
    assert model.epsilon == pytest.approx(accounted) and model.epsilon_charged == pytest.approx(accounted)
    assert sink.after[-1] == (93, pytest.approx(accounted))
    assert max(steps for steps, _ in sink.before) == 93  # pre-charged before they ran: never under-counted
    assert all(eps >= spent - 1e-12 for (steps, eps), (_, spent) in zip(sink.before, sink.after, strict=True))
