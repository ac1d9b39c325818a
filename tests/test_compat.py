"""Run dirs written before the layer refactor (commit e10b6b0) still work: the finished run is
recognised as complete, its checkpoint scores exactly what the run logged, and it resumes.

``fixtures/run_e10b6b0`` is a finished ``experiment=smoke`` run of a 1+1-layer AGF-M + PCM-V model
trained by that commit (config, summary, metrics, translations and both checkpoints; 1.5 MB),
with the subword model it used."""
import json
import shutil
from pathlib import Path

import pytest

from agf_exp import evaluate
from agf_exp.rundir import completed_summary, train

from .conftest import make_cfg

FIXTURE = Path(__file__).parent / "fixtures" / "run_e10b6b0"
OVERRIDES = ["experiment=smoke", "pos=agf_m", "pcmv=true", "model.d_model=32", "model.d_ff=64", "model.n_heads=2",
             "model.enc_layers=1", "model.dec_layers=1", "trainer.num_threads=1", "trainer.decode_splits=[valid]",
             "trainer.decode_strategies=[greedy]", "trainer.max_decode_sentences=10"]


@pytest.fixture
def old_run(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    return run


def cfg_for(run: Path, *extra: str):
    return make_cfg(*OVERRIDES, f"data.subword_file={run / 'subwords.model'}", *extra)


def test_a_finished_pre_refactor_run_is_complete(old_run):
    summary = completed_summary(cfg_for(old_run, "trainer.max_epochs=1"), old_run)
    assert summary is not None and summary["git_commit"].startswith("e10b6b0")
    before = {p: p.read_bytes() for p in old_run.rglob("*") if p.is_file()}
    assert train(cfg_for(old_run, "trainer.max_epochs=1"), old_run) == summary  # skipped, nothing rewritten
    assert {p: p.read_bytes() for p in old_run.rglob("*") if p.is_file() and p.name != ".lock"} == \
        {p: b for p, b in before.items()}


def test_a_pre_refactor_checkpoint_scores_what_its_run_logged(old_run, capsys):
    summary = json.loads((old_run / "summary.json").read_text())
    assert evaluate.main([f"ckpt={old_run}/checkpoints/best.pt", "split=valid", "strategy=greedy",
                          "max_sentences=10"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["bleu"] == summary["decoding"]["valid/greedy"]["bleu"]
    hyps = Path(result["output"]).read_text()
    assert hyps == (old_run / "hyps" / "valid.greedy.txt").read_text()


def test_a_pre_refactor_run_extends_from_its_last_checkpoint(old_run):
    first = (old_run / "metrics.jsonl").read_text().splitlines()
    summary = train(cfg_for(old_run, "trainer.max_epochs=2"), old_run)
    assert summary["status"] == "complete" and summary["epochs"] == 2
    lines = (old_run / "metrics.jsonl").read_text().splitlines()
    assert lines[:1] == first and len(lines) == 2
