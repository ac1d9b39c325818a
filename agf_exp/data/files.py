"""``data=files``: any parallel plain-text (or .gz) files, one sentence per line.

With ``data.binarize=true`` the training files are streamed into a binarised cache instead of
being read into memory (large corpora; see :mod:`agf_exp.data.binarized`)."""
from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING

from .binarized import BinarizeOptions
from .corpus import DataConfig, FilePairs, ParallelCorpus, expand, read_parallel, register_source


@dataclass
class FilesDataConfig(BinarizeOptions, DataConfig):
    name: str = "files"
    train_src: str = MISSING
    train_tgt: str = MISSING
    valid_src: str = MISSING
    valid_tgt: str = MISSING
    test_src: str = MISSING
    test_tgt: str = MISSING


@register_source(FilesDataConfig)
def load_files(cfg: FilesDataConfig, seed: int) -> ParallelCorpus:
    paths = {split: (expand(getattr(cfg, f"{split}_src")), expand(getattr(cfg, f"{split}_tgt")))
             for split in ("train", "valid", "test")}
    description = f"files ({cfg.train_src}, {cfg.train_tgt})"
    if cfg.binarize:
        return ParallelCorpus({split: read_parallel(*paths[split]) for split in ("valid", "test")}, description,
                              FilePairs(*paths["train"]))
    return ParallelCorpus({split: read_parallel(*p) for split, p in paths.items()}, description)
