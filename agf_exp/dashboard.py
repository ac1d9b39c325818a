"""W&B dashboards of a project, from one command: a saved workspace view per paper table and a W&B
Report of the reproduction (see :mod:`agf_exp.results.dashboards` for what each holds).

    python -m agf_exp.dashboard ENTITY/PROJECT                        # every table, experiment=small
    python -m agf_exp.dashboard ENTITY/PROJECT --tables table2,table4 --experiment paper
    python -m agf_exp.dashboard ENTITY/PROJECT --runs results/multi30k-small   # report statistics from local runs
    python -m agf_exp.dashboard ENTITY/PROJECT --runs results/multi30k-small --dry-run specs.json
    python -m agf_exp.dashboard ENTITY/PROJECT --study lengthgen       # the length study: a view per task

``--study lengthgen`` saves the length-generalization study's views instead (one per task: exact
match against the target length, or BLEU against the number of joined sentences, per arm; the
study's statistics and verdicts are REPORT.md's, ``python -m agf_exp.report lengthgen``).

The views and the report have fixed names per (table, experiment) and per experiment, so running
the command again (after more seeds finish) updates them in place; it prints their URLs. The
report's tables and claims are computed by the code that writes REPORT.md, from the runs in W&B
(``--wandb``'s reader of ``python -m agf_exp.report``) or, with ``--runs DIR``, from local run
dirs. ``--dry-run OUT.json`` builds everything without the network and writes the specs as JSON
(what wandb-workspaces would save; the report's runsets are bound to the project on save).

Everything is built before anything is saved; a failure while saving names what was already
saved (run the command again: it updates those and creates the rest).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from .results import ReportError
from .results.dashboards import (NO_VIEW, DashboardError, build_report, build_study_view, build_view, library,
                                 referenced_keys, report_content, report_title, study_tasks, study_view_slug,
                                 view_slug, view_tables)
from .results.runs import collect_runs, collect_wandb


def _project(path: str) -> tuple:
    parts = path.strip("/").split("/")
    if len(parts) != 2 or not all(parts):
        raise DashboardError(f"{path!r} is not ENTITY/PROJECT (e.g. my-team/agf-exp)")
    return parts[0], parts[1]


def _api():
    """``wandb.Api()``, or a one-line error when there is no API key (nothing is created then)."""
    import wandb

    try:
        return wandb.Api()
    except Exception as e:  # wandb raises UsageError without a key, and others when it cannot connect
        raise DashboardError(f"cannot reach W&B ({str(e).strip().splitlines()[0]}): nothing was created. Log in "
                             "(`wandb login` or WANDB_API_KEY) where the network reaches W&B, or build the specs "
                             "offline with --dry-run OUT.json") from None


def dry_run(views: List[Any], report: Any, out: Path) -> Dict[str, Any]:
    """The specs as JSON (the library's models of what it saves) with the run keys they read
    (``report`` None: views only)."""
    specs = {"views": {}, "report": None}
    for view in views:
        spec = view._to_model().model_dump(by_alias=True, exclude_none=True)
        specs["views"][view._internal_name] = {"name": view.name, "spec": spec, "reads": _sorted(referenced_keys(spec))}
    if report is not None:
        spec = report._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")
        specs["report"] = {"title": report.title, "spec": spec, "reads": _sorted(referenced_keys(spec))}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(specs, indent=1, default=str) + "\n")
    return specs


def _sorted(keys: Dict[str, set]) -> Dict[str, list]:
    return {kind: sorted(names) for kind, names in keys.items()}


def save(api: Any, entity: str, project: str, views: List[Any], report: Any) -> List[str]:
    """Save every view and the report (if any), updating the ones saved before (same names); their URLs."""
    from wandb_workspaces.workspaces import internal

    urls, saved = [], []
    try:
        for view in views:
            try:  # an existing view of this name is updated in place
                view._internal_id = internal.View.from_name(entity, project, view._internal_name).id
            except ValueError:
                pass  # not saved before: created with this name
            view.save()
            saved.append(view.name)
            urls.append(view.url)
        if report is not None:
            existing = [r for r in api.reports(f"{entity}/{project}") if r.display_name == report.title]
            if existing:
                report.id = existing[0].id
            report.save()
            urls.append(report.url)
    except DashboardError:
        raise
    except Exception as e:
        done = f" (saved already: {', '.join(saved)})" if saved else " (nothing was saved)"
        raise DashboardError(f"saving to W&B failed: {str(e).strip().splitlines()[0]}{done}; run the command again "
                             "to finish (it updates what exists)") from None
    return urls


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agf_exp.dashboard", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("project", metavar="ENTITY/PROJECT")
    parser.add_argument("--tables", help="comma-separated tables (default: every table with runs: "
                                         "table1,table2,table4,table5,table6)")
    parser.add_argument("--study", choices=["lengthgen"], help="the length-generalization study's views (one per "
                                                                "task) instead of the tables' views and report")
    parser.add_argument("--tasks", help="with --study: comma-separated tasks (default: copy,reverse,scan,multi30k)")
    parser.add_argument("--all", action="store_true", help="every table with runs (the default)")
    parser.add_argument("--experiment", default="small", help="the scale the views show (default small)")
    parser.add_argument("--runs", type=Path, help="the report's statistics from these local run dirs "
                                                  "(default: the project's runs in W&B)")
    parser.add_argument("--seeds", help="the seeds every row should have (as in agf_exp.report), e.g. 1,2,3,4,5")
    parser.add_argument("--bootstrap", type=int, default=1000, help="paired bootstrap resamples (default 1000)")
    parser.add_argument("--dry-run", type=Path, metavar="OUT.json", help="build without the network, write the specs")
    args = parser.parse_args(argv)
    try:
        entity, project = _project(args.project)
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
        tables = view_tables(None if args.all or not args.tables else args.tables.split(","))
        library()  # the missing-dependency line before any work
        if args.study:
            return _study(args, entity, project)
        if args.runs is None and args.dry_run:
            raise DashboardError("--dry-run has no network to read the runs from W&B: pass --runs DIR "
                                 "(e.g. results/multi30k-small) for the report's tables")
        api = None if args.dry_run else _api()  # no key or no network: one line, before any work
        unreadable: list = []
        runs = collect_runs(args.runs, unreadable) if args.runs else collect_wandb(f"{entity}/{project}", experiment=args.experiment, api=api)
        for line in unreadable:
            print(f"unreadable (not used): {line}", file=sys.stderr)
        views = [build_view(entity, project, t, args.experiment) for t in tables]
        content = report_content(runs, args.experiment, args.bootstrap, seeds)
        report = build_report(entity, project, args.experiment, content,
                              runset_scope="none" if args.dry_run else "project")
        if args.dry_run:
            specs = dry_run(views, report, args.dry_run)
            print(f"wrote {args.dry_run}: {len(specs['views'])} view(s) "
                  f"({', '.join(view_slug(t, args.experiment) for t in tables)}) and the report "
                  f"{report_title(args.experiment)!r}; nothing was sent to W&B")
            return 0
        for url in save(api, entity, project, views, report):
            print(url)
    except (DashboardError, ReportError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name, why in NO_VIEW.items():
        print(f"({name}: no view; {why})")
    return 0


def _study(args: argparse.Namespace, entity: str, project: str) -> int:
    """``--study lengthgen``: a view per task, no report (REPORT.md holds the study's statistics)."""
    if args.tables or args.runs:
        raise DashboardError("--study builds the study's views only: drop --tables / --runs")
    tasks = study_tasks(args.tasks.split(",") if args.tasks else None)
    views = [build_study_view(entity, project, task) for task in tasks]
    if args.dry_run:
        specs = dry_run(views, None, args.dry_run)
        print(f"wrote {args.dry_run}: {len(specs['views'])} view(s) ({', '.join(map(study_view_slug, tasks))}); "
              "nothing was sent to W&B")
        return 0
    for url in save(_api(), entity, project, views, None):
        print(url)
    return 0


if __name__ == "__main__":
    sys.exit(main())
