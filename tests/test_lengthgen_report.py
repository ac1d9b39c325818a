"""The length study's report (agf_exp.results.lengthgen): exact match per range, the two-level
bootstrap, Holm, and the verdict rules of docs/lengthgen.md on made-up outcomes."""
from __future__ import annotations

import re

import numpy as np
import pytest

from agf_exp import report
from agf_exp.results import lengthgen as lg
from agf_exp.results.runs import Run
from agf_exp.results.stats import MAX_SEEDS

LENGTHS = np.repeat(np.arange(4, 65), 10)  # copy's test set shape: 10 per length 4..64


def study_run(task, arm, seed, em_by_range, short=0.0):
    """A StudyRun whose exact match in each range of ``task`` is ``em_by_range[name]`` (a
    fraction), the wrong outputs short with probability ``short``."""
    rng = np.random.default_rng(seed * 7919 + sum(map(ord, arm)))
    correct = np.zeros(len(LENGTHS), dtype=bool)
    for r in lg.RANGES[task]:
        sel = np.flatnonzero((LENGTHS >= r.low) & (LENGTHS <= r.high))
        k = int(round(em_by_range.get(r.name, 0.0) * len(sel)))
        correct[rng.choice(sel, k, replace=False)] = True
    shorts = ~correct & (rng.random(len(LENGTHS)) < short)
    return lg.StudyRun(task, arm, seed, LENGTHS, correct, shorts, f"/{task}/{arm}/{seed}")


def test_two_level_bootstrap_is_paired_and_its_interval_covers_the_difference():
    a = [study_run("copy", "t5", s, {"1-2x": 0.6}) for s in range(1, 6)]
    b = [study_run("copy", "sinusoidal", s, {"1-2x": 0.1}) for s in range(1, 6)]
    t = lg.two_level_bootstrap(a, b, lg.RANGES["copy"][1], n_samples=300)
    assert t["diff"] == pytest.approx(50.0, abs=1.0) and t["ci_low"] < t["diff"] < t["ci_high"]
    assert t["seeds"] == [5, 5] and t["examples"] == 160 and t["p"] == pytest.approx(1 / 301)
    same = lg.two_level_bootstrap(b, b, lg.RANGES["copy"][1], n_samples=300)
    assert same["diff"] == 0 and same["p"] > 0.5


def _full_study(decaying_1_2x, nope_in=0.02, short=0.8, seeds=5):
    runs = []
    for task in ("copy", "reverse"):
        for s in range(1, seeds + 1):
            runs.append(study_run(task, "sinusoidal", s, {"in-distribution": 1.0, "1-2x": 0.05}, short=short))
            runs.append(study_run(task, "rope", s, {"in-distribution": 1.0, "1-2x": 0.2}, short=short))
            runs.append(study_run(task, "nope", s, {"in-distribution": nope_in}))
            for arm in lg.H1_ARMS:
                runs.append(study_run(task, arm, s, {"in-distribution": 0.99, "1-2x": decaying_1_2x}))
    return runs


def test_the_hypotheses_follow_the_rules_when_the_protocol_seeds_are_there():
    result = lg.summarize(_full_study(0.7), n_bootstrap=200)
    verdicts = {h["key"]: h["verdict"] for h in result["hypotheses"]}
    assert verdicts == {"H1": "supported", "H2": "supported", "H3": "supported", "H4": "supported"}
    copy = result["tasks"]["copy"]["arms"]
    assert copy["t5"]["ranges"]["1-2x"]["mean"] == pytest.approx(70.0, abs=1) and copy["t5"]["ranges"]["1-2x"]["solved"] == 0
    assert copy["sinusoidal"]["ranges"]["in-distribution"]["solved"] == 5
    assert all(t["p_holm"] >= t["p"] for t in (copy[a]["vs_baseline"]["1-2x"] for a in lg.H1_ARMS))
    text = lg.to_markdown(result)
    assert "| H1: decaying biases and T5 extrapolate (copy and reverse, 1-2x) | **supported** |" in text
    bad = {h["key"]: h["verdict"] for h in lg.summarize(_full_study(0.0, nope_in=0.5, short=0.1), 200)["hypotheses"]}
    assert bad["H1"] == "refuted" and bad["H4"] == "refuted" and bad["H3"] == "refuted"


