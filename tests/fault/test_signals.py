"""Real signals to a real ``run.py`` process (issue 44, part 1): Ctrl-C (SIGINT), SIGTERM and
SIGUSR2 (same guard) in data loading, in the middle of an update (after its forward pass drew its dropout masks,
before the optimizer step) and in the final decoding. The child is paused at that point by a
wrapper that prints a marker and sleeps; the parent then sends the signal with ``os.kill``. The
run stops with one line and exit 128 + the signal; run again, it finishes with exactly the
numbers of an uninterrupted run (weights bit for bit, every evaluation, the decoding).

| case | before | now |
|---|---|---|
| Ctrl-C mid-update, then resume | saved step N's weights with the RNG advanced by update N+1's dropout: every later number differed | the update finishes, then last.pt; the resumed run is the uninterrupted one exactly |
| Ctrl-C in any phase | a 50-line KeyboardInterrupt traceback | one line, exit 130 |
| SIGTERM during data loading | exit 143, no message, a run dir holding only .lock | one line, exit 143, no run dir left |
| Ctrl-C twice | (traceback) | the second stops at once, one line, exit 130 |
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from agf_exp import checkpoint
from agf_exp.rundir import train

from .conftest import FIXTURE, OVERRIDES, make_cfg

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGUSR2"), reason="POSIX signals")

ROOT = Path(__file__).resolve().parents[2]
ARGS = [*OVERRIDES, "trainer.max_epochs=2", f"data.subword_file={FIXTURE / 'subwords.model'}"]
TIMING = {"tokens_per_s", "train_seconds", "val_seconds", "train_loss", "seconds"}

# the child: run.py with one function wrapped to announce the phase and pause there
CHILD = r"""
import runpy, sys, time
phase, calls = sys.argv[1], int(sys.argv[2])
sys.argv = ["run.py"] + sys.argv[3:]
import agf_exp.training as training, agf_exp.rundir as rundir

def pausing(module, name, nth):
    real, seen = getattr(module, name), [0]
    def wrapper(*a, **k):
        seen[0] += 1
        if seen[0] == nth:
            print(f"AGF-TEST paused in {phase}", file=sys.stderr, flush=True)
            time.sleep(2.0)  # the signal arrives here; the handler returns and the sleep goes on
        return real(*a, **k)
    setattr(module, name, wrapper)

if phase == "loading":
    pausing(training, "prepare_data", 1)
elif phase == "training":
    pausing(training, "smoothed_loss", calls)  # after the forward pass of update `calls`
elif phase == "decoding":
    pausing(rundir, "final_decode", 1)
runpy.run_path("run.py", run_name="__main__")
"""


def run_child(run_dir: Path, phase: str, signals, calls: int = 40):
    """Start run.py paused in ``phase``, send ``signals`` there, return (exit code, stderr lines)."""
    log = open(run_dir.parent / f"{run_dir.name}.stdout", "w")
    proc = subprocess.Popen([sys.executable, "-c", CHILD, phase, str(calls), *ARGS, f"hydra.run.dir={run_dir}"],
                            cwd=ROOT, stdout=log, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in proc.stderr:
        lines.append(line.rstrip("\n"))
        if line.startswith("AGF-TEST paused"):
            for i, signum in enumerate(signals):
                if i:
                    time.sleep(0.3)  # two pending instances of one signal would be delivered as one
                os.kill(proc.pid, signum)
            break
    lines += [line.rstrip("\n") for line in proc.stderr]
    code = proc.wait(timeout=300)
    log.close()
    return code, [line for line in lines if line and not line.startswith("AGF-TEST")]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    run = tmp_path_factory.mktemp("straight") / "run"
    train(make_cfg(*ARGS), run)
    return run


def same_numbers(a: Path, b: Path) -> None:
    def metrics(run):
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
                for line in (run / "metrics.jsonl").read_text().splitlines()]

    assert metrics(a) == metrics(b)
    wa, wb = (checkpoint.load(r / "checkpoints" / "last.pt")["model"] for r in (a, b))
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0)
    da, db = (json.loads((r / "summary.json").read_text())["decoding"] for r in (a, b))
    assert {k: {m: v for m, v in s.items() if m not in TIMING} for k, s in da.items()} == \
        {k: {m: v for m, v in s.items() if m not in TIMING} for k, s in db.items()}


# SIGUSR2 (submitit's) takes the same path through the guard; its requeue handler is tested in
# tests/test_preemption.py, and SIGTERM in the final decoding in tests/test_training.py
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_update_saves_after_it_and_the_rerun_is_exact(straight, tmp_path, signum):
    run = tmp_path / "run"
    code, err = run_child(run, "training", [signum], calls=40)  # update 40 of 60, in epoch 2
    assert code == 128 + signum, err
    name = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name
    assert err == [f"stopped by {name} after saving last.pt at step 40; run the same command again to resume"]
    assert "Traceback" not in (tmp_path / "run.stdout").read_text()
    assert checkpoint.load(run / "checkpoints" / "last.pt")["state"]["step"] == 40
    assert f"stopped by {name} after saving last.pt at step 40" in (run / "run.log").read_text()
    train(make_cfg(*ARGS), run)
    same_numbers(straight, run)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_during_data_loading_stops_at_once_and_leaves_no_run_dir(tmp_path, signum):
    run = tmp_path / "run"
    code, err = run_child(run, "loading", [signum])
    assert code == 128 + signum
    name = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else "SIGTERM"
    assert err == [f"stopped by {name} during data loading and set-up; nothing was trained; run the same command again"]
    assert not run.exists()


@pytest.mark.parametrize("signum", [signal.SIGINT], ids=["SIGINT"])
def test_a_signal_during_the_final_decoding_and_the_rerun_decodes(straight, tmp_path, signum):
    run = tmp_path / "run"
    code, err = run_child(run, "decoding", [signum])
    assert code == 128 + signum
    name = "Ctrl-C (SIGINT)" if signum == signal.SIGINT else "SIGTERM"
    assert err == [f"stopped by {name} during the final decoding; last.pt holds the finished training: run the "
                   "same command again to decode"]
    assert not (run / "summary.json").exists()
    train(make_cfg(*ARGS), run)
    same_numbers(straight, run)


def test_ctrl_c_twice_stops_at_once(tmp_path):
    run = tmp_path / "run"
    code, err = run_child(run, "training", [signal.SIGINT, signal.SIGINT], calls=40)
    assert code == 130
    assert err == ["Ctrl-C twice: stopped at once; last.pt keeps its previous save (run the same command again "
                   "to resume from it)"]
    assert checkpoint.load(run / "checkpoints" / "last.pt")["state"]["step"] == 30  # the end of epoch 1
