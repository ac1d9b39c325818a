"""End-to-end training: learning, resume, checkpoints, NaN guard, evaluation CLI, real data."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import agf_exp.training as training
from agf_exp import checkpoint, evaluate
from agf_exp.config import ConfigError
from agf_exp.preemption import Preempted
from agf_exp.rundir import train
from agf_exp.training import Trainer, TrainingError

from .conftest import make_cfg

ROOT = Path(__file__).resolve().parent.parent
FAST = ["experiment=smoke", "trainer.decode_strategies=[greedy]", "trainer.max_decode_sentences=20"]


def read_metrics(run: Path):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """One smoke training of AGF-M + PCM-V on the synthetic task, shared by several tests."""
    run = tmp_path_factory.mktemp("smoke")
    summary = train(make_cfg("experiment=smoke", "pos=agf_m", "pcmv=true"), run)
    return run, summary


def test_smoke_training_learns(smoke_run):
    run, summary = smoke_run
    evals = read_metrics(run)
    assert [e["epoch"] for e in evals] == [1, 2]
    chance = 100.0 / summary["vocab_size"]
    assert evals[-1]["val_acc"] > 20 * chance  # well above chance (~0.6 %)
    assert evals[-1]["val_acc"] > evals[0]["val_acc"] and evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert summary["status"] == "complete"
    assert summary["parameters"]["positional"] > 0
    for key in ("valid/greedy", "valid/beam", "test/greedy", "test/beam"):
        scores = summary["decoding"][key]
        assert scores["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
        assert 0 <= scores["bleu"] <= 100 and scores["chrf"] > 0
    for name in ("config.yaml", "summary.json", "checkpoints/last.pt", "checkpoints/best.pt", "hyps/test.beam.txt"):
        assert (run / name).is_file(), name
    assert len((run / "hyps/test.beam.txt").read_text().splitlines()) == 50
    for key in ("device", "torch", "python", "git_commit", "train_seconds", "wall_seconds"):
        assert key in summary
    tok = summary["tokenizer"]  # names the exact subword model: token-level metrics depend on it
    assert len(tok["sha256"]) == 64 and tok["vocab_size"] == summary["vocab_size"] and tok["sentencepiece"]
    assert summary["final"]["val_tokens"] > 0


def interrupted_run(monkeypatch, cfg, run_dir, step: int) -> None:
    """Train ``cfg`` into ``run_dir`` until a Ctrl-C in the middle of update ``step + 1``: the
    update is finished, then saved (last.pt holds step + 1), and the run stops with exit 130."""
    original = Trainer._update
    # a shell's background job without job control ignores SIGINT, and the trainer (like Python)
    # then leaves it ignored: the test gives itself Python's own handler while it interrupts
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)

    def interrupt(self, examples, group):
        if self.state.step == step:
            signal.raise_signal(signal.SIGINT)  # arrives during this update
        return original(self, examples, group)

    monkeypatch.setattr(Trainer, "_update", interrupt)
    try:
        with pytest.raises(Preempted, match=rf"stopped by Ctrl-C \(SIGINT\) after saving last.pt at step {step + 1}") as e:
            train(cfg, run_dir)
    finally:
        signal.signal(signal.SIGINT, previous)
    assert e.value.code == 130
    monkeypatch.setattr(Trainer, "_update", original)


def test_resume_refuses_another_subword_model_and_names_the_fix(tmp_path, monkeypatch):
    """last.pt's weights belong to its subword model's ids: resuming with another one (another
    sentencepiece version, another vocabulary) stops and writes the checkpoint's model out for
    data.subword_file; resuming with that finishes the run."""
    run, overrides = tmp_path / "r", [*FAST, "trainer.max_epochs=1", "trainer.decode_splits=[valid]"]
    interrupted_run(monkeypatch, make_cfg(*overrides), run, step=5)
    with pytest.raises(ConfigError, match=r"another subword model.*data.subword_file=.*checkpoints/subwords.model"):
        train(make_cfg(*overrides, "data.vocab_size=40"), run)
    model = run / "checkpoints" / "subwords.model"
    assert model.read_bytes() == checkpoint.load(run / "checkpoints/last.pt")["tokenizer"]
    summary = train(make_cfg(*overrides, "data.vocab_size=40", f"data.subword_file={model}"), run)
    assert summary["status"] == "complete" and summary["steps"] > 5


def test_resumed_run_equals_uninterrupted(tmp_path, monkeypatch):
    overrides = [*FAST, "pos=agf", "pcmv=true", "trainer.decode_splits=[valid]"]
    straight = tmp_path / "straight"
    train(make_cfg(*overrides), straight)

    resumed = tmp_path / "resumed"
    interrupted_run(monkeypatch, make_cfg(*overrides), resumed, step=20)
    state = checkpoint.load(resumed / "checkpoints/last.pt")["state"]
    assert state["step"] == 21 and state["epoch"] == 0 and state["batch_in_epoch"] == 21
    train(make_cfg(*overrides), resumed)

    timing = {"tokens_per_s", "train_seconds", "val_seconds", "train_loss"}
    a = [{k: v for k, v in e.items() if k not in timing} for e in read_metrics(straight)]
    b = [{k: v for k, v in e.items() if k not in timing} for e in read_metrics(resumed)]
    assert a == b
    wa = checkpoint.load(straight / "checkpoints/last.pt")["model"]
    wb = checkpoint.load(resumed / "checkpoints/last.pt")["model"]
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0)
    sa = json.loads((straight / "summary.json").read_text())
    sb = json.loads((resumed / "summary.json").read_text())
    assert sa["decoding"]["valid/greedy"]["bleu"] == sb["decoding"]["valid/greedy"]["bleu"]
    # the summary says where the run was resumed (the report's provenance lists it)
    assert sa["resumed_at"] == [] and sb["resumed_at"] == [{"step": 21, "epoch": 0, "batch_in_epoch": 21}]


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    calls = {"n": 0}
    real = training.smoothed_loss

    def poisoned(logits, gold, ls):
        calls["n"] += 1
        loss = real(logits, gold, ls)
        return loss * float("nan") if calls["n"] > 40 else loss  # epoch 2 of 35 batches

    monkeypatch.setattr(training, "smoothed_loss", poisoned)
    with pytest.raises(TrainingError, match=r"training loss is nan at step \d+ .*last\.pt.*trainer\.lr"):
        train(make_cfg(*FAST), tmp_path)
    state = checkpoint.load(tmp_path / "checkpoints/last.pt")["state"]
    assert state["epoch"] == 1  # the good epoch-1 checkpoint is still there and readable


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    checkpoint.save_atomic({"model": {"x": torch.ones(3)}, "config": {}}, path)

    def broken_save(obj, f):
        f.write(b"partial garbage")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(checkpoint.CheckpointError, match="no space left on the device.*the previous ck.pt is unchanged"):
        checkpoint.save_atomic({"model": {"x": torch.zeros(3)}, "config": {}}, path)
    monkeypatch.undo()
    assert torch.equal(checkpoint.load(path)["model"]["x"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck.pt"]


def test_evaluate_cli_on_a_split_and_on_a_file(smoke_run, tmp_path, capsys):
    run, _ = smoke_run
    ckpt = run / "checkpoints/best.pt"
    assert evaluate.main([f"ckpt={ckpt}", "split=test", "strategy=greedy", "max_sentences=30",
                          f"output={tmp_path / 'test.hyp'}"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sentences"] == 30 and "bleu_signature" in result and result["acc"] > 0
    assert len((tmp_path / "test.hyp").read_text().splitlines()) == 30

    src = tmp_path / "in.txt"
    src.write_text("the ka lo .\na mi ne ru .\n")
    assert evaluate.main([f"ckpt={ckpt}", f"input={src}", "strategy=beam", "beam_size=2"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(Path(result["output"]).read_text().splitlines()) == 2
    assert evaluate.main([f"ckpt={ckpt}"]) == 2  # neither split nor input: a clear error
    assert "exactly one of split" in capsys.readouterr().err


def test_cli_run_and_clear_data_error(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ok = subprocess.run([sys.executable, "run.py", *FAST, "trainer.max_epochs=1", f"hydra.run.dir={tmp_path / 'r'}"],
                        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert json.loads((tmp_path / "r/summary.json").read_text())["status"] == "complete"
    bad = subprocess.run([sys.executable, "run.py", "data=multi30k", f"data.root={tmp_path / 'missing'}",
                          f"hydra.run.dir={tmp_path / 'bad'}"], cwd=ROOT, capture_output=True, text=True,
                         timeout=300, env=env)
    assert bad.returncode == 2
    assert "DataError" in bad.stderr + bad.stdout and "MULTI30K_ROOT" in bad.stderr + bad.stdout


@pytest.mark.multi30k
def test_short_multi30k_run_loss_falls(tmp_path, multi30k_root):
    cfg = make_cfg("data=multi30k", f"data.root={multi30k_root}", "data.vocab_size=2000", "data.subword_model=bpe",
                   "model=tiny", "trainer.max_steps=240", "trainer.eval_every_steps=80", "trainer.batch_tokens=1500",
                   "trainer.warmup_steps=100", "trainer.lr=2e-3", "trainer.decode_strategies=[greedy]",
                   "trainer.decode_splits=[test]", "trainer.max_decode_sentences=20", "trainer.progress=false")
    train(cfg, tmp_path)
    evals = read_metrics(tmp_path)
    assert [e["step"] for e in evals] == [80, 160, 240]
    losses = [e["val_loss"] for e in evals]
    assert losses[0] > losses[1] > losses[2]
    assert evals[-1]["val_acc"] > evals[0]["val_acc"]


def test_flex_backend_refuses_to_train_on_cpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CPU-only refusal")
    from agf_exp.config import ConfigError

    cfg = make_cfg("experiment=smoke", "pos=agf_m", "model.attn_backend=flex", "model.attn_dropout=0")
    with pytest.raises(ConfigError, match="cannot train on CPU"):
        Trainer(cfg, tmp_path / "run")


# ---- resume on another device, precision or number of GPUs (the GPU path, checked on the CPU) ----


def test_resume_loads_last_pt_on_the_cpu_whatever_the_training_device(tmp_path, monkeypatch):
    """last.pt is read on the CPU and load_state_dict places the tensors: loaded onto the training
    device (a GPU), the saved CPU RNG state reached torch.set_rng_state as a CUDA tensor and every
    resume on a GPU failed. The meta device stands in for the GPU: tensors mapped there are
    unusable by the CPU model."""
    run, overrides = tmp_path / "r", [*FAST, "trainer.max_epochs=1", "trainer.decode_splits=[valid]"]
    interrupted_run(monkeypatch, make_cfg(*overrides), run, step=5)
    trainer = Trainer(make_cfg(*overrides), run)
    trainer.device = torch.device("meta")
    seen = []
    real = torch.set_rng_state
    monkeypatch.setattr(torch, "set_rng_state", lambda state: (seen.append(state), real(state)))
    assert trainer.try_resume()
    assert trainer.state.step == 6
    assert [(t.device.type, t.dtype) for t in seen] == [("cpu", torch.uint8)]


def test_resume_in_fp16_from_a_run_saved_without_a_loss_scale(tmp_path, monkeypatch):
    """A run saved in fp32/bf16 has an empty GradScaler state; resumed where precision=auto gives
    fp16 (a requeue onto a GPU without bf16), the scaler starts fresh instead of raising."""
    run, overrides = tmp_path / "r", [*FAST, "trainer.max_epochs=1", "trainer.decode_splits=[valid]"]
    interrupted_run(monkeypatch, make_cfg(*overrides), run, step=5)
    assert checkpoint.load(run / "checkpoints/last.pt")["scaler"] == {}
    trainer = Trainer(make_cfg(*overrides), run)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)  # what an fp16 run builds
    assert trainer.try_resume()
    assert trainer.scaler.is_enabled() and trainer.scaler.get_scale() == 1024.0


def test_cuda_rng_state_is_the_training_devices_alone(monkeypatch):
    """Only the training GPU's generator is saved, so a job requeued with fewer visible GPUs
    restores it; older checkpoints (one state per visible GPU) give the training device's entry."""
    states = {i: torch.tensor([i, 10 + i], dtype=torch.uint8) for i in range(4)}
    restored = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": states[torch.device(device).index or 0])
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append((state, device)))
    saved = training.rng_state(torch.device("cuda", 3))
    assert torch.equal(saved["cuda"], states[3])
    training.set_rng_state(saved, torch.device("cuda", 0))  # requeued onto a one-GPU node
    assert torch.equal(restored[-1][0], states[3]) and torch.device(restored[-1][1]) == torch.device("cuda", 0)
    old = {**saved, "cuda": [states[0], states[1]]}  # get_rng_state_all() of two visible GPUs
    training.set_rng_state(old, torch.device("cuda", 1))
    assert torch.equal(restored[-1][0], states[1])
    training.set_rng_state(old, torch.device("cuda", 0))
    assert torch.equal(restored[-1][0], states[0])
    training.set_rng_state(saved, torch.device("cpu"))  # a CUDA run resumed on the CPU ignores it
    assert len(restored) == 3


