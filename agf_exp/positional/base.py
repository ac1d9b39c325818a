"""The positional-mode plug-in interface.

A positional mode is an ``nn.Module`` owned by one attention module (one per layer and
attention type). Given the query and key positions it returns the terms that enter that
attention's logits, all indexed by the signed relative distance ``delta = n - m``
(key minus query):

* ``coef``  -- a multiplicative coefficient ``C[h, m, n] > 0``: ``logit = s * C`` (the paper's
  PosCoeff; AGF, AGF-M, ...).
* ``bias``  -- an additive bias ``B[h, m, n]``: ``logit = s + B`` (ALiBi, KERPLE, T5, ...).

Both are ``[H, Lq, Lk]`` tensors (or ``None``). Each mode builds them from an ``O(H * L)``
table indexed by relative distance, never with Python loops over heads or pairs.

Directions: ``delta <= 0`` (the key is the query itself or lies before it) is the *left* side
(index 0), ``delta > 0`` the *right* side (index 1). The causal decoder therefore only ever
uses the left parameters.

To add a mode: write one file in this package with a config dataclass (subclass of
:class:`PosConfig`, ``name`` set to the mode's name) and a module class (subclass of
:class:`PositionalMode`), decorate the class with ``@register_mode(ConfigClass)``, and add
``conf/pos/<name>.yaml`` whose defaults list starts with ``base_<name>``. Nothing else changes.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Type

import torch
from torch import nn


class AttnType(str, enum.Enum):
    """The three attention types of an encoder-decoder Transformer."""

    enc = "enc"  # encoder self-attention (key-padding mask only)
    dec = "dec"  # decoder causal self-attention
    cross = "cross"  # decoder-to-encoder attention


@dataclass
class PosConfig:
    """Fields every positional mode has. Subclasses add their own parameters."""

    name: str = "none"
    # Which attentions get the mode. Default: encoder and decoder self-attention. Cross-attention
    # relates target to source positions, which share no origin; when enabled we use the raw
    # offset n - m between target position m and source position n (our choice, see README).
    apply_to: List[AttnType] = field(default_factory=lambda: [AttnType.enc, AttnType.dec])
    # The paper's default for the absolute sinusoidal PE with this mode; the top-level `pe`
    # toggle defaults to this value, and `pe=true|false` on the command line wins.
    default_pe: bool = False


class PosTerms(NamedTuple):
    coef: Optional[torch.Tensor]  # [H, Lq, Lk], > 0
    bias: Optional[torch.Tensor]  # [H, Lq, Lk]


class PositionalMode(nn.Module):
    """Base class of every positional mode. Subclasses set the two class flags and
    implement :meth:`terms`."""

    #: True when the mode yields a multiplicative coefficient C (PCM-V scales values by C).
    multiplicative: bool = False
    #: True when the mode yields an additive bias B (PCM-V-Exp scales values by exp(B)).
    additive: bool = False

    def __init__(self, cfg: PosConfig, n_heads: int, d_head: int, attn_type: AttnType):
        super().__init__()
        self.cfg = cfg
        self.n_heads = n_heads
        self.d_head = d_head
        self.attn_type = attn_type

    @property
    def supports_value_coefficient(self) -> bool:
        """Whether PCM-V (or PCM-V-Exp) is defined for this mode."""
        return self.multiplicative or self.additive

    def terms(self, delta: torch.Tensor) -> PosTerms:
        """Return the positional terms for a ``[Lq, Lk]`` matrix of signed offsets ``n - m``."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"heads={self.n_heads}, attn_type={self.attn_type.value}"


class ModeSpec(NamedTuple):
    config_class: Type[PosConfig]
    module_class: Type[PositionalMode]


MODES: Dict[str, ModeSpec] = {}


def register_mode(config_class: Type[PosConfig]):
    """Class decorator: register a positional mode under ``config_class().name``."""

    def wrap(module_class: Type[PositionalMode]) -> Type[PositionalMode]:
        name = config_class().name
        if name in MODES and MODES[name].module_class is not module_class:
            raise ValueError(f"positional mode {name!r} is registered twice")
        MODES[name] = ModeSpec(config_class, module_class)
        return module_class

    return wrap


def split_direction(delta: torch.Tensor):
    """Return ``(direction, distance)`` for signed offsets: direction 0 = left (delta <= 0),
    1 = right (delta > 0); distance = |delta|."""
    return (delta > 0).long(), delta.abs()
