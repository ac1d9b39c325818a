"""Atomic file writes: write to a temporary file in the target's folder, fsync, then rename.

Readers (and a resumed run) therefore see either the old file or the complete new one, never a
half-written file, and nothing is left behind when the write fails. Files get the mode a plain
``open()`` gives (0666 less the umask), so teammates on a shared cluster can read results."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator


@contextlib.contextmanager
def atomic_open(path: Path) -> Iterator[BinaryIO]:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600: give it the mode open() would
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    with atomic_open(path) as f:
        f.write(data)
