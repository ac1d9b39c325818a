"""The length-generalization study's report (protocol and hypotheses: docs/lengthgen.md, written
before the runs): exact match per target length and length range, per arm, with intervals over
seeds, the fraction of seeds that solve, paired two-level bootstrap deltas against sinusoidal PE
(Holm-corrected per task), and the verdicts of H1-H4 by the rules fixed in that document.

A run belongs to the study through its config (``study: lengthgen_synthetic``, ``arm``,
``data.name``); its greedy test translations and references (``hyps/test.greedy.txt``,
``hyps/test.ref.txt``) are the data. An example's length is its reference's length in symbols
(copy / reverse) or actions (SCAN): whitespace-separated tokens.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..data.lengthgen import RANGES, TRAIN_MAX, Range, exact_match, target_length
from .runs import Run
from .stats import holm, mean_ci, seeds_text, seeds_to_decide, shifted_null

BASELINE = "sinusoidal"
SOLVED = 90.0  # a (task, arm, seed) solves a length range at >= 90 % exact match
H1_ARMS = ("agf", "agf_m", "alibi", "alibi_bl", "kerple_log", "kerple_power", "t5")
DECAYING = ("agf", "agf_m", "alibi", "alibi_bl", "kerple_log", "kerple_power")
H1_MARGIN = 10.0
H2_MARGIN = -5.0
SHORT = 0.7  # H3: an output shorter than 0.7x its reference ends early
MIN_SEEDS = 5  # the protocol's seeds per (task, arm): no verdict rests on fewer
N_BOOTSTRAP = 1000


@dataclass
class StudyRun:
    task: str
    arm: str
    seed: int
    lengths: np.ndarray  # [n] reference length of each test example
    correct: np.ndarray  # [n] bool: exact match
    short: np.ndarray  # [n] bool: output shorter than SHORT x its reference
    path: str


def study_runs(runs: Sequence[Run], study: str = "lengthgen_synthetic") -> Tuple[List[StudyRun], List[str]]:
    """The study's finished runs with their per-example outcomes, and one line per run left out."""
    out, skipped = [], []
    for r in runs:
        if str(r.config.get("study")) != study or not r.complete:
            continue
        task, arm = str((r.config.get("data") or {}).get("name")), r.config.get("arm")
        hyps, refs = r.files.get("test.greedy"), r.files.get("test.ref")
        if arm is None or hyps is None or refs is None or len(hyps) != len(refs):
            skipped.append(f"{r.path}: no arm or no whole hyps/test.greedy.txt + test.ref.txt")
            continue
        lengths = np.array([target_length(ref) for ref in refs])
        correct = np.array([exact_match(h, ref) for h, ref in zip(hyps, refs)])
        short = np.array([len(h.split()) < SHORT * target_length(ref) for h, ref in zip(hyps, refs)])
        out.append(StudyRun(task, str(arm), int(r.seed), lengths, correct, short, r.path))
    return sorted(out, key=lambda s: (s.task, s.arm, s.seed)), skipped


def _em(run: StudyRun, rng: Range) -> float:
    sel = (run.lengths >= rng.low) & (run.lengths <= rng.high)
    return float(100.0 * run.correct[sel].mean()) if sel.any() else float("nan")


def _outcomes(runs: Sequence[StudyRun], rng: Range) -> np.ndarray:
    """[seeds, examples] exact match (0/1) of ``runs`` on the test examples in ``rng``."""
    sel = (runs[0].lengths >= rng.low) & (runs[0].lengths <= rng.high)
    return np.stack([r.correct[sel] for r in runs]).astype(float)


