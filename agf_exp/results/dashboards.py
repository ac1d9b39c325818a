"""W&B dashboards as code: one saved workspace view per paper table and one W&B Report of the
reproduction per scale, built with ``wandb-workspaces`` (W&B's own library; the ``[dashboards]``
extra). Building needs no network; :mod:`agf_exp.dashboard` saves what is built here.

A table's view shows the runs of that table's rows at one scale (``experiment``), grouped by
row so that seeds aggregate (mean ± sd band). The runs are chosen by their ``row``
and ``experiment`` config values, not by W&B group: a row is trained once per seed and shared by
every table that has it (``sweeps/reproduce_small.sh`` trains table 2's rows under ``+table=table4``),
as the report does. Every key a panel reads is one the runs log (``tests/test_dashboard.py``
trains a run with ``logger=wandb`` offline and checks each one):

* history: ``eval/val_acc``, ``eval/val_ppl`` (one point per evaluation, also against ``eval/epoch``),
  ``train/loss``; images ``curves/learning_curves`` and ``fields/overview`` (modes with a learned field);
* summary: ``final/val_acc`` (the last evaluation), ``paper/val_acc`` (the paper's value of the run's
  row), ``test/beam/bleu`` and ``test/beam/chrf`` (the final decoding);
* config: ``row``, ``experiment``, ``pos.name``, ``pcmv``, ``sco``, ``pe``, ``seed``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Set

from ..data.lengthgen import RANGES, TRAIN_MAX
from ..loggers import JOIN_X, LENGTH_X
from ..tables import PAPER_ROWS, TABLES, Table
from ..tables import table as get_table
from .claims import evaluate_claims
from .claims import to_markdown as claims_markdown
from .format import to_markdown
from .runs import Run
from .tabulate import report_table

INSTALL = 'pip install "agf-exp[dashboards]" (or pip install wandb-workspaces)'
HISTORY_CURVES = [("validation accuracy (%)", "eval/val_acc"), ("validation perplexity", "eval/val_ppl"),
                  ("training loss (label-smoothed, per token)", "train/loss")]
FINAL_BARS = [("final validation accuracy (%), ours beside the paper's (WMT17 en-de, Transformer-BIG)",
               ["final/val_acc", "paper/val_acc"]),
              ("test BLEU (beam; decoded from the checkpoint of `decoded_from`)", ["test/beam/bleu"])]
PARALLEL = ["pos.name", "pcmv", "sco", "pe", "seed"]  # config keys, then the scores below
PARALLEL_SCORES = ["final/val_acc", "test/beam/bleu", "test/beam/chrf"]
# the bands of every grouped panel: mean ± one standard deviation over seeds, the tables' "mean ± sd"
# (W&B offers min-max, sd, standard error or none; not the tables' 95 % t interval)
BAND = "stddev"
BAND_LABEL = "mean ± sd over seeds"
CURVE_IMAGE, FIELD_IMAGE = "curves/learning_curves", "fields/overview"
# tables without a view, and why
NO_VIEW = {"table3": "Table 3 is a worked example with no training run (`python -m agf_exp.report table3`)"}


class DashboardError(ValueError):
    """The dashboards cannot be built or saved; the message says why and what to do."""


def library():
    """``(workspaces, reports)`` modules of wandb-workspaces, or a one-line error naming the install."""
    try:
        import wandb_workspaces.reports.v2 as reports
        import wandb_workspaces.workspaces as workspaces
    except ImportError:
        raise DashboardError(f"the dashboards need wandb-workspaces, which is not installed: {INSTALL}") from None
    return workspaces, reports


def view_tables(names: Optional[Sequence[str]] = None) -> List[Table]:
    """The tables that get a view (every table with training runs when ``names`` is None)."""
    if names is None:
        return [t for t in TABLES.values() if t.rows]
    out = []
    for name in names:
        try:
            spec = get_table(name)
        except KeyError as e:
            raise DashboardError(e.args[0]) from None
        if spec.name in NO_VIEW:
            raise DashboardError(f"{spec.name} gets no view: {NO_VIEW[spec.name]}")
        out.append(spec)
    return out


def view_slug(table: Table, experiment: str) -> str:
    """The view's fixed internal name, so that saving again updates it instead of adding one
    (no ``nw-``/``-v``, which wandb-workspaces strips from URLs)."""
    return f"agf_{table.name}_{experiment}".replace("-", "_")


def _filters(workspaces, table: Table, experiment: str) -> list:
    return [workspaces.Config("experiment") == experiment, workspaces.Config("row").isin(list(table.rows))]


def _paper_values(table: Table) -> str:
    lines = [f"**{table.name.replace('table', 'Table ')}: {table.title}** — the paper's values (WMT17 en-de, "
             "Transformer-BIG 3+3, validation accuracy %):", "", "| row | paper |", "|---|---|"]
    lines += [f"| `{row}` {PAPER_ROWS[row][0]} | {PAPER_ROWS[row][1]:.4f} |" for row in table.rows]
    return "\n".join(lines)


def _panels(reports, table: Table, experiment: str) -> Dict[str, list]:
    """The view's sections: curves, final scores, configurations, images."""
    group = dict(groupby_aggfunc="mean", groupby_rangefunc=BAND)
    relative = any(row != "vanilla" for row in table.rows)  # every other row has a learned field
    return {
        f"Learning curves ({BAND_LABEL})": [
            reports.LinePlot(title=title, x="Step", y=[key], **group) for title, key in HISTORY_CURVES],
        f"Learning speed ({BAND_LABEL})": [
            reports.LinePlot(title="validation accuracy (%) by epoch (REPORT.md's learning-speed section)",
                             x="eval/epoch", y=["eval/val_acc"], **group)],
        f"Final scores per row ({BAND_LABEL})": [
            *(reports.BarPlot(title=title, metrics=keys, **group) for title, keys in FINAL_BARS),
            reports.MarkdownPanel(markdown=_paper_values(table))],
        "Configurations": [
            reports.ParallelCoordinatesPlot(
                title=f"{', '.join(PARALLEL)} -> {', '.join(PARALLEL_SCORES)}",
                columns=[*(reports.ParallelCoordinatesPlotColumn(metric=reports.Config(k)) for k in PARALLEL),
                         *(reports.ParallelCoordinatesPlotColumn(metric=reports.SummaryMetric(k))
                           for k in PARALLEL_SCORES)]),
            reports.RunComparer(diff_only="split")],
        "Images": [reports.MediaBrowser(title="learning curves", media_keys=[CURVE_IMAGE])]
        + ([reports.MediaBrowser(title="learned positional fields", media_keys=[FIELD_IMAGE])] if relative else []),
    }


