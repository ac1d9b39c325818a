"""Attaching analysis recorders to a model's attention modules, and the teacher-forced pass
that feeds them (shared by :mod:`.decay` and :mod:`.heads`)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Dict, Iterator, Optional, Sequence

import torch

from ..attention import AttentionRecord, MultiHeadAttention

Recorder = Callable[[AttentionRecord], None]


@contextmanager
def recording(model: torch.nn.Module, make: Callable[[str, MultiHeadAttention], Optional[Recorder]]
              ) -> Iterator[Dict[str, Recorder]]:
    """Set ``module.recorder = make(name, module)`` on every attention module for which ``make``
    returns a recorder (those modules run the eager path), and remove them all on exit."""
    recs: Dict[str, Recorder] = {}
    modules = []
    for name, module in model.named_modules():
        if isinstance(module, MultiHeadAttention):
            rec = make(name, module)
            if rec is not None:
                module.recorder = rec
                recs[name] = rec
                modules.append(module)
    try:
        yield recs
    finally:
        for module in modules:
            module.recorder = None


@torch.no_grad()
def teacher_forced_pass(model, examples: Sequence, batch_tokens: int, device: torch.device,
                        before_batch: Optional[Callable[[list, torch.Tensor, torch.Tensor], None]] = None) -> None:
    """Run ``model(src, tgt[:, :-1])`` over ``examples`` in length-bucketed batches (eval mode),
    calling ``before_batch(indices, src, tgt)`` first."""
    from ..data import collate, make_batches

    model.eval()
    for idx in make_batches(examples, batch_tokens, shuffle=False):
        src, tgt = (t.to(device) for t in collate(examples, idx))
        if before_batch is not None:
            before_batch(idx, src, tgt)
        model(src, tgt[:, :-1])