def test_no_verdict_rests_on_fewer_than_the_protocols_seeds():
    result = lg.summarize(_full_study(0.7, seeds=2), n_bootstrap=100)
    assert {h["verdict"] for h in result["hypotheses"]} == {"undecided"}
    assert any("(2 of 5 seeds)" in m for m in result["hypotheses"][0]["missing"])
    assert "reverse/agf (2 of 5 seeds)" in result["hypotheses"][1]["missing"]  # H2 says how many too
    assert "copy/rope (2 of 5 seeds)" in result["hypotheses"][2]["missing"]  # and H3
    # with 2 seeds a side the report says how many would decide: +65 points is far above H1's +10
    h1 = result["hypotheses"][0]
    assert set(h1["seeds_to_decide"]) == {f"{t}/{a}" for t in ("copy", "reverse") for a in lg.H1_ARMS}
    # Welch alone would say 2 or 3; no verdict reads fewer than the protocol's seeds, so neither does the figure
    assert all(n == lg.MIN_SEEDS for n in h1["seeds_to_decide"].values())
    assert "seeds per arm that would decide (Welch, 80 % power; at least the protocol's): copy/agf 5" in lg.to_markdown(result)
    close = lg.summarize(_full_study(0.1, seeds=2), n_bootstrap=100)  # +5 points: between 0 and +10
    assert set(close["hypotheses"][0]["seeds_to_decide"].values()) == {MAX_SEEDS + 1}
    assert "copy/t5 > 1000" in lg.to_markdown(close)
    assert lg.summarize(_full_study(0.7, seeds=1), n_bootstrap=50)["hypotheses"][0]["seeds_to_decide"] == {}


def test_one_refuted_part_refutes_h3_and_the_report_says_which():
    """H3 claims all four (task, arm) parts end early; a part with the protocol's seeds whose
    interval lies below one half refutes it even while rope's other seeds are still missing."""
    runs = [r for r in _full_study(0.7) if not (r.arm == "rope" and r.seed > 1)
            and not (r.task == "copy" and r.arm == "sinusoidal")]
    runs += [study_run("copy", "sinusoidal", s, {"in-distribution": 1.0, "1-2x": 0.05}, short=0.1) for s in range(1, 6)]
    h3 = {h["key"]: h for h in lg.summarize(runs, n_bootstrap=50)["hypotheses"]}["H3"]
    assert h3["verdict"] == "refuted" and h3["parts"] == {"copy/sinusoidal": "refuted", "reverse/sinusoidal": "supported"}
    assert h3["missing"] == ["copy/rope (1 of 5 seeds)", "reverse/rope (1 of 5 seeds)"]
    row = next(line for line in lg.hypotheses_table([h3]) if line.startswith("| H3"))
    lo, hi = h3["shares"]["copy/sinusoidal"]["ci_low"], h3["shares"]["copy/sinusoidal"]["ci_high"]
    assert f"copy/sinusoidal: {h3['shares']['copy/sinusoidal']['mean']:.3f} [{lo:.3f}, {hi:.3f}] refuted" in row
    assert re.search(r"copy/rope: \d\.\d{3}, ", row)  # one seed: no interval, no part verdict
    assert "| **refuted** |" in row


def test_one_refuted_arm_refutes_h1_and_h2_and_the_report_names_it():
    """H1 and H2 claim something of every decaying arm: one arm with the protocol's seeds whose
    interval lies below the threshold refutes them while the others have one seed."""
    runs = [r for r in _full_study(0.7) if r.arm in ("sinusoidal", "rope", "nope") or r.seed == 1]
    runs = [r for r in runs if r.arm != "alibi"] + [
        study_run(t, "alibi", s, {"in-distribution": 0.6, "1-2x": 0.0}) for t in ("copy", "reverse") for s in range(1, 6)]
    h = {x["key"]: x for x in lg.summarize(runs, n_bootstrap=50)["hypotheses"]}
    assert h["H1"]["verdict"] == "refuted" and h["H1"]["arms"]["alibi"] == "refuted"
    assert h["H2"]["verdict"] == "refuted" and h["H2"]["arms"] == {a: "refuted" if a == "alibi" else "undecided"
                                                                   for a in lg.DECAYING}
    assert "reverse/agf (1 of 5 seeds)" in h["H2"]["missing"]
    row = next(line for line in lg.hypotheses_table([h["H2"]]) if line.startswith("| H2"))
    assert "| **refuted** | `agf` undecided, " in row and "`alibi` refuted" in row


