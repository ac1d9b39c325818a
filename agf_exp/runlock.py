"""One process per run dir: an exclusive lock on ``<run dir>/.lock`` for the whole run.

The lock is a POSIX record lock (``fcntl.lockf``) held by the process that trains (rank 0 under
DDP). The kernel releases it when that process ends, however it ends (``kill -9`` included), so a
crashed run leaves no stale lock: the next start takes it over. A second process that finds it
held stops at once with one line naming the holder (pid, host, start time), before touching
any file of the run.

A start that is refused after the lock was taken (a finished run of another config, bad data)
leaves the run dir as it found it: :meth:`RunDirLock.release` with ``started=False`` restores the
lock file's previous content, or removes the lock file and the run dir if this start created them.

File systems: local disks and NFS (v3 with lockd, v4) honour POSIX locks across hosts; Lustre does
when mounted with ``-o flock`` (``localflock`` locks per node only). Where the file system refuses
locks, the start stops and says so; ``trainer.lock_run_dir=false`` then runs without the lock
(make sure yourself that only one job uses the run dir).
"""
from __future__ import annotations

import errno
import fcntl
import os
import socket
import sys
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Optional

from omegaconf import OmegaConf

from .config import run_name_problem


class RunDirLocked(RuntimeError):
    """Another live process holds the run dir (or the file system cannot lock it)."""


