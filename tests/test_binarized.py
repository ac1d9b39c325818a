"""Large-corpus data path: streamed parallel files, the binarised memory-mapped cache, WMT17
sources (local files, a Hugging Face dataset laid out like the Hub's ``wmt/wmt17``, sacreBLEU's
test set), and training from the cache matching training from memory."""
from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from agf_exp import checkpoint
from agf_exp.config import ConfigError, validate
from agf_exp.data import DataError, make_batches, prepare_data
from agf_exp.data import binarized
from agf_exp.data.corpus import FilePairs, ListPairs
from agf_exp.data.tokenizer import BOS, EOS
from agf_exp.rundir import train

from .conftest import make_cfg

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory):
    """The smoke experiment's synthetic corpus written out as parallel files (train gzipped),
    under WMT17-style names too."""
    from agf_exp.data import load_corpus

    cfg = make_cfg("experiment=smoke")
    corpus = load_corpus(cfg.data, cfg.seed)
    root = tmp_path_factory.mktemp("parallel")
    names = {"train": "train", "valid": "newstest2016", "test": "newstest2017"}
    for split, stem in names.items():
        for side, lang in enumerate(("en", "de")):
            text = "\n".join(corpus.splits[split][side]) + "\n"
            if split == "train":
                with gzip.open(root / f"{stem}.{lang}.gz", "wt", encoding="utf-8") as f:
                    f.write(text)
            else:
                (root / f"{stem}.{lang}").write_text(text, encoding="utf-8")
    return root, corpus


def files_overrides(root: Path, binarize: bool):
    return ["data=files", f"data.train_src={root}/train.en.gz", f"data.train_tgt={root}/train.de.gz",
            f"data.valid_src={root}/newstest2016.en", f"data.valid_tgt={root}/newstest2016.de",
            f"data.test_src={root}/newstest2017.en", f"data.test_tgt={root}/newstest2017.de",
            "data.vocab_size=1000", f"data.binarize={str(binarize).lower()}", "data.num_workers=1"]


# ---- streaming parallel files -------------------------------------------------------------------

def test_file_pairs_stream_gz_and_plain_and_name_a_length_mismatch(tmp_path):
    (tmp_path / "a.en").write_text("one\r\ntwo \n three\n")
    with gzip.open(tmp_path / "a.de.gz", "wt") as f:
        f.write("eins\nzwei\ndrei\n")
    pairs = FilePairs(tmp_path / "a.en", tmp_path / "a.de.gz")
    assert list(pairs) == [("one", "eins"), ("two", "zwei"), ("three", "drei")]
    assert pairs.fingerprint() == FilePairs(tmp_path / "a.en", tmp_path / "a.de.gz").fingerprint()
    (tmp_path / "b.de").write_text("eins\nzwei\ndrei\nvier\nfünf\n")
    with pytest.raises(DataError, match=r"a\.en has 3 lines but .*b\.de has 5"):
        list(FilePairs(tmp_path / "a.en", tmp_path / "b.de"))
    with pytest.raises(DataError, match=r"b\.de has 5 lines but .*a\.en has 3"):
        list(FilePairs(tmp_path / "b.de", tmp_path / "a.en"))
    (tmp_path / "bad.de").write_bytes(b"eins\nzw\xffei\ndrei\n")
    with pytest.raises(DataError, match=r"bad\.de is not valid UTF-8 at line 2"):
        list(FilePairs(tmp_path / "a.en", tmp_path / "bad.de"))
    with pytest.raises(DataError, match="does not exist"):
        FilePairs(tmp_path / "a.en", tmp_path / "missing.de")


def test_reservoir_sample_is_uniform_deterministic_and_in_corpus_order():
    pairs = ListPairs([str(i) for i in range(50)], [str(-i) for i in range(50)])
    assert binarized.reservoir_sample(pairs, 80) == list(pairs)
    sample = binarized.reservoir_sample(pairs, 10)
    assert sample == binarized.reservoir_sample(pairs, 10) and len(set(sample)) == 10
    assert [int(s) for s, _ in sample] == sorted(int(s) for s, _ in sample)
    counts = np.zeros(50)
    for seed in range(2000):
        for s, _ in binarized.reservoir_sample(pairs, 10, seed=seed):
            counts[int(s)] += 1
    assert np.all(np.abs(counts / 2000 - 0.2) < 0.04)  # every pair has probability 10/50


def test_ordered_map_keeps_order_and_bounds_what_is_read_ahead():
    read = []

    def items():
        for i in range(40):
            read.append(i)
            yield i

    out = []
    for value in binarized._ordered_map(abs, items(), 2, int, (0,)):
        out.append(value)
        assert len(read) - len(out) <= 4  # at most 2 x workers chunks in flight
    assert out == list(range(40))


# ---- the cache ----------------------------------------------------------------------------------

