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
    coef, bias = mode.terms(delta)
    assert bias is None and coef.shape == (H, 1, 201)
    d = delta.abs().float()[0]
    expected = 1.0 / (1.0 + d / 24.0) ** 2
    torch.testing.assert_close(coef[0, 0], expected)
    # the values quoted in the notes
    for dist, value in [(1, 0.9216), (10, 0.4983), (24, 0.25), (95, 0.0408)]:
        assert coef[0, 0, 100 + dist].item() == pytest.approx(value, abs=5e-4)


def test_agf_hand_computed_with_per_direction_parameters():
    cfg = AGFConfig(k=1.5)
    mode = build_mode(cfg, 2, 8, AttnType.enc)
    with torch.no_grad():
        mode.log_g.copy_(torch.log(torch.tensor([[2.0, 0.5], [1.0, 3.0]])))  # [dir, head]
        mode.log_inv_r.copy_(torch.log(torch.tensor([[0.1, 0.2], [0.5, 0.05]])))
    coef, _ = mode.terms(torch.tensor([[-3, 0, 4]]))
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
    coef, _ = mode.terms(relative_offsets(1, 1000, 0, "cpu"))
    assert torch.isfinite(coef).all() and (coef > 0).all()


def test_agf_learnable_k():
    mode = build_mode(AGFConfig(k=2.0, k_learnable=True), H, 8, AttnType.enc)
    assert sum(p.numel() for p in mode.parameters()) == 6 * H
    coef, _ = mode.terms(relative_offsets(3, 3, 0, "cpu"))
    coef.sum().backward()
    assert mode.log_k.grad is not None and mode.log_k.grad.abs().sum() > 0


def test_agf_m_table_and_clipping():
    cfg = AGFMConfig(max_distance=5)
    mode = build_mode(cfg, 2, 8, AttnType.enc)
    amp = torch.arange(1, 2 * 2 * 5 + 1, dtype=torch.float32).view(2, 2, 5) / 10.0
    with torch.no_grad():
        mode.log_amp.copy_(amp.log())
    delta = torch.tensor([[-7, -4, 0, 2, 9]])
    coef, _ = mode.terms(delta)
    for j, dlt in enumerate(delta[0].tolist()):
        direction, dist = int(dlt > 0), abs(dlt)
        for h in range(2):
            field = 1.0 / (1.0 + dist / 24.0) ** 2
            expected = field * amp[direction, h, min(dist, 4)].item()
            assert coef[h, 0, j].item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("name,count", [("none", 0), ("agf", 4 * H), ("agf_m", 4 * H + 2 * H * 128)])
def test_parameter_counts(name, count):
    mode = build_mode(MODES[name].config_class(), H, 16, AttnType.enc)
    assert sum(p.numel() for p in mode.parameters()) == count


def test_none_mode_has_no_terms():
    mode = build_mode(NoneConfig(), H, 16, AttnType.enc)
    assert mode.terms(relative_offsets(2, 2, 0, "cpu")) == (None, None)


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
    coef, _ = mode.terms(relative_offsets(30, 30, 0, "cpu"))
    for offset in (-5, 0, 7):
        diag = torch.diagonal(coef, offset=offset, dim1=1, dim2=2)
        assert torch.allclose(diag, diag[:, :1].expand_as(diag))
    assert not math.isclose(coef[0, 10, 5].item(), coef[0, 5, 10].item())  # directions differ
