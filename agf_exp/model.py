"""The encoder-decoder Transformer, readable top to bottom.

Embedding (scaled by sqrt(d_model)) [+ sinusoidal PE when ``pe``] -> dropout -> N encoder
layers -> LayerNorm; the decoder likewise with causal self-attention and cross-attention;
the output projection is tied to the (shared) embedding by default.

``norm=pre`` (default, as OpenNMT-py's Transformer): x + Sublayer(LayerNorm(x)) with a final
LayerNorm per stack. ``norm=post`` (Vaswani et al.): LayerNorm(x + Sublayer(x)), no final norm.
Positional modes live inside :class:`~agf_exp.attention.MultiHeadAttention`; each attention
module owns its own positional parameters.
"""
from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from . import checkpoint

from .attention import AttnBackend, MultiHeadAttention
from .positional import MODES, AttnType, PosConfig


class Norm(str, enum.Enum):
    pre = "pre"
    post = "post"


@dataclass
class ModelConfig:
    """Architecture (``conf/model/*.yaml``)."""

    name: str = "tiny"
    d_model: int = 128
    n_heads: int = 4
    d_ff: int = 512
    enc_layers: int = 2
    dec_layers: int = 2
    dropout: float = 0.1
    attn_dropout: float = 0.1
    norm: Norm = Norm.pre
    share_embeddings: bool = True  # one embedding for source and target (joint vocabulary)
    tie_output: bool = True  # output projection = target embedding
    attn_backend: AttnBackend = AttnBackend.auto  # auto | eager | sdpa | flex (README: Attention backends)
    max_positions: int = 1024  # length of the sinusoidal PE table


def sinusoidal_table(n_pos: int, d_model: int) -> torch.Tensor:
    """Vaswani et al.'s encoding, interleaved: sin on even channels, cos on odd ones
    (OpenNMT-py's default layout)."""
    pos = torch.arange(n_pos, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(n_pos, d_model)
    table[:, 0::2] = torch.sin(pos * freq)
    table[:, 1::2] = torch.cos(pos * freq[: d_model // 2])
    return table


class Embedding(nn.Module):
    """Token embedding * sqrt(d_model) (+ absolute sinusoidal PE), then dropout."""

    def __init__(self, tokens: nn.Embedding, d_model: int, pe: bool, max_positions: int, dropout: float):
        super().__init__()
        self.tokens, self.scale, self.pe = tokens, math.sqrt(d_model), pe
        self.register_buffer("pe_table", sinusoidal_table(max_positions, d_model), persistent=False)
        self.drop = nn.Dropout(dropout)

    def forward(self, ids: torch.Tensor, start: int = 0) -> torch.Tensor:
        x = self.tokens(ids) * self.scale
        if self.pe:
            end = start + ids.shape[1]
            if end > self.pe_table.shape[0]:
                raise ValueError(f"sequence of length {end} exceeds model.max_positions={self.pe_table.shape[0]}")
            x = x + self.pe_table[start:end]
        return self.drop(x)


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        self.fc1, self.fc2, self.drop = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model), nn.Dropout(dropout)

    def forward(self, x):
        return self.fc2(self.drop(F.relu(self.fc1(x))))


class Residual(nn.Module):
    """Wrap a sublayer with dropout, the residual connection and pre- or post-LayerNorm."""

    def __init__(self, d_model: int, dropout: float, norm: Norm):
        super().__init__()
        self.ln, self.drop, self.pre = nn.LayerNorm(d_model), nn.Dropout(dropout), norm == Norm.pre

    def forward(self, x, fn):
        if self.pre:
            return x + self.drop(fn(self.ln(x)))
        return self.ln(x + self.drop(fn(x)))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, pos: PosConfig, pcmv: bool, sco: bool):
        super().__init__()
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, AttnType.enc, pos, pcmv=pcmv, sco=sco,
                                            dropout=cfg.attn_dropout, backend=cfg.attn_backend)
        self.ff = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.res1, self.res2 = Residual(cfg.d_model, cfg.dropout, cfg.norm), Residual(cfg.d_model, cfg.dropout, cfg.norm)

    def forward(self, x, src_pad):
        x = self.res1(x, lambda h: self.self_attn(h, key_padding_mask=src_pad))
        return self.res2(x, self.ff)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, pos: PosConfig, pcmv: bool, sco: bool):
        super().__init__()
        kw = dict(pcmv=pcmv, sco=sco, dropout=cfg.attn_dropout, backend=cfg.attn_backend)
        self.self_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, AttnType.dec, pos, **kw)
        self.cross_attn = MultiHeadAttention(cfg.d_model, cfg.n_heads, AttnType.cross, pos, **kw)
        self.ff = FeedForward(cfg.d_model, cfg.d_ff, cfg.dropout)
        self.res1, self.res2, self.res3 = (Residual(cfg.d_model, cfg.dropout, cfg.norm) for _ in range(3))

    def forward(self, y, memory, tgt_pad, src_pad, cache=None, start=0):
        c_self = c_cross = None
        if cache is not None:
            c_self, c_cross = cache.setdefault("self", {}), cache.setdefault("cross", {})
        y = self.res1(y, lambda h: self.self_attn(h, key_padding_mask=tgt_pad, cache=c_self, q_offset=start))
        y = self.res2(y, lambda h: self.cross_attn(h, memory, key_padding_mask=src_pad, cache=c_cross,
                                                   q_offset=start))
        return self.res3(y, self.ff)


