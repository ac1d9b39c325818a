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

with ``q . k`` weighted per channel by ``W[m, n, c]`` for channelwise modes (AGF-L) and q, k
rotated first for rotary ones (RoPE). The logits and the softmax are computed in fp32 even inside
an autocast region (autocast is switched off around them). :func:`attention` is that reference;
the fused backends
(SDPA with a float mask, flex_attention with a score_mod and the log-sum-exp identity for PCM-V)
must match it (``tests/test_backends.py``), and :func:`backend_problem` says which backend can
compute which combination.
"""
from __future__ import annotations

import enum
import math
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .positional import AttnType, PosConfig, PosTable, PosTerms, build_mode, offset_range, relative_offsets

__all__ = ["AttnBackend", "AttentionRecord", "FLEX_MIN_HEAD_DIM", "MultiHeadAttention", "attention",
           "backend_problem", "relative_offsets"]

_SCO_EPS = 1e-6
#: flex_attention's fused CUDA kernel (torch's inductor template) needs q, k and v heads of at
#: least this many channels ("NYI: embedding dimension ... must be at least 16")
FLEX_MIN_HEAD_DIM = 16


class AttnBackend(str, enum.Enum):
    eager = "eager"  # reference: materialises the [Lq, Lk] logits; supports every mode and toggle
    sdpa = "sdpa"  # F.scaled_dot_product_attention: vanilla, RoPE and additive modes (float mask)
    flex = "flex"  # flex_attention with a score_mod: additive and multiplicative modes, PCM-V via lse
    auto = "auto"  # the fastest backend that is correct for the mode, device and training state


def backend_problem(backend: AttnBackend | str, mode_cls, pcmv: bool, d_head: Optional[int] = None) -> Optional[str]:
    """Why ``backend`` cannot compute a positional mode class (``None``: no mode) with ``pcmv`` and
    heads of ``d_head`` channels; ``None`` when it can. ``auto`` never has a problem (it falls
    back to eager)."""
    backend = AttnBackend(backend)
    multiplicative = mode_cls is not None and mode_cls.multiplicative
    channelwise = mode_cls is not None and mode_cls.channelwise
    if backend == AttnBackend.sdpa and (multiplicative or channelwise or pcmv):
        return ("scaled_dot_product_attention takes only an additive float mask, so it cannot apply a "
                "multiplicative coefficient, a per-channel weight or PCM-V")
    if backend == AttnBackend.flex and channelwise:
        return "flex_attention's score_mod sees one scalar score, not the channels of q.k that LC3 weights"
    if backend == AttnBackend.flex and d_head is not None and d_head < FLEX_MIN_HEAD_DIM:
        return (f"flex_attention's fused kernel needs heads of at least {FLEX_MIN_HEAD_DIM} channels and "
                f"model.d_model / model.n_heads = {d_head}")
    return None


def _no_autocast(device: torch.device):
    """A region where autocast is off (logits and softmax stay in fp32 under bf16/fp16 training)."""
    return torch.autocast(device.type, enabled=False)


def _channel_scores(q: torch.Tensor, k: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
    """``sum_c q[b,h,m,c] k[b,h,n,c] W[h,m,n,c]``: a ``[B, H, Lq, Lk, d]`` product, computed in
    batch chunks of about 2^24 elements and, when training, recomputed in the backward pass
    (activation checkpointing) so that memory stays ``O(B H L^2)`` rather than ``O(B H L^2 d)``."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, channel)):
        return checkpoint(_channel_scores_chunked, q, k, channel, use_reentrant=False)
    return _channel_scores_chunked(q, k, channel)


