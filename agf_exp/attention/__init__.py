"""Attention: the kernels (:mod:`.kernels`: the eager reference, SDPA, flex_attention and the
choice between them) and the module that holds projections, cache and positional mode
(:mod:`.module`)."""
from ..positional import relative_offsets
from .kernels import FLEX_MIN_HEAD_DIM, AttnBackend, attention, backend_problem
from .module import AttentionRecord, MultiHeadAttention

__all__ = ["AttnBackend", "AttentionRecord", "FLEX_MIN_HEAD_DIM", "MultiHeadAttention", "attention",
           "backend_problem", "relative_offsets"]
