"""Reading runs: the run dirs below a folder (or a W&B project) as :class:`Run` objects, and
exporting their small files (what the report reads, no checkpoints) into a folder to commit.

A run belongs to a row through its ``row`` config value, or, for runs started without ``row=``,
through its mode and toggles matching ``conf/row/<row>.yaml``."""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..analysis.curves import read_metrics
from ..config import row_of, row_signatures
from ..runfiles import RunFileError, read_config, read_json, read_text
from . import ReportError
from .stats import bleu_statistics



@dataclass
class Run:
    path: str
    config: Dict[str, Any]
    summary: Optional[Dict[str, Any]]
    metrics: List[Dict[str, Any]]
    row: Optional[str] = None
    files: Dict[str, List[str]] = field(default_factory=dict)  # "test.beam" / "test.ref" -> lines

    @property
    def complete(self) -> bool:
        return bool(self.summary) and self.summary.get("status") == "complete"

    @property
    def seed(self) -> Any:
        return self.config.get("seed")

    @property
    def experiment(self) -> str:
        return str(self.config.get("experiment", "custom"))

    @property
    def decode_key(self) -> Optional[str]:
        """The decoding the report scores: ``test/beam``, else test greedy, else valid."""
        decoding = (self.summary or {}).get("decoding", {})
        return next((k for k in ("test/beam", "test/greedy", "valid/beam", "valid/greedy") if k in decoding), None)

    @functools.cached_property
    def bleu_statistics(self) -> Optional[np.ndarray]:
        """Per-sentence BLEU statistics of :attr:`decode_key`'s translations against their
        references (None when the files are missing), computed once per run: every table and
        claim that pairs this run reuses them."""
        if self.decode_key is None:
            return None
        split, strategy = self.decode_key.split("/")
        hyps, refs = self.files.get(f"{split}.{strategy}"), self.files.get(f"{split}.ref")
        return None if hyps is None or refs is None else bleu_statistics(hyps, refs)


def _read_lines(path: Path) -> Optional[List[str]]:
    return read_text(path).split("\n")[:-1] if path.is_file() else None


def load_run(run_dir: Path, signatures: Dict[Tuple, str]) -> Run:
    """The run in ``run_dir``; :class:`~agf_exp.runfiles.RunFileError` naming the file that cannot be read."""
    config = read_config(run_dir / "config.yaml")
    summary = None
    if (run_dir / "summary.json").is_file():
        summary = read_json(run_dir / "summary.json")
        if summary.get("status") == "complete":
            lacking = [k for k in ("final", "decoding") if not isinstance(summary.get(k), dict)]
            if lacking:
                raise RunFileError(f"{run_dir / 'summary.json'}: a complete run's summary without "
                                   f"{' and '.join(repr(k) for k in lacking)} (not written by agf-exp?)")
    metrics = read_metrics(run_dir / "metrics.jsonl")
    files = {}
    for path in sorted((run_dir / "hyps").glob("*.txt")):
        files[path.stem] = _read_lines(path)
    return Run(str(run_dir), config, summary, metrics, row_of(config, signatures), files)


def collect_runs(root: Path, unreadable: Optional[List[str]] = None) -> List[Run]:
    """Every trainer run dir below ``root`` (Hydra's ``.hydra/`` and W&B's folders are skipped).
    Each run is read on its own: one whose files cannot be read (cut short, garbled, foreign) is
    left out, and ``FILE: reason`` is appended to ``unreadable`` when a list is given."""
    root = Path(root)
    if not root.is_dir():
        raise ReportError(f"--runs {root} is not a directory; point it at the sweep outputs (e.g. outputs/sweeps)")
    signatures = row_signatures()
    runs = []
    for config in sorted(root.rglob("config.yaml")):
        parts = set(config.relative_to(root).parts[:-1])
        if ".hydra" in parts or "wandb" in parts or "files" in parts:
            continue
        run_dir = config.parent
        if not any((run_dir / name).exists() for name in ("summary.json", "metrics.jsonl", "checkpoints")):
            continue
        try:
            runs.append(load_run(run_dir, signatures))
        except RunFileError as e:
            if unreadable is not None:
                unreadable.append(str(e))
    return runs


