"""Run dirs: one run of a config in one folder, from start to ``summary.json``.

:func:`train` is the entry point of ``run.py`` and of every sweep job. It takes the dir's lock
(:mod:`agf_exp.runlock`), returns the summary of a finished run of the same config without
training (so a re-run sweep skips finished runs), continues a finished run asked for a longer
budget (``trainer.max_epochs/max_steps/max_minutes``) from ``last.pt``, and refuses a finished run
of any other config rather than overwriting it (:func:`completed_summary`). Otherwise it trains
(or resumes) with the :class:`~agf_exp.training.Trainer`, then decodes, draws and writes
``summary.json``.

Run-dir layout (``hydra.run.dir``, or the ``run_dir`` argument)::

    config.yaml            resolved config
    metrics.jsonl          one JSON line per evaluation
    summary.json           final metrics, BLEU/chrF with signatures, best epoch, parameters, timing,
                           device, versions, git commit ("status": "complete" once done)
    checkpoints/last.pt    full state (model, optimizer, scaler, step, epoch position, RNG states)
    checkpoints/best.pt    weights of the best evaluation by ``trainer.best_metric``
    hyps/<split>.<strategy>.txt   detokenised translations
    hyps/<split>.ref.txt          the references they are scored against (for paired bootstrap)
    curves.png             learning curves of metrics.jsonl (also logged to W&B)
    fields/*.png           the learned positional fields (modes with a field)
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
from omegaconf import DictConfig, OmegaConf

from . import checkpoint
from .analysis.curves import plot_run_curves
from .analysis.fields import draw, fields
from .atomic import atomic_write_bytes
from .config import ConfigError, config_diff, decode_config, to_container, validate
from .distributed import Dist
from .distributed import init as init_distributed
from .evaluation import score_translations, translate
from .loggers import NullLogger, build_logger, log_length_metrics, summary_metrics
from .preemption import PreemptionGuard
from .runfiles import RunFileError, read_config, read_json
from .runlock import RunDirLock, RunDirLocked
from .training import Trainer

log = logging.getLogger(__name__)


def git_commit() -> Optional[str]:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("-dirty" if dirty else "")) or None


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf: not JSON) as None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def write_json(path: Path, obj: Any) -> None:
    """``obj`` as strict JSON (a non-finite float becomes null), written atomically."""
    text = json.dumps(json_safe(obj), indent=2, sort_keys=True, allow_nan=False)
    atomic_write_bytes(path, (text + "\n").encode())


# keys that do not change what a run computes: a finished run is still "the same run" without them
# (data.cache_dir holds only what is derived from the data and the config: a run dir moved to
# another machine, or read with another AGF_CACHE_DIR, is still the same run)
# (run_name names the run's folder and W&B run: a run dir started when the default name was the mode
# alone, before it named the row or toggles too, is the same run)
_RESULT_NEUTRAL = ("logger", "trainer.progress", "trainer.log_every_steps", "trainer.num_threads", "table",
                   "trainer.dist_timeout_minutes", "trainer.dist_wait_minutes", "trainer.lock_run_dir",
                   "data.cache_dir", "run_name")


# a finished run asked for a longer budget continues from last.pt instead of being refused
_BUDGET = ("trainer.max_epochs", "trainer.max_steps", "trainer.max_minutes")


def _without(config: Dict[str, Any], dotted_keys) -> Dict[str, Any]:
    out = json.loads(json.dumps(config))
    for dotted in dotted_keys:
        *parents, last = dotted.split(".")
        node = out
        for key in parents:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return out


def _added_at_default(done: Dict[str, Any], cfg: DictConfig, prefix: str = "") -> List[str]:
    """Dotted keys that ``cfg`` has and the finished run's config ``done`` lacks, whose value is
    their schema's default: options added to the code after the run finished, which do not
    change what it computed (so the run still counts as complete)."""
    import dataclasses

    out: List[str] = []
    schema = OmegaConf.get_type(cfg)
    defaults = {}
    if dataclasses.is_dataclass(schema):
        for f in dataclasses.fields(schema):
            if f.default is not dataclasses.MISSING:
                defaults[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                defaults[f.name] = f.default_factory()
    for key in cfg:
        node = cfg._get_node(key)
        if key not in done:
            if key in defaults and not isinstance(node, DictConfig):
                value = to_container(OmegaConf.create({"v": cfg[key]}))["v"]
                default = getattr(defaults[key], "value", defaults[key])
                if value == default:
                    out.append(f"{prefix}{key}")
        elif isinstance(node, DictConfig) and isinstance(done[key], dict):
            out += _added_at_default(done[key], node, f"{prefix}{key}.")
    return out


def _same_subwords(cfg: DictConfig, run_dir: Path, summary: Dict[str, Any]) -> tuple:
    """("data.subword_file",) when ``cfg`` names a subword model file with exactly the model the
    finished run in ``run_dir`` used (its summary's hash, else its last.pt's model): naming the
    model it trained does not change the run."""
    given = cfg.data.get("subword_file")
    if not given or not Path(given).expanduser().is_file():
        return ()
    data = Path(given).expanduser().read_bytes()
    recorded = (summary.get("tokenizer") or {}).get("sha256")
    if recorded is None and (run_dir / "checkpoints" / "last.pt").is_file():
        proto = checkpoint.load(run_dir / "checkpoints" / "last.pt", map_location="cpu").get("tokenizer")
        recorded = hashlib.sha256(proto).hexdigest() if proto else None
    return ("data.subword_file",) if recorded == hashlib.sha256(data).hexdigest() else ()


def completed_summary(cfg: DictConfig, run_dir: Path) -> Optional[Dict[str, Any]]:
    """The summary of a finished run of this config in ``run_dir``, or None if it must (re)train.
    Raises :class:`ConfigError` when ``run_dir`` holds a finished run of a different config."""
    summary_path, config_path = run_dir / "summary.json", run_dir / "config.yaml"
    if not (summary_path.is_file() and config_path.is_file()):
        return None
    try:
        summary = read_json(summary_path)
    except RunFileError as e:  # cut short or garbled: the run is finished again from last.pt
        log.warning("%s; the run's summary is written again", e)
        return None
    if summary.get("status") != "complete":
        return None
    try:
        done = read_config(config_path)
    except RunFileError as e:
        raise ConfigError(f"{e}; it is the config of the finished run in {run_dir}, so this start cannot tell "
                          "whether it asks for the same run: restore the file, or move the run dir away") from None
    neutral = _RESULT_NEUTRAL + tuple(_added_at_default(done, cfg)) + _same_subwords(cfg, run_dir, summary)
    changed = config_diff(_without(done, neutral), _without(to_container(cfg), neutral))
    if changed and not config_diff(_without(done, neutral + _BUDGET), _without(to_container(cfg), neutral + _BUDGET)):
        log.info("%s is complete but its budget changed (%s): continuing from last.pt", run_dir, "; ".join(changed))
        return None
    if changed:
        raise ConfigError(f"{run_dir} holds a finished run of a different config ({'; '.join(changed[:5])}); "
                          "move or delete it to retrain, or choose another run dir "
                          "(hydra.run.dir=... / hydra.sweep.dir=...)")
    last = run_dir / "checkpoints" / "last.pt"
    if last.is_file():  # the summary must be of the training last.pt holds (not of an earlier budget)
        step = checkpoint.load(last, map_location="cpu").get("state", {}).get("step")
        if step != summary.get("steps"):
            log.warning("%s: summary.json is of step %s but last.pt of step %s: finishing the run from last.pt",
                        run_dir, summary.get("steps"), step)
            return None
    return summary


def supersede_summary(run_dir: Path, config: Dict[str, Any]) -> None:
    """Before a finished run is trained further (a longer budget), its summary.json is marked
    superseded (atomically, before config.yaml changes), so an interrupted extension is never
    read as complete: not by a rerun, which resumes it, nor by the report."""
    path = run_dir / "summary.json"
    try:
        old = read_json(path) if path.is_file() else None
    except RunFileError:
        old = None
    if old is None or old.get("status") != "complete":
        return
    budget = {key: OmegaConf.select(OmegaConf.create(config), key) for key in _BUDGET}
    write_json(path, {"status": "superseded", "reason": "the run is being trained further", "new_budget": budget,
                      "previous": old})


def train(cfg: DictConfig, run_dir: str | Path, on_start: Optional[Callable[[Path], None]] = None) -> Dict[str, Any]:
    """Train (or resume) one run in ``run_dir`` and return its summary. A run dir that already
    holds the finished run of this config is not trained again: its summary is returned.

    The run holds ``run_dir``'s lock (:mod:`agf_exp.runlock`) throughout; a start refused before
    training begins (the dir in use, a finished run of another config, bad data) raises and
    leaves the dir as it was. ``on_start(run_dir)`` is called (on rank 0) once the start is
    accepted, before the first update: ``run.py`` writes Hydra's files and the log there.

    Under ``torchrun`` every rank calls this; they train together on rank 0's run dir and all
    return rank 0's summary (see :mod:`agf_exp.distributed`)."""
    validate(cfg)
    dist = init_distributed(str(getattr(cfg.trainer.device, "value", cfg.trainer.device)),
                            cfg.trainer.dist_timeout_minutes, cfg.trainer.dist_wait_minutes)
    try:
        summary = _locked_train(cfg, Path(dist.broadcast(str(run_dir))), dist, on_start)
        # every rank past its last collective before any tears its gloo group down (once, under
        # a loaded CPU, rank 0 aborted with "terminate called without an active exception" there)
        dist.barrier()
        return summary
    finally:
        dist.close()


