"""Validation metrics, translation and its scoring, and a trained model with its data for the tools.

Token accuracy follows OpenNMT-py's "Validation accuracy" (the paper's metric): teacher-forced,
argmax over the vocabulary at every non-pad gold position of the target (all subword tokens and
EOS; BOS is the decoder's first input, never a label), counts summed over the whole split,
``100 * correct / tokens``. We report two losses: ``val_loss`` with the training label smoothing
(what OpenNMT-py >= 3.0.3 reports as its validation xent/ppl) and ``val_nll`` without it, whose
exponential is the true perplexity ``val_ppl``.

BLEU and chrF come from sacreBLEU on detokenised, cased hypotheses against the raw references
(BLEU tokenizer 13a); each score is stored with its signature. ``bleu_lc`` (lowercased) is a
secondary figure closer to the literature's lowercased Multi30k numbers.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import sacrebleu
import torch
import torch.nn.functional as F

from .data import Example, Tokenizer, collate, load_corpus, make_batches
from .data.tokenizer import PAD
from .decoding import DecodeConfig, decode_ids
from .devices import autocast
from .model import Seq2SeqTransformer, load_trained

log = logging.getLogger(__name__)


EVAL_CHUNK_ROWS = 1024  # target tokens per output-projection chunk when evaluating in mixed precision


def smoothed_loss(logits: torch.Tensor, gold: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Summed label-smoothed cross-entropy over non-pad gold tokens (the training loss)."""
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), gold.reshape(-1), ignore_index=PAD,
                           label_smoothing=label_smoothing, reduction="sum")


def token_stats(logits: torch.Tensor, gold: torch.Tensor, label_smoothing: float) -> Dict[str, torch.Tensor]:
    """Summed statistics of one batch: smoothed loss, NLL, correct argmax, scored tokens."""
    loss = smoothed_loss(logits, gold, label_smoothing)
    logits = logits.float().reshape(-1, logits.shape[-1])
    gold = gold.reshape(-1)
    keep = gold.ne(PAD)
    nll = F.cross_entropy(logits, gold, ignore_index=PAD, reduction="sum")
    correct = (logits.argmax(-1).eq(gold) & keep).sum()
    return {"loss": loss, "nll": nll, "correct": correct, "tokens": keep.sum()}


@torch.no_grad()
def evaluate_split(model: Seq2SeqTransformer, examples: Sequence[Example], *, batch_tokens: int,
                   device: torch.device, label_smoothing: float, amp_dtype=None) -> Dict[str, float]:
    """Teacher-forced loss, perplexity and OpenNMT-style token accuracy over a whole split."""
    was_training = model.training
    model.eval()
    totals = {"loss": 0.0, "nll": 0.0, "correct": 0, "tokens": 0}
    start = time.perf_counter()
    for idx in make_batches(examples, batch_tokens, shuffle=False):
        src, tgt = (t.to(device) for t in collate(examples, idx))
        if amp_dtype is None:  # fp32: the whole batch's logits at once (the results of every fp32 run)
            with autocast(device, amp_dtype):
                logits = model(src, tgt[:, :-1])
            stats = [token_stats(logits, tgt[:, 1:], label_smoothing)]
        else:  # mixed precision: the output projection chunk by chunk, never the [tokens x vocab] fp32 copies
            with autocast(device, amp_dtype):
                hidden = model(src, tgt[:, :-1], return_hidden=True)
            hidden, gold = hidden.reshape(-1, hidden.shape[-1]), tgt[:, 1:].reshape(-1)
            stats = []
            for i in range(0, hidden.shape[0], EVAL_CHUNK_ROWS):
                with autocast(device, amp_dtype):
                    logits = model.generator(hidden[i:i + EVAL_CHUNK_ROWS])
                stats.append(token_stats(logits, gold[i:i + EVAL_CHUNK_ROWS], label_smoothing))
        for part in stats:
            for key, value in part.items():
                totals[key] += value.item()
    model.train(was_training)
    n = max(totals["tokens"], 1)
    return {
        "val_loss": totals["loss"] / n,
        "val_nll": totals["nll"] / n,
        "val_ppl": math.exp(min(totals["nll"] / n, 50.0)),
        "val_acc": 100.0 * totals["correct"] / n,
        "val_tokens": totals["tokens"],
        "val_seconds": time.perf_counter() - start,
    }


