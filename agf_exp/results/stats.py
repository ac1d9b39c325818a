"""Statistics of the report and the claims: Student-t intervals of a mean over seeds, Welch
intervals of a difference of means, the seeds a comparison would need, and BLEU from sacreBLEU's
per-sentence sufficient statistics with a paired bootstrap over test sentences.

Paired bootstrap (our implementation of Koehn 2004's resampling; not sacreBLEU's ``paired-bs``
test, whose p compares each resample with the baseline and gives other values): the
test sentences are resampled with replacement (default 1000 times, fixed seed); on each resample
a system's BLEU is recomputed from its per-sentence sufficient statistics (sacreBLEU's own, so the
full-set value equals the logged BLEU) and averaged over the system's seeds; the difference
row - baseline gives a 95% percentile interval, and the two-sided p-value is the textbook
shifted-null test: the share of resampled differences at least as far from their mean as the
observed difference is from 0, with the +1 correction (so it cannot go below 1/(resamples + 1)). It measures test-set sampling noise; seed noise
is in the mean's interval. Where each side is one run (one seed), sacreBLEU's own paired-bs p is
computed from the same resamples too and printed beside ours (``p_sacrebleu``)."""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from . import ReportError

POWER = 0.8  # the probability of a decisive interval that seeds_needed aims for
MAX_SEEDS = 1000  # seeds_needed reports "> MAX_SEEDS" beyond this
PAR_MARGIN = 0.5  # validation-accuracy points within which two rows count as "on par"


def mean_ci(values: Sequence[float], level: float = 0.95) -> Dict[str, Any]:
    """Mean, sample std and the Student-t confidence interval of the mean (None where n < 2)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None], dtype=float)
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci_low": None, "ci_high": None}
    mean = float(x.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "std": None, "ci_low": None, "ci_high": None}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def bleu_statistics(hyps: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    """Per-sentence sufficient statistics of sacreBLEU's default BLEU (13a, cased):
    ``[n, 10]`` = hyp length, ref length, matches 1..4, n-gram totals 1..4."""
    import sacrebleu

    if len(hyps) != len(refs):
        raise ReportError(f"{len(hyps)} translations but {len(refs)} references")
    return np.asarray(sacrebleu.BLEU()._extract_corpus_statistics(list(hyps), [list(refs)]), dtype=np.int64)


def bleu_from_statistics(totals: np.ndarray) -> np.ndarray:
    """sacreBLEU's corpus BLEU (``smooth_method='exp'``) from summed statistics ``[..., 10]``."""
    totals = np.asarray(totals, dtype=float)
    sys_len, ref_len = totals[..., 0], totals[..., 1]
    correct, total = totals[..., 2:6], totals[..., 6:10]
    zero = correct == 0
    smooth = 2.0 ** np.cumsum(zero, axis=-1)  # 'exp' smoothing: 1/2, 1/4, ... for empty orders
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(zero, 100.0 / (smooth * total), 100.0 * correct / total)
        prec = np.where(total == 0, 0.0, prec)
        log_mean = np.log(prec).mean(axis=-1)
        bp = np.where(sys_len < ref_len, np.exp(1.0 - ref_len / np.maximum(sys_len, 1e-300)), 1.0)
        bp = np.where(sys_len == 0, 0.0, bp)
        score = bp * np.exp(log_mean)
    return np.where(zero.all(axis=-1), 0.0, np.nan_to_num(score, nan=0.0))


def seed_bleus(stats_list: Sequence[np.ndarray]) -> List[float]:
    """Each run's corpus BLEU from its per-sentence statistics ``[n, 10]``."""
    return [float(bleu_from_statistics(s.sum(0))) for s in stats_list]


