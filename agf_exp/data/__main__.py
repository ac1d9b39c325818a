"""``python -m agf_exp.data binarize [overrides]``: build a data config's binarised training cache
ahead of training (the same overrides as ``run.py``, e.g. ``data=wmt17_en_de``), so that a
sweep's jobs or a multi-GPU run start from it."""
import logging
import sys

from ..config import compose
from . import DataError, binarized, load_corpus


def main(argv=None) -> int:
    """Build the cache of a data config ahead of training (same overrides as run.py)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    overrides = list(sys.argv[1:] if argv is None else argv)
    cfg = compose(overrides)
    try:
        corpus = load_corpus(cfg.data, cfg.seed)
        if corpus.train_pairs is None:
            raise DataError(f"data={cfg.data.name} is read into memory; pass data.binarize=true to binarise it")
        _, examples = binarized.prepare(cfg.data, corpus.train_pairs)
    except DataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{examples.path}: {examples.meta['pairs']} pairs, {len(examples)} within data.max_len")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] != ["binarize"]:
        print(__doc__.strip(), file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(main(sys.argv[2:]))