def two_level_bootstrap(arm: Sequence[StudyRun], base: Sequence[StudyRun], rng: Range, n_samples: int = N_BOOTSTRAP,
                        seed: int = 12345) -> Dict[str, Any]:
    """Paired delta of exact match (arm − baseline, points) over the examples of ``rng``: resample
    the seeds of each side, then the test examples (the same draw for both sides: they share the
    test set), and take the difference of the seed-mean exact matches. 95 % percentile interval;
    p: two-sided, the resampled deltas shifted to mean 0 (floor 1/(n_samples + 1))."""
    a, b = _outcomes(arm, rng), _outcomes(base, rng)
    n = a.shape[1]
    gen = np.random.default_rng(seed)
    deltas = np.empty(n_samples)
    for i in range(n_samples):
        sa, sb = gen.integers(0, len(a), len(a)), gen.integers(0, len(b), len(b))
        ex = gen.integers(0, n, n)
        deltas[i] = 100.0 * (a[sa][:, ex].mean() - b[sb][:, ex].mean())
    observed = 100.0 * (a.mean() - b.mean())
    return {**shifted_null(deltas, observed), "samples": n_samples,
            "seeds": [len(a), len(b)], "examples": int(n)}


def summarize(runs: Sequence[StudyRun], n_bootstrap: int = N_BOOTSTRAP) -> Dict[str, Any]:
    """Per task: per arm and range the seeds' exact match (mean, 95 % t interval, solved
    fraction), per arm the paired deltas against the baseline (Holm over the arms of the task
    and range), and the per-length curves for the plots."""
    tasks: Dict[str, Any] = {}
    for task in sorted({r.task for r in runs}):
        mine = [r for r in runs if r.task == task]
        arms = sorted({r.arm for r in mine}, key=lambda a: (a != BASELINE, a))
        by_arm = {a: [r for r in mine if r.arm == a] for a in arms}
        ranges = RANGES.get(task, (Range("all", 0, 10 ** 6),))
        entry: Dict[str, Any] = {"task": task, "train_max": TRAIN_MAX.get(task), "ranges": [rg.name for rg in ranges],
                                 "arms": {}, "lengths": sorted({int(x) for r in mine for x in r.lengths})}
        for a in arms:
            per_range = {}
            for rg in ranges:
                values = [_em(r, rg) for r in by_arm[a]]
                per_range[rg.name] = {**mean_ci(values), "solved": sum(v >= SOLVED for v in values),
                                      "seeds": len(values), "values": values}
            curve = {}
            for length in entry["lengths"]:
                values = [_em(r, Range("", length, length)) for r in by_arm[a]]
                curve[length] = mean_ci(values)
            entry["arms"][a] = {"seeds": [r.seed for r in by_arm[a]], "ranges": per_range, "curve": curve,
                                "vs_baseline": {}}
        if BASELINE in by_arm:
            for rg in ranges:
                others = [a for a in arms if a != BASELINE]
                tests = [two_level_bootstrap(by_arm[a], by_arm[BASELINE], rg, n_bootstrap) for a in others]
                for a, t, p_adj in zip(others, tests, holm([t["p"] for t in tests])):
                    t["p_holm"] = p_adj
                    entry["arms"][a]["vs_baseline"][rg.name] = t
        entry["short_share"] = {a: _short_share(by_arm[a], ranges[1] if len(ranges) > 1 else None)
                                for a in ("sinusoidal", "rope") if a in by_arm}
        tasks[task] = entry
    result = {"tasks": tasks, "n_bootstrap": n_bootstrap}
    result["hypotheses"] = hypotheses(result)
    return result


def _short_share(runs: Sequence[StudyRun], rng: Optional[Range]) -> Dict[str, Any]:
    """H3: per seed, the share of the wrong outputs at 1-2x length that are shorter than 0.7x
    their reference (seeds without a wrong output there do not count)."""
    if rng is None:
        return mean_ci([])
    values = []
    for r in runs:
        wrong = (r.lengths >= rng.low) & (r.lengths <= rng.high) & ~r.correct
        if wrong.any():
            values.append(float(r.short[wrong].mean()))
    return mean_ci(values)


