"""fp32 against the bf16 training variants on the CPU, side by side in one run (docs/precision.md).

    python benchmarks/precision.py                       # experiment=small's model, one thread
    python benchmarks/precision.py --rounds 5 --steps 8 --modes none agf_m_pcmv

Each variant runs in its own process (the allocator setting is process-wide and a process's
peak RSS is its own), one thread, the variants interleaved round by round so that a change of
load on a shared machine hits them alike; every figure is the median over rounds and printed as
a ratio to fp32 measured in the same round. Per variant: update time (forward, backward,
clipping, Adam) in target tokens/s, peak RSS, compile time where it compiles, the matmul FLOPs
reached as a fraction of the CPU's bf16 (and fp32) matmul peak (a 3000x256 @ 256x1024 product
timed in the same process), and beam-5 decoding sentences/s for the fp32 and bf16 decoders.

The model is ``experiment=small``'s (d_model 256, 4 heads, FFN 1024, 3+3 layers, 8,000 types,
tied embeddings, dropout 0.1) on batches of Multi30k's shape (100 pairs of 30 subword tokens:
3,000 target tokens, the experiment's batch_tokens), random tokens.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

#: name -> (autocast dtype, fused output loss, tuned allocator, fused Adam, torch.compile)
VARIANTS = {
    "fp32": (None, False, False, False, False),
    "fp32+alloc": (None, False, True, False, False),
    "bf16-autocast": ("bf16", False, False, False, False),
    "bf16-autocast+fused-loss": ("bf16", True, False, False, False),
    "bf16 (trainer)": ("bf16", True, True, False, False),
    "bf16 (trainer)+fused-adam": ("bf16", True, True, True, False),
    "bf16 (trainer)+compile": ("bf16", True, True, False, True),
}
DEFAULT = ["fp32", "fp32+alloc", "bf16-autocast", "bf16-autocast+fused-loss", "bf16 (trainer)",
           "bf16 (trainer)+fused-adam"]


def matmul_peak(dtype) -> float:
    """GFLOP/s of a 3000x256 @ 256x1024 product in ``dtype`` on this thread."""
    import torch
    a, b = torch.randn(3000, 256, dtype=dtype), torch.randn(256, 1024, dtype=dtype)
    for _ in range(3):
        a @ b
    n, start = 30, time.perf_counter()
    for _ in range(n):
        a @ b
    return 2 * 3000 * 256 * 1024 * n / (time.perf_counter() - start) / 1e9


def worker(variant: str, mode: str, steps: int, warmup: int, decode_sentences: int) -> dict:
    """One variant in this process: the figures as a dict (printed as JSON by ``--worker``)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from agf_exp.decoding import DecodeConfig, Strategy, decode_ids
    from agf_exp.devices import autocast, tune_cpu_allocator
    from agf_exp.model import ModelConfig, Seq2SeqTransformer
    from agf_exp.positional import MODES
    from agf_exp.training import batch_loss

    amp, fused, alloc, fused_adam, compile_ = VARIANTS[variant]
    amp = torch.bfloat16 if amp == "bf16" else None
    torch.set_num_threads(1)
    if alloc:
        tune_cpu_allocator()
    name, pcmv = (mode[:-5], True) if mode.endswith("_pcmv") else (mode, False)
    torch.manual_seed(0)
    mcfg = ModelConfig(name="small", d_model=256, n_heads=4, d_ff=1024, enc_layers=3, dec_layers=3)
    model = Seq2SeqTransformer(mcfg, MODES[name].config_class(), 8000, 0, pe=name == "none", pcmv=pcmv)
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.998), eps=1e-9, fused=fused_adam or None)
    g = torch.Generator().manual_seed(1)
    src, tgt = torch.randint(4, 8000, (100, 30), generator=g), torch.randint(4, 8000, (100, 31), generator=g)
    tokens = tgt[:, 1:].numel()
    call = model
    compile_seconds = None
    if compile_:
        call = torch.compile(model)

    def step():
        opt.zero_grad(set_to_none=True)
        loss = batch_loss(call, model.generator.weight, src, tgt, 0.1, torch.device("cpu"), amp, fused) / tokens
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    start = time.perf_counter()
    step()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        step()
    if compile_:
        compile_seconds = first
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    # decoding: beam 5 over the same sources (random weights: every hypothesis runs to the limit)
    model.eval()
    cfg = DecodeConfig(strategy=Strategy.beam, beam_size=5, max_len_a=0.0, max_len_b=20)
    start = time.perf_counter()
    with torch.no_grad(), autocast(torch.device("cpu"), amp):
        decode_ids(model, src[:decode_sentences, :20], cfg)
    decode_s = time.perf_counter() - start
    return {"variant": variant, "mode": mode, "step_s": step_s, "tokens_per_s": tokens / step_s, "peak_rss_mb": rss_mb,
            "gflops_per_s": flops / step_s / 1e9, "compile_s": compile_seconds,
            "decode_sentences_per_s": decode_sentences / decode_s,
            "peak_bf16_gflops": matmul_peak(torch.bfloat16), "peak_fp32_gflops": matmul_peak(torch.float32)}


