"""Draw the learned positional fields of a checkpoint (see :mod:`agf_exp.analysis.fields`).

    python -m agf_exp.plot_fields ckpt=outputs/runs/X/checkpoints/best.pt [max_distance=64] [out=DIR]

PNGs go to ``<run dir>/fields/`` (one per module plus ``overview.png``); every run draws them at
its end and logs them to W&B when ``logger=wandb``.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .analysis.fields import draw, fields
from .cli import run_tool
from .model import load_trained


@dataclass
class PlotConfig:
    ckpt: str = "???"
    out: Optional[str] = None  # default: <run dir>/fields
    max_distance: int = 64


def plot(cfg: PlotConfig) -> int:
    ckpt_path = Path(cfg.ckpt)
    ckpt, model = load_trained(ckpt_path)
    field_list = fields(model, cfg.max_distance)
    pos = ckpt["config"]["pos"]["name"]
    if not field_list:
        raise ValueError(f"pos={pos} has no relative positional field to draw")
    out_dir = Path(cfg.out) if cfg.out else ckpt_path.parent.parent / "fields"
    for path in draw(field_list, out_dir, title=f"pos={pos}").values():
        print(path)
    return 0


def main(argv=None) -> int:
    return run_tool(__doc__, PlotConfig, plot, argv)


if __name__ == "__main__":
    sys.exit(main())
