"""Book-keeping (BK) per-example clipping in one backward pass (Bu, Wang, Zha, Karypis, ICML 2023).

Opacus' ghost clipping needs two backward passes: one to get per-example gradient norms, one more on the
re-weighted loss to form the clipped sum. Book-keeping keeps ("books") each Linear layer's input activations
``a`` and output gradients ``g`` from the *single* backward pass and forms everything from them:

* per-example norm: for a Linear layer on 2-D input the per-example weight gradient is the outer product
  ``g_i a_i^T``, so ``||G_i||_F^2 = ||g_i||^2 ||a_i||^2`` (the ghost-norm identity), plus ``||g_i||^2`` for the bias;
* clip factor ``c_i = min(1, C / (||G_i|| + 1e-6))``, exactly Opacus' formula;
* clipped sum: ``sum_i c_i g_i a_i^T = (c * g)^T a`` -- one matrix product, the same cost as the ordinary
  weight gradient, which the backward pass therefore never computes (the custom autograd function returns no
  weight gradient, only the input gradient needed to keep back-propagating).

The result is written to ``p.grad``; Opacus' ``DPOptimizerFastGradientClipping`` (the optimizer that
``make_private(grad_sample_mode="ghost")`` returns) then adds the Gaussian noise, scales by the expected batch
size and calls the accountant, so noise, sampling and accounting stay Opacus' own. Tests check the clipped sum
against Opacus hooks and ghost clipping to 1e-5.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class _Tape:
    """Per Linear layer of the current physical batch: activation, output gradient and their squared row norms."""

    def __init__(self) -> None:
        self.records: list[tuple[nn.Linear, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def clear(self) -> None:
        self.records.clear()


class _BookKeepingLinear(torch.autograd.Function):
    """Linear layer whose backward returns only the input gradient and books (activation, output gradient).

    Row norms are taken where the data is hot in cache -- the activation's in the forward pass (or precomputed
    per record for the input layer), the output gradient's as soon as autograd produces it -- because on CPU a
    second sweep over these matrices costs more than the arithmetic."""

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        weight: torch.Tensor,
        bias: torch.Tensor | None,
        layer: nn.Linear,
        tape: _Tape,
        x_sq_norms: torch.Tensor,
    ) -> torch.Tensor:
        ctx.save_for_backward(x, weight, x_sq_norms)
        ctx.layer = layer
        ctx.tape = tape
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None, None, None]:
        x, weight, x_sq_norms = ctx.saved_tensors
        g_sq_norms = torch.linalg.vector_norm(grad_output, dim=1).square_()
        ctx.tape.records.append((ctx.layer, x, grad_output, x_sq_norms, g_sq_norms))
        grad_input = grad_output @ weight if ctx.needs_input_grad[0] else None
        return grad_input, None, None, None, None, None


class BookKeepingClipper:
    """Forward and single clipped backward for an ``nn.Sequential`` of Linear and parameter-free layers."""

    def __init__(self, model: nn.Sequential, max_grad_norm: float) -> None:
        self.model = model
        self.max_grad_norm = float(max_grad_norm)
        self._tape = _Tape()
        self.last_norms: torch.Tensor | None = None

    def forward(self, x: torch.Tensor, input_sq_norms: torch.Tensor | None = None) -> torch.Tensor:
        """``input_sq_norms``: optional per-row ``||x||^2`` of ``x`` (precomputed once per data set)."""
        self._tape.clear()
        out = x
        for position, layer in enumerate(self.model):
            if type(layer) is nn.Linear:
                if position == 0 and input_sq_norms is not None:
                    sq_norms = input_sq_norms
                else:
                    sq_norms = torch.linalg.vector_norm(out.detach(), dim=1).square_()
                out = _BookKeepingLinear.apply(out, layer.weight, layer.bias, layer, self._tape, sq_norms)
            else:
                out = layer(out)
        return out

    def backward(self, loss_per_example: torch.Tensor) -> torch.Tensor:
        """Back-propagate ``sum(loss_i)`` once, then write ``sum_i c_i grad_i`` into each parameter's ``.grad``.

        Returns the per-example gradient norms before clipping (for diagnostics only; they are not private).
        """
        loss_per_example.sum().backward()
        records = self._tape.records
        squared: torch.Tensor | None = None
        for layer, _, _, a2, g2 in records:
            # ||g||^2 (||a||^2 + 1): weight and bias of this layer at once
            factor = a2 + 1.0 if layer.bias is not None else a2
            squared = g2 * factor if squared is None else squared.addcmul_(g2, factor)
        if squared is None:
            squared = torch.zeros(loss_per_example.shape[0], device=loss_per_example.device)
        norms = squared.sqrt_()
        coefficient = torch.clamp(self.max_grad_norm / (norms + 1e-6), max=1.0)
        for layer, activation, grad_output, _, _ in records:
            coefficient_cast = coefficient.to(grad_output.dtype)
            layer.weight.grad = torch.mm(grad_output.t() * coefficient_cast, activation)
            if layer.bias is not None:
                layer.bias.grad = coefficient_cast @ grad_output
        self._tape.clear()
        self.last_norms = norms
        return norms
