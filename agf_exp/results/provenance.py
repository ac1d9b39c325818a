"""Where the report's numbers come from: which checkpoint each number is read at, how test BLEU
is scored, which commits trained the runs, and runs whose logs look unlike the others'."""
from __future__ import annotations

import statistics
from collections import Counter
from typing import Any, Dict, List, Sequence

from .runs import Run

#: an epoch-1 training loss this far below the runs' median is listed (a full epoch-1 window
#: spreads by ~0.1 over seeds and rows here)
LOW_LOSS_MARGIN = 0.25


def provenance(runs: Sequence[Run]) -> Dict[str, Any]:
    done = sorted((r for r in runs if r.complete), key=lambda r: r.path)
    commits = Counter(str((r.summary or {}).get("git_commit") or "unknown") for r in done)
    signatures = Counter()
    beams, checkpoints, early_best = Counter(), Counter(), []
    for r in done:
        s = r.summary or {}
        scores = (s.get("decoding") or {}).get(r.decode_key or "", {})
        signatures[(scores.get("bleu_signature"), scores.get("chrf_signature"))] += 1
        beams[((r.config.get("trainer") or {}).get("beam_size"))] += 1
        checkpoints[s.get("decode_checkpoint") or (r.config.get("trainer") or {}).get("decode_checkpoint") or "best"] += 1
        best = (s.get("best") or {}).get("epoch")
        if best is not None and s.get("epochs") is not None and float(best) != float(s["epochs"]):
            early_best.append({"run": r.path, "row": r.row, "seed": r.seed, "best_epoch": best, "epochs": s["epochs"]})
    first = [(r, r.metrics[0]) for r in done if r.metrics and r.metrics[0].get("train_loss") is not None
             and r.metrics[0].get("epoch") == 1]
    low: List[Dict[str, Any]] = []
    if first:
        median = statistics.median(m["train_loss"] for _, m in first)
        low = [{"run": r.path, "row": r.row, "seed": r.seed, "train_loss": m["train_loss"], "median": median,
                "val_acc": m.get("val_acc")} for r, m in first if m["train_loss"] < median - LOW_LOSS_MARGIN]
    resumed = [{"row": r.row, "seed": r.seed, "at": list((r.summary or {}).get("resumed_at") or [])} for r in done]
    return {"runs": len(done), "commits": commits.most_common(), "resumed": resumed, "signatures": signatures.most_common(),
            "beams": beams.most_common(), "checkpoints": checkpoints.most_common(), "early_best": early_best,
            "low_first_loss": low, "median_first_loss": statistics.median(m["train_loss"] for _, m in first) if first else None}


def to_markdown(p: Dict[str, Any]) -> List[str]:
    out = ["## Provenance", "",
           "Which checkpoint each number is read at: validation accuracy (every table, the claims, the learning "
           "curves) at the last epoch's evaluation, i.e. the weights at the end of training; test BLEU, chrF and "
           "the attention analyses from the decoded checkpoint (`trainer.decode_checkpoint`: "
           + ", ".join(f"{k} in {n} runs" for k, n in p["checkpoints"]) +
           "; `best` is best.pt, the epoch of the highest validation accuracy).", ""]
    if p["early_best"]:
        out.append(f"Runs whose best.pt is not the last epoch (their BLEU comes from an earlier epoch than their "
                   f"accuracy): " + ", ".join(f"`{e['row']}` seed {e['seed']} (best epoch {e['best_epoch']:g} of "
                                               f"{e['epochs']})" for e in p["early_best"]) + ".")
    else:
        out.append("In every run best.pt is the last epoch: accuracy and BLEU come from the same weights.")
    out += ["", "Test BLEU and chrF: sacreBLEU, beam size " + ", ".join(f"{b} ({n} runs)" for b, n in p["beams"]) +
            "; signatures: " + "; ".join(f"BLEU `{b}`, chrF `{c}` ({n} runs)" for (b, c), n in p["signatures"]) + ".",
            "", f"Code: {p['runs']} runs trained by {len(p['commits'])} commits (`git_commit` in each summary.json, "
            "the commit of the session that finished the run; `-dirty`: uncommitted changes):", ""]
    out += ["| commit | runs |", "|---|---|"] + [f"| `{c[:12]}{'-dirty' if c.endswith('-dirty') else ''}` | {n} |"
                                                 for c, n in p["commits"]]
    if p["low_first_loss"]:
        out += ["", f"Runs whose epoch-1 training loss lies more than {LOW_LOSS_MARGIN:g} below the median "
                    f"({p['median_first_loss']:.2f}): " +
                ", ".join(f"`{x['row']}` seed {x['seed']} ({x['train_loss']:.2f}; val acc {x['val_acc']:.2f})"
                          for x in p["low_first_loss"]) +
                ". The logged training loss of an evaluation is the mean over the updates since the previous one, "
                "as restored from last.pt on a resume; a last.pt written before the loss window was part of the "
                "training state (commit cc7d04b) resumes with an empty window, so a run resumed within epoch 1 from "
                "such a file logs the mean over the later, lower-loss updates only. Their files do not record resumes "
                "(runs trained since this report record them: `resumed_at` in summary.json), so whether that is what "
                "happened to these runs is not established. Their epoch-1 validation "
                "accuracy lies within the other runs' spread, and no reported number uses the training loss."]
    resumed = [x for x in p.get("resumed", []) if x["at"]]
    if resumed:
        out += ["", "Resumed runs (from `resumed_at`): " + "; ".join(
            f"`{x['row']}` seed {x['seed']} at " + ", ".join(f"step {a['step']} (epoch {a['epoch'] + 1}, batch "
                                                            f"{a['batch_in_epoch']})" for a in x["at"])
            for x in resumed) + "."]
    return out