def paired_bootstrap(system: Sequence[np.ndarray], baseline: Sequence[np.ndarray], n_samples: int = 1000,
                     seed: int = 12345) -> Dict[str, float]:
    """Paired bootstrap of the BLEU difference ``system - baseline`` over test sentences; each side
    is a list of per-seed statistics ``[n, 10]`` on the same sentences (BLEU averaged over seeds)."""
    n = system[0].shape[0]
    if any(s.shape[0] != n for s in list(system) + list(baseline)):
        raise ReportError("the paired bootstrap needs translations of the same test sentences for every run")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_samples, n))

    def mean_bleu(stats_list, index=None):
        if index is None:
            return float(np.mean(seed_bleus(stats_list)))
        return np.mean([bleu_from_statistics(s[index].sum(1)) for s in stats_list], axis=0)

    observed = mean_bleu(system) - mean_bleu(baseline)
    diffs = mean_bleu(system, idx) - mean_bleu(baseline, idx)
    out = {**shifted_null(diffs, observed), "samples": n_samples, "sentences": n}
    if len(system) == 1 and len(baseline) == 1:  # one run a side: sacreBLEU's paired-bs applies too
        out["p_sacrebleu"] = sacrebleu_paired_bs_p(diffs, observed)
    return out


def shifted_null(deltas: np.ndarray, observed: float) -> Dict[str, float]:
    """A bootstrap's verdict on an observed difference from its resampled differences: the 95 %
    percentile interval and the two-sided p of the shifted-null test (the share of resampled
    differences at least as far from their mean as ``observed`` is from 0, +1 corrected)."""
    p = (np.sum(np.abs(deltas - deltas.mean()) >= abs(observed)) + 1) / (len(deltas) + 1)
    return {"diff": float(observed), "ci_low": float(np.percentile(deltas, 2.5)),
            "ci_high": float(np.percentile(deltas, 97.5)), "p": float(p)}


def sacrebleu_paired_bs_p(diffs: np.ndarray, observed: float) -> float:
    """sacreBLEU's ``--paired-bs`` p-value (sacrebleu/significance.py, ``_paired_bs_test``) of the
    resampled differences ``diffs`` (system − baseline, one per resample) and the observed one: the
    share of ``|diff_i| − mean|diff|`` strictly above ``|observed|``, with the +1 correction. Our
    resamples are sacreBLEU's (``default_rng(12345)``, the same index draws), so for one run a side
    this is the p sacreBLEU prints for the two translation files (tested)."""
    sample = np.abs(diffs)
    stats = sample - sample.mean()
    return float((np.sum(stats > abs(observed)) + 1) / (len(diffs) + 1))


def welch_ci(a: Sequence[float], b: Sequence[float], level: float = 0.95) -> Dict[str, Any]:
    """Mean difference ``mean(a) − mean(b)`` with a Welch t interval (None where a side has n < 2)."""
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    out: Dict[str, Any] = {"diff": None, "ci_low": None, "ci_high": None, "n": [len(x), len(y)]}
    if len(x) and len(y):
        out["diff"] = float(x.mean() - y.mean())
    if len(x) < 2 or len(y) < 2:
        return out
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    se = math.sqrt(vx + vy)
    if se == 0:
        out["ci_low"] = out["ci_high"] = out["diff"]
        return out
    dof = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    half = float(stats.t.ppf(0.5 + level / 2, dof)) * se
    out.update(ci_low=out["diff"] - half, ci_high=out["diff"] + half)
    return out


def seeds_needed(a: Sequence[float], b: Sequence[float], effect: float, kind: str,
                 margin: float = PAR_MARGIN, power: float = POWER) -> Optional[int]:
    """Seeds per row for which the 95% Welch interval of ``mean(a) − mean(b)`` decides the claim
    with probability ``power`` if the true difference is the paper's ``effect`` and the seeds
    spread as measured (sample SDs of ``a`` and ``b``): the standard normal-theory sample size
    for Welch's two-sample t test, iterated with t quantiles at the Welch degrees of freedom,
    ``n = (t_{0.975} + t_{power})² (s_a² + s_b²) / δ²``, where ``δ = effect`` for ``better`` (the
    interval excludes 0) and ``δ = margin − |effect|`` for ``par`` (two one-sided tests: the
    interval inside ``±margin``). None when a row has < 2 seeds; ``MAX_SEEDS + 1`` when the
    effect cannot be decided (``better`` with effect <= 0, ``par`` with |effect| >= margin)."""
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) < 2 or len(y) < 2:
        return None
    var = float(x.var(ddof=1) + y.var(ddof=1))
    delta = effect if kind == "better" else margin - abs(effect)
    if delta <= 0:
        return MAX_SEEDS + 1
    if var == 0:
        return 2
    fourth = float(x.var(ddof=1) ** 2 + y.var(ddof=1) ** 2)
    n = max(2, math.ceil((stats.norm.ppf(0.975) + stats.norm.ppf(power)) ** 2 * var / delta ** 2))  # normal start
    if n > MAX_SEEDS:
        return MAX_SEEDS + 1
    for _ in range(100):
        dof = max(var ** 2 * (n - 1) / fourth, 1.0)
        need = (stats.t.ppf(0.975, dof) + stats.t.ppf(power, dof)) ** 2 * var / delta ** 2
        new = max(2, math.ceil(need))
        if new == n or new > MAX_SEEDS:
            return min(new, MAX_SEEDS + 1)
        n = new
    return n


