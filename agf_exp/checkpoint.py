"""Checkpoints: written atomically (see :mod:`agf_exp.atomic`), read only as tensors and plain data.

A checkpoint may come from someone else (a colleague's ``best.pt``, a sweep copied from a
cluster), and a pickle can run any code when it is loaded. So every reader goes through
:func:`load`, which

1. checks the file's integrity first: a checkpoint is torch's zip format, and every record's
   CRC-32 (which ``torch.save`` writes but ``torch.load`` never checks) is verified, so a
   truncated, zeroed or partly overwritten file is refused before anything is built from it;
2. lists the Python globals its pickle names without running it
   (``torch.serialization.get_unsafe_globals_in_checkpoint``) and refuses any file that names one,
   with a line naming the global;
3. loads with ``weights_only=True`` (torch's restricted unpickler: tensors, dicts, lists, tuples,
   strings, numbers; nothing is called) and checks that the result has the shape agf-exp writes.

What agf-exp writes holds only that: weights, optimizer and GradScaler state, the run's resolved
config, the subword model's bytes, counters, the evaluation records and every RNG state (numpy's
as a tensor and ints). Checkpoints written before this format stored numpy's RNG state as a numpy
array; their three numpy globals (ndarray, dtype and numpy's array reconstructor, which build an
array from bytes and call nothing else) are accepted for such files only, so an interrupted run
of an older version still resumes. Why not safetensors: see docs/checkpoints.md.

Every failure is :class:`CheckpointError` (a ``ValueError``: the command lines print it as one
line and exit 2).
"""
from __future__ import annotations

import errno
import pickle
import re
import shutil
import zipfile
from pathlib import Path
from typing import Any, Dict, Iterable

import torch

from .atomic import atomic_open
from .runfiles import RunFileError, plain_config

FORMAT = "agf-exp checkpoint"
FORMAT_VERSION = 2

# the globals of a format-1 last.pt (numpy's RNG state as an ndarray), accepted for such files only
_LEGACY_GLOBALS = {"numpy.ndarray", "numpy.dtype", "numpy._core.multiarray._reconstruct",
                   "numpy.core.multiarray._reconstruct", "numpy.dtypes.UInt32DType"}


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or must not be read; the message names it and what to do."""


# --------------------------------------------------------------------------------------------
# writing


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensors in ``obj`` (nested dicts/lists): about a checkpoint's size on disk."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB" if n < 10 * 2**20 else f"{n / 2**20:.0f} MiB"


def _os_error(error: BaseException) -> OSError | None:
    """The OSError behind ``error`` (torch's writer re-raises a failed write as a RuntimeError)."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError):
            return error
        error = error.__cause__ or error.__context__
    return None


def save_atomic(obj: Dict[str, Any], path: Path) -> None:
    """Write ``obj`` (tensors and plain data only) to ``path``: the old file stays until the new
    one is complete on disk. A failed write (disk full, a file-size limit) is one CheckpointError
    saying why, how much space a checkpoint needs, and that the previous file is unchanged."""
    path = Path(path)
    obj = {"format": FORMAT, "format_version": FORMAT_VERSION, **obj}
    try:
        with atomic_open(path) as f:
            torch.save(obj, f)
    except (OSError, RuntimeError) as e:
        cause = _os_error(e)
        need = _mib(tensor_bytes(obj))
        try:
            free = f"{_mib(shutil.disk_usage(path.parent).free)} free"
        except OSError:
            free = "free space unknown"
        previous = f"the previous {path.name} is unchanged" if path.is_file() else f"no {path.name} was written"
        if cause is not None and cause.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            what = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is exceeded",
                    errno.EFBIG: "the file-size limit (ulimit -f) is reached"}[cause.errno]
            raise CheckpointError(f"cannot write {path}: {what} ({free}; a checkpoint of this run needs about "
                                  f"{need}); {previous}: free space, then run the same command again "
                                  "to resume") from None
        reason = (cause.strerror if cause is not None and cause.strerror else " ".join(str(e).split())[:160])
        raise CheckpointError(f"cannot write {path}: {reason} ({free}; a checkpoint needs about {need}); "
                              f"{previous}") from None


# --------------------------------------------------------------------------------------------
# reading


