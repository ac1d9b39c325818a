"""Peer benchmark: agf-exp against Eole (OpenNMT-py's successor, the toolkit family the paper
trained with), side by side on the same machine, same model, data and pieces.

    MULTI30K_ROOT=/path/to/multi30k python benchmarks/peer.py                 # 300 steps, 1 thread each
    MULTI30K_ROOT=... python benchmarks/peer.py --steps 2000 --threads 1 --agf-cost
    MULTI30K_ROOT=... python benchmarks/peer.py --epochs 12                   # quality parity, to the end
    MULTI30K_ROOT=... python benchmarks/peer.py --decode-only --out DIR       # decode DIR's checkpoints again
    MULTI30K_ROOT=... python benchmarks/peer.py --device cuda                 # one GPU each
    python benchmarks/peer.py --print-config                                   # the Eole config only

What it does:
1. Sets up Eole (pinned, ``--eole-version``) in its own virtual environment under the cache dir
   (``$AGF_CACHE_DIR/peer``), with this process's torch version (so a CPU machine gets the CPU
   wheel) and ``aiohttp``, which Eole imports but does not declare.
2. Writes the Eole config equivalent to ``experiment=small`` (model, optimiser, schedule, batch,
   label smoothing, dropout; one epoch per bucket unless ``--eole-bucket-size``) and prints the
   mismatches it cannot remove.
3. Tokenises Multi30k with the committed sentencepiece model (``--spm``) into pieces (sources
   end in ``</s>``, as agf-exp's encoder input does), drops training pairs longer than
   ``data.max_len`` as agf-exp does, and gives Eole the same vocabulary.
4. Trains both for ``--steps`` updates (or agf-exp's ``--epochs`` and as many Eole updates) *at
   the same time* with the same thread count (CPU) or one GPU each, evaluates both on the
   validation set at that step, then decodes test_2016_flickr with beam 5 from both final-step
   checkpoints (again side by side). ``--eole-only`` runs Eole alone (an ablation).
5. Prints one table, agf-exp / Eole as ratios: target tokens/s (update time and end to end),
   seconds per step, target tokens per batch, validation accuracy and label-smoothed perplexity,
   peak RSS, beam-5 sentences/s and test BLEU (sacreBLEU, cased); ``--agf-cost`` adds agf-exp's
   ``pos=agf_m pcmv=true`` against its own vanilla, also trained side by side. Figures go to
   ``<out>/peer.json`` too.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agf_exp.atomic import atomic_write_bytes  # noqa: E402  (after the path: runs from a checkout)
from agf_exp.rundir import git_commit  # noqa: E402

EOLE_VERSION = "0.6.4"
EOLE_BUCKET = 262144  # Eole's own default bucket_size (examples gathered, then sorted by length and batched)
RSS = [sys.executable, "-c",  # run a command, then print its peak RSS (KiB) on stderr's last line
       "import resource, subprocess, sys; rc = subprocess.run(sys.argv[1:]).returncode; "
       "print(f'PEAK_RSS_KIB {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', file=sys.stderr); "
       "sys.exit(rc)"]


class PeerError(RuntimeError):
    """The benchmark cannot go on; the message says why and what to do."""


# ------------------------------------------------------------------------------------------------
# the two configurations


def ours(experiment: str, overrides: List[str]) -> Dict[str, Any]:
    """agf-exp's resolved config for ``experiment`` (as ``run.py`` composes it)."""
    from agf_exp.config import compose, to_container

    return to_container(compose([f"experiment={experiment}", *overrides]))


def report_every(steps: int) -> int:
    """Eole's report window: the largest divisor of ``steps`` up to 50 (the windows must cover
    every step, since the figures are read from them; a report line costs nothing)."""
    return max(d for d in range(1, min(steps, 50) + 1) if steps % d == 0)


def eval_every(steps: int) -> int:
    """agf-exp's evaluation interval in a ``--steps`` run, whose records are its report windows:
    the smallest divisor of ``steps`` from 50 up (an evaluation costs a validation pass)."""
    return min(d for d in range(min(steps, 50), steps + 1) if steps % d == 0)


