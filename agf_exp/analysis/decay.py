"""Attention decay with distance (the paper's Figure 4 and section 6): power law or exponential?

From a trained model and a data split (teacher-forced), for every self-attention module and head:

- the **profile** ``w(δ)``: the mean attention probability (softmax weight) that a query gives to
  the key at signed relative distance ``δ = n - m`` (key minus query), over all non-padding
  (query, key) pairs of the split at that distance; encoder self-attention has both sides, the
  causal decoder only ``δ <= 0``. Distances with fewer than ``min_count`` pairs are left out.
- three fits per side (``d = |δ| >= 1``; the query's own position is left out as it is mostly
  content), by least squares on ``log w``: AGF's form ``log G - k·log(1 + d/r)`` (three
  parameters), the pure power law ``log G - k·log d`` and the exponential (ALiBi-like)
  ``log G - λ·d`` (two each).
- which form describes the **held-out distances**: each form is fitted on the near half of the
  distances and scored (R² of ``log w``) on the far half, where the forms differ (the paper's
  claim is about the tail). A profile counts for a form only where that form predicts the far
  half better than the far half's own mean (held-out R² > 0) *and* better than the other form;
  otherwise it counts as **neither** (:func:`judge`). The two compared forms are the
  identifiable two-parameter ones, the pure power law and the exponential: AGF's form is
  reported beside them, with ``degenerate`` set where a parameter sits on its bound (typically
  ``r`` at its lower bound, where ``G/(1+d/r)^k`` has become ``G'·d^-k`` and ``r`` is not
  identified).

What a profile mixes: the mean weight at distance ``d`` averages rows of every length, and only
rows longer than ``d`` contribute there, each with a softmax renormalised over its own number of
keys (uniform attention is ``1/L``). So the far tail is the attention of long sentences, scaled
down by their length, and part of any decay is this length mix rather than distance. Comparing
forms across models on the same split is fair; absolute exponents are not length-free. A
length-normalised profile (``L·w``, where uniform attention is 1 at every distance) would need
each row's length, which the stored profiles (sums over all rows) do not keep.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from ..attention import AttentionRecord, MultiHeadAttention
from ..positional import AttnType
from . import recorders


@dataclass
class Profile:
    module: str  # e.g. "encoder.0.self_attn"
    attn_type: str  # enc | dec
    offsets: np.ndarray  # [R] signed distances δ
    weight_sum: np.ndarray  # [H, R]
    count: np.ndarray  # [R] number of (query, key) pairs at each δ

    @property
    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return self.weight_sum / self.count[None, :]


class ProfileAccumulator:
    """Sums attention probabilities by signed relative distance, |δ| <= max_distance."""

    def __init__(self, n_heads: int, max_distance: int, causal: bool):
        self.d, self.causal = max_distance, causal
        self.weight = torch.zeros(n_heads, 2 * max_distance + 1, dtype=torch.float64)
        self.count = torch.zeros(2 * max_distance + 1, dtype=torch.float64)

    def __call__(self, rec: AttentionRecord) -> None:  # the MultiHeadAttention.recorder hook
        self.add(rec.probs, rec.key_padding_mask, rec.q_offset)

    def add(self, probs: torch.Tensor, key_padding_mask: Optional[torch.Tensor], q_offset: int = 0) -> None:
        """Add ``probs [B, H, Lq, Lk]`` of one call (``key_padding_mask [B, Lk]`` True at padding)."""
        b, h, lq, lk = probs.shape
        device = probs.device
        delta = torch.arange(lk, device=device)[None, :] - (torch.arange(lq, device=device)[:, None] + q_offset)
        valid = torch.ones(b, lq, lk, dtype=torch.bool, device=device)
        if key_padding_mask is not None:
            valid &= ~key_padding_mask[:, None, :]
            if lq == lk and q_offset == 0:  # self-attention: padded queries are not real queries
                valid &= ~key_padding_mask[:, :, None]
        if self.causal:
            valid &= (delta <= 0)[None]
        keep = delta.abs() <= self.d
        idx = (delta + self.d)[keep]  # [P]
        w = (probs.double() * valid[:, None]).sum(0)[:, keep]  # [H, P]
        c = valid.sum(0)[keep].double()  # [P]
        self.weight.index_add_(1, idx.cpu(), w.cpu())
        self.count.index_add_(0, idx.cpu(), c.cpu())


@contextmanager
def recording(model: torch.nn.Module, max_distance: int, types=(AttnType.enc, AttnType.dec)) -> Iterator[Dict[str, ProfileAccumulator]]:
    """Attach a :class:`ProfileAccumulator` to every self-attention module of ``model`` (eager path)."""
    with recorders.recording(model, lambda name, m: ProfileAccumulator(m.n_heads, max_distance, m.causal)
                             if m.attn_type in types else None) as accs:
        yield accs


def attention_profiles(model, examples, *, max_distance: int = 40, batch_tokens: int = 4096,
                       device: torch.device = torch.device("cpu")) -> List[Profile]:
    """Teacher-forced pass over ``examples``; one :class:`Profile` per self-attention module."""
    types = {name: m.attn_type.value for name, m in model.named_modules() if isinstance(m, MultiHeadAttention)}
    with recording(model, max_distance) as accs:
        recorders.teacher_forced_pass(model, examples, batch_tokens, device)
    offsets = np.arange(-max_distance, max_distance + 1)
    return [Profile(name, types[name], offsets, acc.weight.numpy(), acc.count.numpy()) for name, acc in accs.items()]


# ------------------------------------------------------------------------------------------------
# fits


def _power(d, log_g, r, k):
    return log_g - k * np.log1p(d / r)


def _exponential(d, log_g, lam):
    return log_g - lam * d


def _pure_power(d, log_g, k):
    return log_g - k * np.log(d)


# AGF's form is fitted with r in [R_BOUNDS] and k in [K_BOUNDS]; a fit on a bound is degenerate
R_BOUNDS, K_BOUNDS = (1e-3, 1e6), (0.0, 1e3)


def _r2(y, pred) -> float:
    tss = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - pred) ** 2)) / tss if tss > 0 else float("nan")


def _fit(form: str, d: np.ndarray, logw: np.ndarray):
    from scipy.optimize import curve_fit

    if form == "exponential":
        lam, log_g = np.polyfit(d, logw, 1)  # exact least squares
        return np.array([log_g, -lam])
    if form == "pure_power":
        k, log_g = np.polyfit(np.log(d), logw, 1)  # exact least squares in log d
        return np.array([log_g, -k])
    best = None
    slope = max(-(logw[-1] - logw[0]) / max(math.log1p(d[-1]) - math.log1p(d[0]), 1e-6), 1e-3)
    for r0 in (0.5, 2.0, 10.0, 50.0):
        try:
            params, _ = curve_fit(_power, d, logw, p0=(logw[0] + slope * math.log1p(d[0] / r0), r0, slope),
                                  bounds=([-np.inf, R_BOUNDS[0], K_BOUNDS[0]], [np.inf, R_BOUNDS[1], K_BOUNDS[1]]),
                                  maxfev=20000)
        except (RuntimeError, ValueError):
            continue
        rss = float(np.sum((_power(d, *params) - logw) ** 2))
        if best is None or rss < best[1]:
            best = (params, rss)
    if best is None:
        raise ValueError("the power-law fit did not converge")
    return best[0]


def _predict(form: str, params, d):
    return {"power": _power, "pure_power": _pure_power, "exponential": _exponential}[form](d, *params)


def _on_bound(value: float, bounds) -> bool:
    return any(abs(value - b) <= 1e-6 * max(1.0, abs(b)) for b in bounds)


@dataclass
class DecayFit:
    module: str
    head: int
    side: str  # "left" (keys before the query, δ < 0) or "right" (δ > 0)
    distances: int  # number of distances fitted
    power: Dict[str, float] = field(default_factory=dict)  # AGF's form: G, r, k, r2, r2_tail, degenerate
    exponential: Dict[str, float] = field(default_factory=dict)  # G, lambda, r2, r2_tail
    better: str = ""  # judge(): "power" (pure power law), "exponential" or "neither" on the far half
    pure_power: Dict[str, float] = field(default_factory=dict)  # G, k, r2, r2_tail


def judge(fits: Dict[str, Dict[str, float]]) -> str:
    """Which identifiable form describes the far half: "power" (``G·d^-k``) or "exponential" when
    it predicts the held-out distances better than their mean (R² > 0) and better than the other
    form, else "neither"."""
    p, e = fits["pure_power"]["r2_tail"], fits["exponential"]["r2_tail"]
    if p > 0 and p > e:
        return "power"
    if e > 0 and e > p:
        return "exponential"
    return "neither"


def fit_decay(d: Sequence[float], w: Sequence[float]) -> Dict[str, Dict[str, float]]:
    """Fit both forms to a profile ``w(d)`` (d >= 1, w > 0). Needs >= 6 distances."""
    d, w = np.asarray(d, dtype=float), np.asarray(w, dtype=float)
    ok = np.isfinite(w) & (w > 0)
    d, logw = d[ok], np.log(w[ok])
    if len(d) < 6:
        raise ValueError(f"a decay fit needs at least 6 distances with attention, got {len(d)}")
    near = d <= np.median(d)
    out = {}
    for form in ("power", "pure_power", "exponential"):
        full = _fit(form, d, logw)
        half = _fit(form, d[near], logw[near])
        r2 = _r2(logw, _predict(form, full, d))
        r2_tail = _r2(logw[~near], _predict(form, half, d[~near]))
        if form == "power":
            out[form] = {"G": float(math.exp(full[0])), "r": float(full[1]), "k": float(full[2]), "r2": r2,
                         "r2_tail": r2_tail,
                         "degenerate": bool(_on_bound(full[1], R_BOUNDS) or _on_bound(full[2], K_BOUNDS))}
        elif form == "pure_power":
            out[form] = {"G": float(math.exp(full[0])), "k": float(full[1]), "r2": r2, "r2_tail": r2_tail}
        else:
            out[form] = {"G": float(math.exp(full[0])), "lambda": float(full[1]), "r2": r2, "r2_tail": r2_tail}
    return out


def fit_profiles(profiles: Sequence[Profile], min_count: int = 20) -> List[DecayFit]:
    fits = []
    for p in profiles:
        mean = p.mean
        for side, sign in (("left", -1), ("right", 1)):
            sel = (np.sign(p.offsets) == sign) & (p.count >= min_count)
            if p.attn_type == "dec" and side == "right":
                continue
            d = np.abs(p.offsets[sel]).astype(float)
            order = np.argsort(d)
            for h in range(mean.shape[0]):
                try:
                    res = fit_decay(d[order], mean[h, sel][order])
                except ValueError:
                    continue
                fits.append(DecayFit(p.module, h, side, int(sel.sum()), res["power"], res["exponential"], judge(res),
                                     res["pure_power"]))
    return fits


def profiles_from_json(stored: Dict[str, dict]) -> List[Profile]:
    """The profiles of a ``decay.json`` (``analyze decay``), to refit them with the current rules
    (the report does: its counts follow from this module, whatever code wrote the file)."""
    out = []
    for module, p in stored.items():
        mean, count = np.asarray(p["mean"], dtype=float), np.asarray(p["count"], dtype=float)
        out.append(Profile(module, p["attn_type"], np.asarray(p["offsets"]), np.nan_to_num(mean) * count[None, :], count))
    return out


def _g(x: float) -> str:
    """Three significant digits; a rate or exponent below 1e-6 (on its lower bound) as 0."""
    return "0" if abs(x) < 1e-6 else f"{x:.3g}"


def _r2_text(x: float) -> str:
    return f"{0.0 if abs(x) < 5e-4 else x:.3f}"  # no "-0.000"


def to_markdown(fits: Sequence[DecayFit]) -> str:
    lines = ["| module | head | side | n | AGF G/(1+d/r)^k: r, k | far-half R² | power G·d^(−k): k | R² | far-half R² | "
             "exponential G·e^(−λd): λ | R² | far-half R² | far half described by |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for f in fits:
        p, q, e = f.power, f.pure_power, f.exponential
        # a parameter on its bound is not identified: its digits would be the optimiser's noise
        # (they differ between machines), so a degenerate fit prints no parameters
        agf = "degenerate (a parameter on its bound)" if p.get("degenerate") else f"r={_g(p['r'])}, k={_g(p['k'])}"
        lines.append(f"| {f.module} | {f.head} | {f.side} | {f.distances} | {agf} | {_r2_text(p['r2_tail'])} | "
                     f"k={_g(q['k'])} | {_r2_text(q['r2'])} | {_r2_text(q['r2_tail'])} | λ={_g(e['lambda'])} | "
                     f"{_r2_text(e['r2'])} | {_r2_text(e['r2_tail'])} | **{f.better}** |")
    counts = {form: sum(f.better == form for f in fits) for form in ("power", "exponential", "neither")}
    degenerate = sum(bool(f.power.get("degenerate")) for f in fits)
    lines += ["", f"Of {len(fits)} (head, side) profiles, the far half is described by the power law in "
                  f"{counts['power']}, by the exponential in {counts['exponential']}, by neither in {counts['neither']} "
                  f"(R² > 0 on the held-out far half and above the other form); AGF's three-parameter form is "
                  f"degenerate (a parameter on its bound) in {degenerate}."]
    return "\n".join(lines) + "\n"


def plot(profiles: Sequence[Profile], fits: Sequence[DecayFit], out_dir: Path, min_count: int = 20) -> Dict[str, Path]:
    """One PNG per module: per head, log mean weight against δ with both fitted forms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    by_key = {(f.module, f.head, f.side): f for f in fits}
    written = {}
    for p in profiles:
        n_heads = p.weight_sum.shape[0]
        cols = min(n_heads, 4)
        rows = math.ceil(n_heads / cols)
        fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
        mean = p.mean
        ok = p.count >= min_count
        for h in range(n_heads):
            ax = axes[h // cols][h % cols]
            ax.semilogy(p.offsets[ok], mean[h, ok], "o", markersize=2.5, color="black")
            for side, sign in (("left", -1), ("right", 1)):
                f = by_key.get((p.module, h, side))
                if f is None:
                    continue
                d = np.linspace(1, np.abs(p.offsets[ok & (np.sign(p.offsets) == sign)]).max(), 100)
                pw, ex = f.power, f.exponential
                ax.semilogy(sign * d, pw["G"] / (1 + d / pw["r"]) ** pw["k"], color="tab:blue",
                            label="power" if side == "left" else None)
                ax.semilogy(sign * d, ex["G"] * np.exp(-ex["lambda"] * d), color="tab:orange", linestyle="--",
                            label="exponential" if side == "left" else None)
            ax.set_title(f"head {h}", fontsize=9)
            ax.set_xlabel("δ = key − query", fontsize=8)
            ax.grid(alpha=0.3)
        for h in range(n_heads, rows * cols):
            axes[h // cols][h % cols].axis("off")
        axes[0][0].legend(fontsize=7)
        fig.suptitle(f"{p.module}: mean attention weight by distance")
        fig.tight_layout()
        path = out_dir / f"decay_{p.module.replace('.', '_')}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written[p.module] = path
    return written


def as_dicts(fits: Sequence[DecayFit]) -> List[dict]:
    return [asdict(f) for f in fits]


def stable_dicts(fits: Sequence[DecayFit]) -> List[dict]:
    """:func:`as_dicts` as files keep them: the figures the report prints, rounded as it prints
    them (R² to 3 decimals, parameters to 3 significant digits: the optimiser's tolerance moves
    an ill-conditioned fit's R² by ~1e-5 when the input changes in its last bits) and a
    degenerate AGF form without its parameters (a parameter on its bound leaves the others
    unidentified: their digits are the optimiser's noise)."""
    def rounded(x, key=""):
        if isinstance(x, bool) or not isinstance(x, (float, dict)):
            return x
        if isinstance(x, dict):
            return {k: rounded(v, k) for k, v in x.items()}
        if key.startswith("r2"):
            return float(_r2_text(x))
        return float(_g(x))

    out = []
    for f in as_dicts(fits):
        if f["power"].get("degenerate"):
            f["power"] = {k: (None if k in ("G", "r", "k") else v) for k, v in f["power"].items()}
        out.append(rounded(f))
    return out
