"""Greedy and beam-search decoding with a key/value cache.

The cache holds each decoder layer's self-attention keys/values (grown by one step per token)
and the projected encoder memory for cross-attention (computed once). Positional modes see the
query at its absolute position ``t`` and keys ``0..t``, so cached decoding computes exactly the
logits of a full teacher-forced pass (tested per mode).

Length limit per sentence: ``max_len_a * source_length + max_len_b`` tokens (EOS is forced at the
limit). Beam hypotheses are ranked by ``sum log p / length ** len_penalty`` (fairseq's form;
the length counts EOS); a sentence stops when ``beam`` hypotheses have finished.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from typing import List, Optional

import torch

from .data.tokenizer import BOS, EOS, PAD
from .model import Seq2SeqTransformer, reorder_cache


class Strategy(str, enum.Enum):
    greedy = "greedy"
    beam = "beam"


@dataclass
class DecodeConfig:
    """How to translate: the same options wherever a model decodes (the end of training,
    ``python -m agf_exp.evaluate``, the ``lengths`` analysis)."""

    strategy: Strategy = Strategy.beam
    beam_size: int = 5
    len_penalty: float = 1.0  # beam scores are log p / length ** len_penalty
    max_len_a: float = 1.2  # decoded length limit: a * source length + b
    max_len_b: int = 10
    batch_sentences: int = 64  # sentences per decoding batch

    def problem(self, prefix: str = "") -> Optional[str]:
        """What is wrong with these options (one line naming the option and the fix), or None."""
        if Strategy(self.strategy) == Strategy.beam and not self.beam_size >= 1:
            return f"{prefix}beam_size={self.beam_size} must be >= 1 (1 is greedy search with beam scoring)"
        if not self.batch_sentences >= 1:
            return f"{prefix}batch_sentences={self.batch_sentences} must be >= 1"
        if not (math.isfinite(self.max_len_a) and self.max_len_a >= 0) or self.max_len_b < 1:
            return (f"{prefix}max_len_a={self.max_len_a}, max_len_b={self.max_len_b}: the length limit a * source "
                    "length + b needs a finite a >= 0 and b >= 1")
        if not math.isfinite(self.len_penalty):
            return f"{prefix}len_penalty={self.len_penalty} must be a finite number"
        return None


def decode_ids(model: Seq2SeqTransformer, src: torch.Tensor, decode: DecodeConfig) -> List[List[int]]:
    """Token ids (without BOS/EOS) of each source row's translation by ``decode.strategy``."""
    if Strategy(decode.strategy) == Strategy.greedy:
        return greedy_decode(model, src, decode.max_len_a, decode.max_len_b)
    return beam_search(model, src, decode.beam_size, decode.max_len_a, decode.max_len_b, decode.len_penalty)


def _max_lengths(src: torch.Tensor, a: float, b: int) -> torch.Tensor:
    return (src.ne(PAD).sum(1).float() * a + b).long().clamp_min(1)


@torch.no_grad()
def greedy_decode(model: Seq2SeqTransformer, src: torch.Tensor, max_len_a: float = 1.2,
                  max_len_b: int = 10) -> List[List[int]]:
    """Token ids (without BOS/EOS) of the argmax translation of each source row."""
    memory, src_pad = model.encode(src)
    n = src.shape[0]
    limits = _max_lengths(src, max_len_a, max_len_b)
    cache = [dict() for _ in model.decoder]
    last = torch.full((n, 1), BOS, dtype=torch.long, device=src.device)
    finished = torch.zeros(n, dtype=torch.bool, device=src.device)
    steps = []
    for t in range(int(limits.max())):
        logits = model.decode(last, memory, src_pad, cache=cache, start=t)[:, -1].float()
        logits[:, PAD] = float("-inf")
        logits[:, BOS] = float("-inf")
        nxt = logits.argmax(-1)
        nxt = torch.where(t + 1 >= limits, torch.full_like(nxt, EOS), nxt)
        nxt = nxt.masked_fill(finished, PAD)
        steps.append(nxt)
        finished |= nxt.eq(EOS)
        if bool(finished.all()):
            break
        last = nxt[:, None]
    out = torch.stack(steps, 1).tolist()
    return [[tok for tok in row[: row.index(EOS)] if tok != PAD] if EOS in row else row for row in out]