def test_ranking_orders_arms_by_mean_rank_over_tasks_with_bootstrap_intervals():
    runs = _full_study(0.7, seeds=3)
    runs = [r for r in runs if not (r.arm == "t5" and r.task == "copy")] + [
        study_run("copy", "t5", s, {"in-distribution": 1.0, "1-2x": 0.95}) for s in (1, 2, 3)]
    runs += [study_run("scan", "t5", 1, {"test split": 0.5})]  # one arm only: left out, named
    rank = lg.ranking(lg.rank_tasks(runs), n_samples=200)
    assert [t["name"] for t in rank["tasks"]] == ["copy", "reverse"] and rank["left_out"] == ["scan (1 of 10 arms)"]
    arms = list(rank["arms"])
    assert arms[0] == "t5" and arms[-1] == "nope" and arms.index("rope") < arms.index("sinusoidal")
    t5 = rank["arms"]["t5"]
    assert t5["mean_rank"] == pytest.approx((1 + 4) / 2)  # copy: first; reverse: ranks 1-7 tied (the 7 H1 arms)
    assert t5["ci_low"] <= t5["mean_rank"] <= t5["ci_high"] and t5["scores"]["copy"] == pytest.approx(95.0, abs=1)
    assert rank["arms"]["nope"]["ci_low"] == rank["arms"]["nope"]["ci_high"] == 10.0  # last in every replicate
    assert sum(a["first"] for a in rank["arms"].values()) == pytest.approx(1.0)
    assert t5["first"] == max(a["first"] for a in rank["arms"].values())
    text = "\n".join(lg.ranking_markdown(rank))
    assert "| arm | seeds (per task) | copy: EM 1-2x | reverse: EM 1-2x | mean rank [95%] | first |" in text
    assert "| `t5` | 3 / 3 | 95.0 | 70.0 | 2.50 [" in text
    assert "Not in the ranking until every arm has runs there: scan (1 of 10 arms)." in text
    assert lg._ranks(np.array([3.0, np.nan, 3.0, 5.0])).tolist() == [2.5, 4.0, 2.5, 1.0]
    # a difference that rounds to zero has no sign: no noise digit decides it
    assert [lg._d(x) for x in (-0.02, 0.0, 0.04, -0.06, 2.0)] == ["0.0", "0.0", "0.0", "-0.1", "+2.0"]
    assert lg._d(-0.0004, ".3f") == "0.000" and lg._d(0.0024, ".3f") == "+0.002"


def test_the_committed_report_regenerates_from_its_run_files(tmp_path, capsys):
    from pathlib import Path

    committed = Path(__file__).resolve().parent.parent / "results/lengthgen"
    out = tmp_path / "REPORT.md"
    assert report.main(["lengthgen", "--runs", str(committed), "--out", str(out)]) == 0
    # the committed report is a product: it regenerates byte for byte from the committed run files
    assert out.read_text() == (committed / "REPORT.md").read_text()
    assert (tmp_path / "lengthgen.json").read_bytes() == (committed / "lengthgen.json").read_bytes()
    assert (tmp_path / "lengthgen_copy.png").is_file() and (tmp_path / "lengthgen_mt.png").is_file()
    assert report.main(["lengthgen", "--runs", str(tmp_path)]) == 2
    assert "no finished run of the length study" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# the MT part (agf_exp.results.lengthgen_mt) on made-up translations

from agf_exp.data.corpus import joined  # noqa: E402
from agf_exp.results import lengthgen_mt as mt  # noqa: E402

WORDS = "ein mann fährt fahrrad auf der straße eine frau liest ein buch im park zwei hunde spielen".split()


def mt_run(arm, seed, robust, n=32):
    """A finished MT run: 32 test sentences translated perfectly one by one, their joined inputs
    translated perfectly (``robust``) or cut after the first sentence (the early end)."""
    rng = np.random.default_rng(seed)
    refs = [" ".join(rng.choice(WORDS, int(rng.integers(6, 20)))) for _ in range(n)]
    srcs = [" ".join(["w"] * (i % 25 + 1)) for i in range(n)]  # 1 ... 25 source words
    files = {"test.src": srcs, "test.ref": refs, "test.beam": list(refs)}
    for k in (2, 4, 8):
        groups = [refs[i:i + k] for i in range(0, n - k + 1, k)]
        files[f"test_join{k}.ref"] = joined(refs, k)
        files[f"test_join{k}.beam"] = joined(refs, k) if robust else [g[0] for g in groups]
    config = {"study": "lengthgen_mt", "arm": arm, "seed": seed, "experiment": "lengthgen_mt"}
    summary = {"status": "complete", "final": {}, "decoding": {"test/beam": {}}}
    return Run(f"/mt/{arm}/seed{seed}", config, summary, [], None, files)


