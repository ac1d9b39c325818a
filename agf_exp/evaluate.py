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
from typing import Any, Dict, List, Optional, Tuple

from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from . import checkpoint
from .config import Precision
from .data import SOURCES, DataError, Tokenizer, encode_pairs
from .atomic import atomic_write_bytes
from .data.corpus import read_lines
from .data.tokenizer import EOS
from .evaluation import evaluate_split, score_translations, translate
from .training import build_model, resolve_device, resolve_precision


@dataclass
class EvaluateConfig:
    ckpt: str = "???"
    split: Optional[str] = None  # train | valid | test
    input: Optional[str] = None  # a source text file instead of a split
    ref: Optional[str] = None  # references for `input`
    output: Optional[str] = None
    strategy: str = "beam"  # beam | greedy
    beam_size: int = 5
    len_penalty: float = 1.0
    max_len_a: float = 1.2
    max_len_b: int = 10
    batch_sentences: int = 64
    max_sentences: Optional[int] = None
    device: str = "auto"
    precision: Precision = Precision.auto
    data: Dict[str, Any] = field(default_factory=dict)  # overrides of the stored data config


def load_model(ckpt_path: Path, device) -> Tuple[Dict[str, Any], Tokenizer, Any]:
    """(checkpoint dict, its tokenizer, the model in eval mode on ``device``)."""
    ckpt = checkpoint.load(Path(ckpt_path))
    tok = Tokenizer(ckpt["tokenizer"])
    model = build_model(ckpt["config"], ckpt["vocab_size"], tok.pad_id).to(device)
    model.load_state_dict(ckpt["model"])
    model.eval()
    return ckpt, tok, model


def split_pairs(ckpt: Dict[str, Any], split: str, data_overrides: Optional[Dict[str, Any]] = None,
                max_sentences: Optional[int] = None) -> Tuple[List[str], List[str]]:
    """Source and reference lines of ``split`` of the run's data source, rebuilt from the config
    stored in the checkpoint (``data_overrides`` replace its keys, e.g. ``root``)."""
    stored = ckpt["config"]
    data_cfg = stored["data"]
    schema = SOURCES[data_cfg["name"]][0]
    typed = OmegaConf.merge(OmegaConf.structured(schema), data_cfg, data_overrides or {})
    corpus = SOURCES[typed.name][1](typed, stored["seed"])
    if split not in corpus.splits:
        raise ValueError(f"split={split!r} is unknown; use one of {sorted(corpus.splits)}")
    src_text, refs = corpus.splits[split]
    if max_sentences:
        src_text, refs = src_text[:max_sentences], refs[:max_sentences]
    return list(src_text), list(refs)


def run(cfg: EvaluateConfig) -> Dict[str, Any]:
    if not Path(cfg.ckpt).is_file():
        raise FileNotFoundError(f"ckpt={cfg.ckpt} does not exist; pass the path of a .pt file from a run's "
                                "checkpoints/ folder")
    if (cfg.split is None) == (cfg.input is None):
        raise ValueError("give exactly one of split=train|valid|test or input=<source file>")
    ckpt_path = Path(cfg.ckpt)
    device = resolve_device(cfg.device)
    amp = resolve_precision(cfg.precision, device)
    ckpt, tok, model = load_model(ckpt_path, device)
    result: Dict[str, Any] = {"ckpt": str(ckpt_path), "strategy": cfg.strategy}
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
    hyps = translate(model, tok, sources, strategy=cfg.strategy, beam_size=cfg.beam_size,
                     len_penalty=cfg.len_penalty, max_len_a=cfg.max_len_a, max_len_b=cfg.max_len_b,
                     batch_sentences=cfg.batch_sentences, device=device, amp_dtype=amp)
    out = Path(cfg.output) if cfg.output else ckpt_path.parent.parent / "eval" / f"{name}.{cfg.strategy}.txt"
    atomic_write_bytes(out, ("\n".join(hyps) + "\n").encode())
    result["output"] = str(out)
    if refs is not None:
        result.update(score_translations(hyps, refs))
    return result


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__)
        return 0
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(EvaluateConfig), OmegaConf.from_dotlist(argv))
        result = run(OmegaConf.to_object(cfg))
    except (OmegaConfBaseException, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
