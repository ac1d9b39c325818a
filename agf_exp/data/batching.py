"""Token-count batching: length-bucketed, shuffled per epoch, deterministic from the seed."""
from __future__ import annotations

import random
from typing import List, Sequence, Tuple

import numpy as np

from .tokenizer import PAD

Example = Tuple[List[int], List[int]]  # (source ids + EOS, BOS + target ids + EOS)


def example_lengths(examples: Sequence[Example]) -> Tuple[np.ndarray, np.ndarray]:
    """(source lengths, target lengths) of ``examples``, as int64 arrays. A container with a
    ``lengths()`` method (the memory-mapped training set) answers without reading its ids."""
    if hasattr(examples, "lengths"):
        return examples.lengths()
    n = len(examples)
    return (np.fromiter((len(e[0]) for e in examples), np.int64, n),
            np.fromiter((len(e[1]) for e in examples), np.int64, n))


def make_batches(examples: Sequence[Example], batch_tokens: int, *, shuffle: bool, seed: int = 0,
                 epoch: int = 0) -> List[np.ndarray]:
    """Group example indices into batches whose padded size ``n * max(len)`` stays within
    ``batch_tokens``. Examples are sorted by (longest side, source length, target length); with
    ``shuffle``, ties in length are broken by a seeded permutation and the batch order is
    shuffled; both depend only on ``(seed, epoch)``, so a resumed run sees the same batches.
    Works from the length arrays alone (one stable sort), so it also serves corpora of millions
    of pairs that stay on disk; each batch is an int64 array of indices."""
    src_len, tgt_len = example_lengths(examples)
    size = np.maximum(src_len, tgt_len)
    n = len(size)
    if shuffle:
        perm = list(range(n))
        random.Random(f"{seed}-{epoch}").shuffle(perm)
        order = np.asarray(perm, dtype=np.int64)
        del perm
    else:
        order = np.arange(n, dtype=np.int64)
    order = order[np.lexsort((tgt_len[order], src_len[order], size[order]))]  # stable: ties keep the permutation
    # greedy: sizes ascend, so a batch's longest example is the one just added
    bounds, start = [0], 0
    for pos, s in enumerate(size[order].tolist()):
        if pos > start and s * (pos - start + 1) > batch_tokens:
            bounds.append(pos)
            start = pos
    bounds.append(n)
    batches = [order[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    if shuffle:
        random.Random(f"{seed}-{epoch}-order").shuffle(batches)
    return batches


def pad(seqs: Sequence[Sequence[int]]):
    """``[len(seqs), longest]`` long tensor padded with PAD."""
    import torch  # here, not at import: binarisation workers load this package without torch

    out = torch.full((len(seqs), max(len(s) for s in seqs)), PAD, dtype=torch.long)
    for row, s in enumerate(seqs):
        out[row, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def collate(examples: Sequence[Example], indices: Sequence[int]):
    """``(src [B, Ls], tgt [B, Lt])`` padded with PAD; tgt includes BOS and EOS."""
    return pad([examples[i][0] for i in indices]), pad([examples[i][1] for i in indices])
