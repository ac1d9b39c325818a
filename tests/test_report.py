"""The report's statistics and tables, on hand-made inputs (the sweeps' end-to-end test is
tests/test_sweeps.py)."""
from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import sacrebleu

from agf_exp import report
from agf_exp.results import ReportError
from agf_exp.results.format import round_floats, to_json, to_markdown
from agf_exp.results.runs import Run, collect_wandb, row_of, row_signatures
from agf_exp.results.stats import bleu_from_statistics, bleu_statistics, mean_ci, paired_bootstrap
from agf_exp.results.tabulate import report_table


def corpus(n=60, seed=0):
    rng = random.Random(seed)
    words = "ein mann eine frau zwei hunde spielen im park auf der straße mit einem ball und lachen".split()
    refs = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 12))) for _ in range(n)]
    return rng, words, refs


def perturb(rng, words, refs, p):
    return [" ".join(w if rng.random() > p else rng.choice(words) for w in r.split()[: max(1, len(r.split()) - 1)])
            for r in refs]


@pytest.mark.parametrize("p", [0.0, 0.3, 0.7, 1.0])
def test_bleu_from_statistics_equals_sacrebleu(p):
    rng, words, refs = corpus()
    hyps = perturb(rng, words, refs, p)
    hyps[0] = ""  # an empty translation
    stats = bleu_statistics(hyps, refs)
    assert stats.shape == (60, 10)
    expected = sacrebleu.BLEU().corpus_score(hyps, [refs]).score
    assert bleu_from_statistics(stats.sum(0)) == pytest.approx(expected, abs=1e-9)
    # subsets too (what the bootstrap evaluates)
    idx = np.arange(0, 60, 3)
    sub = sacrebleu.BLEU().corpus_score([hyps[i] for i in idx], [[refs[i] for i in idx]]).score
    assert bleu_from_statistics(stats[idx].sum(0)) == pytest.approx(sub, abs=1e-9)


def test_paired_bootstrap_separates_a_better_system_and_not_identical_ones():
    rng, words, refs = corpus(200)
    good = [bleu_statistics(perturb(random.Random(s), words, refs, 0.1), refs) for s in (1, 2)]
    bad = [bleu_statistics(perturb(random.Random(s), words, refs, 0.6), refs) for s in (3, 4)]
    better = paired_bootstrap(good, bad, n_samples=300)
    assert better["diff"] > 10 and better["ci_low"] > 0 and better["p"] < 0.01
    same = paired_bootstrap(good, good, n_samples=300)
    assert same["diff"] == 0 and same["p"] == 1.0
    with pytest.raises(ReportError, match="same test sentences"):
        paired_bootstrap(good, [bad[0][:10]])


@pytest.mark.parametrize("system", ["agf", "agf_m_pcmv"])
def test_one_run_a_side_also_gives_sacrebleus_own_paired_bs_p(system):
    """With one seed a side the bootstrap also reports sacreBLEU's paired-bs p, and it is the p that
    sacreBLEU's own PairedTest prints for the same two translation files (same resamples, its test
    statistic); ours, the shifted-null two-sided test, differs (the issue's 0.324 vs 0.117)."""
    from sacrebleu.metrics import BLEU
    from sacrebleu.significance import PairedTest

    root = Path(__file__).resolve().parent.parent / "results" / "multi30k-small" / "table4" / "small"
    lines = lambda row, name: (root / row / "seed1" / "hyps" / f"test.{name}.txt").read_text().split("\n")[:-1]
    refs = lines("vanilla", "ref")
    ours = paired_bootstrap([bleu_statistics(lines(system, "beam"), refs)], [bleu_statistics(lines("vanilla", "beam"), refs)])
    test = PairedTest([("baseline", lines("vanilla", "beam")), (system, lines(system, "beam"))],
                      {"BLEU": BLEU(references=[refs])}, references=None, test_type="bs", n_samples=1000)
    _, scores = test()
    assert ours["p_sacrebleu"] == pytest.approx(scores["BLEU"][1].p_value, abs=1e-9)
    assert abs(ours["p"] - ours["p_sacrebleu"]) > 0.02  # two different tests
    two_seeds = paired_bootstrap([bleu_statistics(lines(system, "beam"), refs)] * 2,
                                 [bleu_statistics(lines("vanilla", "beam"), refs)])
    assert "p_sacrebleu" not in two_seeds  # several seeds a side: sacreBLEU's test does not apply


def test_mean_ci_uses_student_t():
    stat = mean_ci([1.0, 2.0, 3.0])
    assert stat["mean"] == 2.0 and stat["std"] == pytest.approx(1.0) and stat["n"] == 3
    half = 4.302652729911275 / np.sqrt(3)  # t(0.975, 2)
    assert (stat["ci_low"], stat["ci_high"]) == pytest.approx((2 - half, 2 + half))
    one = mean_ci([5.0])
    assert one["mean"] == 5.0 and one["std"] is None and one["ci_low"] is None
    assert mean_ci([])["n"] == 0


