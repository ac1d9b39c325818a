"""Attention kernels: the eager reference :func:`attention` (the specification) and the fused
paths that must match it, SDPA (:func:`sdpa_attention`) and flex_attention
(:func:`flex_attention`), with :func:`backend_problem` / :func:`choose_backend` saying which
backend computes which combination. :class:`~agf_exp.attention.module.MultiHeadAttention` holds
the projections, the cache and the positional mode and calls one of them.

The reference computation, for one head, query m and key n:

    s[m, n]   = q_m . k_n / sqrt(d_k)          (SCO: q_m . k_n / ||k_n||, see sco_keys)
    logit     = s * C[m, n] + B[m, n]          (C: multiplicative mode, B: additive mode)
    logit     = -inf-like fill where the key is padding or in the future (AFTER s*C + B, so a
                coefficient can never bring a masked key back)
    a         = softmax_n(logit)               (in fp32)
    o_m       = sum_n a[m, n] * V[m, n] * v_n  (V = 1, or with PCM-V: V = C for multiplicative
                                                modes, exp(B) for additive ones, the paper's
                                                PCM-V-Exp; no renormalisation; see
                                                PosTable.value_log)

with ``q . k`` weighted per channel by ``W[m, n, c]`` for channelwise modes (AGF-L) and q, k
rotated first for rotary ones (RoPE). The logits and the softmax are computed in fp32 even inside
an autocast region (autocast is switched off around them). ``tests/test_backends.py`` checks every
mode and toggle of the fused paths against the reference.
"""
from __future__ import annotations

import enum
import math
import warnings
from typing import Callable, Dict, Optional

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..positional import PosTable

_SCO_EPS = 1e-6


#: flex_attention's fused CUDA kernel (torch's inductor template) needs q, k and v heads of at
#: least this many channels ("NYI: embedding dimension ... must be at least 16")
FLEX_MIN_HEAD_DIM = 16


class AttnBackend(str, enum.Enum):
    eager = "eager"  # reference: materialises the [Lq, Lk] logits; supports every mode and toggle
    sdpa = "sdpa"  # F.scaled_dot_product_attention: vanilla, RoPE and additive modes (float mask)
    flex = "flex"  # flex_attention with a score_mod: additive and multiplicative modes, PCM-V via lse
    auto = "auto"  # the fastest backend that is correct for the mode, device and training state


def backend_problem(backend: AttnBackend | str, mode_cls, pcmv: bool, d_head: Optional[int] = None) -> Optional[str]:
    """Why ``backend`` cannot compute a positional mode class (``None``: no mode) with ``pcmv`` and
    heads of ``d_head`` channels; ``None`` when it can. ``auto`` never has a problem (it falls
    back to eager)."""
    backend = AttnBackend(backend)
    multiplicative = mode_cls is not None and mode_cls.multiplicative
    channelwise = mode_cls is not None and mode_cls.channelwise
    if backend == AttnBackend.sdpa and (multiplicative or channelwise or pcmv):
        return ("scaled_dot_product_attention takes only an additive float mask, so it cannot apply a "
                "multiplicative coefficient, a per-channel weight or PCM-V")
    if backend == AttnBackend.flex and channelwise:
        return "flex_attention's score_mod sees one scalar score, not the channels of q.k that LC3 weights"
    if backend == AttnBackend.flex and d_head is not None and d_head < FLEX_MIN_HEAD_DIM:
        return (f"flex_attention's fused kernel needs heads of at least {FLEX_MIN_HEAD_DIM} channels and "
                f"model.d_model / model.n_heads = {d_head}")
    return None