def steps_of_epochs(experiment: str, overrides: List[str], spm_model: Path, epochs: int) -> int:
    """The optimizer updates agf-exp makes in ``epochs`` epochs of ``experiment``: its own batches
    of each epoch (they depend on the seed and the epoch) over ``accum_steps``, so Eole can be
    told the same number of steps."""
    from agf_exp.config import compose
    from agf_exp.data import make_batches, prepare_data

    cfg = compose([f"experiment={experiment}", *overrides, f"data.subword_file={spm_model.resolve()}"])
    train = prepare_data(cfg.data, cfg.seed).examples["train"]
    return sum(math.ceil(len(make_batches(train, cfg.trainer.batch_tokens, shuffle=True, seed=cfg.seed, epoch=e))
                         / cfg.trainer.accum_steps) for e in range(epochs))


def eole_config(cfg: Dict[str, Any], files: Dict[str, Path], steps: int, device: str,
                save_dir: Path, bucket_size: Union[int, str] = EOLE_BUCKET,
                precision: str = "same") -> Tuple[Dict[str, Any], List[str]]:
    """Eole's config doing what agf-exp's ``cfg`` does, and the differences that remain;
    ``precision`` (fp32 / bf16) sets Eole's ``compute_dtype`` apart from agf-exp's ``trainer.precision``."""
    m, t = cfg["model"], cfg["trainer"]
    # agf-exp: lr(s) = peak * min(s / w, sqrt(w / s)); Eole's noam: lr * d^-0.5 * min(s^-0.5, s * w^-1.5)
    noam_lr = t["lr"] * (m["d_model"] * t["warmup_steps"]) ** 0.5
    eole = {
        "seed": cfg["seed"], "report_every": report_every(steps), "overwrite": True,
        "src_vocab": str(files["vocab"]), "share_vocab": True, "src_vocab_size": cfg["data"]["vocab_size"],
        "tgt_vocab_size": cfg["data"]["vocab_size"], "vocab_size_multiple": 8,
        "data": {"corpus_1": {"path_src": str(files["train.src"]), "path_tgt": str(files["train.tgt"])},
                 "valid": {"path_src": str(files["valid.src"]), "path_tgt": str(files["valid.tgt"])}},
        "training": {
            "model_path": str(save_dir), "save_checkpoint_steps": steps, "train_steps": steps,
            "valid_steps": steps, "keep_checkpoint": 1, "world_size": 1, "bucket_size": bucket_size,
            "gpu_ranks": [0] if device == "cuda" else [], "batch_type": "tokens", "batch_size": t["batch_tokens"],
            "valid_batch_size": t["eval_batch_tokens"], "accum_count": [t["accum_steps"]], "num_workers": 0,
            "optim": "adam", "adam_beta1": t["adam_betas"][0], "adam_beta2": t["adam_betas"][1],
            "adam_eps": t["adam_eps"], "learning_rate": noam_lr, "decay_method": "noam",
            "warmup_steps": t["warmup_steps"], "max_grad_norm": t["clip_grad_norm"],
            "label_smoothing": t["label_smoothing"], "dropout": [m["dropout"]],
            "attention_dropout": [m["attn_dropout"]], "normalization": "tokens", "param_init": 0,
            "param_init_method": "xavier_uniform",
            "compute_dtype": precision if precision != "same" else
            ("fp32" if t["precision"] in ("fp32", "auto") and device == "cpu" else "bf16")},
        "model": {
            "architecture": "transformer", "hidden_size": m["d_model"], "heads": m["n_heads"],
            "transformer_ff": m["d_ff"], "encoder": {"layers": m["enc_layers"]}, "decoder": {"layers": m["dec_layers"]},
            "share_embeddings": m["share_embeddings"], "share_decoder_embeddings": m["tie_output"],
            "add_ffnbias": True, "add_qkvbias": False, "generator_bias": False,
            "embeddings": {"word_vec_size": m["d_model"], "position_encoding_type": "SinusoidalInterleaved"},
        },
    }
    mismatches = [
        "batches: both pack sentences by length up to batch_tokens padded tokens, but Eole fills buckets of "
        f"bucket_size={bucket_size} examples read from the corpus in order (repeating it when the corpus is "
        f"smaller: Eole's own default {EOLE_BUCKET} holds Multi30k's 29,000 pairs nine times, so length-sorted "
        "batches repeat sentences; here one bucket is one epoch unless --eole-bucket-size says otherwise) and "
        "sorts within them, agf-exp sorts each epoch once (seeded ties): the target tokens per batch differ "
        "(measured below)",
        "initialisation: both draw every matrix Xavier-uniform (OpenNMT's glorot), from different random "
        "streams, so the two models start from different draws of the same distribution",
        "EOS: agf-exp appends EOS to every source; here Eole's sources carry '</s>' in the text to match",
        "decoding length cap: agf-exp 1.2 x each sentence's source length + 10 tokens; Eole "
        "min(250, 1.2 x the longest source of the batch + 5) (-max_length_ratio 1.2 here); beam search ends "
        "at EOS in both, so only runaway hypotheses see the difference",
        "length penalty: none left (Eole's default 'avg' divides log p by the length, as agf-exp's "
        "len_penalty=1.0 does)",
    ]
    if cfg["pe"] is not True or cfg["pos"]["name"] != "none":
        mismatches.insert(0, f"pos={cfg['pos']['name']} pcmv={cfg['pcmv']}: Eole has no such mode; it trains "
                             "the vanilla Transformer (this row measures agf-exp's cost, not parity)")
    return eole, mismatches