def build_view(entity: str, project: str, table: Table, experiment: str):
    """The saved workspace view of one paper table at one scale (a ``wandb_workspaces`` Workspace)."""
    workspaces, reports = library()
    sections = [workspaces.Section(name=name, panels=panels, is_open=True)
                for name, panels in _panels(reports, table, experiment).items()]
    view = workspaces.Workspace(
        entity=entity, project=project, name=f"agf-exp {table.name} ({experiment}): {table.title}"[:128],
        sections=sections,
        runset_settings=workspaces.RunsetSettings(filters=_filters(workspaces, table, experiment),
                                                  groupby=[workspaces.Config("row")]))
    view._internal_name = f"nw-{view_slug(table, experiment)}-v"
    return view


# ------------------------------------------------------------------------------------------------
# the length-generalization study (docs/lengthgen.md): one view per task


#: the study's tasks and the study (sweep) each belongs to: the synthetic tasks with length ranges, then MT
STUDY_TASKS = {**{task: "lengthgen_synthetic" for task in RANGES}, "multi30k": "lengthgen_mt"}


def study_tasks(names: Optional[Sequence[str]] = None) -> List[str]:
    """The study's tasks that get a view (all of them when ``names`` is None)."""
    if names is None:
        return list(STUDY_TASKS)
    unknown = [n for n in names if n not in STUDY_TASKS]
    if unknown:
        raise DashboardError(f"no length-study view for {', '.join(unknown)}: the tasks are {', '.join(STUDY_TASKS)}")
    return list(names)


