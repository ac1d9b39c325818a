"""Config composition: every group option, typed schemas, start-up errors."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from agf_exp.config import ConfigError, LoggerConfig, TrainerConfig, validate
from agf_exp.data import SOURCES
from agf_exp.model import ModelConfig
from agf_exp.positional import MODES

from .conftest import CONF_DIR, make_cfg

ROOT = Path(CONF_DIR).parent


def options(group):
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml"))


def test_every_mode_has_a_yaml_and_every_yaml_a_mode():
    assert set(options("pos")) == set(MODES)
    # every data source has its option; further options are sizes of one (synthetic_small), each
    # typed by its source's schema (test_data_options_compose_typed)
    assert set(SOURCES) <= set(options("data"))


@pytest.mark.parametrize("option", options("pos"))
def test_pos_options_compose_typed(option):
    cfg = make_cfg(f"pos={option}")
    assert cfg.pos.name == option
    assert OmegaConf.get_type(cfg.pos) is MODES[option].config_class


@pytest.mark.parametrize("option", options("data"))
def test_data_options_compose_typed(option):
    overrides = [f"data={option}"]
    cfg = make_cfg(*overrides)
    assert option in SOURCES or option.startswith(f"{cfg.data.name}_")
    assert OmegaConf.get_type(cfg.data) is SOURCES[cfg.data.name][0]


@pytest.mark.parametrize("group,schema", [("model", ModelConfig), ("trainer", TrainerConfig),
                                          ("logger", LoggerConfig)])
def test_single_schema_groups_compose_typed(group, schema):
    for option in options(group):
        cfg = make_cfg(f"{group}={option}")
        assert OmegaConf.get_type(cfg[group]) is schema, option


@pytest.mark.parametrize("option", options("experiment"))
def test_experiments_compose(option):
    cfg = make_cfg(f"experiment={option}")
    OmegaConf.to_container(cfg.model, resolve=True)
    assert cfg.trainer.max_epochs >= 1


def test_transformer_big_is_the_papers_model():
    m = make_cfg("model=transformer_big").model
    assert (m.d_model, m.n_heads, m.d_ff, m.enc_layers, m.dec_layers) == (1024, 16, 4096, 3, 3)


def test_paper_experiment_is_table_1_on_wmt17():
    cfg = make_cfg("experiment=paper")
    validate(cfg)
    assert cfg.model.name == "transformer_big" and cfg.data.name == "wmt17_en_de" and cfg.data.binarize
    t = cfg.trainer
    assert t.precision.value == "fp16" and t.max_epochs == 10 and t.batch_tokens * t.accum_steps == 50_000
    assert abs(t.lr - 2 * 1024 ** -0.5 * 4000 ** -0.5) < 1e-12 and t.clip_grad_norm == 0  # OpenNMT-py noam peak


def test_paper_command_line_works_as_written():
    cfg = make_cfg("pos=agf_m", "pcmv=true")
    assert cfg.pcmv is True and cfg.pos.name == "agf_m" and cfg.pe is False
    validate(cfg)


@pytest.mark.parametrize("overrides,expected", [
    (["pos=none"], True), (["pos=agf"], False), (["pos=agf_m"], False),
    (["pos=agf_m", "pe=true"], True), (["pos=none", "pe=false"], False),
])
def test_pe_defaults_per_mode_and_command_line_wins(overrides, expected):
    assert make_cfg(*overrides).pe is expected


@pytest.mark.parametrize("bad", [
    "model.d_modle=3",  # unknown key
    "model.d_model=abc",  # wrong type
    "model.norm=middle",  # unknown enum value
    "pos.apply_to=[enc,sideways]",  # unknown attention type
    "trainer.precision=fp8",
    "pcmv=maybe",
])
def test_bad_values_fail_at_start_up(bad):
    with pytest.raises((ConfigCompositionException, OmegaConfBaseException)):
        cfg = make_cfg("pos=agf", bad)
        OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)


@pytest.mark.parametrize("added", ["+model.d_modle=3", "+pos.radius=3", "+lr=1"])
def test_keys_added_with_plus_are_rejected_at_start_up(added):
    with pytest.raises(ConfigError, match="unknown key"):
        validate(make_cfg("pos=agf", added))


def test_unknown_mode_lists_the_available_ones():
    with pytest.raises(ConfigCompositionException) as err:
        make_cfg("pos=gravity")
    assert "agf_m" in str(err.value)


@pytest.mark.parametrize("mode", ["none", "rope"])
def test_pcmv_without_coefficient_is_rejected(mode):
    with pytest.raises(ConfigError, match=f"pcmv=true is not defined for pos={mode}"):
        validate(make_cfg(f"pos={mode}", "pcmv=true"))


@pytest.mark.parametrize("mode", ["agf", "alibi_bl", "alibi_bl_mul", "kerple_log", "t5"])
def test_pcmv_is_accepted_for_modes_with_a_coefficient_or_bias(mode):
    validate(make_cfg(f"pos={mode}", "pcmv=true"))


def test_flex_backend_checks():
    with pytest.raises(ConfigError, match="attn_backend=flex cannot run pos=agf_l"):
        validate(make_cfg("pos=agf_l", "model.attn_backend=flex", "model.attn_dropout=0"))
    with pytest.raises(ConfigError, match="set model.attn_dropout=0"):
        validate(make_cfg("pos=agf_m", "model.attn_backend=flex"))
    validate(make_cfg("pos=agf_m", "pcmv=true", "model.attn_backend=flex", "model.attn_dropout=0"))


def test_sdpa_backend_with_multiplicative_mode_is_rejected():
    with pytest.raises(ConfigError, match="attn_backend=sdpa cannot"):
        validate(make_cfg("pos=agf", "model.attn_backend=sdpa"))
    validate(make_cfg("pos=none", "model.attn_backend=sdpa"))


def test_cli_prints_composed_config():
    out = subprocess.run([sys.executable, "run.py", "pos=agf_m", "pcmv=true", "--cfg", "job"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    printed = OmegaConf.create(out.stdout)
    assert printed.pos.name == "agf_m" and printed.pcmv is True and printed.pos.max_distance == 128


def test_cli_rejects_wrong_key_with_hydra_message():
    out = subprocess.run([sys.executable, "run.py", "model.d_modle=3"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0
    assert "d_modle" in out.stderr


@pytest.mark.parametrize("overrides, name", [
    ([], "vanilla"),  # pos=none with its default PE is the paper's vanilla row
    (["pos=agf_m", "pcmv=true"], "agf_m_pcmv"),  # a row's mode and toggles: the row's name
    (["pos=agf_m", "sco=true"], "agf_m+sco"),  # no row: mode + the toggles that are on
    (["pos=alibi", "pe=true"], "alibi+pe"),  # PE on where the mode's default is off
    (["pos=none", "pe=false"], "none-pe"),  # and off where it is on (NoPE)
    (["arm=nope"], "nope"),  # a study arm names itself
])
def test_the_default_run_name_says_what_the_run_is(overrides, name):
    cfg = make_cfg(*overrides)
    assert cfg.run_name == name


def test_help_lists_user_facing_groups_only():
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "--help"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    groups = out.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    lines = {line.split(":")[0]: line.split(": ")[1] for line in groups.splitlines() if ": " in line and "(" not in line}
    assert "base_" not in groups and "schema" not in lines and "wandb" not in lines  # no schemas, no W&B sweep files
    assert lines["pos"].split(", ") == sorted(MODES) and "table4" in lines["table"] and "lengthgen_synthetic" in lines["study"]
    assert lines["logger"] == "none, wandb" and lines["trainer"] == "default"


def _complete(line: str) -> list:
    env = {**os.environ, "COMP_LINE": line, "COMP_POINT": str(len(line))}
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "-sc", "query=bash"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_tab_completion_offers_user_facing_options_only():
    top = _complete("python run.py ")
    assert {"pos=", "data=", "arm=", "experiment=", "seed="} <= set(top)
    assert not [w for w in top if w.startswith(("schema", "wandb", "base_"))]  # typed schemas, W&B sweep files
    assert _complete("python run.py pos=") == [f"pos={m}" for m in sorted(MODES)]
    assert "data=copy" in _complete("python run.py data=") and not any("base_" in w for w in _complete("python run.py data="))
    assert _complete("python run.py +table=") == [f"+table=table{i}" for i in range(1, 7)]  # no .wandb.yml
