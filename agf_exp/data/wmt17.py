"""``data=wmt17_en_de``: WMT17 English->German, the paper's corpus (about 5.9M training pairs).

Two ways to the data, chosen by ``data.root``:

* ``data.root`` unset: Hugging Face ``datasets`` (``pip install agf-exp[wmt]``), dataset
  ``data.hf_path`` (``wmt/wmt17``) config ``data.hf_name`` (``de-en``): splits train,
  validation (newstest2016) and test (newstest2017). Downloaded once into the Hugging Face cache
  (``HF_DATASETS_CACHE``); later runs, offline ones too (``HF_DATASETS_OFFLINE=1``), read that.
* ``data.root`` (or ``WMT17_ROOT``) set: a folder you prepared with
  ``<stem>.<lang>`` or ``<stem>.<lang>.gz`` files, one sentence per line, for the stems
  ``data.train_stem`` (``train``), ``data.valid_stem`` (``newstest2016``) and
  ``data.test_stem`` (``newstest2017``).

The test set comes from ``data.test_from``: ``auto`` takes it from the same place as the rest,
``sacrebleu`` reads newstest2017 through sacreBLEU's test-set support (``sacrebleu -t wmt17 -l
en-de``, cached under ``$SACREBLEU``), ``files`` / ``hf`` force one of the above.

The training split is binarised once (``data.binarize=true``, see :mod:`agf_exp.data.binarized`)
and streamed from disk; validation and test are small and read into memory.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Tuple

from .binarized import BinarizeOptions
from .corpus import DataConfig, DataError, FilePairs, PairSource, ParallelCorpus, expand, read_parallel, register_source


class TestFrom(str, enum.Enum):
    __test__ = False  # not a pytest class
    auto = "auto"
    files = "files"
    hf = "hf"
    sacrebleu = "sacrebleu"


@dataclass
class Wmt17Config(BinarizeOptions, DataConfig):
    name: str = "wmt17_en_de"
    src_lang: str = "en"
    tgt_lang: str = "de"
    vocab_size: int = 32000
    binarize: bool = True
    # a prepared local copy; null = Hugging Face datasets
    root: Optional[str] = "${oc.env:WMT17_ROOT,null}"
    train_stem: str = "train"
    valid_stem: str = "newstest2016"
    test_stem: str = "newstest2017"
    hf_path: str = "wmt/wmt17"
    hf_name: Optional[str] = "de-en"
    hf_revision: Optional[str] = None
    test_from: TestFrom = TestFrom.auto
    sacrebleu_test_set: str = "wmt17"


class HFPairs(PairSource):
    """One split of a Hugging Face translation dataset (rows ``{"translation": {lang: text}}``),
    read in Arrow batches."""

    def __init__(self, dataset, src_lang: str, tgt_lang: str, description: str):
        self.dataset, self.langs, self.description = dataset, (src_lang, tgt_lang), description

    def __iter__(self) -> Iterator[Tuple[str, str]]:
        src, tgt = self.langs
        for batch in self.dataset.iter(batch_size=10_000):
            for pair in batch["translation"]:
                yield (pair[src] or "").strip(), (pair[tgt] or "").strip()

    def fingerprint(self) -> str:
        return f"hf:{self.dataset._fingerprint}"  # datasets' own content fingerprint of this split

    def count(self) -> int:
        return len(self.dataset)

    def lists(self) -> Tuple[List[str], List[str]]:
        pairs = list(self)
        return [s for s, _ in pairs], [t for _, t in pairs]


def _hf_split(cfg: Wmt17Config, split: str) -> HFPairs:
    try:
        import datasets
    except ImportError:
        raise DataError("data=wmt17_en_de without data.root reads Hugging Face datasets, which is not installed: "
                        "`pip install agf-exp[wmt]` (or `pip install datasets`), or set data.root (WMT17_ROOT) "
                        "to a folder of prepared text files") from None
    try:
        ds = datasets.load_dataset(cfg.hf_path, cfg.hf_name, split=split, revision=cfg.hf_revision)
    except Exception as e:  # network, missing config, missing cache in offline mode
        raise DataError(f"could not load the Hugging Face dataset {cfg.hf_path!r} (config {cfg.hf_name!r}, split "
                        f"{split!r}): {type(e).__name__}: {e}. Online, check data.hf_path/data.hf_name; offline, the "
                        "dataset must already be in the Hugging Face cache, or set data.root (WMT17_ROOT) to prepared "
                        "text files") from e
    feature = ds.features.get("translation")
    languages = list(getattr(feature, "languages", None) or (feature.keys() if isinstance(feature, dict) else []))
    if feature is None or any(lang not in languages for lang in (cfg.src_lang, cfg.tgt_lang)):
        raise DataError(f"{cfg.hf_path} ({cfg.hf_name}) {split} needs a 'translation' column with the languages "
                        f"{cfg.src_lang!r} and {cfg.tgt_lang!r} (data.src_lang/tgt_lang); it has columns "
                        f"{list(ds.features)} and languages {languages}")
    return HFPairs(ds, cfg.src_lang, cfg.tgt_lang, f"{cfg.hf_path} {cfg.hf_name} {split}")


def _file(root: Path, stem: str, lang: str) -> Path:
    for name in (f"{stem}.{lang}", f"{stem}.{lang}.gz"):
        if (root / name).is_file():
            return root / name
    raise DataError(f"{root} has no {stem}.{lang} (or {stem}.{lang}.gz); the folder data.root needs "
                    f"<stem>.<lang> files for the stems data.train_stem/valid_stem/test_stem")


def _sacrebleu_test(cfg: Wmt17Config) -> Tuple[List[str], List[str]]:
    from sacrebleu.dataset import DATASETS

    langpair = f"{cfg.src_lang}-{cfg.tgt_lang}"
    if cfg.sacrebleu_test_set not in DATASETS:
        raise DataError(f"sacreBLEU has no test set {cfg.sacrebleu_test_set!r}")
    try:
        dataset = DATASETS[cfg.sacrebleu_test_set]
        src_file, ref_files = dataset.get_source_file(langpair), dataset.get_reference_files(langpair)
    except Exception as e:  # offline and not cached, or an unknown language pair
        raise DataError(f"sacreBLEU could not provide {cfg.sacrebleu_test_set} {langpair}: {type(e).__name__}: {e}. "
                        f"Fetch it once online (`sacrebleu -t {cfg.sacrebleu_test_set} -l {langpair} --echo src`), "
                        "or use data.test_from=files with data.root") from e
    return read_parallel(Path(src_file), Path(ref_files[0]))


@register_source(Wmt17Config)
def load_wmt17(cfg: Wmt17Config, seed: int) -> ParallelCorpus:
    splits: Dict[str, Tuple[List[str], List[str]]] = {}
    if cfg.test_from == TestFrom.files and not cfg.root:
        raise DataError("data.test_from=files needs data.root (WMT17_ROOT), the folder with the test files")
    if cfg.root:
        root = expand(cfg.root)
        if not root.is_dir():
            raise DataError(f"data.root={root} does not exist. Point data.root (or WMT17_ROOT) at a folder of "
                            "prepared WMT17 text files, or leave it unset to use Hugging Face datasets")
        train: PairSource = FilePairs(_file(root, cfg.train_stem, cfg.src_lang), _file(root, cfg.train_stem, cfg.tgt_lang))
        splits["valid"] = read_parallel(_file(root, cfg.valid_stem, cfg.src_lang), _file(root, cfg.valid_stem, cfg.tgt_lang))
        where = str(root)
    else:
        train = _hf_split(cfg, "train")
        splits["valid"] = _hf_split(cfg, "validation").lists()
        where = f"{cfg.hf_path} {cfg.hf_name}"
    test_from = cfg.test_from.value if cfg.test_from != TestFrom.auto else ("files" if cfg.root else "hf")
    if test_from == "sacrebleu":
        splits["test"] = _sacrebleu_test(cfg)
    elif test_from == "files":
        root = expand(cfg.root)
        splits["test"] = read_parallel(_file(root, cfg.test_stem, cfg.src_lang), _file(root, cfg.test_stem, cfg.tgt_lang))
    else:
        splits["test"] = _hf_split(cfg, "test").lists()
    description = f"wmt17 {cfg.src_lang}-{cfg.tgt_lang} ({where}; test from {test_from})"
    if cfg.binarize:
        return ParallelCorpus(splits, description, train)
    splits["train"] = train.lists() if isinstance(train, HFPairs) else read_parallel(*train.paths)
    return ParallelCorpus(splits, description)
