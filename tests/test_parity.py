"""The precision-parity rule of docs/precision.md (agf_exp.results.parity) on made-up runs."""
from __future__ import annotations

from agf_exp import report
from agf_exp.results.parity import precision_parity, to_markdown
from agf_exp.results.runs import Run


def fake(row, seed, acc, bleu, autocast=None):
    summary = {"status": "complete", "final": {"val_acc": acc}, "decoding": {"test/beam": {"bleu": bleu}},
               "autocast": str(autocast), "train_tokens_per_s": 1000.0}
    if autocast:
        summary["precision"] = {"autocast": autocast}
    return Run(f"{row}/{seed}", {"row": row, "seed": seed}, summary, [], row)


FP32 = [fake(row, s, 65 + d, 36 + d) for row in ("vanilla", "agf_m_pcmv")
        for s, d in zip(range(1, 6), (-0.1, 0.05, 0.0, 0.1, -0.05))]


def test_close_runs_with_enough_seeds_show_parity():
    bf16 = [fake(row, s, 65 + d, 36 + d, "bfloat16") for row in ("vanilla", "agf_m_pcmv")
            for s, d in zip(range(1, 4), (0.02, -0.08, 0.1))]
    result = precision_parity(bf16, FP32)
    assert result["parity"] and result["failures"] == []
    text = to_markdown(result)
    assert "**Verdict: parity shown.**" in text and "new precision bfloat16 seeds 1, 2, 3; baseline fp32" in text
    vanilla = result["rows"][0]["metrics"]["val_acc"]
    assert vanilla["paired"]["n"] == 3 and vanilla["seeds"] is not None


def test_a_shifted_row_misses_by_how_much_and_too_few_seeds_is_not_decided():
    bf16 = [fake("vanilla", s, 66.5 + d, 36 + d, "bfloat16") for s, d in zip(range(1, 4), (0.02, -0.08, 0.1))]
    bf16 += [fake("agf_m_pcmv", s, 65, 36, "bfloat16") for s in (1, 2)]
    result = precision_parity(bf16, FP32)
    assert not result["parity"]
    assert any(f.startswith("vanilla final validation accuracy: interval [+1.") and "leaves ±0.5 by 1." in f
               for f in result["failures"])
    assert "agf_m_pcmv test BLEU (beam): 2 seed(s) in the new precision, 3 needed" in result["failures"]
    assert "not decided" in to_markdown(result)


def test_a_spread_baseline_says_that_no_number_of_seeds_can_pass():
    wide = [fake("vanilla", s, 65 + d, 36 + 3 * d) for s, d in zip(range(1, 6), (-0.5, 0.4, 0.0, 0.6, -0.5))]
    result = precision_parity([], wide, rows=("vanilla",))
    bleu = result["rows"][0]["metrics"]["bleu"]
    assert bleu["floor"] > 0.5 and bleu["seeds"] is None
    assert "never (the fp32 side alone is wider)" in to_markdown(result)


def test_report_cli_writes_the_parity_table_and_refuses_a_missing_folder_in_one_line(tmp_path, capsys):
    import json
    for name, autocast in (("fp32", None), ("bf16", "bfloat16")):
        for seed in (1, 2, 3):
            run = tmp_path / name / f"vanilla{seed}"
            run.mkdir(parents=True)
            (run / "config.yaml").write_text(f"row: vanilla\nseed: {seed}\nexperiment: small\n")
            summary = {"status": "complete", "final": {"val_acc": 65.0 + seed / 10}, "decoding": {},
                       "autocast": str(autocast), "precision": {"autocast": autocast}}
            (run / "summary.json").write_text(json.dumps(summary))
    out = tmp_path / "PARITY.md"
    assert report.main(["--parity", str(tmp_path / "fp32"), "--runs", str(tmp_path / "bf16"), "--out", str(out)]) == 0
    text = out.read_text()
    assert "| vanilla | final validation accuracy | 65.20 ± 0.10 (3) | 65.20 ± 0.10 (3) | +0.00" in text
    assert "new precision bfloat16 seeds 1, 2, 3; baseline fp32 seeds 1, 2, 3" in text
    assert report.main(["--parity", str(tmp_path / "fp32"), "--runs", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert "is not a directory" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
