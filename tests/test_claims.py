"""The paper's claims and their verdicts: the rules on constructed numbers, and the whole path from
run results (fabricated Run records) to the Markdown the report prints."""
from __future__ import annotations

import numpy as np
import pytest

from agf_exp.results import claims
from agf_exp.results import stats as result_stats
from agf_exp.results.runs import Run
from agf_exp.tables import PAPER_ROWS

FIG5 = [62.9851, 67.6618, 69.025, 69.7529, 70.1426, 70.4782, 70.6026, 70.7271, 70.7603, 70.9213]


def _run(row: str, seed: int, final: float, curve=None, hyps=None, refs=None) -> Run:
    curve = curve or [final - 5 + 5 * (1 - 0.5 ** e) for e in range(1, 11)]
    metrics = [{"epoch": e, "epoch_fraction": float(e), "val_acc": v} for e, v in enumerate(curve, 1)]
    files = {"test.beam": hyps, "test.ref": refs} if hyps else {}
    summary = {"status": "complete", "final": {"val_acc": final},
               "decoding": {"test/beam": {"bleu": 30.0}} if hyps else {}}
    return Run(f"/runs/{row}/seed{seed}", {"seed": seed, "experiment": "small", "row": row}, summary, metrics, row, files)


def test_paper_deltas_come_from_the_paper_values():
    c = {c.key: c for c in claims.CLAIMS}
    assert c["pcmv_agf_m"].paper_delta == pytest.approx(70.7582 - 70.4863)
    assert c["sco_pcmv_pe"].paper_delta == pytest.approx(70.9213 - 70.8049)
    assert all(cl.row in PAPER_ROWS and cl.versus in PAPER_ROWS for cl in claims.CLAIMS)
    assert all(cl.paper_delta > 0 for cl in claims.CLAIMS if cl.kind == "better")


@pytest.mark.parametrize("kind,low,high,expected", [
    ("better", 0.1, 0.5, "reproduced"), ("better", -0.5, -0.1, "not reproduced"), ("better", -0.1, 0.3, "inconclusive"),
    ("par", -0.3, 0.4, "reproduced"), ("par", 0.6, 1.2, "not reproduced"), ("par", -2.0, -0.7, "not reproduced"),
    ("par", -0.2, 0.9, "inconclusive"), ("better", None, None, "inconclusive (fewer than 2 seeds)"),
])
def test_verdict_rules(kind, low, high, expected):
    assert claims.verdict(kind, low, high) == expected


def test_welch_interval_matches_scipy():
    from scipy import stats

    a, b = [70.1, 70.5, 70.3], [69.8, 69.9, 70.2, 69.7]
    ci = result_stats.welch_ci(a, b)
    t = stats.ttest_ind(a, b, equal_var=False)
    low, high = t.confidence_interval(0.95)
    assert ci["diff"] == pytest.approx(np.mean(a) - np.mean(b))
    assert (ci["ci_low"], ci["ci_high"]) == pytest.approx((low, high))
    assert result_stats.welch_ci([1.0], [2.0, 3.0])["ci_low"] is None


def test_claims_from_runs_follow_the_numbers():
    # agf_m_pcmv clearly above agf_m and vanilla; agf on par with vanilla; alibi rows identical
    finals = {"vanilla": [60.0, 60.2, 60.1], "agf": [60.1, 59.9, 60.0], "agf_m": [59.0, 59.1, 58.9],
              "agf_pcmv": [59.9, 60.3, 60.0], "agf_m_pcmv": [61.0, 61.2, 61.1], "alibi_bl": [60.0, 60.1, 60.2],
              "alibi_bl_pcmv_exp": [60.0, 60.1, 60.2], "alibi_bl_mul_pcmv": [58.0, 58.1, 58.2]}
    refs = ["a b c d e f", "g h i j k l"] * 10
    runs = [_run(row, s, v, hyps=refs if row in ("agf_m_pcmv", "vanilla") else None, refs=refs)
            for row, vals in finals.items() for s, v in enumerate(vals, 1)]
    runs += [_run("agf_m_sco_pe", 1, 61.0)]  # one seed only
    result = claims.evaluate_claims(runs, n_bootstrap=100)
    got = {c["key"]: c for c in result["claims"]}
    assert got["agf_par"]["verdict"] == "reproduced"
    assert got["agf_m_par"]["verdict"] == "not on par: `vanilla` better (p<0.001)"  # a full point below vanilla
    assert got["pcmv_agf_m"]["verdict"] == "reproduced" and got["agf_m_pcmv_vanilla"]["verdict"] == "reproduced"
    assert got["pcmv_exp_alibi"]["verdict"] == "inconclusive" and got["pcmv_exp_alibi"]["diff"] == pytest.approx(0)
    assert got["alibi_mul_pcmv"]["verdict"] == "not reproduced"
    assert got["sco_pe_vanilla"]["verdict"] == "inconclusive (fewer than 2 seeds)"
    assert got["sco_pcmv_pe"]["verdict"] == "no runs yet"
    assert got["agf_m_pcmv_vanilla"]["bootstrap"]["diff"] == pytest.approx(0)  # identical translations
    assert result["curve"]["row"] == "agf_m_pcmv"
    text = claims.to_markdown(result)
    assert "| PCM-V improves AGF-M (Table 4) | `agf_m_pcmv` − `agf_m` | +0.2719 | +2.10 [" in text
    assert text.count("**reproduced**") == 3


