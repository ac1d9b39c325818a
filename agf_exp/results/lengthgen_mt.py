"""The length study's MT part (train short, test long on Multi30k; protocol and rules:
docs/lengthgen.md, "MT part"): per arm and level k (1 = test_2016_flickr as it is, 2, 4, 8 =
``test_join<k>``, k consecutive sentences joined into one input) BLEU, chrF, the hypothesis /
reference length ratio, the share of outputs shorter than 0.7x their reference, and the
**length-robustness ratio** = BLEU of translating the joined inputs / BLEU of translating their
sentences one by one and joining the outputs in the same groups (the same references): it
separates length robustness from plain quality. Plus BLEU on natural length buckets of the
test set (source words), and paired deltas of the k = 8 ratio against sinusoidal PE with a
two-level bootstrap (seeds, then joined inputs), Holm-corrected, and the verdicts of H1 (MT) and
H3 (MT). A run belongs to the part through ``study: lengthgen_mt``; its decoding is beam search
where the run has it, else greedy.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..data.corpus import JOIN_PREFIX, joined
from .lengthgen import RankTask, _d, _eq, _f, _n, _p, arm_color, hypotheses_table, share_verdict
from .runs import Run
from .stats import bleu_from_statistics, bleu_statistics, holm, mean_ci, seeds_to_decide, shifted_null

STUDY = "lengthgen_mt"
BASELINE = "sinusoidal"
LEVELS = (1, 2, 4, 8)
TRAIN_MAX_WORDS = 12  # the sweep's data.train_max_src_words
BUCKETS: Tuple[Tuple[str, int, int], ...] = (("≤12 (trained)", 1, 12), ("13-16", 13, 16), ("17-20", 17, 20),
                                             ("≥21", 21, 10 ** 6))
SHORT = 0.7
H1_ARMS = ("agf", "agf_m", "alibi", "alibi_bl", "kerple_log", "kerple_power", "t5")
H1_MARGIN = 0.05  # robustness-ratio points: supported above +0.05 (5 % of the one-by-one BLEU)
MIN_SEEDS = 3  # the protocol's seeds per arm on MT
N_BOOTSTRAP = 1000


@dataclass
class MTRun:
    arm: str
    seed: int
    strategy: str
    test_src: List[str]
    test_hyp: List[str]
    test_ref: List[str]
    joined: Dict[int, Tuple[List[str], List[str]]] = field(default_factory=dict)  # k -> (hyps, refs)
    path: str = ""

    def level(self, k: int) -> Optional[Tuple[List[str], List[str]]]:
        """(hyps, refs) of level k: the test set itself for k = 1."""
        return (self.test_hyp, self.test_ref) if k == 1 else self.joined.get(k)


def mt_runs(runs: Sequence[Run]) -> Tuple[List[MTRun], List[str]]:
    """The MT part's finished runs, and one line per run left out (the natural length buckets
    read the sources the run wrote beside its references, ``hyps/test.src.txt``)."""
    out, skipped = [], []
    for r in runs:
        if str(r.config.get("study")) != STUDY or not r.complete:
            continue
        strategy = "beam" if "test.beam" in r.files else "greedy"
        hyp, ref = r.files.get(f"test.{strategy}"), r.files.get("test.ref")
        arm = r.config.get("arm")
        if arm is None or hyp is None or ref is None or len(hyp) != len(ref):
            skipped.append(f"{r.path}: no arm or no whole hyps/test.{strategy}.txt + test.ref.txt")
            continue
        run = MTRun(str(arm), int(r.seed), strategy, list(r.files.get("test.src") or []), hyp, ref, path=r.path)
        for k in LEVELS[1:]:
            jh, jr = r.files.get(f"{JOIN_PREFIX}{k}.{strategy}"), r.files.get(f"{JOIN_PREFIX}{k}.ref")
            if jh is not None and jr is not None and len(jh) == len(jr) == len(ref) // k:
                run.joined[k] = (jh, jr)
        out.append(run)
    return sorted(out, key=lambda m: (m.arm, m.seed)), skipped


def _bleu(hyps: Sequence[str], refs: Sequence[str]) -> float:
    return float(bleu_from_statistics(bleu_statistics(hyps, refs).sum(0)))


def _chrf(hyps: Sequence[str], refs: Sequence[str]) -> float:
    import sacrebleu

    return float(sacrebleu.corpus_chrf(list(hyps), [list(refs)]).score)


def level_scores(run: MTRun, k: int) -> Optional[Dict[str, float]]:
    """BLEU, chrF, length ratio, short share and (k > 1) the robustness ratio of one run at level k."""
    pair = run.level(k)
    if pair is None:
        return None
    hyps, refs = pair
    words_h = np.array([len(h.split()) for h in hyps])
    words_r = np.array([max(len(r.split()), 1) for r in refs])
    out = {"bleu": _bleu(hyps, refs), "chrf": _chrf(hyps, refs),
           "length_ratio": float(words_h.sum() / words_r.sum()), "short": float(np.mean(words_h < SHORT * words_r))}
    if k > 1:
        one_by_one = joined(run.test_hyp, k)
        base = _bleu(one_by_one, refs)
        out["one_by_one_bleu"] = base
        out["robustness"] = out["bleu"] / base if base > 0 else None
    return out


def bucket_bleu(run: MTRun) -> Dict[str, Optional[float]]:
    """BLEU of the test translations on natural length buckets of their sources (words)."""
    if len(run.test_src) != len(run.test_hyp):
        return {name: None for name, _, _ in BUCKETS}
    words = np.array([len(s.split()) for s in run.test_src])
    out = {}
    for name, lo, hi in BUCKETS:
        idx = np.flatnonzero((words >= lo) & (words <= hi))
        out[name] = _bleu([run.test_hyp[i] for i in idx], [run.test_ref[i] for i in idx]) if len(idx) else None
    return out


def _ratio_statistics(runs: Sequence[MTRun], k: int) -> Tuple[np.ndarray, np.ndarray]:
    """BLEU statistics [seeds, joined inputs, 10] of the joined translations and of the one-by-one
    translations grouped the same way (the same references)."""
    joint = np.stack([bleu_statistics(*r.joined[k]) for r in runs])
    single = np.stack([bleu_statistics(joined(r.test_hyp, k), r.joined[k][1]) for r in runs])
    return joint, single


def _ratio(joint: np.ndarray, single: np.ndarray, seeds, ex: np.ndarray) -> float:
    """The robustness ratio on the joined inputs ``ex``, averaged over the drawn ``seeds``."""
    values = []
    for s in seeds:
        den = bleu_from_statistics(single[s][ex].sum(0))
        values.append(bleu_from_statistics(joint[s][ex].sum(0)) / den if den > 0 else np.nan)
    return float(np.nanmean(values)) if not np.all(np.isnan(values)) else np.nan


def robustness_bootstrap(arm: Sequence[MTRun], base: Sequence[MTRun], k: int = 8, n_samples: int = N_BOOTSTRAP,
                         seed: int = 12345) -> Dict[str, Any]:
    """Paired delta of the k-level robustness ratio (arm − baseline): resample each side's seeds,
    then the joined inputs (the same draw for both sides and for each input's k sentences, which
    the one-by-one side groups the same way); the ratio of resampled corpus BLEUs, averaged over
    the drawn seeds. 95 % percentile interval, p two-sided (shifted null, floor 1/(n + 1))."""
    (ja, sa), (jb, sb) = _ratio_statistics(arm, k), _ratio_statistics(base, k)
    n = ja.shape[1]
    gen = np.random.default_rng(seed)
    everything = np.arange(n)
    observed = _ratio(ja, sa, range(len(ja)), everything) - _ratio(jb, sb, range(len(jb)), everything)
    deltas = np.empty(n_samples)
    for i in range(n_samples):
        pa, pb = gen.integers(0, len(ja), len(ja)), gen.integers(0, len(jb), len(jb))
        ex = gen.integers(0, n, n)
        deltas[i] = _ratio(ja, sa, pa, ex) - _ratio(jb, sb, pb, ex)
    deltas = deltas[~np.isnan(deltas)]
    return {**shifted_null(deltas, observed), "samples": int(len(deltas)),
            "seeds": [len(ja), len(jb)], "inputs": int(n)}


def rank_task(runs: Sequence[MTRun], k: int = 8) -> Optional[RankTask]:
    """The MT part's share of the ranking across tasks: the level-k robustness ratio of every arm
    whose runs all have level k (a bootstrap replicate redraws each arm's seeds, then the joined
    inputs with one draw for all arms)."""
    arms = sorted({r.arm for r in runs})
    by_arm = {a: [r for r in runs if r.arm == a] for a in arms}
    stats = {a: _ratio_statistics(rs, k) for a, rs in by_arm.items() if all(k in r.joined for r in rs)}
    if not stats:
        return None
    n = next(iter(stats.values()))[0].shape[1]
    everything = np.arange(n)

    def sample(gen: np.random.Generator) -> Dict[str, float]:
        ex = gen.integers(0, n, n)
        return {a: _ratio(j, s, gen.integers(0, len(j), len(j)), ex) for a, (j, s) in stats.items()}

    return RankTask("multi30k", f"k={k} robustness ratio",
                    {a: _ratio(j, s, range(len(j)), everything) for a, (j, s) in stats.items()},
                    {a: len(j) for a, (j, _) in stats.items()}, sample)


def summarize(runs: Sequence[MTRun], n_bootstrap: int = N_BOOTSTRAP) -> Dict[str, Any]:
    arms = sorted({r.arm for r in runs}, key=lambda a: (a != BASELINE, a))
    by_arm = {a: [r for r in runs if r.arm == a] for a in arms}
    result: Dict[str, Any] = {"arms": {}, "levels": list(LEVELS), "buckets": [b[0] for b in BUCKETS],
                              "n_bootstrap": n_bootstrap}
    for a in arms:
        levels = {}
        for k in LEVELS:
            scores = [s for s in (level_scores(r, k) for r in by_arm[a]) if s is not None]
            levels[k] = {m: mean_ci([s[m] for s in scores if s.get(m) is not None])
                         for m in ("bleu", "chrf", "length_ratio", "short", "robustness") if scores}
            if k > 1 and scores:  # per seed, for the seeds that would decide H1 (MT)
                levels[k]["robustness"]["values"] = [s["robustness"] for s in scores if s.get("robustness") is not None]
        buckets = [bucket_bleu(r) for r in by_arm[a]]
        result["arms"][a] = {"seeds": [r.seed for r in by_arm[a]], "strategy": sorted({r.strategy for r in by_arm[a]}),
                             "levels": levels,
                             "buckets": {b: mean_ci([x[b] for x in buckets if x[b] is not None]) for b in result["buckets"]},
                             "vs_baseline": None}
    complete = [a for a in arms if all(8 in r.joined for r in by_arm[a])]
    if BASELINE in complete:
        others = [a for a in complete if a != BASELINE]
        tests = [robustness_bootstrap(by_arm[a], by_arm[BASELINE], 8, n_bootstrap) for a in others]
        for a, t, p_adj in zip(others, tests, holm([t["p"] for t in tests])):
            t["p_holm"] = p_adj
            result["arms"][a]["vs_baseline"] = t
    result["hypotheses"] = hypotheses(result)
    return result


def hypotheses(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    """H1 (MT) and H3 (MT) by docs/lengthgen.md's MT rules; undecided (naming what is missing)
    below the protocol's 3 seeds per arm."""
    arms = result["arms"]
    per_arm, missing, to_decide = {}, [], {}
    for arm in H1_ARMS:
        t = (arms.get(arm) or {}).get("vs_baseline")
        if t is None:
            missing.append(arm)
            per_arm[arm] = "undecided"
            continue
        per_arm[arm] = ("supported" if t["ci_low"] > H1_MARGIN and t["p_holm"] < 0.05 else
                        "refuted" if t["ci_high"] < 0 else "undecided")
        if min(t["seeds"]) < MIN_SEEDS:
            missing.append(f"{arm} ({min(t['seeds'])} of {MIN_SEEDS} seeds)")
            per_arm[arm] = "undecided"
        if per_arm[arm] == "undecided":  # a Welch approximation of the two-level bootstrap, on the seeds' ratios
            n = seeds_to_decide(*(arms[a]["levels"][8]["robustness"]["values"] for a in (arm, BASELINE)), H1_MARGIN, 0.0,
                                at_least=MIN_SEEDS)
            if n is not None:
                to_decide[arm] = n
    refuted = [a for a, v in per_arm.items() if v == "refuted"]
    h1 = ("refuted" if refuted else "supported" if sum(v == "supported" for v in per_arm.values()) > len(H1_ARMS) / 2
          and not missing else "undecided")
    out = [{"key": "H1 (MT)", "text": "decaying biases and T5 keep the k = 8 robustness ratio above sinusoidal",
            "verdict": h1, "arms": per_arm, "missing": missing, "seeds_to_decide": to_decide}]
    parts, shares = {}, {}  # a part is judged with the protocol's seeds; one refuted part refutes H3 (MT)
    for arm in (BASELINE, "rope"):
        stat = ((arms.get(arm) or {}).get("levels", {}).get(8) or {}).get("short")
        shares[arm] = stat or {}
        if stat and stat.get("n", 0) >= MIN_SEEDS:
            parts[arm] = share_verdict(stat)
    h3 = ("supported" if list(parts.values()) == ["supported", "supported"] else
          "refuted" if "refuted" in parts.values() else "undecided")
    out.append({"key": "H3 (MT)", "text": "sinusoidal and RoPE end early on 8 joined sentences", "verdict": h3,
                "shares": shares, "parts": parts,
                "missing": [a + (f" ({s['n']} of {MIN_SEEDS} seeds)" if s else "")
                            for a, s in shares.items() if not s or s.get("n", 0) < MIN_SEEDS]})
    return out


