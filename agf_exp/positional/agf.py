"""``pos=agf``: the Attention-Gravitational Field (the paper's LC1, Eqs. 6-7).

    C_h(delta) = G_{h,dir} / (1 + |delta| * inv_r_{h,dir}) ** k        (multiplies the logit)

per head ``h`` and direction ``dir`` (left: delta <= 0, right: delta > 0), i.e. 4*H trainable
parameters per attention module (G and r per head and direction; 2*H are used by the causal
decoder). ``k = 2`` is the paper's inverse-square case (Eq. 6); ``pos.k`` sets another exponent
(Eq. 7) and ``pos.k_learnable=true`` learns one per head and direction (+2*H parameters).

Parametrisation (ours; the paper only says G and r are trainable and 1/r starts at 1/24):
G = exp(log_g) and 1/r = exp(log_inv_r), so both stay positive; G starts at 1 (logits at
distance 0 start unchanged). log C is computed as ``log G - k * log1p(d / r)`` and exponentiated
once, so C never underflows to an exact 0 before the log. G is capped at ``g_max`` and 1/r is
kept in ``[inv_r_min, inv_r_max]`` (r >= 0.5 by default) to avoid the temperature blow-ups and
underflow listed in docs/positional-modes.md section 4 (numerical pitfalls).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import AttnType, PosConfig, PositionalMode, PosTable, register_mode, split_direction


@dataclass
class AGFConfig(PosConfig):
    name: str = "agf"
    default_pe: bool = False
    k: float = 2.0  # the exponent; 2 = Newtonian inverse square (paper Eq. 6)
    k_learnable: bool = False  # learn k per head and direction (paper Eq. 7 leaves k free)
    inv_r_init: float = 1.0 / 24.0  # paper: 1/r starts at 1/24
    g_init: float = 1.0  # ours: G starts at 1
    g_max: float = 10.0
    inv_r_min: float = 1e-4
    inv_r_max: float = 2.0


@register_mode(AGFConfig)
class AGF(PositionalMode):
    """4*H parameters per attention module (+2*H with ``k_learnable``)."""

    multiplicative = True

    def __init__(self, cfg: AGFConfig, n_heads: int, d_head: int, attn_type: AttnType):
        super().__init__(cfg, n_heads, d_head, attn_type)
        if cfg.k <= 0 or cfg.inv_r_init <= 0 or cfg.g_init <= 0:
            raise ValueError(
                f"pos={cfg.name}: k, inv_r_init and g_init must be > 0 "
                f"(got k={cfg.k}, inv_r_init={cfg.inv_r_init}, g_init={cfg.g_init})"
            )
        self.log_g = nn.Parameter(torch.full((2, n_heads), math.log(cfg.g_init)))
        self.log_inv_r = nn.Parameter(torch.full((2, n_heads), math.log(cfg.inv_r_init)))
        if cfg.k_learnable:
            self.log_k = nn.Parameter(torch.full((2, n_heads), math.log(cfg.k)))
        else:
            self.register_buffer("log_k", torch.full((2, n_heads), math.log(cfg.k)), persistent=False)

    def field_params(self):
        """Effective (G, 1/r, k), each ``[2, H]`` (direction, head)."""
        g = self.log_g.clamp(max=math.log(self.cfg.g_max)).exp()
        inv_r = self.log_inv_r.exp().clamp(self.cfg.inv_r_min, self.cfg.inv_r_max)
        return g, inv_r, self.log_k.exp()

    def log_coef(self, direction: torch.Tensor, dist: torch.Tensor) -> torch.Tensor:
        """log C at each (direction, distance) pair of two ``[R]`` tensors: ``[H, R]``."""
        g, inv_r, k = self.field_params()  # [2, H] each
        return (g.log()[direction] - k[direction] * torch.log1p(dist.float()[:, None] * inv_r[direction])).T

    def table(self, offsets: torch.Tensor) -> PosTable:
        return PosTable(log_coef=self.log_coef(*split_direction(offsets)))
