"""Finished run dirs into W&B runs: ``python -m agf_exp.wandb_export RUNS_DIR``.

    python -m agf_exp.wandb_export results/multi30k-small                       # offline, then `wandb sync`
    python -m agf_exp.wandb_export results/multi30k-small --project my-team/agf-exp --mode online
    python -m agf_exp.wandb_export outputs/sweeps --dir outputs/wandb_export/sweeps

Each complete run dir below RUNS_DIR (a ``summary.json`` with ``status: complete``) becomes one W&B
run with what a run trained with ``logger=wandb`` logs (:mod:`agf_exp.loggers`, the same code): its
config (``row`` filled in from mode and toggles), group / name / job type from what it is, the
metric definitions, one history row per evaluation of ``metrics.jsonl`` at its step (``eval/*``,
and ``train/loss``, ``train/lr``, ``train/tokens_per_s`` from the epoch's record: one training
point per evaluation, where a live run logs one every ``trainer.log_every_steps``), the learning
curves image, the learned-field images when the run dir has them (``fields/*.png``; committed
results have no checkpoints to draw them from), the summary, the run files the report reads and
the translations and subword-model artifacts. A ``REPORT.md`` at the top of RUNS_DIR becomes one
more run (job type ``report``) with a ``report`` artifact: the report and the files it generated.

Offline by default (W&B's files go under ``--dir``; upload with the ``wandb sync`` line printed at
the end). Idempotent: each run's W&B id is derived from the project and the run's files, and
``<dir>/exported.json`` records what was exported to which project, so running the command again
exports only the runs not yet there (``--force`` logs them again under the same ids). Runs whose
``summary.json`` has a ``wandb_id`` were logged live and are skipped (``--force`` exports them too,
under a new id). RUNS_DIR itself is never written to.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .analysis.curves import plot_run_curves
from .atomic import atomic_write_bytes
from .config import LoggerConfig, WandbMode
from .loggers import build_logger, eval_metrics, log_length_metrics, summary_metrics
from .results.runs import Run, collect_runs
from .runfiles import RunFileError

INDEX = "exported.json"
TRAIN_KEYS = {"train_loss": "train/loss", "lr": "train/lr", "tokens_per_s": "train/tokens_per_s"}


class ExportError(ValueError):
    """The export cannot start; the message names the problem and the fix."""


def _project(text: str) -> tuple:
    parts = text.strip("/").split("/")
    if len(parts) == 1 and parts[0]:
        return None, parts[0]
    if len(parts) == 2 and all(parts):
        return parts[0], parts[1]
    raise ExportError(f"--project {text!r} is neither PROJECT nor ENTITY/PROJECT (e.g. my-team/agf-exp)")


def run_id(project: str, rel: str, files: Sequence[bytes]) -> str:
    """A W&B run id fixed by the project, the run's place below RUNS_DIR and its files' bytes."""
    digest = hashlib.sha256(f"{project}\0{rel}\0".encode())
    for data in files:
        digest.update(hashlib.sha256(data).digest())
    return "x" + digest.hexdigest()[:15]


def _tokenizer(root: Path, config: Dict[str, Any], summary: Dict[str, Any],
               explicit: Optional[Path]) -> Optional[bytes]:
    """The subword model of a run: ``--tokenizer``, else the file its ``data.subword_file`` names
    (looked up at RUNS_DIR's top, then at that path), else the one ``*.model`` at RUNS_DIR's top,
    else the model of the run's sha256 (``summary.json`` ``tokenizer``) in its ``data.cache_dir``;
    None when there is none, or when the run's summary names another model."""
    named = (config.get("data") or {}).get("subword_file")
    if explicit is not None:
        candidates = [Path(explicit)]
    elif named:
        candidates = [root / Path(named).name, Path(named)]
    else:
        candidates = sorted(root.glob("*.model"))[:2]
        candidates = candidates if len(candidates) == 1 else []
    want = (summary.get("tokenizer") or {}).get("sha256")
    cache = (config.get("data") or {}).get("cache_dir")
    if want and cache and Path(cache).is_dir():  # a model trained by the run: in the data cache, by its hash
        candidates += sorted(Path(cache).rglob("*.model"))
    for path in candidates:
        if path.is_file():
            data = path.read_bytes()
            if want is None or hashlib.sha256(data).hexdigest() == want:
                return data
    return None


def export_run(run: Run, root: Path, entity: Optional[str], project: str, mode: str, out: Path,
               wid: str, tokenizer: Optional[Path] = None) -> None:
    """Log one finished run (as :func:`agf_exp.results.runs.collect_runs` read it) as W&B run
    ``wid`` (W&B's files under ``out``)."""
    run_dir, config, summary, records = Path(run.path), run.config, run.summary, run.metrics
    cfg = LoggerConfig(name="wandb", project=project, entity=entity, mode=WandbMode(mode))
    out.mkdir(parents=True, exist_ok=True)
    logger = build_logger(cfg, config, run_dir, run_id=wid, wandb_dir=out)
    try:
        step = 0
        for record in records:
            step = int(record.get("step", step))
            row = {key: record[name] for name, key in TRAIN_KEYS.items() if record.get(name) is not None}
            logger.log({**row, **eval_metrics(record)}, step=step)
        step = max(step, int(summary.get("steps") or 0))
        try:
            curves = plot_run_curves(run_dir, out / "curves.png")
        except (KeyError, TypeError, ValueError):  # records without the plotted values: no image
            curves = None
        images = {"curves/learning_curves": curves} if curves is not None else {}
        images.update({f"fields/{p.stem}": p for p in sorted((run_dir / "fields").glob("*.png"))})
        if images:
            logger.log_images(images, step=step)
        logger.summary(summary_metrics(summary, config))
        log_length_metrics(logger, config, summary, run.files, step)
        logger.save_files([run_dir / "summary.json", run_dir / "config.yaml", run_dir / "metrics.jsonl",
                           *sorted((run_dir / "hyps").glob("*.txt"))])
        logger.log_artifacts(tokenizer=_tokenizer(root, config, summary, tokenizer))
    finally:
        logger.finish()


def export_report(root: Path, entity: Optional[str], project: str, mode: str, out: Path, wid: str) -> None:
    """RUNS_DIR's REPORT.md and the files it generated (tables, claims, plots) as one ``report`` run."""
    import wandb

    files = [p for p in sorted(root.iterdir()) if p.is_file() and p.suffix in (".md", ".json", ".csv", ".png")]
    files += sorted((root / "curves").glob("*.png")) if (root / "curves").is_dir() else []
    out.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=project, entity=entity, id=wid, name=f"report {root.name}", group=f"report/{root.name}",
                     job_type="report", dir=str(out), mode=mode, resume="allow", reinit="finish_previous",
                     config={"runs_dir": root.name})
    try:
        art = wandb.Artifact(f"report-{root.name}".replace(" ", "_"), type="report",
                             description=f"REPORT.md of {root.name} and the files it generated")
        for path in files:
            art.add_file(str(path), name=str(path.relative_to(root)))
        run.log_artifact(art)
    finally:
        run.finish()


