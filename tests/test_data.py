"""Data sources, subwords, batching and the bad-input errors."""
from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import pytest

from agf_exp.data import DataError, make_batches, prepare_data
from agf_exp.data.batching import collate
from agf_exp.data.corpus import expand, read_lines, read_parallel
from agf_exp.data.files import FilesDataConfig
from agf_exp.data.multi30k import SHA256, Multi30kConfig, download, load_multi30k
from agf_exp.data.synthetic import Grammar, SyntheticDataConfig, load_synthetic
from agf_exp.data.tokenizer import BOS, EOS, train_or_load


# ---- synthetic ---------------------------------------------------------------------------------

def test_synthetic_is_deterministic_per_seed():
    cfg = SyntheticDataConfig(train_size=50, valid_size=5, test_size=5)
    a, b, c = load_synthetic(cfg, 1), load_synthetic(cfg, 1), load_synthetic(cfg, 2)
    assert a.splits == b.splits
    assert a.splits["train"] != c.splits["train"]


def test_synthetic_grammar_reorders_and_agrees():
    cfg = SyntheticDataConfig(p_pp=0.0, p_conj=0.0)
    g = Grammar(cfg)
    import random
    rng = random.Random(0)
    verbs_t = {t for _, t in g.verbs}
    nouns = {s: (t, gender) for s, t, gender in g.nouns}
    for _ in range(50):
        src, tgt = g.sentence(rng)
        s, t = src.split()[:-1], tgt.split()[:-1]
        assert t[-1] in verbs_t or t[-2] in verbs_t or t[-1] in {x for _, x in g.adverbs}
        # the source verb is in the middle, the target verb last: word order differs
        assert len(s) == len(t)
        # determiner agreement with the noun that follows the adjectives in the source
        first_noun = next(w for w in s if w in nouns)
        noun_t, gender = nouns[first_noun]
        assert t[0] == g.tgt_det[(s[0] == "the", gender)] and t[1] == noun_t


# ---- subwords and encoding ----------------------------------------------------------------------

def test_sentencepiece_is_trained_once_and_cached(tmp_path):
    lines = [f"sentence number {i} with some words" for i in range(300)]
    tok = train_or_load(lines, 60, "bpe", tmp_path)
    models = list((tmp_path / "spm").glob("*.model"))
    assert len(models) == 1 and not list((tmp_path / "spm").glob(".*tmp"))
    mtime = models[0].stat().st_mtime_ns
    again = train_or_load(lines, 60, "bpe", tmp_path)
    assert models[0].stat().st_mtime_ns == mtime and again.model_proto == tok.model_proto
    train_or_load(lines + ["one more line"], 60, "bpe", tmp_path)
    assert len(list((tmp_path / "spm").glob("*.model"))) == 2  # new content, new model
    assert (tok.pad_id, tok.unk_id, tok.bos_id, tok.eos_id) == (0, 1, 2, 3)
    assert tok.decode(tok.encode(["sentence number 7"])) == ["sentence number 7"]


def test_prepare_data_encodes_with_bos_eos_and_filters_long_pairs():
    cfg = SyntheticDataConfig(train_size=300, valid_size=20, test_size=20, max_len=18)
    bundle = prepare_data(cfg, seed=3)
    for src, tgt in bundle.examples["train"]:
        assert src[-1] == EOS and tgt[0] == BOS and tgt[-1] == EOS
        assert len(src) - 1 <= 18 and len(tgt) - 2 <= 18
    assert bundle.dropped_train > 0
    assert len(bundle.examples["train"]) + bundle.dropped_train == 300
    assert len(bundle.examples["valid"]) == 20  # valid/test are never filtered


# ---- batching ------------------------------------------------------------------------------------

def _examples(n=500):
    import random
    rng = random.Random(0)
    return [([5] * rng.randint(1, 40), [BOS] + [6] * rng.randint(1, 40) + [EOS]) for _ in range(n)]


def test_batches_respect_token_budget_and_cover_every_example():
    ex = _examples()
    batches = make_batches(ex, 600, shuffle=True, seed=1, epoch=0)
    assert sorted(i for b in batches for i in b) == list(range(len(ex)))
    for b in batches:
        assert len(b) * max(max(len(ex[i][0]), len(ex[i][1])) for i in b) <= 600 or len(b) == 1
        src, tgt = collate(ex, b)
        assert src.shape[0] == tgt.shape[0] == len(b)
        assert src.shape[1] == max(len(ex[i][0]) for i in b)


def _batches(*args, **kwargs):
    return [b.tolist() for b in make_batches(*args, **kwargs)]