def test_a_pair_with_two_subword_segmentations_gets_no_verdict():
    # same numbers as a clear "reproduced", but one agf_m_pcmv seed ran with another subword model
    runs = [_run("agf_m_pcmv", s, 61.0 + s / 10) for s in (1, 2, 3)] + [_run("agf_m", s, 59.0 + s / 10) for s in (1, 2, 3)]
    for r in runs:
        r.summary["final"]["val_tokens"] = 17177
    assert {c["key"]: c for c in claims.evaluate_claims(runs)["claims"]}["pcmv_agf_m"]["verdict"] == "reproduced"
    runs[0].summary["final"]["val_tokens"] = 16350
    result = claims.evaluate_claims(runs)
    assert {c["key"]: c for c in result["claims"]}["pcmv_agf_m"]["verdict"] == "not comparable: mixed subword models"
    assert "17177 validation target tokens: 5 runs; 16350 validation target tokens: 1 run" in claims.to_markdown(result)


def test_learning_curve_claim_on_the_papers_figure_5():
    runs = [_run("agf_m_sco_pcmv_pe", s, FIG5[-1], curve=FIG5) for s in (1, 2)]
    curve = claims.curve_claim({"agf_m_sco_pcmv_pe": runs})
    assert curve["epochs"] == list(range(1, 11)) and curve["verdict"] == "reproduced"
    assert curve["fits"]["power"]["ceiling"] == pytest.approx(71.53, abs=0.02)
    assert claims.curve_verdict(-30.0, -31.0) == "inconclusive" and claims.curve_verdict(-20.0, -40.0) == "not reproduced"
    short = claims.curve_claim({"vanilla": [_run("vanilla", s, 60.0, curve=[50, 55, 58]) for s in (1, 2)]})
    assert short["verdict"] == "inconclusive (fewer than 5 epochs)"
    one_seed = claims.curve_claim({"vanilla": runs[:1]})
    assert one_seed["row"] is None and one_seed["verdict"] == "inconclusive (no row with 2 finished seeds yet)"


def test_every_row_gets_its_learning_curve_fit():
    fig5 = [_run("agf_m_sco_pcmv_pe", s, FIG5[-1], curve=FIG5) for s in (1, 2)]
    lower = [_run("vanilla", 1, FIG5[-1] - 2, curve=[v - 2 for v in FIG5])]
    short = [_run("agf", 1, 58.0, curve=[50, 55, 58])]
    curve = claims.curve_claim({"agf_m_sco_pcmv_pe": fig5, "vanilla": lower, "agf": short})
    rows = {r["row"]: r for r in curve["rows"]}
    assert set(rows) == {"agf_m_sco_pcmv_pe", "vanilla"}  # 3 epochs are too few to fit
    assert rows["vanilla"]["n"] == 1 and rows["agf_m_sco_pcmv_pe"]["n"] == 2
    assert rows["agf_m_sco_pcmv_pe"]["fits"] == curve["fits"]  # the claim's row is the same fit
    # shifting the curve by -2 shifts the ceiling by -2 and leaves the fit quality alone
    assert rows["vanilla"]["fits"]["power"]["ceiling"] == pytest.approx(curve["fits"]["power"]["ceiling"] - 2, abs=1e-3)
    assert rows["vanilla"]["fits"]["power"]["aic"] == pytest.approx(curve["fits"]["power"]["aic"], abs=1e-2)
    text = claims.to_markdown({"claims": [], "curve": curve, "attention": None, "par_margin": 0.5})
    assert "| `vanilla` | 1 | 1–10 | 68.92 | 69.53 [69.41, 69.65] | 0.9998 | 68.67 [68.42, 68.92] |" in text