def _seeds_to_decide(out: Dict[str, int], task: Dict[str, Any], arm: str, rng: str, support_above: float,
                     refute_below: float) -> None:
    """``out[task/arm]`` = the seeds per arm at which the paired delta of ``arm`` against the
    baseline on ``rng`` would be decided (:func:`stats.seeds_to_decide` on the seeds' exact
    matches: a Welch approximation of the two-level bootstrap), where both have 2 seeds or more;
    never fewer than the protocol's seeds, on which alone a verdict is read."""
    values = [task["arms"][a]["ranges"][rng]["values"] for a in (arm, BASELINE)]
    n = seeds_to_decide(values[0], values[1], support_above, refute_below, at_least=MIN_SEEDS)
    if n is not None:
        out[f"{task['task']}/{arm}"] = n


def share_verdict(stat: Dict[str, Any]) -> str:
    """H3's rule for one part: supported / refuted by whether the 95 % interval over seeds of the
    share of early ends lies above / below one half."""
    return "supported" if stat["ci_low"] > 0.5 else "refuted" if stat["ci_high"] < 0.5 else "undecided"


def hypotheses(result: Dict[str, Any]) -> List[Dict[str, Any]]:
    """H1-H4 on the synthetic tasks by docs/lengthgen.md's rules; an arm or task without runs (or
    with one seed where an interval over seeds is needed) leaves the hypothesis undecided and
    says what is missing."""
    tasks = result["tasks"]
    out = []
    # H1: copy and reverse at 1-2x; per arm supported / refuted / undecided from the paired interval.
    per_arm, missing, to_decide = {}, [], {}
    for arm in H1_ARMS:
        verdicts = []
        for task in ("copy", "reverse"):
            t = (tasks.get(task, {}).get("arms", {}).get(arm, {}).get("vs_baseline", {}) or {}).get("1-2x")
            if t is None:
                missing.append(f"{task}/{arm}")
                verdicts.append("undecided")
                continue
            verdict = ("supported" if t["ci_low"] > H1_MARGIN and t["p_holm"] < 0.05 else
                       "refuted" if t["ci_high"] < 0 else "undecided")
            if min(t["seeds"]) < MIN_SEEDS:
                missing.append(f"{task}/{arm} ({min(t['seeds'])} of {MIN_SEEDS} seeds)")
                verdict = "undecided"
            if verdict == "undecided":
                _seeds_to_decide(to_decide, tasks[task], arm, "1-2x", H1_MARGIN, 0.0)
            verdicts.append(verdict)
        per_arm[arm] = ("supported" if all(v == "supported" for v in verdicts) else
                        "refuted" if any(v == "refuted" for v in verdicts) else "undecided")
    supported = sum(v == "supported" for v in per_arm.values())
    refuted = [a for a, v in per_arm.items() if v == "refuted"]
    h1 = "supported" if supported > len(H1_ARMS) / 2 and not refuted else "refuted" if refuted else "undecided"
    if missing and h1 != "refuted":
        h1 = "undecided"
    out.append({"key": "H1", "text": "decaying biases and T5 extrapolate (copy and reverse, 1-2x)", "verdict": h1,
                "arms": per_arm, "missing": missing, "seeds_to_decide": to_decide})
    # H2: reverse in distribution, every decaying arm's paired interval above -5.
    rev = tasks.get("reverse", {}).get("arms", {})
    found = {a: (rev.get(a, {}).get("vs_baseline", {}).get("in-distribution") or {}) for a in DECAYING}
    lows = {a: t if t and min(t["seeds"]) >= MIN_SEEDS else {} for a, t in found.items()}
    absent = [a for a, t in lows.items() if not t]
    to_decide = {}
    for a, t in found.items():
        if t and (min(t["seeds"]) < MIN_SEEDS or t["ci_low"] <= H2_MARGIN <= t["ci_high"]):
            _seeds_to_decide(to_decide, tasks["reverse"], a, "in-distribution", H2_MARGIN, H2_MARGIN)
    per_arm = {a: "undecided" if not t else "refuted" if t["ci_high"] < H2_MARGIN else
               "supported" if t["ci_low"] > H2_MARGIN else "undecided" for a, t in lows.items()}
    if "refuted" in per_arm.values():
        h2 = "refuted"
    elif all(v == "supported" for v in per_arm.values()):
        h2 = "supported"
    else:
        h2 = "undecided"
    out.append({"key": "H2", "text": "encoder-side decay does not hurt reverse in distribution", "verdict": h2,
                "arms": per_arm,
                "missing": [f"reverse/{a}" + (f" ({min(found[a]['seeds'])} of {MIN_SEEDS} seeds)" if found[a] else "")
                            for a in absent], "seeds_to_decide": to_decide})
    # H3: sinusoidal and rope's wrong outputs at 1-2x end early (share of short outputs > 0.5).
    # A part is judged with the protocol's seeds; one refuted part refutes H3 (it claims all four).
    shares, h3_parts, h3_missing = {}, {}, []
    for task in ("copy", "reverse"):
        for arm in ("sinusoidal", "rope"):
            stat = tasks.get(task, {}).get("short_share", {}).get(arm)
            if stat is None:
                h3_missing.append(f"{task}/{arm}")
                continue
            shares[f"{task}/{arm}"] = stat
            if stat.get("n", 0) < MIN_SEEDS:
                seeds = len(tasks[task]["arms"][arm]["seeds"])
                h3_missing.append(f"{task}/{arm} " + (f"({seeds} of {MIN_SEEDS} seeds)" if seeds < MIN_SEEDS else
                                                      f"({stat.get('n', 0)} of {seeds} seeds with a wrong output)"))
                continue
            h3_parts[f"{task}/{arm}"] = share_verdict(stat)
    parts = list(h3_parts.values())
    h3 = ("supported" if len(parts) == 4 and all(v == "supported" for v in parts) else
          "refuted" if "refuted" in parts else "undecided")
    out.append({"key": "H3", "text": "absolute positions fail by ending early", "verdict": h3, "shares": shares,
                "parts": h3_parts, "missing": h3_missing})
    # H4: nope's in-distribution exact match on reverse below 10 %.
    nope = rev.get("nope", {}).get("ranges", {}).get("in-distribution")
    h4 = "undecided"
    if nope and nope.get("ci_high") is not None and nope["seeds"] >= MIN_SEEDS:
        h4 = "supported" if nope["ci_high"] < 10.0 else "refuted" if nope["ci_low"] >= 10.0 else "undecided"
    missing = ([] if nope and nope["seeds"] >= MIN_SEEDS else
               [f"reverse/nope ({nope['seeds']} of {MIN_SEEDS} seeds)"] if nope else ["reverse/nope"])
    out.append({"key": "H4", "text": "without positions neither copy nor reverse is solved", "verdict": h4, "missing": missing})
    return out