class Seq2SeqTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig, pos: PosConfig, vocab_size: int, pad_id: int,
                 *, pe: bool, pcmv: bool = False, sco: bool = False):
        super().__init__()
        self.cfg, self.pad_id, self.vocab_size = cfg, pad_id, vocab_size
        src_tok = nn.Embedding(vocab_size, cfg.d_model, padding_idx=pad_id)
        tgt_tok = src_tok if cfg.share_embeddings else nn.Embedding(vocab_size, cfg.d_model, padding_idx=pad_id)
        self.src_embed = Embedding(src_tok, cfg.d_model, pe, cfg.max_positions, cfg.dropout)
        self.tgt_embed = Embedding(tgt_tok, cfg.d_model, pe, cfg.max_positions, cfg.dropout)
        self.encoder = nn.ModuleList(EncoderLayer(cfg, pos, pcmv, sco) for _ in range(cfg.enc_layers))
        self.decoder = nn.ModuleList(DecoderLayer(cfg, pos, pcmv, sco) for _ in range(cfg.dec_layers))
        final = cfg.norm == Norm.pre
        self.enc_norm = nn.LayerNorm(cfg.d_model) if final else nn.Identity()
        self.dec_norm = nn.LayerNorm(cfg.d_model) if final else nn.Identity()
        self.generator = nn.Linear(cfg.d_model, vocab_size, bias=False)
        self._init_weights()
        if cfg.tie_output:
            self.generator.weight = tgt_tok.weight

    def _init_weights(self):
        # Xavier-uniform on every projection and embedding matrix (OpenNMT-py's param_init_glorot);
        # positional parameters keep the initial values their mode defines.
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.xavier_uniform_(module.weight)
                if isinstance(module, nn.Linear) and module.bias is not None:
                    nn.init.zeros_(module.bias)
                if isinstance(module, nn.Embedding) and module.padding_idx is not None:
                    with torch.no_grad():
                        module.weight[module.padding_idx].zero_()

    def encode(self, src: torch.Tensor):
        src_pad = src.eq(self.pad_id)
        x = self.src_embed(src)
        for layer in self.encoder:
            x = layer(x, src_pad)
        return self.enc_norm(x), src_pad

    def decode(self, tgt_in, memory, src_pad, cache: Optional[List[dict]] = None, start: int = 0,
               return_hidden: bool = False):
        """Decoder logits ``[B, Lt, V]``. With ``cache`` (a list with one dict per layer), ``tgt_in``
        holds only the new tokens, at absolute positions ``start, start + 1, ...``. With
        ``return_hidden`` the final decoder states ``[B, Lt, D]`` instead (the input of
        ``generator``; :func:`agf_exp.fused_loss.linear_cross_entropy` projects them chunk by chunk)."""
        tgt_pad = tgt_in.eq(self.pad_id) if cache is None else None
        y = self.tgt_embed(tgt_in, start=start)
        for i, layer in enumerate(self.decoder):
            y = layer(y, memory, tgt_pad, src_pad, cache=None if cache is None else cache[i], start=start)
        y = self.dec_norm(y)
        return y if return_hidden else self.generator(y)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, return_hidden: bool = False) -> torch.Tensor:
        memory, src_pad = self.encode(src)
        return self.decode(tgt_in, memory, src_pad, return_hidden=return_hidden)

    def positional_parameters(self):
        return [p for m in self.modules() if isinstance(m, MultiHeadAttention) and m.pos is not None
                for p in m.pos.parameters()]

    def num_parameters(self) -> dict:
        total = sum(p.numel() for p in self.parameters())
        positional = sum(p.numel() for p in self.positional_parameters())
        return {"total": total, "positional": positional}

    @classmethod
    def from_config(cls, config: Dict[str, Any] | DictConfig, vocab_size: int, pad_id: int) -> "Seq2SeqTransformer":
        """The model of a run's (resolved) config, ``pos`` and ``model`` typed by their schemas."""
        cfg = OmegaConf.create(config) if not isinstance(config, DictConfig) else config
        pos_name = cfg.pos.name
        if pos_name not in MODES:
            raise ValueError(f"unknown positional mode {pos_name!r}; known modes: {sorted(MODES)}")
        pos = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(MODES[pos_name].config_class), cfg.pos))
        model_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), cfg.model))
        return cls(model_cfg, pos, vocab_size, pad_id, pe=bool(cfg.pe), pcmv=bool(cfg.pcmv), sco=bool(cfg.sco))


def load_trained(path: str | Path, device: torch.device | str = "cpu",
                 pad_id: int = 0) -> Tuple[Dict[str, Any], Seq2SeqTransformer]:
    """(the checkpoint dict, its model with the saved weights, in eval mode on ``device``) of a
    run's ``best.pt``/``last.pt``; the dict also holds the run's config and subword model (whose
    pad id is 0: :mod:`agf_exp.data.tokenizer` refuses any other)."""
    ckpt = checkpoint.load(Path(path), map_location="cpu")
    model = Seq2SeqTransformer.from_config(ckpt["config"], ckpt["vocab_size"], pad_id)
    model.load_state_dict(ckpt["model"])
    return ckpt, model.to(device).eval()


def reorder_cache(cache: List[dict], index: torch.Tensor) -> None:
    """Select batch rows of a decoding cache in place (beam search)."""
    for layer in cache:
        for part in layer.values():
            for key in part:
                part[key] = part[key].index_select(0, index)
