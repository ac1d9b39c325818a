"""Each positional mode's coefficient against hand-computed values, parameter counts, gradients."""
from __future__ import annotations

import math

import pytest
import torch

from agf_exp.attention import relative_offsets
from agf_exp.positional import MODES, AttnType, build_mode
from agf_exp.positional.agf import AGFConfig
from agf_exp.positional.agf_m import AGFMConfig
from agf_exp.positional.base import split_direction
from agf_exp.positional.none import NoneConfig

H = 4


def test_direction_convention():
    delta = torch.tensor([[-2, -1, 0, 1, 2]])
    direction, dist = split_direction(delta)
    assert direction.tolist() == [[0, 0, 0, 1, 1]]  # delta <= 0 is "left" (incl. the query itself)
    assert dist.tolist() == [[2, 1, 0, 1, 2]]


def test_agf_initial_field_matches_the_formula():
    mode = build_mode(AGFConfig(), H, 16, AttnType.enc)
    delta = relative_offsets(1, 201, 100, "cpu")  # query at 100, keys 0..200
    coef, bias, _ = mode.terms(delta)
    assert bias is None and coef.shape == (H, 1, 201)
    d = delta.abs().float()[0]
    expected = 1.0 / (1.0 + d / 24.0) ** 2
    torch.testing.assert_close(coef[0, 0], expected)
    # the values quoted in docs/positional-modes.md
    for dist, value in [(1, 0.9216), (10, 0.4983), (24, 0.25), (95, 0.0408)]:
        assert coef[0, 0, 100 + dist].item() == pytest.approx(value, abs=5e-4)


def test_agf_hand_computed_with_per_direction_parameters():
    cfg = AGFConfig(k=1.5)
    mode = build_mode(cfg, 2, 8, AttnType.enc)
    with torch.no_grad():
        mode.log_g.copy_(torch.log(torch.tensor([[2.0, 0.5], [1.0, 3.0]])))  # [dir, head]
        mode.log_inv_r.copy_(torch.log(torch.tensor([[0.1, 0.2], [0.5, 0.05]])))
    coef, _, _ = mode.terms(torch.tensor([[-3, 0, 4]]))
    def f(g, inv_r, d):
        return g / (1 + d * inv_r) ** 1.5
    expected = torch.tensor([
        [[f(2.0, 0.1, 3), f(2.0, 0.1, 0), f(1.0, 0.5, 4)]],
        [[f(0.5, 0.2, 3), f(0.5, 0.2, 0), f(3.0, 0.05, 4)]],
    ])
    torch.testing.assert_close(coef, expected)


def test_agf_keeps_parameters_in_range():
    mode = build_mode(AGFConfig(g_max=10.0, inv_r_max=2.0), 1, 8, AttnType.enc)
    with torch.no_grad():
        mode.log_g.fill_(20.0)
        mode.log_inv_r.fill_(20.0)
    g, inv_r, k = mode.field_params()
    assert g.max().item() == pytest.approx(10.0) and inv_r.max().item() == pytest.approx(2.0)
    coef, _, _ = mode.terms(relative_offsets(1, 1000, 0, "cpu"))
    assert torch.isfinite(coef).all() and (coef > 0).all()


def test_agf_learnable_k():
    mode = build_mode(AGFConfig(k=2.0, k_learnable=True), H, 8, AttnType.enc)
    assert sum(p.numel() for p in mode.parameters()) == 6 * H
    coef, _, _ = mode.terms(relative_offsets(3, 3, 0, "cpu"))
    coef.sum().backward()
    assert mode.log_k.grad is not None and mode.log_k.grad.abs().sum() > 0


def test_agf_m_table_and_clipping():
    cfg = AGFMConfig(max_distance=5)
    mode = build_mode(cfg, 2, 8, AttnType.enc)
    amp = torch.arange(1, 2 * 2 * 5 + 1, dtype=torch.float32).view(2, 2, 5) / 10.0
    with torch.no_grad():
        mode.log_amp.copy_(amp.log())
    delta = torch.tensor([[-7, -4, 0, 2, 9]])
    coef, _, _ = mode.terms(delta)
    for j, dlt in enumerate(delta[0].tolist()):
        direction, dist = int(dlt > 0), abs(dlt)
        for h in range(2):
            field = 1.0 / (1.0 + dist / 24.0) ** 2
            expected = field * amp[direction, h, min(dist, 4)].item()
            assert coef[h, 0, j].item() == pytest.approx(expected, rel=1e-5)


