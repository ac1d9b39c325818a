"""``data=files``: any parallel plain-text (or .gz) files, one sentence per line."""
from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from .corpus import DataConfig, ParallelCorpus, expand, read_parallel, register_source


@dataclass
class FilesDataConfig(DataConfig):
    name: str = "files"
    train_src: str = MISSING
    train_tgt: str = MISSING
    valid_src: str = MISSING
    valid_tgt: str = MISSING
    test_src: str = MISSING
    test_tgt: str = MISSING


@register_source(FilesDataConfig)
def load_files(cfg: FilesDataConfig, seed: int) -> ParallelCorpus:
    splits = {
        split: read_parallel(expand(getattr(cfg, f"{split}_src")), expand(getattr(cfg, f"{split}_tgt")))
        for split in ("train", "valid", "test")
    }
    return ParallelCorpus(splits, f"files ({cfg.train_src}, {cfg.train_tgt})")
