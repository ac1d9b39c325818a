"""The paper's claims as comparisons between rows, each with a verdict that follows from the numbers.

Every claim compares two rows on the paper's metric, final validation accuracy (mean over
seeds): ``Δ = mean(row) − mean(versus)``, with a 95% Welch confidence interval (seeds are the
samples; at least 2 per row). Two kinds:

* ``better``: the paper reports ``row`` above ``versus``. **reproduced** when the interval lies
  above 0, **not reproduced** when it lies below 0, **inconclusive** when it contains 0.
* ``par``: the paper reports ``row`` within a fraction of a point of ``versus`` (its Table 2).
  **reproduced** when the interval lies inside ``±PAR_MARGIN`` points, **not reproduced** when it
  lies entirely outside, **inconclusive** otherwise.

Runs whose subword segmentations differ (another sentencepiece version trains another model)
have no common token-level metric, so such a pair gets **not comparable** instead of a verdict.

Test BLEU gets a verdict of its own, by the same rules (``par``: within ``±BLEU_PAR_MARGIN``), from
two 95% intervals that each hold one source of variation fixed: the paired bootstrap over test
sentences of the seed-averaged BLEU (test-set sampling, given the trained models) and the Welch
interval over the seeds' corpus BLEU (training seeds, given the test set). The BLEU verdict is
decided only where both intervals decide it the same way, else **inconclusive**: a sentence
bootstrap alone would call a difference that one more seed can erase "reproduced". The report
shows both verdicts where they differ. For a claim whose
accuracy verdict is inconclusive, :func:`seeds_needed` gives the seeds per row that would decide
the paper's effect size at this scale, from the measured between-seed spread. The learning-curve claim (Fig. 5: a power law describes the
curve) is judged on the mean curve of our best row (among rows with at least 2 seeds) by AIC:
**reproduced** when the power law's AIC is lower by more than 2, **not reproduced** when the
exponential's is, else inconclusive. Every row with a finished run also gets both fits and its
ceilings (descriptive, no verdict).
"""
from __future__ import annotations

import functools
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ..analysis.curves import ACCURACY_MAX, MAX_CEILING_CI_WIDTH, fit_learning_curve
from ..tables import PAPER_ROWS, Table
from .runs import Run
from .stats import (PAR_MARGIN, POWER, holm, paired_bootstrap, seed_bleus, seeds_needed, seeds_text, tost_p, welch_ci,
                    welch_p)
from .tabulate import decoded_statistics, pick_experiment, segmentation_warning, select_runs

BLEU_PAR_MARGIN = 0.5  # test-BLEU points within which two rows count as "on par"
AIC_MARGIN = 2.0


@dataclass(frozen=True)
class Claim:
    key: str
    text: str  # the claim, in one line, with where the paper makes it
    row: str
    versus: str
    kind: str = "better"  # better | par

    @property
    def paper_delta(self) -> float:
        return PAPER_ROWS[self.row][1] - PAPER_ROWS[self.versus][1]


CLAIMS: List[Claim] = [
    Claim("agf_par", "AGF (no PE) is on par with vanilla (Table 2)", "agf", "vanilla", "par"),
    Claim("agf_m_par", "AGF-M (no PE) is on par with vanilla (Table 2)", "agf_m", "vanilla", "par"),
    Claim("pcmv_agf", "PCM-V improves AGF (Table 4)", "agf_pcmv", "agf"),
    Claim("pcmv_agf_m", "PCM-V improves AGF-M (Table 4)", "agf_m_pcmv", "agf_m"),
    Claim("agf_m_pcmv_vanilla", "AGF-M + PCM-V beats vanilla (Table 4)", "agf_m_pcmv", "vanilla"),
    Claim("pcmv_exp_alibi", "PCM-V-Exp improves ALiBi-B-L (Table 5)", "alibi_bl_pcmv_exp", "alibi_bl"),
    Claim("alibi_mul_pcmv", "multiplicative ALiBi-B-L-Mul + PCM-V beats additive ALiBi-B-L (Table 5)",
          "alibi_bl_mul_pcmv", "alibi_bl"),
    Claim("sco_pe_vanilla", "AGF-M + SCO + PE beats vanilla (Table 6)", "agf_m_sco_pe", "vanilla"),
    Claim("sco_pcmv_pe", "adding PCM-V to AGF-M + SCO + PE improves it further (Table 6)",
          "agf_m_sco_pcmv_pe", "agf_m_sco_pe"),
]