def test_batches_are_seeded_per_epoch():
    ex = _examples()
    a = _batches(ex, 600, shuffle=True, seed=1, epoch=0)
    assert a == _batches(ex, 600, shuffle=True, seed=1, epoch=0)
    assert a != _batches(ex, 600, shuffle=True, seed=1, epoch=1)
    assert a != _batches(ex, 600, shuffle=True, seed=2, epoch=0)


def test_batches_sort_by_length_with_seeded_ties():
    """The sort key is (longest side, source length, target length); equal keys keep the
    seeded permutation, so the batches are a function of the lengths and (seed, epoch) only."""
    import random
    ex = _examples(300)
    for seed in (0, 3):
        perm = list(range(len(ex)))
        random.Random(f"{seed}-0").shuffle(perm)
        expected = sorted(perm, key=lambda i: (max(len(ex[i][0]), len(ex[i][1])), len(ex[i][0]), len(ex[i][1])))
        got = sorted(_batches(ex, 600, shuffle=True, seed=seed, epoch=0), key=lambda b: expected.index(b[0]))
        assert [i for b in got for i in b] == expected
    # an example longer than the budget gets a batch of its own
    assert _batches([([5] * 50, [2, 6, 3])] * 3, 40, shuffle=False) == [[0], [1], [2]]


def test_length_bucketing_keeps_padding_low():
    import random
    rng = random.Random(0)
    lengths = [rng.randint(2, 40) for _ in range(2000)]  # target lengths follow source lengths, as in MT
    ex = [([5] * n, [BOS] + [6] * max(1, n + rng.randint(-3, 3)) + [EOS]) for n in lengths]
    batches = make_batches(ex, 2000, shuffle=True, seed=0, epoch=0)
    for side in (0, 1):
        real = sum(len(ex[i][side]) for b in batches for i in b)
        padded = sum(len(b) * max(len(ex[i][side]) for i in b) for b in batches)
        assert real / padded > 0.85


# ---- bad input -------------------------------------------------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"does not exist"):
        read_lines(tmp_path / "nope.txt")


@pytest.mark.parametrize("inner", ["\f", "\u2028", "\u0085", "\x1c", "\v"])
def test_lines_end_at_newline_only(tmp_path, inner):
    """A form feed or a Unicode line separator inside a line is text: counted as `wc -l` counts,
    the pairs stay aligned (str.splitlines would split both files there, keep the counts equal
    and shift every later pair)."""
    src, tgt = tmp_path / "a.en", tmp_path / "a.de"
    src.write_text(f"one{inner}more\ntwo\r\nthree\n", encoding="utf-8")
    tgt.write_text(f"eins{inner}mehr\nzwei\ndrei\n", encoding="utf-8")
    assert read_parallel(src, tgt) == ([f"one{inner}more", "two", "three"], [f"eins{inner}mehr", "zwei", "drei"])
    tgt.write_text("eins\nzwei\n")
    with pytest.raises(DataError, match=r"a\.en has 3 lines but .*a\.de has 2"):
        read_parallel(src, tgt)


def test_a_directory_as_a_data_file(tmp_path):
    with pytest.raises(DataError, match="is a directory; give the path of a text file"):
        read_lines(tmp_path)


def test_mismatched_parallel_files(tmp_path):
    (tmp_path / "a.en").write_text("one\ntwo\nthree\n")
    (tmp_path / "a.de").write_text("eins\nzwei\n")
    with pytest.raises(DataError, match=r"a\.en has 3 lines but .*a\.de has 2"):
        read_parallel(tmp_path / "a.en", tmp_path / "a.de")


def test_empty_file(tmp_path):
    (tmp_path / "empty.en").write_text("\n\n")
    with pytest.raises(DataError, match=r"empty\.en is empty"):
        read_lines(tmp_path / "empty.en")


def test_undecodable_file(tmp_path):
    (tmp_path / "latin.en").write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin\.en is not valid UTF-8.*iconv"):
        read_lines(tmp_path / "latin.en")


def test_broken_gzip(tmp_path):
    (tmp_path / "x.en.gz").write_bytes(b"not gzip at all")
    with pytest.raises(DataError, match=r"cannot read .*x\.en\.gz"):
        read_lines(tmp_path / "x.en.gz")


def test_files_source_reads_plain_and_gzip(tmp_path):
    paths = {}
    for split in ("train", "valid", "test"):
        for side, text in (("src", "a b c\nd e\n"), ("tgt", "x y\nz\n")):
            p = tmp_path / f"{split}.{side}.gz"
            with gzip.open(p, "wt", encoding="utf-8") as f:
                f.write(text)
            paths[f"{split}_{side}"] = str(p)
    cfg = FilesDataConfig(**paths)
    from agf_exp.data import load_corpus
    corpus = load_corpus(cfg, 0)
    assert corpus.splits["valid"] == (["a b c", "d e"], ["x y", "z"])


