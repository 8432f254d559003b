"""Book-keeping clipping must give exactly Opacus' clipped gradient sum (hooks and ghost), in one backward pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from opacus.grad_sample import GradSampleModule
from opacus.grad_sample.grad_sample_module_fast_gradient_clipping import GradSampleModuleFastGradientClipping
from torch import nn

from ppml.training.book_keeping import BookKeepingClipper

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook")


def _model(seed: int, bias: bool = True) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(9, 16, bias=bias), nn.ReLU(), nn.Linear(16, 8, bias=bias), nn.Tanh(), nn.Linear(8, 2, bias=bias)
    )


def _batch(seed: int, n: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 9, generator=generator) * torch.linspace(0.1, 4.0, n).unsqueeze(1)  # mixed norms
    y = torch.randint(0, 2, (n,), generator=generator)
    return X, y


def _hooks_reference(model: nn.Sequential, X: torch.Tensor, y: torch.Tensor, C: float) -> list[torch.Tensor]:
    gsm = GradSampleModule(model, loss_reduction="sum")
    F.cross_entropy(gsm(X), y, reduction="sum").backward()
    params = [p for p in gsm.parameters() if p.requires_grad]
    norms = torch.stack([p.grad_sample.reshape(len(X), -1).norm(dim=1) for p in params], dim=1).norm(dim=1)
    factor = (C / (norms + 1e-6)).clamp(max=1.0)
    sums = [torch.einsum("i,i...->...", factor, p.grad_sample) for p in params]
    gsm._close()
    return sums


def _ghost_reference(model: nn.Sequential, X: torch.Tensor, y: torch.Tensor, C: float) -> list[torch.Tensor]:
    gsm = GradSampleModuleFastGradientClipping(model, loss_reduction="sum", max_grad_norm=C)
    loss_per_example = F.cross_entropy(gsm(X), y, reduction="none")
    loss_per_example.sum().backward(retain_graph=True)
    coefficient = gsm.get_clipping_coef()
    for p in gsm.parameters():
        p.grad = None
    gsm.disable_hooks()
    (coefficient * loss_per_example).sum().backward()
    sums = [p.grad.detach().clone() for p in gsm.parameters() if p.requires_grad]
    gsm._close()
    return sums


def _book_keeping(model: nn.Sequential, X: torch.Tensor, y: torch.Tensor, C: float) -> list[torch.Tensor]:
    clipper = BookKeepingClipper(model, C)
    clipper.backward(F.cross_entropy(clipper.forward(X), y, reduction="none"))
    return [p.grad.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("C", [0.05, 1.0, 100.0])
@pytest.mark.parametrize("bias", [True, False])
def test_clipped_sum_equals_opacus_hooks_and_ghost(C: float, bias: bool) -> None:
    X, y = _batch(seed=1)
    bk = _book_keeping(_model(0, bias), X, y, C)
    hooks = _hooks_reference(_model(0, bias), X, y, C)
    ghost = _ghost_reference(_model(0, bias), X, y, C)
    assert len(bk) == len(hooks) == len(ghost)
    for ours, reference_hooks, reference_ghost in zip(bk, hooks, ghost, strict=True):
        torch.testing.assert_close(ours, reference_hooks, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ours, reference_ghost, atol=1e-5, rtol=1e-5)


def test_norms_equal_per_example_gradient_norms_and_bound_each_contribution() -> None:
    X, y = _batch(seed=2, n=7)
    model = _model(3)
    clipper = BookKeepingClipper(model, 0.5)
    norms = clipper.backward(F.cross_entropy(clipper.forward(X), y, reduction="none"))
    for i in range(len(X)):  # brute force: one example at a time through plain autograd
        single = _model(3)
        F.cross_entropy(single(X[i : i + 1]), y[i : i + 1], reduction="sum").backward()
        full = torch.cat([p.grad.reshape(-1) for p in single.parameters()]).norm()
        assert norms[i].item() == pytest.approx(full.item(), rel=1e-5, abs=1e-6)


def test_empty_batch_gives_zero_gradients() -> None:
    model = _model(0)
    clipper = BookKeepingClipper(model, 1.0)
    X = torch.empty(0, 9)
    clipper.backward(F.cross_entropy(clipper.forward(X), torch.empty(0, dtype=torch.long), reduction="none"))
    assert all(torch.count_nonzero(p.grad) == 0 for p in model.parameters())
