"""``pos=t5``: the T5 relative-position bucket bias (Raffel et al. 2020).

    B_h(delta) = T[bucket(delta), h]        (added to the logit)

Buckets as in Mesh-TensorFlow / HF / OpenNMT-py: the encoder (and cross-attention, if enabled)
is bidirectional (half the buckets per side, right side offset by ``num_buckets/2``), the
causal decoder uses all buckets for the past. Within a side, the first ``nb/2`` distances get
exact buckets, farther ones log-spaced buckets up to ``max_distance``; beyond it the last bucket.
With the defaults (32 buckets, max_distance 128) the bidirectional buckets start at distances
0..8, 12, 16, 23, 32, 46, 64, 91 and the causal ones at 0..16, 19, 21, 24, ..., 99, 113.

``num_buckets * H`` trainable parameters per attention module (one table per module, as
OpenNMT-py; the original T5 shares one table per stack). Initialised to ``N(0, init_std)``,
default 0 (ours: the model starts position-agnostic). The bias is added after the
``1/sqrt(d)`` scaling.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import AttnType, PosConfig, PositionalMode, PosTable, register_mode


@dataclass
class T5Config(PosConfig):
    name: str = "t5"
    default_pe: bool = False
    num_buckets: int = 32
    max_distance: int = 128
    init_std: float = 0.0


def t5_bucket(offsets: torch.Tensor, bidirectional: bool, num_buckets: int, max_distance: int) -> torch.Tensor:
    """Bucket index of each signed offset ``n - m``."""
    if bidirectional:
        nb = num_buckets // 2
        base = (offsets > 0).long() * nb
        n = offsets.abs()
    else:
        nb = num_buckets
        base = torch.zeros_like(offsets)
        n = (-offsets).clamp_min(0)
    max_exact = nb // 2
    large = max_exact + (
        torch.log(n.float().clamp_min(1) / max_exact) / math.log(max_distance / max_exact) * (nb - max_exact)
    ).long()
    large = large.clamp(max=nb - 1)
    return base + torch.where(n < max_exact, n, large)


@register_mode(T5Config)
class T5Bias(PositionalMode):
    """num_buckets * H parameters per attention module."""

    additive = True

    def __init__(self, cfg: T5Config, n_heads: int, d_head: int, attn_type: AttnType):
        super().__init__(cfg, n_heads, d_head, attn_type)
        if cfg.num_buckets < 4 or cfg.max_distance <= cfg.num_buckets // 4:
            raise ValueError(f"pos=t5 needs num_buckets >= 4 and max_distance > num_buckets/4 "
                             f"(got {cfg.num_buckets}, {cfg.max_distance})")
        self.bucket_bias = nn.Parameter(torch.randn(cfg.num_buckets, n_heads) * cfg.init_std)

    def table(self, offsets: torch.Tensor) -> PosTable:
        buckets = t5_bucket(offsets, self.attn_type != AttnType.dec, self.cfg.num_buckets, self.cfg.max_distance)
        return PosTable(bias=self.bucket_bias[buckets].T)