# ------------------------------------------------------------------------------------------------
# the ranking across tasks (docs/lengthgen.md, "Ranking across tasks")


@dataclass
class RankTask:
    """One task's part of the ranking: the arms' scores (higher is better) as observed, and a
    function drawing one bootstrap replicate of them (seeds, then test items, the same item draw
    for every arm)."""
    name: str
    metric: str
    observed: Dict[str, float]
    seeds: Dict[str, int]
    sample: Callable[[np.random.Generator], Dict[str, float]]


def rank_range(task: str) -> Range:
    """The range a synthetic task is ranked on: the first beyond the training maximum (copy,
    reverse: 1-2x), or SCAN's test split."""
    ranges = RANGES.get(task, (Range("all", 0, 10 ** 6),))
    return ranges[1] if len(ranges) > 1 else ranges[0]


def rank_tasks(runs: Sequence[StudyRun]) -> List[RankTask]:
    """The synthetic tasks' parts of the ranking: exact match on :func:`rank_range`."""
    out = []
    for task in sorted({r.task for r in runs}):
        rg = rank_range(task)
        mine = [r for r in runs if r.task == task]
        by_arm = {arm: _outcomes([r for r in mine if r.arm == arm], rg) for arm in sorted({r.arm for r in mine})}
        n = next(iter(by_arm.values())).shape[1]

        def sample(gen: np.random.Generator, by_arm=by_arm, n=n) -> Dict[str, float]:
            ex = gen.integers(0, n, n)
            return {a: 100.0 * m[gen.integers(0, len(m), len(m))][:, ex].mean() for a, m in by_arm.items()}

        out.append(RankTask(task, f"EM {rg.name}", {a: 100.0 * m.mean() for a, m in by_arm.items()},
                            {a: len(m) for a, m in by_arm.items()}, sample))
    return out


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Rank 1 = the highest score; ties share the mean of their ranks; NaN ranks last."""
    x = np.where(np.isnan(scores), -np.inf, scores)
    return 1.0 + (x[None, :] > x[:, None]).sum(1) + 0.5 * ((x[None, :] == x[:, None]).sum(1) - 1)


def ranking(tasks: Sequence[RankTask], n_samples: int = N_BOOTSTRAP, seed: int = 12345) -> Dict[str, Any]:
    """Arms ranked within each task by their score, then by the mean of their ranks over the
    tasks; a task enters when it has runs of every arm of the task with the most arms (the others
    are named with their coverage). Bootstrap: per replicate, every task's scores are redrawn
    (seeds of each arm, then the test items with one draw for all arms) and ranked again; the
    95 % percentile interval of each arm's mean rank, and the share of replicates in which it
    ranks first (ties split)."""
    tasks = [t for t in tasks if t.observed]
    if not tasks:
        return {"arms": {}, "tasks": [], "left_out": []}
    widest = max(sorted(tasks, key=lambda t: t.name), key=lambda t: len(t.observed))  # ties: the first by name
    arms = sorted(widest.observed)
    used = [t for t in tasks if set(arms) <= set(t.observed)]
    left_out = [f"{t.name} ({len(set(arms) & set(t.observed))} of {len(arms)} arms)" for t in tasks if t not in used]
    observed = np.mean([_ranks(np.array([t.observed[a] for a in arms])) for t in used], axis=0)
    gen = np.random.default_rng(seed)
    drawn = np.empty((n_samples, len(arms)))
    for i in range(n_samples):
        per_task = []
        for t in used:
            s = t.sample(gen)
            per_task.append(_ranks(np.array([s[a] for a in arms], dtype=float)))
        drawn[i] = np.mean(per_task, axis=0)
    best = drawn == drawn.min(axis=1, keepdims=True)
    first = (best / best.sum(axis=1, keepdims=True)).mean(axis=0)
    out = {}
    for j, a in enumerate(arms):
        out[a] = {"mean_rank": float(observed[j]), "ci_low": float(np.percentile(drawn[:, j], 2.5)),
                  "ci_high": float(np.percentile(drawn[:, j], 97.5)), "first": float(first[j]),
                  "scores": {t.name: float(t.observed[a]) for t in used},
                  "seeds": {t.name: int(t.seeds[a]) for t in used}}
    order = sorted(out, key=lambda a: (out[a]["mean_rank"], a))
    return {"arms": {a: out[a] for a in order}, "tasks": [{"name": t.name, "metric": t.metric} for t in used],
            "left_out": left_out, "n_bootstrap": n_samples}


def ranking_markdown(rank: Dict[str, Any]) -> List[str]:
    """The ranking's section of REPORT.md."""
    out = ["## Ranking across tasks (docs/lengthgen.md)", ""]
    if len(rank.get("tasks", [])) < 1 or len(rank.get("arms", {})) < 2:
        return out + ["No ranking yet: it needs one task with runs of 2 arms or more.", ""]
    tasks = rank["tasks"]
    out += ["Arms ranked within each task by the score named in its column (1 = best; ties share their ranks), "
            "ordered by the mean of those ranks over the tasks. Interval: 95 % percentile interval of the mean rank "
            f"over {rank['n_bootstrap']} bootstrap replicates (each arm's seeds, then the test items with one draw "
            "for all arms); first: the share of replicates in which the arm has the best mean rank. With one seed "
            "per arm only the test items vary: the interval then says nothing about seed noise. A description, "
            "not a verdict.", ""]
    if rank["left_out"]:
        out += ["Not in the ranking until every arm has runs there: " + ", ".join(rank["left_out"]) + ".", ""]
    out += ["| arm | seeds (per task) | " + " | ".join(f"{t['name']}: {t['metric']}" for t in tasks)
            + " | mean rank [95%] | first |", "|---|---|" + "---|" * (len(tasks) + 2)]
    for arm, a in rank["arms"].items():
        seeds = " / ".join(str(a["seeds"][t["name"]]) for t in tasks)
        cells = [_f(a["scores"][t["name"]], ".3f" if "ratio" in t["metric"] else ".1f") for t in tasks]
        out.append(f"| `{arm}` | {seeds} | " + " | ".join(cells) + f" | {a['mean_rank']:.2f} [{a['ci_low']:.2f}, "
                   f"{a['ci_high']:.2f}] | {100 * a['first']:.0f} % |")
    return out + [""]