def _cell(stat: Optional[Dict[str, Any]], spec: str = ".1f") -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    ci = "" if stat.get("ci_low") is None else f" [{_f(stat['ci_low'], spec)}, {_f(stat['ci_high'], spec)}]"
    return f"{_f(stat['mean'], spec)}{ci}"


def to_markdown(result: Dict[str, Any]) -> str:
    n_runs = sum(len(a["seeds"]) for a in result["arms"].values())
    out = ["## MT: train short, test long (Multi30k en-de)", "",
           f"{_n(len(result['arms']), 'arm')}, {_n(n_runs, 'run')}. Trained on pairs whose source has ≤ {TRAIN_MAX_WORDS} words, "
           "decoded with the last weights; level k = 1 is test_2016_flickr, k = 2, 4, 8 its k consecutive sentences "
           "joined into one input. Per arm: mean over seeds [95% t interval]. Robustness = BLEU of the joined input / "
           "BLEU of the same sentences translated one by one and joined (same references). Short: share of outputs "
           f"shorter than {SHORT:g}x their reference. Δ robustness (k = 8): paired, two-level bootstrap (seeds, then "
           f"joined inputs; {result['n_bootstrap']} resamples) against `{BASELINE}`, Holm over the arms.", "",
           "| arm | seeds | " + " | ".join(f"BLEU k={k}" for k in LEVELS) + " | "
           + " | ".join(f"robustness k={k}" for k in LEVELS[1:]) + " | length ratio k=8 | short k=8 | Δ robustness k=8 [95%], p (Holm) |",
           "|---|---|" + "---|" * (len(LEVELS) + len(LEVELS) - 1 + 3)]
    for arm, a in result["arms"].items():
        lv = a["levels"]
        cells = [_cell(lv.get(k, {}).get("bleu")) for k in LEVELS]
        cells += [_cell(lv.get(k, {}).get("robustness"), ".3f") for k in LEVELS[1:]]
        cells += [_cell(lv.get(8, {}).get("length_ratio"), ".2f"), _cell(lv.get(8, {}).get("short"), ".2f")]
        t = a["vs_baseline"]
        floor = 1 / (t["samples"] + 1) if t else 0.0
        cells.append("–" if not t else f"{_d(t['diff'], '.3f')} [{_d(t['ci_low'], '.3f')}, {_d(t['ci_high'], '.3f')}], "
                     f"p{_eq(_p(t['p'], floor))} ({_p(t['p_holm'], floor)})")
        out.append(f"| `{arm}` | {', '.join(map(str, a['seeds']))} | " + " | ".join(cells) + " |")
    out += ["", "Test BLEU by source length (words; natural buckets of test_2016_flickr, k = 1):", "",
            "| arm | " + " | ".join(result["buckets"]) + " |", "|---|" + "---|" * len(result["buckets"])]
    for arm, a in result["arms"].items():
        out.append(f"| `{arm}` | " + " | ".join(_cell(a["buckets"][b]) for b in result["buckets"]) + " |")
    out += [""] + hypotheses_table(result["hypotheses"]) + [""]
    return "\n".join(out)


