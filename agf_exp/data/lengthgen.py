"""Synthetic sequence-to-sequence tasks for length generalization: ``data=copy``, ``data=reverse``
and ``data=scan``. Everything is generated; nothing is downloaded.

**Copy / reverse.** Sources are sequences of ``symbols`` symbols (``s0 ... s{n-1}``, one word each),
lengths uniform in ``[train_min, train_max]`` for train and valid; the target is the source
(copy) or the source reversed. The test split holds ``test_per_length`` sequences of every length
from ``train_min`` to ``test_max`` (default 4× the training maximum), so exact match can be read per
length bucket. Sequences are drawn from ``random.Random(f"{task}-{seed}")``; a test sequence that
also occurs in train is kept (at these lengths collisions are rare and the in-distribution part
of the test split is reported as such).

**SCAN** (Lake & Baroni 2018): the full command set of its grammar (20,910 commands, each with
its action sequence), split by the length of the action sequence: ``split=length`` is the
published length split (train: ≤ 22 actions, 16,990 commands; test: 24-48 actions, 3,920
commands; no command has 23); ``split=cutoff26`` / ``cutoff30`` / ``cutoffN`` train on ≤ N actions
and test on the rest (Newman et al. 2020; Csordás et al. 2021). Valid is a seeded sample of
``valid_size`` training commands (in distribution, as in those papers; it is not used to choose
the checkpoint in the length study). The grammar::

    C -> S and S | S after S | S            [[x and y]] = [[x]] [[y]];  [[x after y]] = [[y]] [[x]]
    S -> V twice | V thrice | V             [[x twice]] = [[x]] [[x]]; thrice: three times
    V -> D[1] opposite D[2] | D[1] around D[2] | D | U
    D -> U left | U right | turn left | turn right
    U -> walk | look | run | jump           [[walk]] = I_WALK ...; [[turn left]] = I_TURN_LEFT
    [[u left]] = I_TURN_LEFT [[u]];  [[u opposite left]] = I_TURN_LEFT I_TURN_LEFT [[u]]
    [[u around left]] = (I_TURN_LEFT [[u]]) x 4;  [[turn opposite left]] = I_TURN_LEFT x 2
    [[turn around left]] = I_TURN_LEFT x 4     (right likewise)

All three use the sentencepiece ``word`` model by default, so one symbol, word or action is one
token and lengths are counted in them.
"""
from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

from .corpus import DataConfig, DataError, ParallelCorpus, SubwordModel, register_source

# ---- copy / reverse ---------------------------------------------------------------------------


@dataclass
class SequenceTaskConfig(DataConfig):
    """Shared by ``data=copy`` and ``data=reverse``."""

    src_lang: str = "seq"
    tgt_lang: str = "seq"
    vocab_size: int = 64  # the symbols + 4 special pieces (a soft limit)
    subword_model: SubwordModel = SubwordModel.word
    max_len: int = 1000  # the task's lengths decide; no extra filter
    symbols: int = 20
    train_min: int = 4
    train_max: int = 16
    train_size: int = 10000
    valid_size: int = 500
    test_max: Optional[int] = None  # longest test sequence (default 4 × train_max)
    test_per_length: int = 50


@dataclass
class CopyConfig(SequenceTaskConfig):
    name: str = "copy"


@dataclass
class ReverseConfig(SequenceTaskConfig):
    name: str = "reverse"


def _sequence_task(cfg: SequenceTaskConfig, seed: int, reverse: bool) -> ParallelCorpus:
    test_max = cfg.test_max if cfg.test_max is not None else 4 * cfg.train_max
    if not 1 <= cfg.train_min <= cfg.train_max <= test_max:
        raise DataError(f"data.train_min={cfg.train_min}, data.train_max={cfg.train_max}, data.test_max={test_max}: "
                        "need 1 <= train_min <= train_max <= test_max")
    if cfg.symbols < 2 or min(cfg.train_size, cfg.valid_size, cfg.test_per_length) < 1:
        raise DataError("data.symbols must be >= 2 and data.train_size, valid_size, test_per_length >= 1")
    rng = random.Random(f"{cfg.name}-{seed}")
    alphabet = [f"s{i}" for i in range(cfg.symbols)]

    def pair(length: int) -> Tuple[str, str]:
        seq = [rng.choice(alphabet) for _ in range(length)]
        return " ".join(seq), " ".join(reversed(seq) if reverse else seq)

    def draw(n: int) -> Tuple[List[str], List[str]]:
        pairs = [pair(rng.randint(cfg.train_min, cfg.train_max)) for _ in range(n)]
        return [s for s, _ in pairs], [t for _, t in pairs]

    splits = {"train": draw(cfg.train_size), "valid": draw(cfg.valid_size)}
    test = [pair(length) for length in range(cfg.train_min, test_max + 1) for _ in range(cfg.test_per_length)]
    splits["test"] = ([s for s, _ in test], [t for _, t in test])
    what = "reversed" if reverse else "copied"
    return ParallelCorpus(splits, f"{cfg.name}: {cfg.symbols} symbols {what}, train lengths {cfg.train_min}-"
                                  f"{cfg.train_max}, test {cfg.train_min}-{test_max} ({cfg.test_per_length} per length, "
                                  f"seed {seed})")


@register_source(CopyConfig)
def load_copy(cfg: CopyConfig, seed: int) -> ParallelCorpus:
    return _sequence_task(cfg, seed, reverse=False)


