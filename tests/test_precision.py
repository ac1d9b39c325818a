"""bf16 training on the CPU (docs/precision.md): the fused output projection + loss against the
reference, every positional mode and toggle in the bf16 path against fp32, the choice of
precision and what a run records of it, and resuming across precisions."""
from __future__ import annotations

import json
import logging

import pytest
import torch

from agf_exp import checkpoint, devices
from agf_exp.devices import Precision, cpu_precision_problem, describe_precision
from agf_exp.evaluation import smoothed_loss
from agf_exp.fused_loss import linear_cross_entropy
from agf_exp.model import ModelConfig, Seq2SeqTransformer
from agf_exp.positional import MODES
from agf_exp.rundir import train
from agf_exp.training import batch_loss

from .conftest import make_cfg
from .test_training import FAST, interrupted_run

CPU = torch.device("cpu")
VOCAB = 40


def _inputs(seed=0, n=37, d=24, vocab=VOCAB):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(3, n, d, generator=g).requires_grad_()
    w = (0.3 * torch.randn(vocab, d, generator=g)).requires_grad_()
    gold = torch.randint(4, vocab, (3, n), generator=g)
    gold[0, -5:] = 0  # padding
    gold[2, :3] = 0
    return h, w, gold


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("chunk_rows", [1, 16, 37, 500])
def test_fused_loss_in_fp32_equals_the_reference_loss_and_gradients(label_smoothing, chunk_rows):
    h, w, gold = _inputs()
    ref = smoothed_loss(h @ w.t(), gold, label_smoothing)
    gh, gw = torch.autograd.grad(ref * 3.0, [h, w])
    out = linear_cross_entropy(h, w, gold, label_smoothing, dtype=torch.float32, chunk_rows=chunk_rows)
    fh, fw = torch.autograd.grad(out * 3.0, [h, w])  # the upstream gradient scales both
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(fh, gh, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(fw, gw, rtol=1e-4, atol=1e-5)
    assert fh[0, -5:].abs().max() == 0 and fh[2, :3].abs().max() == 0  # padding gets no gradient


def test_fused_loss_in_bf16_is_close_and_keeps_fp32_gradients_for_fp32_weights():
    h, w, gold = _inputs(1)
    ref = smoothed_loss(h @ w.t(), gold, 0.1)
    gh, gw = torch.autograd.grad(ref, [h, w])
    out = linear_cross_entropy(h, w, gold, 0.1, dtype=torch.bfloat16, chunk_rows=16)
    fh, fw = torch.autograd.grad(out, [h, w])
    assert out.dtype == torch.float32 and fh.dtype == torch.float32 and fw.dtype == torch.float32
    assert abs(out.item() - ref.item()) / ref.item() < 5e-3
    for a, b in ((fh, gh), (fw, gw)):
        assert ((a - b).norm() / b.norm()).item() < 2e-2


def test_fused_loss_without_gradients_computes_none():
    h, w, gold = _inputs(2)
    with torch.no_grad():
        out = linear_cross_entropy(h, w, gold, 0.1, dtype=torch.float32)
    torch.testing.assert_close(out, smoothed_loss(h @ w.t(), gold, 0.1).detach(), rtol=1e-5, atol=1e-4)


def _cases():
    """Every positional mode with its default PE, plus each toggle it takes: PCM-V where the mode
    defines it, SCO, and the absolute PE added to a relative mode."""
    cases = [("none", dict(pe=True)), ("none", dict(pe=False))]
    for name, spec in MODES.items():
        if name == "none":
            continue
        cases.append((name, dict(pe=False)))
        if spec.module_class.supports_value_coefficient():
            cases.append((name, dict(pe=False, pcmv=True)))
    cases += [("agf_m", dict(pe=False, sco=True)), ("agf_m", dict(pe=True, sco=True, pcmv=True)),
              ("alibi_bl", dict(pe=True))]
    return cases


@pytest.mark.parametrize("name,toggles", _cases(), ids=lambda c: c if isinstance(c, str) else
                         "-".join(k for k, v in sorted(c.items()) if v) or "nope")
def test_every_mode_and_toggle_trains_in_the_bf16_path_close_to_fp32(name, toggles):
    """One batch of a small model in fp32 (logits + smoothed_loss, the fp32 path) and in the bf16
    path (autocast + the fused projection and loss): the losses within 2 %; every weight's
    gradient within 10 % in norm and pointing the same way (cosine > 0.99); the positional
    parameters' (a few scalars per head, whose gradient is a sum over every query-key pair with
    much cancellation, so bf16's rounding of q, k and v moves it most: up to 15 % on this batch
    for KERPLE-log, in the eager path too) within 30 % and cosine > 0.9."""
    torch.manual_seed(0)
    mcfg = ModelConfig(d_model=32, n_heads=2, d_ff=64, enc_layers=1, dec_layers=1, dropout=0.0, attn_dropout=0.0)
    model = Seq2SeqTransformer(mcfg, MODES[name].config_class(), VOCAB, 0, **toggles)
    g = torch.Generator().manual_seed(1)
    src, tgt = torch.randint(4, VOCAB, (4, 11), generator=g), torch.randint(4, VOCAB, (4, 9), generator=g)
    src[1, -3:] = 0
    tgt[2, -2:] = 0
    params = [p for p in model.parameters() if p.requires_grad]
    losses, grads = [], []
    for amp, fused in ((None, False), (torch.bfloat16, True)):
        loss = batch_loss(model, model.generator.weight, src, tgt, 0.1, CPU, amp, fused)
        losses.append(loss.item())
        grads.append(torch.autograd.grad(loss, params, allow_unused=True))
    assert abs(losses[1] - losses[0]) / losses[0] < 2e-2, losses
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    for pname, a, b in zip(names, *grads):
        if a is None or a.norm() < 1e-8:
            assert b is None or b.norm() < 1e-3, pname
            continue
        cos = torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0).item()
        min_cos, ratio = (0.9, 0.3) if ".pos." in pname else (0.99, 0.1)
        assert cos > min_cos and abs(b.norm() / a.norm() - 1) < ratio, (pname, cos, (b.norm() / a.norm()).item())


