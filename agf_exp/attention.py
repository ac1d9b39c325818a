"""Multi-head attention with a pluggable positional mode, PCM-V and SCO.

The reference ("eager") computation, for one head, query m and key n:

    s[m, n]   = q_m . k_n / sqrt(d_k)          (SCO: q_m . k_n / ||k_n||)
    logit     = s * C[m, n] + B[m, n]          (C: multiplicative mode, B: additive mode)
    logit     = -inf-like fill where the key is padding or in the future (AFTER s*C + B, so a
                coefficient can never bring a masked key back)
    a         = softmax_n(logit)               (in fp32)
    o_m       = sum_n a[m, n] * V[m, n] * v_n  (V = 1, or with PCM-V: V = C for multiplicative
                                                modes, exp(B) for additive ones, the paper's
                                                PCM-V-Exp; no renormalisation)
"""
from __future__ import annotations

import enum
import math
from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .positional import AttnType, PosConfig, build_mode

_SCO_EPS = 1e-6


class AttnBackend(str, enum.Enum):
    eager = "eager"  # reference: materialises the [Lq, Lk] logits; supports everything
    sdpa = "sdpa"  # torch scaled_dot_product_attention: no multiplicative coefficient, no PCM-V
    auto = "auto"  # sdpa where it applies, eager otherwise


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    coef: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    value_coef: Optional[torch.Tensor] = None,
    sco: bool = False,
    key_padding_mask: Optional[torch.Tensor] = None,
    causal: bool = False,
    q_offset: int = 0,
    dropout_p: float = 0.0,
    return_probs: bool = False,
):
    """Reference attention.

    Shapes: ``q [B, H, Lq, Dk]``, ``k, v [B, H, Lk, Dk|Dv]``; ``coef``, ``bias``, ``value_coef``
    broadcast to ``[B, H, Lq, Lk]`` (usually ``[H, Lq, Lk]``); ``key_padding_mask [B, Lk]`` is True
    at padding. ``causal`` masks keys after the query, whose absolute position is
    ``q_offset + row`` (incremental decoding passes the number of cached steps).
    Returns ``[B, H, Lq, Dv]`` (and the attention probabilities if ``return_probs``).
    """
    out_dtype = v.dtype
    qf, kf = q.float(), k.float()
    if sco:
        # Score calculation optimisation (paper Eq. 11): q.k / ||k|| instead of q.k / sqrt(d).
        kf = kf / kf.norm(dim=-1, keepdim=True).clamp_min(_SCO_EPS)
        scores = qf @ kf.transpose(-1, -2)
    else:
        scores = (qf @ kf.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if coef is not None:
        scores = scores * coef.float()
    if bias is not None:
        scores = scores + bias.float()
    mask = _mask(key_padding_mask, causal, q.shape[-2], k.shape[-2], q_offset, q.device)
    if mask is not None:
        scores = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
    probs = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    weights = probs if value_coef is None else probs * value_coef.float()
    out = (weights.to(out_dtype) @ v)
    return (out, probs) if return_probs else out


def _mask(key_padding_mask, causal, lq, lk, q_offset, device) -> Optional[torch.Tensor]:
    """Boolean mask broadcastable to [B, H, Lq, Lk], True where attention is forbidden."""
    mask = None
    if key_padding_mask is not None:
        mask = key_padding_mask[:, None, None, :]
    if causal:
        q_pos = torch.arange(lq, device=device)[:, None] + q_offset
        future = torch.arange(lk, device=device)[None, :] > q_pos
        mask = future if mask is None else (mask | future)
    return mask


def relative_offsets(lq: int, lk: int, q_offset: int, device) -> torch.Tensor:
    """Signed offsets ``delta[m, n] = n - (q_offset + m)``: ``[Lq, Lk]``."""
    return torch.arange(lk, device=device)[None, :] - (torch.arange(lq, device=device)[:, None] + q_offset)


class MultiHeadAttention(nn.Module):
    """One attention module (encoder self, decoder self, or cross) with its own positional mode.

    The Q/K/V/output projections have no bias (as in OpenNMT-py's Transformer).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        attn_type: AttnType,
        pos_cfg: PosConfig,
        *,
        pcmv: bool = False,
        sco: bool = False,
        dropout: float = 0.0,
        backend: AttnBackend = AttnBackend.auto,
    ):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads, self.d_head = n_heads, d_model // n_heads
        self.attn_type = AttnType(attn_type)
        self.causal = self.attn_type == AttnType.dec
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.out_proj = nn.Linear(d_model, d_model, bias=False)
        self.dropout = dropout
        self.sco = sco
        applies = self.attn_type in [AttnType(a) for a in pos_cfg.apply_to]
        self.pos = build_mode(pos_cfg, n_heads, self.d_head, self.attn_type) if applies else None
        self.pcmv = pcmv and self.pos is not None
        if self.pcmv and not self.pos.supports_value_coefficient:
            raise ValueError(
                f"pcmv=true is not defined for pos={pos_cfg.name}: PCM-V scales values by a "
                "multiplicative coefficient (or exp of an additive bias) and this mode has neither. "
                "Use pcmv=false, or a mode such as pos=agf or pos=agf_m."
            )
        self.backend = AttnBackend(backend)
        uses_eager_only = self.pcmv or (self.pos is not None and self.pos.multiplicative)
        if self.backend == AttnBackend.sdpa and uses_eager_only:
            raise ValueError(
                f"model.attn_backend=sdpa cannot compute a multiplicative coefficient or PCM-V "
                f"(pos={pos_cfg.name}, pcmv={pcmv}); use model.attn_backend=eager or auto"
            )
        self.use_sdpa = self.backend != AttnBackend.eager and not uses_eager_only

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, l, _ = x.shape
        return x.view(b, l, self.n_heads, self.d_head).transpose(1, 2)

    def forward(
        self,
        x: torch.Tensor,
        memory: Optional[torch.Tensor] = None,
        key_padding_mask: Optional[torch.Tensor] = None,
        cache: Optional[Dict[str, torch.Tensor]] = None,
        q_offset: int = 0,
        return_probs: bool = False,
    ):
        """``x [B, Lq, D]``; ``memory [B, Lk, D]`` for cross-attention. ``q_offset`` is the absolute
        position of the first query (incremental decoding). ``cache`` (decoding only) is a dict this
        module fills: self-attention appends the new keys/values, cross-attention stores the
        projected memory once."""
        q = self._split(self.q_proj(x))
        if self.attn_type == AttnType.cross:
            if cache is not None and "k" in cache:
                k, v = cache["k"], cache["v"]
            else:
                k, v = self._split(self.k_proj(memory)), self._split(self.v_proj(memory))
                if cache is not None:
                    cache["k"], cache["v"] = k, v
        else:
            k, v = self._split(self.k_proj(x)), self._split(self.v_proj(x))
            if cache is not None:
                if "k" in cache:
                    if cache["k"].shape[2] != q_offset:
                        raise ValueError(f"cache holds {cache['k'].shape[2]} steps but q_offset={q_offset}")
                    k = torch.cat([cache["k"], k], dim=2)
                    v = torch.cat([cache["v"], v], dim=2)
                cache["k"], cache["v"] = k, v

        coef = bias = value_coef = None
        if self.pos is not None:
            delta = relative_offsets(q.shape[2], k.shape[2], q_offset, q.device)
            coef, bias = self.pos.terms(delta)
            if self.pcmv:
                value_coef = coef if coef is not None else None
                if bias is not None:
                    value_coef = bias.exp() if value_coef is None else value_coef * bias.exp()
        dropout_p = self.dropout if self.training else 0.0

        if self.use_sdpa and not return_probs:
            out = self._sdpa(q, k, v, bias, key_padding_mask, q_offset, dropout_p)
            probs = None
        else:
            out = attention(
                q, k, v, coef=coef, bias=bias, value_coef=value_coef, sco=self.sco,
                key_padding_mask=key_padding_mask, causal=self.causal, q_offset=q_offset,
                dropout_p=dropout_p, return_probs=return_probs,
            )
            out, probs = out if return_probs else (out, None)
        b, _, lq, _ = out.shape
        out = self.out_proj(out.transpose(1, 2).reshape(b, lq, self.n_heads * self.d_head))
        return (out, probs) if return_probs else out

    def _sdpa(self, q, k, v, bias, key_padding_mask, q_offset, dropout_p):
        mask = _mask(key_padding_mask, self.causal, q.shape[2], k.shape[2], q_offset, q.device)
        attn_mask = None
        if bias is not None:
            attn_mask = bias.to(q.dtype)[None]
            if mask is not None:
                attn_mask = attn_mask.masked_fill(mask, float("-inf"))
        elif mask is not None:
            attn_mask = ~mask
        scale = None
        if self.sco:
            k = k / k.float().norm(dim=-1, keepdim=True).clamp_min(_SCO_EPS).to(k.dtype)
            scale = 1.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)
