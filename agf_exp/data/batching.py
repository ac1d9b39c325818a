"""Token-count batching: length-bucketed, shuffled per epoch, deterministic from the seed."""
from __future__ import annotations

import random
from typing import List, Sequence, Tuple

import torch

from .tokenizer import PAD

Example = Tuple[List[int], List[int]]  # (source ids + EOS, BOS + target ids + EOS)


def make_batches(examples: Sequence[Example], batch_tokens: int, *, shuffle: bool, seed: int = 0,
                 epoch: int = 0) -> List[List[int]]:
    """Group example indices into batches whose padded size ``n * max(len)`` stays within
    ``batch_tokens``. With ``shuffle``, ties in length are broken by a seeded permutation and the
    batch order is shuffled; both depend only on ``(seed, epoch)``, so a resumed run sees the
    same batches."""
    order = list(range(len(examples)))
    if shuffle:
        random.Random(f"{seed}-{epoch}").shuffle(order)
    order.sort(key=lambda i: (max(len(examples[i][0]), len(examples[i][1])), len(examples[i][0]), len(examples[i][1])))
    batches, current, longest = [], [], 0
    for i in order:
        size = max(len(examples[i][0]), len(examples[i][1]))
        if current and max(longest, size) * (len(current) + 1) > batch_tokens:
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, size)
    if current:
        batches.append(current)
    if shuffle:
        random.Random(f"{seed}-{epoch}-order").shuffle(batches)
    return batches


def pad(seqs: Sequence[Sequence[int]]) -> torch.Tensor:
    out = torch.full((len(seqs), max(len(s) for s in seqs)), PAD, dtype=torch.long)
    for row, s in enumerate(seqs):
        out[row, : len(s)] = torch.as_tensor(s, dtype=torch.long)
    return out


def collate(examples: Sequence[Example], indices: Sequence[int]):
    """``(src [B, Ls], tgt [B, Lt])`` padded with PAD; tgt includes BOS and EOS."""
    return pad([examples[i][0] for i in indices]), pad([examples[i][1] for i in indices])