@torch.no_grad()
def beam_search(model: Seq2SeqTransformer, src: torch.Tensor, beam: int = 5, max_len_a: float = 1.2,
                max_len_b: int = 10, len_penalty: float = 1.0) -> List[List[int]]:
    """Token ids (without BOS/EOS) of the best beam hypothesis for each source row. A sentence
    whose search has ended leaves the batch (its rows of the memory, the cache and the beams are
    dropped), so the decoder only computes the sentences still searching."""
    n, device = src.shape[0], src.device
    memory, src_pad = model.encode(src)
    memory, src_pad = memory.repeat_interleave(beam, 0), src_pad.repeat_interleave(beam, 0)
    limits = _max_lengths(src, max_len_a, max_len_b)
    limits_rows = limits.repeat_interleave(beam)
    cache = [dict() for _ in model.decoder]
    tokens = torch.full((n * beam, 1), BOS, dtype=torch.long, device=device)
    scores = torch.full((n, beam), float("-inf"), device=device)
    scores[:, 0] = 0.0  # all beams start identical: keep one alive
    finished: List[List[tuple]] = [[] for _ in range(n)]
    searching = list(range(n))  # the sentence of each batch position (rows pos * beam ... + beam - 1)
    for t in range(int(limits.max())):
        logits = model.decode(tokens[:, -1:], memory, src_pad, cache=cache, start=t)[:, -1]
        lprobs = torch.log_softmax(logits.float(), dim=-1)
        lprobs[:, PAD] = float("-inf")
        lprobs[:, BOS] = float("-inf")
        at_limit = t + 1 >= limits_rows
        if bool(at_limit.any()):
            eos = lprobs[at_limit, EOS].clone()
            lprobs[at_limit] = float("-inf")
            lprobs[at_limit, EOS] = eos
        vocab = lprobs.shape[-1]
        cand = (scores.view(-1, 1) + lprobs).view(len(searching), beam * vocab)
        top_scores, top_idx = cand.topk(2 * beam, dim=1)
        top_scores, top_idx = top_scores.tolist(), top_idx.tolist()
        next_rows, next_tokens, next_scores, still = [], [], [], []
        for pos, i in enumerate(searching):
            alive = []
            for score, idx in zip(top_scores[pos], top_idx[pos]):
                if score == float("-inf"):
                    break
                row, tok = pos * beam + idx // vocab, idx % vocab
                if tok == EOS:
                    hyp = tokens[row, 1:].tolist()
                    finished[i].append((score / float(len(hyp) + 1) ** len_penalty, hyp))
                    if len(finished[i]) >= beam:
                        break
                else:
                    alive.append((row, tok, score))
                    if len(alive) == beam:
                        break
            if len(finished[i]) >= beam or not alive:
                continue  # this sentence's search has ended
            still.append(i)
            alive += [(pos * beam, PAD, float("-inf"))] * (beam - len(alive))
            for row, tok, score in alive:
                next_rows.append(row)
                next_tokens.append(tok)
                next_scores.append(score)
        if not still:
            break
        index = torch.tensor(next_rows, device=device)
        tokens = torch.cat([tokens.index_select(0, index), torch.tensor(next_tokens, device=device)[:, None]], 1)
        scores = torch.tensor(next_scores, device=device).view(len(still), beam)
        reorder_cache(cache, index)
        if len(still) < len(searching):  # the rows of ended sentences leave the batch
            memory, src_pad, limits_rows = memory[index], src_pad[index], limits_rows[index]
        searching = still
    return [max(hyps)[1] if hyps else [] for hyps in finished]
