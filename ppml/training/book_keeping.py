"""Book-keeping (BK) per-example clipping in one backward pass (Bu, Wang, Zha, Karypis, ICML 2023).

Opacus' ghost clipping needs two backward passes: one to get per-example gradient norms, one more on the
re-weighted loss to form the clipped sum. Book-keeping keeps ("books") each Linear layer's input activations
``a`` and output gradients ``g`` from the *single* backward pass and forms everything from them:

* per-example norm: for a Linear layer on 2-D input the per-example weight gradient is the outer product
  ``g_i a_i^T``, so ``||G_i||_F^2 = ||g_i||^2 ||a_i||^2`` (the ghost-norm identity), plus ``||g_i||^2`` for the bias;
* clip factor ``c_i = min(1, C / (||G_i|| + 1e-6))``, exactly Opacus' formula;
* clipped sum: ``sum_i c_i g_i a_i^T = (c * g)^T a`` -- one matrix product, the same cost as the ordinary
  weight gradient, which the backward pass therefore never computes (the layers run on detached weights, so
  autograd only forms the input gradients needed to keep back-propagating).

The result is written to ``p.grad`` (fresh tensors, or in place into buffers the training loop owns); the noise,
the division by the expected batch size and the accountant step are then Opacus' ``DPOptimizerFastGradientClipping``
(the optimizer ``make_private(grad_sample_mode="ghost")`` returns), or for single-process training
``ppml.training.dp_steps``' lean replica of its step with the very same noise draws. Tests check the clipped sum
against Opacus hooks and ghost clipping to 1e-5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class BookKeepingClipper:
    """Forward and single clipped backward for an ``nn.Sequential`` of Linear and parameter-free layers.

    Each Linear layer runs as ``F.linear`` on *detached* weight and bias, so autograd back-propagates through the
    layer to its input but never forms the ordinary weight gradient (the clipped sum replaces it); the layer's
    output keeps its gradient (``retain_grad``, or as a leaf for the first layer, whose input needs no gradient),
    which is the ``g`` book-keeping needs. This is plain autograd, without a Python ``autograd.Function`` per
    layer: on a small model that Python (twice per layer and step) cost as much as the layer's arithmetic.
    Activation row norms are taken in the forward pass, where the data is hot (or precomputed per record for the
    input layer)."""

    def __init__(self, model: nn.Sequential, max_grad_norm: float) -> None:
        self.model = model
        self.max_grad_norm = float(max_grad_norm)
        self._linear = [type(layer) is nn.Linear for layer in model]
        # per Linear layer of the current physical batch: (layer, input activation, output, ||a||^2 [+ 1 for bias])
        self._records: list[tuple[nn.Linear, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.last_norms: torch.Tensor | None = None

    def clip_factors(self, norms: torch.Tensor) -> torch.Tensor:
        """``min(1, C / (norm + 1e-6))`` per example: Opacus' formula, bit for bit (the audit's canaries use it too)."""
        return (self.max_grad_norm / (norms + 1e-6)).clamp_(max=1.0)

    def forward(self, x: torch.Tensor, input_sq_norms: torch.Tensor | None = None) -> torch.Tensor:
        """``input_sq_norms``: optional per-row ``||x||^2`` of ``x`` (precomputed once per data set)."""
        records = self._records
        records.clear()
        out = x
        for position, (layer, linear) in enumerate(zip(self.model, self._linear, strict=True)):
            if not linear:
                out = layer(out)
                continue
            activation = out.detach()
            if position == 0 and input_sq_norms is not None:
                sq_norms = input_sq_norms + 1.0 if layer.bias is not None else input_sq_norms
            else:
                sq_norms = torch.linalg.vector_norm(activation, dim=1).square_()
                if layer.bias is not None:
                    sq_norms.add_(1.0)  # ||g||^2 (||a||^2 + 1): weight and bias of this layer at once
            bias = layer.bias.detach() if layer.bias is not None else None
            out = F.linear(out, layer.weight.detach(), bias)
            if out.requires_grad:
                out.retain_grad()
            else:
                out.requires_grad_()  # first layer: a leaf whose .grad is this layer's g
            records.append((layer, activation, out, sq_norms))
        return out

    def backward(self, loss_per_example: torch.Tensor, *, accumulate: bool | None = None) -> torch.Tensor:
        """Back-propagate ``sum(loss_i)`` once, then write ``sum_i c_i grad_i`` into each parameter's ``.grad``.

        ``accumulate=None`` assigns fresh ``.grad`` tensors (what Opacus' optimizer expects). ``False`` / ``True``
        write into the existing ``.grad`` buffers in place -- overwrite them, or add to them (the later physical
        batches of one logical batch) -- so that a training loop that owns those buffers allocates nothing per step.
        Returns the per-example gradient norms before clipping (for diagnostics only; they are not private).
        """
        loss_per_example.sum().backward()
        records = self._records
        grads = []
        squared: torch.Tensor | None = None
        for _, _, output, factor in records:
            grad_output = output.grad
            if grad_output is None:  # an empty batch, or a layer the loss does not depend on
                grad_output = torch.zeros_like(output)
            grads.append(grad_output)
            g2 = torch.linalg.vector_norm(grad_output, dim=1).square_()
            squared = g2.mul_(factor) if squared is None else squared.addcmul_(g2, factor)
        if squared is None:
            squared = torch.zeros(loss_per_example.shape[0], device=loss_per_example.device)
        norms = squared.sqrt_()
        coefficient = self.clip_factors(norms)
        for (layer, activation, _, _), grad_output in zip(records, grads, strict=True):
            c = coefficient if coefficient.dtype == grad_output.dtype else coefficient.to(grad_output.dtype)
            scaled_t = grad_output.t() * c  # (out, batch): the clip factors folded into the smaller operand
            if accumulate is None:
                layer.weight.grad = torch.mm(scaled_t, activation)
                if layer.bias is not None:
                    layer.bias.grad = scaled_t.sum(dim=1)
            elif accumulate:
                layer.weight.grad.addmm_(scaled_t, activation)
                if layer.bias is not None:
                    layer.bias.grad.add_(scaled_t.sum(dim=1))
            else:
                torch.mm(scaled_t, activation, out=layer.weight.grad)
                if layer.bias is not None:
                    torch.sum(scaled_t, dim=1, out=layer.bias.grad)
        records.clear()
        self.last_norms = norms
        return norms
