"""The field plots: values equal the modes' tables, PNGs are written, the CLI works on a run."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agf_exp.model import ModelConfig, Seq2SeqTransformer
from agf_exp.analysis.fields import draw, fields
from agf_exp.positional import MODES

ROOT = Path(__file__).resolve().parent.parent


def model_for(mode: str) -> Seq2SeqTransformer:
    torch.manual_seed(0)
    cfg = ModelConfig(d_model=32, n_heads=4, d_ff=64, enc_layers=2, dec_layers=1, dropout=0.0, attn_dropout=0.0)
    return Seq2SeqTransformer(cfg, MODES[mode].config_class(), 30, 0, pe=False, pcmv=False, sco=False)


@pytest.mark.parametrize("mode", sorted(MODES))
def test_fields_follow_the_mode(mode):
    model = model_for(mode)
    got = fields(model, max_distance=10)
    cls = MODES[mode].module_class
    if not (cls.multiplicative or cls.additive):
        assert got == []
        return
    assert [f.name for f in got] == ["encoder.0.self_attn", "encoder.1.self_attn", "decoder.0.self_attn"]
    enc, dec = got[0], got[-1]
    assert enc.offsets.tolist() == list(range(-10, 11)) and dec.offsets.tolist() == list(range(-10, 1))
    module = model.encoder[0].self_attn.pos
    tab = module.table(enc.offsets)
    expected = tab.log_coef.exp() if cls.multiplicative else tab.bias
    torch.testing.assert_close(enc.values, expected.detach())
    assert enc.kind == ("coefficient C" if cls.multiplicative else "bias B")
    assert (enc.channel_mean is not None) == cls.channelwise


def test_agf_field_starts_at_the_papers_curve():
    f = fields(model_for("agf"), max_distance=24)[0]
    assert f.values[0, 24].item() == pytest.approx(1.0)  # delta = 0
    assert f.values[0, 0].item() == pytest.approx(0.25)  # delta = -24: (1 + 24/24)^-2


def test_draw_writes_one_png_per_module_and_an_overview(tmp_path):
    written = draw(fields(model_for("agf_l"), max_distance=8), tmp_path, title="pos=agf_l")
    assert set(written) == {"encoder.0.self_attn", "encoder.1.self_attn", "decoder.0.self_attn", "overview"}
    for path in written.values():
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_on_a_checkpoint(tmp_path):
    from agf_exp.rundir import train

    from .conftest import make_cfg

    run = tmp_path / "run"
    train(make_cfg("experiment=smoke", "pos=alibi_bl", "trainer.max_epochs=1", "trainer.decode_splits=[valid]",
                   "trainer.decode_strategies=[greedy]", "trainer.max_decode_sentences=5"), run)
    assert (run / "fields" / "overview.png").is_file()  # drawn by the trainer at the end of the run
    out = tmp_path / "plots"
    proc = subprocess.run([sys.executable, "-m", "agf_exp.plot_fields", f"ckpt={run}/checkpoints/best.pt",
                           f"out={out}", "max_distance=16"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert (out / "overview.png").is_file() and (out / "encoder_0_self_attn.png").is_file()
    bad = subprocess.run([sys.executable, "-m", "agf_exp.plot_fields", f"ckpt={tmp_path}/nope.pt"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "does not exist" in bad.stderr