def test_binarised_examples_equal_in_memory_encoding(corpus_files, cfg_factory):
    root, _ = corpus_files
    memory = prepare_data(cfg_factory(*files_overrides(root, False), "data.max_len=12").data, 1)
    binned = prepare_data(cfg_factory(*files_overrides(root, True), "data.max_len=12").data, 1)
    assert binned.tokenizer.model_proto == memory.tokenizer.model_proto  # the sample is the whole corpus here
    train_b, train_m = binned.examples["train"], memory.examples["train"]
    assert isinstance(train_b, binarized.BinarizedExamples)
    assert len(train_b) == len(train_m) and binned.dropped_train == memory.dropped_train > 0
    assert [train_b[i] for i in range(len(train_b))] == list(train_m)
    assert train_b[0][0][-1] == EOS and train_b[0][1][0] == BOS
    src_len, tgt_len = train_b.lengths()
    assert src_len.tolist() == [len(s) for s, _ in train_m] and tgt_len.tolist() == [len(t) for _, t in train_m]
    for shuffle in (True, False):
        a = [b.tolist() for b in make_batches(train_b, 900, shuffle=shuffle, seed=3, epoch=1)]
        assert a == [b.tolist() for b in make_batches(train_m, 900, shuffle=shuffle, seed=3, epoch=1)]
    assert binned.examples["valid"] == memory.examples["valid"] and binned.raw["test"] == memory.raw["test"]
    assert "train" not in binned.raw
    with pytest.raises(ConfigError, match="decode_splits has 'train'.*binarised"):
        validate(cfg_factory(*files_overrides(root, True), "trainer.decode_splits=[train]"))


def test_cache_is_built_once_in_parallel_and_never_half_written(corpus_files, tmp_path, monkeypatch):
    root, _ = corpus_files
    pairs = FilePairs(root / "train.en.gz", root / "train.de.gz")
    tok = prepare_data(make_cfg(*files_overrides(root, False)).data, 1).tokenizer
    one = binarized.build(pairs, tok, tmp_path / "one", workers=1)
    two = binarized.build(pairs, tok, tmp_path / "two", workers=2)  # worker processes, chunks in order
    for name in ("src.ids", "tgt.ids", "src.offsets.npy", "tgt.offsets.npy"):
        assert (one / name).read_bytes() == (two / name).read_bytes(), name
    meta = json.loads((one / "meta.json").read_text())
    assert meta["pairs"] == 2000 and meta["dtype"] == "uint16"
    # ids of a > 65,536-entry vocabulary need 32 bits
    assert binarized.id_dtype(65_536) == "uint16" and binarized.id_dtype(65_537) == "uint32"

    class Failing(ListPairs):
        def __iter__(self):
            for i, pair in enumerate(super().__iter__()):
                if i == 1500:
                    raise OSError("disk went away")
                yield pair

    src, tgt = zip(*pairs)
    with pytest.raises(OSError, match="disk went away"):
        binarized.build(Failing(src, tgt), tok, tmp_path / "broken", workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one", "two"]  # no partial folder left

    # a second prepare reuses the cache: building again would fail here
    cfg = make_cfg(*files_overrides(root, True)).data
    binarized.prepare(cfg, pairs)
    monkeypatch.setattr(binarized, "build", lambda *a, **k: pytest.fail("the cache was rebuilt"))
    monkeypatch.setattr(binarized, "reservoir_sample", lambda *a, **k: pytest.fail("the tokenizer was retrained"))
    _, examples = binarized.prepare(cfg, pairs)
    assert len(examples) == 2000


def test_training_from_the_cache_equals_training_from_memory(corpus_files, tmp_path):
    """The same corpus as `data=files` in memory and as `data=wmt17_en_de` from a prepared folder,
    binarised and streamed: identical tokenizer, batches and therefore weights."""
    root, _ = corpus_files
    common = ["model=tiny", "trainer.batch_tokens=2048", "trainer.warmup_steps=50", "trainer.progress=false",
              "trainer.max_steps=12", "trainer.decode_splits=[valid]",
              "trainer.decode_strategies=[greedy]", "trainer.max_decode_sentences=10"]
    memory = train(make_cfg(*common, *files_overrides(root, False)), tmp_path / "memory")
    stream = train(make_cfg(*common, "data=wmt17_en_de", f"data.root={root}", "data.vocab_size=1000",
                            "data.num_workers=1"), tmp_path / "stream")
    assert stream["train_pairs"] == memory["train_pairs"] == 2000 and stream["steps"] == 12
    wa = checkpoint.load(tmp_path / "memory/checkpoints/last.pt")["model"]
    wb = checkpoint.load(tmp_path / "stream/checkpoints/last.pt")["model"]
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0)
    assert stream["decoding"]["valid/greedy"]["bleu"] == memory["decoding"]["valid/greedy"]["bleu"]


# ---- WMT17 sources ------------------------------------------------------------------------------