def test_table3_is_computed_by_the_attention_code():
    result = report_table("table3", [])
    first, second = result["example"]
    assert first["score"] == pytest.approx(10) and second["score"] == pytest.approx(10)
    assert first["softmax"] == pytest.approx(0.5) and second["softmax"] == pytest.approx(0.5)
    assert result["output"] == pytest.approx(0.5 * 100 + 0.5 * 20)
    assert result["output_pcmv"] == pytest.approx(0.5 * 0.1 * 100 + 0.5 * 0.5 * 20)
    assert "| 100 | 0.1 |" in to_markdown(result)


def test_runs_without_a_row_value_are_matched_by_their_toggles():
    sig = row_signatures()
    assert row_of({"pos": {"name": "agf_m"}, "pcmv": True, "sco": False, "pe": False}, sig) == "agf_m_pcmv"
    assert row_of({"pos": {"name": "none"}, "pcmv": False, "sco": False, "pe": True}, sig) == "vanilla"
    assert row_of({"pos": {"name": "rope"}, "pcmv": False, "sco": False, "pe": False}, sig) is None


def test_several_experiments_need_a_choice(tmp_path):
    def fake(exp, seed):
        return Run(f"{exp}/{seed}", {"row": "vanilla", "seed": seed, "experiment": exp},
                          {"status": "complete", "final": {"val_acc": 50.0}, "decoding": {}}, [], "vanilla")
    runs = [fake("smoke", 1), fake("small", 1)]
    with pytest.raises(ReportError, match="--experiment"):
        report_table("table2", runs)
    result = report_table("table2", runs, experiment="small")
    assert result["rows"][0]["runs"] == ["small/1"]
    assert "agf: no finished run" in result["missing"]


def test_seeds_every_row_should_have_are_listed_as_missing(capsys):
    def fake(row, seed):
        return Run(f"{row}/{seed}", {"row": row, "seed": seed, "experiment": "small"},
                          {"status": "complete", "final": {"val_acc": 50.0}, "decoding": {}}, [], row)
    runs = [fake("vanilla", 1), fake("vanilla", 2), fake("agf", 1)]
    assert report_table("table2", runs)["missing"] == ["agf seed 2", "agf_m: no finished run"]
    result = report_table("table2", runs, seeds=[1, 2, 3])
    assert result["missing"] == ["vanilla seed 3", "agf seed 2", "agf seed 3", "agf_m: no finished run"]
    assert "Missing: `vanilla seed 3`, `agf seed 2`" in to_markdown(result)
    with pytest.raises(SystemExit):
        report.main(["table2", "--seeds", "1,two"])
    assert "'1,two' is not a comma-separated list of integer seeds" in capsys.readouterr().err


def test_table1_hides_the_data_folder_and_counts_mixed_hardware():
    def fake(row, seed, threads):
        config = {"row": row, "seed": seed, "experiment": "small", "data": {"root": "/home/me/multi30k"},
                  "model": {"name": "small", "d_model": 256, "n_heads": 4, "d_ff": 1024, "norm": "pre",
                            "enc_layers": 3, "dec_layers": 3}, "trainer": {"precision": "auto"}}
        summary = {"status": "complete", "final": {"val_acc": 50.0}, "decoding": {}, "device": "cpu",
                   "cpu_threads": threads, "platform": "Linux", "train_pairs": 29000,
                   "data": "multi30k task1 en-de (/home/me/multi30k)"}
        return Run(f"{row}/{seed}", config, summary, [], row)

    runs = [fake("vanilla", 1, 2), fake("vanilla", 2, 1), fake("agf", 1, 1)]
    ours = {i["item"]: i["ours"] for i in report_table("table1", runs)["setup"]}
    assert ours["Dataset"] == ("multi30k task1 en-de (data.root) (29000 training pairs; subwords: validation "
                               "tokens not recorded)")
    assert ours["Hardware"] == "cpu, 1 CPU thread; Linux (2 runs); cpu, 2 CPU threads; Linux (1 run)"
    assert ("Runs: 2 vanilla (architecture, precision, training duration); 3 finished in all (subwords, hardware)."
            in to_markdown(report_table("table1", runs)))
    ours = {i["item"]: i["ours"] for i in report_table("table1", runs[:1])["setup"]}
    assert ours["Hardware"] == "cpu, 2 CPU threads; Linux"


