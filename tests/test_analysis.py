"""Analysis tools on constructed inputs with known answers, and their CLI on a smoke run."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from agf_exp import analyze
from agf_exp.analysis import curves, decay, heads

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


def test_paper_figure5_ceiling_is_unchanged_by_the_accuracy_bound():
    """The bound a <= 100 leaves an interior fit alone: 71.53 [71.41, 71.65], as without it."""
    p = curves.fit_learning_curve(range(1, 11), PAPER_FIG5, upper=curves.ACCURACY_MAX)["power"]
    assert p.identifiable and not p.at_bound
    assert (round(p.ceiling, 2), round(p.ceiling_ci[0], 2), round(p.ceiling_ci[1], 2)) == (71.53, 71.41, 71.65)
    assert p.ceiling_text() == "71.53 [71.41, 71.65]"


def test_a_still_rising_curve_has_no_impossible_or_unidentified_ceiling():
    """Twelve epochs of a curve still climbing steeply: unconstrained, the power law's ceiling lands
    above 100 % with an interval tens of points wide; bounded, it is at most 100 and reported as
    not identifiable rather than as a number."""
    x = np.arange(1, 13)
    rng = np.random.default_rng(1)
    y = 140.0 - 100.0 * x ** -0.25 + rng.normal(0, 0.3, len(x))  # 40 .. 75 %, no plateau in sight
    free = curves.fit_curve(x, y, "power")
    assert free.ceiling > 100 or free.ceiling_ci[1] - free.ceiling_ci[0] > curves.MAX_CEILING_CI_WIDTH
    bounded = curves.fit_curve(x, y, "power", upper=curves.ACCURACY_MAX)
    assert bounded.ceiling <= 100.0 and bounded.ceiling_ci[1] <= 100.0
    assert not bounded.identifiable
    assert bounded.ceiling_text().startswith("not identifiable from 12 epochs")
    with pytest.raises(ValueError, match="above the bound"):
        curves.fit_curve(x, y + 30, "power", upper=curves.ACCURACY_MAX)


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


@pytest.mark.parametrize("shape,expected", [
    ("pure_power", "power"), ("exponential", "exponential"), ("rising_tail", "neither"), ("flat_noise", "neither")])
def test_decay_judge_counts_a_form_only_where_it_describes_the_held_out_tail(shape, expected):
    d = np.arange(1, 41, dtype=float)
    rng = np.random.default_rng(0)
    w = {"pure_power": 0.3 * d ** -1.2, "exponential": 0.3 * np.exp(-0.15 * d),
         "rising_tail": np.where(d <= 20, 0.3 / d, 0.015 * (1 + (d - 20) / 5)),
         "flat_noise": 0.02 * np.exp(rng.normal(0, 0.3, len(d)))}[shape]
    res = decay.fit_decay(d, w)
    assert decay.judge(res) == expected
    if expected == "neither":
        assert res["pure_power"]["r2_tail"] <= 0 or res["exponential"]["r2_tail"] <= 0
    if shape == "pure_power":  # AGF's form can only reach G·d^-k with r on its lower bound: degenerate
        assert res["pure_power"]["k"] == pytest.approx(1.2, rel=1e-6) and res["power"]["degenerate"]


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
    acc.add(probs, pad)
    offsets = np.arange(-3, 4)
    count = acc.count.numpy()
    # pairs at δ=+1: 5 in sentence 1, 3 in sentence 2 (queries 0..2 with keys 1..3)
    assert count[offsets == 1][0] == 5 + 3 and count[offsets == 0][0] == 6 + 4
    mean = (acc.weight / acc.count).numpy()
    assert mean[0, offsets == 1][0] == pytest.approx(1.0) and mean[0, offsets == -1][0] == 0.0
    assert mean[1, offsets == 2][0] == pytest.approx(1.0 / n)
    causal = decay.ProfileAccumulator(h, max_distance=3, causal=True)
    causal.add(probs, pad)
    assert causal.count[offsets > 0].sum() == 0


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """A tiny AGF-M model trained on synthetic pairs of at most 24 source/target tokens."""
    from agf_exp.rundir import train

    from .conftest import make_cfg

    run = tmp_path_factory.mktemp("analysis") / "run"
    train(make_cfg("experiment=smoke", "pos=agf_m", "trainer.decode_splits=[]", "data.train_size=900",
                   "data.max_len=24", "trainer.eval_every_steps=3"), run)
    return run


def test_decay_and_curve_cli_on_a_smoke_checkpoint(smoke_run):
    run = smoke_run
    assert analyze.main(["decay", f"ckpt={run / 'checkpoints/best.pt'}", "max_distance=12", "min_count=5",
                         "max_sentences=100"]) == 0
    result = json.loads((run / "analysis/decay.json").read_text())
    assert {f["better"] for f in result["fits"]} <= {"power", "exponential", "neither"} and result["fits"]
    modules = set(result["profiles"])
    assert {"encoder.0.self_attn", "decoder.0.self_attn"} <= modules
    assert not any("cross" in m for m in modules)
    assert (run / "analysis/decay_encoder_0_self_attn.png").is_file()
    dec = result["profiles"]["decoder.0.self_attn"]
    assert all(c == 0 for o, c in zip(dec["offsets"], dec["count"]) if o > 0)  # causal: no future keys
    assert analyze.main(["curve", f"run={run}"]) == 0
    assert (run / "analysis/learning_curve_fit.png").is_file()


def test_heads_cli_on_a_smoke_checkpoint(smoke_run):
    run = smoke_run
    assert analyze.main(["heads", f"ckpt={run / 'checkpoints/best.pt'}", "max_sentences=60", "n_perms=3",
                         "min_count=5"]) == 0
    result = json.loads((run / "analysis/heads.json").read_text())
    types = {h["attn_type"] for h in result["heads"]}
    assert types == {"enc", "dec", "cross"} and all(h["rows"] > 0 for h in result["heads"])
    assert all(h["P"] + h["S"] <= 1 + 1e-9 for h in result["heads"])  # the exclusion principle
    assert (run / "analysis/heads_heatmap.png").is_file() and (run / "analysis/heads_plane.png").is_file()


def test_report_reads_the_analysis_files_of_a_run(smoke_run):
    """The report's attention section and appendix, from the files the two CLIs above wrote."""
    from agf_exp.results import claims, runs as result_runs

    run = smoke_run
    ckpt = f"ckpt={run / 'checkpoints/best.pt'}"
    if not (run / "analysis/decay.json").is_file():  # written by the tests above unless run alone
        assert analyze.main(["decay", ckpt, "max_distance=12", "min_count=5", "max_sentences=100"]) == 0
    if not (run / "analysis/heads.json").is_file():
        assert analyze.main(["heads", ckpt, "max_sentences=60", "n_perms=3", "min_count=5"]) == 0
    record = result_runs.load_run(run, result_runs.row_signatures())
    assert record.row == "agf_m"
    evidence = claims.attention_evidence({"agf_m": [record]})
    decay_fits = json.loads((run / "analysis/decay.json").read_text())["fits"]
    n_cross = sum(h["attn_type"] == "cross" for h in json.loads((run / "analysis/heads.json").read_text())["heads"])
    assert evidence["profiles"] == len(decay_fits) and evidence["models"][0]["heads"]["cross"]["heads"] == n_cross > 0
    text = claims.analysis_appendix({"attention": evidence})
    assert "### Attention of `agf_m` (seed 1)" in text and "| module | head | P (permutation)" in text
    assert (f"Of {len(decay_fits)} (head, side) profiles, the far half is described by the power law in "
            f"{evidence['power']}, by the exponential in {evidence['exponential']}, by neither in "
            f"{evidence['neither']}") in text