# ------------------------------------------------------------------------------------------------
# set-up


def eole_env(cache: Path, version: str) -> Path:
    """The ``eole`` executable of a venv under ``cache`` (created on first use)."""
    venv = cache / f"eole-{version}"
    exe = venv / "bin" / "eole"
    if exe.is_file():
        return exe
    import torch

    print(f"setting up Eole {version} in {venv} (once; about 2 GB with its dependencies)", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "-q"]
    steps = [[*pip, f"torch=={torch.__version__.split('+')[0]}"],  # this machine's torch build, not a CUDA download
             [*pip, f"eole=={version}", "aiohttp"]]  # aiohttp: imported by eole, not declared
    for cmd in steps:
        if subprocess.run(cmd).returncode:
            raise PeerError(f"`{' '.join(cmd[3:])}` failed in {venv}: the package registry is unreachable or "
                            f"refused the versions; fix the network (or pin another --eole-version) and rerun")
    return exe


def prepare_files(cfg: Dict[str, Any], spm_model: Path, out: Path, max_test: Optional[int] = None) -> Dict[str, Path]:
    """Multi30k as sentencepiece pieces for Eole (sources end in ``</s>``), the vocabulary file,
    and the raw test references; training pairs filtered by ``data.max_len`` as agf-exp does."""
    import sentencepiece as spm

    from agf_exp.data import load_corpus

    corpus = load_corpus(cfg["data"], cfg["seed"])
    sp = spm.SentencePieceProcessor(model_file=str(spm_model))
    out.mkdir(parents=True, exist_ok=True)
    files = {name: out / name for name in ("train.src", "train.tgt", "valid.src", "valid.tgt", "test.src",
                                             "test.raw", "test.ref", "vocab")}
    max_len = cfg["data"]["max_len"]
    for split in ("train", "valid", "test"):
        src, tgt = corpus.splits[split]
        src_p, tgt_p = sp.encode(list(src), out_type=str), sp.encode(list(tgt), out_type=str)
        keep = range(len(src))
        if split == "train":
            keep = [i for i in keep if src[i] and tgt[i] and len(src_p[i]) + 1 <= max_len and len(tgt_p[i]) <= max_len]
        if split == "test":
            keep = keep[:max_test] if max_test else keep
            files["test.src"].write_text("".join(" ".join(src_p[i] + ["</s>"]) + "\n" for i in keep))
            files["test.raw"].write_text("".join(src[i] + "\n" for i in keep))  # agf-exp tokenises itself
            files["test.ref"].write_text("".join(tgt[i] + "\n" for i in keep))
            continue
        files[f"{split}.src"].write_text("".join(" ".join(src_p[i] + ["</s>"]) + "\n" for i in keep))
        files[f"{split}.tgt"].write_text("".join(" ".join(tgt_p[i]) + "\n" for i in keep))
    specials = {sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()}  # Eole adds its own four
    files["vocab"].write_text("".join(f"{sp.id_to_piece(i)}\t1\n" for i in range(sp.get_piece_size())
                                      if i not in specials))
    return files


# ------------------------------------------------------------------------------------------------
# running and reading


def start(cmd: List[str], log: Path, threads: int, cwd: Path = ROOT, gpu: Optional[str] = None) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = gpu
    log.parent.mkdir(parents=True, exist_ok=True)
    handle = open(log, "w")
    proc = subprocess.Popen([*RSS, *cmd], cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT)
    proc.started, proc.log = time.perf_counter(), log  # type: ignore[attr-defined]
    return proc