def test_runs_with_different_subword_models_are_flagged(tmp_path):
    def fake(row, seed, val_tokens, spm_version):
        summary = {"status": "complete", "final": {"val_acc": 60.0, "val_tokens": val_tokens}, "decoding": {},
                   "tokenizer": {"sha256": spm_version * 16, "sentencepiece": spm_version}}
        config = {"row": row, "seed": seed, "experiment": "small", "data": {"root": None}, "trainer": {"precision": "fp32"},
                  "model": {"name": "small", "d_model": 256, "n_heads": 4, "d_ff": 1024, "norm": "pre",
                            "enc_layers": 3, "dec_layers": 3}}
        return Run(f"{row}/{seed}", config, summary, [], row)

    same = [fake("vanilla", 1, 17177, "0.2.3"), fake("agf", 1, 17177, "0.2.3")]
    assert report_table("table2", same)["warnings"] == []
    mixed = same + [fake("vanilla", 2, 16350, "0.2.1")]
    result = report_table("table2", mixed)
    assert len(result["warnings"]) == 1
    assert ("17177 validation target tokens (sentencepiece 0.2.3 model 0.2.30.2.30.): 2 runs; 16350 validation "
            "target tokens (sentencepiece 0.2.1 model 0.2.10.2.10.): 1 run") in result["warnings"][0]
    assert "**Caution:** These runs use 2 different subword segmentations" in to_markdown(result)
    ours = {i["item"]: i["ours"] for i in report_table("table1", mixed)["setup"]}
    assert "subwords: 17177 validation target tokens (sentencepiece 0.2.3 model 0.2.30.2.30.), 2 runs; 16350" in ours["Dataset"]


def test_unknown_table_and_missing_runs_dir_are_clear_errors(tmp_path, capsys):
    assert report.main(["table9"]) == 2
    assert "unknown table 'table9'" in capsys.readouterr().err
    assert report.main(["table2", "--runs", str(tmp_path / "nowhere")]) == 2
    assert "is not a directory" in capsys.readouterr().err


def test_collect_wandb_selects_runs_by_what_they_are_and_reads_only_what_it_needs(tmp_path):
    """The W&B source, against a stand-in for wandb.Api with the files the W&B logger attaches:
    runs are chosen by experiment (a W&B filter) and row (a hand-started run's mode and toggles
    count, whatever group it was launched under), and of a chosen run only the summary, the
    metrics and the scored decoding's translations are downloaded."""
    _, _, refs = corpus(20)
    summary = {"status": "complete", "final": {"val_acc": 61.0}, "decoding": {"test/greedy": {"bleu": 100.0}}}
    files = {"summary.json": json.dumps(summary), "hyps/test.greedy.txt": "\n".join(refs) + "\n",
             "hyps/test.ref.txt": "\n".join(refs) + "\n", "hyps/valid.greedy.txt": "x\n",
             "config.yaml": "row: vanilla\n", "metrics.jsonl": json.dumps({"epoch_fraction": 1.0, "val_acc": 61.0})}
    downloaded = []

    class File:
        def __init__(self, name):
            self.name = name

        def download(self, root, replace):
            downloaded.append(self.name)
            target = Path(root) / self.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(files[self.name])

    def wandb_run(run_id, group, job_type="train", **config):
        run = SimpleNamespace(id=run_id, group=group, job_type=job_type, state="finished",
                              files=lambda: [File(n) for n in files], config={**config, "_wandb": {}})
        run.file = File
        return run

    class Api:
        def runs(self, path, filters):
            assert path == "team/agf-exp" and filters == {"config.experiment": "small"}
            return [wandb_run("a", "table4", row="vanilla", seed=1, experiment="small"),  # launched under table 4
                    wandb_run("b", None, row=None, pos={"name": "agf_m"}, pcmv=False, sco=False, pe=False,
                              seed=1, experiment="small"),  # hand-started: row from mode and toggles
                    wandb_run("c", "x", row="agf_m_pcmv", seed=1, experiment="small"),  # not a table-2 row
                    wandb_run("d", "report/x", job_type="report", runs_dir="x")]

    runs = collect_wandb("team/agf-exp", ["vanilla", "agf", "agf_m"], "small", api=Api(), download_dir=tmp_path / "dl")
    assert [r.row for r in runs] == ["vanilla", "agf_m"]
    run = runs[0]
    assert run.complete and run.experiment == "small" and run.seed == 1
    assert run.files["test.greedy"] == refs and run.metrics[0]["val_acc"] == 61.0
    assert report_table("table2", [run])["rows"][0]["val_acc"]["mean"] == 61.0
    # only what the report reads, of the two chosen runs
    assert sorted(downloaded) == sorted(["summary.json", "metrics.jsonl", "hyps/test.greedy.txt", "hyps/test.ref.txt"] * 2)


def test_all_tables_into_a_folder_that_does_not_exist_yet(tmp_path):
    out = report.write_all([], tmp_path / "new" / "report" / "REPORT.md", None, n_bootstrap=10)
    assert out.is_file() and (out.parent / "table3.json").is_file()
    assert "Table 3" in out.read_text()


def test_written_floats_are_rounded_so_regenerated_files_match():
    """Last-bit differences (numpy's vectorised sums differ between machines) do not reach the files."""
    a = {"rows": [{"ci_low": -1.748290782217184, "n": 3, "label": "x"}], "p": 0.001998001998001998}
    b = {"rows": [{"ci_low": -1.7482907822171843, "n": 3, "label": "x"}], "p": 0.001998001998001998}
    assert to_json(a) == to_json(b)
    assert json.loads(to_json(a)) == {"rows": [{"ci_low": -1.74829, "n": 3, "label": "x"}], "p": 0.001998}
    assert round_floats([float("nan"), 1e-300, 2.5, True, None])[1:] == [1e-300, 2.5, True, None]
