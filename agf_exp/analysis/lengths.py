"""Translation quality by source length, and length extrapolation.

Every sentence of a split goes into a bucket by its **source length in subword tokens** (EOS not
counted), with bucket upper edges ``edges`` (``[10, 20, 30]`` gives ``1-10``, ``11-20``,
``21-30`` and ``31+``). Per bucket: corpus BLEU and chrF of the decoded translations (sacreBLEU,
the same settings as everywhere else), and teacher-forced token accuracy and perplexity.

Length extrapolation: train with ``data.max_len=N`` (training pairs longer than ``N`` subword
tokens on either side are dropped; valid and test are kept whole) and read the buckets above
``N``: they hold lengths the model never saw. ``data=synthetic`` also has a ``long`` split
(``data.long_size`` sentences of ``data.long_clauses`` conjoined clauses, longer than anything in
its training split), and on Multi30k the longest test sentences fill the top buckets.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from ..data import encode_pairs
from ..decoding import DecodeConfig
from ..evaluation import evaluate_split, score_translations, translate


def bucket_labels(edges: Sequence[int]) -> List[str]:
    edges = list(edges)
    labels, lo = [], 1
    for hi in edges:
        labels.append(f"{lo}-{hi}")
        lo = hi + 1
    return labels + [f"{lo}+"]


def assign(lengths: Sequence[int], edges: Sequence[int]) -> np.ndarray:
    """Bucket index of each length (``len(edges)`` for lengths above the last edge)."""
    edges = list(edges)
    if not edges or any(b <= a for a, b in zip(edges, edges[1:])) or edges[0] < 1:
        raise ValueError(f"buckets={edges}: give increasing positive upper edges, e.g. buckets=[10,20,30]")
    return np.searchsorted(np.asarray(edges), np.asarray(lengths), side="left")


@dataclass
class BucketResult:
    bucket: str
    sentences: int
    src_len_min: int
    src_len_max: int
    beyond_train: bool  # every source in the bucket is longer than the training data.max_len
    bleu: Optional[float] = None
    chrf: Optional[float] = None
    acc: Optional[float] = None
    ppl: Optional[float] = None


def evaluate_by_length(model, tokenizer, src_text: Sequence[str], refs: Sequence[str], edges: Sequence[int],
                       decode: Optional[DecodeConfig] = None, *, train_max_len: Optional[int] = None,
                       batch_tokens: int = 8192, label_smoothing: float = 0.0, device=None, amp_dtype=None):
    """(``BucketResult`` per bucket, the translations in input order, their bucket indices)."""
    device = device or torch.device("cpu")
    examples = encode_pairs(tokenizer, list(src_text), list(refs))
    lengths = [len(s) - 1 for s, _ in examples]
    which = assign(lengths, edges)
    hyps = translate(model, tokenizer, [s for s, _ in examples], decode or DecodeConfig(), device, amp_dtype)
    results = []
    for b, label in enumerate(bucket_labels(edges)):
        idx = np.flatnonzero(which == b)
        if len(idx) == 0:
            results.append(BucketResult(label, 0, 0, 0, False))
            continue
        lens = [lengths[i] for i in idx]
        scores = score_translations([hyps[i] for i in idx], [refs[i] for i in idx])
        tf = evaluate_split(model, [examples[i] for i in idx], batch_tokens=batch_tokens, device=device,
                            label_smoothing=label_smoothing, amp_dtype=amp_dtype)
        results.append(BucketResult(label, len(idx), min(lens), max(lens),
                                    train_max_len is not None and min(lens) > train_max_len,
                                    scores["bleu"], scores["chrf"], tf["val_acc"], tf["val_ppl"]))
    return results, hyps, which


def to_markdown(results: Sequence[BucketResult], train_max_len: Optional[int] = None) -> str:
    lines = ["| source tokens | sentences | BLEU | chrF | token acc % | ppl | |", "|---|---|---|---|---|---|---|"]
    for r in results:
        if not r.sentences:
            lines.append(f"| {r.bucket} | 0 | | | | | |")
            continue
        note = "beyond training length" if r.beyond_train else ""
        lines.append(f"| {r.bucket} | {r.sentences} | {r.bleu:.2f} | {r.chrf:.2f} | {r.acc:.2f} | {r.ppl:.2f} | "
                     f"{note} |")
    if train_max_len is not None:
        lines += ["", f"Trained with data.max_len={train_max_len} (training pairs longer than that were dropped)."]
    return "\n".join(lines) + "\n"


def plot(results: Sequence[BucketResult], path: Path, train_max_len: Optional[int] = None, title: str = "") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    shown = [r for r in results if r.sentences]
    x = np.arange(len(shown))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(shown) + 2), 3.6))
    ax.plot(x, [r.bleu for r in shown], "o-", label="BLEU")
    ax.plot(x, [r.acc for r in shown], "s--", label="token acc %")
    for i, r in enumerate(shown):
        if r.beyond_train:
            ax.axvspan(i - 0.5, i + 0.5, color="grey", alpha=0.15, lw=0)
    ax.set_xticks(x, [f"{r.bucket}\n(n={r.sentences})" for r in shown], fontsize=8)
    ax.set_xlabel("source length (subword tokens)" + (f"; shaded: > data.max_len={train_max_len}"
                                                       if any(r.beyond_train for r in shown) else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title or "quality by source length", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def as_dicts(results: Sequence[BucketResult]) -> List[Dict]:
    return [asdict(r) for r in results]
