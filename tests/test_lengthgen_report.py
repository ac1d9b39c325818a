"""The length study's report (agf_exp.results.lengthgen): exact match per range, the two-level
bootstrap, Holm, and the verdict rules of docs/lengthgen.md on made-up outcomes."""
from __future__ import annotations

import numpy as np
import pytest

from agf_exp import report
from agf_exp.results import lengthgen as lg
from agf_exp.results.runs import Run

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


def test_report_cli_reads_the_committed_study_runs(tmp_path, capsys):
    from pathlib import Path

    committed = Path(__file__).resolve().parent.parent / "results/lengthgen/synthetic"
    out = tmp_path / "REPORT.md"
    assert report.main(["lengthgen", "--runs", str(committed), "--out", str(out), "--bootstrap", "100"]) == 0
    text = out.read_text()
    assert "## copy (training maximum 16;" in text and "| `sinusoidal` | 1 | 100.0 (1/1) | 6.5 (0/1) | 0.0 (0/1) |" in text
    assert (tmp_path / "lengthgen_copy.png").is_file() and (tmp_path / "lengthgen.json").is_file()
    assert report.main(["lengthgen", "--runs", str(tmp_path)]) == 2
    assert "no finished run of the length study" in capsys.readouterr().err
