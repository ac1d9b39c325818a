"""Analysis tools on constructed inputs with known answers, and their CLI on a smoke run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from agf_exp import analyze
from agf_exp.analysis import curves, decay

PAPER_FIG5 = [62.9851, 67.6618, 69.025, 69.7529, 70.1426, 70.4782, 70.6026, 70.7271, 70.7603, 70.9213]


# ---- learning curves ----------------------------------------------------------------------------

def test_power_law_curve_is_recovered_and_preferred():
    x = np.arange(1, 13)
    y = 72.0 - 9.0 * x ** -0.8
    fits = curves.fit_learning_curve(x, y)
    p = fits["power"]
    assert (p.a, p.b, p.c) == pytest.approx((72.0, 9.0, 0.8), rel=1e-4)
    assert p.r2 > 0.999999 and p.aic < fits["exponential"].aic
    assert abs(p.loo_last_error) < 1e-3 < abs(fits["exponential"].loo_last_error)


def test_exponential_curve_is_recovered_and_preferred():
    x = np.arange(1, 13)
    rng = np.random.default_rng(0)
    y = 70.0 - 12.0 * np.exp(-0.5 * x) + rng.normal(0, 1e-3, len(x))
    fits = curves.fit_learning_curve(x, y)
    e = fits["exponential"]
    assert e.a == pytest.approx(70.0, abs=0.01) and e.c == pytest.approx(0.5, rel=0.01)
    assert e.ceiling_ci[0] < 70.0 < e.ceiling_ci[1]
    assert e.aic < fits["power"].aic


def test_paper_figure5_ceiling():
    fits = curves.fit_learning_curve(range(1, 11), PAPER_FIG5)
    p = fits["power"]
    assert p.r2 > 0.999 and p.aic < fits["exponential"].aic
    assert PAPER_FIG5[-1] < p.ceiling < 73 and p.ceiling_ci[0] < p.ceiling < p.ceiling_ci[1]


def test_curve_fit_rejects_too_few_points():
    with pytest.raises(ValueError, match="at least 4"):
        curves.fit_curve([1, 2, 3], [1.0, 2.0, 3.0])


# ---- attention decay ----------------------------------------------------------------------------

@pytest.mark.parametrize("truth", ["power", "exponential"])
def test_decay_fit_tells_power_law_from_exponential(truth):
    d = np.arange(1, 41, dtype=float)
    w = 0.3 / (1 + d / 2.0) ** 1.5 if truth == "power" else 0.3 * np.exp(-0.15 * d)
    res = decay.fit_decay(d, w)
    other = "exponential" if truth == "power" else "power"
    assert res[truth]["r2_tail"] > 0.999 and res[truth]["r2_tail"] > res[other]["r2_tail"]
    if truth == "power":
        assert (res["power"]["G"], res["power"]["r"], res["power"]["k"]) == pytest.approx((0.3, 2.0, 1.5), rel=1e-3)
    else:
        assert res["exponential"]["lambda"] == pytest.approx(0.15, rel=1e-6)


def test_profile_accumulator_on_constructed_attention():
    """Head 0 always attends to the next token (δ = +1), head 1 uniformly; sentence 2 is padded."""
    b, h, n = 2, 2, 6
    probs = torch.zeros(b, h, n, n)
    for m in range(n):
        probs[:, 0, m, min(m + 1, n - 1)] = 1.0
    probs[:, 1] = 1.0 / n
    pad = torch.zeros(b, n, dtype=torch.bool)
    pad[1, 4:] = True  # the last two tokens of sentence 2 are padding
    acc = decay.ProfileAccumulator(h, max_distance=3, causal=False)
    acc(probs, pad)
    offsets = np.arange(-3, 4)
    count = acc.count.numpy()
    # pairs at δ=+1: 5 in sentence 1, 3 in sentence 2 (queries 0..2 with keys 1..3)
    assert count[offsets == 1][0] == 5 + 3 and count[offsets == 0][0] == 6 + 4
    mean = (acc.weight / acc.count).numpy()
    assert mean[0, offsets == 1][0] == pytest.approx(1.0) and mean[0, offsets == -1][0] == 0.0
    assert mean[1, offsets == 2][0] == pytest.approx(1.0 / n)
    causal = decay.ProfileAccumulator(h, max_distance=3, causal=True)
    causal(probs, pad)
    assert causal.count[offsets > 0].sum() == 0


def test_decay_cli_on_a_smoke_checkpoint(tmp_path):
    from agf_exp.training import train

    from .conftest import make_cfg

    run = tmp_path / "run"
    train(make_cfg("experiment=smoke", "pos=agf_m", "trainer.decode_splits=[]", "data.train_size=600",
                   "trainer.eval_every_steps=3"), run)
    assert analyze.main(["decay", f"ckpt={run / 'checkpoints/best.pt'}", "max_distance=12", "min_count=5",
                         "max_sentences=100"]) == 0
    result = json.loads((run / "analysis/decay.json").read_text())
    assert {f["better"] for f in result["fits"]} <= {"power", "exponential"} and result["fits"]
    modules = set(result["profiles"])
    assert {"encoder.0.self_attn", "decoder.0.self_attn"} <= modules
    assert not any("cross" in m for m in modules)
    assert (run / "analysis/decay_encoder_0_self_attn.png").is_file()
    dec = result["profiles"]["decoder.0.self_attn"]
    assert all(c == 0 for o, c in zip(dec["offsets"], dec["count"]) if o > 0)  # causal: no future keys
    assert analyze.main(["curve", f"run={run}"]) == 0
    assert (run / "analysis/learning_curve_fit.png").is_file()


def test_recording_attaches_to_self_attention_only_and_detaches():
    from agf_exp.attention import MultiHeadAttention
    from agf_exp.training import build_model

    from .conftest import make_cfg

    model = build_model(make_cfg("experiment=smoke", "pos=alibi_bl"), vocab_size=50, pad_id=0).eval()
    src = torch.randint(4, 50, (2, 7))
    tgt = torch.randint(4, 50, (2, 5))
    plain = model(src, tgt)
    with decay.recording(model, max_distance=4) as accs:
        recorded = model(src, tgt)
    assert set(accs) == {n for n, m in model.named_modules()
                         if isinstance(m, MultiHeadAttention) and m.attn_type.value in ("enc", "dec")}
    assert all(a.count.sum() > 0 for a in accs.values())
    assert torch.allclose(plain, recorded, atol=1e-5)  # the eager path computes the same function
    assert all(m.recorder is None for m in model.modules() if isinstance(m, MultiHeadAttention))


def test_cli_errors_are_clear(capsys):
    assert analyze.main(["nope"]) == 2
    assert "unknown tool 'nope'" in capsys.readouterr().err
    assert analyze.main(["curve"]) == 2
    assert "exactly one of run=" in capsys.readouterr().err
    assert analyze.main(["curve", "values=[1,2,3]"]) == 2
    assert "at least 4" in capsys.readouterr().err
