"""Every attention backend available here against the eager reference, for every mode and toggle,
with padding and causal masks: forward and gradients (fp32, tolerance ~1e-5).

On CPU: SDPA forward and backward; flex_attention forward only (torch 2.13 has no flex backward on
CPU; the backend refuses to train there). On CUDA (the device machine) flex forward and backward
run too, and everything is also checked in bf16 at a looser tolerance."""
from __future__ import annotations

import itertools

import pytest
import torch

from agf_exp.attention import AttnBackend, MultiHeadAttention, backend_problem
from agf_exp.positional import MODES, AttnType

D_MODEL, HEADS = 32, 2  # head size 16: the smallest flex_attention's fused CUDA kernel takes
CUDA = torch.cuda.is_available()
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def combos(backend):
    """Every (mode, pcmv, sco, attention type) the backend computes; the others go to eager."""
    out = []
    for name, spec in MODES.items():
        for pcmv, sco, attn_type in itertools.product([False, True], [False, True], list(AttnType)):
            if pcmv and not spec.module_class.supports_value_coefficient():
                continue
            if backend_problem(backend, spec.module_class, pcmv) is None:
                out.append((name, pcmv, sco, attn_type))
    return out


def make_pair(name, pcmv, sco, attn_type, backend, seed=0):
    torch.manual_seed(seed)
    cfg = MODES[name].config_class(apply_to=["enc", "dec", "cross"])
    ref = MultiHeadAttention(D_MODEL, HEADS, attn_type, cfg, pcmv=pcmv, sco=sco, backend=AttnBackend.eager)
    with torch.no_grad():  # move positional parameters off their initial values so every term matters
        for p in ref.pos.parameters():
            p.add_(0.2 * torch.randn_like(p))
    other = MultiHeadAttention(D_MODEL, HEADS, attn_type, cfg, pcmv=pcmv, sco=sco, backend=backend)
    other.load_state_dict(ref.state_dict())
    return ref, other


def inputs(attn_type, device, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 7, D_MODEL, generator=g)
    mem = torch.randn(3, 9, D_MODEL, generator=g)
    lk = 9 if attn_type == AttnType.cross else 7
    pad = torch.zeros(3, lk, dtype=torch.bool)
    pad[1, -3:] = True
    pad[2, -1:] = True
    return x.to(device), (mem.to(device) if attn_type == AttnType.cross else None), pad.to(device)


def supported(backend, name, pcmv):
    return backend_problem(backend, MODES[name].module_class, pcmv) is None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,pcmv,sco,attn_type", combos(AttnBackend.sdpa))
def test_sdpa_matches_eager(name, pcmv, sco, attn_type, device):
    ref, sdpa = (m.to(device) for m in make_pair(name, pcmv, sco, attn_type, AttnBackend.sdpa))
    x, mem, pad = inputs(attn_type, device)
    x.requires_grad_(True)
    a, b = ref(x, mem, key_padding_mask=pad), sdpa(x, mem, key_padding_mask=pad)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    ga = torch.autograd.grad(a.square().sum(), [x, *ref.parameters()])
    gb = torch.autograd.grad(b.square().sum(), [x, *sdpa.parameters()])
    for (pname, _), u, w in zip([("x", None), *ref.named_parameters()], ga, gb):
        torch.testing.assert_close(w, u, atol=1e-5, rtol=1e-4, msg=lambda m: f"grad {pname}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,pcmv,sco,attn_type", combos(AttnBackend.flex))
def test_flex_matches_eager(name, pcmv, sco, attn_type, device):
    ref, flex = (m.to(device) for m in make_pair(name, pcmv, sco, attn_type, AttnBackend.flex))
    x, mem, pad = inputs(attn_type, device)
    if device == "cpu":
        with torch.no_grad():
            torch.testing.assert_close(flex(x, mem, key_padding_mask=pad), ref(x, mem, key_padding_mask=pad),
                                       atol=1e-5, rtol=1e-5)
        return
    x.requires_grad_(True)
    a, b = ref(x, mem, key_padding_mask=pad), flex(x, mem, key_padding_mask=pad)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    ga = torch.autograd.grad(a.square().sum(), [x, *ref.parameters()])
    gb = torch.autograd.grad(b.square().sum(), [x, *flex.parameters()])
    for (pname, _), u, w in zip([("x", None), *ref.named_parameters()], ga, gb):
        torch.testing.assert_close(w, u, atol=1e-5, rtol=1e-4, msg=lambda m: f"grad {pname}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name,pcmv", [("agf_m", True), ("alibi_bl", True), ("t5", False), ("rope", False)])