def _f(x: Optional[float], spec: str = ".1f") -> str:
    if x is None or (isinstance(x, float) and np.isnan(x)):
        return "–"
    text = format(x, spec)
    return text[1:] if text[:1] in "+-" and not text.strip("+-0.") else text  # no "-0.0" / "+0.0"


def _d(x: float, spec: str = ".1f") -> str:
    """A signed difference, ``+1.5`` / ``-0.2``; one that rounds to zero prints unsigned (``0.0``),
    so that no noise digit decides its sign."""
    return _f(x, "+" + spec)


def _n(count: int, noun: str) -> str:
    """``1 arm``, ``2 arms``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _p(p: Optional[float], floor: float) -> str:
    if p is None:
        return "–"
    return f"≤{floor:.2g}" if p <= floor * (1 + 1e-9) else f"{p:.2g}"


def _eq(p: str) -> str:
    return p if p.startswith("≤") else f"={p}"


def to_markdown(result: Dict[str, Any]) -> str:
    out = ["# Length generalization in an encoder-decoder (synthetic tasks)", "",
           "Written by `python -m agf_exp.report lengthgen`; protocol, hypotheses and verdict rules: "
           "docs/lengthgen.md (written before the runs). Exact match (EM, %) of greedy outputs decoded with the "
           f"last weights; per arm the mean over seeds with its 95% t interval and the seeds that solve (EM ≥ "
           f"{SOLVED:g} %); Δ: paired difference to `{BASELINE}` with a two-level bootstrap (seeds, then test "
           f"examples; {result['n_bootstrap']} resamples), its 95% interval and p, Holm-adjusted over the arms of "
           f"the task and range. Intervals over seeds need 2 seeds per arm (with one only the examples vary); no "
           f"verdict rests on fewer than the protocol's {MIN_SEEDS} seeds per arm.", ""]
    for task, entry in result["tasks"].items():
        n_runs = sum(len(a["seeds"]) for a in entry["arms"].values())
        out += [f"## {task} (training maximum {entry['train_max']}; {_n(len(entry['arms']), 'arm')}, {_n(n_runs, 'run')})", ""]
        head = "| arm | seeds | " + " | ".join(f"EM {r} [95%] (solved)" for r in entry["ranges"])
        head += " | " + " | ".join(f"Δ {r} [95%], p (Holm)" for r in entry["ranges"]) + " |"
        out += [head, "|---|---|" + "---|" * (2 * len(entry["ranges"]))]
        for arm, a in entry["arms"].items():
            cells = []
            for r in entry["ranges"]:
                s = a["ranges"][r]
                ci = "" if s["ci_low"] is None else f" [{_f(s['ci_low'])}, {_f(s['ci_high'])}]"
                cells.append(f"{_f(s['mean'])}{ci} ({s['solved']}/{s['seeds']})")
            for r in entry["ranges"]:
                t = a["vs_baseline"].get(r)
                cells.append("–" if not t else f"{_d(t['diff'])} [{_d(t['ci_low'])}, {_d(t['ci_high'])}], "
                             f"p{_eq(_p(t['p'], 1 / (t['samples'] + 1)))} ({_p(t['p_holm'], 1 / (t['samples'] + 1))})")
            out.append(f"| `{arm}` | {', '.join(map(str, a['seeds']))} | " + " | ".join(cells) + " |")
        out += ["", f"![{task}: exact match by length](lengthgen_{task}.png)", ""]
    out += ["## Hypotheses (docs/lengthgen.md)", ""] + hypotheses_table(result["hypotheses"]) + [""]
    return "\n".join(out)


def hypotheses_table(hypotheses: Sequence[Dict[str, Any]]) -> List[str]:
    """The Markdown table of hypotheses with their verdicts and what each rests on (per-arm
    verdicts, shares of early ends, the runs still missing); the MT part's too."""
    out = ["| hypothesis | verdict | detail |", "|---|---|---|"]
    for h in hypotheses:
        detail = ", ".join(f"`{a}` {v}" for a, v in (h.get("arms") or {}).items())
        if h.get("shares"):  # share of early ends: mean over seeds [95 % interval] and the part's verdict
            detail = ", ".join(f"{k}: {_f(s.get('mean'), '.3f')}"
                               + ("" if s.get("ci_low") is None else f" [{s['ci_low']:.3f}, {s['ci_high']:.3f}]")
                               + (f" {h['parts'][k]}" if k in (h.get("parts") or {}) else "")
                               for k, s in h["shares"].items())
        if h.get("missing"):
            detail += ("; " if detail else "") + "too few runs yet: " + ", ".join(h["missing"])
        if h.get("seeds_to_decide"):
            detail += (("; " if detail else "") + "seeds per arm that would decide (Welch, 80 % power; at least the "
                       "protocol's): " + ", ".join(f"{k} {seeds_text(n)}" for k, n in h["seeds_to_decide"].items()))
        out.append(f"| {h['key']}: {h['text']} | **{h['verdict']}** | {detail or '–'} |")
    return out