def study_view_slug(task: str) -> str:
    return f"agf_lengthgen_{task}"


def _study_panels(reports, task: str) -> Dict[str, list]:
    group = dict(groupby_aggfunc="mean", groupby_rangefunc=BAND)
    learning = [reports.LinePlot(title="validation accuracy (%) (in distribution; not used to choose the checkpoint)",
                                 x="Step", y=["eval/val_acc"], **group)]
    if STUDY_TASKS[task] == "lengthgen_mt":
        text = ("**Multi30k, train short / test long** (docs/lengthgen.md, MT part): trained on pairs whose source "
                "has ≤ 12 words, decoded with the last weights. x = k, the number of consecutive test sentences "
                "joined into one input (k = 1: test_2016_flickr). The robustness ratio and the verdicts are in "
                "REPORT.md (`python -m agf_exp.report lengthgen`).")
        return {
            f"Length generalization ({BAND_LABEL})": [
                reports.LinePlot(title="test BLEU against k joined sentences", x=JOIN_X, y=["lengthgen/join_bleu"],
                                 **group),
                reports.LinePlot(title="test chrF against k joined sentences", x=JOIN_X, y=["lengthgen/join_chrf"],
                                 **group),
                reports.BarPlot(title="test BLEU (beam): single sentences and 8 joined",
                                metrics=["test/beam/bleu", "test_join8/beam/bleu"], **group),
                reports.MarkdownPanel(markdown=text)],
            f"Training ({BAND_LABEL})": learning}
    ranges = RANGES[task]
    text = (f"**{task}** (docs/lengthgen.md): trained on targets of ≤ {TRAIN_MAX[task]} tokens, the same budget for "
            "every arm, decoded greedily with the last weights. Exact match (%) of the test split per target "
            "length; ranges: " + "; ".join(f"{rg.name} = {rg.low}-{rg.high}" for rg in ranges) + ". A seed solves a "
            "range at ≥ 90 %. Intervals over seeds, the paired bootstrap against sinusoidal and the verdicts are in "
            "REPORT.md (`python -m agf_exp.report lengthgen`).")
    return {
        f"Length generalization ({BAND_LABEL})": [
            reports.LinePlot(title=f"test exact match (%) against the target length (trained ≤ {TRAIN_MAX[task]})",
                             x=LENGTH_X, y=["lengthgen/test_em"], **group),
            reports.BarPlot(title="test exact match (%) per length range",
                            metrics=[f"lengthgen/test_em/{rg.key}" for rg in ranges], **group),
            reports.MarkdownPanel(markdown=text)],
        f"Training ({BAND_LABEL})": learning}


def build_study_view(entity: str, project: str, task: str):
    """The saved workspace view of the length study on one task: its runs (by ``study`` and
    ``data.name``) grouped by ``arm``."""
    workspaces, reports = library()
    sections = [workspaces.Section(name=name, panels=panels, is_open=True)
                for name, panels in _study_panels(reports, task).items()]
    view = workspaces.Workspace(
        entity=entity, project=project, name=f"agf-exp length generalization: {task}", sections=sections,
        runset_settings=workspaces.RunsetSettings(
            filters=[workspaces.Config("study") == STUDY_TASKS[task], workspaces.Config("data.name") == task],
            groupby=[workspaces.Config("arm")]))
    view._internal_name = f"nw-{study_view_slug(task)}-v"
    return view


@dataclass
class ReportContent:
    """What the W&B Report says, from the same code as REPORT.md: per table its Markdown, and
    the claims section."""

    tables: Dict[str, str]
    claims: str


def report_content(runs: List[Run], experiment: str, n_bootstrap: int = 1000,
                   seeds: Optional[Sequence[int]] = None) -> ReportContent:
    tables = {name: to_markdown(report_table(name, runs, experiment, n_bootstrap, seeds)) for name in TABLES}
    return ReportContent(tables, claims_markdown(evaluate_claims(runs, experiment, n_bootstrap)))


