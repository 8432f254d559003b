"""Poisson sampling of one logical batch in time proportional to the batch, not to the data set.

DP-SGD's accountant assumes Poisson subsampling: every record joins each logical batch independently with
probability ``q``. Opacus draws one uniform per record per step (``torch.rand(n) < q``), which costs O(n) per step
however small the batch -- on Adult at batch 256 that draw alone is about a third of a non-private step.

:func:`poisson_indices` draws the *same distribution over subsets* from the gaps between selected records
instead. In a sequence of independent Bernoulli(q) trials the numbers of failures before each success are
independent Geometric(q) variables, ``P(K = k) = (1 - q)^k q``, and ``K = floor(log(V) / log(1 - q))`` for
``V`` uniform on (0, 1] has exactly that law (``P(K >= k) = P(V <= (1 - q)^k) = (1 - q)^k``). Summing gaps until
they pass ``n`` therefore yields the successes of ``n`` Bernoulli(q) trials -- each record included independently
with probability ``q``; the batch size is Binomial(n, q) -- using about ``n q`` uniforms. The uniforms are
float64 (53 random bits; the float32 ``rand < q`` of Opacus rounds ``q`` to a multiple of 2^-24), and they come
from the sampler's own generator, so checkpoints that save its state resume the same batches.
"""

from __future__ import annotations

import math

import torch


def poisson_indices(n: int, q: float, generator: torch.Generator, *, chunk: int | None = None) -> torch.Tensor:
    """Sorted indices in ``range(n)``, each included independently with probability ``q`` (geometric gaps).

    ``chunk``: uniforms drawn at a time (default: enough for the whole batch but with probability ~1e-9)."""
    if n <= 0 or q <= 0.0:
        return torch.empty(0, dtype=torch.long)
    if q >= 1.0:
        return torch.arange(n, dtype=torch.long)
    log_keep = math.log1p(-q)
    expected = n * q
    # One draw covers the batch with probability > 1 - 1e-9 (mean + 6 sd of the Binomial, plus slack); the loop
    # only continues, with fresh uniforms from the same generator, in the rare case it does not.
    if chunk is None:
        chunk = int(expected + 6.0 * math.sqrt(expected * (1.0 - q)) + 16)
    parts: list[torch.Tensor] = []
    last = -1
    while True:
        uniform = torch.rand(chunk, dtype=torch.float64, generator=generator)
        # 1 - U is uniform on (0, 1]: log1p(-U) = log(1 - U) is finite, and the gap K + 1 >= 1.
        gaps = torch.log1p(uniform.neg_()).div_(log_keep).floor_().add_(1.0)
        positions = gaps.cumsum_(0).add_(float(last)).to(torch.long)
        if int(positions[-1]) >= n:
            parts.append(positions[: int(torch.searchsorted(positions, n))])
            break
        parts.append(positions)
        last = int(positions[-1])
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def bernoulli_indices(n: int, q: float, generator: torch.Generator) -> torch.Tensor:
    """Opacus' own draw (``UniformWithReplacementSampler``): one float32 uniform per record, O(n) per step."""
    mask = torch.rand(n, generator=generator) < q
    return mask.nonzero(as_tuple=False).reshape(-1)