def collect_wandb(path: str, rows: Optional[Sequence[str]] = None, experiment: Optional[str] = None,
                  api: Any = None, download_dir: Optional[Path] = None) -> List[Run]:
    """Runs of W&B project ``ENTITY/PROJECT`` chosen by what they are, not by the group they were
    launched under: their ``experiment`` (filtered by W&B) and their row (``row``, or mode and
    toggles matching a row, as for local runs; client-side, before anything is downloaded). Of each
    chosen run only what the report reads is downloaded: ``summary.json``, ``metrics.jsonl`` and the
    translations and references of the decoding it scores (:attr:`Run.decode_key`); runs that are
    no training run (``job_type`` report) are skipped."""
    import tempfile

    if api is None:
        import wandb

        api = wandb.Api()
    filters = {"config.experiment": experiment} if experiment else {}
    signatures = row_signatures()
    download_dir = Path(download_dir or tempfile.mkdtemp(prefix="agf_report_"))
    wanted = set(rows) if rows is not None else None
    runs = []
    for wrun in api.runs(path, filters=filters):
        config = {k: v for k, v in dict(wrun.config).items() if not k.startswith("_")}
        if getattr(wrun, "job_type", None) == "report" or "pos" not in config and "row" not in config:
            continue
        row = row_of(config, signatures)
        if wanted is not None and row not in wanted:
            continue
        target = download_dir / wrun.id
        names = {f.name for f in wrun.files()}

        def fetch(name: str) -> Optional[Path]:
            if name not in names:
                return None
            wrun.file(name).download(root=str(target), replace=True)
            return target / name

        summary_path = fetch("summary.json")
        summary = json.loads(summary_path.read_text()) if summary_path is not None else None
        if summary is None and getattr(wrun, "state", "") == "finished":
            summary = {"status": "complete", "final": {}, "decoding": {}}
        metrics_path = fetch("metrics.jsonl")
        metrics = read_metrics(metrics_path) if metrics_path is not None else []
        if metrics_path is None:
            for hist in wrun.scan_history():
                if hist.get("eval/val_acc") is not None:
                    metrics.append({k[len("eval/"):]: v for k, v in hist.items() if k.startswith("eval/")})
        if summary is not None and not summary.get("final") and metrics:
            summary["final"] = metrics[-1]
        run = Run(f"wandb:{path}/{wrun.id}", config, summary, metrics, row, {})
        if run.decode_key is not None:
            split, strategy = run.decode_key.split("/")
            for stem in (f"{split}.{strategy}", f"{split}.ref"):
                got = fetch(f"hyps/{stem}.txt")
                if got is not None:
                    run.files[stem] = _read_lines(got)
        runs.append(run)
    return runs


def export_runs(runs: List[Run], root: Path, dest: Path, experiment: Optional[str] = None) -> List[Path]:
    """Copy what the report reads from every finished run below ``root`` into the same relative
    dirs below ``dest``: config.yaml, summary.json, metrics.jsonl, the test/valid translations
    and references (for the paired bootstrap) and the analysis JSON files; no checkpoints. The
    report run on ``dest`` equals the report run on ``root`` (tested), so ``dest`` can be
    committed."""
    import shutil

    root, dest = Path(root).resolve(), Path(dest)
    written = []
    for run in runs:
        if not run.complete or (experiment is not None and run.experiment != experiment):
            continue
        src = Path(run.path).resolve()
        target = dest / src.relative_to(root)
        names = ["config.yaml", "summary.json", "metrics.jsonl"]
        names += [str(p.relative_to(src)) for p in sorted((src / "hyps").glob("*.txt"))]
        names += [str(p.relative_to(src)) for p in sorted((src / "analysis").glob("*.json"))]
        for name in names:
            if (src / name).is_file():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src / name, target / name)
        written.append(target)
    return written