def test_mt_robustness_ratio_separates_length_robustness_from_quality():
    runs, skipped = mt.mt_runs([mt_run("sinusoidal", s, robust=False) for s in (1, 2, 3)]
                               + [mt_run("t5", s, robust=True) for s in (1, 2, 3)]
                               + [mt_run("rope", s, robust=False) for s in (1, 2, 3)])
    assert not skipped and {r.strategy for r in runs} == {"beam"}
    result = mt.summarize(runs, n_bootstrap=200)
    t5, sin = result["arms"]["t5"]["levels"], result["arms"]["sinusoidal"]["levels"]
    assert t5[1]["bleu"]["mean"] == pytest.approx(100.0) and sin[1]["bleu"]["mean"] == pytest.approx(100.0)
    assert t5[8]["robustness"]["mean"] == pytest.approx(1.0) and t5[8]["short"]["mean"] == 0
    assert sin[8]["robustness"]["mean"] < 0.1 and sin[8]["short"]["mean"] == 1.0 and sin[8]["length_ratio"]["mean"] < 0.2
    delta = result["arms"]["t5"]["vs_baseline"]
    assert delta["seeds"] == [3, 3] and delta["inputs"] == 4 and delta["ci_low"] > mt.H1_MARGIN
    buckets = result["arms"]["t5"]["buckets"]
    assert buckets["≤12 (trained)"]["mean"] == pytest.approx(100.0) and set(buckets) == {b for b, _, _ in mt.BUCKETS}
    verdicts = {h["key"]: h for h in result["hypotheses"]}
    assert verdicts["H1 (MT)"]["arms"]["t5"] == "supported"
    assert verdicts["H1 (MT)"]["verdict"] == "undecided" and "agf" in verdicts["H1 (MT)"]["missing"]  # arms missing
    assert verdicts["H3 (MT)"]["verdict"] == "supported"
    assert verdicts["H1 (MT)"]["seeds_to_decide"] == {}  # t5 is decided; the other arms have no runs
    two = mt.summarize(mt.mt_runs([mt_run(a, s, robust=a == "t5") for a in ("sinusoidal", "t5") for s in (1, 2)])[0],
                       n_bootstrap=50)  # 2 seeds: a clear effect still needs the protocol's 3 for a verdict
    assert two["hypotheses"][0]["seeds_to_decide"] == {"t5": mt.MIN_SEEDS}
    task = mt.rank_task(runs)  # the MT part's share of the ranking across tasks: the k = 8 ratio
    assert task.observed["t5"] == pytest.approx(1.0) and task.observed["sinusoidal"] < 0.1 and task.seeds["t5"] == 3
    replicate = task.sample(np.random.default_rng(0))
    assert set(replicate) == {"sinusoidal", "t5", "rope"} and replicate["t5"] == pytest.approx(1.0)
    assert list(lg.ranking([task], n_samples=50)["arms"])[0] == "t5"
    text = mt.to_markdown(result)
    assert "| H3 (MT): sinusoidal and RoPE end early on 8 joined sentences | **supported** |" in text
    # two seeds a side: no verdict (the protocol's 3 on MT)
    few = mt.summarize(mt.mt_runs([mt_run("sinusoidal", s, False) for s in (1, 2)]
                                  + [mt_run("rope", s, False) for s in (1, 2)])[0], n_bootstrap=50)
    few_h3 = {h["key"]: h for h in few["hypotheses"]}["H3 (MT)"]
    assert few_h3["verdict"] == "undecided" and few_h3["missing"] == ["sinusoidal (2 of 3 seeds)", "rope (2 of 3 seeds)"]


def test_report_lengthgen_adds_the_mt_part(tmp_path, capsys):
    from agf_exp.rundir import write_json

    for arm, robust in (("sinusoidal", False), ("t5", True)):
        run = mt_run(arm, 1, robust)
        d = tmp_path / "runs" / arm / "seed1"
        (d / "hyps").mkdir(parents=True)
        (d / "config.yaml").write_text(f"study: lengthgen_mt\narm: {arm}\nseed: 1\nexperiment: lengthgen_mt\n")
        write_json(d / "summary.json", run.summary)
        for name, lines in run.files.items():
            (d / "hyps" / f"{name}.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "report" / "REPORT.md"
    assert report.main(["lengthgen", "--runs", str(tmp_path / "runs"), "--out", str(out), "--bootstrap", "50"]) == 0
    text = out.read_text()
    assert "## MT: train short, test long (Multi30k en-de)" in text and "| `t5` | 1 |" in text
    assert "| arm | seeds (per task) | multi30k: k=8 robustness ratio | mean rank [95%] | first |" in text
    assert "| `t5` | 1 | 1.000 | 1.00 [1.00, 1.00] | 100 % |" in text
    assert (out.parent / "lengthgen_mt.png").is_file() and not (out.parent / "lengthgen_copy.png").exists()
