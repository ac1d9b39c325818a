"""Positional vs symbolic attention heads: how much of a head's attention is explained by where
the keys are, and how much by what they are.

Two scores per head, computed on a data split (teacher-forced), for every attention module
(encoder self, decoder self, cross).

**1. Permutation scores ``P`` and ``S``** (after Urrutia et al., "Decoupling Positional and
Symbolic Attention Behavior in Transformers", arXiv 2511.11579, ICLR 2026: a head is *positional*
when its logits are invariant to permuting the key contents among the positions and *symbolic*
when they move with the contents). The paper's exact formula was not available to us; this is our
reconstruction of its definitions (``docs/positional-modes.md`` section 2). For a query ``m``
with valid keys ``S`` (non-padding; causal decoder: ``n <= m``) and a random permutation ``σ`` of
``S``, let ``p`` be the attention row, ``p_σ`` the row when key *contents* are moved
(``k_n -> k_σ(n)``) while positions stay fixed (positional terms, rotation and masks of position
``n``), and ``σ·p`` the original row moved with the contents (``(σ·p)[n] = p[σ(n)]``). With the
total-variation distance ``TV(a, b) = ½‖a − b‖₁``::

    D_pos = TV(p_σ, p)    D_sym = TV(p_σ, σ·p)    D_0 = TV(p, σ·p)
    P = 1 − ΣD_pos / ΣD_0        S = 1 − ΣD_sym / ΣD_0

summed over ``σ`` (``n_perms`` per row), queries and sentences; rows whose mean ``D_0`` is below
``1e-6`` (near-uniform, or a single key) are skipped. A purely positional head has ``(P, S) =
(1, 0)``, a purely symbolic one ``(0, 1)``; the triangle inequality gives ``P + S <= 1`` (the
exclusion principle). Caveat: the scores see only what enters the head's logit through the
positional mode. With an absolute PE (``pe=true``) the position is inside ``q`` and ``k``, so it
counts as content and a vanilla PE model scores ``S = 1`` everywhere; read ``η`` for such models.

**2. Correlation ratios ``η_pos`` and ``η_sym``** (ours; behavioural, so it works for every mode,
including the absolute PE). Softmax ignores a shift of a query's row of logits, so we model the
logits ``l[r, n]`` of query row ``r`` with a free row effect plus one grouping of the keys, fitted by
least squares over the split::

    positional:  l[r, n] ≈ α_r + μ[δ]             δ = n − m, clipped to ±max_distance
    symbolic:    l[r, n] ≈ α_r + μ[key token id]  (ids seen >= 2·min_count times; the rest pooled)

and report the share of the within-row variance each explains, ``η = 1 − SSE / Σ (l − row mean)²``.
The ``μ`` are estimated on one half of the sentences (even/odd index) and scored on the other,
both ways (a held-out correlation ratio, so many rare groups cannot explain variance by
over-fitting); groups seen fewer than ``min_count`` times in the estimating half predict 0. A head
whose logits are a function of ``δ`` alone has ``η_pos = 1`` (also under the causal mask), one that
looks only at which token a key is has ``η_sym = 1``; 0 means "no better than the row mean" and
held-out values can dip below 0. The **dominant** column says positional when
``η_pos >= 2·η_sym``, symbolic when ``η_sym >= 2·η_pos`` (the larger one at least 0.1), mixed
otherwise.
"""
from __future__ import annotations

import itertools
import math
import re
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from ..attention import AttentionRecord, MultiHeadAttention
from . import recorders

_MIN_D0 = 1e-6