@torch.no_grad()
def translate(model: Seq2SeqTransformer, tokenizer: Tokenizer, sources: Sequence[List[int]], decode: DecodeConfig,
              device: torch.device = torch.device("cpu"), amp: Optional[torch.dtype] = None) -> List[str]:
    """Detokenised translations of encoded sources (each ending in EOS), in input order, decoded
    in batches of ``decode.batch_sentences`` sources of similar length under autocast ``amp``."""
    was_training = model.training
    model.eval()
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    out: List[Optional[str]] = [None] * len(sources)
    for start in range(0, len(order), decode.batch_sentences):
        idx = order[start:start + decode.batch_sentences]
        src, _ = collate([(sources[i], [PAD]) for i in idx], range(len(idx)))
        with autocast(device, amp):
            ids = decode_ids(model, src.to(device), decode)
        for i, text in zip(idx, tokenizer.decode(ids)):
            out[i] = text
    model.train(was_training)
    return out  # type: ignore[return-value]


def load_model(ckpt_path: Path, device) -> Tuple[Dict[str, Any], Tokenizer, Any]:
    """(checkpoint dict, its tokenizer, the model in eval mode on ``device``)."""
    ckpt, model = load_trained(ckpt_path, device)
    return ckpt, Tokenizer(ckpt["tokenizer"]), model


def split_pairs(ckpt: Dict[str, Any], split: str, data_overrides: Optional[Dict[str, Any]] = None,
                max_sentences: Optional[int] = None) -> Tuple[List[str], List[str]]:
    """Source and reference lines of ``split`` of the run's data source, rebuilt from the config
    stored in the checkpoint (``data_overrides`` replace its keys, e.g. ``root``)."""
    corpus = load_corpus(ckpt["config"]["data"], ckpt["config"]["seed"], data_overrides)
    if split not in corpus.splits:
        raise ValueError(f"split={split!r} is unknown; use one of {sorted(corpus.splits)}")
    src_text, refs = corpus.splits[split]
    if max_sentences:
        src_text, refs = src_text[:max_sentences], refs[:max_sentences]
    return list(src_text), list(refs)


_noted_periods = False


def _references_end_in_spaced_periods(hyps: Sequence[str], refs: Sequence[str]) -> bool:
    """Whether sacreBLEU's "tokenized period" check (>= 100 hypotheses ending in " .") would fire
    only because the references themselves are written that way (the synthetic task's are):
    then the hypotheses follow their data and were detokenised; the check is moot."""
    global _noted_periods
    spaced = sum(h.endswith(" .") for h in hyps)
    if spaced < 100 or sum(r.endswith(" .") for r in refs) < spaced // 2:
        return False
    if not _noted_periods:
        log.info("%d hypotheses end in ' .', as their references do: sacreBLEU's tokenized-period warning "
                 "is switched off (the text is detokenised; this data writes its periods that way)", spaced)
        _noted_periods = True
    return True


def score_translations(hyps: Sequence[str], refs: Sequence[str]) -> Dict[str, object]:
    """sacreBLEU BLEU (cased, 13a), chrF, and lowercased BLEU, with signatures."""
    force = _references_end_in_spaced_periods(hyps, refs)  # BLEU's signature does not include `force`
    bleu, chrf, bleu_lc = sacrebleu.BLEU(force=force), sacrebleu.CHRF(), sacrebleu.BLEU(lowercase=True, force=force)
    b = bleu.corpus_score(list(hyps), [list(refs)])
    c = chrf.corpus_score(list(hyps), [list(refs)])
    lc = bleu_lc.corpus_score(list(hyps), [list(refs)])
    return {
        "bleu": b.score, "chrf": c.score, "bleu_lc": lc.score,
        "bleu_signature": str(bleu.get_signature()), "chrf_signature": str(chrf.get_signature()),
        "bleu_lc_signature": str(bleu_lc.get_signature()), "sentences": len(hyps),
    }