def report_title(experiment: str) -> str:
    return f"Reproduction of Attention's Gravitational Field ({experiment})"


def build_report(entity: str, project: str, experiment: str, content: ReportContent, runset_scope: str = "project"):
    """The W&B Report of the reproduction at one scale: per table a heading, its Markdown table
    (paper values and our statistics) and, for tables with runs, a panel grid bound to the
    table's runs; then the claims with their verdicts. ``runset_scope="none"`` leaves the runsets'
    project unset (resolving it needs the network; the saved report binds them to the project)."""
    workspaces, reports = library()
    scoped = dict(entity=entity, project=project) if runset_scope == "project" else {}
    blocks: List[Any] = [
        reports.MarkdownBlock(
            f"Every table of the paper at `experiment={experiment}`, beside the paper's numbers, with the "
            "statistics of `python -m agf_exp.report` (seeds: mean ± std, 95% intervals, paired bootstrap "
            "of test BLEU) and the claims' verdicts. Written by `python -m agf_exp.dashboard`; run it again "
            "after more runs finish to update this report."),
        reports.TableOfContents()]
    group = dict(groupby_aggfunc="mean", groupby_rangefunc=BAND)
    for name, table in TABLES.items():
        blocks += [reports.H2(f"{name.replace('table', 'Table ')}: {table.title}"),
                   reports.MarkdownBlock(_drop_heading(content.tables[name]))]
        if table.rows and name != "table1":
            runset = reports.Runset(name=f"{name} rows ({experiment})", filters=_filters(workspaces, table, experiment),
                                    groupby=["config.row"], **scoped)
            blocks.append(reports.PanelGrid(runsets=[runset], panels=[
                reports.LinePlot(title=f"validation accuracy (%) ({BAND_LABEL})", x="Step", y=["eval/val_acc"], **group),
                *(reports.BarPlot(title=title, metrics=keys, **group) for title, keys in FINAL_BARS)]))
    blocks += [reports.H2("The paper's claims"), reports.MarkdownBlock(_drop_heading(content.claims))]
    return reports.Report(entity=entity, project=project, title=report_title(experiment), width="fluid",
                          description="agf-exp: the paper's tables and claims with statistics", blocks=blocks)


def _drop_heading(markdown: str) -> str:
    """A REPORT.md section without its own heading line (the report block has one)."""
    lines = markdown.split("\n")
    return "\n".join(lines[1:]).strip() + "\n" if lines and lines[0].startswith("#") else markdown


# ------------------------------------------------------------------------------------------------
# what a spec refers to (tested against the keys a real run logs)


def referenced_keys(spec: Any) -> Dict[str, Set[str]]:
    """Every run key a serialised spec (a view's or a report's ``_to_model().model_dump``) reads:
    ``history`` (line plots, media), ``summary`` (bars, parallel-coordinates metrics), ``config``
    (filters, grouping, parallel-coordinates axes), as the runs name them (``pos.name``)."""
    out: Dict[str, Set[str]] = {"history": set(), "summary": set(), "config": set()}

    def config_name(name: str) -> str:  # W&B stores config values as <key>.value[.<nested>]
        parts = [p for p in name.split(".") if p != "value"]
        return ".".join(parts)

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            kind, config = node.get("viewType"), node.get("config") or {}
            if kind == "Run History Line Plot":
                out["history"].update(config.get("metrics", []))
                x = config.get("xAxis")
                if isinstance(x, str) and x and not x.startswith("_"):  # _step, _timestamp: W&B's own
                    out["history"].add(x)
            elif kind == "Bar Chart":
                out["summary"].update(config.get("metrics", []))
            elif kind == "Media Browser":
                out["history"].update(config.get("mediaKeys", []))
            elif kind == "Parallel Coordinates Plot":
                for column in config.get("columns", []):
                    section, _, name = column["accessor"].partition(":")
                    out["config" if section == "config" else "summary"].add(
                        config_name(name) if section == "config" else name)
            if node.get("section") == "config" and isinstance(node.get("name"), str):
                out["config"].add(config_name(node["name"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(spec)
    return out