def test_flex_incremental_decoding_matches_eager(name, pcmv, device):
    """Cached decoding (q_offset > 0) reads the same table rows in the flex score_mod."""
    ref, flex = (m.to(device) for m in make_pair(name, pcmv, False, AttnType.dec, AttnBackend.flex))
    x, _, _ = inputs(AttnType.dec, device)
    with torch.no_grad():
        full = ref(x)
        cache: dict = {}
        steps = [flex(x[:, t:t + 1], cache=cache, q_offset=t) for t in range(x.shape[1])]
    tol = 1e-5 if device == "cpu" else 1e-4
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=tol, rtol=tol)


@pytest.mark.skipif(CUDA, reason="CPU-only refusal")
def test_flex_refuses_to_train_on_cpu():
    _, flex = make_pair("agf", False, False, AttnType.enc, AttnBackend.flex)
    x, _, pad = inputs(AttnType.enc, "cpu")
    with pytest.raises(RuntimeError, match="no backward on CPU"):
        flex(x.requires_grad_(True), key_padding_mask=pad)


def test_every_mode_has_a_fused_path_or_is_channelwise():
    """Only AGF-L (LC3 inside q.k) lacks a fused backend; all other modes run in flex."""
    flex_modes = {name for name, *_ in combos(AttnBackend.flex)}
    assert set(MODES) - flex_modes == {n for n, s in MODES.items() if s.module_class.channelwise}


def test_backend_refusals_name_the_fix():
    with pytest.raises(ValueError, match="use model.attn_backend=eager or auto"):
        MultiHeadAttention(D_MODEL, HEADS, AttnType.enc, MODES["agf_l"].config_class(), backend=AttnBackend.flex)
    with pytest.raises(ValueError, match="set model.attn_dropout=0"):
        MultiHeadAttention(D_MODEL, HEADS, AttnType.enc, MODES["agf"].config_class(), dropout=0.1,
                           backend=AttnBackend.flex)


@pytest.mark.parametrize("name", list(MODES))
def test_auto_on_cpu_picks_sdpa_only_when_it_is_exact(name):
    cls = MODES[name].module_class
    for pcmv in ([False, True] if cls.supports_value_coefficient() else [False]):
        mha = MultiHeadAttention(D_MODEL, HEADS, AttnType.enc, MODES[name].config_class(), pcmv=pcmv)
        chosen = mha.resolve_backend(torch.device("cpu"))
        expected = AttnBackend.sdpa if supported(AttnBackend.sdpa, name, pcmv) else AttnBackend.eager
        assert chosen == expected


