"""Data: raw parallel corpora -> joint sentencepiece -> id sequences -> token-count batches.

Sources (``data=...``): ``synthetic`` (generated, the default), ``multi30k``, ``files``,
``wmt17_en_de``; each is one module of this package that registers its config schema and loader
with :func:`register_source` (found without a list: add a file and ``conf/data/<name>.yaml``).
Large training splits are binarised once and streamed from disk (:mod:`agf_exp.data.binarized`).
"""
from __future__ import annotations

import importlib
import logging
import pkgutil
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

from omegaconf import OmegaConf

from .batching import Example, collate, make_batches
from . import binarized
from .corpus import JOIN_PREFIX, SOURCES, SPLITS, DataConfig, DataError, ParallelCorpus, expand, joined, register_source
from .tokenizer import BOS, EOS, Tokenizer, load_model_file, train_or_load

# every module of this package is imported, so a new source file that calls register_source is
# found without editing a list (as positional modes are)
for _info in pkgutil.iter_modules(__path__):
    if _info.name != "__main__":
        importlib.import_module(f"{__name__}.{_info.name}")

log = logging.getLogger(__name__)


@dataclass
class DataBundle:
    tokenizer: Tokenizer
    examples: Dict[str, Sequence[Example]]  # per split, id sequences (train may be memory-mapped)
    raw: Dict[str, Tuple[List[str], List[str]]]  # per split, raw (src, tgt) text; train is filtered (absent if binarised)
    description: str
    dropped_train: int


def load_corpus(cfg: DataConfig | Dict[str, Any], seed: int,
                overrides: Optional[Dict[str, Any]] = None) -> ParallelCorpus:
    """The corpus of a data config: a typed one, or a plain dict as a run dir or checkpoint stores
    it (typed here by its source's schema; ``overrides`` replace its keys, e.g. ``root``)."""
    name = cfg["name"] if isinstance(cfg, dict) else cfg.name
    if name not in SOURCES:
        raise DataError(f"unknown data source {name!r}; known: {sorted(SOURCES)}")
    if isinstance(cfg, dict) or overrides:
        cfg = OmegaConf.merge(OmegaConf.structured(SOURCES[name][0]), cfg, overrides or {})
    return SOURCES[name][1](cfg, seed)


def encode_pairs(tok: Tokenizer, src: List[str], tgt: List[str]) -> List[Example]:
    return [(s + [EOS], [BOS] + t + [EOS]) for s, t in zip(tok.encode(src), tok.encode(tgt))]


def prepare_data(cfg: DataConfig, seed: int) -> DataBundle:
    """Load, tokenise and encode every split. Training pairs with an empty side or more than
    ``max_len`` subword tokens on either side are dropped (valid/test are kept whole)."""
    corpus = load_corpus(cfg, seed)
    examples, raw, dropped = {}, {}, 0
    if corpus.train_pairs is not None and getattr(cfg, "train_max_src_words", None):
        raise DataError("data.train_max_src_words works on corpora held in memory; this training split is "
                        "streamed (binarised): filter its files beforehand, or set data.train_max_src_words=null")
    if corpus.train_pairs is not None:  # a large corpus: streamed from its binarised cache
        tok, examples["train"] = binarized.prepare(cfg, corpus.train_pairs)
        dropped = examples["train"].dropped
    elif cfg.subword_file:
        tok = load_model_file(cfg.subword_file)
    else:
        train_src, train_tgt = corpus.splits["train"]
        tok = train_or_load(train_src + train_tgt, cfg.vocab_size, cfg.subword_model.value, expand(cfg.cache_dir))
    for split in SPLITS:
        if split in examples:
            continue
        src, tgt = corpus.splits[split]
        encoded = encode_pairs(tok, src, tgt)
        if split == "train":
            words = getattr(cfg, "train_max_src_words", None)
            keep = [i for i, (s, t) in enumerate(encoded)
                    if src[i] and tgt[i] and len(s) - 1 <= cfg.max_len and len(t) - 2 <= cfg.max_len
                    and (words is None or len(src[i].split()) <= words)]
            dropped = len(encoded) - len(keep)
            encoded = [encoded[i] for i in keep]
            src, tgt = [src[i] for i in keep], [tgt[i] for i in keep]
            if not encoded:
                raise DataError(f"no training pair has at most data.max_len={cfg.max_len} tokens"
                                + (f" and a source of at most data.train_max_src_words={words} words" if words else "")
                                + "; raise the limit")
        examples[split], raw[split] = encoded, (src, tgt)
    for k in getattr(cfg, "test_joins", None) or ():  # joined test inputs, never filtered by length
        src, tgt = joined(raw["test"][0], k), joined(raw["test"][1], k)
        examples[f"{JOIN_PREFIX}{k}"], raw[f"{JOIN_PREFIX}{k}"] = encode_pairs(tok, src, tgt), (src, tgt)
    log.info("%s: vocab %d, train %d pairs (%d dropped), valid %d, test %d%s", corpus.description,
             tok.vocab_size, len(examples["train"]), dropped, len(examples["valid"]), len(examples["test"]),
             "".join(f", {k} {len(v)}" for k, v in examples.items() if k.startswith(JOIN_PREFIX)))
    return DataBundle(tok, examples, raw, corpus.description, dropped)


__all__ = ["DataBundle", "DataConfig", "DataError", "Example", "JOIN_PREFIX", "SOURCES", "SPLITS", "Tokenizer", "collate",
           "load_corpus", "make_batches", "prepare_data", "register_source"]
