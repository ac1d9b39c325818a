"""Benchmark: forward+backward time and memory of one attention layer and of one full training
step of the `small` model, for every positional mode x {pcmv off, on} x attention backend, at
several sequence lengths. Figures are ratios against vanilla SDPA (``pos=none``) measured in
the same run (median of repeats).

    python benchmarks/attention.py                          # everything, on the default device
    python benchmarks/attention.py --what step --lengths 32 64 128 --modes none agf_m alibi_bl
    python benchmarks/attention.py --device cuda --dtype bf16

Memory: ``act MiB`` is the size of the tensors autograd saves for the backward pass (unique
storages, measured with saved-tensor hooks; comparable on every device); on CUDA ``peak MiB``
is ``torch.cuda.max_memory_allocated`` for the measured call. Attention dropout is 0 in every
configuration (flex_attention has none), so all backends compute the same function.

Targets (issue 3): a full train step with ``agf_m pcmv=true`` <= 1.25x vanilla on CPU at
L <= 128, and <= 1.10x on an H100/H200 in bf16 at L <= 512 with memory growing linearly in L
for the fused path. On CPU flex_attention has no backward in torch 2.13, so flex is not timed there.
"""
from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agf_exp.attention import AttnBackend, MultiHeadAttention, backend_problem  # noqa: E402
from agf_exp.model import ModelConfig, Seq2SeqTransformer  # noqa: E402
from agf_exp.positional import MODES, AttnType  # noqa: E402

VOCAB, PAD = 8000, 0


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


@contextlib.contextmanager
def saved_bytes(counter: list):
    """Sum the bytes of the unique storages autograd saves for backward."""
    seen = set()

    def pack(t):
        try:
            ptr = t.untyped_storage().data_ptr()
        except Exception:  # tensors without storage (e.g. wrapper subclasses)
            ptr = id(t)
        if ptr not in seen:
            seen.add(ptr)
            counter[0] += t.untyped_storage().nbytes() if hasattr(t, "untyped_storage") else 0
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        yield


