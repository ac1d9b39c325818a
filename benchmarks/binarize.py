"""Benchmark: the large-corpus data path (``data.binarize=true``) against reading the corpus into
memory, on N sentence pairs made by repeating the Multi30k training text.

    MULTI30K_ROOT=/path/to/multi30k python benchmarks/binarize.py [--pairs 1000000] [--workers 1 2]

Measured, each in its own process (peak resident memory from getrusage, workers included):

1. ``memory``: the in-memory path's data preparation (read every line, encode every pair into
   Python lists), the baseline;
2. ``binarise``: building the memory-mapped cache with 1, 2, ... worker processes;
3. training ``--steps`` updates of the ``small`` model from the cache and from memory (peak
   memory of the whole training process).

The sentencepiece model is trained once beforehand on a ``--spm-sample`` sample (timed
separately) and shared by every variant, so the timings are tokenisation and I/O only.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def peak_mib() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024  # Linux: KiB


def make_corpus(root: Path, out: Path, n: int) -> None:
    """``n`` pairs: the Multi30k training text repeated (each copy tagged with its number, so
    the text is not byte-identical across copies), as train.{en,de}; valid/test from Multi30k."""
    out.mkdir(parents=True, exist_ok=True)
    for lang in ("en", "de"):
        with gzip.open(root / f"train.{lang}.gz", "rt", encoding="utf-8") as f:
            lines = f.read().splitlines()
        with open(out / f"train.{lang}", "w", encoding="utf-8") as f:
            for i in range(n):
                f.write(f"{lines[i % len(lines)]} {i // len(lines)}\n")
        for split, stem in (("valid", "val"), ("test", "test_2016_flickr")):
            with gzip.open(root / f"{stem}.{lang}.gz", "rt", encoding="utf-8") as f:
                (out / f"{split}.{lang}").write_text(f.read(), encoding="utf-8")


def overrides(corpus: Path, cache: Path, binarize: bool, workers: int, spm_sample: int):
    return ["data=files", *(f"data.{s}_{side}={corpus}/{s}.{lang}" for s in ("train", "valid", "test")
                            for side, lang in (("src", "en"), ("tgt", "de"))),
            f"data.cache_dir={cache}", "data.vocab_size=8000", f"data.binarize={str(binarize).lower()}",
            f"data.num_workers={workers}", f"data.spm_sample={spm_sample}"]


def variant(args) -> None:
    """Runs in a child process: one measurement, printed as JSON on the last line."""
    import logging

    from agf_exp.config import compose
    from agf_exp.data import binarized, load_corpus
    from agf_exp.data.corpus import FilePairs

    logging.basicConfig(level=logging.WARNING)
    corpus, cache = Path(args.corpus), Path(args.cache)
    binarize = args.variant != "memory"
    cfg = compose(overrides(corpus, cache, binarize, args.workers[0], args.spm_sample))
    start = time.perf_counter()
    result = {"variant": args.variant}
    if args.variant == "spm":
        pairs = FilePairs(corpus / "train.en", corpus / "train.de")
        binarized.sampled_tokenizer(pairs, pairs.fingerprint(), cfg.data)
    elif args.variant == "binarise":
        pairs = FilePairs(corpus / "train.en", corpus / "train.de")
        tok = binarized.sampled_tokenizer(pairs, pairs.fingerprint(), cfg.data)  # cached by the spm step
        start = time.perf_counter()
        out = binarized.build(pairs, tok, Path(tempfile.mkdtemp(dir=cache)) / "bin", workers=args.workers[0],
                              progress=False)
        result["meta"] = json.loads((out / "meta.json").read_text())
    elif args.variant == "memory":
        # the in-memory path with the same tokenizer: every line read, every pair encoded to lists
        pairs = FilePairs(corpus / "train.en", corpus / "train.de")
        binarized.sampled_tokenizer(pairs, pairs.fingerprint(), cfg.data)
        start = time.perf_counter()
        from agf_exp.data import encode_pairs
        from agf_exp.data.tokenizer import Tokenizer

        tok = Tokenizer(next((cache / "spm").glob("*.model")).read_bytes())
        src, tgt = load_corpus(cfg.data, 1).splits["train"]
        result["pairs"] = len(encode_pairs(tok, src, tgt))
    elif args.variant == "prepare":  # the cache the training run reads (not timed)
        binarized.prepare(cfg.data, FilePairs(corpus / "train.en", corpus / "train.de"))
    elif args.variant.startswith("train-"):
        from agf_exp.training import Trainer

        cfg = compose(["experiment=small", *overrides(corpus, cache, args.variant == "train-cache", args.workers[0],
                                                    args.spm_sample),
                       f"trainer.max_steps={args.steps}", "trainer.progress=false", "trainer.decode_splits=[]"])
        if args.variant == "train-memory":  # the same tokenizer as the cached path: no spm training in the timing
            import agf_exp.data as data_module
            from agf_exp.data.tokenizer import Tokenizer

            proto = next((cache / "spm").glob("*.model")).read_bytes()
            data_module.train_or_load = lambda *a, **k: Tokenizer(proto)
        trainer = Trainer(cfg, Path(tempfile.mkdtemp(dir=cache)))
        result["prepare_seconds"] = round(time.perf_counter() - start, 2)
        trainer.fit()
        result["steps"] = trainer.state.step
    result["seconds"] = round(time.perf_counter() - start, 2)
    result["peak_mib"] = round(peak_mib(), 1)
    print(json.dumps(result))


def run_variant(args, name: str, workers: int) -> dict:
    cmd = [sys.executable, __file__, "--variant", name, "--corpus", str(args.corpus), "--cache", str(args.cache),
           "--workers", str(workers), "--spm-sample", str(args.spm_sample), "--steps", str(args.steps)]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if out.returncode:
        sys.exit(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--spm-sample", type=int, default=200_000)
    parser.add_argument("--steps", type=int, default=30, help="training updates for the peak-memory comparison")
    parser.add_argument("--work-dir", default=None, help="where the corpus and caches go (default: a temp dir)")
    parser.add_argument("--variant", help=argparse.SUPPRESS)
    parser.add_argument("--corpus", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        variant(args)
        return 0
    root = os.environ.get("MULTI30K_ROOT")
    if not root:
        print("set MULTI30K_ROOT to the folder with the Multi30k .gz files", file=sys.stderr)
        return 2
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="agf-binarize-"))
    args.corpus, args.cache = work / "corpus", work / "cache"
    args.cache.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    make_corpus(Path(root), args.corpus, args.pairs)
    size = sum(p.stat().st_size for p in args.corpus.glob("train.*")) / 2 ** 20
    print(f"corpus: {args.pairs:,} pairs, {size:.0f} MiB of text ({time.perf_counter() - t:.1f} s to write)", flush=True)
    rows = [run_variant(args, "spm", 1)]
    rows.append(run_variant(args, "memory", 1))
    for w in args.workers:
        rows.append(dict(run_variant(args, "binarise", w), workers=w))
    run_variant(args, "prepare", max(args.workers))
    rows.append(run_variant(args, "train-memory", 1))
    rows.append(run_variant(args, "train-cache", 1))
    base = rows[1]
    print(f"\n{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}; "
          f"{args.pairs:,} pairs; sentencepiece on a {args.spm_sample:,}-pair sample: {rows[0]['seconds']:.1f} s, "
          f"peak {rows[0]['peak_mib']:.0f} MiB\n")
    print("| step | time (s) | pairs/s | × in-memory time | peak memory (MiB) | × in-memory memory |")
    print("|---|---|---|---|---|---|")
    for r in rows[1:]:
        label = {"memory": "in-memory: read + encode to lists (baseline)",
                 "binarise": f"binarise to the memmap cache, {r.get('workers')} worker(s)",
                 "train-memory": f"train {args.steps} steps, data in memory (incl. reading + encoding)",
                 "train-cache": f"train {args.steps} steps from the cache (incl. opening it)"}[r["variant"]]
        ref = base if r["variant"] in ("memory", "binarise") else rows[-2]
        pairs_s = f"{args.pairs / r['seconds']:,.0f}" if r["variant"] in ("memory", "binarise") else ""
        print(f"| {label} | {r['seconds']:.1f} | {pairs_s} | {r['seconds'] / ref['seconds']:.2f} | "
              f"{r['peak_mib']:.0f} | {r['peak_mib'] / ref['peak_mib']:.2f} |")
    print(f"\n(training rows: ratios against training from memory; work dir {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
