"""The paper's tables from runs: per row the runs chosen (one per seed), the mean and interval of
final validation accuracy and test BLEU, the difference to the baseline and the paired bootstrap;
table 1 (the setup) and table 3 (the worked example) in their own shapes. Each function returns
the structured result that :mod:`agf_exp.results.format` prints."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..tables import PAPER_ROWS, PAPER_SETUP, PAPER_WORKED_EXAMPLE, TABLES, Table, table as get_table
from . import ReportError
from .runs import Run
from .stats import mean_ci, paired_bootstrap


def pick_experiment(runs: List[Run], rows: Sequence[str], experiment: Optional[str]) -> Optional[str]:
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
    experiment = pick_experiment(runs, spec.rows, experiment)
    by_row, unfinished, duplicates = select_runs(spec, runs, experiment)
    if spec.name == "table1":
        finished = [r for r in runs if r.complete and (experiment is None or r.experiment == experiment)]
        return setup_table(spec, by_row, unfinished, experiment, finished)
    seeds = sorted({r.seed for rs in by_row.values() for r in rs} | set(seeds or ()), key=str)
    base_runs = by_row.get(spec.baseline, [])
    base_acc = mean_ci([r.summary["final"].get("val_acc") for r in base_runs])["mean"] if base_runs else None
    base_stats = decoded_statistics(base_runs)
    rows, missing = [], []
    for row in spec.rows:
        label, paper = PAPER_ROWS[row]
        rs = by_row[row]
        if rs:
            missing += [f"{row} seed {s}" for s in seeds if s not in {r.seed for r in rs}]
        else:
            missing.append(f"{row}: no finished run")
        acc = mean_ci([r.summary["final"].get("val_acc") for r in rs])
        bleu = mean_ci([r.summary["decoding"][k]["bleu"] for r in rs if (k := r.decode_key)])
        entry = {"row": row, "label": label, "paper": paper, "val_acc": acc, "test_bleu": bleu,
                 "bleu_source": sorted({k for r in rs if (k := r.decode_key)}),
                 "seeds": [r.seed for r in rs], "runs": [r.path for r in rs],
                 "paper_diff": None if spec.baseline is None else paper - PAPER_ROWS[spec.baseline][1],
                 "diff": None, "bootstrap": None}
        if row != spec.baseline and acc["mean"] is not None and base_acc is not None:
            entry["diff"] = acc["mean"] - base_acc
        if row != spec.baseline and base_stats:
            stats = decoded_statistics(rs)
            if stats:
                entry["bootstrap"] = paired_bootstrap(stats, base_stats, n_samples=n_bootstrap)
        rows.append(entry)
    return {"table": spec.name, "title": spec.title, "experiment": experiment, "baseline": spec.baseline,
            "rows": rows, "warnings": segmentation_warning([r for rs in by_row.values() for r in rs]),
            "missing": missing, "unfinished": [r.path for r in unfinished],
            "duplicates_ignored": [r.path for r in duplicates]}


def decoded_statistics(runs: List[Run]) -> List[np.ndarray]:
    """Per-run BLEU statistics of the decoded test (or valid) split; [] when any run lacks them or
    the runs decoded different sentences."""
    out = [run.bleu_statistics for run in runs]
    if any(s is None for s in out) or len({s.shape[0] for s in out}) > 1:
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


def segmentation_warning(runs: List[Run]) -> List[str]:
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

    from ..attention import attention

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
