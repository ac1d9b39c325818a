"""Print the paper's tables from finished runs, beside the paper's numbers, with statistics.

    python -m agf_exp.report table4 --runs outputs/sweeps              # Markdown on stdout
    python -m agf_exp.report table4 --runs outputs/sweeps --format csv --out table4.csv
    python -m agf_exp.report table4 --wandb my-team/agf-exp            # read the runs from W&B
    python -m agf_exp.report --all --runs outputs/sweeps               # REPORT.md + CSV/JSON + plots
    python -m agf_exp.report table3                                    # the worked example

Per row: the paper's value; our final validation accuracy (the paper's metric: teacher-forced
token accuracy after the last epoch) as mean ± sample std over seeds with a 95% Student-t
confidence interval and n; its difference to the table's baseline row (ours and the paper's);
test BLEU (sacreBLEU, beam when decoded) as mean ± std; and a paired bootstrap over test
sentences of the BLEU difference to the baseline.

Paired bootstrap (our implementation, following Koehn 2004 and sacreBLEU's ``paired-bs``): the
test sentences are resampled with replacement ``--bootstrap`` times (default 1000, fixed seed);
on each resample a system's BLEU is recomputed from its per-sentence sufficient statistics
(sacreBLEU's own, so the full-set value equals the logged BLEU) and averaged over the system's
seeds; the difference row - baseline gives a 95% percentile interval, and the two-sided p-value is
the share of resampled differences at least as far from their mean as the observed difference is
from 0 (sacreBLEU's convention), with the +1 correction. It measures test-set sampling noise;
seed noise is in the ± and CI columns.

Runs are the run dirs below ``--runs`` (a dir with ``config.yaml`` written by the trainer). A run
belongs to a row through its ``row`` config value, or, for runs started without ``row=``, through
its mode and toggles matching ``conf/row/<row>.yaml``. Runs without ``summary.json`` are listed as
unfinished, and (row, seed) pairs that the table's other rows have, or that ``--seeds 1,2,3``
names, but a row lacks are listed as missing; nothing is dropped silently.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from .analysis.curves import read_metrics
from .tables import PAPER_ROWS, PAPER_SETUP, PAPER_WORKED_EXAMPLE, TABLES, Table, table as get_table

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class ReportError(ValueError):
    """The report cannot be made from these runs; the message says why and what to pass."""


# ------------------------------------------------------------------------------------------------
# runs


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


def row_signatures(conf_dir: Path = CONF_DIR) -> Dict[Tuple, str]:
    """(pos mode, pcmv, sco, pe) -> row name, read from ``conf/row/*.yaml``."""
    from omegaconf import OmegaConf

    out = {}
    for path in sorted((conf_dir / "row").glob("*.yaml")):
        node = OmegaConf.to_container(OmegaConf.load(path))
        pos = None
        for entry in node.get("defaults", []):
            if isinstance(entry, dict):
                for key, value in entry.items():
                    if key.replace("override ", "").strip("/ ") == "pos":
                        pos = value
        out[(pos, bool(node.get("pcmv")), bool(node.get("sco")), bool(node.get("pe")))] = path.stem
    return out


def row_of(config: Dict[str, Any], signatures: Dict[Tuple, str]) -> Optional[str]:
    if config.get("row"):
        return str(config["row"])
    pos = (config.get("pos") or {}).get("name")
    return signatures.get((pos, bool(config.get("pcmv")), bool(config.get("sco")), bool(config.get("pe"))))


def _read_lines(path: Path) -> Optional[List[str]]:
    return path.read_text().split("\n")[:-1] if path.is_file() else None


def load_run(run_dir: Path, signatures: Dict[Tuple, str]) -> Run:
    from omegaconf import OmegaConf

    config = OmegaConf.to_container(OmegaConf.load(run_dir / "config.yaml"), resolve=True)
    summary = None
    if (run_dir / "summary.json").is_file():
        summary = json.loads((run_dir / "summary.json").read_text())
    metrics = read_metrics(run_dir / "metrics.jsonl")
    files = {}
    for path in sorted((run_dir / "hyps").glob("*.txt")):
        files[path.stem] = _read_lines(path)
    return Run(str(run_dir), config, summary, metrics, row_of(config, signatures), files)


def collect_runs(root: Path) -> List[Run]:
    """Every trainer run dir below ``root`` (Hydra's ``.hydra/`` and W&B's folders are skipped)."""
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
        runs.append(load_run(run_dir, signatures))
    return runs


def collect_wandb(path: str, table_name: Optional[str] = None, api: Any = None,
                  download_dir: Optional[Path] = None) -> List[Run]:
    """Runs of W&B project ``ENTITY/PROJECT`` (group = table when given). Config, summary.json and
    translations come from the files the W&B logger attaches to each run; the history gives the
    evaluations."""
    import tempfile

    if api is None:
        import wandb

        api = wandb.Api()
    filters = {"group": table_name} if table_name else {}
    signatures = row_signatures()
    download_dir = Path(download_dir or tempfile.mkdtemp(prefix="agf_report_"))
    runs = []
    for wrun in api.runs(path, filters=filters):
        config = {k: v for k, v in dict(wrun.config).items() if not k.startswith("_")}
        target = download_dir / wrun.id
        names = {f.name for f in wrun.files()}
        for name in names:
            if name in ("summary.json", "metrics.jsonl") or name.startswith("hyps/"):
                wrun.file(name).download(root=str(target), replace=True)
        summary = json.loads((target / "summary.json").read_text()) if (target / "summary.json").is_file() else None
        if summary is None and getattr(wrun, "state", "") == "finished":
            summary = {"status": "complete", "final": {}, "decoding": {}}
        metrics = read_metrics(target / "metrics.jsonl")
        if not (target / "metrics.jsonl").is_file():
            for row in wrun.scan_history():
                if row.get("eval/val_acc") is not None:
                    metrics.append({k[len("eval/"):]: v for k, v in row.items() if k.startswith("eval/")})
        if summary is not None and not summary.get("final") and metrics:
            summary["final"] = metrics[-1]
        files = {p.stem: _read_lines(p) for p in sorted((target / "hyps").glob("*.txt"))}
        runs.append(Run(f"wandb:{path}/{wrun.id}", config, summary, metrics, row_of(config, signatures), files))
    return runs


# ------------------------------------------------------------------------------------------------
# statistics


def mean_ci(values: Sequence[float], level: float = 0.95) -> Dict[str, Any]:
    """Mean, sample std and the Student-t confidence interval of the mean (None where n < 2)."""
    from scipy import stats

    x = np.asarray([v for v in values if v is not None], dtype=float)
    n = len(x)
    if n == 0:
        return {"n": 0, "mean": None, "std": None, "ci_low": None, "ci_high": None}
    mean = float(x.mean())
    if n < 2:
        return {"n": 1, "mean": mean, "std": None, "ci_low": None, "ci_high": None}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "ci_low": mean - half, "ci_high": mean + half}


def bleu_statistics(hyps: Sequence[str], refs: Sequence[str]) -> np.ndarray:
    """Per-sentence sufficient statistics of sacreBLEU's default BLEU (13a, cased):
    ``[n, 10]`` = hyp length, ref length, matches 1..4, n-gram totals 1..4."""
    import sacrebleu

    if len(hyps) != len(refs):
        raise ReportError(f"{len(hyps)} translations but {len(refs)} references")
    return np.asarray(sacrebleu.BLEU()._extract_corpus_statistics(list(hyps), [list(refs)]), dtype=np.int64)


def bleu_from_statistics(totals: np.ndarray) -> np.ndarray:
    """sacreBLEU's corpus BLEU (``smooth_method='exp'``) from summed statistics ``[..., 10]``."""
    totals = np.asarray(totals, dtype=float)
    sys_len, ref_len = totals[..., 0], totals[..., 1]
    correct, total = totals[..., 2:6], totals[..., 6:10]
    zero = correct == 0
    smooth = 2.0 ** np.cumsum(zero, axis=-1)  # 'exp' smoothing: 1/2, 1/4, ... for empty orders
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(zero, 100.0 / (smooth * total), 100.0 * correct / total)
        prec = np.where(total == 0, 0.0, prec)
        log_mean = np.log(prec).mean(axis=-1)
        bp = np.where(sys_len < ref_len, np.exp(1.0 - ref_len / np.maximum(sys_len, 1e-300)), 1.0)
        bp = np.where(sys_len == 0, 0.0, bp)
        score = bp * np.exp(log_mean)
    return np.where(zero.all(axis=-1), 0.0, np.nan_to_num(score, nan=0.0))


def paired_bootstrap(system: Sequence[np.ndarray], baseline: Sequence[np.ndarray], n_samples: int = 1000,
                     seed: int = 12345) -> Dict[str, float]:
    """Paired bootstrap of the BLEU difference ``system - baseline`` over test sentences; each side
    is a list of per-seed statistics ``[n, 10]`` on the same sentences (BLEU averaged over seeds)."""
    n = system[0].shape[0]
    if any(s.shape[0] != n for s in list(system) + list(baseline)):
        raise ReportError("the paired bootstrap needs translations of the same test sentences for every run")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_samples, n))

    def mean_bleu(stats_list, index=None):
        if index is None:
            return float(np.mean([bleu_from_statistics(s.sum(0)) for s in stats_list]))
        return np.mean([bleu_from_statistics(s[index].sum(1)) for s in stats_list], axis=0)

    observed = mean_bleu(system) - mean_bleu(baseline)
    diffs = mean_bleu(system, idx) - mean_bleu(baseline, idx)
    centred = np.abs(diffs - diffs.mean())
    p = (np.sum(centred >= abs(observed)) + 1) / (n_samples + 1)
    return {"diff": observed, "ci_low": float(np.percentile(diffs, 2.5)),
            "ci_high": float(np.percentile(diffs, 97.5)), "p": float(p), "samples": n_samples,
            "sentences": n}


# ------------------------------------------------------------------------------------------------
# tables


def _decode_key(run: Run) -> Optional[str]:
    decoding = (run.summary or {}).get("decoding", {})
    for key in ("test/beam", "test/greedy", "valid/beam", "valid/greedy"):
        if key in decoding:
            return key
    return None


def _pick_experiment(runs: List[Run], rows: Sequence[str], experiment: Optional[str]) -> Optional[str]:
    found = sorted({r.experiment for r in runs if r.row in rows})
    if experiment is not None:
        return experiment
    if len(found) > 1:
        raise ReportError(f"runs of several experiments are present ({', '.join(found)}); "
                          f"pass --experiment {found[0]} (or another) to report one scale")
    return found[0] if found else None


def select_runs(spec: Table, runs: List[Run], experiment: Optional[str]) -> Tuple[Dict[str, List[Run]], List[Run], List[Run]]:
    """Per row the complete runs (one per seed, preferring the table's own sweep), plus the
    unfinished runs and the duplicates that were not used."""
    chosen: Dict[str, Dict[Any, Run]] = {row: {} for row in spec.rows}
    unfinished, duplicates = [], []
    candidates = [r for r in runs if r.row in chosen and (experiment is None or r.experiment == experiment)]
    candidates.sort(key=lambda r: (r.config.get("table") != spec.name, r.path))
    for run in candidates:
        if not run.complete:
            unfinished.append(run)
        elif run.seed in chosen[run.row]:
            duplicates.append(run)
        else:
            chosen[run.row][run.seed] = run
    return {row: [by_seed[s] for s in sorted(by_seed, key=str)] for row, by_seed in chosen.items()}, unfinished, duplicates


def report_table(name: str, runs: List[Run], experiment: Optional[str] = None, n_bootstrap: int = 1000,
                 seeds: Optional[Sequence[int]] = None) -> Dict[str, Any]:
    """The structured report of one table (what the Markdown/CSV/JSON writers print). ``seeds``:
    the seeds every row should have (``--seeds``); a row lacking one is listed as missing, as is
    a row lacking a seed that another row of the table has."""
    spec = get_table(name)
    if spec.name == "table3":
        return worked_example()
    experiment = _pick_experiment(runs, spec.rows, experiment)
    by_row, unfinished, duplicates = select_runs(spec, runs, experiment)
    if spec.name == "table1":
        finished = [r for r in runs if r.complete and (experiment is None or r.experiment == experiment)]
        return setup_table(spec, by_row, unfinished, experiment, finished)
    seeds = sorted({r.seed for rs in by_row.values() for r in rs} | set(seeds or ()), key=str)
    base_runs = by_row.get(spec.baseline, [])
    base_acc = mean_ci([r.summary["final"].get("val_acc") for r in base_runs])["mean"] if base_runs else None
    base_stats = _test_statistics(base_runs)
    rows, missing = [], []
    for row in spec.rows:
        label, paper = PAPER_ROWS[row]
        rs = by_row[row]
        if rs:
            missing += [f"{row} seed {s}" for s in seeds if s not in {r.seed for r in rs}]
        else:
            missing.append(f"{row}: no finished run")
        acc = mean_ci([r.summary["final"].get("val_acc") for r in rs])
        bleu = mean_ci([r.summary["decoding"][k]["bleu"] for r in rs if (k := _decode_key(r))])
        entry = {"row": row, "label": label, "paper": paper, "val_acc": acc, "test_bleu": bleu,
                 "bleu_source": sorted({k for r in rs if (k := _decode_key(r))}),
                 "seeds": [r.seed for r in rs], "runs": [r.path for r in rs],
                 "paper_diff": None if spec.baseline is None else paper - PAPER_ROWS[spec.baseline][1],
                 "diff": None, "bootstrap": None}
        if row != spec.baseline and acc["mean"] is not None and base_acc is not None:
            entry["diff"] = acc["mean"] - base_acc
        if row != spec.baseline and base_stats:
            stats = _test_statistics(rs)
            if stats:
                entry["bootstrap"] = paired_bootstrap(stats, base_stats, n_samples=n_bootstrap)
        rows.append(entry)
    return {"table": spec.name, "title": spec.title, "experiment": experiment, "baseline": spec.baseline,
            "rows": rows, "warnings": _segmentation_warning([r for rs in by_row.values() for r in rs]),
            "missing": missing, "unfinished": [r.path for r in unfinished],
            "duplicates_ignored": [r.path for r in duplicates]}


def _test_statistics(runs: List[Run]) -> List[np.ndarray]:
    """Per-run BLEU statistics of the decoded test (or valid) split; [] when any file is missing."""
    out = []
    for run in runs:
        key = _decode_key(run)
        if key is None:
            return []
        split, strategy = key.split("/")
        hyps, refs = run.files.get(f"{split}.{strategy}"), run.files.get(f"{split}.ref")
        if hyps is None or refs is None:
            return []
        out.append(bleu_statistics(hyps, refs))
    if len({s.shape[0] for s in out}) > 1:
        return []
    return out


def _dataset(config: Dict[str, Any], summary: Dict[str, Any]) -> str:
    """The run's data description without this machine's data folder (it names ``data.root``)."""
    desc, root = str(summary.get("data")), config.get("data", {}).get("root")
    return desc.replace(str(root), "data.root") if root else desc


def _hardware(runs: List[Run]) -> str:
    """Device, CPU threads and platform over the finished runs, with run counts
    where they differ (e.g. some runs on 2 threads, others 1 thread each, two at a time)."""
    counts: Dict[str, int] = {}
    for r in runs:
        s = r.summary
        threads = s.get("cpu_threads")
        key = f"{s.get('device')}, {threads} CPU thread{'s' if threads != 1 else ''}; {s.get('platform')}"
        counts[key] = counts.get(key, 0) + 1
    if len(counts) == 1:
        return next(iter(counts))
    return "; ".join(f"{key} ({n} run{'s' if n != 1 else ''})" for key, n in sorted(counts.items(), key=lambda kv: -kv[1]))


def _segmentations(runs: List[Run]) -> Dict[str, int]:
    """Runs per subword segmentation, keyed by the validation target-token count (the denominator
    of val_acc, which any other subword model changes), named by the tokenizer where recorded."""
    groups: Dict[Any, Dict[str, Any]] = {}
    for r in runs:
        tokens = r.summary.get("final", {}).get("val_tokens")
        g = groups.setdefault(tokens, {"n": 0, "models": set()})
        g["n"] += 1
        tok = r.summary.get("tokenizer")
        if tok:
            g["models"].add(f"sentencepiece {tok.get('sentencepiece')} model {str(tok.get('sha256'))[:12]}")
    out = {}
    for tokens, g in groups.items():
        name = f"{tokens} validation target tokens" if tokens is not None else "validation tokens not recorded"
        if g["models"]:
            name += " (" + ", ".join(sorted(g["models"])) + ")"
        out[name] = g["n"]
    return out


def _segmentation_warning(runs: List[Run]) -> List[str]:
    """A warning when the compared runs do not share one subword segmentation."""
    groups = _segmentations(runs)
    if len(groups) < 2:
        return []
    desc = "; ".join(f"{name}: {n} run{'s' if n != 1 else ''}" for name, n in groups.items())
    return [f"These runs use {len(groups)} different subword segmentations ({desc}). Validation accuracy "
            "is per target token, so it is not comparable across them; compare BLEU, or train every run "
            "on one model file (data.subword_file=...)."]


def setup_table(spec: Table, by_row: Dict[str, List[Run]], unfinished: List[Run], experiment,
                finished: List[Run]) -> Dict[str, Any]:
    """Table 1: what the vanilla runs recorded, beside the paper's setup; the hardware and the
    subword segmentations over all ``finished`` runs of the experiment."""
    rs = by_row.get("vanilla", [])
    items = []
    if rs:
        c, s = rs[0].config, rs[0].summary
        m = c["model"]
        wall = mean_ci([r.summary.get("wall_seconds") for r in rs])
        train_s = mean_ci([r.summary.get("train_seconds") for r in rs])
        segs = _segmentations(finished)
        subwords = "; ".join(f"{name}, {n} run{'s' if n != 1 else ''}" if len(segs) > 1 else name
                             for name, n in segs.items())
        ours = {
            "Base architecture": f"Transformer ({m['name']}: d_model {m['d_model']}, {m['n_heads']} heads, "
                                 f"FFN {m['d_ff']}, {m['norm']}-norm)",
            "Dataset": f"{_dataset(c, s)} ({s.get('train_pairs')} training pairs; subwords: {subwords})",
            "Number of layers": f"{m['enc_layers']} encoder + {m['dec_layers']} decoder",
            "Precision": f"trainer.precision={c['trainer']['precision']} (autocast {s.get('autocast')})",
            "Hardware": _hardware(finished),
            "Training duration": (f"{wall['mean'] / 3600:.2f} h wall per run ({train_s['mean'] / 60:.1f} min training, "
                                  f"n={wall['n']}, {s.get('epochs')} epochs)" if wall["mean"] else "not recorded"),
        }
    else:
        ours = {}
    for item, paper in PAPER_SETUP:
        items.append({"item": item, "paper": paper, "ours": ours.get(item, "no finished vanilla run")})
    missing = [] if rs else ["vanilla: no finished run"]
    return {"table": spec.name, "title": spec.title, "experiment": experiment, "setup": items,
            "runs": [r.path for r in rs], "finished": len(finished), "missing": missing,
            "unfinished": [r.path for r in unfinished]}


def worked_example() -> Dict[str, Any]:
    """Table 3 through :func:`agf_exp.attention.attention`: one query, two keys whose raw q.k are
    100 and 20 and whose positional coefficients are 0.1 and 0.5, so both scores are 10. With
    d_k = 1 and SCO off the logits are q.k / sqrt(1) times the coefficient. Without PCM-V the two
    equally attended keys contribute 50 and 10; with PCM-V (values times the coefficient) 5 and 5."""
    import torch

    from .attention import attention

    raw = torch.tensor(PAPER_WORKED_EXAMPLE["raw"], dtype=torch.float64)
    coef = torch.tensor(PAPER_WORKED_EXAMPLE["coef"], dtype=torch.float64)
    q = torch.ones(1, 1, 1, 1, dtype=torch.float64)
    kv = raw.view(1, 1, 2, 1)
    c = coef.view(1, 1, 2)
    out_plain, probs = attention(q, kv, kv, coef=c, return_probs=True)
    out_pcmv = attention(q, kv, kv, coef=c, value_coef=c)
    p = probs.view(2)
    rows = []
    for i in range(2):
        rows.append({"raw": raw[i].item(), "coef": coef[i].item(), "score": (raw[i] * coef[i]).item(),
                     "softmax": p[i].item(), "contribution": (p[i] * raw[i]).item(),
                     "contribution_pcmv": (p[i] * coef[i] * raw[i]).item()})
    return {"table": "table3", "title": TABLES["table3"].title, "example": rows,
            "output": out_plain.item(), "output_pcmv": out_pcmv.item()}


# ------------------------------------------------------------------------------------------------
# writers


def _fmt(x: Optional[float], digits: int = 2, sign: bool = False) -> str:
    if x is None:
        return "–"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _pm(stat: Dict[str, Any], digits: int = 2) -> str:
    if stat["mean"] is None:
        return "–"
    return _fmt(stat["mean"], digits) + ("" if stat["std"] is None else f" ± {stat['std']:.{digits}f}")


def _ci(stat: Dict[str, Any], digits: int = 2) -> str:
    return "–" if stat.get("ci_low") is None else f"[{stat['ci_low']:.{digits}f}, {stat['ci_high']:.{digits}f}]"


def to_markdown(result: Dict[str, Any]) -> str:
    name = result["table"]
    out = [f"### {name.replace('table', 'Table ')}: {result['title']}", ""]
    if name == "table3":
        out += ["| raw K/V | PosCoeff | raw score | softmax | output without PCM-V | output with PCM-V |",
                "|---|---|---|---|---|---|"]
        for r in result["example"]:
            out.append(f"| {r['raw']:g} | {r['coef']:g} | {r['raw']:g}·{r['coef']:g} = {r['score']:g} | "
                       f"{r['softmax']:.2f} | {r['softmax']:.2f}·{r['raw']:g} = {r['contribution']:g} | "
                       f"{r['softmax']:.2f}·{r['coef']:g}·{r['raw']:g} = {r['contribution_pcmv']:g} |")
        out += ["", f"Attention output (computed by `agf_exp.attention.attention`): {result['output']:g} without "
                f"PCM-V, {result['output_pcmv']:g} with PCM-V. Equal scores give equal weights, yet without PCM-V "
                "the far key (coefficient 0.1) contributes 5x as much as the near one; with PCM-V both contribute "
                "the same. (The paper prints the softmax weight as 0.1 for illustration; two equal scores get 0.5 each.)"]
        return "\n".join(out) + "\n"
    if name == "table1":
        out += [f"Experiment: `{result['experiment']}`. Runs: {len(result['runs'])} vanilla (architecture, "
                f"precision, training duration); {result['finished']} finished in all (subwords, hardware).", "",
                "| configuration item | paper | this reproduction |", "|---|---|---|"]
        out += [f"| {i['item']} | {i['paper']} | {i['ours']} |" for i in result["setup"]]
    else:
        base = result["baseline"]
        out += [f"Experiment: `{result['experiment']}`. Runs: {sum(len(r['seeds']) for r in result['rows'])}.", "",
                f"Metric: final validation accuracy (%, teacher-forced). Δ: difference to `{base}`. "
                "BLEU: sacreBLEU on the decoded test set; bootstrap: paired, over test sentences, vs the baseline.", "",
                "| row | paper | Δ paper | ours (mean ± std) | 95% CI | n | Δ ours | test BLEU | ΔBLEU [95% CI], p |",
                "|---|---|---|---|---|---|---|---|---|"]
        for r in result["rows"]:
            bs = r["bootstrap"]
            bs_txt = "–" if bs is None else f"{bs['diff']:+.2f} [{bs['ci_low']:+.2f}, {bs['ci_high']:+.2f}], p={bs['p']:.3f}"
            label = r["label"] + (" (baseline)" if r["row"] == base else "")
            out.append(f"| {label} | {r['paper']:.4f} | {_fmt(r['paper_diff'], 4, sign=True) if r['row'] != base else ''} | "
                       f"{_pm(r['val_acc'])} | {_ci(r['val_acc'])} | {r['val_acc']['n']} | "
                       f"{_fmt(r['diff'], 2, sign=True) if r['row'] != base else ''} | {_pm(r['test_bleu'])} | {bs_txt} |")
    for warning in result.get("warnings", []):
        out += ["", f"**Caution:** {warning}"]
    for key, title in (("missing", "Missing"), ("unfinished", "Unfinished (no summary.json)"),
                       ("duplicates_ignored", "Duplicate runs not used")):
        if result.get(key):
            out += ["", f"{title}: " + ", ".join(f"`{x}`" for x in result[key])]
    return "\n".join(out) + "\n"


FILE_DIGITS = 12  # significant digits of the floats that the report writes to .json / .csv


def round_floats(obj: Any, digits: int = FILE_DIGITS) -> Any:
    """``obj`` with every float rounded to ``digits`` significant digits: the bootstrap's vectorised
    numpy sums differ in the last bit between machines, and the committed files should come back
    byte-identical when the report is regenerated from the same runs."""
    if isinstance(obj, float):
        return float(f"{obj:.{digits}g}")
    if isinstance(obj, dict):
        return {k: round_floats(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [round_floats(v, digits) for v in obj]
    return obj


def to_json(result: Any) -> str:
    return json.dumps(round_floats(result), indent=2) + "\n"


def to_csv(result: Dict[str, Any]) -> str:
    result = round_floats(result)
    buf = io.StringIO()
    w = csv.writer(buf)
    if result["table"] == "table3":
        w.writerow(["raw", "coef", "score", "softmax", "contribution", "contribution_pcmv"])
        for r in result["example"]:
            w.writerow([r[k] for k in ("raw", "coef", "score", "softmax", "contribution", "contribution_pcmv")])
    elif result["table"] == "table1":
        w.writerow(["item", "paper", "ours"])
        for i in result["setup"]:
            w.writerow([i["item"], i["paper"], i["ours"]])
    else:
        w.writerow(["row", "label", "paper", "paper_diff", "val_acc_mean", "val_acc_std", "val_acc_ci_low",
                    "val_acc_ci_high", "n", "diff", "test_bleu_mean", "test_bleu_std", "bleu_diff", "bleu_ci_low",
                    "bleu_ci_high", "bleu_p"])
        for r in result["rows"]:
            a, b, bs = r["val_acc"], r["test_bleu"], r["bootstrap"] or {}
            w.writerow([r["row"], r["label"], r["paper"], r["paper_diff"], a["mean"], a["std"], a["ci_low"],
                        a["ci_high"], a["n"], r["diff"], b["mean"], b["std"], bs.get("diff"), bs.get("ci_low"),
                        bs.get("ci_high"), bs.get("p")])
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------
# learning curves


def plot_curves(series: Dict[str, List[List[Tuple[float, float]]]], path: Path, ylabel: str, title: str) -> Path:
    """One line per label (mean over its runs, band = min..max) of y against epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for label, runs in series.items():
        xs = sorted({x for run in runs for x, _ in run})
        if not xs:
            continue
        ys = [[y for run in runs for x2, y in run if x2 == x] for x in xs]
        ax.plot(xs, [np.mean(v) for v in ys], marker="o", markersize=3, label=label)
        if len(runs) > 1:
            ax.fill_between(xs, [min(v) for v in ys], [max(v) for v in ys], alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_run_curves(run_dir: Path) -> Optional[Path]:
    """``<run dir>/curves.png``: validation accuracy and training/validation loss per evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    evals = read_metrics(Path(run_dir) / "metrics.jsonl")
    if not evals:
        return None
    x = [e["epoch_fraction"] for e in evals]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax1.plot(x, [e["val_acc"] for e in evals], marker="o")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("validation accuracy (%)")
    ax2.plot(x, [e["val_loss"] for e in evals], marker="o", label="validation")
    train = [(xi, e["train_loss"]) for xi, e in zip(x, evals) if e.get("train_loss") is not None]
    if train:
        ax2.plot(*zip(*train), marker="o", label="training (smoothed)")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("loss")
    ax2.legend()
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(run_dir) / "curves.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_table_curves(result: Dict[str, Any], runs: List[Run], path: Path) -> Optional[Path]:
    by_path = {r.path: r for r in runs}
    series = {}
    for row in result.get("rows", []):
        curves = [[(m["epoch_fraction"], m["val_acc"]) for m in by_path[p].metrics] for p in row["runs"] if p in by_path]
        if any(curves):
            series[row["label"]] = curves
    if not series:
        return None
    return plot_curves(series, path, "validation accuracy (%)", f"{result['table']} ({result['experiment']})")


# ------------------------------------------------------------------------------------------------
# command line


def write_all(runs: List[Run], out: Path, experiment: Optional[str], n_bootstrap: int,
              seeds: Optional[Sequence[int]] = None) -> Path:
    """Every table into ``out`` (REPORT.md) with CSV/JSON and learning-curve plots beside it."""
    out_dir = out.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = ["# Reproduction of \"Attention's Gravitational Field\": all tables", "",
             "Written by `python -m agf_exp.report --all`. Paper values: SPEC.md / the paper "
             "(WMT17 en-de, Transformer-BIG 3+3 layers, FP16, OpenNMT-py validation accuracy).", ""]
    for name in TABLES:
        spec = TABLES[name]
        try:
            result = report_table(name, runs, experiment, n_bootstrap, seeds)
        except ReportError as e:
            parts += [f"### {name}", "", f"Not reported: {e}", ""]
            continue
        (out_dir / f"{name}.json").write_text(to_json(result))
        (out_dir / f"{name}.csv").write_text(to_csv(result))
        parts.append(to_markdown(result))
        if spec.rows and name != "table1":
            png = plot_table_curves(result, runs, out_dir / "curves" / f"{name}.png")
            if png is not None:
                parts += [f"![{name} learning curves](curves/{name}.png)", ""]
    from .claims import analysis_appendix, evaluate_claims
    from .claims import to_markdown as claims_markdown

    claims = evaluate_claims(runs, experiment, n_bootstrap)
    (out_dir / "claims.json").write_text(to_json(claims))
    parts += [claims_markdown(claims), analysis_appendix(claims)]
    out.write_text("\n".join(parts))
    return out


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


def _seed_list(text: str) -> List[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integer seeds, e.g. 1,2,3") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agf_exp.report", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", nargs="?", help="table1 ... table6 (or 1 ... 6)")
    parser.add_argument("--all", action="store_true", help="every table into one REPORT.md (see --out)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--runs", type=Path, help="folder holding the run dirs (default outputs/sweeps)")
    source.add_argument("--wandb", metavar="ENTITY/PROJECT", help="read the runs from W&B instead")
    parser.add_argument("--experiment", help="report runs of this experiment= (needed when several are present)")
    parser.add_argument("--format", choices=["md", "csv", "json"], default="md")
    parser.add_argument("--out", type=Path, help="write here instead of stdout (--all: default <runs>/REPORT.md)")
    parser.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap resamples (default 1000)")
    parser.add_argument("--seeds", type=_seed_list, metavar="1,2,3",
                        help="the seeds every row should have: a row lacking one is listed as missing")
    parser.add_argument("--export", type=Path, metavar="DIR",
                        help="copy the finished runs' small files (no checkpoints) into DIR, e.g. results/multi30k-small")
    args = parser.parse_args(argv)
    if args.export:
        root = args.runs or Path("outputs/sweeps")
        try:
            written = export_runs(collect_runs(root), root, args.export, args.experiment)
        except ReportError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"exported {len(written)} finished run(s) from {root} to {args.export}")
        return 0
    if not args.all and not args.table:
        parser.error("name a table (table1 ... table6) or pass --all or --export")
    try:
        needs_runs = args.all or get_table(args.table).name != "table3"
        runs: List[Run] = []
        if needs_runs:
            if args.wandb:
                runs = collect_wandb(args.wandb, None if args.all else get_table(args.table).name)
            else:
                runs = collect_runs(args.runs or Path("outputs/sweeps"))
        if args.all:
            out = args.out or (args.runs or Path("outputs/sweeps")) / "REPORT.md"
            print(f"wrote {write_all(runs, out, args.experiment, args.bootstrap, args.seeds)}")
            return 0
        result = report_table(args.table, runs, args.experiment, args.bootstrap, args.seeds)
    except (ReportError, KeyError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    text = {"md": to_markdown, "csv": to_csv, "json": to_json}[args.format](result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
        print(f"wrote {args.out}")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
