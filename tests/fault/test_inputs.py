"""Bad input fails at once, in one line, with nothing on disk; every result on disk is the one its
config asked for (issue 44, parts 2-5).

Each row of ``BAD`` is a start that must be refused before the first update: the exception type,
the one line it says (a regex), and that the run dir was never created. Before this suite,
``model.dropout=1.5``, ``pos=agf_m pos.max_distance=0``, ``data.train_size=0``, ``data.valid_size=0``
and ``data.vocab_size=5`` were tracebacks after the data was loaded; a sentence longer than
``model.max_positions``, ``trainer.best_metric=bogus`` and ``trainer.lr=inf`` failed only after
training had started (an epoch is ~1.5 h at ``small``); ``run_name=../../x`` wrote outside
outputs/; ``trainer.max_epochs=0`` wrote a "complete" run with ``-Infinity`` in summary.json.

| case | before | now |
|---|---|---|
| extending a finished run, interrupted, rerun | "complete; skipping" (the old 2-epoch summary beside a longer last.pt) | the old summary is marked superseded before config.yaml changes; the rerun resumes the extension |
| summary.json's steps differ from last.pt's | read as complete | the run is finished from last.pt |
| two runs started in one second | the same default run dir, the second refused | the default run dir has the seed and a per-process token |
| a sweep whose jobs were refused (run dirs held elsewhere) | exit 0 | one line counting them, exit 3 |
| `python -m agf_exp.evaluate ... beam_size=0` | IndexError traceback | one line, exit 2 |
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from agf_exp import evaluate
from agf_exp.config import ConfigError
from agf_exp.data import DataError
from agf_exp.preemption import Preempted
from agf_exp.results.runs import load_run, row_signatures
from agf_exp.rundir import completed_summary, train, write_json
from agf_exp.runlock import RunDirLock
from agf_exp.training import Trainer

from .conftest import cfg_for, make_cfg

ROOT = Path(__file__).resolve().parents[2]
SMOKE = ["experiment=smoke", "trainer.decode_splits=[valid]", "trainer.decode_strategies=[greedy]",
         "trainer.max_decode_sentences=5"]

BAD = [  # (overrides, exception, the line)
    (["model.dropout=1.5"], ConfigError, r"model\.dropout=1\.5 must be in \[0, 1\)"),
    (["model.attn_dropout=-0.1"], ConfigError, r"model\.attn_dropout=-0\.1 must be in \[0, 1\)"),
    (["pos=agf_m", "pos.max_distance=0"], ConfigError, r"pos=agf_m .* cannot be built: pos\.max_distance must be >= 1"),
    (["data.train_size=0"], ConfigError, r"data\.train_size=0 must be >= 1"),
    (["data.valid_size=0"], ConfigError, r"data\.valid_size=0 must be >= 1"),
    (["data.test_size=0"], ConfigError, r"data\.test_size=0 must be >= 1"),
    (["data.vocab_size=5"], ConfigError, r"data\.vocab_size=5 is too small"),
    (["data.vocab_size=20"], DataError, r"data\.vocab_size=20 does not fit this data: sentencepiece says .*required_chars"),
    (["model.max_positions=8"], ConfigError, r"the train split needs \d+ positions .* model\.max_positions=8"),
    (["data.max_len=12", "model.max_positions=16"], ConfigError,
     r"the (valid|test|long) split needs \d+ positions .* raise model\.max_positions to at least \d+"),
    (["trainer.best_metric=bogus"], ConfigError, r"trainer\.best_metric='bogus' is not a metric .* use one of val_acc"),
    (["trainer.lr=inf"], ConfigError, r"trainer\.lr=inf must be a finite number > 0"),
    (["trainer.lr=nan"], ConfigError, r"trainer\.lr=nan must be a finite number > 0"),
    (["trainer.lr=0"], ConfigError, r"trainer\.lr=0\.0 must be a finite number > 0"),
    (["trainer.max_epochs=0"], ConfigError, r"this budget trains nothing"),
    (["trainer.max_steps=0"], ConfigError, r"this budget trains nothing"),
    (["trainer.max_minutes=0"], ConfigError, r"trainer\.max_minutes=0\.0 must be > 0"),
    (["trainer.warmup_steps=-1"], ConfigError, r"trainer\.warmup_steps=-1 must be a finite number >= 0"),
    (["trainer.clip_grad_norm=inf"], ConfigError, r"trainer\.clip_grad_norm=inf must be a finite number >= 0"),
    (["trainer.label_smoothing=1.0"], ConfigError, r"trainer\.label_smoothing=1\.0 must be in \[0, 1\)"),
    (["trainer.adam_betas=[0.9]"], ConfigError, r"trainer\.adam_betas=\[0\.9\] must be two numbers"),
    (["trainer.accum_steps=0"], ConfigError, r"trainer\.accum_steps and trainer\.batch_tokens must be >= 1"),
    (["trainer.beam_size=0"], ConfigError, r"trainer\.beam_size=0 must be a finite number > 0"),
    (["trainer.max_len_b=0"], ConfigError, r"trainer\.max_len_a=1\.2, max_len_b=0: the length limit"),
    (["trainer.decode_splits=[bogus]"], ConfigError, r"trainer\.decode_splits has 'bogus'"),
    (["trainer.decode_strategies=[sample]"], ConfigError, r"trainer\.decode_strategies has 'sample'"),
    (["model.d_model=30", "model.n_heads=4"], ConfigError, r"model\.d_model=30 is not divisible by model\.n_heads=4"),
    (["pcmv=true"], ConfigError, r"pcmv"),
    (["run_name=../../../../x"], ConfigError, r"run_name='\.\./\.\./\.\./\.\./x' is not a folder name"),
    (["run_name=a/b"], ConfigError, r"run_name='a/b' is not a folder name"),
    (["data=files", "data.train_src=/nonexistent.en", "data.train_tgt=/nonexistent.de",
      "data.valid_src=/nonexistent.en", "data.valid_tgt=/nonexistent.de", "data.test_src=/nonexistent.en",
      "data.test_tgt=/nonexistent.de"], DataError, r"data file /nonexistent\.en does not exist"),
]


@pytest.mark.parametrize("overrides,error,line", BAD, ids=[" ".join(o) for o, _, _ in BAD])
def test_a_bad_input_is_refused_before_training_in_one_line(tmp_path, overrides, error, line):
    run = tmp_path / "run"
    with pytest.raises(error, match=line) as info:
        train(make_cfg(*SMOKE, *overrides), run)
    assert "\n" not in str(info.value)
    assert not run.exists()  # nothing written, no empty dir left


@pytest.mark.parametrize("overrides,line", [
    (["model.dropout=1.5"], "ConfigError: model.dropout=1.5 must be in [0, 1)"),
    (["run_name=../../../x"], "ConfigError: run_name='../../../x' is not a folder name"),
    (["trainer.max_epochs=0"], "ConfigError: trainer.max_epochs=0, trainer.max_steps=None: this budget trains nothing"),
])
def test_run_py_says_it_in_one_line_and_creates_nothing(tmp_path, overrides, line):
    proc = subprocess.run([sys.executable, str(ROOT / "run.py"), *SMOKE, *overrides], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith(line) and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert list(tmp_path.iterdir()) == []  # not even outputs/


def test_evaluate_checks_its_options_first(tmp_path, capsys):
    ckpt = Path(__file__).resolve().parent.parent / "fixtures" / "run_e10b6b0" / "checkpoints" / "best.pt"
    for argv, line in ([["beam_size=0"], "error: beam_size=0 must be >= 1"],
                       [["max_sentences=0"], "error: max_sentences=0 must be >= 1"],
                       [["strategy=greedy", "max_len_b=0"], "error: max_len_a=1.2, max_len_b=0"]):
        assert evaluate.main([f"ckpt={ckpt}", "split=valid", f"output={tmp_path / 'h.txt'}", *argv]) == 2
        err = capsys.readouterr().err
        assert err.startswith(line) and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "h.txt").exists()


# ---- results on disk are the ones their config asked for -------------------------------------


def test_an_interrupted_extension_resumes_instead_of_counting_as_done(old_run, monkeypatch):
    """The exact sequence: a finished 1-epoch run (30 steps) is extended to 3 epochs and stopped
    by SIGTERM at step 41; the rerun must resume it, not report the 1-epoch summary as done."""
    original = Trainer._update

    def update(self, examples, group):
        if self.state.step == 40:
            signal.raise_signal(signal.SIGTERM)
        return original(self, examples, group)

    monkeypatch.setattr(Trainer, "_update", update)
    with pytest.raises(Preempted, match="after saving last.pt at step 41"):
        train(cfg_for(old_run, "trainer.max_epochs=3"), old_run)
    monkeypatch.setattr(Trainer, "_update", original)
    summary = json.loads((old_run / "summary.json").read_text())
    assert summary["status"] == "superseded" and summary["previous"]["steps"] == 30
    assert summary["new_budget"]["trainer.max_epochs"] == 3
    assert not load_run(old_run, row_signatures()).complete  # the report does not read it as a result
    assert completed_summary(cfg_for(old_run, "trainer.max_epochs=3"), old_run) is None
    done = train(cfg_for(old_run, "trainer.max_epochs=3"), old_run)
    assert done["status"] == "complete" and done["epochs"] == 3 and done["steps"] == 90


def test_complete_means_the_summary_is_of_last_pt(old_run):
    summary_path = old_run / "summary.json"
    summary = json.loads(summary_path.read_text())
    assert completed_summary(cfg_for(old_run, "trainer.max_epochs=1"), old_run) == summary
    summary["steps"] = 12
    summary_path.write_text(json.dumps(summary))
    assert completed_summary(cfg_for(old_run, "trainer.max_epochs=1"), old_run) is None


def test_summary_files_are_strict_json(tmp_path):
    write_json(tmp_path / "s.json", {"best": {"value": float("-inf")}, "x": [float("nan"), 1.5]})
    text = (tmp_path / "s.json").read_text()
    assert "Infinity" not in text and "NaN" not in text
    assert json.loads(text) == {"best": {"value": None}, "x": [None, 1.5]}


def test_two_default_run_dirs_of_one_second_differ():
    script = ("import agf_exp.config as c; from hydra import compose, initialize_config_dir; "
              "initialize_config_dir(config_dir=str(c.CONF_DIR), version_base='1.3'); "
              "cfg = compose('config', return_hydra_config=True); "
              "from omegaconf import OmegaConf; print(cfg.hydra.run.dir.split('_', 2)[-1])")
    dirs = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                           timeout=120).stdout.strip() for _ in range(2)}
    assert len(dirs) == 2 and all(d.startswith("vanilla_seed1_") for d in dirs), dirs


def test_a_sweep_with_refused_jobs_says_so_and_exits_non_zero(tmp_path):
    sweep = tmp_path / "sweep"
    lock = RunDirLock(sweep / "job0")  # another process holds job 0's run dir
    lock.acquire()
    try:
        proc = subprocess.run([sys.executable, str(ROOT / "run.py"), "-m", *SMOKE, "trainer.max_steps=2",
                               "seed=1,2", f"hydra.sweep.dir={sweep}", "hydra.sweep.subdir=job${hydra.job.num}"], cwd=tmp_path, capture_output=True,
                              text=True, timeout=300)
    finally:
        lock.release(started=False)
    assert proc.returncode == 3, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("RunDirLocked: 1 job(s) of this sweep were refused and not run") and "job0" in last
    assert json.loads((sweep / "job1" / "summary.json").read_text())["status"] == "complete"  # the rest ran
    assert not (sweep / ".refused-jobs").exists()
