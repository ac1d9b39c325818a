"""Print the paper's tables from finished runs, beside the paper's numbers, with statistics.

    python -m agf_exp.report table4 --runs outputs/sweeps              # Markdown on stdout
    python -m agf_exp.report table4 --runs outputs/sweeps --format csv --out table4.csv
    python -m agf_exp.report table4 --wandb my-team/agf-exp            # read the runs from W&B
    python -m agf_exp.report --all --runs outputs/sweeps               # REPORT.md + CSV/JSON + plots
    python -m agf_exp.report table3                                    # the worked example
    python -m agf_exp.report --parity results/multi30k-small --runs results/precision-parity  # bf16 vs fp32
    python -m agf_exp.report lengthgen --runs results/lengthgen --out results/lengthgen/REPORT.md

Per row: the paper's value; our final validation accuracy (the paper's metric: teacher-forced
token accuracy after the last epoch) as mean ± sample std over seeds with a 95% Student-t
confidence interval and n; its difference to the table's baseline row (ours and the paper's);
test BLEU (sacreBLEU, beam when decoded) as mean ± std; and a paired bootstrap over test
sentences of the BLEU difference to the baseline.

The statistics are defined in :mod:`agf_exp.results.stats` (the paired bootstrap: Koehn 2004's
resampling with a shifted-null two-sided p; not sacreBLEU's ``paired-bs`` p), the claims' verdict
rules in :mod:`agf_exp.results.claims`.

Runs are the run dirs below ``--runs`` (a dir with ``config.yaml`` written by the trainer). A run
belongs to a row through its ``row`` config value, or, for runs started without ``row=``, through
its mode and toggles matching ``conf/row/<row>.yaml``. Runs without ``summary.json`` are listed as
unfinished, and (row, seed) pairs that the table's other rows have, or that ``--seeds 1,2,3``
names, but a row lacks are listed as missing; nothing is dropped silently.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from .analysis import decay
from .atomic import atomic_write_bytes
from .results import ReportError, learning_speed, lengthgen, lengthgen_mt
from .results.claims import analysis_appendix, decay_fits, evaluate_claims
from .results.claims import to_markdown as claims_markdown
from .results.format import to_csv, to_json, to_markdown
from .results.parity import precision_parity
from .results.provenance import provenance
from .results.provenance import to_markdown as provenance_markdown
from .results.parity import to_markdown as parity_markdown
from .results.plots import plot_table_curves
from .results.runs import Run, collect_runs, collect_wandb, export_runs
from .results.tabulate import pick_experiment, report_table, select_runs
from .tables import PAPER_ROWS, TABLES, Table, table as get_table


def write_all(runs: List[Run], out: Path, experiment: Optional[str], n_bootstrap: int,
              seeds: Optional[Sequence[int]] = None, unreadable: Sequence[str] = ()) -> Path:
    """Every table into ``out`` (REPORT.md) with CSV/JSON and learning-curve plots beside it;
    ``unreadable``: the run files that could not be read (listed at the top, not used)."""
    out_dir = out.parent
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = ["# Reproduction of \"Attention's Gravitational Field\": all tables", "",
             "Written by `python -m agf_exp.report --all`. Paper values: docs/paper.md / the paper "
             "(WMT17 en-de, Transformer-BIG 3+3 layers, FP16, OpenNMT-py validation accuracy).", ""]
    if unreadable:
        parts += [f"**Unreadable runs (not used):** {len(unreadable)}", ""]
        parts += [f"- unreadable: `{line}`" for line in unreadable] + [""]
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
    claims = evaluate_claims(runs, experiment, n_bootstrap)
    (out_dir / "claims.json").write_text(to_json(claims))
    parts += [claims_markdown(claims)]
    parts += [""] + speed_section(runs, experiment, out_dir)
    parts += provenance_markdown(provenance([r for r in runs if experiment is None or r.experiment == experiment]))
    parts += ["", analysis_appendix(claims)]
    out.write_text("\n".join(parts))
    refresh_decay_files(claims)
    return out


def refresh_decay_files(claims) -> None:
    """Each analysed run's ``analysis/decay.json`` gets the fits the report printed (its stored
    profiles refitted by the current rules, in the files' stable form), so that the file and the
    report never disagree; a file already current is left as it is."""
    for model in (claims.get("attention") or {}).get("models", []):
        path = Path(model["run"]) / "analysis" / "decay.json"
        fits = decay_fits(model["run"])
        if fits is None:
            continue
        data = json.loads(path.read_text())
        fresh = decay.stable_dicts(fits)
        if data.get("fits") != fresh:
            data["fits"] = fresh
            atomic_write_bytes(path, json.dumps(data, indent=1, default=float).encode())


def speed_section(runs: List[Run], experiment: Optional[str], out_dir: Path) -> List[str]:
    """The learning-speed section (its JSON and plot beside REPORT.md), over every paper row with runs."""
    rows = [row for row in PAPER_ROWS if any(r.row == row for r in runs)]
    if not rows:
        return []
    by_row, _, _ = select_runs(Table("speed", "", rows), runs, pick_experiment(runs, rows, experiment))
    labels = {row: PAPER_ROWS[row][0] for row in rows}
    result = learning_speed.learning_speed(by_row, learning_speed.rows_pe(runs))
    (out_dir / "learning_speed.json").write_text(to_json(result))
    if result["rows"]:
        learning_speed.plot(by_row, labels, out_dir / "curves" / "learning_speed.png")
    return learning_speed.to_markdown(result, labels)


def _lengthgen(args) -> int:
    """``report lengthgen``: the study's tables, verdicts and plots (REPORT.md, JSON, PNGs in --out's
    folder): the synthetic tasks, then the MT part when --runs holds its runs."""
    root = args.runs or Path("outputs/study")
    try:
        unreadable: List[str] = []
        collected = collect_runs(root, unreadable)
        runs, skipped = lengthgen.study_runs(collected)
        mt, mt_skipped = lengthgen_mt.mt_runs(collected)
        _warn(unreadable + skipped + mt_skipped)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not runs and not mt:
        print(f"error: no finished run of the length study below {root} (config study=lengthgen_synthetic or "
              "lengthgen_mt); train some with `python run.py +study=lengthgen_synthetic ...`", file=sys.stderr)
        return 2
    result = lengthgen.summarize(runs, args.bootstrap)
    text = lengthgen.to_markdown(result) if runs else "# Length generalization in an encoder-decoder\n\n"
    if mt:
        result["mt"] = lengthgen_mt.summarize(mt, args.bootstrap)
        text += "\n" + lengthgen_mt.to_markdown(result["mt"])
    mt_rank = lengthgen_mt.rank_task(mt) if mt else None
    result["ranking"] = lengthgen.ranking(lengthgen.rank_tasks(runs) + ([mt_rank] if mt_rank else []), args.bootstrap)
    text = text.rstrip("\n") + "\n\n" + "\n".join(lengthgen.ranking_markdown(result["ranking"]))
    if not args.out:
        sys.stdout.write(text)
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    (args.out.parent / "lengthgen.json").write_text(to_json(result))
    if runs:
        lengthgen.plot(result, args.out.parent)
    if mt:
        lengthgen_mt.plot(result["mt"], args.out.parent)
    print(f"wrote {args.out}")
    return 0


def _emit(text: str, out: Optional[Path]) -> int:
    """``text`` into ``out`` (its folder made), or onto stdout without one."""
    if out is None:
        sys.stdout.write(text)
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 0


def _warn(unreadable: Sequence[str]) -> None:
    for line in unreadable:
        print(f"unreadable: {line}", file=sys.stderr)


def _seed_list(text: str) -> List[int]:
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integer seeds, e.g. 1,2,3") from None


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agf_exp.report", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("table", nargs="?", help="table1 ... table6 (or 1 ... 6), or lengthgen (the length study)")
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
    parser.add_argument("--parity", type=Path, metavar="FP32_RUNS",
                        help="quality parity of the runs under --runs (another precision) against the fp32 runs "
                             "under FP32_RUNS, by the rule of docs/precision.md")
    args = parser.parse_args(argv)
    if args.parity:
        try:
            unreadable = []
            result = precision_parity(collect_runs(args.runs or Path("outputs/sweeps"), unreadable),
                                      collect_runs(args.parity, unreadable))
            _warn(unreadable)
        except ReportError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return _emit(parity_markdown(result), args.out)
    if args.table == "lengthgen":
        return _lengthgen(args)
    if args.export:
        root = args.runs or Path("outputs/sweeps")
        try:
            unreadable: List[str] = []
            written = export_runs(collect_runs(root, unreadable), root, args.export, args.experiment)
            _warn(unreadable)
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
        unreadable: List[str] = []
        if needs_runs:
            if args.wandb:
                spec = None if args.all else get_table(args.table)
                runs = collect_wandb(args.wandb, None if spec is None else [*spec.rows, *filter(None, [spec.baseline])],
                                     args.experiment)
            else:
                runs = collect_runs(args.runs or Path("outputs/sweeps"), unreadable)
                _warn(unreadable)
        if args.all:
            out = args.out or (args.runs or Path("outputs/sweeps")) / "REPORT.md"
            print(f"wrote {write_all(runs, out, args.experiment, args.bootstrap, args.seeds, unreadable)}")
            return 0
        result = report_table(args.table, runs, args.experiment, args.bootstrap, args.seeds)
    except (ReportError, KeyError) as e:
        print(f"error: {e.args[0] if e.args else e}", file=sys.stderr)
        return 2
    return _emit({"md": to_markdown, "csv": to_csv, "json": to_json}[args.format](result), args.out)


if __name__ == "__main__":
    sys.exit(main())
