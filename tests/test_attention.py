"""The attention function: the paper's Table 3, masking, PCM-V, SCO, backends."""
from __future__ import annotations

import math

import pytest
import torch

from agf_exp.attention import AttnBackend, MultiHeadAttention, attention
from agf_exp.positional import AttnType
from agf_exp.positional.agf_m import AGFMConfig
from agf_exp.positional.none import NoneConfig


def table3_inputs():
    """Table 3: two keys/values with raw values 100 and 20 and coefficients 0.1 and 0.5 give the
    same raw score 10. Eight more keys with score 10 (coefficient 1, zero value) make each
    softmax weight 0.1 as in the table. d = 1, so sqrt(d) = 1 and q = 1."""
    q = torch.ones(1, 1, 1, 1)
    raw = torch.tensor([100.0, 20.0] + [10.0] * 8)
    k = raw.view(1, 1, 10, 1)
    v = torch.zeros(1, 1, 10, 2)
    v[0, 0, 0, 0], v[0, 0, 1, 1] = 100.0, 20.0  # value channel i carries key i's contribution
    coef = torch.tensor([0.1, 0.5] + [1.0] * 8).view(1, 1, 10)
    return q, k, v, coef


def test_table3_without_pcmv():
    q, k, v, coef = table3_inputs()
    out, probs = attention(q, k, v, coef=coef, return_probs=True)
    torch.testing.assert_close(probs[0, 0, 0, :2], torch.tensor([0.1, 0.1]))  # raw scores 10 and 10
    # the output takes 0.1 * 100 and 0.1 * 20: equal scores, five times different contributions
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([10.0, 2.0]))


def test_table3_with_pcmv():
    q, k, v, coef = table3_inputs()
    out = attention(q, k, v, coef=coef, value_coef=coef)
    # PCM-V: 0.1 * 0.1 * 100 = 1 and 0.1 * 0.5 * 20 = 1: equal scores, equal contributions
    torch.testing.assert_close(out[0, 0, 0], torch.tensor([1.0, 1.0]))


def rand_qkv(b=2, h=3, lq=5, lk=5, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, h, lq, d, generator=g), torch.randn(b, h, lk, d, generator=g),
            torch.randn(b, h, lk, d, generator=g))


@pytest.mark.parametrize("coef_value", [1e-6, 1.0, 1e3])
def test_masked_keys_stay_masked_whatever_the_coefficient(coef_value):
    q, k, v = rand_qkv()
    pad = torch.zeros(2, 5, dtype=torch.bool)
    pad[0, 3:] = True
    coef = torch.full((3, 5, 5), coef_value)
    out, probs = attention(q, k, v, coef=coef, value_coef=coef, key_padding_mask=pad, causal=True,
                           return_probs=True)
    assert torch.isfinite(out).all()
    assert probs[0, :, :, 3:].abs().max() == 0  # padding
    assert torch.triu(probs, diagonal=1).abs().max() == 0  # future
    v2 = v.clone()
    v2[0, :, 3:] = 1e4
    out2 = attention(q, k, v2, coef=coef, value_coef=coef, key_padding_mask=pad, causal=True)
    torch.testing.assert_close(out, out2)


def test_multiplicative_decay_gives_a_uniform_floor_and_pcmv_removes_it():
    """Notes, pitfall 4: with C ~ 1e-6 the far keys get weight ~ e^0 / Z; PCM-V makes the output
    almost independent of their values."""
    q = torch.ones(1, 1, 1, 1)
    k = torch.tensor([5.0, 1.0, 1.0, 1.0]).view(1, 1, 4, 1)
    v = torch.randn(1, 1, 4, 3)
    coef = torch.tensor([1.0, 1e-6, 1e-6, 1e-6]).view(1, 1, 4)
    _, probs = attention(q, k, v, coef=coef, return_probs=True)
    z = math.exp(5.0) + 3.0
    torch.testing.assert_close(probs[0, 0, 0], torch.tensor([math.exp(5.0) / z, 1 / z, 1 / z, 1 / z]))
    v2 = v.clone()
    v2[0, 0, 1:] += 100.0
    a = attention(q, k, v, coef=coef, value_coef=coef)
    b = attention(q, k, v2, coef=coef, value_coef=coef)
    assert (a - b).abs().max() < 1e-3


def test_sco_uses_key_norm():
    q, k, v = rand_qkv(b=1, h=1, lq=2, lk=3)
    _, probs = attention(q, k, v, sco=True, return_probs=True)
    logits = q[0, 0] @ (k[0, 0] / k[0, 0].norm(dim=-1, keepdim=True)).T
    torch.testing.assert_close(probs[0, 0], logits.softmax(-1))


