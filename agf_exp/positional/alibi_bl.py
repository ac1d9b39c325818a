"""``pos=alibi_bl``: ALiBi-B-L, bidirectional learnable ALiBi (the paper's Table 5).

    B_h(delta) = -m_{h,dir} * |delta|        (added to the logit)

with separate slopes for the left (delta <= 0) and right (delta > 0) side: 2*H trainable
parameters per attention module (the causal decoder uses the H left ones). Parametrisation
(ours, as x-transformers' former learned ALiBi): ``m = exp(w)``, so slopes stay positive, with
``w`` initialised to the log of the original ALiBi slopes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .alibi import alibi_slopes
from .base import AttnType, PosConfig, PositionalMode, PosTable, register_mode, split_direction


@dataclass
class ALiBiBLConfig(PosConfig):
    name: str = "alibi_bl"
    default_pe: bool = False


@register_mode(ALiBiBLConfig)
class ALiBiBL(PositionalMode):
    """2*H parameters per attention module."""

    additive = True

    def __init__(self, cfg: PosConfig, n_heads: int, d_head: int, attn_type: AttnType):
        super().__init__(cfg, n_heads, d_head, attn_type)
        log_slopes = torch.tensor([math.log(m) for m in alibi_slopes(n_heads)])
        self.log_slope = nn.Parameter(log_slopes.repeat(2, 1))  # [dir, H]

    def decay(self, offsets: torch.Tensor) -> torch.Tensor:
        """``m_{h,dir} * |delta|``: ``[H, R]``."""
        direction, dist = split_direction(offsets)
        return self.log_slope.exp()[direction].T * dist.float()[None, :]

    def table(self, offsets: torch.Tensor) -> PosTable:
        return PosTable(bias=-self.decay(offsets))