def _channel_scores_chunked(q: torch.Tensor, k: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
    b, h, lq, d = q.shape
    step = max(1, (1 << 24) // max(1, h * lq * k.shape[2] * d))
    return torch.cat([torch.einsum("bhmc,bhnc,hmnc->bhmn", q[i:i + step], k[i:i + step], channel)
                      for i in range(0, b, step)])


def _channel_values(weights: torch.Tensor, value_channel: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``sum_n a[b,h,m,n] W[h,m,n,c] v[b,h,n,c]`` (PCM-V with AGF-L's channel weights): like
    :func:`_channel_scores`, chunked by batch and recomputed in the backward pass, so neither
    direction holds the ``[B, H, Lq, Lk, d]`` product."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (weights, value_channel, v)):
        return checkpoint(_channel_values_chunked, weights, value_channel, v, use_reentrant=False)
    return _channel_values_chunked(weights, value_channel, v)


def _channel_values_chunked(weights: torch.Tensor, value_channel: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    b, h, lq, lk = weights.shape
    step = max(1, (1 << 24) // max(1, h * lq * lk * v.shape[-1]))
    return torch.cat([torch.einsum("bhmn,hmnc,bhnc->bhmc", weights[i:i + step], value_channel, v[i:i + step])
                      for i in range(0, b, step)])


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    coef: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    channel: Optional[torch.Tensor] = None,
    value_coef: Optional[torch.Tensor] = None,
    value_channel: Optional[torch.Tensor] = None,
    sco: bool = False,
    key_padding_mask: Optional[torch.Tensor] = None,
    causal: bool = False,
    q_offset: int = 0,
    dropout_p: float = 0.0,
    return_probs: bool = False,
):
    """Reference attention.

    Shapes: ``q [B, H, Lq, Dk]``, ``k, v [B, H, Lk, Dk|Dv]``; ``coef``, ``bias``, ``value_coef``
    broadcast to ``[B, H, Lq, Lk]`` (usually ``[H, Lq, Lk]``); ``channel`` and ``value_channel``
    are ``[H, Lq, Lk, Dk|Dv]`` per-channel weights of the scores and the values (AGF-L);
    ``key_padding_mask [B, Lk]`` is True at padding. ``causal`` masks keys after the query, whose
    absolute position is ``q_offset + row`` (incremental decoding passes the number of cached
    steps). Returns ``[B, H, Lq, Dv]`` (and the attention probabilities if ``return_probs``).
    """
    with _no_autocast(q.device):
        return _attention_fp32(q, k, v, coef, bias, channel, value_coef, value_channel, sco, key_padding_mask,
                               causal, q_offset, dropout_p, return_probs)


def _attention_fp32(q, k, v, coef, bias, channel, value_coef, value_channel, sco, key_padding_mask, causal,
                    q_offset, dropout_p, return_probs):
    """:func:`attention`'s body, run with autocast off."""
    out_dtype = v.dtype
    qf, kf = q.float(), k.float()
    if sco:
        # Score calculation optimisation (paper Eq. 11): q.k / ||k|| instead of q.k / sqrt(d).
        kf = kf / kf.norm(dim=-1, keepdim=True).clamp_min(_SCO_EPS)
    if channel is None:
        scores = qf @ kf.transpose(-1, -2)
    else:
        scores = _channel_scores(qf, kf, channel.float())
    scores = _scale_and_position(scores, q.shape[-1], sco, coef, bias)
    mask = _mask(key_padding_mask, causal, q.shape[-2], k.shape[-2], q_offset, q.device)
    if mask is not None:
        scores = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
    probs = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    weights = probs if value_coef is None else probs * value_coef.float()
    if value_channel is None:
        out = weights.to(out_dtype) @ v
    else:
        out = _channel_values(weights, value_channel.float(), v.float()).to(out_dtype)
    return (out, probs) if return_probs else out


def _scale_and_position(scores: torch.Tensor, d: int, sco: bool, coef: Optional[torch.Tensor],
                        bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``q.k`` scores to logits: ``/ sqrt(d)`` (not with SCO, whose keys are already normalised),
    then ``* C + B``."""
    if not sco:
        scores = scores / math.sqrt(d)
    if coef is not None:
        scores = scores * coef.float()
    if bias is not None:
        scores = scores + bias.float()
    return scores


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


@dataclass
class AttentionRecord:
    """What one attention call passes to an analysis recorder (``MultiHeadAttention.recorder``)."""

    module: "MultiHeadAttention"
    probs: torch.Tensor  # [B, H, Lq, Lk] attention probabilities (after masking and softmax)
    key_padding_mask: Optional[torch.Tensor]  # [B, Lk], True at padding
    q_offset: int
    q: Optional[torch.Tensor] = None  # [B, H, Lq, d] queries before any rotary embedding
    k: Optional[torch.Tensor] = None  # [B, H, Lk, d] keys before rotary (None when keys came from a cache)

    def logits(self, key_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The module's logits for this call, optionally with key contents moved (see
        :meth:`MultiHeadAttention.logits`)."""
        if self.k is None:
            raise ValueError("this attention call used cached keys; record a full (teacher-forced) pass")
        return self.module.logits(self.q, self.k, self.key_padding_mask, self.q_offset, key_index)


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
        if self.pcmv and not self.pos.supports_value_coefficient():
            raise ValueError(
                f"pcmv=true is not defined for pos={pos_cfg.name}: PCM-V scales values by a "
                "multiplicative coefficient (or exp of an additive bias) and this mode has neither. "
                "Use pcmv=false, or a mode such as pos=agf or pos=agf_m."
            )
        self.backend = AttnBackend(backend)
        problem = backend_problem(self.backend, type(self.pos) if self.pos is not None else None, self.pcmv,
                                  self.d_head)
        if problem:
            raise ValueError(f"model.attn_backend={self.backend.value} cannot run pos={pos_cfg.name} "
                             f"pcmv={pcmv}: {problem}; use model.attn_backend=eager or auto")
        if self.backend == AttnBackend.flex and dropout > 0:
            raise ValueError(f"model.attn_backend=flex has no attention dropout (model.attn_dropout={dropout}); "
                             "set model.attn_dropout=0 or use model.attn_backend=auto")
        # analysis hook (agf_exp.analysis): when set, every call runs the eager path and passes an
        # AttentionRecord (probabilities, masks, pre-rotary q and k) to it
        self.recorder: Optional[Callable[[AttentionRecord], None]] = None

    # ---- which kernel ----------------------------------------------------------------------------

    def _relative(self) -> bool:
        return self.pos is not None and self.pos.relative

    def resolve_backend(self, device: torch.device) -> AttnBackend:
        """The backend this call uses (``auto`` resolved for the device and training state): flex
        only on CUDA, where its kernel is fused, for heads it can take and without attention
        dropout (which it does not have)."""
        if self.backend != AttnBackend.auto:
            return self.backend
        mode_cls = type(self.pos) if self.pos is not None else None
        needs_scores = self.pcmv or (self.pos is not None and (self.pos.multiplicative or self.pos.channelwise))
        flex_ok = (device.type == "cuda" and not (self.training and self.dropout > 0)
                   and backend_problem(AttnBackend.flex, mode_cls, self.pcmv, self.d_head) is None)
        if not needs_scores:  # vanilla, RoPE, additive without PCM-V-Exp
            if flex_ok and self._relative():
                return AttnBackend.flex  # no [B, H, L, L] float mask
            return AttnBackend.sdpa
        if flex_ok:
            return AttnBackend.flex
        return AttnBackend.eager

    # ---- forward ---------------------------------------------------------------------------------

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, l, _ = x.shape
        return x.view(b, l, self.n_heads, self.d_head).transpose(1, 2)

    def _positions(self, start: int, length: int, device) -> torch.Tensor:
        return torch.arange(start, start + length, device=device)

    @torch.no_grad()
    def logits(self, q: torch.Tensor, k: torch.Tensor, key_padding_mask: Optional[torch.Tensor] = None,
               q_offset: int = 0, key_index: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The attention logits ``[B, H, Lq, Lk]`` (fp32, masked keys at ``-inf``) of this module for
        content vectors ``q [B, H, Lq, d]`` and ``k [B, H, Lk, d]`` taken *before* any rotary
        embedding (as in :class:`AttentionRecord`), computed as the eager path does.

        ``key_index [B, Lq, Lk]`` (analysis): for query ``m`` the key content at position ``n`` is
        ``k[..., key_index[b, m, n], :]`` while every position stays where it is: the positional
        terms, the rotation and the masks are those of position ``n``. This is how
        ``agf_exp.analysis.heads`` permutes key contents among positions."""
        with _no_autocast(q.device):
            return self._logits_fp32(q, k, key_padding_mask, q_offset, key_index)

    def _logits_fp32(self, q, k, key_padding_mask, q_offset, key_index) -> torch.Tensor:
        rotary = self.pos is not None and self.pos.rotary
        lq, lk, d = q.shape[2], k.shape[2], q.shape[3]
        qf, kf = q.float(), k.float()
        key_start = 0 if self.attn_type == AttnType.cross else q_offset
        if rotary:
            qf = self.pos.rotate(qf, self._positions(q_offset, lq, q.device))
        if key_index is not None:  # [B, H, Lq, Lk, d]: the content placed at each (query, key position)
            b, h = kf.shape[:2]
            idx = key_index[:, None, :, :, None].expand(b, h, lq, lk, d)
            kf = torch.gather(kf[:, :, None].expand(b, h, lq, lk, d), 3, idx)
        if rotary:
            kf = self.pos.rotate(kf, self._positions(key_start, lk, k.device))
        if self.sco:
            kf = kf / kf.norm(dim=-1, keepdim=True).clamp_min(_SCO_EPS)
        terms = PosTerms()
        if self._relative():
            terms = self.pos.relative_terms(lq, lk, q_offset, q.device)
        if key_index is None:
            scores = qf @ kf.transpose(-1, -2) if terms.channel is None else \
                _channel_scores_chunked(qf, kf, terms.channel.float())
        elif terms.channel is None:
            scores = torch.einsum("bhmc,bhmnc->bhmn", qf, kf)
        else:
            scores = torch.einsum("bhmc,bhmnc,hmnc->bhmn", qf, kf, terms.channel.float())
        scores = _scale_and_position(scores, d, self.sco, terms.coef, terms.bias)
        mask = _mask(key_padding_mask, self.causal, lq, lk, q_offset, q.device)
        return scores if mask is None else scores.masked_fill(mask, float("-inf"))

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
        projected memory once. Rotary modes rotate keys before they are cached."""
        rotary = self.pos is not None and self.pos.rotary
        q = self._split(self.q_proj(x))
        q_content, k_content = q, None  # before rotary, for analysis recorders
        if rotary:
            q = self.pos.rotate(q, self._positions(q_offset, q.shape[2], q.device))
        if self.attn_type == AttnType.cross:
            if cache is not None and "k" in cache:
                k, v = cache["k"], cache["v"]
            else:
                k, v = self._split(self.k_proj(memory)), self._split(self.v_proj(memory))
                k_content = k
                if rotary:
                    k = self.pos.rotate(k, self._positions(0, k.shape[2], k.device))
                if cache is not None:
                    cache["k"], cache["v"] = k, v
        else:
            k, v = self._split(self.k_proj(x)), self._split(self.v_proj(x))
            k_content = k if cache is None else None
            if rotary:
                k = self.pos.rotate(k, self._positions(q_offset, k.shape[2], k.device))
            if cache is not None:
                if "k" in cache:
                    if cache["k"].shape[2] != q_offset:
                        raise ValueError(f"cache holds {cache['k'].shape[2]} steps but q_offset={q_offset}")
                    k = torch.cat([cache["k"], k], dim=2)
                    v = torch.cat([cache["v"], v], dim=2)
                cache["k"], cache["v"] = k, v

        dropout_p = self.dropout if self.training else 0.0
        want_probs = return_probs or self.recorder is not None
        backend = AttnBackend.eager if want_probs else self.resolve_backend(q.device)
        probs = None
        if backend == AttnBackend.eager:
            terms = PosTerms()
            if self._relative():
                terms = self.pos.relative_terms(q.shape[2], k.shape[2], q_offset, q.device)
            value_coef = value_channel = None
            if self.pcmv:
                value_coef = terms.coef
                if terms.bias is not None:
                    value_coef = terms.bias.exp() if value_coef is None else value_coef * terms.bias.exp()
                if self.pos.channel_values:
                    value_channel = terms.channel
            out = attention(
                q, k, v, coef=terms.coef, bias=terms.bias, channel=terms.channel, value_coef=value_coef,
                value_channel=value_channel, sco=self.sco, key_padding_mask=key_padding_mask,
                causal=self.causal, q_offset=q_offset, dropout_p=dropout_p, return_probs=want_probs,
            )
            out, probs = out if want_probs else (out, None)
            if self.recorder is not None:
                self.recorder(AttentionRecord(
                    self, probs.detach(), key_padding_mask, q_offset, q_content.detach(),
                    None if k_content is None else k_content.detach()))
        elif backend == AttnBackend.sdpa:
            out = self._sdpa(q, k, v, key_padding_mask, q_offset, dropout_p)
        else:
            out = self._flex(q, k, v, key_padding_mask, q_offset)
        b, _, lq, _ = out.shape
        out = self.out_proj(out.transpose(1, 2).reshape(b, lq, self.n_heads * self.d_head))
        return (out, probs) if return_probs else out

    def _sdpa(self, q, k, v, key_padding_mask, q_offset, dropout_p):
        mask = _mask(key_padding_mask, self.causal, q.shape[2], k.shape[2], q_offset, q.device)
        bias = None
        if self._relative():
            bias = self.pos.relative_terms(q.shape[2], k.shape[2], q_offset, q.device).bias
        attn_mask = None
        if bias is not None:
            attn_mask = bias.to(q.dtype)[None]
            if mask is not None:
                attn_mask = attn_mask.masked_fill(mask, float("-inf"))
        elif mask is not None:
            attn_mask = ~mask
        scale = None
        if self.sco:
            k, scale = _sco_keys(k), 1.0
        return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)

    def _flex(self, q, k, v, key_padding_mask, q_offset):
        """flex_attention with a score_mod that reads the mode's O(H*L) table by relative offset:
        ``score * C + B``, masked keys to -inf. PCM-V by the log-sum-exp identity:
        with ``lse`` of the logits and ``lse'`` of the logits plus ``log V``, the output is
        ``O' * exp(lse' - lse)`` where ``O'`` is the attention output with the primed logits; the
        second pass only needs ``lse``, so it runs on the first ``FLEX_MIN_HEAD_DIM`` value channels.

        The score_mod has the same shape on every call (see :func:`_flex_call`): every table is
        present (ones/zeros when a mode lacks it; the 1/sqrt(d) scale folded into ``C``), and the
        offset shift, the query offset, the padding and the causal flag are device tensors made
        without a host copy, so the compiled kernel is not specialised per length, step or layer."""
        if q.device.type == "cpu" and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
            raise RuntimeError(
                f"model.attn_backend=flex: flex_attention in torch {torch.__version__} has no backward on CPU; "
                "train on CPU with model.attn_backend=auto (eager/sdpa), use flex there for inference only"
            )
        b, lq, lk, device = q.shape[0], q.shape[2], k.shape[2], q.device
        span = offset_range(lq, lk, q_offset)
        tab = self.pos.table(torch.arange(span.start, span.stop, device=device)) if self._relative() else PosTable()
        scale = 1.0 if self.sco else 1.0 / math.sqrt(q.shape[-1])
        # separate contiguous [H, R] fp32 tables on every call (dynamo guards on strides and aliasing)
        coef = torch.full((self.n_heads, len(span)), scale, device=device) if tab.log_coef is None else \
            _dense(tab.log_coef.float().exp() * scale)
        bias = torch.zeros_like(coef) if tab.bias is None else _dense(tab.bias.float())
        value_log = None
        if self.pcmv:
            parts = [t.float() for t in (tab.log_coef, tab.bias) if t is not None]
            value_log = sum(parts, torch.zeros_like(coef))  # a tensor of its own (dynamo guards on aliasing)
        pad = torch.zeros(b, lk, dtype=torch.bool, device=device) if key_padding_mask is None else \
            _dense(key_padding_mask)
        # the table index of offset ki - (qi + q_offset) is ki - qi - shift
        shift = torch.full((), span.start + q_offset, dtype=torch.long, device=device)
        q_off = torch.full((), q_offset, dtype=torch.long, device=device)
        causal = torch.full((), self.causal, dtype=torch.bool, device=device)
        neg_inf = float("-inf")

        def make_score_mod(extra):
            def score_mod(score, b, h, qi, ki):
                j = ki - qi - shift
                score = score * coef[h, j] + bias[h, j] + extra[h, j]
                masked = pad[b, ki] | (causal & (ki > qi + q_off))
                return torch.where(masked, neg_inf, score)
            return score_mod

        if self.sco:
            k = _sco_keys(k)
        out, lse_p = _flex_call(q, k, v, make_score_mod(torch.zeros_like(coef) if value_log is None else value_log))
        if value_log is None:
            return out
        _, lse = _flex_call(q, k, v[..., :FLEX_MIN_HEAD_DIM], make_score_mod(torch.zeros_like(coef)))
        return (out.float() * torch.exp(lse_p.float() - lse.float())[..., None]).to(v.dtype)


def _sco_keys(k: torch.Tensor) -> torch.Tensor:
    """SCO's keys for the fused paths: ``k / ||k||`` (norm in fp32), in ``k``'s dtype."""
    return k / k.float().norm(dim=-1, keepdim=True).clamp_min(_SCO_EPS).to(k.dtype)


#: torch.compile backend of flex_attention per device type: CUDA compiles the fused kernel; a
#: device without an entry runs PyTorch's unfused reference (on CPU: forward only, torch 2.13).
#: The tests add ``"cpu": "eager"`` to count dynamo's recompiles of our score_mod without a GPU.
FLEX_COMPILE: Dict[str, str] = {"cuda": "inductor"}
#: dynamo's recompile limit while flex_attention compiles (its default, 8, is process-wide): the
#: variants are few but more than one per grad mode (a single decoding query or key is
#: specialised, self- and cross-attention lengths differ, dtypes); tests show how many
FLEX_RECOMPILE_LIMIT = 64
_COMPILED: Dict[str, Callable] = {}


def _flex_call(q, k, v, score_mod):
    """``(output, lse)`` of flex_attention (scale 1: :meth:`MultiHeadAttention._flex` folds it
    into the score_mod). One compiled function serves every call: the score_mod's closure has one
    shape (dense tensors only), so dynamo's guards differ only by grad mode, dtype and a decoding
    step's single query or key (3 variants without grad, tested), far below the recompile limit;
    past that limit it would silently run the unfused reference, which
    materialises ``[B, H, Lq, Lk]``, so its warning is never filtered here (tests and
    ``benchmarks/attention.py`` set ``torch._dynamo.config.fail_on_recompile_limit_hit``)."""
    from torch.nn.attention import flex_attention as fa

    backend = FLEX_COMPILE.get(q.device.type)
    if backend is None:
        with warnings.catch_warnings():
            # the unfused reference is what we ask for here (its warning says to compile)
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return _flex_with_lse(fa, fa.flex_attention, q, k, v, score_mod)
    import torch._dynamo
    import torch.fx.experimental._config as fx_config

    if backend not in _COMPILED:
        _COMPILED[backend] = torch.compile(fa.flex_attention, dynamic=True, backend=backend)
    q, k, v = (_dense(t) for t in (q, k, v))
    # no duck sizing: self-attention's equal query and key lengths are not a variant of their own
    with torch._dynamo.config.patch(recompile_limit=max(FLEX_RECOMPILE_LIMIT, torch._dynamo.config.recompile_limit)), \
            fx_config.patch(use_duck_shape=False):
        return _flex_with_lse(fa, _COMPILED[backend], q, k, v, score_mod)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` with row-major strides, also for its size-1 dims (a decoding step's single query):
    dynamo guards on exact strides, which ``contiguous()`` leaves alone there."""
    strides, step = [], 1
    for size in reversed(t.shape):
        strides.append(step)
        step *= max(size, 1)
    return t if t.stride() == tuple(reversed(strides)) else t.clone(memory_format=torch.contiguous_format)


def _flex_with_lse(fa, fn, q, k, v, score_mod):
    if hasattr(fa, "AuxRequest"):
        out, aux = fn(q, k, v, score_mod=score_mod, scale=1.0, return_aux=fa.AuxRequest(lse=True))
        return out, aux.lse
    return fn(q, k, v, score_mod=score_mod, scale=1.0, return_lse=True)