def refusal(backend: AttnBackend | str, pos_name: str, mode_cls, pcmv: bool, d_head: Optional[int] = None,
            attn_dropout: float = 0.0, run_config: bool = True) -> Optional[str]:
    """Why a model with ``model.attn_backend=backend`` and ``pos=pos_name`` (mode class
    ``mode_cls``, None for none) with ``pcmv`` cannot be built, in one line naming the config keys
    and the fix; None when it can. :func:`agf_exp.config.validate` asks for a run's config (the
    fix points at ``auto``, which never refuses), the module for itself (``run_config=False``)."""
    if pcmv and not (mode_cls is not None and mode_cls.supports_value_coefficient()):
        return (f"pcmv=true is not defined for pos={pos_name}: PCM-V scales the values by the positional "
                "coefficient (or by exp(bias) for additive modes) and this mode has neither. Drop pcmv=true or "
                "pick a relative mode such as pos=agf or pos=agf_m.")
    backend = AttnBackend(backend)
    problem = backend_problem(backend, mode_cls, pcmv, d_head)
    if problem:
        fix = "auto (the fastest correct path) or eager" if run_config else "eager or auto"
        return (f"model.attn_backend={backend.value} cannot run pos={pos_name} pcmv={pcmv}: {problem}; "
                f"use model.attn_backend={fix}")
    if backend == AttnBackend.flex and attn_dropout > 0:
        return (f"model.attn_backend=flex has no attention dropout (model.attn_dropout={attn_dropout}); set "
                "model.attn_dropout=0 or use model.attn_backend=auto")
    return None


def choose_backend(requested: AttnBackend, mode, pcmv: bool, d_head: int, device: torch.device,
                   dropout: bool) -> AttnBackend:
    """The backend a call uses: ``requested`` unless it is ``auto``, which takes flex only on CUDA,
    where its kernel is fused, for heads it can take and without attention ``dropout`` (which it
    does not have); SDPA where the mode needs no per-score work (vanilla, RoPE, additive without
    PCM-V-Exp), flex where it can, else the eager reference. ``mode``: the module's positional
    mode (None: none)."""
    if requested != AttnBackend.auto:
        return requested
    mode_cls = type(mode) if mode is not None else None
    needs_scores = pcmv or (mode is not None and (mode.multiplicative or mode.channelwise))
    flex_ok = (device.type == "cuda" and not dropout
               and backend_problem(AttnBackend.flex, mode_cls, pcmv, d_head) is None)
    if not needs_scores:
        if flex_ok and mode is not None and mode.relative:
            return AttnBackend.flex  # no [B, H, L, L] float mask
        return AttnBackend.sdpa
    return AttnBackend.flex if flex_ok else AttnBackend.eager


def no_autocast(device: torch.device):
    """A region where autocast is off (logits and softmax stay in fp32 under bf16/fp16 training)."""
    return torch.autocast(device.type, enabled=False)


