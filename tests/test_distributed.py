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
from agf_exp.training import train

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