def test_lengths_cli_marks_buckets_beyond_the_training_length(smoke_run):
    run = smoke_run
    assert analyze.main(["lengths", f"ckpt={run / 'checkpoints/best.pt'}", "split=test", "buckets=[12,24,36]",
                         "strategy=greedy"]) == 0
    result = json.loads((run / "analysis/lengths_test.json").read_text())
    rows = result["results"]
    assert [r["bucket"] for r in rows] == ["1-12", "13-24", "25-36", "37+"]
    assert sum(r["sentences"] for r in rows) == 100 and result["train_max_len"] == 24
    assert [r["beyond_train"] for r in rows if r["sentences"]] == [r["src_len_min"] > 24 for r in rows if r["sentences"]]
    assert any(r["beyond_train"] for r in rows)
    for r in rows:
        if r["sentences"]:
            assert 0 <= r["bleu"] <= 100 and 0 <= r["acc"] <= 100 and r["ppl"] >= 1
    assert (run / "analysis/lengths_test.png").is_file()
    hyps = (run / "analysis/lengths_test.greedy.txt").read_text().splitlines()
    assert len(hyps) == 100
    assert analyze.main(["lengths", f"ckpt={run / 'checkpoints/best.pt'}", "split=long", "max_sentences=10",
                         "buckets=[24]", "strategy=greedy"]) == 0
    long = json.loads((run / "analysis/lengths_long.json").read_text())["results"]
    assert long[0]["sentences"] == 0 and long[1]["sentences"] == 10 and long[1]["beyond_train"]