def seeds_text(n: Optional[int]) -> str:
    """A seeds-needed figure as printed: ``–`` (not computable), ``> 1000`` (beyond MAX_SEEDS) or the number."""
    return "–" if n is None else (f"> {MAX_SEEDS}" if n > MAX_SEEDS else str(n))


def seeds_to_decide(a: Sequence[float], b: Sequence[float], support_above: float, refute_below: float,
                    power: float = POWER, at_least: int = 2) -> Optional[int]:
    """Seeds per side for which the 95% Welch interval of ``mean(a) − mean(b)`` lies wholly above
    ``support_above`` or wholly below ``refute_below`` (``refute_below <= support_above``), on the
    side the observed difference is on, with probability ``power`` if the observed difference is
    the true one and the seeds spread as measured: :func:`seeds_needed` with the distance from the
    observed difference to that threshold as the effect (the Welch interval shifts with the
    difference, so deciding against a threshold is deciding against 0 by that distance). None
    with < 2 seeds a side; ``MAX_SEEDS + 1`` when the observed difference lies between the
    thresholds: no number of seeds decides it. Never below ``at_least`` (a protocol's seeds, where
    no verdict reads fewer)."""
    if len(a) < 2 or len(b) < 2:
        return None
    d = float(np.mean(a) - np.mean(b))
    effect = d - support_above if d > support_above else refute_below - d if d < refute_below else 0.0
    n = seeds_needed(a, b, effect, "better", power=power)
    return None if n is None else max(n, at_least)


def _welch_t(a: Sequence[float], b: Sequence[float]) -> Optional[Tuple[float, float, float]]:
    """(mean difference, its standard error, Welch degrees of freedom); None where a side has n < 2
    or both sides are constant."""
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(x) < 2 or len(y) < 2:
        return None
    vx, vy = x.var(ddof=1) / len(x), y.var(ddof=1) / len(y)
    if vx + vy == 0:
        return None
    dof = (vx + vy) ** 2 / (vx ** 2 / (len(x) - 1) + vy ** 2 / (len(y) - 1))
    return float(x.mean() - y.mean()), math.sqrt(vx + vy), float(dof)


def welch_p(a: Sequence[float], b: Sequence[float]) -> Optional[float]:
    """Two-sided p of Welch's t test of ``mean(a) = mean(b)`` (None where it is not defined)."""
    from scipy import stats

    t = _welch_t(a, b)
    if t is None:
        return None
    diff, se, dof = t
    return float(2 * stats.t.sf(abs(diff) / se, dof))


def tost_p(a: Sequence[float], b: Sequence[float], margin: float = PAR_MARGIN) -> Optional[float]:
    """p of the two one-sided Welch tests (TOST) that ``|mean(a) − mean(b)| < margin``: the larger
    of the two one-sided p values; below 0.05 the 90 % interval lies inside ``±margin``."""
    from scipy import stats

    t = _welch_t(a, b)
    if t is None:
        return None
    diff, se, dof = t
    return float(max(stats.t.sf((diff + margin) / se, dof), stats.t.sf((margin - diff) / se, dof)))


def holm(ps: Sequence[Optional[float]]) -> List[Optional[float]]:
    """Holm–Bonferroni adjusted p values (step-down, monotone, capped at 1) of the defined ``ps``,
    in their order; None stays None and does not count."""
    defined = sorted((p, i) for i, p in enumerate(ps) if p is not None)
    m, out, running = len(defined), [None] * len(ps), 0.0
    for rank, (p, i) in enumerate(defined):
        running = max(running, min(1.0, (m - rank) * p))
        out[i] = running
    return out