def magnitude(ci_low: Optional[float], ci_high: Optional[float], paper_delta: float) -> Optional[str]:
    """Our Δ against the paper's: where the 95 % interval lies relative to the paper's Δ (None
    without an interval). For a positive paper effect "larger"/"smaller", else "above"/"below"."""
    if ci_low is None or ci_high is None:
        return None
    up, down = ("larger than", "smaller than") if paper_delta > 0 else ("above", "below")
    if ci_low > paper_delta:
        return f"{up} the paper's"
    if ci_high < paper_delta:
        return f"{down} the paper's"
    return "consistent with the paper's"


def par_verdict(row: str, versus: str, a, b, ci_low: Optional[float], ci_high: Optional[float],
                margin: float = PAR_MARGIN) -> Tuple[str, Optional[float]]:
    """An on-par claim by the equivalence test: (verdict, TOST p). **reproduced** when the two
    one-sided Welch tests put the difference inside ``±margin`` (TOST p < 0.05, i.e. the 90 %
    interval inside the margin); **not on par: X better (p)** when the 95 % interval excludes 0
    (Welch's two-sided p); else **inconclusive**."""
    if ci_low is None or ci_high is None:
        return "inconclusive (fewer than 2 seeds)", None
    p_eq = tost_p(a, b, margin)
    if p_eq is not None and p_eq < 0.05:
        return "reproduced", p_eq
    if ci_low > 0 or ci_high < 0:
        better = row if ci_low > 0 else versus
        return f"not on par: `{better}` better (p{_prefix(_p(welch_p(a, b)))})", p_eq
    return "inconclusive", p_eq


def _p(p: Optional[float], floor: Optional[float] = None) -> str:
    """A p value with two significant digits; at a resampling test's floor ``p ≤ floor``."""
    if p is None:
        return "–"
    if floor is not None and p <= floor * (1 + 1e-9):
        return f"≤{floor:.2g}"
    return f"{p:.2g}" if p >= 0.001 else "<0.001"


def verdict(kind: str, ci_low: Optional[float], ci_high: Optional[float], margin: float = PAR_MARGIN) -> str:
    if ci_low is None or ci_high is None:
        return "inconclusive (fewer than 2 seeds)"
    if kind == "better":
        if ci_low > 0:
            return "reproduced"
        return "not reproduced" if ci_high < 0 else "inconclusive"
    if kind == "par":
        if -margin <= ci_low and ci_high <= margin:
            return "reproduced"
        return "not reproduced" if ci_low > margin or ci_high < -margin else "inconclusive"
    raise ValueError(f"unknown claim kind {kind!r}")


def bleu_verdict(kind: str, bootstrap: Dict[str, Any], over_seeds: Dict[str, Any]) -> str:
    """The test-BLEU verdict: decided only where the sentence bootstrap's interval and the Welch
    interval over the seeds' BLEU give the same verdict; otherwise inconclusive."""
    by_sentences = verdict(kind, bootstrap["ci_low"], bootstrap["ci_high"], BLEU_PAR_MARGIN)
    by_seeds = verdict(kind, over_seeds["ci_low"], over_seeds["ci_high"], BLEU_PAR_MARGIN)
    if by_seeds.startswith("inconclusive ("):
        return by_seeds
    return by_sentences if by_sentences == by_seeds else "inconclusive"


def curve_verdict(aic_power: Optional[float], aic_exp: Optional[float], margin: float = AIC_MARGIN) -> str:
    if aic_power is None or aic_exp is None or not (math.isfinite(aic_power) and math.isfinite(aic_exp)):
        return "inconclusive (no fit)"
    if aic_power < aic_exp - margin:
        return "reproduced"
    return "not reproduced" if aic_exp < aic_power - margin else "inconclusive"


