"""The steps of ``benchmarks/gpu_check.sh``: everything GPU-only, one step per call, each appending
one JSON line to the results file, and ``summary`` printing them as one Markdown table.

    python benchmarks/gpu_check.py STEP --results R.jsonl [--device cuda] [--smoke]
    python benchmarks/gpu_check.py summary --results R.jsonl [--json OUT.json]

Steps: ``env`` (GPU, driver, torch, bf16, flex), ``pytest`` (``pytest -m cuda``), ``attention``
(every multiplicative/additive mode x PCM-V, bf16, one layer forward+backward at L = 128 ... 4096:
time and peak memory against vanilla SDPA, and whether flex with PCM-V grows linearly in memory),
``train`` (``experiment=small`` for ``--minutes`` on the device, vanilla and ``pos=agf_m
pcmv=true``: tokens/s, MFU against the GPU's dense bf16 peak, peak memory), ``parity`` (the same
seed for ``--parity-steps`` updates on the device in bf16 and on the CPU in fp32: validation
accuracy and loss at that step), ``paper`` (``experiment=paper`` for 50 steps: tokens/s, memory,
hours for the paper's 10 WMT17 epochs extrapolated), ``peer`` (``benchmarks/peer.py`` on the GPU
when Eole installs). ``--smoke`` runs each at toy sizes (tests/test_benchmarks.py does, with
``--device cpu``), so every path but the CUDA kernels is exercised without a GPU.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

# dense bf16 peak (TFLOP/s, no sparsity) by device-name fragment, from the vendors' data sheets
BF16_PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 756.0,
                    "A100": 312.0, "L40S": 362.0, "A10": 125.0, "V100": 125.0}
# WMT17 en-de as data=wmt17_en_de prepares it: ~5.9M training pairs, ~28 target subword tokens each
# (an estimate for the extrapolation; the step prints it beside the hours)
WMT17_TRAIN_TARGET_TOKENS = 5.9e6 * 28


def peak_tflops(name: str) -> Optional[float]:
    for fragment, tflops in BF16_PEAK_TFLOPS.items():
        if fragment in name:
            return tflops
    return None


# ------------------------------------------------------------------------------------------------
# the steps (each returns a dict of figures; "line" is the one-line result printed at once)


def step_env(args) -> Dict[str, Any]:
    import torch

    out: Dict[str, Any] = {"torch": torch.__version__, "python": platform.python_version(),
                           "cuda_available": torch.cuda.is_available(), "device": args.device}
    if args.device == "cuda":
        props = torch.cuda.get_device_properties(0)
        out.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1), cuda=torch.version.cuda,
                   bf16=torch.cuda.is_bf16_supported(), bf16_peak_tflops=peak_tflops(props.name))
        smi = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True)
        out["driver"] = smi.stdout.strip() or None
    try:
        from torch.nn.attention import flex_attention  # noqa: F401

        out["flex_attention"] = True
    except ImportError:
        out["flex_attention"] = False
    out["line"] = (f"{out.get('gpu', 'no GPU')} (driver {out.get('driver')}), torch {out['torch']}, "
                   f"bf16 {out.get('bf16')}, flex_attention {out['flex_attention']}")
    return out


def step_pytest(args) -> Dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests/"]
    if args.smoke:  # the CUDA tests of one file are enough to exercise this step
        cmd[-1] = "tests/test_attention.py"
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    tail = (proc.stdout.strip().splitlines() or [""])[-1]
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|error|deselected)", tail)}
    return {"returncode": proc.returncode, **counts, "line": tail,
            "failures": re.findall(r"^FAILED (\S+)", proc.stdout, flags=re.M)[:20]}


ATTN_MODES = {"multiplicative": ["agf", "agf_m", "alibi_bl_mul"], "additive": ["alibi", "alibi_bl", "kerple_log",
                                                                              "kerple_power", "t5"]}


def step_attention(args) -> Dict[str, Any]:
    import torch
    import torch._dynamo

    import attention as bench  # benchmarks/attention.py: the same cases and measurement
    from agf_exp.attention import AttnBackend

    torch._dynamo.config.fail_on_recompile_limit_hit = True  # never time flex's unfused fallback
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    lengths = [16, 32] if args.smoke else [128, 512, 2048, 4096]
    modes = ["agf_m", "alibi_bl"] if args.smoke else ATTN_MODES["multiplicative"] + ATTN_MODES["additive"]
    backend = AttnBackend.auto
    rows: List[Dict[str, Any]] = []
    for length in lengths:
        batch = max(1, (4096 * 8) // length) if not args.smoke else 2
        base_t, _, base_mem = bench.measure(bench.layer_case("none", False, AttnBackend.sdpa, length, batch, device, dtype),
                                            device, repeats=3, warmup=1)
        for mode in modes:
            for pcmv in (False, True):
                fn = bench.layer_case(mode, pcmv, backend, length, batch, device, dtype)
                t, act, mem = bench.measure(fn, device, repeats=3, warmup=1)
                rows.append({"mode": mode, "pcmv": pcmv, "L": length, "batch": batch, "ms": t * 1e3,
                             "time_vs_sdpa": t / base_t, "peak_mib": mem,
                             "mem_vs_sdpa": None if mem is None or not base_mem else mem / base_mem})
    linear = {}
    top = sorted(lengths)[-2:]
    for mode in modes:
        mem = {r["L"]: r["peak_mib"] * r["batch"] ** -1 for r in rows if r["mode"] == mode and r["pcmv"] and r["peak_mib"]}
        if len(mem) == len(lengths):  # memory per sequence from the two longest lengths: ~2x is linear, ~4x is L^2
            linear[mode] = mem[top[1]] / mem[top[0]] < 0.75 * (top[1] / top[0]) ** 2
    worst = max(rows, key=lambda r: r["time_vs_sdpa"])
    return {"rows": rows, "linear_memory_with_pcmv": linear,
            "line": f"{len(rows)} cases; slowest vs SDPA: {worst['mode']} pcmv={worst['pcmv']} L={worst['L']} "
                    f"{worst['time_vs_sdpa']:.2f}x; linear memory with PCM-V: "
                    f"{sorted(m for m, ok in linear.items() if ok) or 'not measured (CPU)'}"}


def _train(overrides: List[str], run_dir: Path, device: str) -> Dict[str, Any]:
    """One in-process run of ``run.py``'s config; its summary plus the device's peak memory."""
    import torch

    from agf_exp.config import compose
    from agf_exp.rundir import train

    cfg = compose([*overrides, f"trainer.device={device}", "trainer.progress=false", "trainer.decode_splits=[]",
                   "trainer.max_epochs=1000"])
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    summary = train(cfg, run_dir)
    summary["wall"] = time.perf_counter() - start
    summary["peak_mib"] = torch.cuda.max_memory_allocated() / 2 ** 20 if device == "cuda" else None
    return summary


def _data(args) -> List[str]:
    """Multi30k when MULTI30K_ROOT is set (the GPU machine may not have it), else the synthetic task."""
    if args.smoke or not os.environ.get("MULTI30K_ROOT"):
        return ["data=synthetic_small"] if args.smoke else ["data=synthetic"]
    return ["data=multi30k", f"data.subword_file={ROOT / 'results/multi30k-small/unigram8000.model'}"]


def _mfu(summary: Dict[str, Any], tflops: Optional[float]) -> Optional[float]:
    """Model FLOPs utilisation: 6 x parameters per target token (the standard estimate; it leaves
    out attention's L^2 term and counts the source side only through the parameters)."""
    if not tflops or not summary.get("train_tokens_per_s"):
        return None
    return 6 * summary["parameters"]["total"] * summary["train_tokens_per_s"] / (tflops * 1e12)


def step_train(args) -> Dict[str, Any]:
    import torch

    tflops = peak_tflops(torch.cuda.get_device_name()) if args.device == "cuda" else None
    budget = ["trainer.max_steps=5", "experiment=smoke"] if args.smoke else [f"trainer.max_minutes={args.minutes}",
                                                                             "experiment=small"]
    out = {}
    for name, extra in {"vanilla": [], "agf_m_pcmv": ["pos=agf_m", "pcmv=true"]}.items():
        s = _train([*budget, *_data(args), *extra, "seed=1"], Path(args.work) / f"train_{name}", args.device)
        out[name] = {"tokens_per_s": s["train_tokens_per_s"], "steps": s["steps"], "mfu": _mfu(s, tflops),
                     "peak_mib": s["peak_mib"], "parameters": s["parameters"]["total"], "autocast": s["autocast"],
                     "val_acc": s["final"].get("val_acc")}
    ratio = out["agf_m_pcmv"]["tokens_per_s"] / out["vanilla"]["tokens_per_s"]
    mfu = out["vanilla"]["mfu"]
    out["line"] = (f"vanilla {out['vanilla']['tokens_per_s']:.0f} tok/s (MFU {'–' if mfu is None else f'{mfu:.1%}'}), "
                   f"agf_m+pcmv {out['agf_m_pcmv']['tokens_per_s']:.0f} tok/s ({ratio:.2f}x)")
    return out


def step_parity(args) -> Dict[str, Any]:
    steps = 5 if args.smoke else args.parity_steps
    common = [*(["experiment=smoke"] if args.smoke else ["experiment=small"]), *_data(args), "pos=agf_m", "pcmv=true",
              "seed=1", f"trainer.max_steps={steps}", "model.dropout=0", "model.attn_dropout=0"]
    ref = _train([*common, "trainer.precision=fp32", "trainer.num_threads=" + str(os.cpu_count() or 1)],
                 Path(args.work) / "parity_cpu", "cpu")
    dev = _train([*common, "trainer.precision=auto"], Path(args.work) / "parity_device", args.device)
    a, b = ref["final"], dev["final"]
    d_acc, d_loss = b["val_acc"] - a["val_acc"], b["val_loss"] - a["val_loss"]
    ok = abs(d_acc) <= 1.0 and abs(d_loss) <= 0.05  # bf16 training: points of accuracy, nats per token
    return {"steps": steps, "cpu": {"val_acc": a["val_acc"], "val_loss": a["val_loss"]},
            "device": {"val_acc": b["val_acc"], "val_loss": b["val_loss"], "autocast": dev["autocast"]},
            "within_tolerance": ok,
            "line": f"step {steps}: val acc {b['val_acc']:.2f} ({dev['autocast']}) vs {a['val_acc']:.2f} (CPU fp32), "
                    f"Δ {d_acc:+.2f} pts, Δloss {d_loss:+.3f}: {'within' if ok else 'OUTSIDE'} tolerance"}


def step_paper(args) -> Dict[str, Any]:
    steps = 2 if args.smoke else 50
    overrides = ["experiment=paper", f"trainer.max_steps={steps}", "seed=1",
                 *(["model=tiny", "data=synthetic_small"] if args.smoke else _data(args))]
    s = _train(overrides, Path(args.work) / "paper", args.device)
    tps = s["train_tokens_per_s"]
    hours = 10 * WMT17_TRAIN_TARGET_TOKENS / tps / 3600 if tps else None
    return {"steps": s["steps"], "tokens_per_s": tps, "peak_mib": s["peak_mib"], "parameters": s["parameters"]["total"],
            "hours_for_10_wmt17_epochs": hours,
            "line": f"Transformer-BIG 3+3, {s['autocast']}: {tps:.0f} tok/s, peak {s['peak_mib'] or 0:.0f} MiB; "
                    f"10 WMT17 epochs (~{WMT17_TRAIN_TARGET_TOKENS / 1e6:.0f}M target tokens each) ≈ {hours:.1f} h"}


def step_peer(args) -> Dict[str, Any]:
    import peer

    if args.smoke:  # the config translation (no install, no training)
        code = peer.main(["--print-config"])
        return {"returncode": code, "line": "Eole config written (smoke: not trained)"}
    code = peer.main(["--device", args.device, "--steps", "300", "--out", str(Path(args.work) / "peer")])
    result = Path(args.work) / "peer" / "peer.json"
    if code or not result.is_file():
        return {"returncode": code, "line": "skipped: Eole could not be set up or run here (see its message above)"}
    data = json.loads(result.read_text())["results"]
    ratio = data["agf-exp"]["train_tokens_per_s"] / data["Eole"]["train_tokens_per_s"]
    return {"returncode": 0, "results": data, "line": f"agf-exp / Eole target tokens/s {ratio:.2f}x"}


STEPS: Dict[str, Callable[[Any], Dict[str, Any]]] = {
    "env": step_env, "pytest": step_pytest, "attention": step_attention, "train": step_train,
    "parity": step_parity, "paper": step_paper, "peer": step_peer}


# ------------------------------------------------------------------------------------------------
# the summary


def summary(results: Path, json_out: Optional[Path]) -> str:
    lines = ["| step | status | seconds | result |", "|---|---|---|---|"]
    records = [json.loads(line) for line in results.read_text().splitlines() if line.strip()] if results.is_file() else []
    seen = {r["step"]: r for r in records}
    for name in STEPS:
        r = seen.get(name)
        if r is None:
            lines.append(f"| {name} | not run (timed out or skipped) | | |")
        else:
            lines.append(f"| {name} | {r['status']} | {r['seconds']:.0f} | {r.get('line', '')} |")
    if json_out is not None:
        json_out.write_text(json.dumps({"steps": seen}, indent=1, default=str) + "\n")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("step", choices=[*STEPS, "summary"])
    parser.add_argument("--results", type=Path, required=True, help="JSON lines, one per step")
    parser.add_argument("--json", type=Path, help="summary: also write every step's figures here")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="toy sizes (a CPU check of the script itself)")
    parser.add_argument("--minutes", type=float, default=3.0, help="train: minutes of training per configuration")
    parser.add_argument("--parity-steps", type=int, default=100)
    parser.add_argument("--work", default=str(ROOT / "outputs" / "bench" / "gpu_check"))
    args = parser.parse_args(argv)
    if args.step == "summary":
        sys.stdout.write(summary(args.results, args.json))
        return 0
    start = time.perf_counter()
    try:
        record = {"step": args.step, "status": "ok", **STEPS[args.step](args)}
    except Exception as e:  # the script goes on with the next step; this one reports its error
        record = {"step": args.step, "status": "error", "line": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"}
    record["seconds"] = time.perf_counter() - start
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with open(args.results, "a") as f:
        f.write(json.dumps(record, default=str) + "\n")
    print(f"[{args.step}] {record['status']}: {record.get('line', '')}", flush=True)
    return 0 if record["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
