"""``pos=kerple_power``: KERPLE's power kernel (Chi et al. 2022, "kerple_power_ap_").

    B_h(delta) = -a_h * |delta| ** p_h        (added to the logit)

2*H trainable parameters per attention module; initialisation ``p = 2 U[0,1)``, ``a = U[0,1)``
and in-place clamps ``a >= 0.01``, ``0.01 <= p <= 2`` (the kernel's conditions) as in
chijames/KERPLE. See ``kerple_log`` for what is shared.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .base import register_mode
from .kerple_log import KerpleLogConfig, _Kerple


@dataclass
class KerplePowerConfig(KerpleLogConfig):
    name: str = "kerple_power"


@register_mode(KerplePowerConfig)
class KerplePower(_Kerple):
    """2*H parameters per attention module."""

    p_max = 2.0

    def kernel(self, dist: torch.Tensor) -> torch.Tensor:
        # d ** p with d = 0 kept out of the power, so d/dp (d ** p) = d ** p * log d never sees log 0
        powered = dist.clamp_min(1.0) ** self.p[:, None]
        return self.a[:, None] * torch.where(dist > 0, powered, torch.zeros_like(powered))
