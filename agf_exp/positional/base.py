"""The positional-mode plug-in interface.

A positional mode is an ``nn.Module`` owned by one attention module (one per layer and
attention type). It enters attention in one or more of four ways, declared by class flags:

* ``multiplicative`` -- a coefficient ``C[h, m, n] > 0`` that multiplies the logit,
  ``logit = s * C`` (the paper's PosCoeff: AGF, AGF-M, AGF-L, ALiBi-B-L-Mul).
* ``additive`` -- a bias ``B[h, m, n]`` added to the logit, ``logit = s + B`` (ALiBi, ALiBi-B-L,
  KERPLE, T5).
* ``channelwise`` -- a per-feature weight ``W[h, m, n, c]`` inside the dot product,
  ``s = sum_c q_c k_c W_c / sqrt(d)`` (AGF-L's LC3).
* ``rotary`` -- a rotation of q and k by their absolute positions (RoPE); see :meth:`rotate`.

The first three depend only on the signed relative distance ``delta = n - m`` (key minus
query). A mode implements :meth:`table`, which returns them for a 1-D range of offsets as an
``O(H * L)`` table (``log C`` rather than ``C``, so fused kernels can add it in log space);
:meth:`terms` gathers that table into ``[H, Lq, Lk]`` matrices for the eager path, and the
fused backends index the same table inside their kernels. Nothing loops over heads or pairs,
and nothing reads a device tensor back to the host (attention calls :meth:`relative_terms`,
whose offset range is known from the lengths): no host-device synchronisation per call.

Directions: ``delta <= 0`` (the key is the query itself or lies before it) is the *left* side
(index 0), ``delta > 0`` the *right* side (index 1). The causal decoder therefore only ever
uses the left parameters.

To add a mode: write one file in this package with a config dataclass (subclass of
:class:`PosConfig`, ``name`` set to the mode's name) and a module class (subclass of
:class:`PositionalMode`), decorate the class with ``@register_mode(ConfigClass)``, and add
``conf/pos/<name>.yaml`` whose defaults list starts with ``/schema/pos/<name>@_here_``. Nothing else changes.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional, Tuple, Type

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


class PosTable(NamedTuple):
    """The positional terms for a 1-D range of offsets (``R`` of them)."""

    log_coef: Optional[torch.Tensor] = None  # [H, R]: log C (multiplicative modes)
    bias: Optional[torch.Tensor] = None  # [H, R]: B (additive modes)
    channel: Optional[torch.Tensor] = None  # [H, R, d_head]: W (channelwise modes)

    def value_log(self) -> Optional[torch.Tensor]:
        """PCM-V's value weight, in log space: ``log V = log C + B`` ([H, R], fp32). V is the
        multiplicative coefficient C, ``exp(B)`` for an additive mode (the paper's PCM-V-Exp), or
        their product; None for a mode with neither. Every attention path takes V from here."""
        parts = [t.float() for t in (self.log_coef, self.bias) if t is not None]
        if not parts:
            return None
        return parts[0] if len(parts) == 1 else parts[0] + parts[1]


class PosTerms(NamedTuple):
    """The positional terms for a ``[Lq, Lk]`` matrix of offsets (what the eager path uses)."""

    coef: Optional[torch.Tensor] = None  # [H, Lq, Lk], > 0
    bias: Optional[torch.Tensor] = None  # [H, Lq, Lk]
    channel: Optional[torch.Tensor] = None  # [H, Lq, Lk, d_head]


def relative_offsets(lq: int, lk: int, q_offset: int, device) -> torch.Tensor:
    """Signed offsets ``delta[m, n] = n - (q_offset + m)``: ``[Lq, Lk]``."""
    return torch.arange(lk, device=device)[None, :] - (torch.arange(lq, device=device)[:, None] + q_offset)


def offset_range(lq: int, lk: int, q_offset: int) -> range:
    """The offsets :func:`relative_offsets` takes, smallest to largest, computed on the host."""
    return range(-(q_offset + lq - 1), lk - q_offset)


class PositionalMode(nn.Module):
    """Base class of every positional mode. Subclasses set the class flags below that apply
    (``multiplicative``, ``additive``, ``channelwise``, ``rotary``; ``channel_values`` for a
    channelwise mode whose weights also scale the values under PCM-V) and implement
    :meth:`table` (relative modes) and/or :meth:`rotate` (rotary modes)."""

    #: True when the mode yields a multiplicative coefficient C (PCM-V scales values by C).
    multiplicative: bool = False
    #: True when the mode yields an additive bias B (PCM-V-Exp scales values by exp(B)).
    additive: bool = False
    #: True when the mode yields a per-channel weight inside the dot product (AGF-L).
    channelwise: bool = False
    #: True when the mode rotates q and k (RoPE): :meth:`rotate` is called on both.
    rotary: bool = False
    #: With PCM-V, also scale value channel c by the channel weight W[..., c] (AGF-L option).
    channel_values: bool = False

    def __init__(self, cfg: PosConfig, n_heads: int, d_head: int, attn_type: AttnType):
        super().__init__()
        self.cfg = cfg
        self.n_heads = n_heads
        self.d_head = d_head
        self.attn_type = attn_type

    @classmethod
    def supports_value_coefficient(cls) -> bool:
        """Whether PCM-V (or PCM-V-Exp) is defined for this mode."""
        return cls.multiplicative or cls.additive

    @property
    def relative(self) -> bool:
        """Whether the mode has terms indexed by relative distance (``table`` is defined)."""
        return self.multiplicative or self.additive or self.channelwise

    def table(self, offsets: torch.Tensor) -> PosTable:
        """The terms for a 1-D tensor of signed offsets ``n - m``: each ``[H, len(offsets)]``
        (``channel``: ``[H, len(offsets), d_head]``). Modes with relative terms override this."""
        return PosTable()

    def terms(self, delta: torch.Tensor) -> PosTerms:
        """The terms for any ``[Lq, Lk]`` matrix of signed offsets, gathered from one
        :meth:`table` over the offsets' range (reads that range back from ``delta``'s device;
        attention uses :meth:`relative_terms`, which does not)."""
        if not self.relative:
            return PosTerms()
        return self._gather(range(int(delta.min()), int(delta.max()) + 1), delta)[0]

    def relative_terms(self, lq: int, lk: int, q_offset: int, device) -> PosTerms:
        """``terms(relative_offsets(lq, lk, q_offset))`` for ``Lq`` queries from absolute
        position ``q_offset`` against ``Lk`` keys from 0, with the range taken on the host."""
        return self.relative_terms_and_values(lq, lk, q_offset, device, values=False)[0]

    def relative_terms_and_values(self, lq: int, lk: int, q_offset: int, device,
                                  values: bool = True) -> Tuple[PosTerms, Optional[torch.Tensor]]:
        """:meth:`relative_terms` and PCM-V's value weight ``V [H, Lq, Lk]`` (from
        :meth:`PosTable.value_log`; None without ``values`` or for a mode with neither C nor B),
        from one :meth:`table`."""
        if not self.relative:
            return PosTerms(), None
        return self._gather(offset_range(lq, lk, q_offset), relative_offsets(lq, lk, q_offset, device), values)

    def _gather(self, span: range, delta: torch.Tensor,
                values: bool = False) -> Tuple[PosTerms, Optional[torch.Tensor]]:
        tab = self.table(torch.arange(span.start, span.stop, device=delta.device))
        idx = delta - span.start
        value_log = tab.value_log() if values else None
        terms = PosTerms(
            None if tab.log_coef is None else tab.log_coef[:, idx].exp(),
            None if tab.bias is None else tab.bias[:, idx],
            None if tab.channel is None else tab.channel[:, idx],
        )
        return terms, None if value_log is None else value_log[:, idx].exp()

    def rotate(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotary modes: transform ``x [B, H, L, d_head]`` at absolute ``positions [L]``."""
        return x

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

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