def verify(path: Path) -> None:
    """Raise CheckpointError unless ``path`` is a complete zip whose every record passes its CRC-32."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except zipfile.BadZipFile:
        size = path.stat().st_size
        raise CheckpointError(f"{path} is not a readable checkpoint ({size} bytes, not a complete torch zip file: "
                              f"truncated, zeroed or another format); {_what_to_do(path)}") from None
    except (OSError, EOFError, RuntimeError, ValueError) as e:  # e.g. a record cut short, a bad header
        raise CheckpointError(f"{path} is corrupt ({' '.join(str(e).split())[:120]}); {_what_to_do(path)}") from None
    if bad is not None:
        raise CheckpointError(f"{path} is corrupt: its record {bad} fails its CRC-32 check (the bytes changed "
                              f"after it was written); {_what_to_do(path)}")


def _what_to_do(path: Path) -> str:
    """What a user can do about a bad checkpoint, truthfully: which other file holds a good state."""
    if path.name == "last.pt":
        best = path.with_name("best.pt")
        other = (f"; {best} holds the best evaluation's weights (not resumable: no optimizer state)"
                 if best.is_file() else "")
        return (f"restore {path.name} from a copy, or move it away to train this run from the start{other}")
    return "use another checkpoint of the run (checkpoints/best.pt or checkpoints/last.pt), or restore this one"


def unsafe_globals(path: Path) -> list:
    """The Python globals the checkpoint's pickle names beyond torch's weights-only set (read
    without unpickling)."""
    try:
        return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception as e:  # a pickle too broken to scan: refuse it as unreadable
        raise CheckpointError(f"{path} is not a readable checkpoint (its pickle cannot be scanned: "
                              f"{' '.join(str(e).split())[:120]}); {_what_to_do(path)}") from None


def _legacy_safe_globals() -> Iterable[Any]:
    import numpy as np

    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return [np.ndarray, np.dtype, _reconstruct, type(np.dtype(np.uint32))]


def load(path: Path, map_location="cpu") -> Dict[str, Any]:
    """The checkpoint at ``path`` (a run's ``best.pt``/``last.pt``), verified and loaded as
    tensors and plain data only; CheckpointError for anything else (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        what = "is a directory" if path.is_dir() else "does not exist"
        raise FileNotFoundError(f"checkpoint {path} {what}; pass the path of a .pt file from a run's "
                                "checkpoints/ folder")
    verify(path)
    found = unsafe_globals(path)
    foreign = sorted(set(found) - _LEGACY_GLOBALS)
    if foreign:
        raise CheckpointError(f"{path} is not a checkpoint written by agf-exp: it holds {', '.join(foreign[:4])} "
                              "(a pickle that would run code when loaded); it was not loaded. Use a checkpoint "
                              "you trained, or ask its author for one written by agf-exp")
    try:
        if found:  # a format-1 last.pt: numpy's RNG state as an ndarray
            with torch.serialization.safe_globals(list(_legacy_safe_globals())):
                ckpt = torch.load(path, map_location=map_location, weights_only=True)
        else:
            ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"WeightsUnpickler error: ([^\n]*)", str(e))
        detail = f" ({found.group(1).strip()[:160]})" if found else ""
        raise CheckpointError(f"{path} is not a checkpoint written by agf-exp: its pickle holds what a weights-only "
                              f"load refuses{detail}; it was not loaded") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0].split(". ")[0][:160]
        raise CheckpointError(f"{path} is not a readable checkpoint ({reason}); {_what_to_do(path)}") from None
    return _checked(ckpt, path)


def _checked(ckpt: Any, path: Path) -> Dict[str, Any]:
    """``ckpt`` when it has the shape agf-exp writes (weights, a plain config, counters)."""
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict) or not isinstance(ckpt.get("config"), dict):
        raise CheckpointError(f"{path} is not a checkpoint written by agf-exp: it holds no model weights and config "
                              "(a bare state_dict or another project's file?)")
    if not all(isinstance(v, torch.Tensor) for v in ckpt["model"].values()):
        raise CheckpointError(f"{path} is not a checkpoint written by agf-exp: its model entry holds non-tensors")
    if ckpt.get("format_version", 1) > FORMAT_VERSION:
        raise CheckpointError(f"{path} was written by a newer agf-exp (checkpoint format "
                              f"{ckpt['format_version']}, this one reads up to {FORMAT_VERSION}); upgrade agf-exp")
    try:
        plain_config(ckpt["config"], f"{path} (its config)")
    except RunFileError as e:
        raise CheckpointError(str(e)) from None
    return ckpt
