"""Model-level checks for every mode and toggle: shapes, masks, cached decoding, gradients."""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from agf_exp.decoding import beam_search, greedy_decode
from agf_exp.model import ModelConfig, Norm, Seq2SeqTransformer, sinusoidal_table
from agf_exp.positional import MODES

V, PAD = 40, 0


def make_model(mode="agf_m", pcmv=False, sco=False, pe=False, norm=Norm.pre, apply_to=("enc", "dec"), seed=0):
    torch.manual_seed(seed)
    cfg = ModelConfig(d_model=32, n_heads=4, d_ff=64, enc_layers=2, dec_layers=2, dropout=0.0, attn_dropout=0.0,
                      norm=norm)
    pos = MODES[mode].config_class(apply_to=list(apply_to))
    model = Seq2SeqTransformer(cfg, pos, V, PAD, pe=pe, pcmv=pcmv, sco=sco)
    # move positional parameters off their (symmetric) initial values so every term matters
    with torch.no_grad():
        for p in model.positional_parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, V, (3, 9), generator=g)
    tgt = torch.randint(4, V, (3, 7), generator=g)
    src[1, 6:] = PAD
    tgt[2, 5:] = PAD
    return src, tgt


COMBOS = [(m, pcmv, sco, pe) for m in MODES for pcmv, sco, pe in itertools.product([False, True], repeat=3)
          if not (pcmv and not (MODES[m].module_class.multiplicative or MODES[m].module_class.additive))]


@pytest.mark.parametrize("mode,pcmv,sco,pe", COMBOS)
def test_incremental_decoding_matches_teacher_forcing(mode, pcmv, sco, pe):
    """Golden test per mode: logits from the key/value cache equal a full teacher-forced pass."""
    model = make_model(mode, pcmv, sco, pe, apply_to=("enc", "dec", "cross"))
    src, tgt = batch()
    tgt = tgt.clone()
    tgt[tgt.eq(PAD)] = 5  # the cached path decodes without target padding
    full = model(src, tgt)
    memory, src_pad = model.encode(src)
    cache = [dict() for _ in model.decoder]
    steps = [model.decode(tgt[:, t:t + 1], memory, src_pad, cache=cache, start=t) for t in range(tgt.shape[1])]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode,pcmv", [("none", False), ("agf", False), ("agf", True), ("agf_m", True)])
