"""Peak RSS of whole training runs, fp32 against bf16, side by side (docs/precision.md).

    MULTI30K_ROOT=... python benchmarks/run_rss.py                      # experiment=small, 120 updates
    MULTI30K_ROOT=... python benchmarks/run_rss.py --steps 300 --variants bf16 bf16-cache0
    python benchmarks/run_rss.py --steps 2 --experiment smoke          # any scale (the smoke test)

benchmarks/precision.py times one update on batches of one shape; a real run's batches change
shape every update, which is what fills oneDNN's primitive cache in bf16 (one primitive per new
matmul shape, 1,024 kept by default). Here each variant is a real ``run.py`` run (its own process,
one thread, Multi30k's batches, the evaluation at the end, no final decoding), started at the same
time as an fp32 run of its own, so that a shared machine's load hits the pair alike. Per variant:
the process's peak RSS (``wait4``'s ru_maxrss, the whole process over the whole run) and the
training tokens/s of its last evaluation record, each as a ratio to its paired fp32 run's.
Variants:

* ``fp32``, ``bf16`` (the trainer's bf16 path, oneDNN's cache capped at
  ``devices.ONEDNN_CACHE_CAPACITY``);
* ``bf16-cache1024``: the same with oneDNN's default cache (``ONEDNN_PRIMITIVE_CACHE_CAPACITY=1024``,
  what the trainer did before the cap); ``bf16-cache0``: no cache at all.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

#: name -> (trainer.precision, extra environment)
VARIANTS = {
    "fp32": ("fp32", {}),
    "bf16": ("bf16", {}),
    "bf16-cache1024": ("bf16", {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024"}),
    "bf16-cache0": ("bf16", {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "0"}),
}


def start(variant: str, experiment: str, steps: int, overrides: list, out: Path) -> subprocess.Popen:
    precision, env = VARIANTS[variant]
    cmd = [sys.executable, str(ROOT / "run.py"), f"experiment={experiment}", f"trainer.max_steps={steps}",
           f"trainer.eval_every_steps={steps}", "trainer.decode_splits=[]", "trainer.num_threads=1",
           "trainer.progress=false", f"trainer.precision={precision}", *overrides, "hydra.mode=RUN",
           f"hydra.run.dir={out}"]
    if os.environ.get("MULTI30K_ROOT") and experiment == "small":
        cmd.insert(3, f"data.root={os.environ['MULTI30K_ROOT']}")
    child_env = {**os.environ, **env}
    if not env:
        child_env.pop("ONEDNN_PRIMITIVE_CACHE_CAPACITY", None)  # the trainer's own setting
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{out.name}.err", "wb") as err:  # a file, not a pipe: a long run's log never blocks it
        return subprocess.Popen(cmd, cwd=ROOT, env=child_env, stdout=subprocess.DEVNULL, stderr=err)


def finish(proc: subprocess.Popen, variant: str, out: Path) -> dict:
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = (out.parent / f"{out.name}.err").read_text(errors="replace")
    if proc.returncode != 0:
        lines = [line for line in err.strip().splitlines() if line and "HYDRA_FULL_ERROR" not in line]
        why = (lines[-1] if "Traceback" in err else lines[0]) if lines else "(no message)"  # Hydra's errors lead
        raise SystemExit(f"{variant}: run.py exited {proc.returncode}: {why}")
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {"variant": variant, "peak_rss_mib": usage.ru_maxrss / 1024, "tokens_per_s": records[-1]["tokens_per_s"],
            "val_acc": records[-1]["val_acc"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variants", nargs="+", default=["bf16", "bf16-cache1024"],
                        choices=[v for v in VARIANTS if v != "fp32"], help="each runs beside an fp32 run of its own")
    parser.add_argument("--steps", type=int, default=120, help="updates per run")
    parser.add_argument("--experiment", default="small", help="the scale (default small: Multi30k, MULTI30K_ROOT)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("overrides", nargs="*", help="more run.py overrides (after --)")
    args = parser.parse_args()
    pairs = []
    with tempfile.TemporaryDirectory(prefix="agf-run-rss-") as tmp:
        for i, variant in enumerate(args.variants):
            procs = [(v, start(v, args.experiment, args.steps, args.overrides, Path(tmp) / f"{i}-{v}"),
                      Path(tmp) / f"{i}-{v}") for v in ("fp32", variant)]
            pairs.append([finish(p, v, out) for v, p, out in procs])
    print(f"# whole-run peak RSS, experiment={args.experiment}, {args.steps} updates, one thread per run, each "
          f"variant beside an fp32 run of its own ({datetime.date.today()}, {platform.processor() or platform.machine()})")
    print("| variant | peak RSS MiB (its fp32) | x fp32 | train tokens/s (its fp32) | x fp32 | val acc % |")
    print("|---|---|---|---|---|---|")
    for base, r in pairs:
        print(f"| {r['variant']} | {r['peak_rss_mib']:.0f} ({base['peak_rss_mib']:.0f}) | "
              f"{r['peak_rss_mib'] / base['peak_rss_mib']:.2f} | {r['tokens_per_s']:.0f} ({base['tokens_per_s']:.0f}) | "
              f"{r['tokens_per_s'] / base['tokens_per_s']:.2f} | {r['val_acc']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(pairs, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