def finish(procs: List[subprocess.Popen]) -> List[Dict[str, Any]]:
    """Wait for every process (each one's wall time taken when it ends, not when the ones before
    it do): wall seconds and peak RSS (MiB); a failure names its log."""
    ended: Dict[int, float] = {}
    while len(ended) < len(procs):
        for i, proc in enumerate(procs):
            if i not in ended and proc.poll() is not None:
                ended[i] = time.perf_counter()
        time.sleep(0.1)
    out = []
    for i, proc in enumerate(procs):
        rc = proc.returncode
        wall = ended[i] - proc.started  # type: ignore[attr-defined]
        text = proc.log.read_text()  # type: ignore[attr-defined]
        if rc:
            tail = "\n".join(text.strip().splitlines()[-15:])
            raise PeerError(f"{proc.args[len(RSS):][:3]} failed (exit {rc}); log {proc.log}:\n{tail}")
        rss = re.findall(r"PEAK_RSS_KIB (\d+)", text)
        out.append({"wall_s": wall, "peak_rss_mib": int(rss[-1]) / 1024 if rss else None, "log": text})
    return out


def read_ours(run_dir: Path, run: Dict[str, Any]) -> Dict[str, Any]:
    """agf-exp's figures, read as Eole's are: it evaluates every ``report_every`` steps, each
    record holding its window's tokens/s; rates from the windows after the first (steady state),
    end to end over the wall time less the evaluations Eole does not do (all but the last)."""
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    windows, before = [], (0, 0.0)
    for r in records:
        seconds = r["train_seconds"] - before[1]
        windows.append((r["step"] - before[0], r["tokens_per_s"] * seconds, seconds))
        before = (r["step"], r["train_seconds"])
    steady = windows[1:] or windows
    steps, tokens, seconds = (sum(w[i] for w in steady) for i in range(3))
    extra_evals = sum(r["val_seconds"] for r in records[:-1])
    last = records[-1]
    return {"steps": summary["steps"], "train_tokens_per_s": tokens / seconds,
            "end_to_end_tokens_per_s": sum(w[1] for w in windows) / (run["wall_s"] - extra_evals),
            "seconds_per_step": seconds / steps, "tokens_per_batch": tokens / steps,
            "val_acc": last["val_acc"], "val_ppl_smoothed": math.exp(last["val_loss"]),
            "peak_rss_mib": run["peak_rss_mib"], "parameters": summary["parameters"]["total"]}


STEP_LINE = re.compile(r"Step (\d+)/\s*\d+; acc: [\d.]+; ppl: [\d.]+;.*?bsz:\s*(\d+)/\s*(\d+)/\s*\d+;"
                       r"\s*(\d+)/\s*(\d+) tok/s;")


def read_eole(run: Dict[str, Any]) -> Dict[str, Any]:
    """Eole's figures from its log: per report window, target tokens = tokens per batch x steps
    and update seconds = tokens / (target tok/s) (steady state: the windows after the first);
    validation from its "Validation" lines."""
    text = run["log"]
    windows = []
    previous = 0
    for step, _, tgt_per_batch, _, tgt_per_s in STEP_LINE.findall(text):
        n = int(step) - previous
        previous = int(step)
        windows.append((n, int(tgt_per_batch) * n, int(tgt_per_batch) * n / max(int(tgt_per_s), 1)))
    all_tokens = sum(w[1] for w in windows)
    # the first window also waits for Eole's first bucket to fill (agf-exp's update time has no
    # data loading in it): the rates come from the later windows when there are any
    steady = windows[1:] or windows
    steps, tokens, seconds = (sum(w[i] for w in steady) for i in range(3))
    acc = re.findall(r"Validation accuracy: ([\d.e+-]+)", text)
    ppl = re.findall(r"Validation perplexity: ([\d.e+-]+)", text)
    params = re.findall(r"number of parameters: (\d+)", text)
    if not windows or not acc:
        raise PeerError("Eole's log has no training report or no validation line; see its log")
    return {"steps": previous, "train_tokens_per_s": tokens / seconds, "end_to_end_tokens_per_s": all_tokens / run["wall_s"],
            "seconds_per_step": seconds / steps, "tokens_per_batch": tokens / steps, "val_acc": float(acc[-1]),
            "val_ppl_smoothed": float(ppl[-1]), "peak_rss_mib": run["peak_rss_mib"],
            "parameters": int(params[-1]) if params else None}