class RunDirLock:
    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / ".lock"
        self._fd: Optional[int] = None
        self._previous: Optional[bytes] = None  # the lock file's content before this start (None: created)
        self._made_dirs: list = []

    def acquire(self) -> None:
        """Take the lock or raise :class:`RunDirLocked`; record this process as the holder."""
        made, d = [], self.run_dir
        while not d.exists():
            made.append(d)
            d = d.parent
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._made_dirs = made  # innermost first
        existed = self.path.exists()
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip()
            os.close(fd)
            if not existed:
                self._undo(remove_file=True)
            if e.errno in (errno.EACCES, errno.EAGAIN):
                raise RunDirLocked(f"{self.run_dir} is in use by another process ({holder or 'holder starting up'}): "
                                   "wait for it to end or stop it, or choose another run dir (hydra.run.dir=...)") from None
            raise RunDirLocked(f"cannot lock {self.path} ({e.strerror}): this file system has no POSIX locks; "
                               "run with trainer.lock_run_dir=false and make sure only one process uses the run dir") \
                from None
        self._fd = fd
        self._previous = os.pread(fd, 1 << 16, 0) if existed else None
        holder = f"pid {os.getpid()} on {socket.gethostname()} since {datetime.now().isoformat(timespec='seconds')}\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, holder.encode(), 0)

    def release(self, started: bool = True) -> None:
        """Drop the lock. ``started=False`` (the start was refused): leave the run dir as it was."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        if not started and self._previous is not None:
            os.ftruncate(fd, 0)
            os.pwrite(fd, self._previous, 0)
        if not started and self._previous is None:
            self._undo(remove_file=True)
        os.close(fd)

    def _undo(self, remove_file: bool) -> None:
        if remove_file:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        for d in self._made_dirs:  # only dirs this start created, and only while empty
            try:
                d.rmdir()
            except OSError:
                break


def first_missing(path: Path) -> Optional[Path]:
    """The outermost folder of ``path`` that does not exist yet (``path`` itself, or an ancestor);
    None when it exists."""
    path = Path(path).expanduser().absolute()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def remove_if_created(run_dir: Path, created: Optional[Path]) -> None:
    """Remove the empty folders from ``run_dir`` up to ``created`` (what this start created)."""
    if created is None:
        return
    d = Path(run_dir).expanduser().absolute()
    created = Path(created)
    while True:
        try:
            if any(d.iterdir()):
                return
            d.rmdir()
        except OSError:
            return
        if d == created or created not in d.parents:
            return
        d = d.parent


def creation_problem(run_dir: Path) -> Optional[str]:
    """Why ``run_dir`` cannot be created or written (a file in its path, a read-only place);
    None when it can. Nothing is created."""
    run_dir = Path(run_dir).expanduser().absolute()
    d = run_dir
    while not d.exists():
        d = d.parent
    if not d.is_dir():
        return f"cannot create the run dir {run_dir}: {d} is a file; choose another hydra.run.dir"
    try:  # a real attempt: permission bits do not bind root, read-only mounts and /proc do
        os.rmdir(tempfile.mkdtemp(prefix=".agf-check-", dir=d))
    except OSError as e:
        return f"cannot create the run dir {run_dir} in {d} ({e.strerror}); choose another hydra.run.dir"
    return None


try:
    from hydra.experimental.callback import Callback
except ImportError:  # pragma: no cover (hydra-core is a dependency; the callback is only used by run.py)
    Callback = object  # type: ignore[misc,assignment]


REFUSED_FILE = ".refused-jobs"  # in a sweep dir while it runs: one line per job refused by a held lock
SKIPPED_FILE = ".skipped-jobs"  # in a sweep dir while it runs: one line per job whose config was refused


def note_skipped(sweep_dir: Path, run_dir: Path, reason: str) -> None:
    """Record that a sweep job's config was refused before it started (an invalid cell of a
    factorial sweep, e.g. ``pos=none pcmv=true``): the other jobs run, and the sweep ends naming
    the skipped cells and exiting 2 (:class:`CheckRunDir`). One O_APPEND write per job."""
    path = Path(sweep_dir) / SKIPPED_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{run_dir}\t{' '.join(reason.split())}\n")


def note_refused(sweep_dir: Path, run_dir: Path) -> None:
    """Record that a sweep job was refused (its run dir held by another process): the sweep ends
    non-zero and says so (:class:`CheckRunDir`). One short O_APPEND write per job, so jobs in
    other processes (hydra/launcher=joblib) append safely."""
    path = Path(sweep_dir) / REFUSED_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(f"{run_dir}\n")


class CheckRunDir(Callback):
    """Hydra callback (``hydra.callbacks`` in conf/config.yaml): a run or sweep dir that cannot be
    created, or a ``run_name`` that is not one folder name, stops the start with one line and
    exit 2, before Hydra creates anything; a sweep that had jobs refused (their run dirs held by
    another process) ends with one line counting them and exit 3, so a driver can tell it from a
    sweep that finished every job."""

    #: the outermost folder of the last checked run dir that did not exist before the start (run.py
    #: removes it again, if empty, when the start is refused)
    created: Optional[Path] = None

    def _check(self, config, path: str) -> None:
        CheckRunDir.created = first_missing(Path(path))
        name = str(OmegaConf.select(config, "run_name", default=""))
        problem = creation_problem(Path(path)) or run_name_problem(name)
        if problem:
            print(f"ConfigError: {problem}", file=sys.stderr)
            sys.exit(2)

    def on_run_start(self, config, **kwargs) -> None:
        self._check(config, config.hydra.run.dir)

    def on_multirun_start(self, config, **kwargs) -> None:
        self._check(config, config.hydra.sweep.dir)
        for name in (REFUSED_FILE, SKIPPED_FILE):
            stale = Path(config.hydra.sweep.dir) / name
            if stale.is_file():
                stale.unlink()

    def on_multirun_end(self, config, **kwargs) -> None:
        """The sweep ends saying which jobs did not run: exit 3 when a run dir was held by another
        process, else 2 when a cell's config was refused (the other jobs ran either way)."""
        refused, skipped = [], []
        for name, into in ((REFUSED_FILE, refused), (SKIPPED_FILE, skipped)):
            path = Path(config.hydra.sweep.dir) / name
            if path.is_file():
                into.extend(line for line in path.read_text().splitlines() if line)
                path.unlink()
        if skipped:
            dirs = [line.split("\t")[0] for line in skipped]
            print(f"ConfigError: {len(skipped)} job(s) of this sweep were skipped, their configs refused "
                  f"({', '.join(dirs[:3])}{', ...' if len(dirs) > 3 else ''}; each job's reason is above); the "
                  "other jobs ran", file=sys.stderr)
        if refused:
            print(f"RunDirLocked: {len(refused)} job(s) of this sweep were refused and not run, their run dirs held by "
                  f"another process ({', '.join(refused[:3])}{', ...' if len(refused) > 3 else ''}); run the sweep "
                  "again when that process has finished (finished jobs are skipped)", file=sys.stderr)
        if refused or skipped:
            sys.exit(3 if refused else 2)

