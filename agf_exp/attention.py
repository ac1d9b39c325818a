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
rotated first for rotary ones (RoPE). :func:`attention` is that reference; the fused backends
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

from .positional import AttnType, PosConfig, PosTable, PosTerms, build_mode

_SCO_EPS = 1e-6


class AttnBackend(str, enum.Enum):
    eager = "eager"  # reference: materialises the [Lq, Lk] logits; supports every mode and toggle
    sdpa = "sdpa"  # F.scaled_dot_product_attention: vanilla, RoPE and additive modes (float mask)
    flex = "flex"  # flex_attention with a score_mod: additive and multiplicative modes, PCM-V via lse
    auto = "auto"  # the fastest backend that is correct for the mode, device and training state


def backend_problem(backend: AttnBackend | str, mode_cls, pcmv: bool) -> Optional[str]:
    """Why ``backend`` cannot compute a positional mode class (``None``: no mode) with ``pcmv``;
    ``None`` when it can. ``auto`` never has a problem (it falls back to eager)."""
    backend = AttnBackend(backend)
    multiplicative = mode_cls is not None and mode_cls.multiplicative
    channelwise = mode_cls is not None and mode_cls.channelwise
    if backend == AttnBackend.sdpa and (multiplicative or channelwise or pcmv):
        return ("scaled_dot_product_attention takes only an additive float mask, so it cannot apply a "
                "multiplicative coefficient, a per-channel weight or PCM-V")
    if backend == AttnBackend.flex and channelwise:
        return "flex_attention's score_mod sees one scalar score, not the channels of q.k that LC3 weights"
    return None


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
        out = torch.einsum("bhmn,hmnc,bhnc->bhmc", weights, value_channel.float(), v.float()).to(out_dtype)
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


def relative_offsets(lq: int, lk: int, q_offset: int, device) -> torch.Tensor:
    """Signed offsets ``delta[m, n] = n - (q_offset + m)``: ``[Lq, Lk]``."""
    return torch.arange(lk, device=device)[None, :] - (torch.arange(lq, device=device)[:, None] + q_offset)


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
        problem = backend_problem(self.backend, type(self.pos) if self.pos is not None else None, self.pcmv)
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
        """The backend this call uses (``auto`` resolved for the device and training state)."""
        if self.backend != AttnBackend.auto:
            return self.backend
        mode_cls = type(self.pos) if self.pos is not None else None
        needs_scores = self.pcmv or (self.pos is not None and (self.pos.multiplicative or self.pos.channelwise))
        if not needs_scores:  # vanilla, RoPE, additive without PCM-V-Exp
            if device.type == "cuda" and self._relative() and not (self.training and self.dropout > 0):
                return AttnBackend.flex  # no [B, H, L, L] float mask
            return AttnBackend.sdpa
        flex_ok = backend_problem(AttnBackend.flex, mode_cls, self.pcmv) is None
        if device.type == "cuda" and flex_ok and not (self.training and self.dropout > 0):
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
            terms = self.pos.terms(relative_offsets(lq, lk, q_offset, q.device))
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
                terms = self.pos.terms(relative_offsets(q.shape[2], k.shape[2], q_offset, q.device))
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
            bias = self.pos.terms(relative_offsets(q.shape[2], k.shape[2], q_offset, q.device)).bias
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

    def _flex(self, q, k, v, key_padding_mask, q_offset):
        """flex_attention with a score_mod that reads the mode's O(H*L) table by relative offset:
        ``score * C + B``, masked keys to -inf. PCM-V by the log-sum-exp identity (notes, 1.9):
        with ``lse`` of the logits and ``lse'`` of the logits plus ``log V``, the output is
        ``O' * exp(lse' - lse)`` where ``O'`` is the attention output with the primed logits."""
        if q.device.type == "cpu" and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
            raise RuntimeError(
                f"model.attn_backend=flex: flex_attention in torch {torch.__version__} has no backward on CPU; "
                "train on CPU with model.attn_backend=auto (eager/sdpa), use flex there for inference only"
            )
        lq, lk = q.shape[2], k.shape[2]
        lo = -(q_offset + lq - 1)
        tab = self.pos.table(torch.arange(lo, lk, device=q.device)) if self._relative() else PosTable()
        coef = None if tab.log_coef is None else tab.log_coef.exp().float()
        bias = None if tab.bias is None else tab.bias.float()
        value_log = None
        if self.pcmv:
            parts = [t.float() for t in (tab.log_coef, tab.bias) if t is not None]
            value_log = parts[0] if len(parts) == 1 else parts[0] + parts[1]
        pad = key_padding_mask
        # table index of the offset kv - (q + q_offset) is kv - q - shift; both integers are
        # captured as tensors so a compiled kernel is not specialised (recompiled) per length/step
        shift = torch.tensor(q_offset + lo, device=q.device)
        causal, q_off = self.causal, torch.tensor(q_offset, device=q.device)
        neg_inf = float("-inf")

        def make_score_mod(extra):
            def score_mod(score, b, h, qi, ki):
                j = ki - qi - shift
                if coef is not None:
                    score = score * coef[h, j]
                if bias is not None:
                    score = score + bias[h, j]
                if extra is not None:
                    score = score + extra[h, j]
                if pad is not None:
                    score = torch.where(pad[b, ki], neg_inf, score)
                if causal:
                    score = torch.where(ki > qi + q_off, neg_inf, score)
                return score
            return score_mod

        scale = None
        if self.sco:
            k = k / k.float().norm(dim=-1, keepdim=True).clamp_min(_SCO_EPS).to(k.dtype)
            scale = 1.0
        if value_log is None:
            return _flex_call(q, k, v, make_score_mod(None), scale)
        out_p, lse_p = _flex_call(q, k, v, make_score_mod(value_log), scale, lse=True)
        _, lse = _flex_call(q, k, v, make_score_mod(None), scale, lse=True)
        return (out_p.float() * torch.exp(lse_p.float() - lse.float())[..., None]).to(v.dtype)


_COMPILED_FLEX = None


def _flex_call(q, k, v, score_mod, scale, lse: bool = False):
    """flex_attention, compiled on CUDA (the fused kernel) and run as PyTorch's reference
    implementation on CPU (forward only in torch 2.13)."""
    global _COMPILED_FLEX
    from torch.nn.attention import flex_attention as fa

    fn = fa.flex_attention
    if q.device.type == "cuda":
        if _COMPILED_FLEX is None:
            _COMPILED_FLEX = torch.compile(fa.flex_attention, dynamic=True)
        fn = _COMPILED_FLEX
    with warnings.catch_warnings():
        # on CPU the unfused reference is what we ask for (its warning says to compile)
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        if not lse:
            return fn(q, k, v, score_mod=score_mod, scale=scale)
        if hasattr(fa, "AuxRequest"):
            out, aux = fn(q, k, v, score_mod=score_mod, scale=scale, return_aux=fa.AuxRequest(lse=True))
            return out, aux.lse
        return fn(q, k, v, score_mod=score_mod, scale=scale, return_lse=True)
