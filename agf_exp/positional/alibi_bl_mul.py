"""``pos=alibi_bl_mul``: ALiBi-B-L-Mul, the ALiBi-B-L decay as a multiplicative coefficient
(the paper's Table 5, with PCM-V).

    C_h(delta) = exp(-m_{h,dir} * |delta|)        (multiplies the logit; log C = -m |delta|)

Same parameters and initialisation as ``alibi_bl`` (2*H per attention module). This is not
ALiBi-B-L: ``s * C`` pulls far logits towards 0 (a uniform floor) where ``s + B`` pushes them
towards -inf; PCM-V (``pcmv=true``, the paper's row) scales the values by the same C.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .alibi_bl import ALiBiBL
from .base import PosConfig, PosTable, register_mode


@dataclass
class ALiBiBLMulConfig(PosConfig):
    name: str = "alibi_bl_mul"
    default_pe: bool = False


@register_mode(ALiBiBLMulConfig)
class ALiBiBLMul(ALiBiBL):
    """2*H parameters per attention module."""

    additive = False
    multiplicative = True

    def table(self, offsets: torch.Tensor) -> PosTable:
        return PosTable(log_coef=-self.decay(offsets))