def test_length_buckets():
    from agf_exp.analysis import lengths

    assert lengths.bucket_labels([10, 20]) == ["1-10", "11-20", "21+"]
    assert lengths.assign([1, 10, 11, 20, 21, 500], [10, 20]).tolist() == [0, 0, 1, 1, 2, 2]
    with pytest.raises(ValueError, match="increasing"):
        lengths.assign([3], [20, 10])


def test_synthetic_long_split_is_longer_and_leaves_the_other_splits_alone():
    from agf_exp.data.synthetic import SyntheticDataConfig, load_synthetic

    with_long = load_synthetic(SyntheticDataConfig(train_size=300, long_size=50), seed=3)
    without = load_synthetic(SyntheticDataConfig(train_size=300, long_size=0), seed=3)
    assert "long" not in without.splits
    for split in ("train", "valid", "test"):
        assert with_long.splits[split] == without.splits[split]
    longest_train = max(len(s.split()) for s in with_long.splits["train"][0])
    long_src = with_long.splits["long"][0]
    assert len(long_src) == 50 and min(len(s.split()) for s in long_src) > 0
    assert np.median([len(s.split()) for s in long_src]) > longest_train
    assert all(s.count(" and ") == 3 for s in long_src)


def test_recording_attaches_to_self_attention_only_and_detaches():
    from agf_exp.attention import MultiHeadAttention
    from agf_exp.model import Seq2SeqTransformer

    from .conftest import make_cfg

    model = Seq2SeqTransformer.from_config(make_cfg("experiment=smoke", "pos=alibi_bl"), vocab_size=50, pad_id=0).eval()
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


# ---- positional vs symbolic heads ---------------------------------------------------------------

def _causal_valid(b, n):
    return torch.ones(n, n, dtype=torch.bool).tril()[None].expand(b, n, n)


def _masked(logits, valid):
    return logits.masked_fill(~valid[:, None], float("-inf"))


def test_random_key_index_permutes_valid_keys_within_each_row():
    valid = _causal_valid(3, 6).clone()
    valid[1, :, 4:] = False  # padding
    index = heads.random_key_index(valid, torch.Generator().manual_seed(0))
    for b in range(3):
        for m in range(6):
            ok = valid[b, m].nonzero().flatten().tolist()
            assert sorted(index[b, m, ok].tolist()) == ok  # a permutation of the valid keys
            rest = (~valid[b, m]).nonzero().flatten().tolist()
            assert sorted(index[b, m, rest].tolist()) == rest


def test_diagonal_offset_head_is_positional_and_fixed_token_head_is_symbolic():
    """Head 0 attends to the previous position whatever is there; head 1 to one special token
    wherever it is. Keys are random tokens; the decoder-style causal mask applies."""
    b, n, special = 64, 10, 7
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 10, (b, n), generator=gen)
    valid = _causal_valid(b, n)
    delta = torch.arange(n)[None, :] - torch.arange(n)[:, None]

    def logits_fn(index):
        moved = tokens[:, None, :].expand(b, n, n) if index is None else torch.gather(
            tokens[:, None, :].expand(b, n, n), 2, index)
        positional = (-4.0 * (delta + 1).abs().float())[None].expand(b, n, n)
        symbolic = 6.0 * (moved == special).float()
        return _masked(torch.stack([positional, symbolic], 1), valid)

    perm = heads.PermutationScores(2, n_perms=5, seed=0)
    perm.add(logits_fn, valid, torch.ones(b, n, dtype=torch.bool))
    p, s = perm.scores()
    assert (p[0], s[0]) == pytest.approx((1.0, 0.0), abs=1e-6)
    assert (p[1], s[1]) == pytest.approx((0.0, 1.0), abs=1e-6)

    corr = heads.CorrelationRatios(2, vocab_size=10, max_distance=16, min_count=5)
    corr.add(logits_fn(None), valid, torch.ones(b, n, dtype=torch.bool), tokens, torch.arange(b) % 2)
    eta_pos, eta_sym = corr.scores()
    assert eta_pos[0] == pytest.approx(1.0, abs=1e-9) and eta_sym[0] < 0.2
    assert eta_sym[1] == pytest.approx(1.0, abs=1e-9) and eta_pos[1] < 0.2


