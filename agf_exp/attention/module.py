"""Multi-head attention with a pluggable positional mode, PCM-V and SCO: the projections, the
key/value cache of incremental decoding, the positional mode of this module and the analysis
recorder. The computation itself is one of the kernels of :mod:`agf_exp.attention.kernels`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Optional

import torch
from torch import nn

from ..positional import AttnType, PosConfig, PosTable, PosTerms, build_mode, offset_range
from .kernels import (AttnBackend, attention, attention_mask, channel_scores_chunked, choose_backend, flex_attention,
                      no_autocast, refusal, scale_and_position, sco_keys, sdpa_attention)


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
        self.backend = AttnBackend(backend)
        problem = refusal(self.backend, pos_cfg.name, type(self.pos) if self.pos is not None else None, self.pcmv,
                          self.d_head, dropout, run_config=False)
        if problem:
            raise ValueError(problem)
        # analysis hook (agf_exp.analysis): when set, every call runs the eager path and passes an
        # AttentionRecord (probabilities, masks, pre-rotary q and k) to it
        self.recorder: Optional[Callable[[AttentionRecord], None]] = None

    # ---- which kernel ----------------------------------------------------------------------------

    def _relative(self) -> bool:
        return self.pos is not None and self.pos.relative

    def resolve_backend(self, device: torch.device) -> AttnBackend:
        """The backend this call uses (``auto`` resolved for the device and training state; see
        :func:`~agf_exp.attention.kernels.choose_backend`)."""
        return choose_backend(self.backend, self.pos, self.pcmv, self.d_head, device,
                              dropout=self.training and self.dropout > 0)

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
        with no_autocast(q.device):
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
            kf = sco_keys(kf)
        terms = PosTerms()
        if self._relative():
            terms = self.pos.relative_terms(lq, lk, q_offset, q.device)
        if key_index is None:
            scores = qf @ kf.transpose(-1, -2) if terms.channel is None else \
                channel_scores_chunked(qf, kf, terms.channel.float())
        elif terms.channel is None:
            scores = torch.einsum("bhmc,bhmnc->bhmn", qf, kf)
        else:
            scores = torch.einsum("bhmc,bhmnc,hmnc->bhmn", qf, kf, terms.channel.float())
        scores = scale_and_position(scores, d, self.sco, terms.coef, terms.bias)
        mask = attention_mask(key_padding_mask, self.causal, lq, lk, q_offset, q.device)
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
        q, k, v, q_content, k_content = self._project(x, memory, cache, q_offset)
        dropout_p = self.dropout if self.training else 0.0
        want_probs = return_probs or self.recorder is not None
        backend = AttnBackend.eager if want_probs else self.resolve_backend(q.device)
        probs = None
        if backend == AttnBackend.eager:
            out, probs = self._eager(q, k, v, key_padding_mask, q_offset, dropout_p)
            if self.recorder is not None:
                self.recorder(AttentionRecord(self, probs.detach(), key_padding_mask, q_offset, q_content.detach(),
                                              None if k_content is None else k_content.detach()))
        elif backend == AttnBackend.sdpa:
            bias = None
            if self._relative():
                bias = self.pos.relative_terms(q.shape[2], k.shape[2], q_offset, q.device).bias
            mask = attention_mask(key_padding_mask, self.causal, q.shape[2], k.shape[2], q_offset, q.device)
            out = sdpa_attention(q, k, v, bias, mask, self.sco, dropout_p)
        else:
            span = offset_range(q.shape[2], k.shape[2], q_offset)
            tab = self.pos.table(torch.arange(span.start, span.stop, device=q.device)) if self._relative() \
                else PosTable()
            out = flex_attention(q, k, v, tab, span, key_padding_mask, q_offset, self.causal, self.sco, self.pcmv)
        b, _, lq, _ = out.shape
        out = self.out_proj(out.transpose(1, 2).reshape(b, lq, self.n_heads * self.d_head))
        return (out, probs) if return_probs else out

    def _project(self, x, memory, cache, q_offset):
        """Queries, keys and values ``[B, H, L, d]`` (rotated for rotary modes; keys and values
        taken from / added to ``cache``), plus the query and key contents before rotation for
        an analysis recorder (keys None when they came from a cache)."""
        rotary = self.pos is not None and self.pos.rotary
        q = self._split(self.q_proj(x))
        q_content, k_content = q, None
        if rotary:
            q = self.pos.rotate(q, self._positions(q_offset, q.shape[2], q.device))
        if self.attn_type == AttnType.cross:
            if cache is not None and "k" in cache:
                return q, cache["k"], cache["v"], q_content, None
            k, v = self._split(self.k_proj(memory)), self._split(self.v_proj(memory))
            k_content = k
            if rotary:
                k = self.pos.rotate(k, self._positions(0, k.shape[2], k.device))
            if cache is not None:
                cache["k"], cache["v"] = k, v
            return q, k, v, q_content, k_content
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
        return q, k, v, q_content, k_content

    def _eager(self, q, k, v, key_padding_mask, q_offset, dropout_p):
        """The reference :func:`~agf_exp.attention.kernels.attention` with this module's positional
        terms (PCM-V's value weight from :meth:`PosTable.value_log`): ``(output, probabilities)``."""
        terms, value_coef = PosTerms(), None
        if self._relative():
            terms, value_coef = self.pos.relative_terms_and_values(q.shape[2], k.shape[2], q_offset, q.device,
                                                                   values=self.pcmv)
        value_channel = terms.channel if self.pcmv and self.pos.channel_values else None
        return attention(q, k, v, coef=terms.coef, bias=terms.bias, channel=terms.channel, value_coef=value_coef,
                         value_channel=value_channel, sco=self.sco, key_padding_mask=key_padding_mask,
                         causal=self.causal, q_offset=q_offset, dropout_p=dropout_p, return_probs=True)