@pytest.mark.cuda
def test_interrupted_cuda_run_resumes_and_finishes(tmp_path, monkeypatch):
    """A GPU run's last.pt resumes on the GPU (map_location, RNG, scaler) and finishes."""
    run = tmp_path / "r"
    overrides = [*FAST, "trainer.device=cuda", "pos=agf_m", "pcmv=true", "model.attn_dropout=0",
                 "trainer.max_epochs=1", "trainer.decode_splits=[valid]"]
    interrupted_run(monkeypatch, make_cfg(*overrides), run, step=5)
    summary = train(make_cfg(*overrides), run)
    assert summary["status"] == "complete" and summary["steps"] > 5 and summary["device"].startswith("cuda")


def test_nan_loss_in_the_first_epoch_says_that_no_checkpoint_exists(tmp_path, monkeypatch):
    real = training.smoothed_loss
    monkeypatch.setattr(training, "smoothed_loss", lambda logits, gold, ls: real(logits, gold, ls) * float("nan"))
    with pytest.raises(TrainingError, match=r"no checkpoint was written yet .*trainer\.save_every_steps"):
        train(make_cfg(*FAST), tmp_path)
    assert not (tmp_path / "checkpoints" / "last.pt").exists()


def test_sigterm_during_the_final_decoding_stops_with_the_preemption_message(tmp_path, monkeypatch):
    import signal

    from agf_exp.preemption import Preempted

    from agf_exp import rundir

    real = rundir.final_decode

    def signalled(trainer, *args):
        signal.raise_signal(signal.SIGTERM)  # arrives while decoding
        return real(trainer, *args)

    monkeypatch.setattr(rundir, "final_decode", signalled)
    with pytest.raises(Preempted, match="stopped by SIGTERM during the final decoding; last.pt holds the finished "
                                        "training: run the same command again to decode") as e:
        train(make_cfg(*FAST, "trainer.max_epochs=1"), tmp_path)
    assert e.value.code == 143
    monkeypatch.setattr(rundir, "final_decode", real)
    summary = train(make_cfg(*FAST, "trainer.max_epochs=1"), tmp_path)  # resumes at the end and decodes
    assert summary["status"] == "complete"
