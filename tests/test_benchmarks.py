"""The benchmark scripts must not rot while no GPU is lent: ``benchmarks/gpu_check.sh`` runs every
step at toy sizes on the CPU (``--device cpu --smoke``), and ``benchmarks/peer.py`` translates
``experiment=small`` into an equivalent Eole config without installing Eole."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.mark.slow
def test_gpu_check_runs_every_step_at_toy_sizes_on_the_cpu(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path / "out"))
    proc = subprocess.run(["bash", "benchmarks/gpu_check.sh", "--device", "cpu", "--smoke"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    steps = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["steps"]
    assert list(steps) == ["env", "pytest", "attention", "train", "parity", "paper", "peer"]
    bad = {name: s["line"] for name, s in steps.items() if s["status"] != "ok"}
    assert not bad, bad
    # one Markdown table with a line per step, each printed as soon as it finished
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(table) == 1 + len(steps) and all(f"[{name}] ok" in proc.stdout for name in steps)
    assert steps["env"]["cuda_available"] in (True, False) and steps["env"]["flex_attention"]
    assert {r["mode"] for r in steps["attention"]["rows"]} == {"agf_m", "alibi_bl"}
    assert steps["train"]["vanilla"]["steps"] == 5 and steps["train"]["agf_m_pcmv"]["tokens_per_s"] > 0
    assert steps["parity"]["within_tolerance"]  # the same seed and device: identical numbers
    assert steps["paper"]["hours_for_10_wmt17_epochs"] > 0


def test_peer_writes_an_eole_config_equivalent_to_experiment_small():
    import peer

    cfg = peer.ours("small", [])
    files = {k: Path(f"/data/{k}") for k in ("train.src", "train.tgt", "valid.src", "valid.tgt", "vocab")}
    eole, mismatches = peer.eole_config(cfg, files, steps=300, device="cpu", save_dir=Path("/out/model"))
    model, training = eole["model"], eole["training"]
    assert (model["hidden_size"], model["heads"], model["transformer_ff"]) == (256, 4, 1024)
    assert model["encoder"]["layers"] == model["decoder"]["layers"] == 3
    assert model["share_embeddings"] and model["share_decoder_embeddings"] and not model["generator_bias"]
    assert training["batch_type"] == "tokens" and training["batch_size"] == 3000
    assert training["label_smoothing"] == 0.1 and training["max_grad_norm"] == 1.0
    assert (training["train_steps"], training["valid_steps"], training["gpu_ranks"]) == (300, 300, [])
    # Eole's noam schedule reaches agf-exp's peak lr at the end of warm-up: lr * (d * w)^-0.5 == peak
    assert training["learning_rate"] * (256 * training["warmup_steps"]) ** -0.5 == pytest.approx(cfg["trainer"]["lr"])
    assert any("EOS" in m for m in mismatches)
    assert training["bucket_size"] == peer.EOLE_BUCKET == 262144  # Eole's own default when no size is given
    eole, mismatches = peer.eole_config(cfg, files, steps=300, device="cpu", save_dir=Path("/out/model"),
                                        bucket_size=29000)
    assert eole["training"]["bucket_size"] == 29000 and any("bucket_size=29000" in m for m in mismatches)
    proc = subprocess.run([sys.executable, "benchmarks/peer.py", "--print-config"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    printed = yaml.safe_load(proc.stdout.split("Mismatches")[0])
    assert printed["model"]["hidden_size"] == 256
    assert printed["training"]["bucket_size"] == "<training pairs>"  # peer.py's default: one epoch per bucket


def test_peer_reads_eoles_training_log():
    import peer

    log = "\n".join([
        "[2026-11-29 07:30:00,000 INFO] * number of parameters: 7569408",
        "[2026-11-29 07:30:10,000 INFO] Step 50/  100; acc: 5.2; ppl: 900.12; xent: 6.80; aux: 0.000; mtp: 0.000; "
        "attn_ent: 0.000; lr: 1.00e-04; sents:  5000; bsz:  2600/2500/100;  650/ 625 tok/s;     100 sec;",
        "[2026-11-29 07:30:20,000 INFO] Step 100/  100; acc: 9.1; ppl: 400.00; xent: 5.99; aux: 0.000; mtp: 0.000; "
        "attn_ent: 0.000; lr: 2.00e-04; sents:  5000; bsz:  2700/2500/100; 1350/1250 tok/s;     200 sec;",
        "[2026-11-29 07:30:30,000 INFO] Validation perplexity: 300.5",
        "[2026-11-29 07:30:30,000 INFO] Validation accuracy: 12.25"])
    got = peer.read_eole({"log": log, "wall_s": 250.0, "peak_rss_mib": 1700.0})
    assert got["steps"] == 100 and got["tokens_per_batch"] == 2500
    # rates from the windows after the first (which includes Eole's first bucket fill)
    assert got["train_tokens_per_s"] == pytest.approx(1250) and got["seconds_per_step"] == pytest.approx(2.0)
    assert got["end_to_end_tokens_per_s"] == pytest.approx(250000 / 250)
    assert (got["val_acc"], got["val_ppl_smoothed"], got["parameters"]) == (12.25, 300.5, 7569408)


def test_peer_reads_agf_exp_the_way_it_reads_eole(tmp_path):
    """Steady-state rates from the evaluation windows after the first; end to end without the
    evaluations Eole does not do."""
    import peer

    records = [{"step": 50, "train_seconds": 100.0, "tokens_per_s": 1000.0, "val_seconds": 20.0, "val_acc": 5.0,
                "val_loss": 7.0},
               {"step": 100, "train_seconds": 150.0, "tokens_per_s": 2000.0, "val_seconds": 20.0, "val_acc": 9.0,
                "val_loss": 6.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (tmp_path / "summary.json").write_text(json.dumps({"steps": 100, "parameters": {"total": 7}}))
    got = peer.read_ours(tmp_path, {"wall_s": 320.0, "peak_rss_mib": 1.0})
    assert got["train_tokens_per_s"] == pytest.approx(2000.0) and got["seconds_per_step"] == pytest.approx(1.0)
    assert got["tokens_per_batch"] == pytest.approx(2000.0)
    assert got["end_to_end_tokens_per_s"] == pytest.approx((100_000 + 100_000) / (320.0 - 20.0))
    assert got["val_acc"] == 9.0 and got["val_ppl_smoothed"] == pytest.approx(2.718281828459045 ** 6)


def test_peer_report_windows_cover_every_step():
    """Eole reports every few steps and agf-exp evaluates every ~50; both sets of windows must
    tile the run exactly, since the rates are read from them (2076 steps = 12 epochs of small)."""
    import peer

    assert (peer.report_every(250), peer.eval_every(250)) == (50, 50)
    assert (peer.report_every(2076), peer.eval_every(2076)) == (12, 173)
    assert (peer.report_every(7), peer.eval_every(7)) == (7, 7)  # a prime: one window
    for steps in (1, 13, 300, 2076, 4099):
        assert steps % peer.report_every(steps) == 0 and steps % peer.eval_every(steps) == 0
        assert peer.report_every(steps) <= 50 and (peer.eval_every(steps) >= 50 or peer.eval_every(steps) == steps)


def test_peer_counts_agf_exps_updates_of_whole_epochs(multi30k_root, monkeypatch):
    """--epochs tells Eole the number of updates agf-exp's own batches make: 12 epochs of
    experiment=small with the committed pieces are the committed runs' 2076 steps."""
    import peer

    monkeypatch.setenv("MULTI30K_ROOT", str(multi30k_root))
    spm = ROOT / "results" / "multi30k-small" / "unigram8000.model"
    assert peer.steps_of_epochs("small", [], spm, 12) == 2076
    summary = json.loads((ROOT / "results/multi30k-small/table4/small/vanilla/seed1/summary.json").read_text())
    assert summary["steps"] == 2076 and summary["epochs"] == 12
    # accumulation halves the updates of an epoch (rounded up)
    one = peer.steps_of_epochs("small", [], spm, 1)
    assert peer.steps_of_epochs("small", ["trainer.accum_steps=2"], spm, 1) == -(-one // 2)


def test_peer_table_gives_ratios_or_one_side_alone():
    import peer

    a = {"train_tokens_per_s": 1500.0, "val_acc": 65.0, "parameters": 7}
    b = {"train_tokens_per_s": 1000.0, "val_acc": 50.0, "parameters": 7}
    both = peer.table({"agf-exp": a, "Eole": b}, "agf-exp", "Eole").splitlines()
    assert both[0] == "| | agf-exp | Eole | agf-exp / Eole |"
    assert "| target tokens/s (update time) | 1500 | 1000 | 1.500 |" in both and len(both) == 2 + 3
    alone = peer.table({"Eole": b}, "agf-exp", "Eole").splitlines()  # --eole-only
    assert alone[:2] == ["| | Eole |", "|---|---|"] and "| validation accuracy % (at the same step) | 50.00 |" in alone


def test_peer_decode_only_needs_a_finished_benchmark(tmp_path):
    proc = subprocess.run([sys.executable, "benchmarks/peer.py", "--decode-only", "--out", str(tmp_path / "none")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'none' / 'peer.json'} does not exist: --decode-only needs a finished benchmark in --out"]
    assert not (tmp_path / "none").exists()


@pytest.mark.slow
def test_precision_benchmark_prints_every_variant_as_a_ratio_to_fp32():
    proc = subprocess.run([sys.executable, "benchmarks/precision.py", "--rounds", "1", "--steps", "1", "--warmup", "1",
                           "--decode-sentences", "2", "--modes", "none", "--variants", "fp32", "bf16 (trainer)"],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| none |")]
    assert [r[1] for r in rows] == ["fp32", "bf16 (trainer)"]
    assert rows[0][3] == "1.00" and float(rows[1][3]) > 0  # update tokens/s as a ratio to fp32 of the same round
    assert "bf16 matmul peak" in proc.stdout and "failed" not in proc.stdout


@pytest.mark.slow
def test_run_rss_benchmark_prints_each_variant_beside_fp32():
    proc = subprocess.run([sys.executable, "benchmarks/run_rss.py", "--steps", "1", "--experiment", "smoke",
                           "--variants", "bf16"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in proc.stdout.splitlines() if line.startswith("| ")}
    assert set(rows) == {"variant", "bf16"} and float(rows["bf16"][1].split()[0]) > 100  # MiB (its fp32's)
    assert float(rows["bf16"][2]) > 0 and float(rows["bf16"][4]) > 0  # ratios to the fp32 run beside it