def _locked_train(cfg: DictConfig, run_dir: Path, dist: Dist, on_start) -> Dict[str, Any]:
    """:func:`_train` holding the run dir's lock (rank 0; every rank learns of a refusal)."""
    lock = RunDirLock(run_dir) if dist.main and cfg.trainer.lock_run_dir else None
    refusal = None
    if lock is not None:
        try:
            lock.acquire()
        except RunDirLocked as e:
            refusal = str(e)
    refusal = dist.broadcast(refusal)
    if refusal:
        raise RunDirLocked(refusal)
    started = False

    def start() -> None:
        nonlocal started
        started = True
        if on_start is not None and dist.main:
            on_start(run_dir)

    try:
        return _train(cfg, run_dir, dist, start)
    finally:
        if lock is not None:
            lock.release(started=started)


def _train(cfg: DictConfig, run_dir: Path, dist: Dist, start: Callable[[], Any]) -> Dict[str, Any]:
    done = completed_summary(cfg, run_dir)
    if done is not None:
        log.info("%s is complete (summary.json); skipping. Delete it to train again.", run_dir)
        return done
    # a signal while the data is loaded: nothing to save, stop at once (the lock restores the dir)
    with PreemptionGuard(immediate="data loading and set-up", after="nothing was trained; run the same command again"):
        trainer = Trainer(cfg, run_dir, dist)
        trainer.try_resume()
    if dist.main:
        supersede_summary(run_dir, trainer.config)
    trainer.record_start()
    start()
    params = trainer.model.num_parameters()
    log.info("model: %d parameters (%d positional); device %s, precision %s%s%s", params["total"],
             params["positional"], trainer.device, trainer.precision_reason,
             "; output projection + loss fused (bf16, chunked)" if trainer.fused_loss else "",
             f"; rank {dist.rank} of {dist.world}" if dist.active else "")
    # the logger exists only once the start is accepted (W&B writes into the run dir); rank 0 logs
    logger = NullLogger()
    if dist.main:
        logger = build_logger(cfg.logger, trainer.config, run_dir, run_id=trainer.state.wandb_id)
        trainer.state.wandb_id = logger.run_id
    try:
        trainer.fit(logger)
        summary = _finish(cfg, trainer, params, logger) if dist.main else None
        dist.wait_for_main()  # the other ranks wait while rank 0 decodes (beam search can be long)
        return dist.broadcast(summary)
    finally:
        logger.finish()