PARAM_COUNTS = {  # per attention module, H heads, d_head 16 (the counts each mode's docstring gives)
    "none": 0, "rope": 0, "alibi": 0,
    "agf": 4 * H, "agf_m": 4 * H + 2 * H * 128, "agf_l": 4 * H + 2 * H * 128 + 2 * H * 16 * 128,
    "alibi_bl": 2 * H, "alibi_bl_mul": 2 * H, "kerple_log": 2 * H, "kerple_power": 2 * H, "t5": 32 * H,
}


@pytest.mark.parametrize("name", sorted(MODES))
def test_parameter_counts(name):
    assert name in PARAM_COUNTS, f"add pos={name} to PARAM_COUNTS (and document its count)"
    mode = build_mode(MODES[name].config_class(), H, 16, AttnType.enc)
    assert mode.num_parameters() == PARAM_COUNTS[name]
    assert "parameter" in (type(mode).__doc__ or ""), "the mode class docstring states its parameter count"


@pytest.mark.parametrize("name", sorted(MODES))
def test_terms_depend_only_on_the_offset(name):
    """Every relative term is a function of delta = n - m alone (gathered from one table)."""
    mode = build_mode(MODES[name].config_class(), H, 8, AttnType.enc)
    with torch.no_grad():
        for p in mode.parameters():
            p.add_(0.3 * torch.randn_like(p))
    terms = mode.terms(relative_offsets(12, 12, 0, "cpu"))
    for t in terms:
        if t is None:
            continue
        for offset in (-4, 0, 3):
            diag = torch.diagonal(t, offset=offset, dim1=1, dim2=2)
            assert torch.allclose(diag, diag[..., :1].expand_as(diag))


def test_alibi_slopes():
    from agf_exp.positional.alibi import alibi_slopes

    assert alibi_slopes(8) == pytest.approx([2.0 ** -i for i in range(1, 9)])
    assert alibi_slopes(16)[0] == pytest.approx(2 ** -0.5) and alibi_slopes(16)[-1] == pytest.approx(2 ** -8)
    # non-power of two: the 8 slopes of H=8, then every other slope of H=16
    assert alibi_slopes(12) == pytest.approx(alibi_slopes(8) + alibi_slopes(16)[0::2][:4])


def test_alibi_bias_is_symmetric_and_fixed():
    mode = build_mode(MODES["alibi"].config_class(), 2, 8, AttnType.enc)
    _, bias, _ = mode.terms(torch.tensor([[-3, 0, 2]]))
    torch.testing.assert_close(bias[:, 0], torch.tensor([[-3 / 2 ** 4, 0, -2 / 2 ** 4], [-3 / 2 ** 8, 0, -2 / 2 ** 8]]))
    assert mode.num_parameters() == 0


def test_alibi_bl_directions_and_the_multiplicative_variant():
    bl = build_mode(MODES["alibi_bl"].config_class(), 2, 8, AttnType.enc)
    mul = build_mode(MODES["alibi_bl_mul"].config_class(), 2, 8, AttnType.enc)
    slopes = torch.tensor([[0.1, 0.2], [0.3, 0.4]])  # [dir, head]
    with torch.no_grad():
        bl.log_slope.copy_(slopes.log())
        mul.log_slope.copy_(slopes.log())
    delta = torch.tensor([[-2, 0, 3]])
    _, bias, _ = bl.terms(delta)
    expected = torch.tensor([[[-0.2, 0.0, -0.9]], [[-0.4, 0.0, -1.2]]])
    torch.testing.assert_close(bias, expected)
    coef, no_bias, _ = mul.terms(delta)
    assert no_bias is None
    torch.testing.assert_close(coef, expected.exp())


