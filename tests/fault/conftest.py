"""Shared helpers of the fault suite: a finished tiny run to damage (the pre-refactor fixture of
tests/test_compat.py: a 1+1-layer AGF-M + PCM-V smoke run, 1.5 MB), a checkpoint that would run
code when unpickled, and byte-level snapshots to prove that a refused start changed nothing."""
from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from ..conftest import make_cfg

FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "run_e10b6b0"
OVERRIDES = ["experiment=smoke", "pos=agf_m", "pcmv=true", "model.d_model=32", "model.d_ff=64", "model.n_heads=2",
             "model.enc_layers=1", "model.dec_layers=1", "trainer.num_threads=1", "trainer.decode_splits=[valid]",
             "trainer.decode_strategies=[greedy]", "trainer.max_decode_sentences=10"]


def cfg_for(run: Path, *extra: str):
    return make_cfg(*OVERRIDES, f"data.subword_file={run / 'subwords.model'}", *extra)


@pytest.fixture
def old_run(tmp_path):
    """A copy of the finished fixture run (its last.pt is format 1: numpy's RNG state as an ndarray)."""
    run = tmp_path / "run"
    shutil.copytree(FIXTURE, run)
    return run


class Payload:
    """Unpickled, it writes ``marker``: what an attacker's checkpoint would do (run any code)."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('the payload ran')",))


def poison(path: Path, marker: Path) -> None:
    """Add one key whose unpickling runs code to the (trusted, our own) checkpoint at ``path``."""
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    ckpt["extra"] = Payload(marker)
    torch.save(ckpt, path)


def snapshot(root: Path) -> dict:
    """sha256 of every file below ``root`` except the run lock (which a start may create)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != ".lock"}
