"""The length-generalization study's data sources (copy, reverse, SCAN), arms and sweep (issue 47)."""
from __future__ import annotations

import collections

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from agf_exp.config import ConfigError, validate
from agf_exp.data import DataError, prepare_data
from agf_exp.data.lengthgen import CopyConfig, ReverseConfig, ScanConfig, load_copy, load_reverse, load_scan, scan_commands

from .conftest import CONF_DIR, make_cfg

ARMS = ["sinusoidal", "nope", "agf", "agf_m", "agf_m_pcmv", "agf_l", "alibi", "alibi_bl", "alibi_bl_pcmv",
        "alibi_bl_mul", "kerple_log", "kerple_power", "t5", "rope"]


def test_scan_is_the_published_set_and_length_split():
    """Lake & Baroni 2018: 20,910 distinct commands; the length split trains on the 16,990 whose
    action sequence has at most 22 actions and tests on the 3,920 with 24-48 (none has 23)."""
    pairs = scan_commands()
    assert len(pairs) == 20910 and len({c for c, _ in pairs}) == 20910
    lengths = collections.Counter(len(a.split()) for _, a in pairs)
    assert 23 not in lengths and min(lengths) == 1 and max(lengths) == 48
    corpus = load_scan(ScanConfig(), seed=1)
    assert {k: len(v[0]) for k, v in corpus.splits.items()} == {"train": 16990, "valid": 500, "test": 3920}
    assert max(len(a.split()) for a in corpus.splits["train"][1]) == 22
    assert min(len(a.split()) for a in corpus.splits["test"][1]) == 24
    assert set(corpus.splits["valid"][0]) <= set(corpus.splits["train"][0])  # in distribution
    for split, train, test in (("cutoff26", 18286, 2624), ("cutoff30", 19758, 1152)):
        c = load_scan(ScanConfig(split=split), seed=1)
        assert (len(c.splits["train"][0]), len(c.splits["test"][0])) == (train, test)


def test_scan_interprets_the_grammar():
    meaning = dict(scan_commands())
    assert meaning["jump"] == "I_JUMP"
    assert meaning["turn left"] == "I_TURN_LEFT"
    assert meaning["walk opposite right"] == "I_TURN_RIGHT I_TURN_RIGHT I_WALK"
    assert meaning["look around left"] == " ".join(["I_TURN_LEFT I_LOOK"] * 4)
    assert meaning["turn around right twice"] == " ".join(["I_TURN_RIGHT"] * 8)
    assert meaning["run twice after jump left"] == "I_TURN_LEFT I_JUMP I_RUN I_RUN"
    assert meaning["run thrice and look"] == "I_RUN I_RUN I_RUN I_LOOK"


def test_scan_rejects_an_unknown_split():
    with pytest.raises(DataError, match="data.split='lenght' is not a SCAN split; use length"):
        load_scan(ScanConfig(split="lenght"), seed=1)


@pytest.mark.parametrize("config,loader,reverse", [(CopyConfig, load_copy, False), (ReverseConfig, load_reverse, True)])
def test_copy_and_reverse(config, loader, reverse):
    corpus = loader(config(), seed=3)
    src, tgt = corpus.splits["train"]
    assert len(src) == 10000 and {len(s.split()) for s in src} == set(range(4, 17))
    for s, t in zip(src[:100], tgt[:100]):
        assert t.split() == (s.split()[::-1] if reverse else s.split())
    test_lengths = collections.Counter(len(s.split()) for s in corpus.splits["test"][0])
    assert test_lengths == {n: 50 for n in range(4, 65)}  # every length up to 4x the training maximum
    assert loader(config(), seed=3).splits == corpus.splits  # deterministic per seed
    assert loader(config(), seed=4).splits["train"] != corpus.splits["train"]


def test_the_word_model_makes_one_token_per_symbol():
    data = prepare_data(make_cfg("data=scan", "data.valid_size=20").data, seed=1)
    for split in ("train", "test"):
        for (src, tgt), (s_text, t_text) in list(zip(data.examples[split], zip(*data.raw[split])))[:200]:
            assert len(src) == len(s_text.split()) + 1 and len(tgt) == len(t_text.split()) + 2  # + EOS / BOS EOS


@pytest.mark.parametrize("arm", ARMS)
def test_every_arm_composes_and_validates(arm):
    cfg = make_cfg("data=copy", f"arm={arm}")
    validate(cfg)
    assert cfg.arm == arm and cfg.pe == (arm == "sinusoidal")
    assert cfg.pcmv == arm.endswith("_pcmv")


def test_the_study_sweep_covers_every_arm_task_and_seed():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+study=lengthgen_synthetic"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert sorted(params.arm.split(",")) == sorted(ARMS)
    assert params.data.split(",") == ["copy", "reverse", "scan"] and params.seed == "1,2,3,4,5"
    assert cfg.trainer.decode_checkpoint == "last" and cfg.model.name == "tiny"
    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "${data.name}/${arm}/seed${seed}"


def test_decode_checkpoint_is_checked():
    with pytest.raises(ConfigError, match="trainer.decode_checkpoint='final'; use best or last"):
        validate(make_cfg("trainer.decode_checkpoint=final"))


def test_train_short_test_long_data(tmp_path):
    """data.train_max_src_words keeps only short training sources (the tokenizer still sees all of
    train) and data.test_joins adds test_join<k>: k consecutive test sentences joined into one."""
    base = ["data=synthetic", "data.train_size=300", "data.valid_size=20", "data.test_size=20", f"data.cache_dir={tmp_path}"]
    full = prepare_data(make_cfg(*base).data, 1)
    cfg = make_cfg(*base, "data.train_max_src_words=6", "data.test_joins=[2,8]",
                   "trainer.decode_splits=[test,test_join2,test_join8]")
    validate(cfg)
    short = prepare_data(cfg.data, 1)
    assert short.tokenizer.identity() == full.tokenizer.identity()
    src = short.raw["train"][0]
    assert src and all(len(s.split()) <= 6 for s in src)
    assert len(src) == sum(len(s.split()) <= 6 for s in full.raw["train"][0]) < len(full.raw["train"][0])
    test_src, test_ref = short.raw["test"]
    assert short.raw["test_join2"][0][3] == test_src[6] + " " + test_src[7]
    assert short.raw["test_join8"][1] == [" ".join(test_ref[0:8]), " ".join(test_ref[8:16])]  # 20 // 8 groups
    assert len(short.examples["test_join2"]) == 10 and short.examples["test"] == full.examples["test"]
    with pytest.raises(ConfigError, match="use train, valid, test, test_join2, test_join8"):
        validate(make_cfg(*base, "data.test_joins=[2,8]", "trainer.decode_splits=[test_join4]"))
    with pytest.raises(ConfigError, match=r"data.test_joins=\[1\]"):
        validate(make_cfg(*base, "data.test_joins=[1]"))
    with pytest.raises(DataError, match="a source of at most data.train_max_src_words=1 words"):
        prepare_data(make_cfg(*base, "data.train_max_src_words=1").data, 1)


def test_the_mt_study_sweep():
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["+study=lengthgen_mt"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert sorted(params.arm.split(",")) == sorted(ARMS) and params.seed == "1,2,3"
    assert cfg.data.name == "multi30k" and cfg.data.train_max_src_words == 12 and list(cfg.data.test_joins) == [2, 4, 8]
    assert cfg.trainer.decode_checkpoint == "last" and cfg.model.name == "small"
    assert list(cfg.trainer.decode_splits) == ["valid", "test", "test_join2", "test_join4", "test_join8"]
    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "${arm}/seed${seed}"
