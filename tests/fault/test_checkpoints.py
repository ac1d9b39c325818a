"""Checkpoints from someone else, and damaged checkpoints (issue 43, parts 1, 2 and 5).

| case | before | now |
|---|---|---|
| a pickle payload in last.pt / best.pt, on each of the 7 loader routes | the payload ran, exit 0 | refused before unpickling, the global named, exit 2 |
| last.pt truncated / zero-filled / garbled, on resume | CheckpointError in a Hydra traceback, exit 1 | one line naming the file and what to do, exit 2 |
| 4 KiB of noise inside a tensor of last.pt | loaded silently, trained on it | CRC-32 failure named, exit 2 |
| the NaN message when last.pt is corrupt | called it "the last good state" | says it cannot be resumed from either |
| disk full / file-size limit while writing a checkpoint | RuntimeError traceback "unexpected pos" | one line: why, MiB free, MiB needed, previous file unchanged |
| a format-1 last.pt (numpy RNG as an ndarray) | loaded by full unpickling | loads weights-only with numpy's three array globals, resumes |
"""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from agf_exp import analyze, checkpoint, evaluate, plot_fields
from agf_exp.rundir import completed_summary, train
from agf_exp.training import Trainer

from .conftest import OVERRIDES, cfg_for, poison, snapshot

ROOT = Path(__file__).resolve().parents[2]
REFUSED = r"is not a checkpoint written by agf-exp: it holds builtins\.exec"


def one_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


# ---- a checkpoint that would run code, on every route that reads one -------------------------


@pytest.mark.parametrize("tool,argv", [
    (evaluate.main, ["split=valid", "strategy=greedy", "max_sentences=5"]),
    (plot_fields.main, []),
    (analyze.main, ["decay", "max_sentences=5"]),
    (analyze.main, ["heads", "max_sentences=5", "n_perms=2"]),
    (analyze.main, ["lengths", "max_sentences=5", "strategy=greedy"]),
], ids=["evaluate", "plot_fields", "analyze-decay", "analyze-heads", "analyze-lengths"])
def test_tools_refuse_a_checkpoint_that_runs_code(old_run, tmp_path, capsys, tool, argv):
    marker = tmp_path / "pwned"
    ckpt = old_run / "checkpoints" / "best.pt"
    poison(ckpt, marker)
    before = snapshot(old_run)
    argv = list(argv)
    if tool is analyze.main:
        argv.insert(1, f"ckpt={ckpt}")
    else:
        argv.insert(0, f"ckpt={ckpt}")
    assert tool(argv) == 2
    assert not marker.exists(), "the checkpoint's code ran"
    line = one_line(capsys.readouterr().err)
    assert "best.pt is not a checkpoint written by agf-exp: it holds builtins.exec" in line
    assert snapshot(old_run) == before


def test_resume_refuses_a_last_pt_that_runs_code(old_run, tmp_path):
    marker = tmp_path / "pwned"
    poison(old_run / "checkpoints" / "last.pt", marker)
    before = snapshot(old_run)
    with pytest.raises(checkpoint.CheckpointError, match=REFUSED):
        train(cfg_for(old_run, "trainer.max_epochs=2"), old_run)  # an extension resumes from last.pt
    assert not marker.exists()
    assert snapshot(old_run) == before


def test_final_decoding_of_a_resumed_run_refuses_a_best_pt_that_runs_code(old_run, tmp_path):
    marker = tmp_path / "pwned"
    (old_run / "summary.json").unlink()  # interrupted after training: the rerun only decodes, from best.pt
    poison(old_run / "checkpoints" / "best.pt", marker)
    with pytest.raises(checkpoint.CheckpointError, match=REFUSED):
        train(cfg_for(old_run, "trainer.max_epochs=1"), old_run)
    assert not marker.exists()


def test_a_skipped_finished_run_does_not_unpickle_its_last_pt(old_run, tmp_path):
    """A finished run without the subword model's hash in its summary is checked against last.pt's
    model: that read must not run the file's code either."""
    import json

    marker = tmp_path / "pwned"
    summary = json.loads((old_run / "summary.json").read_text())
    del summary["tokenizer"]
    (old_run / "summary.json").write_text(json.dumps(summary))
    poison(old_run / "checkpoints" / "last.pt", marker)
    with pytest.raises(checkpoint.CheckpointError, match=REFUSED):
        completed_summary(cfg_for(old_run, "trainer.max_epochs=1"), old_run)
    assert not marker.exists()