def test_bias_is_added_and_pcmv_exp_scales_values():
    q, k, v = rand_qkv(b=1, h=2, lq=3, lk=3)
    bias = -torch.rand(2, 3, 3)
    out, probs = attention(q, k, v, bias=bias, value_coef=bias.exp(), return_probs=True)
    logits = q @ k.transpose(-1, -2) / math.sqrt(8) + bias
    torch.testing.assert_close(probs, logits.softmax(-1))
    torch.testing.assert_close(out, (probs * bias.exp()) @ v)


@pytest.mark.parametrize("attn_type", [AttnType.enc, AttnType.dec, AttnType.cross])
@pytest.mark.parametrize("sco", [False, True])
def test_sdpa_matches_eager_for_vanilla(attn_type, sco):
    torch.manual_seed(0)
    kw = dict(sco=sco, dropout=0.0)
    eager = MultiHeadAttention(16, 4, attn_type, NoneConfig(), backend=AttnBackend.eager, **kw)
    sdpa = MultiHeadAttention(16, 4, attn_type, NoneConfig(), backend=AttnBackend.sdpa, **kw)
    sdpa.load_state_dict(eager.state_dict())
    x = torch.randn(2, 6, 16, requires_grad=True)
    mem = torch.randn(2, 7, 16)
    pad = torch.zeros(2, 7 if attn_type == AttnType.cross else 6, dtype=torch.bool)
    pad[1, -2:] = True
    memory = mem if attn_type == AttnType.cross else None
    a = eager(x, memory, key_padding_mask=pad)
    b = sdpa(x, memory, key_padding_mask=pad)
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    ga = torch.autograd.grad(a.sum(), [x, *eager.parameters()])
    gb = torch.autograd.grad(b.sum(), [x, *sdpa.parameters()])
    for u, w in zip(ga, gb):
        torch.testing.assert_close(u, w, atol=1e-5, rtol=1e-5)


def test_sdpa_refuses_multiplicative_modes():
    with pytest.raises(ValueError, match="attn_backend=sdpa cannot"):
        MultiHeadAttention(16, 4, AttnType.enc, AGFMConfig(), backend=AttnBackend.sdpa)
    auto = MultiHeadAttention(32, 2, AttnType.enc, AGFMConfig(), backend=AttnBackend.auto)
    assert auto.resolve_backend(torch.device("cpu")) == AttnBackend.eager
    assert auto.resolve_backend(torch.device("cuda")) == AttnBackend.flex
    dropping = MultiHeadAttention(32, 2, AttnType.enc, AGFMConfig(), dropout=0.1, backend=AttnBackend.auto)
    assert dropping.resolve_backend(torch.device("cuda")) == AttnBackend.eager  # flex has no attention dropout
    assert dropping.eval().resolve_backend(torch.device("cuda")) == AttnBackend.flex
    # heads of 4 channels: below the fused flex kernel's minimum (16), so auto falls back
    small_heads = MultiHeadAttention(16, 4, AttnType.enc, AGFMConfig(), backend=AttnBackend.auto)
    assert small_heads.resolve_backend(torch.device("cuda")) == AttnBackend.eager


def test_pcmv_rejected_for_mode_without_coefficient():
    with pytest.raises(ValueError, match="pcmv=true is not defined"):
        MultiHeadAttention(16, 4, AttnType.enc, NoneConfig(), pcmv=True)


def test_cross_attention_gets_mode_only_when_asked():
    assert MultiHeadAttention(16, 4, AttnType.cross, AGFMConfig()).pos is None
    cfg = AGFMConfig(apply_to=["enc", "dec", "cross"])
    assert MultiHeadAttention(16, 4, AttnType.cross, cfg).pos is not None


def test_logits_and_probabilities_stay_fp32_under_autocast():
    """Inside a bf16 autocast region the reference path still computes q.k, the positional terms
    and the softmax in fp32 (autocast would run q.float() @ k.float() in bf16 again)."""
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 2, 7, 16, generator=g) for _ in range(3))
    coef = torch.rand(2, 7, 7, generator=g) + 0.5
    ref_out, ref_probs = attention(q, k, v, coef=coef, causal=True, return_probs=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, probs = attention(q, k, v, coef=coef, causal=True, return_probs=True)
    assert probs.dtype == torch.float32
    torch.testing.assert_close(probs, ref_probs, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(out, ref_out, atol=1e-6, rtol=1e-5)

    mha = MultiHeadAttention(32, 2, AttnType.dec, AGFMConfig(), backend=AttnBackend.eager)
    qh, kh = torch.randn(2, 2, 7, 16, generator=g), torch.randn(2, 2, 7, 16, generator=g)
    expected = mha.logits(qh, kh)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = mha.logits(qh, kh)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
