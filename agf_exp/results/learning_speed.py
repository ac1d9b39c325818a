"""Learning speed: validation accuracy early in training, per row, against vanilla, with the
controls that tell "a decaying positional bias learns faster" from "no absolute position
embedding learns faster" (a question the paper does not ask; its tables read the last epoch).

Per row: val acc at epochs ``EPOCHS`` and at the last epoch every seed reached, and the area
under the validation curve (trapezoid over the epoch ends 1..last, divided by the span: the
curve's mean height, in accuracy points), each as mean with its 95 % t interval; per row against
vanilla the 95 % Welch interval of each difference.

The rule (written before it was applied to the committed runs, ``verdict``): a row **leads**
vanilla at epoch ``EARLY`` when the Welch interval of its difference lies above 0, **trails**
when below. The rows fall into two groups by the one switch that separates them: without an
absolute PE (every AGF and ALiBi row of the paper without "+ PE") and with one (AGF-M + SCO +
PE, ... + PCM-V + PE; their decaying coefficient is the same AGF-M's). Then:

* every row without PE leads and no row with PE does → "no absolute PE learns faster early",
  whichever decaying bias (AGF's coefficient or ALiBi's additive slope) the row has;
* every row without PE leads, some with PE lead too, but every no-PE row's interval lies above
  every PE row's (non-overlapping 95 % intervals against the same baseline) → "mostly the
  missing absolute PE": the decaying coefficient with PE gives a smaller lead;
* every decaying-bias row leads, those with PE too → "a decaying bias learns faster early";
* no row leads → "no early lead";
* else "mixed", listing the rows that lead.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from .plots import plot_curves
from .runs import Run
from .stats import mean_ci, welch_ci

EPOCHS = (1, 2, 3, 6)
EARLY = 2
BASELINE = "vanilla"


def _curve(run: Run) -> Dict[int, float]:
    return {int(m["epoch"]): float(m["val_acc"]) for m in run.metrics
            if m.get("val_acc") is not None and float(m.get("epoch_fraction", m["epoch"])).is_integer()
            and int(m["epoch"]) >= 1}


def _area(curve: Dict[int, float], last: int) -> Optional[float]:
    xs = [e for e in range(1, last + 1) if e in curve]
    if len(xs) != last or last < 2:
        return None
    ys = [curve[e] for e in xs]
    return float(sum((ys[i] + ys[i + 1]) / 2 for i in range(len(ys) - 1)) / (last - 1))


def learning_speed(by_row: Dict[str, List[Run]], pe_of_row: Dict[str, bool]) -> Dict[str, Any]:
    """The section's numbers and verdict from the rows' finished runs; ``pe_of_row``: whether
    the row adds the absolute sinusoidal PE."""
    curves = {row: [_curve(r) for r in rs if r.complete] for row, rs in by_row.items()}
    curves = {row: cs for row, cs in curves.items() if cs}
    if BASELINE not in curves:
        return {"rows": [], "verdict": f"no finished `{BASELINE}` run", "points": []}
    last = min(max(c) for cs in curves.values() for c in cs if c)
    points = [e for e in EPOCHS if e < last] + [last]
    out_rows = []
    for row, cs in curves.items():
        entry: Dict[str, Any] = {"row": row, "n": len(cs), "pe": pe_of_row.get(row), "points": {}, "area": None,
                                 "vs_baseline": {}, "area_vs_baseline": None}
        for e in points:
            entry["points"][e] = mean_ci([c[e] for c in cs if e in c])
        areas = [a for a in (_area(c, last) for c in cs) if a is not None]
        entry["area"] = mean_ci(areas)
        if row != BASELINE:
            base = curves[BASELINE]
            for e in points:
                entry["vs_baseline"][e] = welch_ci([c[e] for c in cs if e in c], [c[e] for c in base if e in c])
            entry["area_vs_baseline"] = welch_ci(areas, [a for a in (_area(c, last) for c in base) if a is not None])
        out_rows.append(entry)
    result = {"rows": out_rows, "points": points, "last": last, "early": EARLY if EARLY in points else None}
    result["verdict"] = verdict(out_rows, result["early"])
    return result


def lead(entry: Dict[str, Any], epoch: Optional[int]) -> Optional[str]:
    """"leads" / "trails" / "level" at ``epoch`` by the Welch interval against vanilla (None
    without an interval)."""
    ci = entry["vs_baseline"].get(epoch) if epoch is not None else None
    if not ci or ci["ci_low"] is None:
        return None
    return "leads" if ci["ci_low"] > 0 else "trails" if ci["ci_high"] < 0 else "level"


def verdict(rows: Sequence[Dict[str, Any]], early: Optional[int]) -> str:
    others = [r for r in rows if r["row"] != BASELINE]
    if early is None or not others:
        return "inconclusive (no epoch-2 evaluation or no row besides vanilla)"
    leads = {r["row"]: lead(r, early) for r in others}
    if any(v is None for v in leads.values()):
        return "inconclusive (a row has fewer than 2 seeds)"
    no_pe = [r["row"] for r in others if r["pe"] is False]
    with_pe = [r["row"] for r in others if r["pe"] is True]
    leading = sorted(row for row, v in leads.items() if v == "leads")
    if not leading:
        return f"no early lead: no row is ahead of vanilla at epoch {early}"
    if no_pe and all(leads[r] == "leads" for r in no_pe) and not any(leads[r] == "leads" for r in with_pe):
        control = f"; the rows with PE ({', '.join(f'`{r}`' for r in with_pe)}) do not" if with_pe else ""
        return (f"no absolute PE learns faster early: every row without PE leads vanilla at epoch {early}, with "
                f"AGF's coefficient or ALiBi's slope alike{control}, so the lead goes with dropping the absolute PE, "
                "not with the decaying bias")
    if no_pe and with_pe and all(leads[r] == "leads" for r in no_pe):
        by_row = {r["row"]: r["vs_baseline"][early] for r in others}
        low_no_pe = min(by_row[r]["ci_low"] for r in no_pe)
        high_pe = max(by_row[r]["ci_high"] for r in with_pe)
        if low_no_pe > high_pe:
            span = lambda rows: (f"{min(by_row[r]['diff'] for r in rows):+.2f} to "  # noqa: E731
                                 f"{max(by_row[r]['diff'] for r in rows):+.2f}")
            pe_leading = [r for r in with_pe if leads[r] == "leads"]
            return (f"mostly the missing absolute PE: at epoch {early} every row without PE leads vanilla "
                    f"({span(no_pe)} points), each by more than any row with PE and the same decaying coefficient "
                    f"({span(with_pe)}; of these {', '.join(f'`{r}`' for r in pe_leading)} lead"
                    f"{'s' if len(pe_leading) == 1 else ''}): the decaying bias with PE gives a smaller early lead")
    if all(v == "leads" for v in leads.values()):
        return f"a decaying bias learns faster early: every row leads vanilla at epoch {early}, the rows with PE too"
    return f"mixed: at epoch {early} {', '.join(f'`{r}`' for r in leading)} lead vanilla, the others do not"


def _f(x: Optional[float], sign: bool = False) -> str:
    return "–" if x is None else (f"{x:+.2f}" if sign else f"{x:.2f}")


def to_markdown(result: Dict[str, Any], labels: Dict[str, str]) -> List[str]:
    out = ["## Learning speed (not a claim of the paper)", "",
           "Validation accuracy at the end of epochs " + ", ".join(map(str, result.get("points", []))) +
           " and the area under the validation curve (trapezoid over epochs 1 to the last, divided by the span: the "
           "curve's mean height), mean [95% t interval] over seeds; below each, the difference to vanilla with its 95% "
           f"Welch interval. Rule (`agf_exp/results/learning_speed.py`): a row leads at epoch {EARLY} when that "
           "interval lies above 0; rows with and without the absolute PE are the controls that separate \"a decaying "
           "bias learns faster\" from \"no absolute PE learns faster\". All accuracies here and in the tables are read at "
           "the last epoch's (or the named epoch's) evaluation; BLEU from the decoded checkpoint (see Provenance).", ""]
    if not result["rows"]:
        return out + [f"**{result['verdict']}**.", ""]
    pts = result["points"]
    out += ["| row | PE | seeds | " + " | ".join(f"epoch {e}" for e in pts) + " | area |",
            "|---|---|---|" + "---|" * (len(pts) + 1)]
    for r in result["rows"]:
        cells = [f"{_f(r['points'][e]['mean'])} [{_f(r['points'][e]['ci_low'])}, {_f(r['points'][e]['ci_high'])}]"
                 for e in pts]
        a = r["area"]
        out.append(f"| {labels.get(r['row'], r['row'])} | {'yes' if r['pe'] else 'no'} | {r['n']} | " + " | ".join(cells)
                   + f" | {_f(a['mean'])} [{_f(a['ci_low'])}, {_f(a['ci_high'])}] |")
        if r["row"] != BASELINE:
            diffs = [f"{_f(r['vs_baseline'][e]['diff'], True)} [{_f(r['vs_baseline'][e]['ci_low'], True)}, "
                     f"{_f(r['vs_baseline'][e]['ci_high'], True)}]" for e in pts]
            d = r["area_vs_baseline"]
            out.append(f"| − vanilla | | | " + " | ".join(diffs)
                       + f" | {_f(d['diff'], True)} [{_f(d['ci_low'], True)}, {_f(d['ci_high'], True)}] |")
    out += ["", f"**Verdict: {result['verdict']}.**", "", "![learning speed](curves/learning_speed.png)", ""]
    return out


def plot(by_row: Dict[str, List[Run]], labels: Dict[str, str], path,
         rows: Sequence[str] = ("vanilla", "agf_m_pcmv", "alibi_bl", "agf_m_sco_pe")):
    """Mean val-acc curves with their 95 % t bands for vanilla and the rows that separate the
    explanations."""
    series = {labels.get(row, row): [sorted(_curve(r).items()) for r in by_row.get(row, []) if r.complete]
              for row in rows}
    return plot_curves({k: v for k, v in series.items() if v}, path, "validation accuracy (%)",
                       "learning speed: mean over seeds, 95% interval bands", band="ci95")


def rows_pe(runs: Sequence[Run]) -> Dict[str, bool]:
    """Whether each row's runs add the absolute PE (from their configs; None-free rows only)."""
    out: Dict[str, bool] = {}
    for r in runs:
        if r.row is not None and "pe" in r.config:
            out.setdefault(r.row, bool(r.config["pe"]))
    return out

