"""``pos=agf_m``: AGF-M = AGF (LC1) x LC2, the paper's "Middle" granularity.

    C_h(delta) = AGF_h(delta) * A_{h,dir}[min(|delta|, max_distance - 1)]

LC2 is a per-head, per-direction, per-distance amplitude centred at 1: 2*H*max_distance
parameters (the paper's SeqLen, 128 by default), so AGF-M has 4*H + 2*H*max_distance
parameters per attention module. Distances beyond the table use its last slot.

Parametrisation (ours): A = exp(w) with w = 0 at init, so A starts at exactly 1 and stays
positive (PCM-V and the log-space computation need C > 0).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .agf import AGF, AGFConfig
from .base import AttnType, register_mode


@dataclass
class AGFMConfig(AGFConfig):
    name: str = "agf_m"
    max_distance: int = 128  # the paper's SeqLen: LC2 table length


@register_mode(AGFMConfig)
class AGFM(AGF):
    """4*H + 2*H*max_distance parameters per attention module."""

    def __init__(self, cfg: AGFMConfig, n_heads: int, d_head: int, attn_type: AttnType):
        super().__init__(cfg, n_heads, d_head, attn_type)
        if cfg.max_distance < 1:
            raise ValueError(f"pos.max_distance must be >= 1, got {cfg.max_distance}")
        self.log_amp = nn.Parameter(torch.zeros(2, n_heads, cfg.max_distance))

    def log_coef(self, direction: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
        amp = self.log_amp[direction, :, dist.clamp(max=self.cfg.max_distance - 1)]  # [R, H]
        return super().log_coef(direction, dist) + amp.T
