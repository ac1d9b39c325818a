"""``pos=agf_l``: AGF-L = AGF (LC1) x LC2 x LC3, the paper's full PosCoeff ("LC3 full";
"AGF-L" is our name).

    logit = (sum_c q_c k_c W_{h,dir}[d, c]) / sqrt(d_head) * AGF_h(delta) * A_{h,dir}[d]

with ``d = min(|delta|, max_distance - 1)``. LC3 (W) is a per-head, per-direction, per-distance
and per-feature weight initialised to 1, so it acts inside the dot product and cannot be written
as one scalar per (m, n): only the eager backend computes it. Parameters per attention module:
``4*H + 2*H*max_distance + 2*H*d_head*max_distance`` (H=16, d_head=64, 128: 64 + 4,096 + 262,144).

PCM-V scales the values by the scalar part (AGF x LC2) by default; ``pos.pcmv_channels=true``
also scales value channel c by W[..., c] (the paper does not say which; ours).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .agf_m import AGFM, AGFMConfig
from .base import AttnType, PosTable, register_mode, split_direction


@dataclass
class AGFLConfig(AGFMConfig):
    name: str = "agf_l"
    pcmv_channels: bool = False


@register_mode(AGFLConfig)
class AGFL(AGFM):
    """4*H + 2*H*max_distance + 2*H*d_head*max_distance parameters per attention module."""

    channelwise = True

    def __init__(self, cfg: AGFLConfig, n_heads: int, d_head: int, attn_type: AttnType):
        super().__init__(cfg, n_heads, d_head, attn_type)
        self.channel_weight = nn.Parameter(torch.ones(2, n_heads, cfg.max_distance, d_head))
        self.channel_values = cfg.pcmv_channels

    def table(self, offsets: torch.Tensor) -> PosTable:
        direction, dist = split_direction(offsets)
        w = self.channel_weight[direction, :, dist.clamp(max=self.cfg.max_distance - 1)]  # [R, H, d]
        return super().table(offsets)._replace(channel=w.transpose(0, 1))
