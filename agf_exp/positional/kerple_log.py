"""``pos=kerple_log``: KERPLE's logarithmic kernel (Chi et al. 2022), as in chijames/KERPLE.

    B_h(delta) = -p_h * log(1 + a_h * |delta|)        (added to the logit)

One (p, a) pair per head: 2*H trainable parameters per attention module (the KERPLE code shares
one module across all layers; ``pos.share`` is not offered, each module learns its own).
Initialisation as in the repository: ``p = 2 U[0,1)``, ``a = U[0,1)`` (drawn from the run's
seeded RNG). Positivity as in the repository: before every use both are clamped in place to
``>= 0.01`` (the kernel's conditions ``p, a > 0``). The encoder uses ``|delta|`` on both sides
(the repository is decoder-only). Exponentiating this bias gives ``(1 + a d)^-p``, AGF's form.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .base import AttnType, PosConfig, PositionalMode, PosTable, register_mode


@dataclass
class KerpleLogConfig(PosConfig):
    name: str = "kerple_log"
    default_pe: bool = False
    p_init_scale: float = 2.0  # p = p_init_scale * U[0, 1)
    a_init_scale: float = 1.0  # a = a_init_scale * U[0, 1)
    eps: float = 0.01  # lower clamp of p and a


class _Kerple(PositionalMode):
    additive = True
    p_max: float = float("inf")

    def __init__(self, cfg, n_heads: int, d_head: int, attn_type: AttnType):
        super().__init__(cfg, n_heads, d_head, attn_type)
        self.p = nn.Parameter(cfg.p_init_scale * torch.rand(n_heads))
        self.a = nn.Parameter(cfg.a_init_scale * torch.rand(n_heads))
        self._clamp()

    @torch.no_grad()
    def _clamp(self) -> None:
        self.p.clamp_(min=self.cfg.eps, max=self.p_max)
        self.a.clamp_(min=self.cfg.eps)

    def kernel(self, dist: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def table(self, offsets: torch.Tensor) -> PosTable:
        self._clamp()
        return PosTable(bias=-self.kernel(offsets.abs().float()[None, :]))


@register_mode(KerpleLogConfig)
class KerpleLog(_Kerple):
    """2*H parameters per attention module."""

    def kernel(self, dist: torch.Tensor) -> torch.Tensor:
        return self.p[:, None] * torch.log1p(self.a[:, None] * dist)
