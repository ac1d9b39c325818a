"""Train one run: ``python run.py [group=option ...] [key=value ...]`` (Hydra; ``--help`` lists
the groups, ``--cfg job`` prints the composed config, ``-m`` runs a multirun sweep).

Nothing is written into the run dir until the run starts: Hydra's own files (``.hydra/``) and
``run.log`` are written once the trainer has accepted the start (the log of the start so far is
kept in memory until then), so a refused start (the dir in use, a finished run of another config,
bad input) leaves an existing run dir byte-identical and a fresh one not created at all.

A signal (Ctrl-C, SIGTERM) stops the run with one line and exit 128 + the signal: during training
after the current update and a save of last.pt (see agf_exp/preemption.py), before it at once."""
import signal
import sys


def _stop_while_importing(signum, frame):  # replaced by agf_exp.preemption.stop_now once imported
    print(f"stopped by signal {signum} while starting; nothing was written", file=sys.stderr)
    raise SystemExit(128 + signum)


signal.signal(signal.SIGINT, _stop_while_importing)
signal.signal(signal.SIGTERM, _stop_while_importing)

import logging  # noqa: E402
import logging.handlers  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import shlex  # noqa: E402
from pathlib import Path  # noqa: E402

import hydra  # noqa: E402
from hydra.core.hydra_config import HydraConfig  # noqa: E402
from hydra.types import RunMode  # noqa: E402
from omegaconf import DictConfig, OmegaConf  # noqa: E402

import agf_exp.config  # noqa: F401,E402  (registers the typed schemas before Hydra composes)
from agf_exp.atomic import atomic_write_bytes  # noqa: E402
from agf_exp.checkpoint import CheckpointError  # noqa: E402
from agf_exp.config import ConfigError  # noqa: E402
from agf_exp.data import DataError  # noqa: E402
from agf_exp.devices import DeviceError  # noqa: E402
from agf_exp.preemption import Preempted, stop_now  # noqa: E402
from agf_exp.rundir import train  # noqa: E402
from agf_exp.runfiles import RunFileError  # noqa: E402
from agf_exp.runlock import CheckRunDir, RunDirLocked, note_refused, note_skipped, remove_if_created  # noqa: E402
from agf_exp.training import TrainingError  # noqa: E402

signal.signal(signal.SIGINT, stop_now)
signal.signal(signal.SIGTERM, stop_now)

log = logging.getLogger("run")


class _StartLog:
    """Holds the run's log records in memory until the run starts, then writes them, and every
    later record, to ``<run dir>/run.log``."""

    def __init__(self) -> None:
        self.buffer = logging.handlers.MemoryHandler(capacity=1 << 30, flushLevel=logging.CRITICAL + 1)
        self.file = None
        if int(os.environ.get("RANK", "0")) == 0:  # under torchrun rank 0 alone writes run.log
            logging.getLogger().addHandler(self.buffer)

    def start(self, run_dir: Path) -> None:
        self.file = logging.FileHandler(run_dir / "run.log")
        self.file.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        self.buffer.setTarget(self.file)
        self.buffer.flush()
        logging.getLogger().removeHandler(self.buffer)
        logging.getLogger().addHandler(self.file)

    def error(self, message: str) -> None:
        """``message`` into run.log (the console has it already), when the run had started."""
        if self.file is not None:
            self.file.emit(logging.LogRecord("run", logging.ERROR, __file__, 0, message, None, None))
            self.file.flush()

    def close(self) -> None:
        root = logging.getLogger()
        for handler in (self.buffer, self.file):
            if handler is not None:
                root.removeHandler(handler)
                handler.close()


def _record_hydra_files(cfg: DictConfig, run_dir: Path) -> None:
    """What Hydra itself writes into ``.hydra/`` (switched off in conf/config.yaml, so that a
    refused start leaves the dir alone): the task config, Hydra's config, the overrides."""
    hydra_cfg = HydraConfig.instance().cfg  # the `hydra` node alone
    files = {"config.yaml": OmegaConf.to_yaml(cfg), "hydra.yaml": OmegaConf.to_yaml(hydra_cfg),
             "overrides.yaml": OmegaConf.to_yaml(hydra_cfg.hydra.overrides.task)}
    for name, text in files.items():
        atomic_write_bytes(run_dir / ".hydra" / name, text.encode())


def _fail(message: str, run_dir: Path) -> None:
    """One line on stderr; the folders this start created (Hydra makes the run dir and its parents
    first), if still empty, are removed."""
    print(message, file=sys.stderr)
    remove_if_created(run_dir, CheckRunDir.created or (run_dir if run_dir.is_dir() else None))


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    sweep = hc.mode == RunMode.MULTIRUN
    start_log = _StartLog()

    def started(path: Path) -> None:
        _record_hydra_files(cfg, path)
        start_log.start(path)

    try:
        summary = train(cfg, run_dir, on_start=started)
    except RunDirLocked as e:
        _fail(f"RunDirLocked: {e}", run_dir)
        if sweep:  # the other jobs of the sweep go on; the sweep ends saying how many were refused
            note_refused(Path(hc.sweep.dir), run_dir)
            return math.nan
        sys.exit(2)
    except Preempted as e:
        start_log.error(str(e))
        _fail(str(e), run_dir)
        sys.exit(e.code)
    except (ConfigError, DataError, DeviceError, TrainingError, CheckpointError, RunFileError) as e:
        where = f" (log: {run_dir / 'run.log'})" if start_log.file is not None else ""
        start_log.error(f"{type(e).__name__}: {e}")
        _fail(f"{type(e).__name__}: {e}{where}", run_dir)
        if sweep and isinstance(e, ConfigError) and start_log.file is None:
            # an invalid cell of a sweep (refused before it started): the other cells run, and the
            # sweep ends naming the skipped ones and exiting 2
            note_skipped(Path(hc.sweep.dir), run_dir, str(e))
            return math.nan
        sys.exit(2)
    finally:
        start_log.close()
    again = ["python", "run.py", *(shlex.quote(o) for o in hc.overrides.task if not o.startswith("hydra.run.dir=")),
             "hydra.mode=RUN", f"hydra.run.dir={shlex.quote(str(run_dir))}"]  # one run, also of a sweep's cell
    print(f"run dir: {run_dir}\n"
          f"  score:  python -m agf_exp.evaluate ckpt={run_dir / 'checkpoints' / 'best.pt'} split=test\n"
          f"  resume or extend (e.g. trainer.max_epochs=N): {' '.join(again)}")
    return summary["best"]["value"]


if __name__ == "__main__":
    if {"-sc", "--shell-completion"} & set(sys.argv[1:]):
        agf_exp.config.hide_schemas_from_completion()
    main()
