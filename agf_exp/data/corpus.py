"""Reading and validating parallel text, and the data-config base class.

Every data source (``conf/data/*.yaml``) yields a :class:`ParallelCorpus`: raw, untokenised
sentence pairs for the splits ``train``, ``valid`` and ``test``. Bad input raises
:class:`DataError` with a message that names the file and the fix.
"""
from __future__ import annotations

import enum
import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Tuple, Type

SPLITS = ("train", "valid", "test")


class DataError(ValueError):
    """Input data is missing or malformed; the message says which file and how to fix it."""


class SubwordModel(str, enum.Enum):
    bpe = "bpe"
    unigram = "unigram"


@dataclass
class DataConfig:
    """Fields every data source has (each source's schema extends this)."""

    name: str = "synthetic"
    src_lang: str = "en"
    tgt_lang: str = "de"
    # Where the sentencepiece models (and downloads) are cached; `~` is expanded.
    cache_dir: str = "${oc.env:AGF_CACHE_DIR,'~/.cache/agf_exp'}"
    vocab_size: int = 8000  # joint sentencepiece vocabulary (a soft limit on small corpora)
    subword_model: SubwordModel = SubwordModel.unigram
    max_len: int = 100  # training pairs with more subword tokens on either side are dropped


class ParallelCorpus(NamedTuple):
    """Raw sentence pairs per split: ``splits[name] = (src_lines, tgt_lines)``."""

    splits: Dict[str, Tuple[List[str], List[str]]]
    description: str


Loader = Callable[[DataConfig, int], ParallelCorpus]
SOURCES: Dict[str, Tuple[Type[DataConfig], Loader]] = {}


def register_source(config_class: Type[DataConfig]):
    """Decorator for a loader ``fn(cfg, seed) -> ParallelCorpus`` of the data source named by
    ``config_class().name``."""

    def wrap(fn: Loader) -> Loader:
        SOURCES[config_class().name] = (config_class, fn)
        return fn

    return wrap


def read_lines(path: Path) -> List[str]:
    """Read a UTF-8 text file (``.gz`` allowed), one sentence per line, stripped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"data file {path} does not exist; check the path in the data config")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path}: {e}; is it a complete (g)zip or plain-text file?") from e
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path} is not valid UTF-8 (bad byte at offset {e.start}); re-encode it as UTF-8, "
            f"e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed.txt`"
        ) from e
    lines = [line.strip() for line in text.splitlines()]
    if not any(lines):
        raise DataError(f"{path} is empty; a data file needs one sentence per line")
    return lines


def read_parallel(src_path: Path, tgt_path: Path) -> Tuple[List[str], List[str]]:
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(
            f"parallel files differ in length: {src_path} has {len(src)} lines but {tgt_path} has "
            f"{len(tgt)}; each line of one must be the translation of the same line of the other"
        )
    return src, tgt


def expand(path: str) -> Path:
    return Path(os.path.expanduser(os.path.expandvars(str(path))))