def evaluate_claims(runs: List[Run], experiment: Optional[str] = None, n_bootstrap: int = 1000) -> Dict[str, Any]:
    """Every claim's numbers and verdict from the finished runs."""
    needed = {c.row for c in CLAIMS} | {c.versus for c in CLAIMS}
    rows = [row for row in PAPER_ROWS if row in needed]  # the paper's order
    experiment = pick_experiment(runs, rows, experiment)
    by_row, _, _ = select_runs(Table("claims", "", rows), runs, experiment)
    acc = {row: [r.summary["final"]["val_acc"] for r in rs if r.summary["final"].get("val_acc") is not None]
           for row, rs in by_row.items()}
    results = []
    for claim in CLAIMS:
        va, vb = acc[claim.row], acc[claim.versus]
        ci = welch_ci(va, vb)
        entry = {"key": claim.key, "text": claim.text, "row": claim.row, "versus": claim.versus, "kind": claim.kind,
                 "paper_delta": claim.paper_delta, **ci, "bootstrap": None, "bleu_seeds": None,
                 "verdict": verdict(claim.kind, ci["ci_low"], ci["ci_high"]), "bleu_verdict": None,
                 "seeds_needed": None, "seeds_needed_observed": None, "p_welch": welch_p(va, vb), "p_tost": None,
                 "magnitude": magnitude(ci["ci_low"], ci["ci_high"], claim.paper_delta)}
        if claim.kind == "par":
            entry["verdict"], entry["p_tost"] = par_verdict(claim.row, claim.versus, va, vb, ci["ci_low"], ci["ci_high"])
        # the p the verdict rests on: the difference test for "better", the equivalence test for "par"
        entry["p"] = entry["p_tost"] if claim.kind == "par" else entry["p_welch"]
        if not acc[claim.row] or not acc[claim.versus]:
            entry["verdict"] = "no runs yet"
        elif segmentation_warning(by_row[claim.row] + by_row[claim.versus]):
            entry["verdict"] = "not comparable: mixed subword models"
        a, b = decoded_statistics(by_row[claim.row]), decoded_statistics(by_row[claim.versus])
        if a and b and a[0].shape[0] == b[0].shape[0]:
            entry["bootstrap"] = bs = paired_bootstrap(a, b, n_samples=n_bootstrap)
            entry["bleu_seeds"] = seeds = welch_ci(seed_bleus(a), seed_bleus(b))
            entry["bleu_verdict"] = bleu_verdict(claim.kind, bs, seeds)
        if entry["verdict"] == "inconclusive":
            entry["seeds_needed"] = seeds_needed(va, vb, claim.paper_delta, claim.kind)
            if ci["diff"] is not None:
                # sized on what we measured: for "par" whichever test the observed Δ points to
                kind = "par" if claim.kind == "par" and abs(ci["diff"]) < PAR_MARGIN else "better"
                entry["seeds_needed_observed"] = seeds_needed(va, vb, abs(ci["diff"]) if kind == "better" else ci["diff"],
                                                              kind)
                entry["seeds_needed_observed_test"] = ("equivalence" if kind == "par"
                                                       else "difference")
        results.append(entry)
    for entry, p_adj in zip(results, holm([e["p"] if not e["verdict"].startswith(("no ", "not comp")) else None
                                          for e in results])):
        entry["p_holm"] = p_adj
    return {"experiment": experiment, "claims": results,
            "warnings": segmentation_warning([r for rs in by_row.values() for r in rs]),
            "curve": curve_claim(by_row),
            "attention": attention_evidence(by_row), "par_margin": PAR_MARGIN}


def _mean_curve(runs: List[Any]) -> Tuple[List[int], List[float]]:
    """The epochs every run evaluated at (epoch ends only) and the mean val acc over the runs there."""
    curves = [{m["epoch"]: m["val_acc"] for m in r.metrics if float(m.get("epoch_fraction", m["epoch"])).is_integer()}
              for r in runs]
    epochs = sorted(set.intersection(*(set(c) for c in curves)) - {0}) if curves else []
    return epochs, [float(np.mean([c[e] for c in curves])) for e in epochs]


def _fits(epochs: List[int], mean: List[float]) -> Dict[str, Dict[str, Any]]:
    # an unidentified ceiling is the optimiser's resting point on a flat objective: its digits
    # differ between machines, so the files keep only that it is not identifiable
    # and the fitted figures keep the digits the report prints (the optimiser's tolerance, not the
    # data, sets the digits beyond them)
    def r(x, digits):
        return x if x is None or not math.isfinite(x) else float(f"{x:.{digits}f}")

    return {form: {"ceiling": r(f.ceiling, 2) if f.identifiable else None,
                   "ceiling_ci": [r(x, 2) for x in f.ceiling_ci] if f.identifiable else None, "r2": r(f.r2, 4),
                   "aic": r(f.aic, 1), "identifiable": f.identifiable, "ceiling_text": f.ceiling_text()}
            for form, f in fit_learning_curve(epochs, mean, upper=ACCURACY_MAX).items()}


FIG5_ROW = "agf_m_sco_pcmv_pe"  # the row of the paper's Fig. 5 (AGF-M + SCO + PCM-V + PE)


