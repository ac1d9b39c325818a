"""Binarised training data for large corpora: sentencepiece ids in memory-mapped files.

With ``data.binarize=true`` (the default of ``data=wmt17_en_de``, available with ``data=files``)
the training split is never held as text or as Python lists. Instead:

1. the joint sentencepiece model is trained on ``data.spm_sample`` pairs drawn uniformly from the
   corpus (reservoir sampling, fixed seed) and cached under the corpus fingerprint;
2. the corpus is tokenised once, in ``data.num_workers`` processes (default: one per core), into a folder
   ``<cache_dir>/bin/<key>/``::

       src.ids  tgt.ids          token ids, sentence after sentence (uint16, or uint32 for vocabularies > 65,535)
       src.offsets  tgt.offsets  int64 [n + 1]: sentence i is ids[offsets[i]:offsets[i + 1]]
       meta.json                 pairs, tokens, dtype, what was tokenised with what

   The key hashes the corpus fingerprint (file contents, or the Hugging Face dataset's own
   fingerprint) and the tokenizer, so later runs reuse the folder and any change builds a new
   one. It is built in a temporary folder and renamed into place: an interrupted build leaves
   nothing half-written behind;
3. training reads batches straight from the memory-mapped files (:class:`BinarizedExamples`):
   memory holds the per-sentence offsets and a few index arrays, O(sentences), not the ids.

    python -m agf_exp.data binarize data=wmt17_en_de [overrides]   # build the cache ahead of training
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .corpus import DataError, PairSource, expand
from .tokenizer import BOS, EOS, Tokenizer, load_model_file, train_or_load

log = logging.getLogger(__name__)

CHUNK_PAIRS = 20_000  # pairs per worker task


@dataclass
class BinarizeOptions:
    """Data-config fields of the sources that can stream a large training split (mixed into
    their schemas). Kept out of :class:`DataConfig` so the other sources' configs, and the runs
    recorded with them, do not change."""

    binarize: bool = False  # tokenise the training split once into a memory-mapped cache and stream from it
    num_workers: Optional[int] = None  # processes that tokenise (None: one per CPU core; 0 or 1: this process)
    spm_sample: int = 1_000_000  # training pairs sampled to train sentencepiece when binarize=true


# ---- building ----------------------------------------------------------------------------------

def reservoir_sample(pairs: PairSource, k: int, seed: int = 0) -> List[Tuple[str, str]]:
    """``k`` pairs drawn uniformly without replacement in one pass (all of them if fewer), in
    corpus order."""
    rng = random.Random(seed)
    sample: List[Tuple[int, Tuple[str, str]]] = []
    for i, pair in enumerate(pairs):
        if i < k:
            sample.append((i, pair))
        else:
            j = rng.randrange(i + 1)
            if j < k:
                sample[j] = (i, pair)
    return [pair for _, pair in sorted(sample, key=lambda item: item[0])]


def sampled_tokenizer(pairs: PairSource, fingerprint: str, cfg) -> Tokenizer:
    """The joint sentencepiece model of a large corpus, trained on a uniform sample of its pairs
    and cached under the corpus fingerprint (no pass over the corpus when cached); the model of
    ``data.subword_file`` when one is given."""
    if cfg.subword_file:
        return load_model_file(cfg.subword_file)

    def lines():
        sample = reservoir_sample(pairs, cfg.spm_sample)
        log.info("sentencepiece: training on %d sampled pairs of %s", len(sample), pairs.description)
        return [s for s, _ in sample] + [t for _, t in sample]

    return train_or_load(lines, cfg.vocab_size, cfg.subword_model.value, expand(cfg.cache_dir),
                         identity=f"sample {cfg.spm_sample} of {fingerprint}")


_worker_tokenizer: Optional[Tokenizer] = None


def _init_worker(model_proto: bytes) -> None:
    global _worker_tokenizer
    _worker_tokenizer = Tokenizer(model_proto)


def _encode_chunk(chunk: Tuple[List[str], List[str]], dtype: str):
    """ids and lengths of one chunk of pairs (runs in a worker process)."""
    out = []
    for lines in chunk:
        ids = _worker_tokenizer.encode(lines)
        lengths = np.fromiter((len(x) for x in ids), np.int64, len(ids))
        flat = np.fromiter(chain.from_iterable(ids), np.dtype(dtype), int(lengths.sum()))
        out.append((flat, lengths))
    return out


def _chunks(pairs: PairSource, size: int) -> Iterator[Tuple[List[str], List[str]]]:
    src: List[str] = []
    tgt: List[str] = []
    for s, t in pairs:
        src.append(s)
        tgt.append(t)
        if len(src) == size:
            yield src, tgt
            src, tgt = [], []
    if src:
        yield src, tgt


def _ordered_map(fn, items, workers: int, initializer, initargs) -> Iterator:
    """``map(fn, items)`` in order over ``workers`` processes, with at most ``2 * workers`` chunks in
    flight (unlike ``Pool.imap``, which reads its whole input ahead), so memory stays bounded."""
    if workers <= 1:
        initializer(*initargs)
        yield from map(fn, items)
        return
    import multiprocessing

    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                             initializer=initializer, initargs=initargs) as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(fn, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


def id_dtype(vocab_size: int) -> str:
    return "uint16" if vocab_size <= np.iinfo(np.uint16).max + 1 else "uint32"


def build(pairs: PairSource, tokenizer: Tokenizer, out_dir: Path, *, workers: int = 2,
          progress: Optional[bool] = None) -> Path:
    """Tokenise every pair of ``pairs`` into ``out_dir`` (see the module docstring). The folder
    appears only when complete."""
    from functools import partial

    from tqdm import tqdm

    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f"{out_dir.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    dtype = id_dtype(tokenizer.vocab_size)
    lengths: Dict[str, List[np.ndarray]] = {"src": [], "tgt": []}
    start = time.perf_counter()
    try:
        files = {side: open(tmp / f"{side}.ids", "wb") for side in ("src", "tgt")}
        bar = tqdm(total=pairs.count(), unit=" pairs", unit_scale=True, desc="binarise",
                   disable=None if progress is None else not progress)  # None: shown on a terminal
        try:
            for result in _ordered_map(partial(_encode_chunk, dtype=dtype), _chunks(pairs, CHUNK_PAIRS), workers,
                                       _init_worker, (tokenizer.model_proto,)):
                for side, (flat, lens) in zip(("src", "tgt"), result):
                    files[side].write(flat.tobytes())
                    lengths[side].append(lens)
                bar.update(len(result[0][1]))
        finally:
            bar.close()
            for f in files.values():
                f.close()
        n = sum(len(x) for x in lengths["src"])
        if n == 0:
            raise DataError(f"the training data {pairs.description} has no sentence pairs")
        tokens = {}
        for side in ("src", "tgt"):
            offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(np.concatenate(lengths[side]), out=offsets[1:])
            np.save(tmp / f"{side}.offsets.npy", offsets)
            tokens[side] = int(offsets[-1])
        meta = {"pairs": n, "tokens": tokens, "dtype": dtype, "vocab_size": tokenizer.vocab_size,
                "tokenizer_sha256": hashlib.sha256(tokenizer.model_proto).hexdigest(),
                "source": pairs.description, "seconds": round(time.perf_counter() - start, 2), "workers": workers}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
        try:
            tmp.rename(out_dir)
        except OSError:  # another process finished the same cache first: theirs is identical
            if not (out_dir / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("binarised %d pairs (%d + %d tokens) into %s in %.1f s with %d worker(s)", n, tokens["src"],
             tokens["tgt"], out_dir, meta["seconds"], workers)
    return out_dir


def cache_path(cfg, fingerprint: str, tokenizer: Tokenizer) -> Path:
    key = hashlib.sha256(f"{fingerprint}\0".encode() + tokenizer.model_proto).hexdigest()[:20]
    return expand(cfg.cache_dir) / "bin" / key


def prepare(cfg, pairs: PairSource) -> Tuple[Tokenizer, "BinarizedExamples"]:
    """Tokenizer and memory-mapped training examples for a streamed training split (built once)."""
    fingerprint = pairs.fingerprint()
    tokenizer = sampled_tokenizer(pairs, fingerprint, cfg)
    path = cache_path(cfg, fingerprint, tokenizer)
    if not (path / "meta.json").is_file():
        workers = cfg.num_workers if cfg.num_workers is not None else (os.cpu_count() or 1)
        build(pairs, tokenizer, path, workers=workers)
    else:
        log.info("binarised training data: %s (cached)", path)
    return tokenizer, BinarizedExamples(path, cfg.max_len)


# ---- reading -----------------------------------------------------------------------------------

class BinarizedExamples(Sequence):
    """The training examples of a binarised folder, read from memory-mapped files on access.

    Pairs with an empty side or more than ``max_len`` tokens on either side are left out (the
    same filter as the in-memory path). ``examples[i]`` is ``(src ids + [EOS], [BOS] + tgt ids +
    [EOS])``, like every other example list; ``lengths()`` gives both length arrays without
    reading any ids, which is all that batching needs."""

    def __init__(self, path: Path, max_len: int):
        self.path = Path(path)
        self.meta = json.loads((self.path / "meta.json").read_text())
        dtype = np.dtype(self.meta["dtype"])
        self.ids, self.offsets = {}, {}
        for side in ("src", "tgt"):
            self.offsets[side] = np.load(self.path / f"{side}.offsets.npy", mmap_mode="r")
            size = int(self.offsets[side][-1])
            self.ids[side] = np.memmap(self.path / f"{side}.ids", dtype=dtype, mode="r", shape=(size,)) if size else \
                np.zeros(0, dtype=dtype)
        src_len, tgt_len = (np.diff(self.offsets[side]) for side in ("src", "tgt"))
        keep = (src_len > 0) & (tgt_len > 0) & (src_len <= max_len) & (tgt_len <= max_len)
        self.index = np.flatnonzero(keep)
        self.dropped = int(len(keep) - len(self.index))
        if not len(self.index):
            raise DataError(f"no training pair has at most data.max_len={max_len} tokens; raise data.max_len")
        self._lengths = (src_len[self.index] + 1, tgt_len[self.index] + 2)  # + EOS / BOS, EOS

    def __len__(self) -> int:
        return len(self.index)

    def lengths(self) -> Tuple[np.ndarray, np.ndarray]:
        return self._lengths

    def _side(self, side: str, j: int) -> List[int]:
        off = self.offsets[side]
        return self.ids[side][int(off[j]):int(off[j + 1])].tolist()

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        j = int(self.index[i])
        return self._side("src", j) + [EOS], [BOS] + self._side("tgt", j) + [EOS]