@pytest.mark.cuda
@pytest.mark.parametrize("name,pcmv", [("none", False), ("agf_m", True), ("alibi_bl", True), ("rope", False)])
def test_auto_bf16_on_cuda_is_close_to_eager(name, pcmv):
    ref, auto = (m.cuda() for m in make_pair(name, pcmv, False, AttnType.dec, AttnBackend.auto))
    x, _, pad = inputs(AttnType.dec, "cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        a, b = ref(x, key_padding_mask=pad), auto(x, key_padding_mask=pad)
    torch.testing.assert_close(b.float(), a.float(), atol=3e-2, rtol=3e-2)


def test_flex_compiles_a_bounded_number_of_variants(monkeypatch):
    """One compiled flex_attention serves every mode, toggle, attention type, length and decoding
    step: dynamo's guards on our score_mod differ only by grad mode and dtype, never reaching its
    recompile limit (past which it would silently run the unfused [B, H, L, L] reference). On CPU
    this compiles with dynamo's "eager" backend, which guards exactly as inductor does on CUDA."""
    import torch._dynamo
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    from torch.nn.attention import flex_attention as fa

    import agf_exp.attention.kernels as attention_module

    monkeypatch.setitem(attention_module.FLEX_COMPILE, "cpu", "eager")
    monkeypatch.setattr(attention_module, "_COMPILED", {})
    monkeypatch.setattr(torch._dynamo.config, "fail_on_recompile_limit_hit", True)
    torch._dynamo.reset()
    try:
        for name, pcmv, sco, attn_type in combos(AttnBackend.flex):
            if sco and name != "agf_m":  # SCO only changes the keys: one mode is enough
                continue
            ref, flex = make_pair(name, pcmv, sco, attn_type, AttnBackend.flex)
            for length in (5, 11):
                x, mem, pad = inputs(attn_type, "cpu")
                x = torch.cat([x, x], 1)[:, :length]
                if attn_type != AttnType.cross:
                    pad = torch.cat([pad, pad], 1)[:, :length]
                with torch.no_grad():
                    torch.testing.assert_close(flex(x, mem, key_padding_mask=pad), ref(x, mem, key_padding_mask=pad),
                                               atol=1e-5, rtol=1e-5)
                    if attn_type == AttnType.dec:  # cached decoding: one query at growing offsets
                        cache: dict = {}
                        for t in range(3):
                            flex(x[:, t:t + 1], cache=cache, q_offset=t)
        compiled = len(_debug_get_cache_entry_list(fa.flex_attention.__code__))
        # without grad: full-length queries, a decoding step's single query against one cached key
        # (dynamo specialises sizes of 1) and against several; training adds one per dtype
        assert 1 <= compiled <= 3, f"{compiled} compiled variants of flex_attention"
    finally:
        torch._dynamo.reset()


# ---- the GPU suite (pytest -m cuda): the fused kernels on a real device -------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("length", [7, 200])
@pytest.mark.parametrize("name,pcmv,sco", [("agf", False, False), ("agf_m", True, False), ("agf_m", True, True),
                                           ("alibi_bl", True, False), ("alibi_bl_mul", True, False), ("t5", False, False)])
def test_flex_bf16_on_cuda_forward_and_every_gradient(name, pcmv, sco, length):
    """bf16 flex against the fp32 eager reference at head size 16, forward and the gradients of
    the input and of every parameter, positional ones included."""
    for attn_type in (AttnType.enc, AttnType.dec):
        ref, flex = (m.cuda() for m in make_pair(name, pcmv, sco, attn_type, AttnBackend.flex))
        g = torch.Generator().manual_seed(length)
        x = torch.randn(2, length, D_MODEL, generator=g).cuda().requires_grad_(True)
        pad = torch.zeros(2, length, dtype=torch.bool, device="cuda")
        pad[1, -3:] = True
        a = ref(x, key_padding_mask=pad)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            b = flex(x, key_padding_mask=pad)
        torch.testing.assert_close(b.float(), a, atol=3e-2, rtol=3e-2)
        ga = torch.autograd.grad(a.square().sum(), [x, *ref.parameters()])
        gb = torch.autograd.grad(b.float().square().sum(), [x, *flex.parameters()])
        for (pname, _), u, w in zip([("x", None), *ref.named_parameters()], ga, gb):
            scale = u.abs().max().clamp_min(1e-6)
            assert (w - u).abs().max() / scale < 5e-2, f"{name} {attn_type.value} grad {pname}"


@pytest.mark.cuda
def test_flex_on_cuda_trains_and_decodes_without_hitting_the_recompile_limit():
    """Training steps (fp32 and bf16), evaluation and cached decoding of a PCM-V model through the
    inductor-compiled kernel; conftest makes dynamo's recompile limit a hard failure."""
    from torch._dynamo.eval_frame import _debug_get_cache_entry_list
    from torch.nn.attention import flex_attention as fa

    for attn_type in (AttnType.enc, AttnType.dec):
        _, flex = (m.cuda() for m in make_pair("agf_m", True, False, attn_type, AttnBackend.flex))
        for length, dtype in ((7, None), (9, torch.bfloat16), (33, torch.bfloat16)):
            x = torch.randn(2, length, D_MODEL, device="cuda", requires_grad=True)
            with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
                flex(x).float().square().sum().backward()
                with torch.no_grad():
                    flex(x)
                    if attn_type == AttnType.dec:
                        cache: dict = {}
                        for t in range(4):
                            flex(x[:, t:t + 1], cache=cache, q_offset=t)
    assert len(_debug_get_cache_entry_list(fa.flex_attention.__code__)) <= 16