def measure(fn, device, repeats: int, warmup: int):
    """Median seconds of ``fn()`` and the memory of one call."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    counter = [0]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    with saved_bytes(counter):
        fn()
    sync(device)
    peak = (torch.cuda.max_memory_allocated() - base) / 2 ** 20 if device.type == "cuda" else None
    return statistics.median(times), counter[0] / 2 ** 20, peak


def autocast(device, dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def layer_case(mode, pcmv, backend, length, batch, device, dtype):
    cfg = MODES[mode].config_class()
    mha = MultiHeadAttention(256, 4, AttnType.enc, cfg, pcmv=pcmv, backend=backend).to(device).train()
    x = torch.randn(batch, length, 256, device=device, requires_grad=True)
    pad = torch.zeros(batch, length, dtype=torch.bool, device=device)
    pad[: batch // 2, -(length // 8):] = True  # some padding, as in real batches

    def fn():
        with autocast(device, dtype):
            out = mha(x, key_padding_mask=pad)
        out.float().square().mean().backward()

    return fn


def step_case(mode, pcmv, backend, length, batch, device, dtype):
    torch.manual_seed(0)
    mcfg = ModelConfig(name="small", d_model=256, n_heads=4, d_ff=1024, enc_layers=3, dec_layers=3,
                       dropout=0.1, attn_dropout=0.0, attn_backend=backend)
    model = Seq2SeqTransformer(mcfg, MODES[mode].config_class(), VOCAB, PAD, pe=MODES[mode].config_class().default_pe,
                               pcmv=pcmv, sco=False).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    src = torch.randint(3, VOCAB, (batch, length), device=device)
    tgt = torch.randint(3, VOCAB, (batch, length + 1), device=device)
    src[: batch // 2, -(length // 8):] = PAD

    def fn():
        with autocast(device, dtype):
            logits = model(src, tgt[:, :-1])
        loss = F.cross_entropy(logits.float().reshape(-1, VOCAB), tgt[:, 1:].reshape(-1), ignore_index=PAD)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return fn


def main() -> int:
    import torch._dynamo

    # past dynamo's recompile limit flex silently runs unfused (an [B, H, L, L] tensor): never time that
    torch._dynamo.config.fail_on_recompile_limit_hit = True
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--what", choices=["layer", "step", "both"], default="both")
    parser.add_argument("--modes", nargs="*", default=sorted(MODES))
    parser.add_argument("--backends", nargs="*", default=["eager", "sdpa", "flex", "auto"])
    parser.add_argument("--lengths", nargs="*", type=int, default=[32, 64, 128, 256, 512])
    parser.add_argument("--layer-batch", type=int, default=32)
    parser.add_argument("--step-batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default=None,
                        help="autocast dtype (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--max-channel-elements", type=float, default=3e8,
                        help="skip channelwise modes (agf_l) when B*H*L*L*d_head exceeds this (time/memory)")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[
        args.dtype or ("bf16" if device.type == "cuda" else "fp32")]
    if args.threads:
        torch.set_num_threads(args.threads)
    unknown = sorted(set(args.modes) - set(MODES))
    if unknown:
        print(f"unknown modes {unknown}; known: {sorted(MODES)}", file=sys.stderr)
        return 2
    hw = torch.cuda.get_device_name() if device.type == "cuda" else f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(f"# attention benchmark: {hw}, torch {torch.__version__}, {str(dtype).replace('torch.', '')}, "
          f"median of {args.repeats}", flush=True)

    whats = ["layer", "step"] if args.what == "both" else [args.what]
    for what in whats:
        case, batch = (layer_case, args.layer_batch) if what == "layer" else (step_case, args.step_batch)
        title = ("one encoder self-attention layer (d_model 256, 4 heads), forward+backward"
                 if what == "layer" else "one training step of the `small` model (3+3 layers, d 256), fwd+bwd+Adam")
        print(f"\n## {title}, batch {batch}\n")
        print("| L | mode | pcmv | backend | ms | x vanilla SDPA | act MiB | x vanilla" + (" | peak MiB |" if device.type == "cuda" else " |"))
        print("|---|---|---|---|---|---|---|---" + ("|---|" if device.type == "cuda" else "|"))
        for length in args.lengths:
            base_t, base_m, _ = measure(case("none", False, AttnBackend.sdpa, length, batch, device, dtype),
                                        device, args.repeats, args.warmup)
            for mode in args.modes:
                cls = MODES[mode].module_class
                for pcmv in ([False, True] if cls.supports_value_coefficient() else [False]):
                    for backend in args.backends:
                        be = AttnBackend(backend)
                        if backend_problem(be, cls, pcmv):
                            continue
                        if be == AttnBackend.flex and device.type == "cpu":
                            continue  # no flex backward on CPU (torch 2.13)
                        size = batch * 4 * length * length * 64
                        if cls.channelwise and size > args.max_channel_elements:
                            print(f"| {length} | {mode} | {'on' if pcmv else 'off'} | {be.value} | skipped: "
                                  f"B*H*L^2*d = {size:.1e} > --max-channel-elements |||||", flush=True)
                            continue
                        chosen = be.value
                        if be == AttnBackend.auto:
                            probe = MultiHeadAttention(256, 4, AttnType.enc, MODES[mode].config_class(), pcmv=pcmv)
                            chosen = f"auto->{probe.resolve_backend(device).value}"
                        try:
                            t, m, peak = measure(case(mode, pcmv, be, length, batch, device, dtype),
                                                 device, args.repeats, args.warmup)
                        except Exception as e:  # report and go on (e.g. out of memory at large L)
                            print(f"| {length} | {mode} | {pcmv} | {chosen} | failed: {type(e).__name__}: "
                                  f"{str(e).splitlines()[0][:80]} |||||", flush=True)
                            if device.type == "cuda":
                                torch.cuda.empty_cache()
                            continue
                        row = (f"| {length} | {mode} | {'on' if pcmv else 'off'} | {chosen} | {t * 1e3:.1f} | "
                               f"{t / base_t:.2f} | {m:.1f} | {m / base_m:.2f} |")
                        if peak is not None:
                            row += f" {peak:.1f} |"
                        print(row, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
