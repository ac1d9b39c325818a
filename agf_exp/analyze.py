"""Analysis tools on runs and checkpoints.

    python -m agf_exp.analyze curve run=outputs/runs/X [metric=val_acc] [out=PNG]
    python -m agf_exp.analyze curve values=[62.9851,67.6618,69.025,69.7529,70.1426,70.4782,70.6026,70.7271,70.7603,70.9213]
    python -m agf_exp.analyze decay ckpt=outputs/runs/X/checkpoints/best.pt [split=valid] [max_sentences=1000]
                                    [max_distance=40] [min_count=20] [out=DIR] [data.root=...]
    python -m agf_exp.analyze heads ckpt=... [split=valid] [max_sentences=500] [n_perms=20] [max_distance=64]
                                    [min_count=20] [out=DIR] [data.root=...]
    python -m agf_exp.analyze lengths ckpt=... [split=test] [buckets=[10,20,30,40]] [strategy=beam]
                                      [max_sentences=N] [out=DIR] [data.root=...]

``curve`` fits ``a - b·x^(-c)`` and ``a - b·e^(-c·x)`` to per-epoch validation accuracy (a run's
metrics.jsonl, or numbers given as ``values=[...]`` at epochs 1, 2, ...) and prints the ceilings
with 95% intervals, R², RMSE, AIC and the leave-last-out prediction error (agf_exp/analysis/curves.py).

``decay`` measures, per self-attention module and head, the mean attention weight by signed
relative distance on a split and fits a power law ``G/(1+d/r)^k`` and an exponential ``G·e^(−λd)``
to each side, reporting which is better on the far half of the distances
(agf_exp/analysis/decay.py).

``heads`` scores every head of every attention module as positional or symbolic: permutation
scores ``P``/``S`` (key contents moved among fixed positions) and held-out correlation ratios
``η_pos``/``η_sym`` of the logits on signed distance and on key token id, as a layer × head table
and heat map (agf_exp/analysis/heads.py, where both are defined).

``lengths`` scores a checkpoint per source-length bucket (BLEU, chrF, token accuracy, perplexity)
and marks the buckets beyond the training ``data.max_len``: train with ``data.max_len=N`` and
evaluate on longer sentences (``split=long`` with ``data=synthetic``; the top buckets of Multi30k's
test split) to compare length extrapolation (agf_exp/analysis/lengths.py).

Outputs: a Markdown table on stdout, JSON and PNGs in ``out`` (default ``<run dir>/analysis``).
With ``wandb=true`` (or ``wandb=auto``, the default: when the run logged to W&B) the PNGs are also
logged to the run's W&B run (resumed by the id in the checkpoint or summary.json).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import OmegaConf

from .cli import TOOL_ERRORS, fail, parse, wants_help
from .decoding import DecodeConfig, Strategy
from .devices import resolve_device
from .evaluation import load_model, split_pairs
from .runfiles import read_config, read_json


@dataclass
class CurveArgs:
    run: Optional[str] = None
    values: Optional[List[float]] = None
    metric: str = "val_acc"
    out: Optional[str] = None  # PNG path (default <run>/analysis/learning_curve_fit.png or ./learning_curve_fit.png)
    wandb: str = "auto"  # auto | true | false


@dataclass
class CheckpointArgs:
    """What every tool that reads a checkpoint and a split takes."""

    ckpt: str = "???"
    split: str = "valid"
    max_sentences: Optional[int] = 1000
    device: str = "auto"
    out: Optional[str] = None  # folder (default <run dir>/analysis)
    wandb: str = "auto"  # auto | true | false
    data: Dict[str, Any] = field(default_factory=dict)  # overrides of the stored data config


@dataclass
class DecayArgs(CheckpointArgs):
    max_distance: int = 40
    min_count: int = 20
    batch_tokens: int = 4096


@dataclass
class HeadsArgs(CheckpointArgs):
    max_sentences: Optional[int] = 500
    n_perms: int = 20
    max_distance: int = 64
    min_count: int = 20
    batch_tokens: int = 2048
    seed: int = 0


@dataclass
class LengthsArgs(CheckpointArgs):
    split: str = "test"
    max_sentences: Optional[int] = None
    buckets: List[int] = field(default_factory=lambda: [10, 20, 30, 40])  # upper edges, source subword tokens
    strategy: Strategy = Strategy.beam  # len_penalty, max_len_a/b: the run's trainer.* values
    beam_size: int = 5
    batch_sentences: int = 64

    def decode(self, trainer: Dict[str, Any]) -> DecodeConfig:
        """This tool's decoding: its strategy, beam and batch, the run's length settings."""
        return DecodeConfig(strategy=self.strategy, beam_size=self.beam_size, batch_sentences=self.batch_sentences,
                            len_penalty=trainer.get("len_penalty", 1.0), max_len_a=trainer.get("max_len_a", 1.2),
                            max_len_b=trainer.get("max_len_b", 10))


@dataclass
class Loaded:
    ckpt_path: Path
    ckpt: Dict[str, Any]
    tokenizer: Any
    model: Any
    device: Any
    src: List[str]
    ref: List[str]
    run_dir: Path
    out: Path  # where the tool writes

    def log_images(self, images: Dict[str, Path], setting: str) -> None:
        _log_to_wandb(self.run_dir, self.ckpt["config"], self.ckpt.get("state", {}).get("wandb_id"), images, setting)


def _load(args: CheckpointArgs) -> Loaded:
    device = resolve_device(args.device)
    ckpt_path = Path(args.ckpt)
    ckpt, tok, model = load_model(ckpt_path, device)
    src, ref = split_pairs(ckpt, args.split, args.data, args.max_sentences)
    run_dir = ckpt_path.parent.parent
    out = Path(args.out) if args.out else run_dir / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    return Loaded(ckpt_path, ckpt, tok, model, device, src, ref, run_dir, out)


def _log_to_wandb(run_dir: Optional[Path], config: Optional[dict], wandb_id: Optional[str], images: Dict[str, Path],
                  setting: str) -> None:
    """Log ``images`` to the run's W&B run (resumed by id) when asked, or when the run used W&B."""
    used = bool(config) and (config.get("logger") or {}).get("name") == "wandb"
    if setting == "false" or (setting == "auto" and not (used and wandb_id)):
        return
    if not wandb_id or run_dir is None:
        print("note: no W&B run id recorded for this run; images not logged to W&B", file=sys.stderr)
        return
    from .config import LoggerConfig
    from .loggers import WandbLogger

    logger_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(LoggerConfig),
                                                     (config or {}).get("logger") or {}))
    logger = WandbLogger(logger_cfg, config or {}, run_dir, run_id=wandb_id)
    try:
        logger.log_images({f"analysis/{k}": v for k, v in images.items()}, step=None)
    finally:
        logger.finish()