def _index(path: Path) -> Dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"{path} is not readable JSON ({e}); delete it to export everything again") from None
    return data if isinstance(data, dict) else {}


def export(root: Path, project: str = "agf-exp", mode: str = "offline", out: Optional[Path] = None,
           tokenizer: Optional[Path] = None, force: bool = False, log=print) -> Dict[str, Any]:
    """Export every complete run dir below ``root``; returns ``{exported, skipped, unreadable, dir}``."""
    root = Path(root)
    if not root.is_dir():
        raise ExportError(f"{root} is not a directory; give the folder holding the run dirs (e.g. results/multi30k-small)")
    if tokenizer is not None and not Path(tokenizer).is_file():
        raise ExportError(f"--tokenizer {tokenizer} is not a file; give the sentencepiece model (e.g. unigram8000.model)")
    if mode not in ("offline", "online"):
        raise ExportError(f"--mode {mode!r}; use offline (then `wandb sync`) or online")
    try:
        import wandb  # noqa: F401
    except ImportError:
        raise ExportError("the export needs wandb, which is not installed: pip install wandb") from None
    entity, name = _project(project)
    key = f"{entity}/{name}" if entity else name
    out = Path(out) if out is not None else Path("outputs") / "wandb_export" / root.resolve().name
    unreadable: List[str] = []
    runs = [r for r in collect_runs(root, unreadable) if r.complete]
    if not runs and not unreadable:
        raise ExportError(f"no complete run dir below {root} (a run dir holds config.yaml and a complete summary.json)")
    index_path = out / INDEX
    index = _index(index_path)
    done = index.setdefault(key, {})
    result: Dict[str, Any] = {"exported": [], "skipped": [], "unreadable": unreadable, "dir": str(out)}
    for run in runs:
        run_dir, summary = Path(run.path), run.summary
        rel = run_dir.relative_to(root).as_posix()
        try:
            data = [(run_dir / n).read_bytes() for n in ("config.yaml", "summary.json", "metrics.jsonl")
                    if (run_dir / n).is_file()]
        except OSError as e:
            result["unreadable"].append(f"{run_dir}: {e}")
            continue
        wid = run_id(key, rel, data)
        if summary.get("wandb_id") and not force:
            result["skipped"].append((rel, f"logged live as {summary['wandb_id']}"))
            continue
        if done.get(rel) == wid and not force:
            result["skipped"].append((rel, f"already exported as {wid}"))
            continue
        try:
            export_run(run, root, entity, name, mode, out / rel, wid, tokenizer)
        except RunFileError as e:
            result["unreadable"].append(str(e))
            continue
        done[rel] = wid
        atomic_write_bytes(index_path, (json.dumps(index, indent=1, sort_keys=True) + "\n").encode())
        result["exported"].append((rel, wid))
        log(f"exported {rel} as {wid}")
    report = root / "REPORT.md"
    if report.is_file():
        wid = run_id(key, "REPORT.md", [report.read_bytes()])
        if done.get("REPORT.md") != wid or force:
            export_report(root, entity, name, mode, out / "_report", wid)
            done["REPORT.md"] = wid
            atomic_write_bytes(index_path, (json.dumps(index, indent=1, sort_keys=True) + "\n").encode())
            result["exported"].append(("REPORT.md", wid))
            log(f"exported REPORT.md as {wid} (job type report)")
        else:
            result["skipped"].append(("REPORT.md", f"already exported as {wid}"))
    return result


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agf_exp.wandb_export", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    parser.add_argument("runs", type=Path, metavar="RUNS_DIR", help="folder holding finished run dirs")
    parser.add_argument("--project", default="agf-exp", help="PROJECT or ENTITY/PROJECT (default agf-exp)")
    parser.add_argument("--mode", default="offline", help="offline (default; then `wandb sync`) or online")
    parser.add_argument("--dir", type=Path, help="where W&B's files go (default outputs/wandb_export/<RUNS_DIR name>)")
    parser.add_argument("--tokenizer", type=Path, help="the sentencepiece model to attach (default: the file a run's "
                                                       "data.subword_file names, looked up in RUNS_DIR)")
    parser.add_argument("--force", action="store_true", help="export again runs already exported or logged live")
    args = parser.parse_args(argv)
    try:
        result = export(args.runs, args.project, args.mode, args.dir, args.tokenizer, args.force)
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in result["unreadable"]:
        print(f"warning: left out (unreadable): {line}", file=sys.stderr)
    skipped = {}
    for _, why in result["skipped"]:
        skipped[why.split(" as ")[0]] = skipped.get(why.split(" as ")[0], 0) + 1
    print(f"{len(result['exported'])} exported, " + ", ".join(f"{n} skipped ({why})" for why, n in skipped.items())
          if skipped else f"{len(result['exported'])} exported")
    if args.mode == "offline" and result["exported"]:
        print(f"upload: find {result['dir']} -type d -name 'offline-run-*' -exec wandb sync {{}} +")
    return 0


if __name__ == "__main__":
    sys.exit(main())
