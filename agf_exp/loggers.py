"""Experiment loggers (``logger=none`` / ``logger=wandb``).

The W&B logger starts one run per training run with the resolved config, logs per-step and
per-evaluation metrics and the final summary, and always calls ``wandb.finish()`` (the trainer
closes it in a ``finally``). Without an API key it runs offline (``wandb sync`` uploads later).
Its run id is stored in checkpoints so that a resumed run continues the same W&B run.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional

log = logging.getLogger(__name__)


class NullLogger:
    run_id: Optional[str] = None

    def log(self, metrics: Dict[str, Any], step: int) -> None:
        pass

    def summary(self, values: Dict[str, Any]) -> None:
        pass

    def log_images(self, images: Dict[str, Path], step: int) -> None:
        pass

    def finish(self) -> None:
        pass


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


class WandbLogger:
    def __init__(self, cfg, config: Dict[str, Any], run_dir: Path, run_id: Optional[str] = None,
                 default_name: Optional[str] = None):
        import wandb

        mode = os.environ.get("WANDB_MODE") or cfg.mode.value
        if mode == "auto":
            mode = "online" if _has_api_key() else "offline"
        self.wandb = wandb
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, group=cfg.group, name=cfg.job_name or default_name,
            tags=list(cfg.tags), config=config, dir=str(run_dir), mode=mode, id=run_id, resume="allow",
            reinit="finish_previous",
        )
        self.run_id = self.run.id if self.run is not None else None
        if mode == "offline":
            log.info("W&B is offline; upload later with `wandb sync %s/wandb/offline-run-*`", run_dir)

    def log(self, metrics: Dict[str, Any], step: int) -> None:
        self.run.log(metrics, step=step)

    def summary(self, values: Dict[str, Any]) -> None:
        for key, value in values.items():
            self.run.summary[key] = value

    def log_images(self, images: Dict[str, Path], step: int) -> None:
        self.run.log({key: self.wandb.Image(str(path)) for key, path in images.items()}, step=step)

    def finish(self) -> None:
        self.run.finish()


def build_logger(cfg, config: Dict[str, Any], run_dir: Path, run_id: Optional[str] = None,
                 default_name: Optional[str] = None):
    if cfg.name == "none":
        return NullLogger()
    if cfg.name == "wandb":
        return WandbLogger(cfg, config, run_dir, run_id, default_name)
    raise ValueError(f"unknown logger {cfg.name!r}; use logger=none or logger=wandb")
