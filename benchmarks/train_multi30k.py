"""Benchmark: train `experiment=small` on Multi30k within a time budget and report time per
epoch, training tokens/s and the BLEU reached (cased sacreBLEU, test_2016_flickr).

    MULTI30K_ROOT=/path/to/multi30k python benchmarks/train_multi30k.py [--minutes 40] [-- extra overrides]

Target on a 2-core CPU: test BLEU >= 30 within 40 minutes of training. The run directory
(default outputs/bench/multi30k-small) is resumable: re-running continues an interrupted run.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=40.0, help="training-time budget (evaluation excluded)")
    parser.add_argument("--run-dir", default=str(ROOT / "outputs" / "bench" / "multi30k-small"))
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, e.g. pos=agf_m pcmv=true")
    args = parser.parse_args()
    if not os.environ.get("MULTI30K_ROOT") and not any(o.startswith("data.root=") for o in args.overrides):
        print("set MULTI30K_ROOT (or pass data.root=...) to the folder with the Multi30k .gz files", file=sys.stderr)
        return 2
    cmd = [sys.executable, str(ROOT / "run.py"), "experiment=small", f"trainer.max_minutes={args.minutes}",
           "trainer.max_epochs=100", f"hydra.run.dir={args.run_dir}", *args.overrides]
    print("$", " ".join(cmd), flush=True)
    rc = subprocess.call(cmd, cwd=ROOT)
    if rc:
        return rc
    run = Path(args.run_dir)
    summary = json.loads((run / "summary.json").read_text())
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    print(f"\nMulti30k `small` benchmark ({platform.processor() or platform.machine()}, "
          f"{summary['cpu_threads']} threads, torch {summary['torch']}, {summary['device']})")
    print("| epoch | train s (cum.) | tokens/s | val acc % | val ppl |")
    print("|---|---|---|---|---|")
    prev = 0.0
    for e in evals:
        print(f"| {e['epoch_fraction']:.2f} | {e['train_seconds'] - prev:.0f} ({e['train_seconds']:.0f}) | "
              f"{e['tokens_per_s']:.0f} | {e['val_acc']:.2f} | {e['val_ppl']:.2f} |")
        prev = e["train_seconds"]
    print()
    for key, s in summary["decoding"].items():
        print(f"{key:14s} BLEU {s['bleu']:6.2f}  chrF {s['chrf']:6.2f}  lc-BLEU {s['bleu_lc']:6.2f}  "
              f"({s['seconds']:.0f} s)  {s['bleu_signature']}")
    test = summary["decoding"].get("test/beam") or summary["decoding"].get("test/greedy")
    minutes = summary["train_seconds"] / 60
    print(f"\ntraining time {minutes:.1f} min, mean {summary['train_tokens_per_s']:.0f} target tokens/s; "
          f"target: test BLEU >= 30 within 40 min -> {'met' if test and test['bleu'] >= 30 and minutes <= 40.5 else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