def run_variant(variant, mode, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", variant, "--modes", mode, "--steps", str(args.steps),
           "--warmup", str(args.warmup), "--decode-sentences", str(args.decode_sentences)]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if out.returncode != 0:
        return {"variant": variant, "mode": mode, "error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=DEFAULT, choices=list(VARIANTS))
    parser.add_argument("--modes", nargs="+", default=["none", "agf_m_pcmv"],
                        help="positional modes (a _pcmv suffix adds PCM-V; none = vanilla with sinusoidal PE)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6, help="timed updates per variant and round")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--decode-sentences", type=int, default=20)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(args.worker, args.modes[0], args.steps, args.warmup, args.decode_sentences)))
        return 0

    import torch
    from agf_exp.devices import cpu_bf16_units
    results = {}
    for r in range(args.rounds):
        for mode in args.modes:
            for variant in args.variants:
                res = run_variant(variant, mode, args)
                results.setdefault((mode, variant), []).append(res)
                if "error" in res:
                    print(f"round {r + 1}: {mode} {variant}: failed: {res['error']}", file=sys.stderr)
        print(f"round {r + 1} of {args.rounds} done", file=sys.stderr)

    def med(mode, variant, key):
        vals = [x[key] for x in results[(mode, variant)] if "error" not in x and x.get(key) is not None]
        return statistics.median(vals) if vals else None

    def ratio(mode, variant, key):
        """median over rounds of (variant / fp32 of the same round)"""
        pairs = [(a[key], b[key]) for a, b in zip(results[(mode, variant)], results[(mode, "fp32")])
                 if "error" not in a and "error" not in b]
        return statistics.median(x / y for x, y in pairs) if pairs else None

    print(f"# {datetime.date.today()}  {platform.processor() or platform.machine()}  bf16 units: {cpu_bf16_units()}  "
          f"torch {torch.__version__}  one thread; {args.rounds} rounds x {args.steps} updates; medians; "
          "ratios to fp32 of the same round")
    print()
    print("| mode | variant | update tokens/s | × fp32 | peak RSS MB | × fp32 | GFLOP/s | % bf16 peak | % fp32 peak "
          "| compile s | beam-5 sent/s | × fp32 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mode in args.modes:
        for variant in args.variants:
            if med(mode, variant, "tokens_per_s") is None:
                print(f"| {mode} | {variant} | failed | | | | | | | | | |")
                continue
            gf = med(mode, variant, "gflops_per_s")
            comp = med(mode, variant, "compile_s")
            print(f"| {mode} | {variant} | {med(mode, variant, 'tokens_per_s'):.0f} | {ratio(mode, variant, 'tokens_per_s'):.2f} "
                  f"| {med(mode, variant, 'peak_rss_mb'):.0f} | {ratio(mode, variant, 'peak_rss_mb'):.2f} | {gf:.0f} "
                  f"| {100 * gf / med(mode, variant, 'peak_bf16_gflops'):.0f} | {100 * gf / med(mode, variant, 'peak_fp32_gflops'):.0f} "
                  f"| {'' if comp is None else f'{comp:.0f}'} | {med(mode, variant, 'decode_sentences_per_s'):.1f} "
                  f"| {ratio(mode, variant, 'decode_sentences_per_s'):.2f} |")
    if len(args.modes) > 1 and "none" in args.modes:
        print()
        for mode in args.modes[1:]:
            for variant in args.variants:
                a = [x["step_s"] for x in results[(mode, variant)] if "error" not in x]
                b = [x["step_s"] for x in results[("none", variant)] if "error" not in x]
                if a and b:
                    print(f"{mode} / vanilla step time, {variant}: {statistics.median(a) / statistics.median(b):.2f}")
    print()
    print(f"bf16 matmul peak {statistics.median(x['peak_bf16_gflops'] for v in results.values() for x in v if 'error' not in x):.0f} "
          f"GFLOP/s, fp32 {statistics.median(x['peak_fp32_gflops'] for v in results.values() for x in v if 'error' not in x):.0f} "
          "GFLOP/s (3000x256 @ 256x1024, one thread)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