@register_source(ReverseConfig)
def load_reverse(cfg: ReverseConfig, seed: int) -> ParallelCorpus:
    return _sequence_task(cfg, seed, reverse=True)


# ---- SCAN -------------------------------------------------------------------------------------

_PRIMITIVES = {"walk": "I_WALK", "look": "I_LOOK", "run": "I_RUN", "jump": "I_JUMP"}
_TURNS = {"left": "I_TURN_LEFT", "right": "I_TURN_RIGHT"}


def _v_phrases() -> List[Tuple[str, List[str]]]:
    """Every V of the grammar with its meaning (34)."""
    out = [(u, [a]) for u, a in _PRIMITIVES.items()]
    for direction, turn in _TURNS.items():
        out.append((f"turn {direction}", [turn]))
        out.append((f"turn opposite {direction}", [turn, turn]))
        out.append((f"turn around {direction}", [turn] * 4))
        for u, a in _PRIMITIVES.items():
            out.append((f"{u} {direction}", [turn, a]))
            out.append((f"{u} opposite {direction}", [turn, turn, a]))
            out.append((f"{u} around {direction}", [turn, a] * 4))
    return out


def scan_commands() -> List[Tuple[str, str]]:
    """The whole SCAN set: (command, action sequence), 20,910 pairs in a fixed order."""
    s_phrases = []
    for v, meaning in _v_phrases():
        s_phrases += [(v, meaning), (f"{v} twice", meaning * 2), (f"{v} thrice", meaning * 3)]
    pairs = [(s, m) for s, m in s_phrases]
    for (s1, m1), (s2, m2) in itertools.product(s_phrases, repeat=2):
        pairs.append((f"{s1} and {s2}", m1 + m2))
        pairs.append((f"{s1} after {s2}", m2 + m1))
    return [(c, " ".join(m)) for c, m in pairs]


@dataclass
class ScanConfig(DataConfig):
    name: str = "scan"
    src_lang: str = "cmd"
    tgt_lang: str = "act"
    vocab_size: int = 32  # 13 command words + 6 actions + 4 special pieces (a soft limit)
    subword_model: SubwordModel = SubwordModel.word
    max_len: int = 1000
    split: str = "length"  # length (train <= 22 actions, test 24-48) | cutoffN (train <= N, test > N)
    valid_size: int = 500  # a seeded sample of the training commands


def scan_split(split: str) -> Tuple[int, Optional[int]]:
    """(the longest training action sequence, the shortest test one or None for "> cutoff")."""
    if split == "length":
        return 22, 24
    found = re.fullmatch(r"cutoff(\d+)", split)
    if found and 1 <= int(found.group(1)) < 48:
        return int(found.group(1)), None
    raise DataError(f"data.split={split!r} is not a SCAN split; use length (the published one: train <= 22 "
                    "actions, test 24-48) or cutoffN with 1 <= N < 48 (e.g. cutoff26, cutoff30)")


@register_source(ScanConfig)
def load_scan(cfg: ScanConfig, seed: int) -> ParallelCorpus:
    longest_train, shortest_test = scan_split(cfg.split)
    pairs = scan_commands()
    n_actions = [len(a.split()) for _, a in pairs]
    train = [p for p, n in zip(pairs, n_actions) if n <= longest_train]
    test = [p for p, n in zip(pairs, n_actions) if n > longest_train and (shortest_test is None or n >= shortest_test)]
    if cfg.valid_size < 1 or cfg.valid_size > len(train):
        raise DataError(f"data.valid_size={cfg.valid_size} must be between 1 and the {len(train)} training commands")
    valid = random.Random(f"scan-valid-{seed}").sample(train, cfg.valid_size)
    splits: Dict[str, Tuple[List[str], List[str]]] = {
        name: ([c for c, _ in part], [a for _, a in part]) for name, part in (("train", train), ("valid", valid),
                                                                             ("test", test))}
    test_what = f"{shortest_test}-48" if shortest_test else f"> {longest_train}"
    return ParallelCorpus(splits, f"SCAN {cfg.split} split: train {len(train)} commands (<= {longest_train} actions), "
                                  f"test {len(test)} ({test_what} actions)")


# ---- what the length study measures (docs/lengthgen.md, "Metric") ------------------------------


@dataclass(frozen=True)
class Range:
    """Target lengths ``low``-``high`` (inclusive, in symbols / actions); ``key`` names it in W&B."""

    name: str
    low: int
    high: int
    key: str = ""


#: the length ranges of each task; training maxima 16 (copy, reverse: ``train_max``) and 22 actions
#: (SCAN's length split)
RANGES: Dict[str, Tuple[Range, ...]] = {
    "copy": (Range("in-distribution", 1, 16, "in_dist"), Range("1-2x", 17, 32, "1_2x"), Range("2-4x", 33, 64, "2_4x")),
    "reverse": (Range("in-distribution", 1, 16, "in_dist"), Range("1-2x", 17, 32, "1_2x"),
                Range("2-4x", 33, 64, "2_4x")),
    "scan": (Range("test split", 24, 48, "test_split"),),
}
TRAIN_MAX = {"copy": 16, "reverse": 16, "scan": 22}


def target_length(reference: str) -> int:
    """An example's length: its reference's whitespace-separated tokens (symbols, actions)."""
    return len(reference.split())


def exact_match(hypothesis: str, reference: str) -> bool:
    """The whole output equals the reference, token for token."""
    return hypothesis.split() == reference.split()
