"""``data=synthetic``: a generated translation task in which word order matters.

A small synchronous grammar produces a source language with English-like order and a target
language with German-like order, deterministically from ``data.grammar_seed`` (the lexicon) and
the run seed (the sentences):

    S   -> NP VP                          target: NP' VP'
    NP  -> DET ADJ* NOUN [PREP NP]        target: DET(gender, def) NOUN' ADJ'* (reversed) [PREP' NP']
    VP  -> VERB NP [ADV]                  target: NP' [ADV'] VERB'      (verb-final)
    S   -> S and S                        target: S' und S'

Words are pseudo-words built from syllables (different inventories per side), so subword
segmentation is exercised. The target determiner agrees with the noun's gender, which in the
source comes only after the adjectives: the model must look ahead and reorder, so it cannot
succeed without positional information. No files are needed; it is the embedded default.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Dict, List, Tuple

from .corpus import DataConfig, ParallelCorpus, register_source


@dataclass
class SyntheticDataConfig(DataConfig):
    name: str = "synthetic"
    src_lang: str = "src"
    tgt_lang: str = "tgt"
    vocab_size: int = 1000
    train_size: int = 8000
    valid_size: int = 300
    test_size: int = 300
    grammar_seed: int = 1234  # the lexicon (fixed across runs so runs with other seeds compare)
    n_nouns: int = 60
    n_adjectives: int = 30
    n_verbs: int = 30
    n_adverbs: int = 10
    n_prepositions: int = 8
    max_adjectives: int = 2
    p_pp: float = 0.3  # probability that a noun phrase takes a prepositional phrase
    p_conj: float = 0.2  # probability that a sentence is a conjunction of two clauses
    max_depth: int = 2  # nesting limit of prepositional phrases
    # An extra split "long" for length extrapolation (not used in training): sentences of
    # `long_clauses` conjoined clauses, longer than any training sentence (which has 1 or 2).
    long_size: int = 300  # 0: no long split
    long_clauses: int = 4


_SRC_SYLLABLES = ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "da", "pe", "bo", "fu", "gi", "ha", "ju", "ze"]
_TGT_SYLLABLES = ["an", "ber", "chen", "dor", "ei", "fel", "gau", "hin", "isch", "kel", "lung", "mar", "nor",
                  "ost", "pra", "reu", "sta", "tor", "ung", "wal"]


class Grammar:
    def __init__(self, cfg: SyntheticDataConfig):
        self.cfg = cfg
        rng = random.Random(cfg.grammar_seed)
        used: set = set()

        def words(n: int, syllables: List[str], lo: int, hi: int) -> List[str]:
            out = []
            while len(out) < n:
                w = "".join(rng.choice(syllables) for _ in range(rng.randint(lo, hi)))
                if w not in used:
                    used.add(w)
                    out.append(w)
            return out

        def lexicon(n: int, lo=2, hi=3) -> List[Tuple[str, str]]:
            return list(zip(words(n, _SRC_SYLLABLES, lo, hi), words(n, _TGT_SYLLABLES, lo, hi)))

        self.nouns = [(s, t, rng.randrange(3)) for s, t in lexicon(cfg.n_nouns)]
        self.adjectives = lexicon(cfg.n_adjectives)
        self.verbs = lexicon(cfg.n_verbs)
        self.adverbs = lexicon(cfg.n_adverbs, 3, 4)
        self.prepositions = lexicon(cfg.n_prepositions, 1, 2)
        # determiners: source "the"/"a"; target form depends on (definiteness, gender)
        self.src_det = {True: "the", False: "a"}
        self.tgt_det: Dict[Tuple[bool, int], str] = {
            (True, 0): "der", (True, 1): "die", (True, 2): "das",
            (False, 0): "ein", (False, 1): "eine", (False, 2): "eins",
        }

    def noun_phrase(self, rng: random.Random, depth: int):
        definite = rng.random() < 0.5
        noun_s, noun_t, gender = rng.choice(self.nouns)
        adjs = rng.sample(self.adjectives, rng.randint(0, self.cfg.max_adjectives))
        src = [self.src_det[definite]] + [a for a, _ in adjs] + [noun_s]
        tgt = [self.tgt_det[(definite, gender)], noun_t] + [t for _, t in reversed(adjs)]
        if depth < self.cfg.max_depth and rng.random() < self.cfg.p_pp:
            prep_s, prep_t = rng.choice(self.prepositions)
            sub_s, sub_t = self.noun_phrase(rng, depth + 1)
            src += [prep_s] + sub_s
            tgt += [prep_t] + sub_t
        return src, tgt

    def clause(self, rng: random.Random):
        subj_s, subj_t = self.noun_phrase(rng, 0)
        verb_s, verb_t = rng.choice(self.verbs)
        obj_s, obj_t = self.noun_phrase(rng, 0)
        src, tgt = subj_s + [verb_s] + obj_s, subj_t + obj_t
        if rng.random() < 0.3:
            adv_s, adv_t = rng.choice(self.adverbs)
            src.append(adv_s)
            tgt.append(adv_t)
        return src, tgt + [verb_t]

    def sentence(self, rng: random.Random) -> Tuple[str, str]:
        src, tgt = self.clause(rng)
        if rng.random() < self.cfg.p_conj:
            s2, t2 = self.clause(rng)
            src, tgt = src + ["and"] + s2, tgt + ["und"] + t2
        return " ".join(src) + " .", " ".join(tgt) + " ."

    def long_sentence(self, rng: random.Random, clauses: int) -> Tuple[str, str]:
        src, tgt = self.clause(rng)
        for _ in range(clauses - 1):
            s2, t2 = self.clause(rng)
            src, tgt = src + ["and"] + s2, tgt + ["und"] + t2
        return " ".join(src) + " .", " ".join(tgt) + " ."


@register_source(SyntheticDataConfig)
def load_synthetic(cfg: SyntheticDataConfig, seed: int) -> ParallelCorpus:
    grammar = Grammar(cfg)
    rng = random.Random(f"synthetic-{cfg.grammar_seed}-{seed}")
    sizes = {"train": cfg.train_size, "valid": cfg.valid_size, "test": cfg.test_size}
    if min(sizes.values()) < 1:
        raise ValueError(f"data.train_size/valid_size/test_size must be >= 1, got {sizes}")
    splits = {}
    for split, n in sizes.items():
        pairs = [grammar.sentence(rng) for _ in range(n)]
        splits[split] = ([s for s, _ in pairs], [t for _, t in pairs])
    if cfg.long_size > 0:
        if cfg.long_clauses < 1:
            raise ValueError(f"data.long_clauses must be >= 1, got {cfg.long_clauses}")
        long_rng = random.Random(f"synthetic-long-{cfg.grammar_seed}-{seed}")  # leaves the other splits as they were
        pairs = [grammar.long_sentence(long_rng, cfg.long_clauses) for _ in range(cfg.long_size)]
        splits["long"] = ([s for s, _ in pairs], [t for _, t in pairs])
    return ParallelCorpus(splits, f"synthetic grammar (lexicon seed {cfg.grammar_seed}, sentence seed {seed})")
