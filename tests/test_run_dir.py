"""Run-dir integrity, as a user meets it through ``python run.py``: one process per run dir, refused
and failed starts that touch nothing, resumes that reproduce every logged number, and one clear
line (exit 2, no traceback) for every bad input. Real subprocesses throughout."""
from __future__ import annotations

import fcntl
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agf_exp import checkpoint
from agf_exp.atomic import atomic_write_bytes

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ["experiment=smoke", "trainer.max_epochs=1", "trainer.decode_splits=[valid]",
         "trainer.decode_strategies=[greedy]", "trainer.max_decode_sentences=10", "trainer.num_threads=1"]
# fields of metrics.jsonl that measure the machine (wall clock, throughput), not the run
CLOCK = {"tokens_per_s", "train_seconds", "val_seconds"}


def env():
    e = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    e["OMP_NUM_THREADS"] = "1"
    return e


def run_py(*overrides, timeout=300, module=None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", module] if module else [sys.executable, str(ROOT / "run.py")]
    return subprocess.run([*cmd, *overrides], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)


def start_py(*overrides) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(ROOT / "run.py"), *overrides], cwd=ROOT, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def tree(path: Path) -> dict:
    """Every file below ``path`` (hidden ones included) with the SHA-256 of its bytes."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def wait_for_step(run_dir: Path, proc: subprocess.Popen, step: int, limit: float = 240.0) -> int:
    """Poll last.pt (written atomically) until it holds at least ``step`` updates."""
    deadline = time.time() + limit
    while time.time() < deadline:
        assert proc.poll() is None, proc.communicate()
        last = run_dir / "checkpoints" / "last.pt"
        if last.is_file():
            got = checkpoint.load(last)["state"]["step"]
            if got >= step:
                return got
        time.sleep(0.2)
    pytest.fail(f"last.pt never reached step {step}")


def metrics(run_dir: Path) -> list:
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if k not in CLOCK} for line in lines]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("finished") / "run"
    proc = run_py(*SMOKE, f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run


# ---- 1. one process per run dir ----------------------------------------------------------------


def test_a_second_process_is_refused_at_once_and_a_killed_holder_is_taken_over(tmp_path):
    run = tmp_path / "run"
    long_run = [*SMOKE, "trainer.max_epochs=50", "trainer.save_every_steps=5", f"hydra.run.dir={run}"]
    first = start_py(*long_run)
    try:
        wait_for_step(run, first, 5)
        before = {name: digest for name, digest in tree(run).items() if name.startswith(".hydra")}
        second = run_py(*long_run)
        assert second.returncode == 2, second.stderr
        lines = [x for x in second.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and "Traceback" not in second.stderr + second.stdout
        assert f"{run} is in use by another process (pid {first.pid} on " in lines[0] and " since " in lines[0]
        assert {n: d for n, d in tree(run).items() if n.startswith(".hydra")} == before
        assert "resumed from" not in (run / "run.log").read_text()
    finally:
        first.kill()  # kill -9: the kernel drops the lock with the process
        first.communicate()
    third = run_py(*SMOKE, "trainer.save_every_steps=5", f"hydra.run.dir={run}")
    assert third.returncode == 0, third.stderr[-3000:]
    assert "resumed from" in (run / "run.log").read_text()
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"


def test_a_sweep_reports_a_held_run_dir_and_runs_its_other_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    held = sweep / "job0"
    held.mkdir(parents=True)
    with open(held / ".lock", "w") as lock:  # another live process (this one) holds job 0's run dir
        fcntl.lockf(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        lock.write("pid 1 on elsewhere since then\n")
        lock.flush()
        proc = run_py("-m", *SMOKE, "trainer.decode_splits=[]", "seed=1,2", f"hydra.sweep.dir={sweep}",
                      "hydra.sweep.subdir=job${hydra.job.num}")
    assert proc.returncode == 3, proc.stderr[-3000:]  # the sweep says it did not run every job
    assert "RunDirLocked" in proc.stderr and "pid 1 on elsewhere" in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("RunDirLocked: 1 job(s) of this sweep were refused")
    assert not (held / "summary.json").exists() and not (held / ".hydra").exists()
    assert json.loads((sweep / "job1" / "summary.json").read_text())["status"] == "complete"


def test_a_factorial_sweep_skips_its_invalid_cell_and_runs_the_others(tmp_path):
    """`-m pos=none,agf pcmv=true`: pos=none has no PCM-V, so that cell is refused with its one
    line and skipped; the agf cell trains; the sweep ends naming the skipped cell, exit 2."""
    sweep = tmp_path / "sweep"
    proc = run_py("-m", *SMOKE, "trainer.decode_splits=[]", "pos=none,agf", "pcmv=true", f"hydra.sweep.dir={sweep}",
                  "hydra.sweep.subdir=job${hydra.job.num}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert any(line.startswith("ConfigError: pcmv=true is not defined for pos=none") for line in lines)
    assert lines[-1].startswith("ConfigError: 1 job(s) of this sweep were skipped, their configs refused")
    assert "job0" in lines[-1] and "Traceback" not in proc.stderr
    assert not (sweep / "job0").exists()
    assert json.loads((sweep / "job1" / "summary.json").read_text())["status"] == "complete"
    assert not (sweep / ".skipped-jobs").exists()


# ---- 2. a refused or failed start touches nothing ----------------------------------------------


def test_a_refused_rerun_leaves_every_file_of_the_finished_run_unchanged(finished_run):
    before = tree(finished_run)
    proc = run_py(*SMOKE, "trainer.lr=0.003", f"hydra.run.dir={finished_run}")
    assert proc.returncode == 2
    assert "holds a finished run of a different config (trainer.lr: 0.002 -> 0.003)" in proc.stderr
    assert tree(finished_run) == before
    # the same config again: recognised as complete, nothing written
    proc = run_py(*SMOKE, f"hydra.run.dir={finished_run}")
    assert proc.returncode == 0 and tree(finished_run) == before


def test_a_failed_start_into_a_fresh_dir_leaves_nothing(tmp_path):
    run = tmp_path / "fresh" / "run"
    proc = run_py("experiment=smoke", "data=files", f"data.train_src={tmp_path}/no.en", f"data.train_tgt={tmp_path}/no.de",
                  f"data.valid_src={tmp_path}/no.en", f"data.valid_tgt={tmp_path}/no.de",
                  f"data.test_src={tmp_path}/no.en", f"data.test_tgt={tmp_path}/no.de", f"hydra.run.dir={run}")
    assert proc.returncode == 2 and proc.stderr.startswith("DataError: ")
    assert not run.exists()


# ---- 3. resume reproduces every logged number ---------------------------------------------------


RESUMABLE = [*SMOKE, "trainer.save_every_steps=4", "trainer.eval_every_steps=11", "trainer.decode_splits=[]"]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("straight") / "run"
    assert run_py(*RESUMABLE, f"hydra.run.dir={run}").returncode == 0
    return run


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_killed_and_resumed_run_logs_what_the_uninterrupted_one_does(tmp_path, straight_run, how):
    cut = tmp_path / "cut"
    proc = start_py(*RESUMABLE, f"hydra.run.dir={cut}")
    step = wait_for_step(cut, proc, 14)  # past the mid-epoch evaluation at step 11, inside its window
    proc.send_signal(how)
    out, err = proc.communicate(timeout=120)
    if how == signal.SIGTERM:
        assert "stopped by SIGTERM after saving last.pt" in err
    resumed = run_py(*RESUMABLE, f"hydra.run.dir={cut}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert step < 30 and "resumed from" in (cut / "run.log").read_text()
    assert len(metrics(cut)) == 3  # steps 11 and 22, and the epoch's end
    assert metrics(cut) == metrics(straight_run)  # train_loss included
    assert f"run dir: {cut}" in resumed.stdout and "python -m agf_exp.evaluate ckpt=" in resumed.stdout


# ---- 4. one line for every bad input -----------------------------------------------------------


BAD_RUNS = {
    "negative lr": (["trainer.lr=-1"], r"trainer\.lr=-1\.0 must be a finite number > 0"),
    "heads do not divide d_model": (["model.d_model=250", "model.n_heads=4"],
                                    r"model\.d_model=250 is not divisible by model\.n_heads=4.*model\.d_model=248"),
    "files without paths": (["data=files"], r"data\.test_src, .* must be set: pass data\.test_src="),
    "flex with small heads": (["model.attn_backend=flex", "model.attn_dropout=0", "pos=agf", "model.n_heads=16"],
                              r"heads of at least 16 channels.*model\.attn_backend=auto"),
    "sdpa cannot multiply": (["model.attn_backend=sdpa", "pos=agf"], r"use model\.attn_backend=auto"),
    "pcmv without coefficient": (["pcmv=true", "pos=none"], r"pcmv=true is not defined for pos=none"),
    "unknown decoding": (["trainer.decode_strategies=[topk]"], r"use greedy and/or beam"),
    "table without runs": (["+table=table3"], r"python -m agf_exp\.report table3"),
}


def one_line(proc: subprocess.CompletedProcess, pattern: str) -> None:
    import re

    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, proc.stderr
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("name", list(BAD_RUNS))
def test_bad_input_is_one_line_exit_2_and_changes_no_run(name, finished_run):
    overrides, pattern = BAD_RUNS[name]
    before = tree(finished_run)
    one_line(run_py("experiment=smoke", *overrides, f"hydra.run.dir={finished_run}"), pattern)
    assert tree(finished_run) == before


def test_run_dirs_that_cannot_be_created_are_one_line(tmp_path):
    (tmp_path / "a_file").write_text("")
    one_line(run_py("experiment=smoke", f"hydra.run.dir={tmp_path}/a_file/run"), r"a_file is a file; choose another")
    one_line(run_py("experiment=smoke", "hydra.run.dir=/proc/agf-exp-run"), r"cannot create the run dir /proc/")


def test_bad_checkpoints_for_evaluate_are_one_line(tmp_path, finished_run):
    one_line(run_py("ckpt=/missing.pt", module="agf_exp.evaluate"), r"ckpt=/missing\.pt does not exist")
    cut = tmp_path / "cut.pt"
    cut.write_bytes((finished_run / "checkpoints" / "best.pt").read_bytes()[:5000])
    one_line(run_py(f"ckpt={cut}", "split=test", module="agf_exp.evaluate"),
             r"cut\.pt is not a readable checkpoint \(5000 bytes, not a complete torch zip file: truncated")


def test_smoke_combines_with_another_data_source():
    from .conftest import make_cfg

    cfg = make_cfg("experiment=smoke", "data=multi30k")
    assert cfg.data.name == "multi30k" and cfg.experiment == "smoke" and cfg.model.name == "tiny"
    assert make_cfg("experiment=smoke").data.train_size == 2000


# ---- 5. friendly output ------------------------------------------------------------------------


def test_result_files_honour_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "x.json", b"{}")
        assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "y.json", b"{}")
        assert (tmp_path / "y.json").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_sacrebleu_period_warning_is_replaced_by_one_note(caplog):
    import logging

    from agf_exp import evaluation

    hyps = [f"das ist satz {i} ." for i in range(120)]
    evaluation._noted_periods = False
    with caplog.at_level(logging.INFO):
        for _ in range(3):
            scores = evaluation.score_translations(hyps, hyps)
    assert scores["bleu"] == pytest.approx(100.0)
    assert not [r for r in caplog.records if "tokenized period" in r.getMessage()]
    assert len([r for r in caplog.records if "as their references do" in r.getMessage()]) == 1
    caplog.clear()  # references without the spaced period: sacreBLEU's own warning stays
    evaluation.score_translations(hyps, [h[:-2] + "." for h in hyps])
    assert [r for r in caplog.records if "tokenized period" in r.getMessage()]