def test_alibi_bl_mul_is_not_alibi_bl():
    """s * exp(-m d) pulls far logits to 0 (uniform floor); s + (-m d) pushes them to -inf."""
    from agf_exp.attention import attention

    q = torch.ones(1, 1, 1, 1)
    k = torch.full((1, 1, 6, 1), 3.0)
    v = torch.randn(1, 1, 6, 2)
    delta = torch.arange(6)[None] - 5
    c = torch.exp(-0.5 * delta.abs().float())[None]
    _, p_add = attention(q, k, v, bias=c.log(), return_probs=True)
    _, p_mul = attention(q, k, v, coef=c, return_probs=True)
    assert (p_add - p_mul).abs().max() > 0.05


def test_kerple_formulas_and_clamps():
    log_mode = build_mode(MODES["kerple_log"].config_class(), 2, 8, AttnType.enc)
    pow_mode = build_mode(MODES["kerple_power"].config_class(), 2, 8, AttnType.enc)
    with torch.no_grad():
        log_mode.p.copy_(torch.tensor([1.5, -1.0]))  # -1 is clamped to 0.01
        log_mode.a.copy_(torch.tensor([0.5, 2.0]))
        pow_mode.p.copy_(torch.tensor([0.5, 3.0]))  # 3 is clamped to 2
        pow_mode.a.copy_(torch.tensor([0.7, 0.001]))  # 0.001 is clamped to 0.01
    d = torch.tensor([[-4, 0, 2]])
    _, b_log, _ = log_mode.terms(d)
    dist = d.abs().float()[0]
    torch.testing.assert_close(b_log[0, 0], -1.5 * torch.log1p(0.5 * dist))
    torch.testing.assert_close(b_log[1, 0], -0.01 * torch.log1p(2.0 * dist))
    _, b_pow, _ = pow_mode.terms(d)
    torch.testing.assert_close(b_pow[0, 0], -0.7 * dist ** 0.5)
    torch.testing.assert_close(b_pow[1, 0], -0.01 * dist ** 2)
    b_pow.sum().backward()  # d = 0 must not give NaN gradients through d ** p
    assert torch.isfinite(pow_mode.p.grad).all() and torch.isfinite(pow_mode.a.grad).all()


def test_kerple_init_is_seeded():
    torch.manual_seed(3)
    a = build_mode(MODES["kerple_log"].config_class(), H, 8, AttnType.enc).p.detach().clone()
    torch.manual_seed(3)
    b = build_mode(MODES["kerple_log"].config_class(), H, 8, AttnType.enc).p.detach()
    assert torch.equal(a, b) and (a >= 0.01).all() and (a <= 2.0).all()


def test_t5_buckets_match_the_reference_boundaries():
    from agf_exp.positional.t5 import t5_bucket

    d = torch.arange(0, 200)
    left = t5_bucket(-d, True, 32, 128)
    starts = [int(d[left == b][0]) for b in range(16) if (left == b).any()]
    assert starts == [0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 23, 32, 46, 64, 91]
    right = t5_bucket(d[1:], True, 32, 128)
    assert right.min() == 17 and right.max() == 31  # bucket 16 is never used
    causal = t5_bucket(-d, False, 32, 128)
    starts = [int(d[causal == b][0]) for b in range(32) if (causal == b).any()]
    assert starts == list(range(17)) + [19, 21, 24, 27, 31, 35, 40, 46, 52, 59, 67, 77, 87, 99, 113]
    assert (t5_bucket(d[1:], False, 32, 128) == 0).all()  # future keys share bucket 0 (masked anyway)


def test_t5_decoder_uses_causal_buckets():
    cfg = MODES["t5"].config_class()
    enc = build_mode(cfg, 2, 8, AttnType.enc)
    dec = build_mode(cfg, 2, 8, AttnType.dec)
    with torch.no_grad():
        enc.bucket_bias.copy_(torch.arange(64.0).view(32, 2))
        dec.bucket_bias.copy_(torch.arange(64.0).view(32, 2))
    _, b_enc, _ = enc.terms(torch.tensor([[-12, 3]]))
    _, b_dec, _ = dec.terms(torch.tensor([[-12, 3]]))
    assert b_enc[0, 0].tolist() == [9 * 2.0, 19 * 2.0]  # bucket 9 on the left, 16 + 3 on the right
    assert b_dec[0, 0].tolist() == [12 * 2.0, 0.0]


