"""Writers of a table's structured result: Markdown, CSV and JSON (floats rounded so that the
files regenerate byte-identically on any machine)."""
from __future__ import annotations

import csv
import io
import json
from typing import Any, Dict, Optional


def _fmt(x: Optional[float], digits: int = 2, sign: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _pm(stat: Dict[str, Any], digits: int = 2) -> str:
    if stat["mean"] is None:
        return "–"
    return _fmt(stat["mean"], digits) + ("" if stat["std"] is None else f" ± {stat['std']:.{digits}f}")


def _ci(stat: Dict[str, Any], digits: int = 2) -> str:
    return "–" if stat.get("ci_low") is None else f"[{stat['ci_low']:.{digits}f}, {stat['ci_high']:.{digits}f}]"


def to_markdown(result: Dict[str, Any]) -> str:
    name = result["table"]
    out = [f"### {name.replace('table', 'Table ')}: {result['title']}", ""]
    if name == "table3":
        out += ["| raw K/V | PosCoeff | raw score | softmax | output without PCM-V | output with PCM-V |",
                "|---|---|---|---|---|---|"]
        for r in result["example"]:
            out.append(f"| {r['raw']:g} | {r['coef']:g} | {r['raw']:g}·{r['coef']:g} = {r['score']:g} | "
                       f"{r['softmax']:.2f} | {r['softmax']:.2f}·{r['raw']:g} = {r['contribution']:g} | "
                       f"{r['softmax']:.2f}·{r['coef']:g}·{r['raw']:g} = {r['contribution_pcmv']:g} |")
        out += ["", f"Attention output (computed by `agf_exp.attention.attention`): {result['output']:g} without "
                f"PCM-V, {result['output_pcmv']:g} with PCM-V. Equal scores give equal weights, yet without PCM-V "
                "the far key (coefficient 0.1) contributes 5x as much as the near one; with PCM-V both contribute "
                "the same. (The paper prints the softmax weight as 0.1 for illustration; two equal scores get 0.5 each.)"]
        return "\n".join(out) + "\n"
    if name == "table1":
        out += [f"Experiment: `{result['experiment']}`. Runs: {len(result['runs'])} vanilla (architecture, "
                f"precision, training duration); {result['finished']} finished in all (subwords, hardware).", "",
                "| configuration item | paper | this reproduction |", "|---|---|---|"]
        out += [f"| {i['item']} | {i['paper']} | {i['ours']} |" for i in result["setup"]]
    else:
        base = result["baseline"]
        out += [f"Experiment: `{result['experiment']}`. Runs: {sum(len(r['seeds']) for r in result['rows'])}.", "",
                f"Metric: final validation accuracy (%, teacher-forced, the weights after the last epoch). Δ: "
                f"difference to `{base}`. BLEU: sacreBLEU on the test set decoded from each run's decoded checkpoint "
                "(best.pt, the epoch of the highest validation accuracy, unless trainer.decode_checkpoint=last; see "
                "Provenance); bootstrap: paired, over test sentences, vs the baseline" + (
                    " (with one run a side, sacreBLEU's own paired-bs p is printed beside ours: the same "
                    "resamples, its test statistic)." if any((r["bootstrap"] or {}).get("p_sacrebleu") is not None
                                                        for r in result["rows"]) else "."), "",
                "| row | paper | Δ paper | ours (mean ± std) | 95% CI | n | Δ ours | test BLEU | ΔBLEU [95% CI], p |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in result["rows"]:
            bs = r["bootstrap"]
            bs_txt = "–" if bs is None else f"{bs['diff']:+.2f} [{bs['ci_low']:+.2f}, {bs['ci_high']:+.2f}], p={bs['p']:.3f}"
            if bs is not None and bs.get("p_sacrebleu") is not None:
                bs_txt += f" (sacreBLEU paired-bs p={bs['p_sacrebleu']:.3f})"
            label = r["label"] + (" (baseline)" if r["row"] == base else "")
            out.append(f"| {label} | {r['paper']:.4f} | {_fmt(r['paper_diff'], 4, sign=True) if r['row'] != base else ''} | "
                       f"{_pm(r['val_acc'])} | {_ci(r['val_acc'])} | {r['val_acc']['n']} | "
                       f"{_fmt(r['diff'], 2, sign=True) if r['row'] != base else ''} | {_pm(r['test_bleu'])} | {bs_txt} |")
    for warning in result.get("warnings", []):
        out += ["", f"**Caution:** {warning}"]
    for key, title in (("missing", "Missing"), ("unfinished", "Unfinished (no summary.json)"),
                       ("duplicates_ignored", "Duplicate runs not used")):
        if result.get(key):
            out += ["", f"{title}: " + ", ".join(f"`{x}`" for x in result[key])]
    return "\n".join(out) + "\n"


FILE_DIGITS = 6  # significant digits of the floats that the report writes to .json / .csv (fits agree to ~8)


def round_floats(obj: Any, digits: int = FILE_DIGITS) -> Any:
    """``obj`` with every float rounded to ``digits`` significant digits: the bootstrap's vectorised
    numpy sums differ in the last bit between machines, and the committed files should come back
    byte-identical when the report is regenerated from the same runs."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [round_floats(v, digits) for v in obj]
    return obj


def to_json(result: Any) -> str:
    return json.dumps(round_floats(result), indent=2) + "\n"


def to_csv(result: Dict[str, Any]) -> str:
    result = round_floats(result)
    buf = io.StringIO()
    w = csv.writer(buf)
    if result["table"] == "table3":
        w.writerow(["raw", "coef", "score", "softmax", "contribution", "contribution_pcmv"])
        for r in result["example"]:
            w.writerow([r[k] for k in ("raw", "coef", "score", "softmax", "contribution", "contribution_pcmv")])
    elif result["table"] == "table1":
        w.writerow(["item", "paper", "ours"])
        for i in result["setup"]:
            w.writerow([i["item"], i["paper"], i["ours"]])
    else:
        w.writerow(["row", "label", "paper", "paper_diff", "val_acc_mean", "val_acc_std", "val_acc_ci_low",
                    "val_acc_ci_high", "n", "diff", "test_bleu_mean", "test_bleu_std", "bleu_diff", "bleu_ci_low",
                    "bleu_ci_high", "bleu_p"])
        for r in result["rows"]:
            a, b, bs = r["val_acc"], r["test_bleu"], r["bootstrap"] or {}
            w.writerow([r["row"], r["label"], r["paper"], r["paper_diff"], a["mean"], a["std"], a["ci_low"],
                        a["ci_high"], a["n"], r["diff"], b["mean"], b["std"], bs.get("diff"), bs.get("ci_low"),
                        bs.get("ci_high"), bs.get("p")])
    return buf.getvalue()