def warmup_epochs(runs: List[Any]) -> Optional[int]:
    """The epoch within which the learning-rate warm-up ends (``trainer.warmup_steps`` over the
    run's updates per epoch, rounded up): its end is the first evaluation after the warm-up. None
    where the runs do not say."""
    for r in runs:
        steps, epochs = (r.summary or {}).get("steps"), (r.summary or {}).get("epochs")
        warmup = ((r.config or {}).get("trainer") or {}).get("warmup_steps")
        if steps and epochs and warmup:
            return int(math.ceil(warmup / (steps / epochs)))
    return None


def _window_fits(epochs: List[int], mean: List[float], start: Optional[int]) -> Optional[Dict[str, Any]]:
    """Both fits on the epochs from ``start`` on (None when fewer than 5 remain or no start)."""
    if start is None:
        return None
    keep = [i for i, e in enumerate(epochs) if e >= start]
    if len(keep) < 5 or len(keep) == len(epochs):
        return None
    e, m = [epochs[i] for i in keep], [mean[i] for i in keep]
    fits = _fits(e, m)
    return {"epochs": e, "fits": fits, "verdict": curve_verdict(fits["power"]["aic"], fits["exponential"]["aic"])}


def curve_claim(by_row: Dict[str, List[Any]]) -> Dict[str, Any]:
    """Fig. 5: power law vs exponential on the mean per-epoch curve of the paper's Fig. 5 row
    (AGF-M + SCO + PCM-V + PE) when it has 2 finished seeds, else of our best row; fitted on every
    epoch and, as a sensitivity check, on the epochs after the learning-rate warm-up (the curve's
    shape there is the schedule's as much as the model's). The verdict names the window when the
    two disagree. The same fits on every row with a finished run (descriptive: each row's
    ceiling)."""
    best, best_acc = None, -math.inf
    for row, rs in by_row.items():
        values = [r.summary["final"]["val_acc"] for r in rs if r.summary["final"].get("val_acc") is not None]
        if len(values) >= 2 and np.mean(values) > best_acc:  # "best" needs seeds to mean anything
            best, best_acc = row, float(np.mean(values))
    if len([r for r in by_row.get(FIG5_ROW, []) if r.summary["final"].get("val_acc") is not None]) >= 2:
        best = FIG5_ROW
    out: Dict[str, Any] = {"row": best, "epochs": None, "fits": None, "fig5_row": best == FIG5_ROW,
                           "verdict": "inconclusive (no row with 2 finished seeds yet)", "rows": [],
                           "warmup_epochs": None, "after_warmup": None}
    for row, rs in by_row.items():
        epochs, mean = _mean_curve(rs)
        if len(epochs) >= 5:
            out["rows"].append({"row": row, "n": len(rs), "epochs": epochs, "last": mean[-1],
                                "fits": _fits(epochs, mean),
                                "after_warmup": _window_fits(epochs, mean, warmup_epochs(rs))})
    if best is None:
        return out
    epochs, mean = _mean_curve(by_row[best])
    out["epochs"] = epochs
    if len(epochs) < 5:
        out["verdict"] = "inconclusive (fewer than 5 epochs)"
        return out
    out["mean_curve"] = mean
    out["fits"] = _fits(epochs, mean)
    whole = curve_verdict(out["fits"]["power"]["aic"], out["fits"]["exponential"]["aic"])
    out["warmup_epochs"] = warmup_epochs(by_row[best])
    out["after_warmup"] = late = _window_fits(epochs, mean, out["warmup_epochs"])
    out["verdict"] = whole
    if late is not None and late["verdict"] != whole:
        out["verdict"] = (f"depends on the fit window: {whole} on epochs {epochs[0]}–{epochs[-1]}, "
                          f"{late['verdict']} on epochs {late['epochs'][0]}–{late['epochs'][-1]} (after the warm-up)")
    return out


ANALYSED_ROWS = ("vanilla", "agf_m", "agf_m_pcmv")  # the models whose attention the report describes


def _analysis(run_dir: str, name: str) -> Optional[Dict[str, Any]]:
    """``<run_dir>/analysis/<name>.json`` as written by ``python -m agf_exp.analyze <name>``."""
    path = Path(run_dir) / "analysis" / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def decay_fits(run_dir: str) -> Optional[list]:
    """The run's stored attention profiles (``analyze decay``) refitted with
    :mod:`agf_exp.analysis.decay`'s current rules; None without the file. The fits take seconds
    per run, and the claims and the appendix both need them: fitted once per file version."""
    path = Path(run_dir) / "analysis" / "decay.json"
    return _fit_file(str(path), path.stat().st_mtime_ns) if path.is_file() else None