def test_source_padding_does_not_change_outputs(mode, pcmv):
    model = make_model(mode, pcmv, apply_to=("enc", "dec", "cross"))
    src, tgt = batch()
    short = model(src[1:2, :6], tgt[1:2])
    padded = torch.cat([src[1:2, :6], torch.full((1, 5), PAD)], 1)
    torch.testing.assert_close(model(padded, tgt[1:2]), short, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("mode", list(MODES))
def test_decoder_is_causal(mode):
    model = make_model(mode)
    src, tgt = batch()
    out = model(src, tgt)
    tgt2 = tgt.clone()
    tgt2[:, 4:] = 7
    out2 = model(src, tgt2)
    torch.testing.assert_close(out[:, :4], out2[:, :4])
    assert not torch.allclose(out[:, 4:], out2[:, 4:])


@pytest.mark.parametrize("norm", [Norm.pre, Norm.post])
def test_shapes(norm):
    model = make_model(norm=norm)
    src, tgt = batch()
    assert model(src, tgt).shape == (3, 7, V)


@pytest.mark.parametrize("mode,pcmv", [("agf", False), ("agf", True), ("agf_m", False), ("agf_m", True)])
def test_gradient_reaches_every_positional_parameter(mode, pcmv):
    model = make_model(mode, pcmv, apply_to=("enc", "dec", "cross")).train()
    src, tgt = batch()
    model(src, tgt).logsumexp(-1).sum().backward()
    for name, module in model.named_modules():
        if getattr(module, "pos", None) is None or not hasattr(module, "causal"):
            continue
        for pname, p in module.pos.named_parameters():
            assert p.grad is not None, f"{name}.{pname}"
            left = p.grad[0]
            assert left.abs().sum() > 0, f"{name}.{pname} (left side)"
            if not module.causal:  # the causal decoder never sees the right side
                assert p.grad[1].abs().sum() > 0, f"{name}.{pname} (right side)"


def test_positional_parameter_count_is_reported():
    model = make_model("agf_m")
    counts = model.num_parameters()
    # 2 encoder + 2 decoder self-attentions (cross not enabled), 4 heads, max_distance 128
    assert counts["positional"] == 4 * (4 * 4 + 2 * 4 * 128)
    assert make_model("none").num_parameters()["positional"] == 0


def test_sinusoidal_table():
    table = sinusoidal_table(50, 16)
    assert table[0, 0] == 0 and table[0, 1] == 1
    assert table[7, 2].item() == pytest.approx(math.sin(7 / 10000 ** (2 / 16)), abs=1e-6)
    assert table[7, 3].item() == pytest.approx(math.cos(7 / 10000 ** (2 / 16)), abs=1e-6)


def test_pe_toggle_changes_the_model():
    src, tgt = batch()
    a = make_model("agf", pe=False)(src, tgt)
    b = make_model("agf", pe=True)(src, tgt)
    assert not torch.allclose(a, b)


def test_greedy_equals_beam_of_one_and_decoding_is_consistent():
    model = make_model("agf_m", pcmv=True)
    src, _ = batch()
    greedy = greedy_decode(model, src, max_len_a=1.0, max_len_b=3)
    beam1 = beam_search(model, src, beam=1, max_len_a=1.0, max_len_b=3)
    assert greedy == beam1
    beam4 = beam_search(model, src, beam=4, max_len_a=1.0, max_len_b=3)
    lengths = src.ne(PAD).sum(1).tolist()
    for hyp, n in zip(beam4, lengths):
        assert len(hyp) <= n + 3 and all(t > 3 for t in hyp)


def test_beam_search_finds_a_better_or_equal_score_than_greedy():
    model = make_model("agf")
    src, _ = batch()

    def logprob(i, hyp):
        tgt = torch.tensor([[2] + hyp + [3]])
        lp = model(src[i:i + 1], tgt[:, :-1]).log_softmax(-1)
        return lp[0, torch.arange(len(hyp) + 1), tgt[0, 1:]].sum().item() / (len(hyp) + 1)

    greedy = greedy_decode(model, src, 1.0, 3)
    beam = beam_search(model, src, beam=5, max_len_a=1.0, max_len_b=3)
    for i in range(src.shape[0]):
        assert logprob(i, beam[i]) >= logprob(i, greedy[i]) - 1e-4


@pytest.mark.parametrize("mode", ["none", "agf_m"])
def test_beam_search_drops_ended_sentences_and_each_sentence_decodes_as_alone(mode):
    """A sentence whose search has ended leaves the batch: the decoder's rows shrink, and every
    sentence's translation is the one it gets when decoded by itself (no crossed rows when the
    memory, the cache and the beams are pruned)."""
    model = make_model(mode, pe=mode == "none", seed=3)
    g = torch.Generator().manual_seed(5)
    lengths = [2, 9, 4, 7, 3, 9]
    src = torch.full((len(lengths), max(lengths)), PAD)
    for i, n in enumerate(lengths):
        src[i, :n] = torch.randint(4, V, (n,), generator=g)
    rows, decode = [], model.decode

    def counting(tgt_in, memory, src_pad, cache=None, start=0):
        assert memory.shape[0] == src_pad.shape[0] == tgt_in.shape[0]
        rows.append(tgt_in.shape[0])
        return decode(tgt_in, memory, src_pad, cache=cache, start=start)

    model.decode = counting
    together = beam_search(model, src, beam=3, max_len_a=1.0, max_len_b=1)
    assert rows[0] == len(lengths) * 3 and rows[-1] < rows[0] and rows == sorted(rows, reverse=True)
    assert rows[-1] <= 2 * 3  # at most the two longest sentences search to their limit (10 tokens)
    model.decode = decode
    alone = [beam_search(model, src[i:i + 1, :n], beam=3, max_len_a=1.0, max_len_b=1)[0]
             for i, n in enumerate(lengths)]
    assert together == alone
    assert all(len(hyp) <= n + 1 for hyp, n in zip(together, lengths))