def test_rope_logits_depend_only_on_the_offset():
    mode = build_mode(MODES["rope"].config_class(), 1, 8, AttnType.enc)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    def logit(m, n):
        qm = mode.rotate(q, torch.tensor([m]))
        kn = mode.rotate(k, torch.tensor([n]))
        return (qm * kn).sum().item()
    assert logit(3, 7) == pytest.approx(logit(10, 14), abs=1e-5)
    assert logit(3, 7) != pytest.approx(logit(3, 8), abs=1e-3)
    assert mode.rotate(q, torch.tensor([0])).equal(q)  # position 0 is the identity
    with pytest.raises(ValueError, match="even head dimension"):
        build_mode(MODES["rope"].config_class(), 1, 7, AttnType.enc)


def test_agf_l_starts_as_agf_m_and_weights_channels():
    from agf_exp.attention import attention

    cfg_l, cfg_m = MODES["agf_l"].config_class(), MODES["agf_m"].config_class()
    agf_l, agf_m = build_mode(cfg_l, 2, 4, AttnType.enc), build_mode(cfg_m, 2, 4, AttnType.enc)
    delta = relative_offsets(5, 5, 0, "cpu")
    coef_l, _, channel = agf_l.terms(delta)
    coef_m, _, _ = agf_m.terms(delta)
    torch.testing.assert_close(coef_l, coef_m)
    assert channel.shape == (2, 5, 5, 4) and (channel == 1).all()
    q, k, v = torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)
    torch.testing.assert_close(attention(q, k, v, coef=coef_l, channel=channel), attention(q, k, v, coef=coef_m))
    # a weight on channel 0 only at distance 1 changes exactly q_0 k_0 at |delta| = 1
    with torch.no_grad():
        agf_l.channel_weight[:, :, 1, 0] = 3.0
    _, _, channel = agf_l.terms(delta)
    scores = torch.einsum("bhmc,bhnc,hmnc->bhmn", q, k, channel)
    plain = q @ k.transpose(-1, -2)
    extra = 2.0 * q[..., 0:1] * k[..., 0:1].transpose(-1, -2)
    near = delta.abs() == 1
    torch.testing.assert_close(scores[..., near], (plain + extra)[..., near])
    torch.testing.assert_close(scores[..., ~near], plain[..., ~near])


def test_none_mode_has_no_terms():
    mode = build_mode(NoneConfig(), H, 16, AttnType.enc)
    assert mode.terms(relative_offsets(2, 2, 0, "cpu")) == (None, None, None)


def test_unknown_mode_error_names_the_fix():
    cfg = AGFConfig()
    cfg.name = "gravity"
    with pytest.raises(ValueError, match="known modes"):
        build_mode(cfg, H, 8, AttnType.enc)


def test_invalid_agf_values_are_rejected():
    with pytest.raises(ValueError, match="must be > 0"):
        build_mode(AGFConfig(k=0.0), H, 8, AttnType.enc)


def test_coefficient_table_is_indexed_not_looped():
    """The [H, Lq, Lk] coefficient comes from one [2, H, D] table: its values depend only on delta."""
    mode = build_mode(AGFMConfig(), H, 8, AttnType.enc)
    with torch.no_grad():
        mode.log_amp.normal_()
    coef, _, _ = mode.terms(relative_offsets(30, 30, 0, "cpu"))
    for offset in (-5, 0, 7):
        diag = torch.diagonal(coef, offset=offset, dim1=1, dim2=2)
        assert torch.allclose(diag, diag[:, :1].expand_as(diag))
    assert not math.isclose(coef[0, 10, 5].item(), coef[0, 5, 10].item())  # directions differ