def test_mixed_heads_obey_the_exclusion_principle():
    b, n = 32, 9
    gen = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, 6, (b, n), generator=gen)
    by_delta, by_token = torch.randn(3, 2 * n + 1, generator=gen), torch.randn(3, 6, generator=gen)
    valid = torch.ones(b, n, n, dtype=torch.bool)
    delta = (torch.arange(n)[None, :] - torch.arange(n)[:, None]) + n

    def logits_fn(index):
        moved = tokens[:, None, :].expand(b, n, n) if index is None else torch.gather(
            tokens[:, None, :].expand(b, n, n), 2, index)
        return torch.stack([by_delta[h][delta][None] + by_token[h][moved] for h in range(3)], 1)

    perm = heads.PermutationScores(3, n_perms=4, seed=0)
    perm.add(logits_fn, valid, torch.ones(b, n, dtype=torch.bool))
    p, s = perm.scores()
    assert np.all(p + s <= 1 + 1e-9) and np.all(p > 0) and np.all(s > 0)


@pytest.mark.parametrize("mode", ["none", "agf", "agf_m", "agf_l", "alibi_bl", "kerple_log", "t5", "rope"])
@pytest.mark.parametrize("attn_type", ["enc", "dec", "cross"])
def test_recorded_logits_reproduce_the_attention_probabilities(mode, attn_type):
    """AttentionRecord.logits recomputes what the module attended with, for every mode (RoPE: from
    the unrotated q and k), and an identity key_index changes nothing."""
    from agf_exp.attention import MultiHeadAttention

    from .conftest import make_cfg

    cfg = make_cfg(f"pos={mode}", "pos.apply_to=[enc,dec,cross]")
    mha = MultiHeadAttention(16, 2, attn_type, cfg.pos, sco=mode == "agf_m").eval()
    x, mem = torch.randn(3, 6, 16), torch.randn(3, 8, 16)
    pad = torch.zeros(3, 8 if attn_type == "cross" else 6, dtype=torch.bool)
    pad[2, -2:] = True
    got = []
    mha.recorder = got.append
    with torch.no_grad():
        _, probs = mha(x, mem if attn_type == "cross" else None, key_padding_mask=pad, return_probs=True)
    rec = got[0]
    logits = rec.logits()
    assert torch.allclose(logits.softmax(-1), probs, atol=1e-6)
    lk = logits.shape[-1]
    identity = torch.arange(lk).expand(3, logits.shape[2], lk)
    assert torch.allclose(rec.logits(identity), logits, atol=1e-5)


def test_model_heads_with_only_positional_logits_and_vanilla_heads():
    """Zeroed query projections leave ALiBi-B-L self-attention logits = bias(δ): positional (1, 0);
    vanilla attention (pos=none) has no positional term in its logits: symbolic (0, 1)."""
    from agf_exp.model import Seq2SeqTransformer

    from .conftest import make_cfg

    src = torch.randint(4, 40, (40, 9), generator=torch.Generator().manual_seed(3))
    tgt = torch.randint(4, 40, (40, 8), generator=torch.Generator().manual_seed(4))
    examples = [(s.tolist(), t.tolist()) for s, t in zip(src, tgt)]
    model = Seq2SeqTransformer.from_config(make_cfg("experiment=smoke", "pos=alibi_bl"), vocab_size=40, pad_id=0).eval()
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.endswith("self_attn"):
                module.q_proj.weight.zero_()
    scores = heads.head_scores(model, examples, pad_id=0, vocab_size=40, n_perms=3, min_count=5)
    self_attn = [s for s in scores if s.attn_type in ("enc", "dec")]
    assert self_attn and all((s.P, s.S) == pytest.approx((1.0, 0.0), abs=1e-6) for s in self_attn)
    assert all(s.eta_pos == pytest.approx(1.0, abs=1e-6) and s.dominant == "positional" for s in self_attn)
    vanilla = Seq2SeqTransformer.from_config(make_cfg("experiment=smoke", "pos=none"), vocab_size=40, pad_id=0).eval()
    scores = heads.head_scores(vanilla, examples, pad_id=0, vocab_size=40, n_perms=3, min_count=5)
    assert all((s.P, s.S) == pytest.approx((0.0, 1.0), abs=1e-6) for s in scores)
    text = heads.to_markdown(scores, pe=True)
    assert "pe=true" in text and "| encoder.0.self_attn | 0 |" in text


def test_cli_errors_are_clear(capsys):
    assert analyze.main(["nope"]) == 2
    assert "unknown tool 'nope'" in capsys.readouterr().err
    assert analyze.main(["curve"]) == 2
    assert "exactly one of run=" in capsys.readouterr().err
    assert analyze.main(["curve", "values=[1,2,3]"]) == 2
    assert "at least 4" in capsys.readouterr().err
    assert analyze.main(["heads", "ckpt=/nonexistent/best.pt"]) == 2
    assert "/nonexistent/best.pt" in capsys.readouterr().err
    assert analyze.main(["lengths", "ckpt=x.pt", "buckets=[20,10]"]) == 2
    assert "increasing positive upper edges" in capsys.readouterr().err
