"""Atomic checkpoints (see :mod:`agf_exp.atomic`): a crash mid-write never replaces a good
``last.pt``/``best.pt`` with a broken one."""
from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any, Dict

import torch

from .atomic import atomic_open


class CheckpointError(ValueError):
    """A checkpoint file that cannot be read; the message names it and what to use instead."""


def save_atomic(obj: Dict[str, Any], path: Path) -> None:
    with atomic_open(path) as f:
        torch.save(obj, f)


def load(path: Path, map_location="cpu") -> Dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist; pass the path of a .pt file from a run's "
                                "checkpoints/ folder")
    # Our checkpoints hold plain Python containers, tensors and numpy RNG state.
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise CheckpointError(f"{path} is not a readable checkpoint ({reason}): it is truncated or not a .pt "
                              "written by a run; use another checkpoints/*.pt (best.pt or last.pt)") from None