def _decay_json(kinds) -> dict:
    """A decay.json whose profiles (one causal head per module, distances 1..40) have known tails:
    "power" (G·d^-1.2), "exponential" (G·e^(-0.15 d)) or "neither" (falls to d = 20, then rises,
    so that neither form fitted on the near half predicts the far half better than its mean)."""
    d = np.arange(40, 0, -1, dtype=float)  # offsets -40..-1, then 0 and the (empty) right side
    shapes = {"power": 0.3 * d ** -1.2, "exponential": 0.3 * np.exp(-0.15 * d),
              "neither": np.where(d <= 20, 0.3 / d, 0.015 * (1 + (d - 20) / 5))}
    profiles = {}
    for i, kind in enumerate(kinds):
        mean = np.concatenate([shapes[kind], [0.5], np.zeros(40)])
        count = np.concatenate([np.full(41, 100.0), np.zeros(40)])
        profiles[f"decoder.{i}.self_attn"] = {"attn_type": "dec", "offsets": list(range(-40, 41)),
                                              "count": count.tolist(), "mean": [mean.tolist()]}
    return {"profiles": profiles, "fits": []}


def test_attention_evidence_refits_the_stored_profiles_and_counts_neither(tmp_path):
    import json

    runs = {}
    layout = {"vanilla": ["power"] * 7 + ["exponential"] * 1 + ["neither"] * 4,
              "agf_m": ["power"] * 10 + ["neither"] * 2, "agf_m_pcmv": ["power"] * 9 + ["exponential"] * 3}
    for row, kinds in layout.items():
        run = _run(row, 1, 60.0)
        run.path = str(tmp_path / row)
        (tmp_path / row / "analysis").mkdir(parents=True)
        (tmp_path / row / "analysis/decay.json").write_text(json.dumps(_decay_json(kinds)))
        heads = [{"attn_type": t, "dominant": d, "eta_pos": ep, "eta_sym": es}
                 for t, d, ep, es in (("enc", "positional", 0.6, 0.1), ("enc", "mixed", 0.05, 0.05),
                                      ("cross", "symbolic", 0.1, 0.5))]
        (tmp_path / row / "analysis/heads.json").write_text(json.dumps({"heads": heads}))
        runs[row] = [run]
    ev = claims.attention_evidence(runs)
    # the claim's counts are the AGF family's (agf_m + agf_m_pcmv); vanilla is its own family
    assert (ev["power"], ev["exponential"], ev["neither"], ev["profiles"]) == (19, 3, 2, 24)
    assert ev["verdict"] == "reproduced" and ev["p"] < 0.05
    fam = {f["family"]: f for f in ev["families"]}
    assert (fam["vanilla"]["power"], fam["vanilla"]["exponential"], fam["vanilla"]["neither"]) == (7, 1, 4)
    assert fam["vanilla"]["verdict"] == "inconclusive" and fam["vanilla"]["decided"] == "no preference"  # 7 vs 1: p 0.07
    assert fam["agf"]["decided"] == "power law" and fam["agf"]["decided_p"] < 0.05
    enc = ev["models"][0]["heads"]["enc"]
    assert (enc["heads"], enc["positional"], enc["mixed"]) == (2, 1, 1) and enc["eta_pos"] == pytest.approx(0.325)
    text = claims.to_markdown({"claims": [], "curve": {"fits": None, "verdict": "no runs yet"}, "attention": ev,
                               "par_margin": 0.5})
    assert "| no positional coefficient (vanilla) | 12 | 7 | 1 | 4 (0.77) | **inconclusive** | 7 vs 1: **power law** (0.07) |" \
        not in text  # 7 of 8 decided is p = 0.07: no preference
    assert "| no positional coefficient (vanilla) | 12 | 7 | 1 | 4 (0.77) | **inconclusive** | 7 vs 1: **no preference**" in text
    assert "| decaying positional coefficient (AGF-M, AGF-M + PCM-V) | 24 | 19 | 3 | 2 (" in text
    assert "| `vanilla` | 1 | 7 / 1 / 4 of 12 (" in text and "| 1/0/1, –, 0/1/0 |" in text
    # a tail that neither form describes counts as neither, and most such tails make the verdict
    (tmp_path / "vanilla/analysis/decay.json").write_text(json.dumps(_decay_json(["neither"] * 10 + ["power"] * 2)))
    def vanilla_family():
        return {f["family"]: f for f in claims.attention_evidence({"vanilla": runs["vanilla"]})["families"]}["vanilla"]

    alone = vanilla_family()
    assert (alone["power"], alone["neither"]) == (2, 10) and alone["verdict"] == "neither"
    (tmp_path / "vanilla/analysis/decay.json").write_text(json.dumps(_decay_json(["power"] * 6 + ["exponential"] * 6)))
    assert vanilla_family()["verdict"] == "inconclusive"
    (tmp_path / "vanilla/analysis/decay.json").write_text(json.dumps(_decay_json(["exponential"] * 10 + ["power"] * 2)))
    assert vanilla_family()["verdict"] == "not reproduced"
    assert claims.attention_evidence({})["verdict"].startswith("no analysis yet")


