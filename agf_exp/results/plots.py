"""Learning-curve plots of the report: one line per row (mean over its runs, band = min..max, or
the 95 % t interval of the mean)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .runs import Run


def plot_curves(series: Dict[str, List[List[Tuple[float, float]]]], path: Path, ylabel: str, title: str,
                band: str = "range") -> Path:
    """One line per label (mean over its runs) of y against epoch, its band ``range`` (min..max)
    or ``ci95`` (the 95 % t interval of the mean, :func:`~agf_exp.results.stats.mean_ci`)."""
    from .stats import mean_ci

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, runs in series.items():
        xs = sorted({x for run in runs for x, _ in run})
        if not xs:
            continue
        ys = [[y for run in runs for x2, y in run if x2 == x] for x in xs]
        ax.plot(xs, [np.mean(v) for v in ys], marker="o", markersize=3, label=label)
        if len(runs) > 1:
            if band == "ci95":
                stats = [mean_ci(v) for v in ys]
                ax.fill_between(xs, [st["ci_low"] for st in stats], [st["ci_high"] for st in stats], alpha=0.2)
            else:
                ax.fill_between(xs, [min(v) for v in ys], [max(v) for v in ys], alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_table_curves(result: Dict[str, Any], runs: List[Run], path: Path) -> Optional[Path]:
    by_path = {r.path: r for r in runs}
    series = {}
    for row in result.get("rows", []):
        curves = [[(m["epoch_fraction"], m["val_acc"]) for m in by_path[p].metrics] for p in row["runs"] if p in by_path]
        if any(curves):
            series[row["label"]] = curves
    if not series:
        return None
    return plot_curves(series, path, "validation accuracy (%)", f"{result['table']} ({result['experiment']})")