def _finish(cfg: DictConfig, trainer: Trainer, params: Dict[str, int], logger) -> Dict[str, Any]:
    """Rank 0, after training: decode, draw, write summary.json and the W&B summary."""
    run_dir, step = trainer.run_dir, trainer.state.step
    with PreemptionGuard(immediate="the final decoding",  # a rerun resumes at the end and decodes
                         after="last.pt holds the finished training: run the same command again to decode"):
        lines: Dict[str, List[str]] = {}
        decoded = final_decode(trainer, lines)
    draw_fields(trainer.model, run_dir, str(cfg.pos.name), logger, step)
    draw_curves(run_dir, logger, step)
    last = trainer.records[-1] if trainer.records else {}
    summary = _summary(cfg, trainer, params, last, decoded)
    write_json(run_dir / "summary.json", summary)
    logger.summary(summary_metrics(summary, trainer.config))
    log_length_metrics(logger, trainer.config, summary, lines, step)
    logger.save_files([run_dir / "summary.json", run_dir / "config.yaml", run_dir / "metrics.jsonl",
                       *sorted((run_dir / "hyps").glob("*.txt"))])
    tokenizer = trainer.data.tokenizer
    logger.log_artifacts(tokenizer=getattr(tokenizer, "model_proto", None))
    return summary


