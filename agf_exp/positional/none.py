"""``pos=none``: no relative positional term. With ``pe=true`` (its default) this is the
vanilla Transformer of the paper ("QKV" / "Vanilla"): position only enters through the absolute
sinusoidal encoding added to the embeddings."""
from __future__ import annotations

from dataclasses import dataclass

from .base import PosConfig, PositionalMode, register_mode


@dataclass
class NoneConfig(PosConfig):
    name: str = "none"
    default_pe: bool = True


@register_mode(NoneConfig)
class NoPositional(PositionalMode):
    """0 parameters."""