def test_auto_is_fp32_on_a_cpu_without_bf16_units_and_says_why(monkeypatch):
    monkeypatch.setattr(devices, "cpu_bf16_units", lambda: None)
    assert describe_precision(Precision.auto, CPU) == (None, "auto: fp32 (the CPU has no bf16 matrix units)")
    problem = cpu_precision_problem(Precision.bf16, CPU)
    assert "no bf16 matrix units" in problem and "trainer.precision=fp32" in problem and "\n" not in problem
    assert cpu_precision_problem(Precision.fp32, CPU) is None
    assert cpu_precision_problem(Precision.bf16, torch.device("cuda")) is None


def test_auto_on_a_cpu_with_bf16_units_follows_the_parity_switch(monkeypatch):
    monkeypatch.setattr(devices, "cpu_bf16_units", lambda: "avx512_bf16")
    monkeypatch.setattr(devices, "CPU_AUTO_BF16", False)
    dtype, why = describe_precision(Precision.auto, CPU)
    assert dtype is None and "avx512_bf16" in why and "trainer.precision=bf16" in why
    monkeypatch.setattr(devices, "CPU_AUTO_BF16", True)
    assert describe_precision(Precision.auto, CPU) == (torch.bfloat16, "auto: bf16 (the CPU has avx512_bf16)")
    assert cpu_precision_problem(Precision.bf16, CPU) is None
    assert describe_precision(Precision.fp32, CPU)[0] is None


def test_cpu_bf16_units_is_one_of_the_named_instruction_sets():
    assert devices.cpu_bf16_units() in (None, "amx_bf16", "avx512_bf16")


def test_bf16_on_a_cpu_without_units_warns_in_one_line_and_still_trains(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(devices, "cpu_bf16_units", lambda: None)
    import agf_exp.training as training
    monkeypatch.setattr(training, "cpu_bf16_units", lambda: None)
    with caplog.at_level(logging.WARNING):
        summary = train(make_cfg(*FAST, "trainer.max_steps=3", "trainer.decode_splits=[]",
                                 "trainer.precision=bf16"), tmp_path / "r")
    assert any("no bf16 matrix units" in r.getMessage() for r in caplog.records)
    assert summary["precision"]["cpu_bf16_units"] is None and summary["precision"]["autocast"] == "bfloat16"


@pytest.mark.parametrize("first,second", [("fp32", "bf16"), ("bf16", "fp32")])
def test_a_run_resumes_in_the_other_precision(tmp_path, monkeypatch, first, second):
    """last.pt holds fp32 weights and fp32 optimizer state whatever the precision: a run
    interrupted in one precision finishes in the other, and summary.json says which it ended in."""
    overrides = [*FAST, "trainer.max_epochs=1", "trainer.decode_splits=[valid]"]
    run = tmp_path / "r"
    interrupted_run(monkeypatch, make_cfg(*overrides, f"trainer.precision={first}"), run, step=4)
    saved = checkpoint.load(run / "checkpoints/last.pt")
    assert all(t.dtype == torch.float32 for t in saved["model"].values() if t.is_floating_point())
    summary = train(make_cfg(*overrides, f"trainer.precision={second}"), run)
    assert summary["status"] == "complete" and summary["steps"] > 5
    record = json.loads((run / "summary.json").read_text())["precision"]
    assert record["requested"] == second and record["fused_output_loss"] == (second == "bf16")
    assert record["autocast"] == (None if second == "fp32" else "bfloat16")


def test_sdpa_with_a_positional_bias_keeps_the_bias_in_fp32_under_cpu_autocast():
    """Autocast would hand SDPA the bias in bf16 (a bias near 50 on a 0.25 grid); the CPU path
    computes the biased call in fp32 like the eager reference, so on the same bf16 q, k, v both
    give the same output."""
    from agf_exp.attention.kernels import attention, sdpa_attention
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(2, 2, 6, 8, generator=g).to(torch.bfloat16) for _ in range(3))
    bias = -torch.arange(36.0).reshape(6, 6).abs().div(6.0).add(50.0 + 1 / 7).expand(2, 6, 6).contiguous()
    bias = bias + 0.1 * torch.randn(2, 6, 6, generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fused = sdpa_attention(q, k, v, bias, None, False, 0.0)
        ref = attention(q, k, v, bias=bias)
    assert fused.dtype == torch.bfloat16
    torch.testing.assert_close(fused.float(), ref.float(), atol=1e-2, rtol=1e-2)
    coarse = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(),
                                                              attn_mask=bias.to(torch.bfloat16).float()[None])
    assert (coarse - ref.float()).abs().max() > 2e-2  # what the bf16 bias would have given: visibly off


