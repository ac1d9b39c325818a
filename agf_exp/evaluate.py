"""Translate and score any checkpoint on any split or text file.

    python -m agf_exp.evaluate ckpt=outputs/runs/X/checkpoints/best.pt split=test
    python -m agf_exp.evaluate ckpt=... split=valid strategy=greedy
    python -m agf_exp.evaluate ckpt=... input=my.en ref=my.de output=my.hyp.de
    python -m agf_exp.evaluate ckpt=... split=test data.root=/path/to/multi30k

With ``split``, the run's data source is rebuilt from the config stored in the checkpoint (its
keys can be overridden as ``data.<key>=...``) and encoded with the checkpoint's own
sentencepiece model; teacher-forced accuracy/perplexity are reported too. With ``input``, the
file is translated (and scored when ``ref`` is given). Scores are printed as JSON; translations go
to ``output`` (default: ``<run dir>/eval/<split or input name>.<strategy>.txt``).
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from .atomic import atomic_write_bytes
from .cli import run_tool
from .data import DataError, encode_pairs
from .data.corpus import read_lines
from .data.tokenizer import EOS
from .decoding import DecodeConfig
from .devices import Precision, resolve_device, resolve_precision
from .evaluation import evaluate_split, load_model, score_translations, split_pairs, translate


@dataclass
class EvaluateConfig(DecodeConfig):
    """The decoding options (``strategy``, ``beam_size``, ...) and what to translate."""

    ckpt: str = "???"
    split: Optional[str] = None  # train | valid | test
    input: Optional[str] = None  # a source text file instead of a split
    ref: Optional[str] = None  # references for `input`
    output: Optional[str] = None
    max_sentences: Optional[int] = None
    device: str = "auto"
    precision: Precision = Precision.auto
    data: Dict[str, Any] = field(default_factory=dict)  # overrides of the stored data config


def run(cfg: EvaluateConfig) -> Dict[str, Any]:
    if not Path(cfg.ckpt).is_file():
        raise FileNotFoundError(f"ckpt={cfg.ckpt} does not exist; pass the path of a .pt file from a run's "
                                "checkpoints/ folder")
    if (cfg.split is None) == (cfg.input is None):
        raise ValueError("give exactly one of split=train|valid|test or input=<source file>")
    problem = cfg.problem()
    if problem:
        raise ValueError(problem)
    if cfg.max_sentences is not None and cfg.max_sentences < 1:
        raise ValueError(f"max_sentences={cfg.max_sentences} must be >= 1 (or null for the whole split)")
    ckpt_path = Path(cfg.ckpt)
    device = resolve_device(cfg.device)
    amp = resolve_precision(cfg.precision, device)
    ckpt, tok, model = load_model(ckpt_path, device)
    result: Dict[str, Any] = {"ckpt": str(ckpt_path), "strategy": cfg.strategy.value}
    if cfg.split is not None:
        stored = ckpt["config"]
        src_text, refs = split_pairs(ckpt, cfg.split, cfg.data, cfg.max_sentences)
        examples = encode_pairs(tok, src_text, refs)
        metrics = evaluate_split(model, examples, batch_tokens=8192, device=device,
                                 label_smoothing=stored["trainer"]["label_smoothing"], amp_dtype=amp)
        result.update({key.replace("val_", "", 1): value for key, value in metrics.items()})
        sources = [s for s, _ in examples]
        name = cfg.split
    else:
        src_text = read_lines(Path(cfg.input))
        refs = read_lines(Path(cfg.ref)) if cfg.ref else None
        if refs is not None and len(refs) != len(src_text):
            raise DataError(f"{cfg.input} has {len(src_text)} lines but {cfg.ref} has {len(refs)}")
        if cfg.max_sentences:
            src_text = src_text[: cfg.max_sentences]
            refs = refs[: cfg.max_sentences] if refs else None
        sources = [s + [EOS] for s in tok.encode(src_text)]
        name = Path(cfg.input).name
    hyps = translate(model, tok, sources, cfg, device, amp)
    out = Path(cfg.output) if cfg.output else ckpt_path.parent.parent / "eval" / f"{name}.{cfg.strategy.value}.txt"
    atomic_write_bytes(out, ("\n".join(hyps) + "\n").encode())
    result["output"] = str(out)
    if refs is not None:
        result.update(score_translations(hyps, refs))
    return result


def _print_run(cfg: EvaluateConfig) -> int:
    print(json.dumps(run(cfg), indent=2))
    return 0


def main(argv=None) -> int:
    return run_tool(__doc__, EvaluateConfig, _print_run, argv)


if __name__ == "__main__":
    sys.exit(main())
