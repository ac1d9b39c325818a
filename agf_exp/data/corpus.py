"""Reading and validating parallel text, and the data-config base class.

Every data source (``conf/data/*.yaml``) yields a :class:`ParallelCorpus`: raw, untokenised
sentence pairs for the splits ``train``, ``valid`` and ``test``. Bad input raises
:class:`DataError` with a message that names the file and the fix.
"""
from __future__ import annotations

import enum
import gzip
import hashlib
import os
from dataclasses import dataclass, field
from itertools import chain, zip_longest
from pathlib import Path
from typing import Callable, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Type

SPLITS = ("train", "valid", "test")
JOIN_PREFIX = "test_join"  # derived splits: test_join<k> (DataConfig.test_joins)


def joined(lines: Sequence[str], k: int) -> List[str]:
    """``lines`` in consecutive groups of ``k``, each group joined by a space (a last group of
    fewer than ``k`` lines is left out)."""
    return [" ".join(lines[i:i + k]) for i in range(0, len(lines) - k + 1, k)]


class DataError(ValueError):
    """Input data is missing or malformed; the message says which file and how to fix it."""


class SubwordModel(str, enum.Enum):
    bpe = "bpe"
    unigram = "unigram"
    word = "word"  # one piece per whitespace word (the synthetic length tasks: lengths in symbols)


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
    # A trained sentencepiece .model to use instead of training one (then vocab_size and
    # subword_model are the file's): the same subwords on every machine, whatever its
    # sentencepiece version. Its ids 0-3 must be pad, unk, bos, eos (as agf-exp trains them).
    subword_file: Optional[str] = None
    max_len: int = 100  # training pairs with more subword tokens on either side are dropped
    # train-short / test-long (the length study, docs/lengthgen.md): keep only training pairs whose
    # source has at most this many whitespace words (null: all); the tokenizer still sees all of train
    train_max_src_words: Optional[int] = None
    # joined test splits: for each k, `test_join<k>` = k consecutive test sentences joined into one
    # input (sources and references joined by a space; a last incomplete group is left out)
    test_joins: List[int] = field(default_factory=list)


class PairSource:
    """A training split too large to hold as text: sentence pairs read one by one, each time
    the source is iterated. ``fingerprint()`` identifies the content (it keys the caches)."""

    description: str = ""

    def __iter__(self) -> Iterator[Tuple[str, str]]:
        raise NotImplementedError

    def fingerprint(self) -> str:
        raise NotImplementedError

    def count(self) -> Optional[int]:
        """The number of pairs when known cheaply (progress bars), else None."""
        return None


class ListPairs(PairSource):
    """Pairs already in memory (small corpora, tests)."""

    def __init__(self, src: Sequence[str], tgt: Sequence[str], description: str = "in-memory pairs"):
        self.src, self.tgt, self.description = src, tgt, description

    def __iter__(self):
        return zip(self.src, self.tgt)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for line in chain(self.src, ["\0"], self.tgt):
            h.update(line.encode("utf-8") + b"\n")
        return h.hexdigest()

    def count(self) -> int:
        return len(self.src)


class FilePairs(PairSource):
    """Two parallel text files (plain or .gz), streamed line by line; a length mismatch or a
    decoding error is reported, with the line, when the iteration reaches it."""

    def __init__(self, src_path: Path, tgt_path: Path):
        self.paths = (Path(src_path), Path(tgt_path))
        for path in self.paths:
            if not path.is_file():
                raise DataError(f"data file {path} does not exist; check the path in the data config")
        self.description = f"{self.paths[0]} + {self.paths[1]}"

    def __iter__(self) -> Iterator[Tuple[str, str]]:
        src_path, tgt_path = self.paths
        with _open_binary(src_path) as fs, _open_binary(tgt_path) as ft:
            for n, (s, t) in enumerate(zip_longest(fs, ft), 1):
                if s is None or t is None:
                    longer = ft if s is None else fs
                    total = n + sum(1 for _ in longer)
                    counts = (n - 1, total) if s is None else (total, n - 1)
                    raise DataError(
                        f"parallel files differ in length: {src_path} has {counts[0]} lines but {tgt_path} "
                        f"has {counts[1]}; each line of one must be the translation of the same line of the other")
                yield _decode(s, src_path, n), _decode(t, tgt_path, n)

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for path in self.paths:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
            h.update(b"\0")
        return h.hexdigest()


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _decode(line: bytes, path: Path, n: int) -> str:
    try:
        return line.decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not valid UTF-8 at line {n} (byte {e.start}); re-encode it as UTF-8, "
                        f"e.g. `iconv -f latin1 -t utf-8 {path.name} > fixed.txt`") from e


class ParallelCorpus(NamedTuple):
    """Raw sentence pairs per split: ``splits[name] = (src_lines, tgt_lines)``. A large
    source gives its training split as ``train_pairs`` (streamed) instead of ``splits["train"]``."""

    splits: Dict[str, Tuple[List[str], List[str]]]
    description: str
    train_pairs: Optional[PairSource] = None


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
    """Read a UTF-8 text file (``.gz`` allowed), one sentence per line, stripped. Lines end at
    ``\n`` only (``\r\n`` too), as ``wc -l`` and the other tools of a parallel corpus count them:
    a form feed, U+2028 or U+0085 inside a line is text (``str.splitlines`` would split there and
    silently misalign a source file from its target)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"data file {path} is a directory; give the path of a text file (one sentence per line)")
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
    lines = [line.strip() for line in text.split("\n")]
    if lines and lines[-1] == "" and text.endswith("\n"):
        lines.pop()  # the last line's newline ends it, it does not start another
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
    """A config path as a Path: ``~`` and ``$VARS`` expanded, and an OmegaConf interpolation
    resolved, as in a dataclass built in Python rather than by Hydra (``Multi30kConfig()``
    keeps ``cache_dir``'s default ``${oc.env:AGF_CACHE_DIR,...}`` unresolved)."""
    path = str(path)
    if "${" in path:
        from omegaconf import OmegaConf

        path = str(OmegaConf.create({"path": path}).path)
    return Path(os.path.expanduser(os.path.expandvars(path)))