def bleu(hyps_file: Path, refs_file: Path, detok: Optional[Path] = None) -> float:
    import sacrebleu

    hyps = hyps_file.read_text().split("\n")[:-1]
    if detok is not None:  # Eole's output is pieces
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(detok))
        hyps = [sp.decode_pieces(h.split()) for h in hyps]
    return sacrebleu.corpus_bleu(hyps, [refs_file.read_text().split("\n")[:-1]]).score


# ------------------------------------------------------------------------------------------------
# the benchmark


def ours_command(args, cfg, run_dir: Path, extra: List[str]) -> List[str]:
    """agf-exp's ``run.py``: with ``--epochs``, the experiment's own recipe for that many epochs
    (evaluated once per epoch); else ``--steps`` updates, evaluated every :func:`eval_every`."""
    budget = ([f"trainer.max_epochs={args.epochs}"] if args.epochs else
              [f"trainer.max_steps={args.steps}", "trainer.max_epochs=1000",
               f"trainer.eval_every_steps={eval_every(args.steps)}"])
    return [sys.executable, "run.py", f"experiment={args.experiment}", *extra, f"seed={cfg['seed']}", *budget,
            f"trainer.num_threads={args.threads}", f"trainer.device={args.device}", "trainer.decode_splits=[]",
            "trainer.progress=false", f"data.subword_file={args.spm.resolve()}", f"hydra.run.dir={run_dir}"]


def train_side_by_side(args, cfg, eole_cfg: Dict[str, Any], eole_exe, out) -> Dict[str, Dict[str, Any]]:
    import yaml

    (out / "eole").mkdir(parents=True, exist_ok=True)
    (out / "eole" / "config.yaml").write_text(yaml.safe_dump(eole_cfg, sort_keys=False))
    ours_dir = out / "agf"
    procs = [start([str(eole_exe), "train", "-config", str(out / "eole" / "config.yaml")], out / "eole.log",
                   args.threads, gpu="1" if args.device == "cuda" else None)]
    if not args.eole_only:
        procs.append(start(ours_command(args, cfg, ours_dir, args.overrides), out / "agf.log", args.threads,
                           gpu="0" if args.device == "cuda" else None))
    runs = finish(procs)
    results = {"Eole": read_eole(runs[0])}
    if not args.eole_only:
        results["agf-exp"] = read_ours(ours_dir, runs[1])
    return results


def decode_side_by_side(args, files, eole_exe, out, results, max_len_a: float = 1.2) -> None:
    ours_out, eole_out = out / "agf.test.beam.txt", out / "eole.test.beam.txt"
    ckpt = out / "agf" / "checkpoints" / "last.pt"  # the final step, as Eole's step_N (best.pt may be earlier)
    procs = [start([str(eole_exe), "predict", "-model_path", str(out / "eole" / "model" / f"step_{args.steps}"),
                    "-src", str(files["test.src"]), "-output", str(eole_out), "-beam_size", "5", "-batch_size", "64",
                    "-batch_type", "sents", "-length_penalty", "avg", "-max_length_ratio",
                    str(max_len_a)] + (["-gpu_ranks", "0"] if args.device == "cuda" else []),
                   out / "eole.decode.log", args.threads)]
    if not args.eole_only:
        procs.append(start([sys.executable, "-m", "agf_exp.evaluate", f"ckpt={ckpt}", f"input={files['test.raw']}",
                            f"output={ours_out}", "strategy=beam", "beam_size=5", f"device={args.device}"],
                           out / "agf.decode.log", args.threads))
    runs = finish(procs)
    n = len(files["test.ref"].read_text().split("\n")) - 1
    results["Eole"].update(decode_sentences_per_s=n / runs[0]["wall_s"],
                           test_bleu=bleu(eole_out, files["test.ref"], detok=args.spm))
    if not args.eole_only:
        results["agf-exp"].update(decode_sentences_per_s=n / runs[1]["wall_s"],
                                  test_bleu=bleu(ours_out, files["test.ref"]))