def test_seeds_needed_is_the_welch_sample_size():
    """Seeds spread with SD 1 in both rows and a true difference of 1 point: the 95% interval
    excludes 0 with probability 0.8 at n = (t_.975 + t_.8)² · 2 / 1² ≈ 17 seeds per row (about
    16 with normal quantiles); "on par" within ±0.5 at a true difference of 0 needs 4× the
    variance budget; an effect the claim cannot show is reported as more than MAX_SEEDS."""
    a, b = [0.0, 1.0, 2.0], [5.0, 6.0, 7.0]  # sample SD exactly 1 each
    assert result_stats.seeds_needed(a, b, 1.0, "better") == 17
    n_par = result_stats.seeds_needed(a, b, 0.0, "par", margin=0.5)
    assert 63 <= n_par <= 66
    assert result_stats.seeds_needed(a, b, 2.0, "better") < result_stats.seeds_needed(a, b, 1.0, "better")
    assert result_stats.seeds_needed(a, b, -0.3, "better") == result_stats.MAX_SEEDS + 1
    assert result_stats.seeds_needed(a, b, 0.7, "par", margin=0.5) == result_stats.MAX_SEEDS + 1
    assert result_stats.seeds_needed([1.0], b, 1.0, "better") is None


def test_seeds_to_decide_measures_the_distance_to_the_nearer_threshold():
    """The length study's rules decide against thresholds (H1: above +10 supports, below 0
    refutes): the seeds that decide are seeds_needed at the observed difference's distance to the
    threshold on its side; between the thresholds no number of seeds decides."""
    base = [0.0, 1.0, 2.0]  # SD 1
    above = [12.0, 13.0, 14.0]  # observed +12: 2 above +10
    assert result_stats.seeds_to_decide(above, base, 10.0, 0.0) == result_stats.seeds_needed(above, base, 2.0, "better")
    below = [-1.0, 0.0, 1.0]  # observed -1: 1 below 0
    assert result_stats.seeds_to_decide(below, base, 10.0, 0.0) == 17 == result_stats.seeds_needed(below, base, 1.0, "better")
    assert result_stats.seeds_to_decide([5.0, 6.0, 7.0], base, 10.0, 0.0) == result_stats.MAX_SEEDS + 1
    assert result_stats.seeds_to_decide([-3.0, -2.0, -1.0], base, -5.0, -5.0) < 10  # H2: -3, 2 above -5
    assert result_stats.seeds_to_decide([1.0], base, 10.0, 0.0) is None


