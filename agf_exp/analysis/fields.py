"""The learned positional fields: per attention module (layer and type) and head, the coefficient
``C`` (multiplicative modes: AGF, AGF-M, AGF-L, ALiBi-B-L-Mul) or the bias ``B`` (additive modes:
ALiBi, ALiBi-B-L, KERPLE, T5) as a function of the signed relative distance ``delta = n - m``
(the paper's "gravitational field"). For AGF-L the curve is the scalar part ``C`` and a dashed
line adds the mean LC3 channel weight, ``C * mean_c W``. The causal decoder only has the left
side (delta <= 0). Drawn at the end of every run (``<run dir>/fields/``) and by
``python -m agf_exp.plot_fields``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ..attention import MultiHeadAttention
from ..positional import AttnType


@dataclass
class Field:
    name: str  # e.g. "encoder.1.self_attn"
    attn_type: str
    kind: str  # "coefficient C" or "bias B"
    offsets: torch.Tensor  # [R]
    values: torch.Tensor  # [H, R]
    channel_mean: Optional[torch.Tensor] = None  # [H, R] (AGF-L: C * mean_c W)


@torch.no_grad()
def fields(model: torch.nn.Module, max_distance: int = 64) -> List[Field]:
    """The field of every attention module that has a relative positional mode."""
    out = []
    for name, module in model.named_modules():
        if not isinstance(module, MultiHeadAttention) or module.pos is None or not module.pos.relative:
            continue
        hi = 0 if module.attn_type == AttnType.dec else max_distance
        offsets = torch.arange(-max_distance, hi + 1, device=next(module.parameters()).device)
        tab = module.pos.table(offsets)
        if tab.log_coef is not None:
            values, kind = tab.log_coef.exp(), "coefficient C"
        elif tab.bias is not None:
            values, kind = tab.bias, "bias B"
        else:
            values, kind = torch.ones(module.n_heads, len(offsets)), "coefficient C"
        channel_mean = None if tab.channel is None else values * tab.channel.mean(-1)
        out.append(Field(name, module.attn_type.value, kind, offsets.cpu(), values.float().cpu(),
                         None if channel_mean is None else channel_mean.float().cpu()))
    return out


def draw(field_list: List[Field], out_dir: Path, title: str = "") -> Dict[str, Path]:
    """Write one PNG per module (a panel per head) and ``overview.png`` (heads overlaid)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    written: Dict[str, Path] = {}
    for f in field_list:
        heads = f.values.shape[0]
        cols = min(4, heads)
        rows = math.ceil(heads / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.4 * rows), squeeze=False, sharex=True)
        for h in range(rows * cols):
            ax = axes[h // cols][h % cols]
            if h >= heads:
                ax.axis("off")
                continue
            ax.plot(f.offsets, f.values[h], lw=1.5)
            if f.channel_mean is not None:
                ax.plot(f.offsets, f.channel_mean[h], "--", lw=1.0, label="C x mean LC3")
            ax.axvline(0, color="grey", lw=0.5)
            ax.set_title(f"head {h}", fontsize=9)
            ax.tick_params(labelsize=7)
        for ax in axes[-1]:
            ax.set_xlabel("delta = n - m", fontsize=8)
        fig.suptitle(f"{title} {f.name} ({f.attn_type}): {f.kind}".strip(), fontsize=10)
        fig.tight_layout()
        path = out_dir / f"{f.name.replace('.', '_')}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written[f.name] = path

    if field_list:
        cols = min(3, len(field_list))
        rows = math.ceil(len(field_list) / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
        for i in range(rows * cols):
            ax = axes[i // cols][i % cols]
            if i >= len(field_list):
                ax.axis("off")
                continue
            f = field_list[i]
            for h in range(f.values.shape[0]):
                ax.plot(f.offsets, f.values[h], lw=1.0, label=f"h{h}")
            ax.axvline(0, color="grey", lw=0.5)
            ax.set_title(f"{f.name}: {f.kind}", fontsize=9)
            ax.tick_params(labelsize=7)
        axes[0][0].legend(fontsize=6, ncol=2)
        fig.suptitle(title or "positional fields", fontsize=11)
        fig.tight_layout()
        path = out_dir / "overview.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written["overview"] = path
    return written
