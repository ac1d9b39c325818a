"""The output projection and the label-smoothed loss in one pass, chunk by chunk (bf16 training
on the CPU; see docs/precision.md).

``linear_cross_entropy(h, W, gold, eps)`` equals ``smoothed_loss(h @ W.T, gold, eps)`` of
:mod:`agf_exp.evaluation` (summed over the non-pad gold tokens) without ever holding the
``[tokens, vocabulary]`` logits: rows are taken ``chunk_rows`` at a time, their logits computed in
the compute dtype (bf16: the matrix units), the log-softmax, the loss and its gradient in fp32,
and the gradients of ``h`` and ``W`` are accumulated during the forward pass (the loss is a
scalar, so the backward pass only scales them). Peak memory for the loss falls from a few
``tokens × vocabulary`` fp32 tensors (96 MB each at 3,000 tokens × 8,000 types) to one chunk's,
and the time lost to first-touch page faults on those fresh tensors goes with it (the
Liger-Kernel / "cut cross-entropy" idea, written here in plain PyTorch ops).
"""
from __future__ import annotations

import torch


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, gold, label_smoothing: float, pad_id: int, chunk_rows: int, dtype):
        n, vocab = hidden.shape[0], weight.shape[0]
        h = hidden.to(dtype)
        w = weight.to(dtype)
        needs_grad = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h) if needs_grad else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if needs_grad else None
        keep = gold.ne(pad_id)
        eps = float(label_smoothing)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for i in range(0, n, chunk_rows):
            hc, g, k = h[i:i + chunk_rows], gold[i:i + chunk_rows], keep[i:i + chunk_rows]
            logp = torch.log_softmax((hc @ w.t()).float(), dim=-1)  # [rows, V] in fp32
            nll = -logp.gather(1, g[:, None]).squeeze(1)
            smooth = -logp.sum(-1) / vocab
            total += torch.where(k, (1.0 - eps) * nll + eps * smooth, 0.0).sum()
            if needs_grad:
                # d loss / d logits = softmax - ((1 - eps) onehot(gold) + eps / V), zero at padding
                grad = logp.exp_().sub_(eps / vocab)
                grad.scatter_add_(1, g[:, None], grad.new_full((g.shape[0], 1), eps - 1.0))
                grad.mul_(k[:, None])
                grad = grad.to(dtype)
                grad_h[i:i + chunk_rows] = grad @ w
                grad_w += (grad.t() @ hc).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        h_dtype, w_dtype = ctx.dtypes
        gh = (grad_h.float() * grad_out).to(h_dtype) if ctx.needs_input_grad[0] else None
        gw = (grad_w * grad_out).to(w_dtype) if ctx.needs_input_grad[1] else None
        return gh, gw, None, None, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, gold: torch.Tensor, label_smoothing: float,
                         *, pad_id: int = 0, dtype: torch.dtype = torch.bfloat16, chunk_rows: int = 512) -> torch.Tensor:
    """Summed label-smoothed cross-entropy of the logits ``hidden @ weight.T`` over the gold tokens
    that are not ``pad_id``. ``hidden [..., D]`` (any leading shape), ``weight [V, D]`` (the
    generator's, fp32 master weights), ``gold [...]``; the projections run in ``dtype``, the
    softmax and the loss in fp32; the gradient of ``weight`` is accumulated in fp32."""
    h = hidden.reshape(-1, hidden.shape[-1])
    return _LinearCrossEntropy.apply(h, weight, gold.reshape(-1), label_smoothing, pad_id, chunk_rows, dtype)