def test_each_claim_gets_a_bleu_verdict_and_inconclusive_ones_the_seeds_to_decide():
    finals = {"vanilla": [60.0, 60.2, 60.1], "agf_m_pcmv": [61.0, 61.2, 61.1], "agf_m": [60.0, 61.6, 60.5]}
    refs = ["a b c d e f", "g h i j k l"] * 10
    runs = [_run(row, s, v, hyps=refs if row in ("agf_m_pcmv", "vanilla") else None, refs=refs)
            for row, vals in finals.items() for s, v in enumerate(vals, 1)]
    result = claims.evaluate_claims(runs, n_bootstrap=100)
    got = {c["key"]: c for c in result["claims"]}
    beats = got["agf_m_pcmv_vanilla"]  # accuracy clearly higher, translations identical
    assert beats["verdict"] == "reproduced" and beats["bleu_verdict"] == "inconclusive"
    assert beats["seeds_needed"] is None
    improves = got["pcmv_agf_m"]
    assert improves["verdict"] == "inconclusive"
    assert improves["seeds_needed"] == result_stats.seeds_needed(finals["agf_m_pcmv"], finals["agf_m"],
                                                           improves["paper_delta"], "better")
    text = claims.to_markdown(result)
    assert "val acc: **reproduced**; test BLEU: **inconclusive** | – |" in text
    assert 2 < improves["seeds_needed"] <= result_stats.MAX_SEEDS
    observed = result_stats.seeds_needed(finals["agf_m_pcmv"], finals["agf_m"], abs(improves["diff"]), "better")
    assert improves["seeds_needed_observed"] == observed
    assert f"| **inconclusive** | {improves['seeds_needed']}; {observed} (difference) |" in text


def test_a_bleu_gain_that_rests_on_one_seed_is_not_reproduced_by_the_sentence_bootstrap_alone():
    # every test sentence behaves alike, so the sentence bootstrap is tight; the row's seeds spread widely
    refs = ["a b c d e f", "g h i j k l"] * 10
    base = ["a b c d e X", "g h i j k X"] * 10  # one word wrong in every sentence, every vanilla seed
    bad = ["a b c d X f", "g h i j X l"] * 10  # one word wrong, further from the end: more n-grams lost
    finals = {"vanilla": [60.0, 60.2, 60.1], "agf_m_pcmv": [61.0, 61.2, 61.1]}
    row_hyps = {"vanilla": [base, base, base], "agf_m_pcmv": [refs, refs, bad]}
    runs = [_run(row, s, v, hyps=row_hyps[row][s - 1], refs=refs)
            for row, vals in finals.items() for s, v in enumerate(vals, 1)]
    got = {c["key"]: c for c in claims.evaluate_claims(runs, n_bootstrap=200)["claims"]}["agf_m_pcmv_vanilla"]
    bs, seeds = got["bootstrap"], got["bleu_seeds"]
    assert bs["diff"] == pytest.approx(seeds["diff"]) and bs["diff"] > 0
    assert bs["ci_low"] > 0  # the sentence bootstrap alone would say "reproduced"
    assert seeds["ci_low"] < 0 < seeds["ci_high"]  # the seeds do not decide it
    assert got["bleu_verdict"] == "inconclusive"
    assert claims.bleu_verdict("better", bs, seeds) == "inconclusive"
    # the same gain on every seed: both intervals decide it
    consistent = [_run("vanilla", s, 60.0 + s / 10, hyps=base, refs=refs) for s in (1, 2, 3)]
    consistent += [_run("agf_m_pcmv", s, 61.0 + s / 10, hyps=refs, refs=refs) for s in (1, 2, 3)]
    got = {c["key"]: c for c in claims.evaluate_claims(consistent, n_bootstrap=200)["claims"]}["agf_m_pcmv_vanilla"]
    assert got["bleu_verdict"] == "reproduced"
    text = claims.to_markdown(claims.evaluate_claims(runs, n_bootstrap=200))
    assert "| ΔBLEU over seeds [95% CI] |" in text


@pytest.mark.parametrize("boot,seeds,expected", [
    ((0.2, 0.9), (0.1, 1.5), "reproduced"), ((0.2, 0.9), (-0.5, 1.5), "inconclusive"),
    ((-0.9, -0.2), (-1.5, -0.1), "not reproduced"), ((-0.9, -0.2), (0.1, 0.5), "inconclusive"),
    ((0.2, 0.9), (None, None), "inconclusive (fewer than 2 seeds)"),
])
def test_bleu_verdict_needs_both_intervals_to_agree(boot, seeds, expected):
    as_ci = lambda lo_hi: {"ci_low": lo_hi[0], "ci_high": lo_hi[1]}  # noqa: E731
    assert claims.bleu_verdict("better", as_ci(boot), as_ci(seeds)) == expected
