"""Experiment loggers (``logger=none`` / ``logger=wandb``).

The W&B logger starts one run per training run with the resolved config, logs per-step and
per-evaluation metrics and the final summary, and always calls ``wandb.finish()`` (the run-dir
layer closes it in a ``finally``). Without an API key it runs offline (``wandb sync`` uploads later).
Its run id is stored in checkpoints so that a resumed run continues the same W&B run.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict, Optional

log = logging.getLogger(__name__)


class NullLogger:
    """Logs nothing: the logger of ranks other than 0, of ``logger=none``, and the default of
    :meth:`agf_exp.training.Trainer.fit`. :class:`WandbLogger` has the same methods."""

    run_id: Optional[str] = None

    def log(self, metrics: Dict[str, Any], step: int) -> None:
        pass

    def summary(self, values: Dict[str, Any]) -> None:
        pass

    def log_images(self, images: Dict[str, Path], step: int) -> None:
        pass

    def save_files(self, paths) -> None:
        pass

    def finish(self) -> None:
        pass


def auto_tags(config: Dict[str, Any]) -> list:
    """Tags every W&B run gets from its config: mode, toggles, experiment, seed, table and row."""
    tags = [f"pos:{config['pos']['name']}"]
    tags += [name for name in ("pcmv", "sco", "pe") if config.get(name)]
    tags += [f"experiment:{config.get('experiment')}", f"seed:{config.get('seed')}"]
    tags += [f"{key}:{config[key]}" for key in ("table", "row") if config.get(key)]
    return tags


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
        self.run_dir = Path(run_dir)
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, group=cfg.group or config.get("table"),
            name=cfg.job_name or config.get("row") or default_name,
            tags=list(cfg.tags) + auto_tags(config), config=config, dir=str(run_dir), mode=mode, id=run_id,
            resume="allow", reinit="finish_previous",
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

    def save_files(self, paths) -> None:
        """Attach run-dir files (summary.json, translations) to the W&B run, so that
        ``python -m agf_exp.report --wandb`` can run the paired bootstrap from W&B alone."""
        for path in paths:
            self.run.save(str(path), base_path=str(self.run_dir), policy="now")

    def finish(self) -> None:
        self.run.finish()


def build_logger(cfg, config: Dict[str, Any], run_dir: Path, run_id: Optional[str] = None,
                 default_name: Optional[str] = None):
    if cfg.name == "none":
        return NullLogger()
    if cfg.name == "wandb":
        return WandbLogger(cfg, config, run_dir, run_id, default_name)
    raise ValueError(f"unknown logger {cfg.name!r}; use logger=none or logger=wandb")


def read_offline_run(wandb_file: Path) -> Dict[str, Any]:
    """Read back what a W&B run logged, from its ``run-<id>.wandb`` file (an offline run, or a run
    not yet synced), decoding each record with wandb's own protobuf schema (``wandb.proto``).

    Returns ``{"run": {id, group, name, tags, project}, "config": {...}, "history": [rows],
    "summary": {...}, "complete": bool}``; ``complete`` is whether the run's exit record is in the
    file (a run in progress, or one whose writer has not flushed yet, reads as incomplete, up to its
    last whole chunk). The file is wandb's LevelDB-style log: a 7-byte header (``:W&B``, magic,
    version), then 32 KiB blocks of chunks, each ``crc32c (4) | length (2, LE) | type (1)``
    (1 full, 2 first, 3 middle, 4 last).
    """
    import json as _json

    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(wandb_file).read_bytes()
    if data[:4] != b":W&B"[:len(data)]:  # a file shorter than its header is a run just starting
        raise ValueError(f"{wandb_file} is not a W&B transaction log (no ':W&B' header)")

    def value(item) -> Any:
        return _json.loads(item.value_json)

    def key(item) -> str:
        return item.key or "/".join(item.nested_key)

    out: Dict[str, Any] = {"run": {}, "config": {}, "history": [], "summary": {}, "complete": False}
    pos, block, chunks = 7, 32768, []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:  # a block's tail too short for a chunk header is zero padding
            pos += left
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        if pos + 7 + length > len(data):  # a chunk still being written
            break
        payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        chunks.append(payload)
        if kind not in (1, 4):
            continue
        record = pb.Record()
        record.ParseFromString(b"".join(chunks))
        chunks = []
        which = record.WhichOneof("record_type")
        if which == "run":
            r = record.run
            out["run"] = {"id": r.run_id, "group": r.run_group, "name": r.display_name, "tags": list(r.tags),
                          "project": r.project}
            out["config"].update({key(i): value(i) for i in r.config.update})
        elif which == "config":
            out["config"].update({key(i): value(i) for i in record.config.update})
        elif which == "history":
            out["history"].append({key(i): value(i) for i in record.history.item})
        elif which == "summary":
            out["summary"].update({key(i): value(i) for i in record.summary.update})
        elif which == "exit":
            out["complete"] = True
    out["config"].pop("_wandb", None)
    return out