def _summary(cfg: DictConfig, trainer: Trainer, params: Dict[str, int], last: Dict[str, Any],
             decoded: Dict[str, Any]) -> Dict[str, Any]:
    """``summary.json``: what the run is, what it reached, and where and how it ran."""
    st = trainer.state
    return {
        "status": "complete",
        "run_name": str(cfg.run_name),
        "experiment": str(cfg.experiment), "row": cfg.row, "table": cfg.table,
        "pos": cfg.pos.name, "pcmv": bool(cfg.pcmv), "sco": bool(cfg.sco), "pe": bool(cfg.pe),
        "seed": cfg.seed,
        "data": trainer.data.description,
        "final": last,
        "best": {"metric": trainer.tcfg.best_metric, "value": st.best_value, "epoch": st.best_epoch,
                 "step": st.best_step},
        "decoding": decoded, "decode_checkpoint": trainer.tcfg.decode_checkpoint,
        "parameters": params,
        "epochs": st.epoch, "steps": st.step, "resumed_at": list(st.resumed_at),
        "train_seconds": st.train_seconds,
        "train_tokens_per_s": st.train_tokens / st.train_seconds if st.train_seconds else None,
        "wall_seconds": trainer.wall_seconds(),
        "device": str(trainer.device) + (f" ({torch.cuda.get_device_name()})" if trainer.device.type == "cuda" else ""),
        "world_size": trainer.dist.world,
        "autocast": str(trainer.amp_dtype),
        "precision": trainer.precision_record(),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "git_commit": git_commit(),
        "argv": sys.argv,
        "wandb_id": st.wandb_id,
        "vocab_size": trainer.data.tokenizer.vocab_size,
        "tokenizer": trainer.data.tokenizer.identity(),
        "train_pairs": len(trainer.data.examples["train"]),
        "train_pairs_dropped": trainer.data.dropped_train,
    }


def final_decode(trainer: Trainer, lines: Optional[Dict[str, List[str]]] = None) -> Dict[str, Any]:
    """Translate ``trainer.decode_splits`` with the best checkpoint's weights (or, with
    ``trainer.decode_checkpoint=last``, the weights at the end of training) by every strategy of
    ``trainer.decode_strategies``; the translations, their sources and references go to ``hyps/``
    (and into ``lines`` when given, as ``<split>.<strategy>`` / ``<split>.ref``: what the length
    study's W&B curves read, without reading the files back). Returns the scores per ``<split>/<strategy>``."""
    t = trainer.tcfg
    best = trainer.ckpt_dir / "best.pt"
    if t.decode_checkpoint == "best" and best.is_file():
        trainer.model.load_state_dict(checkpoint.load(best, map_location="cpu")["model"])
    results: Dict[str, Any] = {}
    hyp_dir = trainer.run_dir / "hyps"
    for split in t.decode_splits:
        sources = [s for s, _ in trainer.data.examples[split]]
        src_text, refs = trainer.data.raw[split]
        if t.max_decode_sentences:
            sources, refs = sources[: t.max_decode_sentences], refs[: t.max_decode_sentences]
            src_text = src_text[: t.max_decode_sentences]
        # the source text beside the references: reports that need source lengths read the run alone
        atomic_write_bytes(hyp_dir / f"{split}.src.txt", ("\n".join(src_text) + "\n").encode())
        for strategy in t.decode_strategies:
            start = time.perf_counter()
            hyps = translate(trainer.model, trainer.data.tokenizer, sources, decode_config(t, strategy),
                             trainer.device, trainer.amp_dtype)
            atomic_write_bytes(hyp_dir / f"{split}.{strategy}.txt", ("\n".join(hyps) + "\n").encode())
            atomic_write_bytes(hyp_dir / f"{split}.ref.txt", ("\n".join(refs) + "\n").encode())
            if lines is not None:
                lines[f"{split}.{strategy}"], lines[f"{split}.ref"] = list(hyps), list(refs)
            scores = score_translations(hyps, refs)
            scores["seconds"] = time.perf_counter() - start
            results[f"{split}/{strategy}"] = scores
            log.info("%s %s: BLEU %.2f chrF %.2f (%s)", split, strategy, scores["bleu"], scores["chrf"],
                     scores["bleu_signature"])
    return results


def draw_fields(model, run_dir: Path, pos_name: str, logger, step: int) -> None:
    """PNGs of the learned positional fields of the decoded (best) model in ``<run dir>/fields``,
    also logged to W&B. A plotting failure is logged, never fatal: the run is already complete."""
    field_list = fields(model)
    if not field_list:
        return
    try:
        written = draw(field_list, run_dir / "fields", title=f"pos={pos_name}")
    except Exception as e:  # e.g. no matplotlib backend: the run's results are already saved
        log.warning("could not draw the positional fields: %s", e)
        return
    log.info("positional fields drawn in %s", run_dir / "fields")
    # keyed by file name (fields/overview, fields/encoder_0_self_attn, ...), as an exported run dir is
    logger.log_images({f"fields/{path.stem}": path for path in written.values()}, step=step)


def draw_curves(run_dir: Path, logger, step: int) -> None:
    """``<run dir>/curves.png``: validation accuracy and losses per epoch, also logged to W&B."""
    try:
        path = plot_run_curves(run_dir)
    except Exception as e:  # never fatal: the run's results are already saved
        log.warning("could not draw the learning curves: %s", e)
        return
    if path is not None:
        logger.log_images({"curves/learning_curves": path}, step=step)