ROWS = [("target tokens/s (update time)", "train_tokens_per_s", "{:.0f}"),
        ("target tokens/s (end to end)", "end_to_end_tokens_per_s", "{:.0f}"),
        ("seconds per step", "seconds_per_step", "{:.3f}"), ("target tokens per batch", "tokens_per_batch", "{:.0f}"),
        ("validation accuracy % (at the same step)", "val_acc", "{:.2f}"),
        ("validation perplexity (label-smoothed)", "val_ppl_smoothed", "{:.2f}"),
        ("peak RSS MiB", "peak_rss_mib", "{:.0f}"), ("beam-5 test sentences/s (end to end)", "decode_sentences_per_s", "{:.2f}"),
        ("test BLEU (beam 5, test_2016_flickr)", "test_bleu", "{:.2f}"), ("parameters", "parameters", "{}")]


def table(results: Dict[str, Dict[str, Any]], left: str, right: str) -> str:
    """The figures of ``left`` and ``right`` and their ratio; ``right`` alone when ``left`` did not run."""
    if left not in results:
        lines = [f"| | {right} |", "|---|---|"]
        lines += [f"| {label} | {fmt.format(results[right][key])} |" for label, key, fmt in ROWS
                  if results[right].get(key) is not None]
        return "\n".join(lines)
    lines = [f"| | {left} | {right} | {left} / {right} |", "|---|---|---|---|"]
    for label, key, fmt in ROWS:
        a, b = results[left].get(key), results[right].get(key)
        if a is None and b is None:
            continue
        ratio = f"{a / b:.3f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "–"
        lines.append(f"| {label} | {'–' if a is None else fmt.format(a)} | {'–' if b is None else fmt.format(b)} | {ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiment", default="small")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--epochs", type=int, help="instead of --steps: agf-exp's recipe for this many epochs (12: "
                        "experiment=small to the end), Eole for the same number of updates")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each side")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="cuda: one GPU each (GPUs 0 and 1)")
    parser.add_argument("--spm", type=Path, default=ROOT / "results" / "multi30k-small" / "unigram8000.model")
    parser.add_argument("--eole-version", default=EOLE_VERSION)
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("AGF_CACHE_DIR", Path.home() / ".cache" / "agf_exp")) / "peer")
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "bench" / "peer")
    parser.add_argument("--max-test", type=int, help="decode only the first N test sentences (a quick look)")
    parser.add_argument("--agf-cost", action="store_true", help="also train pos=agf_m pcmv=true beside agf-exp's vanilla")
    parser.add_argument("--eole-bucket-size", type=int,
                        help=f"Eole's bucket_size (default: the number of training pairs, one epoch per bucket as "
                             f"agf-exp; Eole's own default {EOLE_BUCKET} repeats a small corpus within a bucket)")
    parser.add_argument("--eole-precision", choices=["same", "fp32", "bf16"], default="same",
                        help="Eole's compute_dtype (default: as agf-exp's trainer.precision); e.g. agf-exp in bf16 "
                             "against Eole in fp32, to compare with Eole at its fastest CPU setting")
    parser.add_argument("--eole-only", action="store_true", help="train and decode Eole alone (an Eole ablation)")
    parser.add_argument("--decode-only", action="store_true",
                        help="decode again from the checkpoints of the finished benchmark in --out (its peer.json): "
                             "re-measures decoding after a change, keeps the training figures")
    parser.add_argument("--print-config", action="store_true", help="print the Eole config and the mismatches, then stop")
    parser.add_argument("overrides", nargs="*", help="agf-exp overrides for both sides' settings (default pos=none)")
    args = parser.parse_args(argv)
    if args.eole_only and args.agf_cost:
        parser.error("--agf-cost measures agf-exp against itself; drop --eole-only")
    try:
        cfg = ours(args.experiment, args.overrides)
        if args.print_config:
            import yaml

            placeholder = {k: Path(f"<{k}>") for k in ("train.src", "train.tgt", "valid.src", "valid.tgt", "vocab")}
            eole_cfg, mismatches = eole_config(cfg, placeholder, args.steps, args.device, Path("<out>/eole/model"),
                                               args.eole_bucket_size or "<training pairs>", args.eole_precision)
            print(yaml.safe_dump(eole_cfg, sort_keys=False))
            print("Mismatches that remain:\n" + "\n".join(f"- {m}" for m in mismatches))
            return 0
        return run(args, cfg)
    except PeerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def decode_again(args, cfg) -> int:
    """``--decode-only``: both sides decode their checkpoints of the benchmark in ``--out`` again
    (side by side); the new decoding figures replace the old ones in its ``peer.json``."""
    report_file = args.out / "peer.json"
    if not report_file.is_file():
        raise PeerError(f"{report_file} does not exist: --decode-only needs a finished benchmark in --out")
    report = json.loads(report_file.read_text())
    args.steps, args.eole_only = report["steps"], "agf-exp" not in report["results"]
    files = {name: args.out / "data" / name for name in ("test.src", "test.raw", "test.ref")}
    decode_side_by_side(args, files, eole_env(args.cache, report["eole"]), args.out, report["results"],
                        cfg["trainer"]["max_len_a"])
    commit = git_commit()
    report["decoded_at_commit"] = commit
    print(f"decoded again at commit {commit} (trained at {report['commit']}):\n")
    print(table(report["results"], "agf-exp", "Eole"))
    atomic_write_bytes(report_file, (json.dumps(report, indent=1, default=str) + "\n").encode())
    return 0