def curve(args: CurveArgs) -> int:
    from .analysis import curves

    if (args.run is None) == (args.values is None):
        raise ValueError("give exactly one of run=<run dir> or values=[...]")
    if args.run is not None:
        x, y = curves.curve_from_run(Path(args.run), args.metric)
        default_out = Path(args.run) / "analysis" / "learning_curve_fit.png"
    else:
        y = [float(v) for v in args.values]
        x = list(range(1, len(y) + 1))
        default_out = Path("learning_curve_fit.png")
    upper = curves.ACCURACY_MAX if args.metric.endswith("acc") else None  # an accuracy in % has a ceiling <= 100
    fits = curves.fit_learning_curve(x, y, upper=upper)
    sys.stdout.write(curves.to_markdown(fits, x, y))
    out = Path(args.out) if args.out else default_out
    png = curves.plot(fits, x, y, out, title=str(args.run or "values"))
    out.with_suffix(".json").write_text(json.dumps({"x": list(x), "y": list(y), "fits": curves.as_dict(fits)}, indent=2))
    print(f"wrote {png} and {out.with_suffix('.json')}")
    if args.run is not None:
        run_dir = Path(args.run)
        summary = read_json(run_dir / "summary.json") if (run_dir / "summary.json").is_file() else {}
        config = read_config(run_dir / "config.yaml") if (run_dir / "config.yaml").is_file() else {}
        _log_to_wandb(run_dir, config, summary.get("wandb_id"), {"learning_curve_fit": png}, args.wandb)
    return 0


