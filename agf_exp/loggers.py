"""Experiment loggers (``logger=none`` / ``logger=wandb``).

The W&B logger starts one run per training run with the resolved config, logs per-step and
per-evaluation metrics and the final summary, and always calls ``wandb.finish()`` (the run-dir
layer closes it in a ``finally``). Without an API key it runs offline (``wandb sync`` uploads later).
Its run id is stored in checkpoints so that a resumed run continues the same W&B run.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

from .config import row_of
from .data.lengthgen import RANGES, TRAIN_MAX, exact_match, target_length
from .tables import PAPER_ROWS

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

    def log_artifacts(self, tokenizer: Optional[bytes] = None) -> None:
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


#: evaluation keys the trainer logs (metrics.jsonl's, prefixed) and the summary W&B keeps of each
EVAL_KEYS = ("eval/val_acc", "eval/val_loss", "eval/val_nll", "eval/val_ppl", "eval/train_loss", "eval/lr",
             "eval/tokens_per_s", "eval/epoch_fraction")
EVAL_SUMMARY = {"eval/val_acc": "max", "eval/val_loss": "min", "eval/val_nll": "min", "eval/val_ppl": "min"}


def wandb_identity(config: Dict[str, Any], group: Optional[str] = None, name: Optional[str] = None) -> Dict[str, str]:
    """Where a run sits in W&B, from what it is: group ``<experiment>/<data>/<variant>`` (the seeds of
    one configuration at one scale on one task), name ``<variant> seed<N>``, job type ``train``.
    The variant is ``run_name``: the paper row or study arm, else mode + toggles (``agf_m+sco``,
    :func:`agf_exp.config.variant_name`). ``logger.group`` / ``logger.job_name`` win when set."""
    variant = str(config.get("run_name") or (config.get("pos") or {}).get("name"))
    data = (config.get("data") or {}).get("name", "data")
    return {"group": group or f"{config.get('experiment')}/{data}/{variant}",
            "name": name or f"{variant} seed{config.get('seed')}", "job_type": "train"}


def wandb_config(config: Dict[str, Any]) -> Dict[str, Any]:
    """The config a W&B run carries: the resolved run config, with ``row`` filled in from the mode
    and toggles when the run was started without ``row=`` (so views and reports that filter on
    ``row`` find hand-started runs; the same rule as the report's, :func:`agf_exp.config.row_of`)."""
    return {**config, "row": row_of(config)}


def summary_metrics(summary: Dict[str, Any], config: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The W&B summary of a finished run, from its ``summary.json``: ``final/*`` (the last
    evaluation), ``best/*`` (the best evaluation by ``trainer.best_metric`` and its epoch),
    ``<split>/<strategy>/{bleu,chrf,...}`` (the final decoding) with ``decoded_from`` naming the
    checkpoint those scores come from, the parameter counts, and ``paper/val_acc``, the paper's
    value of the run's row (from ``config``; the dashboards' bars draw it beside ours). A live run
    and an exported run dir (:mod:`agf_exp.wandb_export`) get exactly these keys."""
    def part(key: str) -> Dict[str, Any]:  # a foreign or damaged summary.json: what is not a mapping is left out
        value = summary.get(key)
        return value if isinstance(value, dict) else {}

    final = part("final")
    out: Dict[str, Any] = {f"final/{k}": v for k, v in final.items() if isinstance(v, (int, float))
                           and not isinstance(v, bool)}
    best = part("best")
    if best.get("value") is not None:
        out.update({f"best/{best.get('metric')}": best["value"], "best/epoch": best.get("epoch"),
                    "best/step": best.get("step")})
    which = summary.get("decode_checkpoint", "best")
    if part("decoding"):
        epoch = best.get("epoch") if which == "best" else summary.get("epochs")
        out["decoded_from"] = f"{which}.pt (epoch {epoch})"
    for key, scores in part("decoding").items():
        for name in ("bleu", "chrf", "bleu_lc", "bleu_signature", "chrf_signature"):
            if isinstance(scores, dict) and name in scores:
                out[f"{key}/{name}"] = scores[name]
    row = row_of(config) if config is not None else None
    if row in PAPER_ROWS:
        out["paper/val_acc"] = PAPER_ROWS[row][1]
    params = part("parameters")
    if "total" in params:
        out["parameters"], out["positional_parameters"] = params["total"], params.get("positional")
    return out


#: the length study's curves (docs/lengthgen.md): exact match of the test split against the target
#: length (synthetic tasks), BLEU / chrF against k, the number of test sentences joined into one
#: input (MT); each curve has its own x, logged as history rows after the last training step
LENGTH_X, JOIN_X = "lengthgen/length", "lengthgen/k"
LENGTH_CURVES = {"lengthgen/test_em": LENGTH_X, "lengthgen/test_examples": LENGTH_X,
                 "lengthgen/join_bleu": JOIN_X, "lengthgen/join_chrf": JOIN_X}
_JOINED = re.compile(r"test_join(\d+)/(beam|greedy)")


def length_metrics(config: Dict[str, Any], summary: Dict[str, Any],
                   files: Mapping[str, Optional[Sequence[str]]]) -> Tuple[List[Dict[str, Any]], Dict[str, Any]]:
    """The length study's W&B rows and summary of one run, from its final decoding: ``(rows,
    summary)``. A synthetic task of :data:`agf_exp.data.lengthgen.RANGES` (``files``: its
    ``test.greedy`` (else ``test.beam``) and ``test.ref`` lines) gets one row per target length
    (``lengthgen/length``, ``lengthgen/test_em`` in %, ``lengthgen/test_examples``) and the exact match
    per range of the report (``lengthgen/test_em/<range>``, e.g. ``1_2x``) with ``lengthgen/train_max``;
    a run that decoded ``test_join<k>`` splits gets one row per k (k = 1: the test split) with BLEU
    and chrF (beam, else greedy). Other runs: nothing. Live runs and exported run dirs both log these."""
    rows: List[Dict[str, Any]] = []
    out: Dict[str, Any] = {}
    task = str((config.get("data") or {}).get("name"))
    hyps = files.get("test.greedy") or files.get("test.beam")
    refs = files.get("test.ref")
    if task in RANGES and hyps and refs and len(hyps) == len(refs):
        by_length: Dict[int, List[bool]] = {}
        for hyp, ref in zip(hyps, refs):
            by_length.setdefault(target_length(ref), []).append(exact_match(hyp, ref))
        for length in sorted(by_length):
            ok = by_length[length]
            rows.append({LENGTH_X: length, "lengthgen/test_em": 100.0 * sum(ok) / len(ok),
                         "lengthgen/test_examples": len(ok)})
        for rg in RANGES[task]:
            ok = [x for length, xs in by_length.items() if rg.low <= length <= rg.high for x in xs]
            if ok:
                out[f"lengthgen/test_em/{rg.key}"] = 100.0 * sum(ok) / len(ok)
        out["lengthgen/train_max"] = TRAIN_MAX[task]
    decoding = summary.get("decoding") if isinstance(summary.get("decoding"), dict) else {}
    joins = sorted({int(m.group(1)) for key in decoding for m in [_JOINED.fullmatch(key)] if m})
    strategy = "beam" if "test/beam" in decoding else "greedy"
    for k in [1, *joins] if joins else []:
        scores = decoding.get(f"test/{strategy}" if k == 1 else f"test_join{k}/{strategy}")
        if isinstance(scores, dict) and "bleu" in scores and "chrf" in scores:
            rows.append({JOIN_X: k, "lengthgen/join_bleu": scores["bleu"], "lengthgen/join_chrf": scores["chrf"]})
    return rows, out


def log_length_metrics(logger, config: Dict[str, Any], summary: Dict[str, Any],
                       files: Mapping[str, Optional[Sequence[str]]], step: int) -> None:
    """:func:`length_metrics` into ``logger``: the rows at the steps after ``step`` (the last
    training step), one each, then the summary values."""
    rows, values = length_metrics(config, summary, files)
    for i, row in enumerate(rows):
        logger.log(row, step=step + 1 + i)
    if values:
        logger.summary(values)


def eval_metrics(record: Dict[str, Any]) -> Dict[str, Any]:
    """One evaluation (a metrics.jsonl record) as the W&B history row the trainer logs."""
    return {f"eval/{k}": v for k, v in record.items() if v is not None}


def _has_api_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return "api.wandb.ai" in netrc.read_text()
    except OSError:
        return False


class WandbLogger:
    """One W&B run (see :func:`wandb_identity`): metrics defined against the step with summaries
    (max validation accuracy, min losses), evaluations, images, the run files the report reads
    (copied into the W&B run's files folder, uploaded at the end), and artifacts: the translations,
    the subword model (when the run has one) and, with ``logger.checkpoints=true``, the checkpoints."""

    def __init__(self, cfg, config: Dict[str, Any], run_dir: Path, run_id: Optional[str] = None,
                 wandb_dir: Optional[Path] = None):
        import wandb

        mode = os.environ.get("WANDB_MODE") or cfg.mode.value
        if mode == "auto":
            mode = "online" if _has_api_key() else "offline"
        self.wandb = wandb
        self.run_dir = Path(run_dir)
        self.checkpoints = bool(getattr(cfg, "checkpoints", False))
        ident = wandb_identity(config, cfg.group, cfg.job_name)
        self.run = wandb.init(
            project=cfg.project, entity=cfg.entity, group=ident["group"], name=ident["name"],
            job_type=ident["job_type"], tags=list(cfg.tags) + auto_tags(config), config=wandb_config(config),
            dir=str(wandb_dir or run_dir), mode=mode, id=run_id, resume="allow", reinit="finish_previous",
        )
        self.run_id = self.run.id if self.run is not None else None
        if self.run is not None and mode != "disabled":
            # evaluations against the epoch (the step stays the x of every history row); the summary
            # of validation accuracy is its maximum, of the losses their minimum
            self.run.define_metric("eval/epoch", hidden=True)
            for key in EVAL_KEYS:
                self.run.define_metric(key, step_metric="eval/epoch", summary=EVAL_SUMMARY.get(key, "last"))
            # the length study's curves against their own x (no summary: the ranges are summarised)
            for x in (LENGTH_X, JOIN_X):
                self.run.define_metric(x, hidden=True)
            for key, x in LENGTH_CURVES.items():
                self.run.define_metric(key, step_metric=x, summary="none")
        if mode == "offline":
            log.info("W&B is offline; upload later with `wandb sync %s/wandb/offline-run-*`", wandb_dir or run_dir)

    def log(self, metrics: Dict[str, Any], step: int) -> None:
        self.run.log(metrics, step=step)

    def summary(self, values: Dict[str, Any]) -> None:
        for key, value in values.items():
            self.run.summary[key] = value

    def log_images(self, images: Dict[str, Path], step: int) -> None:
        self.run.log({key: self.wandb.Image(str(path)) for key, path in images.items()}, step=step)

    def save_files(self, paths) -> None:
        """Attach run-dir files (summary.json, translations) to the W&B run, so that
        ``python -m agf_exp.report --wandb`` can run the paired bootstrap from W&B alone. They are
        copied into the W&B run's files folder (uploaded at the end of the run, or by ``wandb
        sync``), not symlinked one by one with a warning each."""
        import shutil

        files = Path(self.run.dir)
        for path in map(Path, paths):
            target = files / path.relative_to(self.run_dir)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            # already in the files folder: wandb publishes it as it is (no link, no warning)
            self.run.save(str(target), base_path=str(files), policy="now")

    def log_artifacts(self, tokenizer: Optional[bytes] = None) -> None:
        """The run's artifacts: ``translations`` (hyps/*.txt), ``tokenizer`` (the sentencepiece
        model, one artifact per model: runs sharing it share the artifact) and, when asked,
        ``model`` (checkpoints/*.pt)."""
        hyps = sorted((self.run_dir / "hyps").glob("*.txt"))
        if hyps:
            art = self.wandb.Artifact(f"translations-{self.run.id}", type="translations",
                                      description="hypotheses and references of the final decoding")
            for path in hyps:
                art.add_file(str(path), name=f"hyps/{path.name}")
            self.run.log_artifact(art)
        if tokenizer is not None:
            import hashlib

            sha = hashlib.sha256(tokenizer).hexdigest()
            art = self.wandb.Artifact(f"tokenizer-{sha[:12]}", type="tokenizer",
                                      description="sentencepiece model (sha256 " + sha + ")")
            with art.new_file("subword.model", mode="wb") as f:
                f.write(tokenizer)
            self.run.log_artifact(art)
        checkpoints = sorted((self.run_dir / "checkpoints").glob("*.pt")) if self.checkpoints else []
        if checkpoints:
            art = self.wandb.Artifact(f"model-{self.run.id}", type="model", description="best.pt and last.pt")
            for path in checkpoints:
                art.add_file(str(path), name=path.name)
            self.run.log_artifact(art)

    def finish(self) -> None:
        self.run.finish()


def build_logger(cfg, config: Dict[str, Any], run_dir: Path, run_id: Optional[str] = None,
                 wandb_dir: Optional[Path] = None):
    if cfg.name == "none":
        return NullLogger()
    if cfg.name == "wandb":
        return WandbLogger(cfg, config, run_dir, run_id, wandb_dir)
    raise ValueError(f"unknown logger {cfg.name!r}; use logger=none or logger=wandb")


def read_offline_run(wandb_file: Path) -> Dict[str, Any]:
    """Read back what a W&B run logged, from its ``run-<id>.wandb`` file (an offline run, or a run
    not yet synced), decoding each record with wandb's own protobuf schema (``wandb.proto``).

    Returns ``{"run": {id, group, name, job_type, tags, project}, "config": {...}, "history": [rows],
    "summary": {...}, "metrics": {name: {step_metric, summary}} (``define_metric``), "artifacts":
    [{name, type, files}], "files": [paths], "complete": bool}``; ``complete`` is whether the run's exit record is in the
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

    out: Dict[str, Any] = {"run": {}, "config": {}, "history": [], "summary": {}, "metrics": {}, "artifacts": [],
                           "files": [], "complete": False}
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
            out["run"] = {"id": r.run_id, "group": r.run_group, "name": r.display_name, "job_type": r.job_type,
                          "tags": list(r.tags), "project": r.project}
            out["config"].update({key(i): value(i) for i in r.config.update})
        elif which == "config":
            out["config"].update({key(i): value(i) for i in record.config.update})
        elif which == "history":
            out["history"].append({key(i): value(i) for i in record.history.item})
        elif which == "summary":
            out["summary"].update({key(i): value(i) for i in record.summary.update})
        elif which == "metric":
            m = record.metric
            summary = [f.name for f in m.summary.DESCRIPTOR.fields if getattr(m.summary, f.name)]
            out["metrics"][m.name or m.glob_name] = {"step_metric": m.step_metric, "summary": summary}
        elif which == "artifact":
            a = record.artifact
            out["artifacts"].append({"name": a.name, "type": a.type, "files": [e.path for e in a.manifest.contents]})
        elif which == "files":
            out["files"] += [f.path for f in record.files.files]
        elif which == "exit":
            out["complete"] = True
    out["config"].pop("_wandb", None)
    return out