def run(args, cfg) -> int:
    import torch

    out = args.out
    if args.decode_only:
        return decode_again(args, cfg)
    eole_exe = eole_env(args.cache, args.eole_version)
    for old in ("agf", "eole", "cost0", "cost1"):  # a fresh measurement (a finished run dir would be skipped)
        shutil.rmtree(out / old, ignore_errors=True)
    files = prepare_files(cfg, args.spm, out / "data", args.max_test)
    if args.eole_bucket_size is None:  # one epoch per bucket, each pair once, as agf-exp's epochs
        args.eole_bucket_size = len(files["train.src"].read_text().splitlines())
    if args.epochs:
        args.steps = steps_of_epochs(args.experiment, args.overrides, args.spm, args.epochs)
        print(f"{args.epochs} epochs of agf-exp's batches = {args.steps} updates (Eole trains as many)", flush=True)
    eole_cfg, mismatches = eole_config(cfg, files, args.steps, args.device, out / "eole" / "model",
                                       args.eole_bucket_size, args.eole_precision)
    print("Mismatches that remain:\n" + "\n".join(f"- {m}" for m in mismatches), flush=True)
    results = train_side_by_side(args, cfg, eole_cfg, eole_exe, out)
    decode_side_by_side(args, files, eole_exe, out, results, cfg["trainer"]["max_len_a"])
    machine = (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
               f"{args.device}, {args.threads} thread(s) per side, " + ("Eole alone" if args.eole_only else "both at once"))
    commit = git_commit()
    budget = f"{args.epochs} epochs ({args.steps} steps)" if args.epochs else f"{args.steps} steps"
    print(f"\n{budget} of experiment={args.experiment} {' '.join(args.overrides)}; {machine}; "
          f"Eole {args.eole_version} (bucket_size {args.eole_bucket_size}, compute_dtype "
          f"{eole_cfg['training']['compute_dtype']}); commit {commit}\n")
    print(table(results, "agf-exp", "Eole"))
    report = {"steps": args.steps, "epochs": args.epochs, "machine": machine, "commit": commit, "eole": args.eole_version,
              "eole_bucket_size": args.eole_bucket_size, "eole_compute_dtype": eole_cfg["training"]["compute_dtype"],
              "mismatches": mismatches, "results": results}
    if args.agf_cost:
        cost = agf_cost(args, cfg, out)
        print("\nagf-exp's AGF-M + PCM-V against its own vanilla, trained side by side:\n")
        print(table(cost, "pos=agf_m pcmv=true", "vanilla"))
        report["agf_cost"] = cost
    atomic_write_bytes(out / "peer.json", (json.dumps(report, indent=1, default=str) + "\n").encode())
    return 0


def agf_cost(args, cfg, out) -> Dict[str, Dict[str, Any]]:
    runs = {"pos=agf_m pcmv=true": ["pos=agf_m", "pcmv=true", "pe=false"], "vanilla": []}
    procs, dirs = [], {}
    for i, (name, extra) in enumerate(runs.items()):
        dirs[name] = out / f"cost{i}"
        procs.append(start(ours_command(args, cfg, dirs[name], extra), out / f"cost{i}.log", args.threads,
                           gpu=str(i) if args.device == "cuda" else None))
    return {name: read_ours(dirs[name], run) for name, run in zip(runs, finish(procs))}


if __name__ == "__main__":
    sys.exit(main())
