"""Stopping a run by a signal without losing it or its exactness: Ctrl-C, ``kill``, SLURM.

A cluster stops a job with a signal: SLURM sends SIGTERM on preemption or ``scancel`` (then
SIGKILL after its grace time), and submitit (``hydra/launcher=slurm``) asks for SIGUSR2 shortly
before the time limit, which its handler answers by requeueing the job and exiting. A person
presses Ctrl-C (SIGINT). While the trainer runs, :class:`PreemptionGuard` catches all three;
the trainer finishes the optimizer update in progress (so the weights, the optimizer, the
counters and every RNG state in ``last.pt`` belong to the same update, and the resumed run
reproduces the uninterrupted one), writes ``last.pt`` (atomically), and then hands the signal
on: to submitit's requeue handler, or, where the signal's action was to stop, by raising
:class:`Preempted`, whose message says how to resume and whose exit code is 128 + the signal
(130 for Ctrl-C, 143 for SIGTERM). A second Ctrl-C while the first is being acted on stops at
once (``last.pt`` keeps its previous save).

Outside training (data loading and set-up, the final decoding) nothing is left to save: the
guard is ``immediate`` and the signal stops the run at once with one line, the run dir left as
the lock found it (set-up) or with ``last.pt`` holding the finished training (decoding: the rerun
decodes). ``run.py`` prints :class:`Preempted`'s message as one line and exits with its code.
"""
from __future__ import annotations

import logging
import signal
import threading
from typing import Any, Dict, Optional

log = logging.getLogger(__name__)

SIGNALS = tuple(s for s in (getattr(signal, "SIGUSR2", None), signal.SIGTERM, signal.SIGINT) if s is not None)


class Preempted(SystemExit):
    """The run stopped on a signal. ``str(e)`` is the one line to print; ``e.code`` the exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(code)
        self.message = message

    def __str__(self) -> str:
        return self.message


def _name(signum: int) -> str:
    return "Ctrl-C (SIGINT)" if signum == signal.SIGINT else signal.Signals(signum).name


def stops(handler: Any) -> bool:
    """Whether ``handler``, a signal's action before the guard, means "stop the process"."""
    return handler in (signal.SIG_DFL, signal.default_int_handler, None) or getattr(handler, "agf_stop", False)


def stop_now(signum: int, frame: Any) -> None:
    """A signal handler for the moments no guard covers: stop with one line (``run.py`` installs it)."""
    raise Preempted(f"stopped by {_name(signum)} while starting; nothing was trained or written", 128 + signum)


stop_now.agf_stop = True  # type: ignore[attr-defined]


class PreemptionGuard:
    """Context manager: record SIGUSR2/SIGTERM/SIGINT instead of dying mid-update (main thread
    only; elsewhere it does nothing). ``immediate="<what>"``: stop as soon as a signal arrives
    (nothing is left to save while doing <what>)."""

    def __init__(self, immediate: Optional[str] = None, after: str = "after saving last.pt") -> None:
        self.immediate = immediate
        self.after = after  # how the message says what was kept
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
            self.signum, self._frame = signum, frame
            self.hand_on()
            return
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            self.restore()
            raise Preempted("Ctrl-C twice: stopped at once; last.pt keeps its previous save (run the same command "
                            "again to resume from it)", 128 + signum)
        if self.signum is None:
            log.warning("received %s: saving last.pt after the current update (Ctrl-C again stops at once)",
                        _name(signum))
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
        if stops(handler):
            if self.immediate:
                raise Preempted(f"stopped by {_name(signum)} during {self.immediate}; {self.after}", 128 + signum)
            raise Preempted(f"stopped by {_name(signum)} {self.after}; run the same command again to resume",
                            128 + signum)
        if callable(handler):
            handler(signum, frame)  # e.g. submitit: requeue this job, then exit
        # SIG_IGN: the signal was being ignored before; keep going

    def __exit__(self, *exc) -> None:
        self.restore()