def decay(args: DecayArgs) -> int:
    from .analysis import decay as dec
    from .data import encode_pairs

    run = _load(args)
    examples = encode_pairs(run.tokenizer, run.src, run.ref)
    profiles = dec.attention_profiles(run.model, examples, max_distance=args.max_distance,
                                      batch_tokens=args.batch_tokens, device=run.device)
    fits = dec.fit_profiles(profiles, args.min_count)
    sys.stdout.write(dec.to_markdown(fits))
    written = dec.plot(profiles, fits, run.out, args.min_count)
    data = {"ckpt": str(run.ckpt_path), "split": args.split, "sentences": len(examples), "fits": dec.as_dicts(fits),
            "profiles": {p.module: {"attn_type": p.attn_type, "offsets": p.offsets.tolist(), "count": p.count.tolist(),
                                    "mean": p.mean.tolist()} for p in profiles}}
    (run.out / "decay.json").write_text(json.dumps(data, indent=1, default=float))
    print(f"wrote {run.out / 'decay.json'} and {len(written)} PNGs in {run.out}")
    run.log_images({f"decay/{k}": v for k, v in written.items()}, args.wandb)
    return 0


def heads(args: HeadsArgs) -> int:
    from .analysis import heads as hd
    from .data import encode_pairs

    if args.n_perms < 1:
        raise ValueError(f"n_perms={args.n_perms}; use at least 1 permutation per query row")
    run = _load(args)
    examples = encode_pairs(run.tokenizer, run.src, run.ref)
    scores = hd.head_scores(run.model, examples, pad_id=run.tokenizer.pad_id, vocab_size=run.ckpt["vocab_size"],
                            n_perms=args.n_perms, max_distance=args.max_distance, min_count=args.min_count,
                            batch_tokens=args.batch_tokens, seed=args.seed, device=run.device)
    pe = bool(run.ckpt["config"].get("pe"))
    positional = hd.positional_types(run.model)
    sys.stdout.write(hd.to_markdown(scores, pe=pe, positional=positional))
    written = hd.plot(scores, run.out)
    (run.out / "heads.json").write_text(json.dumps({"ckpt": str(run.ckpt_path), "split": args.split, "pe": pe,
                                                    "positional_types": positional,
                                                    "sentences": len(examples), "n_perms": args.n_perms,
                                                    "heads": hd.as_dicts(scores)}, indent=1, default=float))
    print(f"wrote {run.out / 'heads.json'}, {written['heatmap']} and {written['plane']}")
    run.log_images({f"heads/{k}": v for k, v in written.items()}, args.wandb)
    return 0


def lengths(args: LengthsArgs) -> int:
    from .analysis import lengths as ln

    ln.assign([1], args.buckets)  # validates the edges before any work
    run = _load(args)
    stored = run.ckpt["config"]
    train_max_len = stored["data"].get("max_len")
    trainer = stored["trainer"]
    results, hyps, _ = ln.evaluate_by_length(
        run.model, run.tokenizer, run.src, run.ref, args.buckets, args.decode(trainer), train_max_len=train_max_len,
        label_smoothing=trainer.get("label_smoothing", 0.0), device=run.device)
    sys.stdout.write(ln.to_markdown(results, train_max_len))
    name = f"lengths_{args.split}"
    png = ln.plot(results, run.out / f"{name}.png", train_max_len,
                  title=f"{stored.get('run_name', '')} on {args.split} ({args.strategy.value})")
    (run.out / f"{name}.json").write_text(json.dumps(
        {"ckpt": str(run.ckpt_path), "split": args.split, "strategy": args.strategy.value, "buckets": list(args.buckets),
         "train_max_len": train_max_len, "results": ln.as_dicts(results)}, indent=1))
    (run.out / f"{name}.{args.strategy.value}.txt").write_text("\n".join(hyps) + "\n")
    print(f"wrote {run.out / f'{name}.json'} and {png}")
    run.log_images({f"lengths/{args.split}": png}, args.wandb)
    return 0


TOOLS = {"curve": (CurveArgs, curve), "decay": (DecayArgs, decay), "heads": (HeadsArgs, heads),
         "lengths": (LengthsArgs, lengths)}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or wants_help(argv):
        print(__doc__)
        return 0
    tool, rest = argv[0], argv[1:]
    if tool not in TOOLS:
        print(f"error: unknown tool {tool!r}; use one of {', '.join(TOOLS)} (see --help)", file=sys.stderr)
        return 2
    schema, fn = TOOLS[tool]
    try:
        args = parse(schema, rest)
        args.wandb = str(args.wandb).lower()  # wandb=false arrives as the boolean False
        if args.wandb not in ("auto", "true", "false"):
            raise ValueError(f"wandb={args.wandb!r}; use auto, true or false")
        return fn(args)
    except TOOL_ERRORS as e:
        return fail(e)


if __name__ == "__main__":
    sys.exit(main())