@functools.lru_cache(maxsize=64)
def _fit_file(path: str, mtime_ns: int) -> list:
    from ..analysis import decay

    return decay.fit_profiles(decay.profiles_from_json(json.loads(Path(path).read_text())["profiles"]))


def attention_evidence(by_row: Dict[str, List[Any]]) -> Dict[str, Any]:
    """Decay fits and head scores (``analyze decay`` / ``analyze heads``) of the analysed rows, read
    from ``<run>/analysis/{decay,heads}.json`` of their finished runs, and the verdict on §6's claim
    that attention decays with distance as a power law rather than exponentially. The stored
    profiles are refitted with :mod:`agf_exp.analysis.decay`'s current rules, and every (model,
    module, head, side) profile counts for the power law, the exponential or neither
    (:func:`~agf_exp.analysis.decay.judge`: a form counts only where it predicts the held-out far
    half better than its mean and better than the other). The profiles are counted per family
    (:data:`FAMILIES`: vanilla apart from the models with a decaying coefficient) and each family
    gets :func:`_decay_verdict`; the claim's verdict is the AGF family's."""
    models = []
    for row in ANALYSED_ROWS:
        for run in by_row.get(row, []):
            fits, heads = decay_fits(run.path), _analysis(run.path, "heads")
            if fits is None and heads is None:
                continue
            pos = run.config.get("pos") or {}
            applies = [] if pos.get("name", "none") == "none" else (pos.get("apply_to") or ["enc", "dec"])
            entry: Dict[str, Any] = {"row": row, "seed": run.seed, "run": run.path,
                                     "positional_types": [t for t in ("enc", "dec", "cross") if t in applies]}
            if fits is not None:
                mine = {form: sum(f.better == form for f in fits) for form in ("power", "exponential", "neither")}
                mine["degenerate"] = sum(bool(f.power["degenerate"]) for f in fits)
                entry["decay"] = {"profiles": len(fits), **mine,
                                  "median_r2_tail_power": float(np.median([f.pure_power["r2_tail"] for f in fits]))
                                  if fits else None,
                                  "median_r2_tail_exponential": float(np.median([f.exponential["r2_tail"] for f in fits]))
                                  if fits else None}
            if heads is not None:
                by_type: Dict[str, Dict[str, Any]] = {}
                for h in heads["heads"]:
                    t = by_type.setdefault(h["attn_type"], {"heads": 0, "positional": 0, "symbolic": 0, "mixed": 0,
                                                            "eta_pos": [], "eta_sym": []})
                    t["heads"] += 1
                    t[h["dominant"]] += 1
                    t["eta_pos"].append(h["eta_pos"])
                    t["eta_sym"].append(h["eta_sym"])
                for t in by_type.values():
                    t["eta_pos"], t["eta_sym"] = float(np.nanmean(t["eta_pos"])), float(np.nanmean(t["eta_sym"]))
                entry["heads"] = by_type
            models.append(entry)
    out: Dict[str, Any] = {"models": models, "families": []}
    for family, label, rows in FAMILIES:
        fam = {"power": 0, "exponential": 0, "neither": 0, "degenerate": 0}
        for m in models:
            if m["row"] in rows and m.get("decay"):
                for key in fam:
                    fam[key] += m["decay"][key]
        out["families"].append({"family": family, "label": label, "rows": list(rows), **_decay_verdict(fam)})
    # the paper's §6 claim is about the models with a positional coefficient (AGF-M's family)
    head = next(f for f in out["families"] if f["family"] == "agf")
    out.update({k: head[k] for k in ("power", "exponential", "neither", "degenerate", "profiles", "p", "verdict")})
    return out


#: the decay families: vanilla has no positional coefficient (its only position is the PE
#: inside the contents), the AGF-M rows multiply the scores by a decaying coefficient
FAMILIES = (("vanilla", "no positional coefficient (vanilla)", ("vanilla",)),
            ("agf", "decaying positional coefficient (AGF-M, AGF-M + PCM-V)", ("agf_m", "agf_m_pcmv")))


