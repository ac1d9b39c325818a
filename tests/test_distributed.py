"""Data-parallel training: ``torchrun --nproc_per_node=2`` on CPU (gloo) matches one process on
the same global batch, and only rank 0 writes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agf_exp import checkpoint
from agf_exp.data import make_batches, prepare_data
from agf_exp.rundir import train

from .conftest import make_cfg

ROOT = Path(__file__).resolve().parent.parent
BASE = ["experiment=smoke", "model.dropout=0", "model.attn_dropout=0", "trainer.decode_splits=[]",
        "trainer.max_epochs=1", "trainer.num_threads=1", "trainer.progress=false"]


def _odd_epoch_size():
    """A training-set size whose epoch has an odd number of batches, so that in the last update
    of the epoch rank 1 has no batch of its own (the zero-weighted pass is exercised)."""
    for size in range(240, 480, 16):
        cfg = make_cfg(*BASE, f"data.train_size={size}")
        n = len(make_batches(prepare_data(cfg.data, cfg.seed).examples["train"], cfg.trainer.batch_tokens,
                             shuffle=True, seed=cfg.seed, epoch=0))
        if n % 2 == 1 and n >= 5:
            return size, n
    pytest.fail("no training-set size with an odd number of batches found")


def test_two_cpu_ranks_match_one_process_on_the_same_global_batch(tmp_path):
    size, n_batches = _odd_epoch_size()
    overrides = [*BASE, f"data.train_size={size}"]
    single = train(make_cfg(*overrides, "trainer.accum_steps=2"), tmp_path / "single")

    ddp_dir = tmp_path / "ddp"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(ROOT / "run.py"), *overrides, "trainer.accum_steps=1", f"hydra.run.dir={ddp_dir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    ddp = json.loads((ddp_dir / "summary.json").read_text())
    assert ddp["world_size"] == 2 and single["world_size"] == 1
    assert ddp["steps"] == single["steps"] == (n_batches + 1) // 2  # one update per two batches
    a = checkpoint.load(tmp_path / "single/checkpoints/last.pt")["model"]
    b = checkpoint.load(ddp_dir / "checkpoints/last.pt")["model"]
    worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
    assert worst < 2e-4, f"DDP weights differ from single-process ones by up to {worst}"
    assert ddp["final"]["val_loss"] == pytest.approx(single["final"]["val_loss"], rel=1e-4)
    # rank 0 alone wrote: one evaluation line, one checkpoint set
    assert len((ddp_dir / "metrics.jsonl").read_text().splitlines()) == 1
    assert sorted(p.name for p in (ddp_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


def test_process_group_timeouts_come_from_the_trainer_config(monkeypatch):
    """The training loop's collectives and the long waits for rank 0 have explicit timeouts
    (NCCL's default watchdog is 10 minutes, shorter than a beam-search decode of WMT's test set)."""
    from datetime import timedelta

    import torch.distributed as torch_dist

    from agf_exp import distributed, rundir

    calls = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch_dist, "is_initialized", lambda: False)
    monkeypatch.setattr(torch_dist, "init_process_group", lambda **kw: calls.__setitem__("init", kw))
    monkeypatch.setattr(torch_dist, "new_group", lambda **kw: calls.__setitem__("wait", kw) or "wait-group")
    dist = distributed.init("cpu", timeout_minutes=7, wait_minutes=90)
    assert calls["init"] == {"backend": "gloo", "timeout": timedelta(minutes=7)}
    assert calls["wait"] == {"backend": "gloo", "timeout": timedelta(minutes=90)}
    assert (dist.rank, dist.world, dist.local_rank, dist.wait_group) == (1, 2, 1, "wait-group")

    seen = []
    monkeypatch.setattr(rundir, "init_distributed", lambda *args: seen.append(args) or distributed.Dist())
    monkeypatch.setattr(rundir, "_locked_train", lambda cfg, run_dir, dist, on_start: {})
    rundir.train(make_cfg(*BASE, "trainer.dist_timeout_minutes=12", "trainer.dist_wait_minutes=240"), "unused")
    assert seen == [("auto", 12.0, 240.0)]


def test_a_rank_stops_with_another_ranks_preemption(tmp_path, monkeypatch):
    """Ranks agree on a pending preemption signal after every update (an all-reduce of the flag),
    so all stop after the same update; a rank that got no signal itself stops too."""
    from agf_exp.preemption import Preempted
    from agf_exp.training import Trainer

    trainer = Trainer(make_cfg(*BASE), tmp_path)
    flags = []

    def any_rank(flag, device):  # the all-reduce, where another rank was signalled at step 3
        flags.append(flag)
        return flag or trainer.state.step >= 3

    monkeypatch.setattr(trainer.dist, "any", any_rank)
    with pytest.raises(Preempted, match="another rank was stopped"):
        trainer.fit()
    assert checkpoint.load(tmp_path / "checkpoints/last.pt")["state"]["step"] == 3
    assert flags == [False, False, False]
