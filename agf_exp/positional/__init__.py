"""Positional modes: plug-ins behind one interface (see :mod:`agf_exp.positional.base`).

Every module in this package is imported here, so a new file that calls ``register_mode`` is
found without editing any list."""
from __future__ import annotations

import importlib
import pkgutil

from .base import (MODES, AttnType, PosConfig, PositionalMode, PosTable, PosTerms, offset_range, register_mode,
                   relative_offsets)

for _info in pkgutil.iter_modules(__path__):
    if _info.name != "base":
        importlib.import_module(f"{__name__}.{_info.name}")


def build_mode(cfg: PosConfig, n_heads: int, d_head: int, attn_type: AttnType) -> PositionalMode:
    """Instantiate the mode named by ``cfg.name`` for one attention module."""
    if cfg.name not in MODES:
        raise ValueError(
            f"unknown positional mode {cfg.name!r}; known modes: {sorted(MODES)}. "
            "A new mode needs a file in agf_exp/positional/ and conf/pos/<name>.yaml."
        )
    return MODES[cfg.name].module_class(cfg, n_heads, d_head, attn_type)


__all__ = ["MODES", "AttnType", "PosConfig", "PositionalMode", "PosTable", "PosTerms", "build_mode", "offset_range",
           "register_mode", "relative_offsets"]