def test_wmt17_local_files_errors_name_the_fix(corpus_files, tmp_path, cfg_factory):
    root, _ = corpus_files
    with pytest.raises(DataError, match="data.root=.*does not exist.*WMT17_ROOT"):
        prepare_data(cfg_factory("data=wmt17_en_de", f"data.root={tmp_path}/nowhere").data, 1)
    with pytest.raises(DataError, match=r"has no nope\.en \(or nope\.en\.gz\).*data\.train_stem"):
        prepare_data(cfg_factory("data=wmt17_en_de", f"data.root={root}", "data.valid_stem=nope").data, 1)
    with pytest.raises(DataError, match="data.test_from=files needs data.root"):
        prepare_data(cfg_factory("data=wmt17_en_de", "data.root=null", "data.test_from=files").data, 1)


def _hub_like_dataset(path: Path, corpus) -> Path:
    """A local folder laid out like the Hub's ``wmt/wmt17``: per-config parquet shards and a
    README whose YAML declares the config ``de-en`` and its splits."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    split_names = {"train": "train", "valid": "validation", "test": "test"}
    (path / "de-en").mkdir(parents=True)
    for split, hf_split in split_names.items():
        en, de = corpus.splits[split]
        rows = [{"de": d, "en": e} for e, d in zip(en, de)]
        pq.write_table(pa.table({"translation": rows}), path / "de-en" / f"{hf_split}-00000-of-00001.parquet")
    (path / "README.md").write_text(
        "---\nconfigs:\n- config_name: de-en\n  data_files:\n"
        + "".join(f"  - split: {s}\n    path: de-en/{s}-*\n" for s in split_names.values()) + "---\n")
    return path


def test_wmt17_from_a_hugging_face_dataset(corpus_files, tmp_path, cfg_factory, monkeypatch):
    pytest.importorskip("datasets", reason="install agf-exp[wmt] (Hugging Face datasets)")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    _, corpus = corpus_files
    hub = _hub_like_dataset(tmp_path / "wmt17", corpus)
    overrides = ["data=wmt17_en_de", "data.root=null", f"data.hf_path={hub}", "data.vocab_size=1000",
                 "data.num_workers=1", "data.max_len=1000"]
    bundle = prepare_data(cfg_factory(*overrides).data, 1)
    assert bundle.raw["valid"] == corpus.splits["valid"] and bundle.raw["test"] == corpus.splits["test"]
    assert len(bundle.examples["train"]) == 2000
    enc = bundle.tokenizer.encode(corpus.splits["train"][1][:5])
    assert [t[1:-1] for _, t in bundle.examples["train"][:5]] == enc
    assert "test from hf" in bundle.description
    with pytest.raises(DataError, match="languages 'en' and 'fr'.*languages \\['de', 'en'\\]"):
        prepare_data(cfg_factory(*overrides, "data.tgt_lang=fr").data, 1)
    with pytest.raises(DataError, match="could not load the Hugging Face dataset.*offline.*data.root"):
        prepare_data(cfg_factory(*overrides, f"data.hf_path={tmp_path}/absent").data, 1)


def test_wmt17_without_datasets_installed_says_what_to_install(cfg_factory, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import fails
    with pytest.raises(DataError, match=r"pip install agf-exp\[wmt\].*data.root"):
        prepare_data(cfg_factory("data=wmt17_en_de", "data.root=null").data, 1)


def test_wmt17_test_set_through_sacrebleu(corpus_files, tmp_path):
    """sacreBLEU's test-set support, with its cache ($SACREBLEU) holding the processed newstest2017
    files as `sacrebleu -t wmt17 -l en-de` leaves them (run in a subprocess: sacreBLEU reads
    $SACREBLEU when imported)."""
    root, corpus = corpus_files
    cache = tmp_path / "sacrebleu" / "wmt17"
    cache.mkdir(parents=True)
    (cache / "wmt17.en-de.src").write_text("\n".join(corpus.splits["test"][0]) + "\n")
    (cache / "wmt17.en-de.ref").write_text("\n".join(corpus.splits["test"][1]) + "\n")
    for field, value in (("docid", "doc1"), ("genre", "news"), ("origlang", "en")):
        (cache / f"wmt17.en-de.{field}").write_text(f"{value}\n" * 100)
    code = (
        "import json, agf_exp.config; from tests.conftest import make_cfg; from agf_exp.data import load_corpus\n"
        f"cfg = make_cfg('data=wmt17_en_de', 'data.root={root}', 'data.test_from=sacrebleu')\n"
        "c = load_corpus(cfg.data, 1); print(json.dumps([c.description, c.splits['test'][1][:3], len(c.splits['test'][0])]))\n"
    )
    env = {**os.environ, "SACREBLEU": str(tmp_path / "sacrebleu")}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    description, refs, n = json.loads(out.stdout.strip().splitlines()[-1])
    assert "test from sacrebleu" in description and refs == corpus.splits["test"][1][:3] and n == 100