def test_multi30k_missing_root_names_the_fix(tmp_path):
    cfg = Multi30kConfig(root=str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match=r"does not exist.*MULTI30K_ROOT.*download"):
        load_multi30k(cfg, 0)


def test_multi30k_missing_files_without_download(tmp_path):
    cfg = Multi30kConfig(root=None, cache_dir=str(tmp_path), download=False)
    with pytest.raises(DataError, match=r"agf_exp\.data\.multi30k download"):
        load_multi30k(cfg, 0)


def _fake_mirror(tmp_path: Path) -> Path:
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    for name in SHA256:
        with gzip.open(mirror / name, "wt") as f:
            f.write("a line\n")
    return mirror


def test_download_rejects_checksum_mismatch_and_saves_nothing(tmp_path):
    mirror = _fake_mirror(tmp_path)
    dest = tmp_path / "dest"
    with pytest.raises(DataError, match="checksum mismatch"):
        download(dest, mirror.as_uri())
    assert not [p for p in dest.iterdir()]  # no partial or temp files


def test_download_fetches_and_verifies(tmp_path, multi30k_root):
    dest = download(tmp_path / "dest", multi30k_root.as_uri())
    for name, digest in SHA256.items():
        assert hashlib.sha256((dest / name).read_bytes()).hexdigest() == digest


def test_download_without_checksum_for_custom_mirrors(tmp_path):
    mirror = _fake_mirror(tmp_path)
    dest = download(tmp_path / "dest", mirror.as_uri(), verify_checksum=False)
    assert sorted(os.listdir(dest)) == sorted(SHA256)


def test_unreachable_download_says_how_to_work_offline(tmp_path):
    with pytest.raises(DataError, match="copy the Multi30k files"):
        download(tmp_path / "d", (tmp_path / "no-such-mirror").as_uri())


@pytest.mark.multi30k
def test_multi30k_split_sizes(multi30k_root):
    corpus = load_multi30k(Multi30kConfig(root=str(multi30k_root)), 0)
    sizes = {k: len(v[0]) for k, v in corpus.splits.items()}
    assert sizes == {"train": 29000, "valid": 1014, "test": 1000}
    assert corpus.splits["train"][0][0].startswith("Two young, White males")


def test_cache_dir_of_a_config_built_in_python_is_resolved(tmp_path, monkeypatch):
    """A dataclass built in Python keeps cache_dir's `${oc.env:AGF_CACHE_DIR,...}` default raw:
    expand() resolves it instead of making a folder named after the interpolation."""
    raw = Multi30kConfig().cache_dir
    assert raw.startswith("${oc.env:AGF_CACHE_DIR")
    monkeypatch.setenv("AGF_CACHE_DIR", str(tmp_path / "cache"))
    assert expand(raw) == tmp_path / "cache"
    monkeypatch.delenv("AGF_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert expand(raw) == tmp_path / ".cache" / "agf_exp"
    assert expand("~/x/$AGF_TEST_VAR") == tmp_path / "x" / "$AGF_TEST_VAR"
    monkeypatch.setenv("AGF_TEST_VAR", "y")
    assert expand("~/x/$AGF_TEST_VAR") == tmp_path / "x" / "y"


def test_a_subword_file_replaces_training_one(tmp_path):
    def cfg(**kw):
        return SyntheticDataConfig(train_size=300, valid_size=20, test_size=20, max_len=18, **kw)

    trained = prepare_data(cfg(cache_dir=str(tmp_path / "a")), seed=3)
    model = tmp_path / "given.model"
    model.write_bytes(trained.tokenizer.model_proto)
    given = prepare_data(cfg(cache_dir=str(tmp_path / "b"), vocab_size=99, subword_file=str(model)), seed=3)
    assert given.tokenizer.model_proto == trained.tokenizer.model_proto
    assert given.examples == trained.examples
    assert not (tmp_path / "b").exists()  # nothing trained, nothing cached

    with pytest.raises(DataError, match="data.subword_file=.*does not exist"):
        prepare_data(cfg(subword_file=str(tmp_path / "nowhere.model")), seed=3)
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(DataError, match="is not a sentencepiece model"):
        prepare_data(cfg(subword_file=str(tmp_path / "junk.model")), seed=3)
    import sentencepiece as spm  # sentencepiece's own default ids: unk 0, bos 1, eos 2, no pad
    lines = [" ".join(s) for s in trained.raw["train"][0][:200]]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_prefix=str(tmp_path / "plain"),
                                   vocab_size=40, hard_vocab_limit=False, minloglevel=2)
    with pytest.raises(DataError, match="special ids pad/unk/bos/eos = -1/0/1/2.*pad_id=0"):
        prepare_data(cfg(subword_file=str(tmp_path / "plain.model")), seed=3)
