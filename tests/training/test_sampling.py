"""Poisson sampling by geometric gaps must be exactly Poisson: the accountant's amplification assumes it."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from ppml.training.sampling import bernoulli_indices, poisson_indices

# Seeded: each check is deterministic; the thresholds would reject a wrong law with overwhelming probability.
P_MIN = 1e-4


@pytest.mark.parametrize("chunk", [None, 2])  # 2: the batch is assembled over many draws of the generator
def test_distribution_over_subsets_is_independent_inclusion(chunk: int | None) -> None:
    """Every subset S of range(n) appears with probability q^|S| (1 - q)^(n - |S|): the full joint law, so
    inclusion rate and independence between records at once."""
    n, q, draws = 4, 0.3, 40_000
    generator = torch.Generator().manual_seed(1)
    counts = dict.fromkeys(itertools.product((0, 1), repeat=n), 0)
    for _ in range(draws):
        mask = [0] * n
        for i in poisson_indices(n, q, generator, chunk=chunk).tolist():
            mask[i] = 1
        counts[tuple(mask)] += 1
    expected = [draws * q ** sum(s) * (1 - q) ** (n - sum(s)) for s in counts]
    assert stats.chisquare(list(counts.values()), expected).pvalue > P_MIN


@pytest.mark.parametrize("n,q", [(1000, 0.05), (27677, 1 / 109)])
def test_batch_sizes_are_binomial_and_every_record_is_included_at_rate_q(n: int, q: float) -> None:
    generator = torch.Generator().manual_seed(2)
    draws = 3000
    sizes = np.empty(draws, dtype=np.int64)
    inclusions = np.zeros(n, dtype=np.int64)
    for d in range(draws):
        indices = poisson_indices(n, q, generator)
        values = indices.numpy()
        assert values.dtype == np.int64 and (np.diff(values) > 0).all() and (len(values) == 0 or values[-1] < n)
        sizes[d] = len(values)
        inclusions[values] += 1
    # batch size ~ Binomial(n, q): chi-square on quantile bins of the exact law
    edges = stats.binom.ppf(np.linspace(0, 1, 11)[1:-1], n, q)
    bins = np.concatenate(([-1], edges, [n]))
    observed = np.histogram(sizes, bins=bins + 0.5)[0]
    expected = draws * np.diff(stats.binom.cdf(bins, n, q))
    assert stats.chisquare(observed, expected * observed.sum() / expected.sum()).pvalue > P_MIN
    # every record at rate q (a binomial test on the total, a spread check across records)
    assert stats.binomtest(int(inclusions.sum()), n * draws, q).pvalue > P_MIN
    assert inclusions.var() == pytest.approx(draws * q * (1 - q), rel=0.15)


def test_same_law_as_opacus_bernoulli_draw() -> None:
    """Batch sizes of the gap sampler and Opacus' ``rand(n) < q`` come from the same distribution."""
    n, q, draws = 500, 0.1, 4000
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(4)
    ours = [len(poisson_indices(n, q, g1)) for _ in range(draws)]
    theirs = [len(bernoulli_indices(n, q, g2)) for _ in range(draws)]
    assert stats.ks_2samp(ours, theirs).pvalue > P_MIN
    assert np.mean(ours) == pytest.approx(n * q, abs=4 * math.sqrt(n * q * (1 - q) / draws))


def test_edges_and_generator_state() -> None:
    generator = torch.Generator().manual_seed(5)
    assert torch.equal(poisson_indices(7, 1.0, generator), torch.arange(7))
    assert len(poisson_indices(0, 0.5, generator)) == 0 and len(poisson_indices(10, 0.0, generator)) == 0
    state = generator.get_state()
    first = [poisson_indices(300, 0.02, generator) for _ in range(20)]
    generator.set_state(state)  # a checkpoint restores the generator: the same batches follow
    assert all(torch.equal(a, poisson_indices(300, 0.02, generator)) for a in first)