def _decay_verdict(counts: Dict[str, int]) -> Dict[str, Any]:
    """A family's verdict over its profiles (two-sided binomial tests against 1/2): **reproduced**
    when the power law describes more than half of all its profiles (p < 0.05), **not
    reproduced** when the exponential does, **neither** when most are described by neither form,
    else **inconclusive**; and, among the profiles where one form is decided, which wins
    (``decided``: "power law", "exponential" or "no preference")."""
    from scipy import stats

    n = counts["power"] + counts["exponential"] + counts["neither"]
    out: Dict[str, Any] = {**counts, "profiles": n, "p": None, "decided_p": None}
    if n == 0:
        out["verdict"], out["decided"] = "no analysis yet (run `python -m agf_exp.analyze decay` on the runs)", None
        return out
    leader = max(("power", "exponential", "neither"), key=lambda form: counts[form])
    out["p"] = float(stats.binomtest(counts[leader], n, 0.5).pvalue)
    if counts[leader] > n / 2 and out["p"] < 0.05:
        out["verdict"] = {"power": "reproduced", "exponential": "not reproduced", "neither": "neither"}[leader]
    else:
        out["verdict"] = "inconclusive"
    decided = counts["power"] + counts["exponential"]
    out["decided"] = "no preference"
    if decided:
        out["decided_p"] = float(stats.binomtest(counts["power"], decided, 0.5).pvalue)
        if out["decided_p"] < 0.05:
            out["decided"] = "power law" if counts["power"] > counts["exponential"] else "exponential"
    return out


def _f(x: Optional[float], digits: int = 2, sign: bool = True) -> str:
    return "–" if x is None else (f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}")


def to_markdown(result: Dict[str, Any]) -> str:
    """The report's claims section: the verdict table, the learning-curve and attention-decay
    claims."""
    return "\n".join(_claims_table(result) + _curve_section(result["curve"])
                     + _attention_section(result.get("attention"))) + "\n"


