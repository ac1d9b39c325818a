"""Saving before a job is stopped: SLURM preemption, time limits, ``scancel``, ``kill``.

A cluster stops a job with a signal: SLURM sends SIGTERM on preemption or ``scancel`` (then
SIGKILL after its grace time), and submitit (``hydra/launcher=slurm``) asks for SIGUSR2 shortly
before the time limit, which its handler answers by requeueing the job and exiting. While the
trainer runs, :class:`PreemptionGuard` catches these signals; the trainer finishes the
optimizer update in progress, writes ``last.pt`` (atomically), and then hands the signal on to
the handler that was there before (submitit's requeue, or the default: stop). A requeued job
starts again with the same overrides, so the same run dir, and resumes from ``last.pt`` and the
same W&B run.
"""
from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Dict, Optional

log = logging.getLogger(__name__)

SIGNALS = tuple(s for s in (getattr(signal, "SIGUSR2", None), signal.SIGTERM) if s is not None)


class Preempted(SystemExit):
    """Raised after saving when the interrupted signal's previous action was to stop the process."""


class PreemptionGuard:
    """Context manager: record SIGUSR2/SIGTERM instead of dying mid-update (main thread only;
    elsewhere it does nothing)."""

    def __init__(self, immediate: Optional[str] = None) -> None:
        # immediate="<what>": hand the signal on as soon as it arrives (nothing is left to save
        # while doing <what>, e.g. the final decoding after last.pt holds the finished training)
        self.immediate = immediate
        self.signum: Optional[int] = None
        self._frame: Any = None
        self._previous: Dict[int, Any] = {}

    def __enter__(self) -> "PreemptionGuard":
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.getsignal(sig)
                signal.signal(sig, self._record)
        return self

    def _record(self, signum: int, frame: Any) -> None:
        if self.immediate:
            log.warning("received %s during %s: stopping (last.pt holds the finished training)",
                        signal.Signals(signum).name, self.immediate)
            self.signum, self._frame = signum, frame
            self.hand_on()
            return
        if self.signum is None:
            log.warning("received %s: saving last.pt after the current update", signal.Signals(signum).name)
        self.signum, self._frame = signum, frame

    @property
    def pending(self) -> bool:
        return self.signum is not None

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def hand_on(self) -> None:
        """Restore the previous handlers and give them the signal that arrived (call after saving)."""
        signum, frame, previous = self.signum, self._frame, dict(self._previous)
        self.restore()
        self.signum = None
        if signum is None:
            return
        handler = previous.get(signum, signal.SIG_DFL)
        if callable(handler):
            handler(signum, frame)  # e.g. submitit: requeue this job, then exit
        elif handler == signal.SIG_DFL:
            name = signal.Signals(signum).name
            during = f" during {self.immediate}" if self.immediate else ""
            raise Preempted(f"stopped by {name}{during} after saving last.pt; run the same command again to resume")
        # SIG_IGN: the signal was being ignored before; keep training

    def __exit__(self, *exc) -> None:
        self.restore()
