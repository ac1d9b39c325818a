"""``python -m agf_exp.data binarize [overrides]``: build a data config's binarised training cache
ahead of training (the same overrides as ``run.py``, e.g. ``data=wmt17_en_de``), so that a
sweep's jobs or a multi-GPU run start from it."""
import sys

from .binarized import main

if __name__ == "__main__":
    if sys.argv[1:2] != ["binarize"]:
        print(__doc__.strip(), file=sys.stderr)
        raise SystemExit(2)
    raise SystemExit(main(sys.argv[2:]))
