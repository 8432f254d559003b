"""The DP-SGD step below the training loop: physical batches of a Poisson-sampled logical batch, the lean
book-keeping noisy step, Opacus' accumulation without deep copies, and the instrumentation hook of a step.

Each class here replaces a piece of Opacus' per-step machinery with the same arithmetic at less Python overhead;
tests check equality with Opacus' own path (tests/training/test_dp_sgd.py).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import Any

import torch
from opacus.utils.batch_memory_manager import BatchMemoryManager
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch import nn
from torch.utils.data import DataLoader

from ppml.training.accounting import DPPlan
from ppml.training.sampling import poisson_indices


class StepHook:
    """Instrumentation of the DP-SGD step: the white-box audit's gradient canaries and the planted-bug corpus
    (:mod:`ppml.evaluation.audit_whitebox`, :mod:`ppml.evaluation.planted_bugs`).

    Only a keyword argument of :func:`train_dp` -- no policy or config field reaches it. Every method's default
    changes nothing. It runs on the single-process book-keeping path (stacks of Linear layers), in this order per
    logical step: ``batch`` for each physical batch's indices, ``before_noise`` on the clipped sum (flat, all
    parameters) with the clipper's own clip-factor function, ``noise_std``, then ``after_noise`` on the noisy sum
    (before division by the expected batch size).
    """

    def plan(self, plan: DPPlan) -> DPPlan:
        return plan

    def draw(self, draw: Callable[[int, float, torch.Generator], torch.Tensor]) -> Callable[..., torch.Tensor]:
        return draw

    def clip_bound(self, bound: float) -> float:
        return bound

    def batch(self, indices: torch.Tensor) -> torch.Tensor:
        return indices

    def before_noise(self, grads: torch.Tensor, clip_factors: Callable[[torch.Tensor], torch.Tensor]) -> None:
        return None

    def noise_std(self, std: float) -> float:
        return std

    def after_noise(self, grads: torch.Tensor) -> None:
        return None


class IndexBatchMemoryManager(BatchMemoryManager):
    """Opacus' BatchMemoryManager, yielding index tensors instead of a DataLoader of collated rows.

    For a tabular model the per-step cost of Opacus' list-based path (``tolist``, ``np.array_split``, collating
    rows) is a large share of a step, so for the single-process Poisson sampler the same work is done on tensors:
    one Poisson draw per logical step from the loader's generator (``draw``: by default
    :func:`~ppml.training.sampling.poisson_indices`, the same distribution over subsets as Opacus'
    ``torch.rand(n) < q`` in O(batch) instead of O(n); :func:`~ppml.training.sampling.bernoulli_indices` is
    Opacus' own draw), the same split (``torch.tensor_split`` == ``np.array_split``) and the same
    ``signal_skip_step`` protocol with the DPOptimizer as ``BatchSplittingSampler``. A test checks that with
    Opacus' draw the index sequences equal Opacus' own. Other samplers (distributed) use Opacus' path unchanged.
    """

    def __init__(
        self,
        *,
        data_loader: DataLoader,
        max_physical_batch_size: int,
        optimizer: Any,
        draw: Callable[[int, float, torch.Generator], torch.Tensor] = poisson_indices,
    ) -> None:
        super().__init__(data_loader=data_loader, max_physical_batch_size=max_physical_batch_size, optimizer=optimizer)
        self.draw = draw

    def __enter__(self) -> Iterator[torch.Tensor]:  # type: ignore[override]
        sampler = self.data_loader.batch_sampler
        if type(sampler) is UniformWithReplacementSampler:
            return self._tensor_batches(sampler)
        return (torch.as_tensor(indices, dtype=torch.long) for indices in super().__enter__().batch_sampler)

    def _tensor_batches(self, sampler: UniformWithReplacementSampler) -> Iterator[torch.Tensor]:
        signal = self.optimizer.signal_skip_step
        for _ in range(sampler.steps):
            indices = self.draw(sampler.num_samples, sampler.sample_rate, sampler.generator)
            if len(indices) <= self.max_physical_batch_size:
                signal(do_skip=False)
                yield indices
                continue
            parts = torch.tensor_split(indices, math.ceil(len(indices) / self.max_physical_batch_size))
            for part in parts[:-1]:
                signal(do_skip=True)
                yield part
            signal(do_skip=False)
            yield parts[-1]


class LeanAccumulate:
    """Opacus' fast-gradient-clipping optimizer deep-copies every gradient on each step (``copy.deepcopy``); a
    tensor clone gives the same values at a fraction of the Python overhead that dominates small tabular models."""

    def accumulate(self: Any) -> None:
        for p in self.params:
            if p.summed_grad is not None:
                p.summed_grad.add_(p.grad)
            else:
                p.summed_grad = p.grad.detach().clone()


def use_lean_accumulate(optimizer: Any) -> None:
    base = type(optimizer)
    optimizer.__class__ = type(f"Lean{base.__name__}", (LeanAccumulate, base), {})


class BookKeepingNoisyStep:
    """``DPOptimizerFastGradientClipping.step`` for single-process book-keeping, minus its per-step bookkeeping.

    Per physical batch Opacus' optimizer deep-copies ``p.grad`` into ``p.summed_grad`` (or adds it), pops the
    skip signal, and at the end of a logical batch sets ``p.grad = summed + N(0, (sigma C)^2)`` drawn per parameter
    from its noise generator, divides by the expected batch size, calls the step hook (the accountant) and steps
    the wrapped optimizer; ``zero_grad`` then drops every buffer. For a small model that Python and the
    allocations cost about as much as the arithmetic. Here book-keeping writes the clipped sums straight into
    ``p.grad`` buffers allocated once (overwrite on a logical batch's first physical batch, add on the later
    ones), and this class does the rest with the very same operations: the same skip queue, the same normal
    draws (same generator, parameter order, shapes and std: the same numbers), the same division, the same hook
    (so the accountant history, checkpoints and the ledger see exactly what Opacus' step records) and the same
    wrapped-optimizer step. A test checks the weights equal those of the Opacus optimizer path.
    """

    def __init__(
        self,
        optimizer: Any,
        hook: StepHook | None = None,
        clip_factors: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.hook, self.clip_factors = hook, clip_factors
        self.params: list[nn.Parameter] = list(optimizer.params)
        # One flat buffer for all clipped sums (p.grad are views of it) and one for the noise: the per-parameter
        # draws land in views of the noise buffer, and adding and dividing are one operation each.
        total = sum(p.numel() for p in self.params)
        reference = self.params[0]
        self._grads = torch.zeros(total, dtype=reference.dtype, device=reference.device)
        self._noise = torch.empty_like(self._grads)
        self._noise_views: list[torch.Tensor] = []
        offset = 0
        for p in self.params:
            p.grad = self._grads[offset : offset + p.numel()].view_as(p)
            self._noise_views.append(self._noise[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        self.accumulating = False  # True after a skipped (non-final) physical batch of a logical batch

    def step(self) -> bool:
        """Returns whether a noisy optimizer step was taken (False: the logical batch continues)."""
        optimizer = self.optimizer
        if optimizer._check_skip_next_step():
            optimizer._is_last_step_skipped = True
            self.accumulating = True
            return False
        hook = self.hook
        if hook is not None:
            hook.before_noise(self._grads, self.clip_factors)
        std = optimizer.noise_multiplier * optimizer.max_grad_norm
        if hook is not None:
            std = hook.noise_std(std)
        if std != 0:  # Opacus adds zeros without drawing when std == 0
            generator = optimizer.generator
            for noise in self._noise_views:  # Opacus' order and shapes: the same numbers from the same generator
                noise.normal_(0.0, std, generator=generator)
            self._grads.add_(self._noise)
        if hook is not None:
            hook.after_noise(self._grads)
        if optimizer.loss_reduction == "mean":
            self._grads.div_(optimizer.expected_batch_size * optimizer.accumulated_iterations)
        if optimizer.step_hook:
            optimizer.step_hook(optimizer)
        optimizer._is_last_step_skipped = False
        optimizer.original_optimizer.step()
        self.accumulating = False
        return True