def _claims_table(result: Dict[str, Any]) -> List[str]:
    f = _f
    m = result["par_margin"]
    out = ["## The paper's claims at this scale", "",
           "Δ = final validation accuracy of the row minus the other (mean over seeds, 95% Welch interval). Verdicts "
           "(rules: `agf_exp/results/claims.py`): a claim that one row beats another is \"reproduced\" when the "
           "interval lies above 0, \"not reproduced\" below 0, else \"inconclusive\"; an on-par claim is judged by an "
           f"equivalence test (two one-sided Welch tests, TOST, margin ±{m:g} points): \"reproduced\" when TOST p < 0.05, "
           "\"not on par: X better\" when the 95% interval excludes 0, else \"inconclusive\". p: the test the verdict "
           "rests on (Welch's two-sided p for \"beats\", TOST's p for \"on par\"), raw and Holm-adjusted over the "
           "claims shown. Size: where the interval lies against the paper's Δ (larger / smaller than the paper's when "
           "it excludes the paper's Δ, else consistent with it). ΔBLEU: test BLEU of the row minus the other (mean over "
           "seeds), with the paired bootstrap's 95% interval over test sentences and its p (a two-sided test of the "
           "resampled differences shifted to mean 0, which cannot go below 1/(resamples + 1): printed as ≤ that floor), "
           "and the 95% Welch interval over the seeds' BLEU; test BLEU's verdict is decided only where both intervals "
           f"decide it (\"on par\": within ±{BLEU_PAR_MARGIN:g} BLEU). The verdict is on validation accuracy (the "
           "paper's metric); where test BLEU's verdict differs, both are given. Seeds to decide, for claims still "
           f"inconclusive: seeds per row for which the 95% interval would decide with probability {POWER:g}, given the "
           "measured spread (Welch two-sample sample size), sized once on the paper's Δ (for on-par claims: the "
           f"equivalence test, margin {m:g} − |paper Δ|) and once on our observed Δ (the test it names).", "",
           "| claim | rows | paper Δ | our Δ [95% CI] | seeds | p (Holm) | size vs paper | ΔBLEU [95% CI], p | "
           "ΔBLEU over seeds [95% CI] | verdict | seeds to decide: paper's Δ; observed Δ |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in result["claims"]:
        ci = "" if c["ci_low"] is None else f" [{f(c['ci_low'])}, {f(c['ci_high'])}]"
        bs = c["bootstrap"]
        bleu = "–" if bs is None else (f"{f(bs['diff'])} [{f(bs['ci_low'])}, {f(bs['ci_high'])}], "
                                       f"p{_prefix(_p(bs['p'], 1 / (bs['samples'] + 1)))}")
        sd = c.get("bleu_seeds")
        over_seeds = "–" if not sd or sd["ci_low"] is None else f"[{f(sd['ci_low'])}, {f(sd['ci_high'])}]"
        verdicts = f"**{c['verdict']}**"
        if c.get("bleu_verdict") and c["bleu_verdict"] != c["verdict"] and not c["verdict"].startswith(("no ", "not comp")):
            verdicts = f"val acc: **{c['verdict']}**; test BLEU: **{c['bleu_verdict']}**"
        p = "–" if c.get("p") is None else f"{_p(c['p'])} ({_p(c.get('p_holm'))})"
        if c["kind"] == "par" and c.get("p") is not None:
            p = f"TOST {p}"
        need = "–"
        if c.get("seeds_needed") is not None:
            paper = seeds_text(c["seeds_needed"]) + (" (equivalence)" if c["kind"] == "par" else "")
            observed = seeds_text(c.get("seeds_needed_observed"))
            if c.get("seeds_needed_observed_test"):
                observed += f" ({c['seeds_needed_observed_test']})"
            need = f"{paper}; {observed}"
        out.append(f"| {c['text']} | `{c['row']}` − `{c['versus']}` | {c['paper_delta']:+.4f} | {f(c['diff'])}{ci} | "
                   f"{c['n'][0]}+{c['n'][1]} | {p} | {c.get('magnitude') or '–'} | {bleu} | {over_seeds} | {verdicts} | "
                   f"{need} |")
    for warning in result.get("warnings", []):
        out += ["", f"**Caution:** {warning}"]
    return out


def _prefix(p: str) -> str:
    """``=0.02`` / ``≤0.001`` / ``<0.001``: a p value after "p"."""
    return p if p[:1] in "≤<" else f"={p}"


def _curve_section(cv: Dict[str, Any]) -> List[str]:
    out = ["", "Learning curve (Fig. 5: the paper fits a power law and reads off a ceiling): "]
    if cv["fits"]:
        p, e = cv["fits"]["power"], cv["fits"]["exponential"]
        which = "the paper's Fig. 5 row" if cv.get("fig5_row") else "our best row (the Fig. 5 row has < 2 seeds)"
        out[-1] += (f"on `{cv['row']}` ({which}, mean of its seeds), all epochs {cv['epochs'][0]}–{cv['epochs'][-1]}: "
                    f"power law: ceiling {p['ceiling_text']}, R² {p['r2']:.4f}, AIC {p['aic']:.1f}; "
                    f"exponential: ceiling {e['ceiling_text']}, R² {e['r2']:.4f}, AIC {e['aic']:.1f}")
        late = cv.get("after_warmup")
        if late:
            lp, le = late["fits"]["power"], late["fits"]["exponential"]
            out[-1] += (f". After the warm-up (it ends within epoch {cv['warmup_epochs']}; the evaluations at the ends of "
                        f"epochs {late['epochs'][0]}–{late['epochs'][-1]}): power law ceiling {lp['ceiling_text']}, "
                        f"AIC {lp['aic']:.1f}; exponential ceiling {le['ceiling_text']}, AIC {le['aic']:.1f}")
        out[-1] += (f": **{cv['verdict']}** (rule: reproduced when the power law's AIC is lower by more than "
                    f"{AIC_MARGIN:g}, not reproduced when the exponential's is, else inconclusive; decided on both "
                    "windows or said to depend on the window).")
    else:
        out[-1] += f"**{cv['verdict']}**."
    if cv.get("rows"):
        out += ["", "Learning-curve fits of every row (mean per-epoch val acc over its seeds; `a - b·x^(-c)` "
                    f"and `a - b·exp(-c·x)` with the ceiling `a` <= {ACCURACY_MAX:g}, given with its 95% interval "
                    f"unless that is wider than {MAX_CEILING_CI_WIDTH:g} points or the fit sits on the bound):", "",
                "| row | seeds | epochs | last val acc | power-law ceiling [95% CI] | R² power | "
                "exponential ceiling [95% CI] | AIC power / exp | after warm-up: epochs, AIC power / exp, verdict |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in cv["rows"]:
            p, e = r["fits"]["power"], r["fits"]["exponential"]
            late = r.get("after_warmup")
            sens = "–" if not late else (f"{late['epochs'][0]}–{late['epochs'][-1]}, {late['fits']['power']['aic']:.1f} / "
                                         f"{late['fits']['exponential']['aic']:.1f}, {late['verdict']}")
            whole = curve_verdict(p["aic"], e["aic"])
            out.append(f"| `{r['row']}` | {r['n']} | {r['epochs'][0]}–{r['epochs'][-1]} | {r['last']:.2f} | "
                       f"{p['ceiling_text']} | {p['r2']:.4f} | "
                       f"{e['ceiling_text']} | {p['aic']:.1f} / {e['aic']:.1f} ({whole}) | {sens} |")
    return out


def _attention_section(att: Optional[Dict[str, Any]]) -> List[str]:
    att = att or {"models": [], "verdict": "no analysis yet"}
    out = ["", "Attention decay (§6: power law rather than exponential; `analyze decay`; each form fitted on "
                "the near half of the distances, judged on the far half, where a profile counts for a form only "
                "when the form predicts the far half better than its mean (held-out R² > 0) and better than the "
                "other; the power law is `G·d^-k`, AGF's `G/(1+d/r)^k` is reported beside it): "]
    families = [f for f in att.get("families", []) if f.get("profiles")]
    if families:
        out[-1] += ("counted per family, since vanilla has no positional coefficient and the claim is about the "
                    "models that have one (the claim's verdict is the AGF family's). Verdict rule per family "
                    "(two-sided binomial tests against 1/2): reproduced when the power law describes more than half "
                    "of all profiles, not reproduced when the exponential does, neither when most are described by "
                    "neither form; among the profiles where one form is decided, which one wins.")
        out += ["", "| family | profiles | power | exponential | neither (p) | verdict | decided: power vs exponential (p) | "
                    "AGF form degenerate |", "|---|---|---|---|---|---|---|---|"]
        for f in families:
            out.append(f"| {f['label']} | {f['profiles']} | {f['power']} | {f['exponential']} | {f['neither']} "
                       f"({f['p']:.2g}) | **{f['verdict']}** | {f['power']} vs {f['exponential']}: **{f['decided']}**"
                       f" ({'–' if f['decided_p'] is None else format(f['decided_p'], '.2g')}) | {f['degenerate']} |")
        out += ["", "AGF's form is degenerate when a parameter sits on its bound (r at its lower bound turns it into "
                    "a pure power law and leaves r unidentified); such fits print no parameters. Caveat: the mean "
                    "weight at distance d mixes sentence lengths (only rows longer than d reach it, each renormalised "
                    "over its own keys), so part of any decay is the length mix of the split."]
    else:
        out[-1] += f"**{att['verdict']}**."
    if att["models"]:
        out += ["", "| model | seed | decay: power / exponential / neither of profiles (AGF degenerate) | "
                    "median far-half R² power / exp | "
                    "heads positional / symbolic / mixed (enc, dec, cross) | mean η_pos / η_sym (enc, dec, cross) |",
                "|---|---|---|---|---|---|"]
        for m in att["models"]:
            d, h = m.get("decay"), m.get("heads") or {}
            decay = "–" if d is None else \
                f"{d['power']} / {d['exponential']} / {d['neither']} of {d['profiles']} ({d['degenerate']})"
            r2 = "–" if d is None or d["median_r2_tail_power"] is None else \
                f"{d['median_r2_tail_power']:.2f} / {d['median_r2_tail_exponential']:.2f}"
            kinds = ", ".join(f"{h[t]['positional']}/{h[t]['symbolic']}/{h[t]['mixed']}" if t in h else "–"
                              for t in ("enc", "dec", "cross"))
            etas = ", ".join(f"{h[t]['eta_pos']:.2f}/{h[t]['eta_sym']:.2f}" if t in h else "–"
                             for t in ("enc", "dec", "cross"))
            out.append(f"| `{m['row']}` | {m['seed']} | {decay} | {r2} | {kinds} | {etas} |")
    return out


def analysis_appendix(result: Dict[str, Any]) -> str:
    """The full per-head tables (``analyze heads`` and ``analyze decay``) of the first analysed
    seed of each analysed row, rebuilt from the analysis files."""
    from ..analysis import decay, heads

    shown, out = set(), []
    for m in (result.get("attention") or {}).get("models", []):
        if m["row"] in shown:
            continue
        shown.add(m["row"])
        out += [f"### Attention of `{m['row']}` (seed {m['seed']})", ""]
        h, fits = _analysis(m["run"], "heads"), decay_fits(m["run"])
        if h is not None:
            scores = [heads.HeadScores(**{k: v for k, v in x.items() if k != "dominant"}) for x in h["heads"]]
            positional = h.get("positional_types", m.get("positional_types", ["enc", "dec"]))
            out += ["Positional vs symbolic heads (`analyze heads`):", "",
                    heads.to_markdown(scores, pe=h.get("pe", False), positional=positional)]
        if fits is not None:
            out += ["Attention by distance (`analyze decay`):", "", decay.to_markdown(fits)]
    return "\n".join(out) + ("\n" if out else "")