def test_evaluation_in_bf16_projects_chunk_by_chunk_close_to_fp32(monkeypatch):
    """Mixed-precision evaluation never holds a batch's [tokens x vocab] logits (the memory a run's
    peak was spent on): chunked, its statistics do not depend on the chunk size and stay close to
    fp32's, which keeps its one-batch path (the committed fp32 results)."""
    from agf_exp import evaluation

    torch.manual_seed(0)
    model = Seq2SeqTransformer(ModelConfig(d_model=32, n_heads=4, d_ff=64, enc_layers=1, dec_layers=1,
                                           dropout=0.0, attn_dropout=0.0), MODES["agf_m"].config_class(), VOCAB, 0, pe=True)
    g = torch.Generator().manual_seed(1)
    examples = [([int(x) for x in torch.randint(4, VOCAB, (int(n),), generator=g)] + [3],
                 [2] + [int(x) for x in torch.randint(4, VOCAB, (int(n),), generator=g)] + [3])
                for n in torch.randint(3, 20, (40,), generator=g)]
    kw = dict(batch_tokens=400, device=CPU, label_smoothing=0.1)
    fp32 = evaluation.evaluate_split(model, examples, **kw)
    bf16 = evaluation.evaluate_split(model, examples, amp_dtype=torch.bfloat16, **kw)
    monkeypatch.setattr(evaluation, "EVAL_CHUNK_ROWS", 7)
    rows = []
    hook = model.generator.register_forward_hook(lambda m, inp, out: rows.append(out.reshape(-1, out.shape[-1]).shape[0]))
    small = evaluation.evaluate_split(model, examples, amp_dtype=torch.bfloat16, **kw)
    hook.remove()
    assert rows and max(rows) <= 7  # never a whole batch's logits
    assert bf16["val_tokens"] == small["val_tokens"] == fp32["val_tokens"]
    assert small["val_loss"] == pytest.approx(bf16["val_loss"], rel=1e-5)
    assert small["val_acc"] == pytest.approx(bf16["val_acc"], abs=1e-9)
    assert bf16["val_loss"] == pytest.approx(fp32["val_loss"], rel=0.02)
    assert abs(bf16["val_acc"] - fp32["val_acc"]) < 5.0


@pytest.mark.parametrize("precision,user,capped", [("bf16", None, str(devices.ONEDNN_CACHE_CAPACITY)),
                                                   ("bf16", "1024", "1024"), ("fp32", None, None)])
def test_a_bf16_trainer_caps_onednn_s_primitive_cache_unless_the_user_set_it(monkeypatch, tmp_path, precision, user,
                                                                             capped):
    """oneDNN's default cache (1,024 primitives, one per new matmul shape) grew a bf16 run's RSS
    with every update (benchmarks/run_rss.py); the trainer caps it before its first matmul."""
    from agf_exp.training import Trainer

    monkeypatch.delenv(devices.ONEDNN_CACHE_ENV, raising=False)
    if user is not None:
        monkeypatch.setenv(devices.ONEDNN_CACHE_ENV, user)
    Trainer(make_cfg("experiment=smoke", f"trainer.precision={precision}", "trainer.device=cpu"), tmp_path / "run")
    assert devices.os.environ.get(devices.ONEDNN_CACHE_ENV) == capped