def test_run_py_refuses_it_in_one_line_exit_2(old_run, tmp_path):
    marker = tmp_path / "pwned"
    poison(old_run / "checkpoints" / "last.pt", marker)
    before = snapshot(old_run)
    proc = subprocess.run([sys.executable, "run.py", *OVERRIDES, "trainer.max_epochs=2",
                           f"data.subword_file={old_run / 'subwords.model'}", f"hydra.run.dir={old_run}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    assert not marker.exists()
    line = one_line(proc.stderr)
    assert line.startswith("CheckpointError: ") and "last.pt is not a checkpoint written by agf-exp" in line
    assert snapshot(old_run) == before


def test_what_agf_exp_writes_loads_weights_only(old_run, tmp_path):
    """A new last.pt holds nothing torch's weights-only unpickler refuses: no global at all."""
    summary = train(cfg_for(old_run, "trainer.max_epochs=2"), old_run)
    assert summary["epochs"] == 2
    for name in ("last.pt", "best.pt"):
        path = old_run / "checkpoints" / name
        assert torch.serialization.get_unsafe_globals_in_checkpoint(str(path)) == []
        ckpt = torch.load(path, weights_only=True)
        assert ckpt["format"] == checkpoint.FORMAT and ckpt["format_version"] == checkpoint.FORMAT_VERSION
    assert isinstance(ckpt["rng"]["numpy"]["keys"], torch.Tensor) if "rng" in ckpt else True
    last = torch.load(old_run / "checkpoints" / "last.pt", weights_only=True)
    assert last["rng"]["numpy"]["keys"].dtype == torch.int64 and len(last["metrics"]) == 2


def test_a_foreign_file_without_weights_is_refused(tmp_path):
    path = tmp_path / "model.pt"
    torch.save({"encoder.weight": torch.ones(2)}, path)  # a bare state_dict from elsewhere
    with pytest.raises(checkpoint.CheckpointError, match="holds no model weights and config"):
        checkpoint.load(path)
    torch.save({"model": {"w": torch.ones(1)}, "config": {"data": {"root": "${oc.env:HOME}"}}}, path)
    with pytest.raises(checkpoint.CheckpointError, match=r"interpolation .* at data\.root"):
        checkpoint.load(path)


# ---- damaged checkpoints ----------------------------------------------------------------------


def _noise_in_a_tensor(path: Path) -> None:
    """4 KiB of noise in the middle of the largest tensor record (the zip stays well-formed)."""
    with zipfile.ZipFile(path) as archive:
        info = max((i for i in archive.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    # the record's bytes start after its local header (30 bytes + name + extra field)
    name_len = int.from_bytes(data[info.header_offset + 26: info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28: info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 4
    size = min(4096, info.file_size // 2)
    data[start: start + size] = os.urandom(size)
    path.write_bytes(bytes(data))


DAMAGE = {
    "truncated": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "zero-filled": lambda p: p.write_bytes(bytes(p.stat().st_size)),
    "empty": lambda p: p.write_bytes(b""),
    "garbled": lambda p: p.write_bytes(os.urandom(p.stat().st_size)),
    "noise-in-a-tensor": _noise_in_a_tensor,
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_last_pt_is_refused_on_resume_and_nothing_changes(old_run, damage):
    last = old_run / "checkpoints" / "last.pt"
    DAMAGE[damage](last)
    before = snapshot(old_run)
    with pytest.raises(checkpoint.CheckpointError) as info:
        train(cfg_for(old_run, "trainer.max_epochs=2"), old_run)
    message = str(info.value)
    assert str(last) in message and "\n" not in message
    assert "move it away to train this run from the start" in message and "best.pt holds the best" in message
    if damage == "noise-in-a-tensor":
        assert "fails its CRC-32 check" in message
    assert snapshot(old_run) == before


def test_the_nan_message_does_not_call_a_corrupt_last_pt_good(old_run):
    trainer = Trainer(cfg_for(old_run, "trainer.max_epochs=1"), old_run)
    assert "holds the last good state (step 30)" in trainer._last_good_state()
    DAMAGE["noise-in-a-tensor"](old_run / "checkpoints" / "last.pt")
    text = trainer._last_good_state()
    assert "cannot be resumed from either" in text and "CRC-32" in text and "good state" not in text


def test_a_best_pt_copied_over_last_pt_is_one_line(old_run):
    (old_run / "checkpoints" / "last.pt").write_bytes((old_run / "checkpoints" / "best.pt").read_bytes())
    with pytest.raises(checkpoint.CheckpointError, match="cannot be resumed: it lacks the training state"):
        train(cfg_for(old_run, "trainer.max_epochs=2"), old_run)


# ---- disk full --------------------------------------------------------------------------------

_FULL = """
import resource, signal, sys, torch
from agf_exp import checkpoint
path = sys.argv[1]
checkpoint.save_atomic({"model": {"w": torch.ones(10)}, "config": {}}, path)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # past the limit a write fails with EFBIG instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (65536, 65536))
try:
    checkpoint.save_atomic({"model": {"w": torch.ones(2**18)}, "config": {}}, path)
except checkpoint.CheckpointError as e:
    print(e)
"""


def test_a_full_disk_is_one_line_with_the_space_needed(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    proc = subprocess.run([sys.executable, "-c", _FULL, str(path)], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)
    line = one_line(proc.stdout + proc.stderr)
    assert "cannot write" in line and "file-size limit" in line and "needs about 1.0 MiB" in line
    assert "the previous last.pt is unchanged" in line and "run the same command again to resume" in line
    assert torch.equal(checkpoint.load(path)["model"]["w"], torch.ones(10))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]  # no temporary file left


def test_disk_full_during_training_is_one_line_in_the_console_and_in_run_log(old_run, tmp_path):
    """A real training run under a file-size limit too small for its checkpoint (run.py)."""
    run = tmp_path / "fresh"
    limit = "import resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); " \
            "resource.setrlimit(resource.RLIMIT_FSIZE, (200000, 200000)); "
    runner = limit + "import runpy, sys; sys.argv = ['run.py'] + sys.argv[1:]; runpy.run_path('run.py', run_name='__main__')"
    proc = subprocess.run([sys.executable, "-c", runner, *OVERRIDES, "trainer.max_epochs=1",
                           f"data.subword_file={old_run / 'subwords.model'}", f"hydra.run.dir={run}"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    line = one_line("\n".join(l for l in proc.stderr.splitlines() if not l.startswith("[")))
    assert line.startswith("CheckpointError: cannot write") and "file-size limit" in line and "needs about" in line
    assert "cannot write" in (run / "run.log").read_text()
