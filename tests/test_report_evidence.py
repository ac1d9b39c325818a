"""What the report says beyond the direction of each claim: magnitude against the paper, the
equivalence test and Holm, learning speed with its controls, the fit window, per-family decay,
P/S where they cannot vary, provenance, and output free of machine noise."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from agf_exp.analysis import decay, heads
from agf_exp.results import claims, learning_speed, provenance
from agf_exp.results import stats as result_stats
from agf_exp.results.runs import Run

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "results" / "multi30k-small"


def _run(row, seed, curve, pe=False, **summary):
    metrics = [{"epoch": e, "epoch_fraction": float(e), "val_acc": v, "train_loss": 7.2}
               for e, v in enumerate(curve, 1)]
    s = {"status": "complete", "final": {"val_acc": curve[-1]}, "decoding": {}, **summary}
    return Run(f"/runs/{row}/seed{seed}", {"seed": seed, "experiment": "small", "row": row, "pe": pe}, s, metrics, row)


# ---- statistics ----------------------------------------------------------------------------------

def test_welch_p_tost_and_holm_match_their_definitions():
    from scipy import stats

    a, b = [70.1, 70.5, 70.3, 70.2], [69.8, 69.9, 70.2, 69.7]
    assert result_stats.welch_p(a, b) == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    # TOST: the larger one-sided p; scipy's one-sided Welch tests against shifted means
    lower = stats.ttest_ind(np.add(a, 0.5), b, equal_var=False, alternative="greater").pvalue
    upper = stats.ttest_ind(np.subtract(a, 0.5), b, equal_var=False, alternative="less").pvalue
    assert result_stats.tost_p(a, b, 0.5) == pytest.approx(max(lower, upper))
    assert result_stats.holm([0.01, 0.04, None, 0.03]) == pytest.approx([0.03, 0.06, None, 0.06])
    assert result_stats.holm([0.5, 0.6]) == [1.0, 1.0]


def test_magnitude_against_the_papers_delta():
    assert claims.magnitude(0.68, 1.66, 0.17) == "larger than the paper's"
    assert claims.magnitude(-0.4, 0.1, 0.27) == "smaller than the paper's"
    assert claims.magnitude(-0.4, 0.75, 0.27) == "consistent with the paper's"
    assert claims.magnitude(0.33, 1.49, -0.10) == "above the paper's"
    assert claims.magnitude(None, None, 0.1) is None


def test_on_par_claims_use_the_equivalence_test_and_name_the_better_row():
    close = [66.0, 66.1, 65.9, 66.05, 65.95]
    base = [66.02, 66.08, 65.93, 66.0, 65.97]
    ci = result_stats.welch_ci(close, base)
    verdict, p = claims.par_verdict("agf", "vanilla", close, base, ci["ci_low"], ci["ci_high"])
    assert verdict == "reproduced" and p < 0.05
    better = [66.9, 67.0, 66.7, 66.6, 67.2]
    ci = result_stats.welch_ci(better, base)
    verdict, p = claims.par_verdict("agf_m", "vanilla", better, base, ci["ci_low"], ci["ci_high"])
    assert verdict.startswith("not on par: `agf_m` better (p") and p > 0.05
    wide = [65.0, 67.0, 66.5, 65.2, 66.8]
    ci = result_stats.welch_ci(wide, base)
    assert claims.par_verdict("agf", "vanilla", wide, base, ci["ci_low"], ci["ci_high"])[0] == "inconclusive"


def test_the_committed_claims_say_magnitude_equivalence_holm_and_both_seed_sizes():
    """The committed claims.json (written by the report from the 50 runs)."""
    result = json.loads((COMMITTED / "claims.json").read_text())
    got = {c["key"]: c for c in result["claims"]}
    assert got["agf_m_par"]["verdict"].startswith("not on par: `agf_m` better (p=0.007")
    assert got["agf_m_pcmv_vanilla"]["magnitude"] == "larger than the paper's"
    assert got["sco_pe_vanilla"]["magnitude"] == "larger than the paper's"
    assert got["alibi_mul_pcmv"]["magnitude"] == "larger than the paper's"
    exp = got["pcmv_exp_alibi"]
    assert exp["verdict"] == "inconclusive" and exp["seeds_needed"] > 1000 and exp["seeds_needed_observed"] <= 10
    assert all(c["p_holm"] >= c["p"] for c in result["claims"] if c["p"] is not None)
    text = (COMMITTED / "REPORT.md").read_text()
    assert "| TOST " in text and "larger than the paper's" in text and "(difference)" in text


# ---- learning speed -------------------------------------------------------------------------------

def _speed_runs(no_pe_lead, pe_lead):
    base = [20, 32, 44, 52, 56, 59, 61, 63, 64, 65, 65.5, 65.7]
    runs = {"vanilla": [], "agf_m_pcmv": [], "alibi_bl": [], "agf_m_sco_pe": []}
    for seed in (1, 2, 3):
        jitter = 0.1 * (seed - 2)
        runs["vanilla"].append(_run("vanilla", seed, [v + jitter for v in base], pe=True))
        for row in ("agf_m_pcmv", "alibi_bl"):
            runs[row].append(_run(row, seed, [v + jitter + (no_pe_lead if e < 3 else 0.3) for e, v in enumerate(base)]))
        runs["agf_m_sco_pe"].append(_run("agf_m_sco_pe", seed,
                                         [v + jitter + (pe_lead if e < 3 else 1.0) for e, v in enumerate(base)], pe=True))
    return runs


@pytest.mark.parametrize("no_pe,pe,expected", [
    (6.0, 0.0, "no absolute PE learns faster early"),
    (6.0, 1.5, "mostly the missing absolute PE"),
    (3.0, 3.0, "a decaying bias learns faster early"),
    (0.0, 0.0, "no early lead"),
])
def test_learning_speed_verdict_separates_the_decaying_bias_from_the_missing_pe(no_pe, pe, expected):
    runs = _speed_runs(no_pe, pe)
    result = learning_speed.learning_speed(runs, learning_speed.rows_pe([r for rs in runs.values() for r in rs]))
    assert result["points"] == [1, 2, 3, 6, 12]
    assert result["verdict"].startswith(expected), result["verdict"]
    text = "\n".join(learning_speed.to_markdown(result, {}))
    assert f"**Verdict: {expected}" in text


def test_learning_speed_area_is_the_mean_height_of_the_curve():
    assert learning_speed._area({1: 10.0, 2: 20.0, 3: 30.0}, 3) == pytest.approx(20.0)
    assert learning_speed._area({1: 10.0, 3: 30.0}, 3) is None  # a missing epoch: no area


# ---- the learning-curve fit window ----------------------------------------------------------------

def test_the_curve_claim_uses_the_fig5_row_and_names_a_window_dependence():
    # warm-up then a saturating tail: exponential wins on every epoch, the power law after warm-up
    curve = [21.9, 34.6, 46.5, 54.5, 58.6, 61.9, 63.6, 64.9, 65.8, 66.4, 66.8, 67.1]
    summary = {"steps": 2076, "epochs": 12}
    runs = {"agf_m_sco_pcmv_pe": [_run("agf_m_sco_pcmv_pe", s, [v + 0.05 * s for v in curve], **summary)
                                  for s in (1, 2)],
            "vanilla": [_run("vanilla", s, [v + 1 for v in curve], **summary) for s in (1, 2)]}
    for rs in runs.values():
        for r in rs:
            r.config["trainer"] = {"warmup_steps": 600}
    cv = claims.curve_claim(runs)
    assert cv["row"] == "agf_m_sco_pcmv_pe" and cv["fig5_row"]  # not the best row (vanilla is higher)
    assert cv["warmup_epochs"] == 4 and cv["after_warmup"]["epochs"] == list(range(4, 13))
    whole = claims.curve_verdict(cv["fits"]["power"]["aic"], cv["fits"]["exponential"]["aic"])
    late = cv["after_warmup"]["verdict"]
    if whole != late:
        assert cv["verdict"].startswith("depends on the fit window")
    else:
        assert cv["verdict"] == whole
    text = "\n".join(claims._curve_section(cv))
    assert "the paper's Fig. 5 row" in text and "After the warm-up (it ends within epoch 4" in text


# ---- decay per family and P/S ---------------------------------------------------------------------

def test_decay_verdict_per_family_counts_decided_profiles():
    v = claims._decay_verdict({"power": 110, "exponential": 32, "neither": 216, "degenerate": 0})
    assert v["verdict"] == "neither" and v["decided"] == "power law" and v["decided_p"] < 1e-6
    assert claims._decay_verdict({"power": 5, "exponential": 4, "neither": 0, "degenerate": 0})["decided"] == \
        "no preference"


def test_p_and_s_are_na_where_they_cannot_vary_and_never_printed_as_constant_data():
    mk = lambda t, P, S: heads.HeadScores(f"m.{t}", t, 0, 0, P, S, 0.2, 0.1, 10)  # noqa: E731
    scores = [mk("enc", 0.3, 0.5), mk("dec", 0.2, 0.6), mk("cross", 0.0, 1.0)]
    text = heads.to_markdown(scores, pe=False, positional=("enc", "dec"))
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| m.")]
    assert [r[2:4] for r in rows] == [["0.300", "0.500"], ["0.200", "0.600"], ["n/a", "n/a"]]
    assert "n/a in the modules without a positional term (the mode applies to enc, dec)" in text
    # vanilla: no module has a positional term, the PE is content
    vanilla = heads.to_markdown(scores, pe=True, positional=())
    assert all(line.split(" | ")[2:4] == ["n/a", "n/a"] for line in vanilla.splitlines() if line.startswith("| m."))
    assert "the model's only position is the absolute PE" in vanilla and "read η_pos" not in vanilla
    # a relative mode with PE (AGF-M + SCO + PE) keeps its relative term: P and S are data there
    with_pe = heads.to_markdown(scores, pe=True, positional=("enc", "dec"))
    assert [line.split(" | ")[2] for line in with_pe.splitlines() if line.startswith("| m.")] == ["0.300", "0.200", "n/a"]
    # a mode applied to cross-attention too: its P and S are data
    assert "n/a" not in heads.to_markdown(scores, pe=False, positional=("enc", "dec", "cross"))


def test_no_committed_heads_table_prints_a_constant_p_or_s_column():
    text = (COMMITTED / "REPORT.md").read_text()
    for table in text.split("Positional vs symbolic heads")[1:]:
        rows = [line.split(" | ") for line in table.split("\n\n")[1].splitlines()[2:]]
        for col in (2, 3):
            values = [r[col] for r in rows if r[col] != "n/a"]
            assert len(set(values)) != 1 or len(values) < 3, f"a constant column printed as data: {values[:3]}"


# ---- machine-independent output ------------------------------------------------------------------

def test_decay_tables_and_files_do_not_change_when_the_arithmetic_does():
    """Another machine sums in another order: perturb every stored attention profile by a relative
    1e-12 (a thousand times a sum's last-bit differences) and refit: the Markdown and the stored
    fits are the same, degenerate fits print no parameters."""
    source = COMMITTED / "table4/small/agf_m/seed1/analysis/decay.json"
    data = json.loads(source.read_text())
    profiles = decay.profiles_from_json(data["profiles"])
    fits = decay.fit_profiles(profiles)
    rng = np.random.default_rng(0)
    for p in profiles:
        p.weight_sum = p.weight_sum * (1 + 1e-12 * rng.standard_normal(p.weight_sum.shape))
    fits2 = decay.fit_profiles(profiles)
    assert decay.to_markdown(fits) == decay.to_markdown(fits2)
    assert decay.stable_dicts(fits) == decay.stable_dicts(fits2)
    assert any(f.power["degenerate"] for f in fits)
    degenerate_rows = [line for line in decay.to_markdown(fits).splitlines() if "degenerate (a parameter" in line]
    assert degenerate_rows and all("r=" not in line for line in degenerate_rows)


def test_the_committed_decay_files_hold_the_reports_fits():
    for path in sorted(COMMITTED.glob("table4/small/*/seed*/analysis/decay.json")):
        data = json.loads(path.read_text())
        fits = decay.fit_profiles(decay.profiles_from_json(data["profiles"]))
        assert data["fits"] == decay.stable_dicts(fits), path
        break  # one file: each takes seconds; the report rewrites them all from the same code


# ---- provenance ------------------------------------------------------------------------------------

def test_provenance_lists_checkpoints_commits_signatures_and_odd_first_losses():
    runs = [_run("vanilla", s, [20, 30, 40], pe=True, git_commit=f"c{s % 2}", epochs=3,
                 best={"epoch": 3.0 if s != 2 else 2.0},
                 decoding={"test/beam": {"bleu_signature": "B", "chrf_signature": "C"}}) for s in (1, 2, 3)]
    runs[0].metrics[0]["train_loss"] = 6.5
    runs[2].summary["resumed_at"] = [{"step": 10, "epoch": 0, "batch_in_epoch": 10}]
    p = provenance.provenance(runs)
    text = "\n".join(provenance.to_markdown(p))
    assert p["commits"] == [("c1", 2), ("c0", 1)]
    assert "`vanilla` seed 2 (best epoch 2 of 3)" in text
    assert "BLEU `B`, chrF `C` (3 runs)" in text
    assert "`vanilla` seed 1 (6.50; val acc 20.00)" in text
    assert "`vanilla` seed 3 at step 10 (epoch 1, batch 10)" in text


def test_report_regeneration_is_byte_identical(tmp_path):
    """The committed REPORT.md and everything it writes come back byte-identical from the committed
    run files (the command of results/multi30k-small/README.md)."""
    if not (COMMITTED / "REPORT.md").is_file():
        pytest.skip("no committed results")
    copy = tmp_path / "r"
    shutil.copytree(COMMITTED, copy)
    from agf_exp import report

    assert report.main(["--all", "--runs", str(copy), "--experiment", "small", "--seeds", "1,2,3,4,5",
                        "--out", str(copy / "REPORT.md")]) == 0
    # (the JSON files name the run dirs by the path they were read from: here the copy's)
    for name in ("REPORT.md", "table2.csv", "table4.csv", "table5.csv", "table6.csv", "curves/learning_speed.png",
                 "curves/table4.png"):
        assert (copy / name).read_bytes() == (COMMITTED / name).read_bytes(), name