def arm_color(i: int):
    """The i-th arm's colour: 20 distinguishable ones (tab20's dark shades, then its light ones),
    so that the 14 arms do not share colours as with matplotlib's default 10."""
    import matplotlib

    colors = matplotlib.colormaps["tab20"].colors
    return (colors[0::2] + colors[1::2])[i % 20]


def plot(result: Dict[str, Any], out_dir) -> List[Any]:
    """Per task: EM against length, one line per arm with its 95 % band over seeds (where there
    are 2 or more), the training maximum marked; and the arm × length heat map of mean EM."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    for task, entry in result["tasks"].items():
        fig, (ax, hm) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.2, 1]})
        lengths = entry["lengths"]
        grid = []
        for i, (arm, a) in enumerate(entry["arms"].items()):
            means = [a["curve"][n]["mean"] for n in lengths]
            color = arm_color(i)
            ax.plot(lengths, means, label=arm, linewidth=1.2, color=color)
            lo = [a["curve"][n]["ci_low"] for n in lengths]
            if all(x is not None for x in lo):
                ax.fill_between(lengths, lo, [a["curve"][n]["ci_high"] for n in lengths], alpha=0.15, color=color)
            grid.append(means)
        if entry["train_max"]:
            ax.axvline(entry["train_max"] + 0.5, color="black", linestyle="--", linewidth=0.8)
        ax.set_xlabel("target length")
        ax.set_ylabel("exact match (%)")
        ax.set_title(f"{task}: exact match by length (training maximum dashed)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        # one column per tested length (SCAN's lengths have gaps), labelled with the length
        im = hm.imshow(np.array(grid, dtype=float), aspect="auto", vmin=0, vmax=100, cmap="viridis",
                       extent=(-0.5, len(lengths) - 0.5, len(grid) - 0.5, -0.5))
        ticks = list(range(0, len(lengths), max(1, len(lengths) // 8)))
        hm.set_xticks(ticks)
        hm.set_xticklabels([str(lengths[i]) for i in ticks])
        hm.set_yticks(range(len(grid)))
        hm.set_yticklabels(list(entry["arms"]), fontsize=7)
        hm.set_xlabel("target length")
        hm.set_title("mean exact match (%)")
        fig.colorbar(im, ax=hm)
        fig.tight_layout()
        path = out_dir / f"lengthgen_{task}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written
