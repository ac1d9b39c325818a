"""``pos=alibi``: ALiBi (Press et al. 2022) with its fixed geometric slopes.

    B_h(delta) = -m_h * |delta|        (added to the logit)

``m_h = 2^(-8h/H)`` for ``h = 1..H`` when H is a power of two; otherwise the slopes of the
nearest lower power of two P, then every other slope of the 2P sequence (as in the ALiBi,
KERPLE and OpenNMT-py code). The encoder uses the symmetric form ``-m |n - m|`` (Press's recipe
for bidirectional attention, as OpenNMT-py does); in the causal decoder this is the original
``-m (m - n)``. 0 trainable parameters (H fixed slopes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List

import torch

from .base import AttnType, PosConfig, PositionalMode, PosTable, register_mode


def alibi_slopes(n_heads: int) -> List[float]:
    """The original ALiBi slopes for ``n_heads`` heads."""

    def power_of_two(n: int) -> List[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if n_heads & (n_heads - 1) == 0:
        return power_of_two(n_heads)
    p = 2 ** int(math.floor(math.log2(n_heads)))
    return power_of_two(p) + power_of_two(2 * p)[0::2][: n_heads - p]


@dataclass
class ALiBiConfig(PosConfig):
    name: str = "alibi"
    default_pe: bool = False


@register_mode(ALiBiConfig)
class ALiBi(PositionalMode):
    """0 parameters (fixed slopes)."""

    additive = True

    def __init__(self, cfg: ALiBiConfig, n_heads: int, d_head: int, attn_type: AttnType):
        super().__init__(cfg, n_heads, d_head, attn_type)
        self.register_buffer("slopes", torch.tensor(alibi_slopes(n_heads)), persistent=False)

    def table(self, offsets: torch.Tensor) -> PosTable:
        return PosTable(bias=-self.slopes[:, None] * offsets.abs().float()[None, :])