def plot(result: Dict[str, Any], out_dir) -> List[Any]:
    """``lengthgen_mt.png``: BLEU and the robustness ratio against k (one line per arm, 95 % band
    over seeds where there are 2 or more), and the arm × k heat map of the mean robustness ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (bl, rb, hm) = plt.subplots(1, 3, figsize=(15, 4.2), gridspec_kw={"width_ratios": [1, 1, 0.8]})
    grid = []
    for i, (arm, a) in enumerate(result["arms"].items()):
        for ax, metric, levels in ((bl, "bleu", LEVELS), (rb, "robustness", LEVELS[1:])):
            stats = [a["levels"].get(k, {}).get(metric) or {} for k in levels]
            means = [s.get("mean") if s.get("mean") is not None else np.nan for s in stats]
            ax.plot(levels, means, marker="o", label=arm, linewidth=1.2, color=arm_color(i))
            if all(s.get("ci_low") is not None for s in stats):
                ax.fill_between(levels, [s["ci_low"] for s in stats], [s["ci_high"] for s in stats], alpha=0.15,
                                color=arm_color(i))
        grid.append([(a["levels"].get(k, {}).get("robustness") or {}).get("mean") or np.nan for k in LEVELS[1:]])
    for ax, label in ((bl, "BLEU"), (rb, "robustness ratio (joined / one by one)")):
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(LEVELS) if ax is bl else list(LEVELS[1:]))
        ax.set_xticklabels([str(k) for k in (LEVELS if ax is bl else LEVELS[1:])])
        ax.set_xlabel(f"k sentences joined into one input\n(training maximum: 1 sentence of ≤ {TRAIN_MAX_WORDS} words)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    rb.axhline(1.0, color="black", linestyle="--", linewidth=0.8)
    bl.legend(fontsize=7, ncol=2)
    im = hm.imshow(np.array(grid, dtype=float), aspect="auto", vmin=0, vmax=1.2, cmap="viridis")
    hm.set_xticks(range(len(LEVELS) - 1))
    hm.set_xticklabels([f"k={k}" for k in LEVELS[1:]])
    hm.set_yticks(range(len(grid)))
    hm.set_yticklabels(list(result["arms"]), fontsize=7)
    hm.set_title("mean robustness ratio")
    fig.colorbar(im, ax=hm)
    fig.tight_layout()
    path = out_dir / "lengthgen_mt.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return [path]
