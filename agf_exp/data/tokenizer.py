"""Joint sentencepiece subwords, trained on the training split only and cached by content hash.

The cache key hashes the training text and every training option, so a second run with the same
data reuses the model and any change retrains it. The model is written to a temporary name and
renamed into place, so an interrupted run never leaves a half-written model behind.
"""
from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Union

import sentencepiece as spm

from ..atomic import atomic_write_bytes
from .corpus import DataError

PAD, UNK, BOS, EOS = 0, 1, 2, 3


class Tokenizer:
    """A sentencepiece model with fixed special ids: pad 0, unk 1, bos 2, eos 3."""

    pad_id, unk_id, bos_id, eos_id = PAD, UNK, BOS, EOS

    def __init__(self, model_proto: bytes):
        self.model_proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def identity(self) -> dict:
        """What names this exact subword model in a run's summary: its hash and the sentencepiece
        version in use (the cache is keyed by that version: another version trains a different
        model from the same text, so token-level metrics are not comparable across versions)."""
        return {"sha256": hashlib.sha256(self.model_proto).hexdigest(), "vocab_size": self.vocab_size,
                "sentencepiece": spm.__version__}

    def encode(self, lines: Sequence[str]) -> List[List[int]]:
        return self.sp.encode(list(lines), out_type=int)

    def decode(self, ids: Sequence[Sequence[int]]) -> List[str]:
        """Detokenise; stops at the first EOS and drops BOS/pad."""
        clean = []
        for seq in ids:
            seq = list(seq)
            if EOS in seq:
                seq = seq[: seq.index(EOS)]
            clean.append([i for i in seq if i not in (PAD, BOS)])
        return self.sp.decode(clean)


def load_model_file(path: Union[str, Path]) -> Tokenizer:
    """A trained sentencepiece model from a file (``data.subword_file``), checked for the special
    ids the models and batching assume."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"data.subword_file={path} does not exist; point it at a sentencepiece "
                        ".model file (a run's cache: <data.cache_dir>/spm/) or set it to null to train one")
    try:
        tok = Tokenizer(path.read_bytes())
    except Exception as e:  # sentencepiece raises RuntimeError/OSError for a file that is not a model
        raise DataError(f"data.subword_file={path} is not a sentencepiece model ({e})") from e
    if [tok.sp.pad_id(), tok.sp.unk_id(), tok.sp.bos_id(), tok.sp.eos_id()] != [PAD, UNK, BOS, EOS]:
        specials = [tok.sp.id_to_piece(i) if i < tok.vocab_size else None for i in range(4)]
        raise DataError(f"data.subword_file={path} has special ids pad/unk/bos/eos = "
                        f"{tok.sp.pad_id()}/{tok.sp.unk_id()}/{tok.sp.bos_id()}/{tok.sp.eos_id()} "
                        f"(pieces {specials}); agf-exp needs 0/1/2/3: train it with pad_id=0 unk_id=1 "
                        "bos_id=2 eos_id=3, or leave data.subword_file null")
    return tok


def train_or_load(lines: Union[Sequence[str], Callable[[], Sequence[str]]], vocab_size: int, model_type: str,
                  cache_dir: Path, identity: Optional[str] = None) -> Tokenizer:
    """Return the joint model for ``lines`` (source and target training text), training it once.

    The cache key hashes the lines themselves, or, when ``identity`` names them (a large
    corpus's fingerprint), that string; then ``lines`` may be a function that produces them only
    if the model has to be trained."""
    options = dict(vocab_size=vocab_size, model_type=model_type, character_coverage=1.0,
                   pad_id=PAD, unk_id=UNK, bos_id=BOS, eos_id=EOS, hard_vocab_limit=False,
                   input_sentence_size=2_000_000, shuffle_input_sentence=True, num_threads=1,
                   seed_sentencepiece_size=1_000_000)
    h = hashlib.sha256()
    h.update(repr(sorted(options.items())).encode())
    h.update(spm.__version__.encode())
    if identity is not None:
        h.update(b"identity\0" + identity.encode("utf-8"))
    else:
        for line in lines:
            h.update(line.encode("utf-8"))
            h.update(b"\n")
    path = Path(cache_dir) / "spm" / f"{model_type}{vocab_size}-{h.hexdigest()[:16]}.model"
    if path.is_file():
        return Tokenizer(path.read_bytes())
    if callable(lines):
        lines = lines()
    buf = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=buf,
                                       minloglevel=2, **options)
    except RuntimeError as e:  # sentencepiece's INTERNAL errors: a vocabulary size the data cannot give
        reason = str(e).split("]")[-1].strip()
        raise DataError(f"data.vocab_size={vocab_size} does not fit this data: sentencepiece says {reason!r}; "
                        "choose a data.vocab_size it allows") from None
    atomic_write_bytes(path, buf.getvalue())
    return Tokenizer(buf.getvalue())