def _channel_scores(q: torch.Tensor, k: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
    """``sum_c q[b,h,m,c] k[b,h,n,c] W[h,m,n,c]``: a ``[B, H, Lq, Lk, d]`` product, computed in
    batch chunks of about 2^24 elements and, when training, recomputed in the backward pass
    (activation checkpointing) so that memory stays ``O(B H L^2)`` rather than ``O(B H L^2 d)``."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, channel)):
        return checkpoint(channel_scores_chunked, q, k, channel, use_reentrant=False)
    return channel_scores_chunked(q, k, channel)


def channel_scores_chunked(q: torch.Tensor, k: torch.Tensor, channel: torch.Tensor) -> torch.Tensor:
    b, h, lq, d = q.shape
    step = max(1, (1 << 24) // max(1, h * lq * k.shape[2] * d))
    return torch.cat([torch.einsum("bhmc,bhnc,hmnc->bhmn", q[i:i + step], k[i:i + step], channel)
                      for i in range(0, b, step)])


def _channel_values(weights: torch.Tensor, value_channel: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``sum_n a[b,h,m,n] W[h,m,n,c] v[b,h,n,c]`` (PCM-V with AGF-L's channel weights): like
    :func:`_channel_scores`, chunked by batch and recomputed in the backward pass, so neither
    direction holds the ``[B, H, Lq, Lk, d]`` product."""
    if torch.is_grad_enabled() and any(t.requires_grad for t in (weights, value_channel, v)):
        return checkpoint(_channel_values_chunked, weights, value_channel, v, use_reentrant=False)
    return _channel_values_chunked(weights, value_channel, v)


def _channel_values_chunked(weights: torch.Tensor, value_channel: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    b, h, lq, lk = weights.shape
    step = max(1, (1 << 24) // max(1, h * lq * lk * v.shape[-1]))
    return torch.cat([torch.einsum("bhmn,hmnc,bhnc->bhmc", weights[i:i + step], value_channel, v[i:i + step])
                      for i in range(0, b, step)])


# ------------------------------------------------------------------------------------------------
# the reference


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    coef: Optional[torch.Tensor] = None,
    bias: Optional[torch.Tensor] = None,
    channel: Optional[torch.Tensor] = None,
    value_coef: Optional[torch.Tensor] = None,
    value_channel: Optional[torch.Tensor] = None,
    sco: bool = False,
    key_padding_mask: Optional[torch.Tensor] = None,
    causal: bool = False,
    q_offset: int = 0,
    dropout_p: float = 0.0,
    return_probs: bool = False,
):
    """Reference attention.

    Shapes: ``q [B, H, Lq, Dk]``, ``k, v [B, H, Lk, Dk|Dv]``; ``coef``, ``bias``, ``value_coef``
    broadcast to ``[B, H, Lq, Lk]`` (usually ``[H, Lq, Lk]``); ``channel`` and ``value_channel``
    are ``[H, Lq, Lk, Dk|Dv]`` per-channel weights of the scores and the values (AGF-L);
    ``key_padding_mask [B, Lk]`` is True at padding. ``causal`` masks keys after the query, whose
    absolute position is ``q_offset + row`` (incremental decoding passes the number of cached
    steps). Returns ``[B, H, Lq, Dv]`` (and the attention probabilities if ``return_probs``).
    """
    with no_autocast(q.device):
        return _attention_fp32(q, k, v, coef, bias, channel, value_coef, value_channel, sco, key_padding_mask,
                               causal, q_offset, dropout_p, return_probs)


def _attention_fp32(q, k, v, coef, bias, channel, value_coef, value_channel, sco, key_padding_mask, causal,
                    q_offset, dropout_p, return_probs):
    """:func:`attention`'s body, run with autocast off."""
    out_dtype = v.dtype
    qf, kf = q.float(), k.float()
    if sco:
        kf = sco_keys(kf)
    if channel is None:
        scores = qf @ kf.transpose(-1, -2)
    else:
        scores = _channel_scores(qf, kf, channel.float())
    scores = scale_and_position(scores, q.shape[-1], sco, coef, bias)
    mask = attention_mask(key_padding_mask, causal, q.shape[-2], k.shape[-2], q_offset, q.device)
    if mask is not None:
        scores = scores.masked_fill(mask, torch.finfo(scores.dtype).min)
    probs = scores.softmax(dim=-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    weights = probs if value_coef is None else probs * value_coef.float()
    if value_channel is None:
        out = weights.to(out_dtype) @ v
    else:
        out = _channel_values(weights, value_channel.float(), v.float()).to(out_dtype)
    return (out, probs) if return_probs else out


def scale_and_position(scores: torch.Tensor, d: int, sco: bool, coef: Optional[torch.Tensor],
                        bias: Optional[torch.Tensor]) -> torch.Tensor:
    """``q.k`` scores to logits: ``/ sqrt(d)`` (not with SCO, whose keys are already normalised),
    then ``* C + B``."""
    if not sco:
        scores = scores / math.sqrt(d)
    if coef is not None:
        scores = scores * coef.float()
    if bias is not None:
        scores = scores + bias.float()
    return scores


def attention_mask(key_padding_mask, causal, lq, lk, q_offset, device) -> Optional[torch.Tensor]:
    """Boolean mask broadcastable to [B, H, Lq, Lk], True where attention is forbidden."""
    mask = None
    if key_padding_mask is not None:
        mask = key_padding_mask[:, None, None, :]
    if causal:
        q_pos = torch.arange(lq, device=device)[:, None] + q_offset
        future = torch.arange(lk, device=device)[None, :] > q_pos
        mask = future if mask is None else (mask | future)
    return mask


def sco_keys(k: torch.Tensor) -> torch.Tensor:
    """SCO, the score calculation optimisation (paper Eq. 11): keys ``k / ||k||`` (norm in fp32,
    in ``k``'s dtype), so that ``q . k`` needs no ``1 / sqrt(d)``. Every path normalises here."""
    return k / k.float().norm(dim=-1, keepdim=True).clamp_min(_SCO_EPS).to(k.dtype)


# ------------------------------------------------------------------------------------------------
# the fused kernels


def sdpa_attention(q, k, v, bias: Optional[torch.Tensor], mask: Optional[torch.Tensor], sco: bool,
                   dropout_p: float) -> torch.Tensor:
    """``F.scaled_dot_product_attention`` with an additive positional ``bias [H, Lq, Lk]`` and the
    boolean ``mask`` (True: forbidden) as one float mask (or the boolean mask alone).

    Under CPU autocast a call with a bias runs in fp32: autocast would cast the bias to bf16 with
    q, k and v (ALiBi's -slope * distance at distance 100 onto a 0.25 grid), whereas the eager
    reference adds it to fp32 logits; at these lengths attention is a small share of a step."""
    out_dtype = v.dtype
    fp32 = bias is not None and q.device.type == "cpu" and torch.is_autocast_enabled("cpu")
    if fp32:
        q, k, v = q.float(), k.float(), v.float()
    attn_mask = None
    if bias is not None:
        attn_mask = bias.to(q.dtype)[None]
        if mask is not None:
            attn_mask = attn_mask.masked_fill(mask, float("-inf"))
    elif mask is not None:
        attn_mask = ~mask
    scale = None
    if sco:
        k, scale = sco_keys(k), 1.0
    if fp32:
        with no_autocast(q.device):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p,
                                                  scale=scale).to(out_dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, scale=scale)


def flex_attention(q, k, v, tab: PosTable, span: range, key_padding_mask: Optional[torch.Tensor], q_offset: int,
                   causal: bool, sco: bool, pcmv: bool) -> torch.Tensor:
    """flex_attention with a score_mod that reads the mode's O(H*L) table ``tab`` (offsets
    ``span``) by relative offset: ``score * C + B``, masked keys to -inf. PCM-V by the
    log-sum-exp identity: with ``lse`` of the logits and ``lse'`` of the logits plus ``log V``,
    the output is ``O' * exp(lse' - lse)`` where ``O'`` is the attention output with the primed
    logits; the second pass only needs ``lse``, so it runs on the first ``FLEX_MIN_HEAD_DIM``
    value channels.

    The score_mod has the same shape on every call (see :func:`_flex_call`): every table is
    present (ones/zeros when a mode lacks it; the 1/sqrt(d) scale folded into ``C``), and the
    offset shift, the query offset, the padding and the causal flag are device tensors made
    without a host copy, so the compiled kernel is not specialised per length, step or layer."""
    if q.device.type == "cpu" and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        raise RuntimeError(
            f"model.attn_backend=flex: flex_attention in torch {torch.__version__} has no backward on CPU; "
            "train on CPU with model.attn_backend=auto (eager/sdpa), use flex there for inference only"
        )
    b, n_heads, lk, device = q.shape[0], q.shape[1], k.shape[2], q.device
    scale = 1.0 if sco else 1.0 / math.sqrt(q.shape[-1])
    # separate contiguous [H, R] fp32 tables on every call (dynamo guards on strides and aliasing)
    coef = torch.full((n_heads, len(span)), scale, device=device) if tab.log_coef is None else \
        _dense(tab.log_coef.float().exp() * scale)
    bias = torch.zeros_like(coef) if tab.bias is None else _dense(tab.bias.float())
    value_log = tab.value_log() if pcmv else None
    if value_log is not None:  # a row-major tensor of its own (dynamo guards on strides and aliasing)
        value_log = _dense(value_log.clone())
    pad = torch.zeros(b, lk, dtype=torch.bool, device=device) if key_padding_mask is None else \
        _dense(key_padding_mask)
    # the table index of offset ki - (qi + q_offset) is ki - qi - shift
    shift = torch.full((), span.start + q_offset, dtype=torch.long, device=device)
    q_off = torch.full((), q_offset, dtype=torch.long, device=device)
    is_causal = torch.full((), causal, dtype=torch.bool, device=device)
    neg_inf = float("-inf")

    def make_score_mod(extra):
        def score_mod(score, b, h, qi, ki):
            j = ki - qi - shift
            score = score * coef[h, j] + bias[h, j] + extra[h, j]
            masked = pad[b, ki] | (is_causal & (ki > qi + q_off))
            return torch.where(masked, neg_inf, score)
        return score_mod

    if sco:
        k = sco_keys(k)
    out, lse_p = _flex_call(q, k, v, make_score_mod(torch.zeros_like(coef) if value_log is None else value_log))
    if value_log is None:
        return out
    _, lse = _flex_call(q, k, v[..., :FLEX_MIN_HEAD_DIM], make_score_mod(torch.zeros_like(coef)))
    return (out.float() * torch.exp(lse_p.float() - lse.float())[..., None]).to(v.dtype)


#: torch.compile backend of flex_attention per device type: CUDA compiles the fused kernel; a
#: device without an entry runs PyTorch's unfused reference (on CPU: forward only, torch 2.13).
#: The tests add ``"cpu": "eager"`` to count dynamo's recompiles of our score_mod without a GPU.
FLEX_COMPILE: Dict[str, str] = {"cuda": "inductor"}


#: dynamo's recompile limit while flex_attention compiles (its default, 8, is process-wide): the
#: variants are few but more than one per grad mode (a single decoding query or key is
#: specialised, self- and cross-attention lengths differ, dtypes); tests show how many
FLEX_RECOMPILE_LIMIT = 64


_COMPILED: Dict[str, Callable] = {}


def _flex_call(q, k, v, score_mod):
    """``(output, lse)`` of flex_attention (scale 1: :func:`flex_attention` folds it
    into the score_mod). One compiled function serves every call: the score_mod's closure has one
    shape (dense tensors only), so dynamo's guards differ only by grad mode, dtype and a decoding
    step's single query or key (3 variants without grad, tested), far below the recompile limit;
    past that limit it would silently run the unfused reference, which
    materialises ``[B, H, Lq, Lk]``, so its warning is never filtered here (tests and
    ``benchmarks/attention.py`` set ``torch._dynamo.config.fail_on_recompile_limit_hit``)."""
    from torch.nn.attention import flex_attention as fa

    backend = FLEX_COMPILE.get(q.device.type)
    if backend is None:
        with warnings.catch_warnings():
            # the unfused reference is what we ask for here (its warning says to compile)
            warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            return _flex_with_lse(fa, fa.flex_attention, q, k, v, score_mod)
    import torch._dynamo
    import torch.fx.experimental._config as fx_config

    if backend not in _COMPILED:
        _COMPILED[backend] = torch.compile(fa.flex_attention, dynamic=True, backend=backend)
    q, k, v = (_dense(t) for t in (q, k, v))
    # no duck sizing: self-attention's equal query and key lengths are not a variant of their own
    with torch._dynamo.config.patch(recompile_limit=max(FLEX_RECOMPILE_LIMIT, torch._dynamo.config.recompile_limit)), \
            fx_config.patch(use_duck_shape=False):
        return _flex_with_lse(fa, _COMPILED[backend], q, k, v, score_mod)


def _dense(t: torch.Tensor) -> torch.Tensor:
    """``t`` with row-major strides, also for its size-1 dims (a decoding step's single query):
    dynamo guards on exact strides, which ``contiguous()`` leaves alone there."""
    strides, step = [], 1
    for size in reversed(t.shape):
        strides.append(step)
        step *= max(size, 1)
    return t if t.stride() == tuple(reversed(strides)) else t.clone(memory_format=torch.contiguous_format)


def _flex_with_lse(fa, fn, q, k, v, score_mod):
    if hasattr(fa, "AuxRequest"):
        out, aux = fn(q, k, v, score_mod=score_mod, scale=1.0, return_aux=fa.AuxRequest(lse=True))
        return out, aux.lse
    return fn(q, k, v, score_mod=score_mod, scale=1.0, return_lse=True)
