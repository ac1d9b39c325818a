"""Quality parity of a precision against the committed fp32 runs (docs/precision.md).

The rule, fixed before the runs: for each row (vanilla, AGF-M + PCM-V), with at least
``MIN_SEEDS`` seeds in the new precision, the Welch 95 % interval of ``mean(new) - mean(fp32)``
of the final validation accuracy and of test BLEU (beam) must lie inside ``±MARGIN`` points.
Parity holds when it holds for every row and both metrics; otherwise the verdict says which
interval misses and by how much.

Beside the verdict, per metric: how narrow the interval can get at all (with the baseline's
seeds fixed, the fp32 side alone contributes ``t * sd / sqrt(n)``: when that reaches the margin
no number of new-precision seeds can pass the test), the new-precision seeds the test would
need if both sides spread like the baseline, and the same-seed (paired) differences: a run and
its fp32 twin share initialisation, batch order and dropout masks.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

from .runs import Run
from .stats import PAR_MARGIN, mean_ci, welch_ci

MARGIN = PAR_MARGIN
MIN_SEEDS = 3
ROWS = ("vanilla", "agf_m_pcmv")
METRICS = (("val_acc", "final validation accuracy"), ("bleu", "test BLEU (beam)"))


def _value(run: Run, metric: str) -> Optional[float]:
    summary = run.summary or {}
    if metric == "val_acc":
        return (summary.get("final") or {}).get("val_acc")
    return ((summary.get("decoding") or {}).get("test/beam") or {}).get("bleu")


def _precision(run: Run) -> str:
    summary = run.summary or {}
    record = summary.get("precision")
    if isinstance(record, dict):
        return record.get("autocast") or "fp32"
    autocast = summary.get("autocast")
    return "fp32" if autocast in (None, "None") else str(autocast).replace("torch.", "")


def precision_parity(candidate: Sequence[Run], baseline: Sequence[Run], rows: Sequence[str] = ROWS,
                     margin: float = MARGIN, min_seeds: int = MIN_SEEDS) -> Dict[str, Any]:
    """The comparison of the finished ``candidate`` runs with the ``baseline`` (fp32) runs, per
    row and metric, with the verdict of the rule above."""
    out: Dict[str, Any] = {"margin": margin, "min_seeds": min_seeds, "rows": []}
    failures: List[str] = []
    for row in rows:
        new = sorted((r for r in candidate if r.complete and r.row == row), key=lambda r: r.seed)
        old = sorted((r for r in baseline if r.complete and r.row == row), key=lambda r: r.seed)
        entry: Dict[str, Any] = {"row": row, "seeds": [r.seed for r in new], "baseline_seeds": [r.seed for r in old],
                                 "precision": sorted({_precision(r) for r in new}),
                                 "baseline_precision": sorted({_precision(r) for r in old}),
                                 "tokens_per_s": [round((r.summary or {}).get("train_tokens_per_s") or 0) for r in new],
                                 "metrics": {}}
        for metric, label in METRICS:
            a = [v for v in (_value(r, metric) for r in new) if v is not None]
            b = [v for v in (_value(r, metric) for r in old) if v is not None]
            diff = welch_ci(a, b)
            lo, hi = diff["ci_low"], diff["ci_high"]
            if len(a) < min_seeds or lo is None:
                within, miss = None, None
                failures.append(f"{row} {label}: {len(a)} seed(s) in the new precision, {min_seeds} needed")
            else:
                miss = max(-margin - lo, hi - margin, 0.0)
                within = miss == 0.0
                if not within:
                    by = "<0.01" if miss < 0.005 else f"{miss:.2f}"
                    failures.append(f"{row} {label}: interval [{lo:+.2f}, {hi:+.2f}] leaves ±{margin} by {by}")
            by_seed = {r.seed: _value(r, metric) for r in old}
            paired = [v - by_seed[r.seed] for r, v in ((r, _value(r, metric)) for r in new)
                      if v is not None and by_seed.get(r.seed) is not None]
            entry["metrics"][metric] = {"label": label, "new": mean_ci(a), "baseline": mean_ci(b), "diff": diff,
                                        "within_margin": within, "miss": miss, "new_values": a,
                                        "paired": mean_ci(paired), **_power(b, margin)}
        out["rows"].append(entry)
    out["parity"] = not failures
    out["failures"] = failures
    return out


def _power(baseline: Sequence[float], margin: float) -> Dict[str, Any]:
    """``floor``: the Welch half-width with infinitely many new seeds (the baseline's own
    ``t(n-1) * sd / sqrt(n)``); ``seeds``: the fewest new seeds whose expected half-width, both
    sides spreading like the baseline, is below ``margin`` (None: never, the floor reaches it)."""
    from scipy import stats

    n = len(baseline)
    if n < 2:
        return {"floor": None, "seeds": None}
    mean = sum(baseline) / n
    sd = math.sqrt(sum((x - mean) ** 2 for x in baseline) / (n - 1))
    floor = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
    if floor >= margin:
        return {"floor": floor, "seeds": None}
    for m in range(2, 10_001):
        va, vb = sd ** 2 / m, sd ** 2 / n
        dof = (va + vb) ** 2 / (va ** 2 / (m - 1) + vb ** 2 / (n - 1))
        if float(stats.t.ppf(0.975, dof)) * math.sqrt(va + vb) < margin:
            return {"floor": floor, "seeds": m}
    return {"floor": floor, "seeds": None}


def _f(x: Optional[float], spec: str = ".2f") -> str:
    return "—" if x is None else format(x, spec)


def to_markdown(result: Dict[str, Any]) -> str:
    m = result["margin"]
    lines = ["| row | metric | new precision: mean ± sd (n) | fp32: mean ± sd (n) | difference [95 % Welch] | within ±"
             f"{m} |", "|---|---|---|---|---|---|"]
    for entry in result["rows"]:
        for metric, stats in entry["metrics"].items():
            a, b, d = stats["new"], stats["baseline"], stats["diff"]
            by = "<0.01" if stats["miss"] is not None and 0 < stats["miss"] < 0.005 else _f(stats["miss"])
            ok = {True: "yes", False: f"no (by {by})", None: "not decided"}[stats["within_margin"]]
            lines.append(f"| {entry['row']} | {stats['label']} | {_f(a.get('mean'))} ± {_f(a.get('std'))} ({a.get('n', 0)}) "
                         f"| {_f(b.get('mean'))} ± {_f(b.get('std'))} ({b.get('n', 0)}) | {_f(d['diff'], '+.2f')} "
                         f"[{_f(d['ci_low'], '+.2f')}, {_f(d['ci_high'], '+.2f')}] | {ok} |")
    lines.append("")
    lines.append(f"What the test can decide with these fp32 seeds (both sides spreading like them), and the "
                 f"same-seed differences:")
    lines.append("")
    lines.append("| row | metric | narrowest possible half-width | new seeds needed for ±"
                 f"{m} | same-seed difference: mean [95 % t] (n) |")
    lines.append("|---|---|---|---|---|")
    for entry in result["rows"]:
        for stats in entry["metrics"].values():
            p = stats["paired"]
            need = ("never (the fp32 side alone is wider)" if stats["floor"] is not None and stats["seeds"] is None
                    else _f(stats["seeds"], "d"))
            lines.append(f"| {entry['row']} | {stats['label']} | ±{_f(stats['floor'])} | {need} | "
                         f"{_f(p.get('mean'), '+.2f')} [{_f(p.get('ci_low'), '+.2f')}, {_f(p.get('ci_high'), '+.2f')}] "
                         f"({p.get('n', 0)}) |")
    lines.append("")
    for entry in result["rows"]:
        lines.append(f"- {entry['row']}: new precision {', '.join(entry['precision']) or '—'} seeds "
                     f"{', '.join(map(str, entry['seeds'])) or '—'}; baseline {', '.join(entry['baseline_precision']) or '—'} "
                     f"seeds {', '.join(map(str, entry['baseline_seeds'])) or '—'}")
    lines.append("")
    if result["parity"]:
        lines.append(f"**Verdict: parity shown.** Every interval lies within ±{m} points "
                     f"(at least {result['min_seeds']} seeds per row).")
    else:
        lines.append("**Verdict: parity not shown.** " + "; ".join(result["failures"]) + ".")
    return "\n".join(lines) + "\n"
