"""``pos=rope``: rotary position embedding (Su et al., RoFormer).

Each head vector is split into ``d_head/2`` channel pairs ``(i, i + d_head/2)`` (the
"half-split" pairing of GPT-NeoX/HF/OpenNMT-py; equivalent to interleaved pairs up to a fixed
permutation the projections absorb). Pair ``i`` of q at position m and of k at position n is
rotated by ``m * theta_i`` and ``n * theta_i``, ``theta_i = base^(-2i/d_head)``, so
``q_m . k_n`` depends only on ``n - m``. Angles are computed in fp32. 0 parameters.
PCM-V is not defined (no coefficient), so ``pcmv=true`` is refused.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import AttnType, PosConfig, PositionalMode, register_mode


@dataclass
class RoPEConfig(PosConfig):
    name: str = "rope"
    default_pe: bool = False
    base: float = 10000.0


@register_mode(RoPEConfig)
class RoPE(PositionalMode):
    """0 parameters."""

    rotary = True

    def __init__(self, cfg: RoPEConfig, n_heads: int, d_head: int, attn_type: AttnType):
        super().__init__(cfg, n_heads, d_head, attn_type)
        if d_head % 2:
            raise ValueError(f"pos=rope needs an even head dimension, got d_head={d_head}")
        inv_freq = cfg.base ** (-torch.arange(0, d_head, 2, dtype=torch.float32) / d_head)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        angles = positions.float()[:, None] * self.inv_freq[None, :]  # [L, d/2]
        cos, sin = angles.cos(), angles.sin()
        xf = x.float()
        x1, x2 = xf[..., : self.d_head // 2], xf[..., self.d_head // 2:]
        return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).to(x.dtype)