def tv(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Total-variation distance over the last dimension."""
    return 0.5 * (a - b).abs().sum(-1)


def random_key_index(valid: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``[B, Lq, Lk]`` indices that permute, for every query row, its valid keys among themselves
    (uniformly at random) and its invalid ones among themselves."""
    lk = valid.shape[-1]
    n = torch.arange(lk, device=valid.device).expand_as(valid)
    order_id = torch.argsort(torch.where(valid, n, n + lk), dim=-1)  # valid positions first, ascending
    r = torch.rand(valid.shape, generator=generator, device="cpu").to(valid.device)
    order_rand = torch.argsort(torch.where(valid, r, r + 2.0), dim=-1)  # valid positions first, shuffled
    return torch.empty_like(order_id).scatter_(-1, order_id, order_rand)


class PermutationScores:
    """Accumulates ``ΣD_pos``, ``ΣD_sym``, ``ΣD_0`` per head."""

    def __init__(self, n_heads: int, n_perms: int = 20, seed: int = 0):
        self.n_perms = n_perms
        self.generator = torch.Generator().manual_seed(seed)
        self.d_pos = torch.zeros(n_heads, dtype=torch.float64)
        self.d_sym = torch.zeros(n_heads, dtype=torch.float64)
        self.d_0 = torch.zeros(n_heads, dtype=torch.float64)
        self.rows = torch.zeros(n_heads, dtype=torch.float64)

    def add(self, logits_fn: Callable[[Optional[torch.Tensor]], torch.Tensor], valid: torch.Tensor,
            query_ok: torch.Tensor, logits: Optional[torch.Tensor] = None) -> None:
        """``logits_fn(key_index)`` gives ``[B, H, Lq, Lk]`` logits (masked at ``-inf``) with key
        contents moved by ``key_index`` (``None``: unmoved); ``valid [B, Lq, Lk]`` the allowed keys;
        ``query_ok [B, Lq]`` the real (non-padding) queries; ``logits``: ``logits_fn(None)`` when
        the caller already has it."""
        p = (logits_fn(None) if logits is None else logits).softmax(-1).nan_to_num(0.0)
        d_pos, d_sym, d_0 = [], [], []
        for _ in range(self.n_perms):
            index = random_key_index(valid, self.generator)
            p_sig = logits_fn(index).softmax(-1).nan_to_num(0.0)
            moved = torch.gather(p, -1, index[:, None].expand_as(p))
            d_pos.append(tv(p_sig, p))
            d_sym.append(tv(p_sig, moved))
            d_0.append(tv(p, moved))
        d_pos, d_sym, d_0 = (torch.stack(t).double() for t in (d_pos, d_sym, d_0))  # [K, B, H, Lq]
        rows = (query_ok & (valid.sum(-1) >= 2))[:, None, :] & (d_0.mean(0) > _MIN_D0)  # [B, H, Lq]
        w = rows[None].double()
        self.d_pos += (d_pos * w).sum((0, 1, 3)).cpu()
        self.d_sym += (d_sym * w).sum((0, 1, 3)).cpu()
        self.d_0 += (d_0 * w).sum((0, 1, 3)).cpu()
        self.rows += rows.double().sum((0, 2)).cpu()

    def scores(self):
        """``(P, S)`` per head (NaN where no row qualified)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            d0 = self.d_0.numpy()
            return 1.0 - self.d_pos.numpy() / d0, 1.0 - self.d_sym.numpy() / d0


class _GroupFit:
    """Least squares of row-centred logits on one grouping of the keys, with a free effect per
    query row, accumulated separately for the two halves of the sentences.

    Per row ``r`` with valid keys ``n`` the model is ``z[r, n] ≈ α_r + μ[g(n)]``; with ``z`` already
    centred per row the row effects drop out and the normal equations are ``A μ = b`` with
    ``A = Σ_r (diag(c_r) − c_r c_rᵀ / n_r)`` (``c_r``: counts of each group in row ``r``) and
    ``b[g] = Σ z`` over keys in group ``g``. Both are sums, so they stream over batches."""

    def __init__(self, n_heads: int, n_groups: int):
        self.n_groups = n_groups
        self.A = torch.zeros(2, n_groups, n_groups, dtype=torch.float64)
        self.b = torch.zeros(2, n_heads, n_groups, dtype=torch.float64)
        self.n = torch.zeros(2, n_groups, dtype=torch.float64)
        self.sq = torch.zeros(2, n_heads, dtype=torch.float64)

    def add(self, z: torch.Tensor, use: torch.Tensor, groups: torch.Tensor, half: torch.Tensor) -> None:
        """``z [B, H, Lq, Lk]`` row-centred logits (0 where unused); ``use [B, Lq, Lk]``;
        ``groups [B, Lq, Lk]`` group of each key; ``half [B]``."""
        g_count = self.n_groups
        n_row = use.sum(-1).clamp_min(1).double()  # [B, Lq]
        for hf in (0, 1):
            sel = half == hf
            if not bool(sel.any()):
                continue
            u, g, zz, nr = use[sel], groups[sel], z[sel], n_row[sel]
            flat = g[u]
            ones = torch.ones_like(flat, dtype=torch.float64)
            self.n[hf].index_add_(0, flat, ones)
            self.b[hf].index_add_(1, flat, zz.permute(1, 0, 2, 3)[:, u])
            a = self.A[hf].view(-1)
            a.index_add_(0, flat * (g_count + 1), ones)  # diag(c_r)
            w = (u[..., :, None] & u[..., None, :]).double() / nr[..., None, None]  # [b, Lq, Lk, Lk]
            pair = g[..., :, None] * g_count + g[..., None, :]
            keep = w > 0
            a.index_add_(0, pair[keep], -w[keep])  # − c_r c_rᵀ / n_r
            self.sq[hf] += (zz ** 2).sum((0, 2, 3))

    def eta(self, min_count: int) -> np.ndarray:
        """Held-out share of variance explained: fit μ on one half (groups seen ``min_count``
        times; the others predict 0), score on the other, both ways."""
        n_heads = self.b.shape[1]
        sse = torch.zeros(n_heads, dtype=torch.float64)
        for est, ev in ((0, 1), (1, 0)):
            idx = (self.n[est] >= min_count).nonzero().flatten()
            mu = torch.zeros(n_heads, self.n_groups, dtype=torch.float64)
            if len(idx):
                a_sub = self.A[est][idx][:, idx]
                mu[:, idx] = (torch.linalg.pinv(a_sub, hermitian=True, rtol=1e-10) @ self.b[est][:, idx].T).T
            sse += self.sq[ev] - 2 * (mu * self.b[ev]).sum(-1) + torch.einsum("hg,gk,hk->h", mu, self.A[ev], mu)
        with np.errstate(invalid="ignore", divide="ignore"):
            return (1.0 - sse / self.sq.sum(0)).numpy()


class CorrelationRatios:
    """Held-out correlation ratios of the logits on signed distance and on key token id, with a
    free effect per query row (softmax ignores a row's shift)."""

    def __init__(self, n_heads: int, vocab_size: int, max_distance: int = 64, min_count: int = 20,
                 token_groups: Optional[torch.Tensor] = None):
        """``token_groups [vocab_size]`` maps token ids to groups (default: one group per id); the
        analysis driver gives the frequent ids their own group and pools the rare ones."""
        self.max_distance, self.min_count = max_distance, min_count
        self.token_groups = torch.arange(vocab_size) if token_groups is None else token_groups.long()
        self.pos = _GroupFit(n_heads, 2 * max_distance + 1)
        self.tok = _GroupFit(n_heads, int(self.token_groups.max()) + 1)

    def add(self, logits: torch.Tensor, valid: torch.Tensor, query_ok: torch.Tensor, key_tokens: torch.Tensor,
            half: torch.Tensor, q_offset: int = 0) -> None:
        """``logits [B, H, Lq, Lk]``; ``valid [B, Lq, Lk]``; ``query_ok [B, Lq]``; ``key_tokens [B, Lk]``
        (token id at each key position); ``half [B]`` (0 or 1: which half each sentence is in)."""
        b, h, lq, lk = logits.shape
        use = (valid & query_ok[:, :, None] & (valid.sum(-1, keepdim=True) >= 2)).cpu()
        lf = logits.double().cpu().masked_fill(~use[:, None], 0.0)
        count = use.sum(-1).clamp_min(1)[:, None, :, None].double()
        z = (lf - lf.sum(-1, keepdim=True) / count).masked_fill(~use[:, None], 0.0)  # row-centred
        delta = torch.arange(lk)[None, :] - torch.arange(lq)[:, None] - q_offset
        g_pos = delta.clamp(-self.max_distance, self.max_distance).add(self.max_distance).expand(b, lq, lk)
        g_tok = self.token_groups[key_tokens.cpu()][:, None, :].expand(b, lq, lk)
        half = half.cpu()
        self.pos.add(z, use, g_pos, half)
        self.tok.add(z, use, g_tok, half)

    def scores(self):
        """``(η_pos, η_sym)`` per head."""
        return self.pos.eta(self.min_count), self.tok.eta(self.min_count)


def token_groups(examples, vocab_size: int, side: int, min_count: int, max_groups: int = 1000) -> torch.Tensor:
    """Group ids for the key tokens of one side (0 source, 1 target): the ``max_groups`` most
    frequent ids seen at least ``2·min_count`` times get their own group, the rest share one."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for ex in examples:
        counts.index_add_(0, torch.as_tensor(ex[side], dtype=torch.long), torch.ones(len(ex[side]), dtype=torch.long))
    order = torch.argsort(counts, descending=True)[:max_groups]
    frequent = order[counts[order] >= 2 * min_count]
    groups = torch.full((vocab_size,), len(frequent), dtype=torch.long)
    groups[frequent] = torch.arange(len(frequent))
    return groups


@dataclass
class Batch:
    """What the recorders need to know about the batch being run."""

    src: torch.Tensor  # [B, Ls]
    tgt_in: torch.Tensor  # [B, Lt]
    pad_id: int
    half: torch.Tensor  # [B] 0/1


class HeadRecorder:
    """The ``MultiHeadAttention.recorder`` of one module: feeds both scores."""

    def __init__(self, module: MultiHeadAttention, vocab_size: int, n_perms: int, max_distance: int,
                 min_count: int, seed: int, token_groups: Optional[torch.Tensor] = None):
        self.attn_type = module.attn_type.value
        self.perm = PermutationScores(module.n_heads, n_perms, seed)
        self.corr = CorrelationRatios(module.n_heads, vocab_size, max_distance, min_count, token_groups)
        self.batch: Optional[Batch] = None

    def __call__(self, rec: AttentionRecord) -> None:
        bt = self.batch
        queries = bt.src if self.attn_type == "enc" else bt.tgt_in
        keys = bt.tgt_in if self.attn_type == "dec" else bt.src
        lq, lk = queries.shape[1], keys.shape[1]
        query_ok = queries.ne(bt.pad_id)
        valid = keys.ne(bt.pad_id)[:, None, :].expand(-1, lq, -1)
        if self.attn_type == "dec":
            valid = valid & torch.ones(lq, lk, dtype=torch.bool, device=valid.device).tril(rec.q_offset)[None]
        logits = rec.logits()
        self.corr.add(logits, valid, query_ok, keys, bt.half, rec.q_offset)
        self.perm.add(rec.logits, valid, query_ok, logits)


@dataclass
class HeadScores:
    module: str
    attn_type: str  # enc | dec | cross
    layer: int
    head: int
    P: float
    S: float
    eta_pos: float
    eta_sym: float
    rows: int  # query rows that entered P and S

    @property
    def dominant(self) -> str:
        hi = max(self.eta_pos, self.eta_sym)
        if not hi >= 0.1:
            return "mixed"
        if self.eta_pos >= 2 * max(self.eta_sym, 0.0):
            return "positional"
        if self.eta_sym >= 2 * max(self.eta_pos, 0.0):
            return "symbolic"
        return "mixed"


@contextmanager
def recording(model: torch.nn.Module, vocab_size: int, *, n_perms: int = 20, max_distance: int = 64,
              min_count: int = 20, seed: int = 0, src_groups: Optional[torch.Tensor] = None,
              tgt_groups: Optional[torch.Tensor] = None) -> Iterator[Dict[str, HeadRecorder]]:
    """Attach a :class:`HeadRecorder` to every attention module of ``model`` (``src_groups`` /
    ``tgt_groups``: token groups of the keys of source-side and target-side attention)."""
    seeds = itertools.count(seed)  # one permutation stream per module

    def make(name: str, module: MultiHeadAttention) -> HeadRecorder:
        groups = tgt_groups if module.attn_type.value == "dec" else src_groups
        return HeadRecorder(module, vocab_size, n_perms, max_distance, min_count, next(seeds), groups)

    with recorders.recording(model, make) as recs:
        yield recs


def _layer(name: str) -> int:
    found = re.search(r"\.(\d+)\.", name)
    return int(found.group(1)) if found else 0


def head_scores(model, examples, *, pad_id: int, vocab_size: int, n_perms: int = 20, max_distance: int = 64,
                min_count: int = 20, batch_tokens: int = 4096, seed: int = 0,
                device: torch.device = torch.device("cpu")) -> List[HeadScores]:
    """Teacher-forced pass over ``examples``; both scores for every head of every attention module."""
    src_groups = token_groups(examples, vocab_size, 0, min_count)
    tgt_groups = token_groups(examples, vocab_size, 1, min_count)
    with recording(model, vocab_size, n_perms=n_perms, max_distance=max_distance, min_count=min_count,
                   seed=seed, src_groups=src_groups, tgt_groups=tgt_groups) as recs:
        def before_batch(idx, src, tgt):
            batch = Batch(src, tgt[:, :-1], pad_id, torch.tensor([i % 2 for i in idx], device=device))
            for rec in recs.values():
                rec.batch = batch

        recorders.teacher_forced_pass(model, examples, batch_tokens, device, before_batch)
    out = []
    for name, rec in recs.items():
        p, s = rec.perm.scores()
        ep, es = rec.corr.scores()
        for h in range(len(p)):
            out.append(HeadScores(name, rec.attn_type, _layer(name), h, float(p[h]), float(s[h]), float(ep[h]),
                                  float(es[h]), int(rec.perm.rows[h])))
    return out


def _f(x: float) -> str:
    return f"{0.0 if abs(x) < 5e-4 else x:.3f}"  # no "-0.000"


def ps_undefined(score: HeadScores, positional_types: Sequence[str]) -> Optional[str]:
    """Why P and S cannot vary for this head (None when they can): the permutation moves key
    contents among positions while every positional term stays where it is, so in a module
    without a positional term (every module of a model whose only position is the absolute PE
    inside the contents; cross-attention unless the mode's ``apply_to`` names it) nothing can
    tell the moved contents apart: P is 0 and S is 1 by construction."""
    if score.attn_type not in positional_types:
        return "no positional term"
    return None


def positional_types(model) -> List[str]:
    """The attention types (enc / dec / cross) whose modules in ``model`` have a positional mode."""
    from ..attention import MultiHeadAttention

    found = {m.attn_type.value for m in model.modules() if isinstance(m, MultiHeadAttention) and m.pos is not None}
    return [t for t in ("enc", "dec", "cross") if t in found]


def to_markdown(scores: Sequence[HeadScores], pe: bool = False, positional: Sequence[str] = ("enc", "dec")) -> str:
    """The per-head table; ``positional``: the attention types whose modules have a positional
    term (P and S are n/a elsewhere)."""
    lines = ["| module | head | P (permutation) | S (permutation) | η_pos | η_sym | dominant (η) |",
             "|---|---|---|---|---|---|---|"]
    undefined = False
    for s in scores:
        why = ps_undefined(s, positional)
        undefined = undefined or why is not None
        p_text, s_text = ("n/a", "n/a") if why else (_f(s.P), _f(s.S))
        lines.append(f"| {s.module} | {s.head} | {p_text} | {s_text} | {_f(s.eta_pos)} | {_f(s.eta_sym)} | "
                     f"{s.dominant} |")
    counts = {k: sum(s.dominant == k for s in scores) for k in ("positional", "symbolic", "mixed")}
    lines += ["", f"Heads by η: {counts['positional']} positional, {counts['symbolic']} symbolic, "
                  f"{counts['mixed']} mixed (of {len(scores)})."]
    if undefined:
        where = ("in every module: the model's only position is the absolute PE inside the contents"
                 if not positional else "in the modules without a positional term (the mode applies to "
                 + ", ".join(positional) + ")")
        lines.append(f"P and S are n/a {where}: the permutation moves key contents and keeps positional terms in "
                     "place, so without one nothing tells the moved contents apart (P = 0, S = 1 by construction).")
    if pe and positional:
        lines.append("This model adds an absolute positional encoding (pe=true): P and S count the position inside "
                     "q and k as content, so read η_pos and η_sym.")
    return "\n".join(lines) + "\n"


def plot(scores: Sequence[HeadScores], out_dir: Path) -> Dict[str, Path]:
    """``heads_heatmap.png`` (attention type × metric panels of layer × head) and
    ``heads_plane.png`` (every head in the (P, S) and (η_pos, η_sym) planes)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    types = [t for t in ("enc", "dec", "cross") if any(s.attn_type == t for s in scores)]
    metrics = [("P", "P (permutation)"), ("S", "S (permutation)"), ("eta_pos", "η_pos"), ("eta_sym", "η_sym")]
    n_layers = max(s.layer for s in scores) + 1
    n_heads = max(s.head for s in scores) + 1
    fig, axes = plt.subplots(len(types), len(metrics), figsize=(2.2 + 0.55 * n_heads * len(metrics),
                                                               0.6 + 0.55 * n_layers * len(types) + 0.6),
                             squeeze=False)
    for r, t in enumerate(types):
        for c, (key, title) in enumerate(metrics):
            grid = np.full((n_layers, n_heads), np.nan)
            for s in scores:
                if s.attn_type == t:
                    grid[s.layer, s.head] = getattr(s, key)
            ax = axes[r][c]
            ax.imshow(grid, vmin=0, vmax=1, cmap="viridis", aspect="auto")
            for (i, j), v in np.ndenumerate(grid):
                if math.isfinite(v):
                    ax.text(j, i, f"{0.0 if abs(v) < 5e-3 else v:.2f}", ha="center", va="center", fontsize=7,
                            color="white" if v < 0.6 else "black")
            ax.set_xticks(range(n_heads))
            ax.set_yticks(range(n_layers))
            ax.set_title(f"{t}: {title}", fontsize=8)
            ax.set_xlabel("head", fontsize=7)
            ax.set_ylabel("layer", fontsize=7)
    fig.tight_layout()
    heat = out_dir / "heads_heatmap.png"
    fig.savefig(heat, dpi=100)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(8, 4))
    colours = {"enc": "tab:blue", "dec": "tab:orange", "cross": "tab:green"}
    for ax, (x, y, label) in zip(axes, (("P", "S", "permutation"), ("eta_pos", "eta_sym", "correlation ratio"))):
        for t in types:
            sel = [s for s in scores if s.attn_type == t]
            ax.scatter([getattr(s, x) for s in sel], [getattr(s, y) for s in sel], label=t, color=colours[t], s=18)
        ax.plot([0, 1], [1, 0], color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel(f"positional ({x})")
        ax.set_ylabel(f"symbolic ({y})")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    plane = out_dir / "heads_plane.png"
    fig.savefig(plane, dpi=100)
    plt.close(fig)
    return {"heatmap": heat, "plane": plane}


def as_dicts(scores: Sequence[HeadScores]) -> List[dict]:
    return [dict(asdict(s), dominant=s.dominant) for s in scores]
