"""W&B dashboards as code (``python -m agf_exp.dashboard``): every key a view or the report reads
is one a real run logs (a run trained with ``logger=wandb`` offline, read back from its file);
the report's tables are REPORT.md's; saving twice updates the same views and report; without the
library or without an API key the command says so in one line and creates nothing."""
from __future__ import annotations

import builtins
import json

import pytest

pytest.importorskip("wandb_workspaces")

from agf_exp import dashboard  # noqa: E402
from agf_exp.results import dashboards  # noqa: E402
from agf_exp.results.format import to_markdown  # noqa: E402
from agf_exp.results.runs import collect_runs  # noqa: E402
from agf_exp.results.tabulate import report_table  # noqa: E402
from agf_exp.rundir import train  # noqa: E402
from agf_exp.tables import TABLES  # noqa: E402

from .conftest import make_cfg  # noqa: E402
from .test_wandb import offline_runs, read_finished  # noqa: E402

RUN = ["experiment=smoke", "row=agf_m_pcmv", "+table=table4", "trainer.decode_strategies=[beam]",
       "trainer.decode_splits=[valid,test]", "trainer.max_decode_sentences=10", "trainer.log_every_steps=1",
       "data.train_size=400", "data.valid_size=30", "data.test_size=30", "trainer.max_epochs=1", "logger=wandb",
       "logger.mode=offline"]


@pytest.fixture(scope="module")
def logged_run(tmp_path_factory):
    """A smoke run of a row with a learned field, logged to W&B offline: (run dir, what it logged)."""
    mp = pytest.MonkeyPatch()
    home = tmp_path_factory.mktemp("wandb")
    _isolate(home, mp)
    try:
        run = home / "sweeps" / "table4" / "smoke" / "agf_m_pcmv" / "seed1"
        train(make_cfg(*RUN), run)
        (wandb_file,) = offline_runs(run)
        yield run, read_finished(wandb_file)
    finally:
        mp.undo()


def _isolate(home, mp):
    """An isolated W&B home with a (fake) API key, as tests/test_wandb.py's ``wandb_env``."""
    mp.delenv("WANDB_MODE", raising=False)
    mp.setenv("WANDB_API_KEY", "agf-test-not-a-real-key-0123456789abcdef")
    for name in ("CACHE", "CONFIG", "DATA"):
        mp.setenv(f"WANDB_{name}_DIR", str(home / f"wandb-{name.lower()}"))
    mp.setenv("WANDB_SILENT", "true")


def _config_value(config, dotted):
    node = config
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"config key {dotted!r} is not in the run's config"
        node = node[part]
    return node


def test_every_key_a_dashboard_reads_is_logged_by_a_run(logged_run, tmp_path):
    run, logged = logged_run
    out = tmp_path / "specs.json"
    assert dashboard.main(["me/agf-exp", "--runs", str(run.parents[3]), "--experiment", "smoke", "--all",
                           "--bootstrap", "20", "--dry-run", str(out)]) == 0
    specs = json.loads(out.read_text())
    history = set().union(*(row.keys() for row in logged["history"]))
    # an image is logged as a nested record: <key>/_type == "image-file", <key>/path, ...
    history |= {k[:-len("/_type")] for row in logged["history"] for k, v in row.items()
                if k.endswith("/_type") and v == "image-file"}
    assert {"eval/val_acc", "fields/overview", "curves/learning_curves"} <= history  # the test reads a real run
    readers = [(name, v["reads"]) for name, v in specs["views"].items()] + [("report", specs["report"]["reads"])]
    assert len(readers) == 6  # tables 1, 2, 4, 5, 6 and the report
    for name, reads in readers:
        assert reads["history"] and reads["summary"] and reads["config"], name
        for key in reads["history"]:
            assert key in history, f"{name} plots {key!r}, which no run logs"
        for key in reads["summary"]:
            assert key in logged["summary"], f"{name} reads summary {key!r}, which no run has"
        for key in reads["config"]:
            _config_value(logged["config"], key)
    # a renamed metric breaks it: the same check on a spec reading a key the runs do not log
    renamed = dashboards.referenced_keys({"viewType": "Bar Chart", "config": {"metrics": ["final/val_accuracy"]}})
    assert not renamed["summary"] <= set(logged["summary"])


def test_views_filter_a_tables_rows_at_one_scale_grouped_by_row(tmp_path, logged_run):
    run, _ = logged_run
    out = tmp_path / "specs.json"
    assert dashboard.main(["me/agf-exp", "--runs", str(run.parents[3]), "--tables", "table5,6",
                           "--experiment", "paper", "--bootstrap", "20", "--dry-run", str(out)]) == 0
    views = json.loads(out.read_text())["views"]
    assert list(views) == ["nw-agf_table5_paper-v", "nw-agf_table6_paper-v"]
    runset = views["nw-agf_table6_paper-v"]["spec"]["spec"]["section"]["runSets"][0]
    filters = {f["key"]["name"]: (f["op"], f["value"]) for f in runset["filters"]["filters"]}
    assert filters == {"experiment": ("=", "paper"), "row": ("IN", list(TABLES["table6"].rows))}
    assert runset["grouping"] == [{"section": "config", "name": "row.value"}]
    assert "fields/overview" in views["nw-agf_table5_paper-v"]["reads"]["history"]


def test_the_reports_tables_are_report_mds(logged_run):
    run, _ = logged_run
    runs = collect_runs(run.parents[3])
    content = dashboards.report_content(runs, "smoke", n_bootstrap=20)
    for name in TABLES:
        assert content.tables[name] == to_markdown(report_table(name, runs, "smoke", 20))
    report = dashboards.build_report("me", "agf-exp", "smoke", content, runset_scope="none")
    text = json.dumps(report._to_model().model_dump(by_alias=True, exclude_none=True, mode="json"))
    assert json.dumps(dashboards._drop_heading(content.tables["table4"]))[1:-1] in text
    assert "The paper's claims" in text and report.title == "Reproduction of Attention's Gravitational Field (smoke)"


class FakeWandb:
    """What saving touches on the W&B side: views by internal name, reports by id."""

    def __init__(self):
        self.views, self.reports, self.calls = {}, {}, 0

    def install(self, monkeypatch):
        from wandb_workspaces.reports import v2 as wr
        from wandb_workspaces.workspaces import internal

        fake = self

        def from_name(cls, entity, project, name):
            if name not in fake.views:
                raise ValueError(f"Workspace `{name}` not found in project `{project}`")
            return type("Found", (), {"id": fake.views[name]})()

        def upsert(view):
            fake.calls += 1
            view_id = view.id or f"view{len(fake.views)}"
            fake.views[view.name] = view_id
            return {"upsertView": {"view": {"name": view.name, "id": view_id}}}

        def save_report(report, draft=False, clone=False):
            report.id = report.id or f"report{len(fake.reports)}"
            fake.reports[report.id] = report.title
            return report

        monkeypatch.setattr(internal.View, "from_name", classmethod(from_name))
        monkeypatch.setattr(internal, "upsert_view2", upsert)
        monkeypatch.setattr(wr.Report, "save", save_report)
        monkeypatch.setattr(wr.Report, "url", property(lambda r: f"https://wandb.test/reports/{r.id}"))
        monkeypatch.setattr(dashboards.library()[0].Workspace, "url",
                            property(lambda w: f"https://wandb.test/e/p?nw={w._internal_name}"))

    def reports_of(self, path):
        class Found:
            def __init__(self, id, title):
                self.id, self.display_name = id, title
        return [Found(i, t) for i, t in self.reports.items()]


def test_saving_again_updates_the_same_views_and_report(monkeypatch, logged_run):
    run, _ = logged_run
    fake = FakeWandb()
    fake.install(monkeypatch)
    api = type("Api", (), {"reports": lambda self, path: fake.reports_of(path)})()
    content = dashboards.report_content(collect_runs(run.parents[3]), "smoke", n_bootstrap=20)
    urls = []
    for _ in range(2):
        views = [dashboards.build_view("e", "p", t, "smoke") for t in dashboards.view_tables()]
        report = dashboards.build_report("e", "p", "smoke", content, runset_scope="none")
        urls.append(dashboard.save(api, "e", "p", views, report))
    assert urls[0] == urls[1] and len(urls[0]) == 6
    assert len(fake.views) == 5 and len(fake.reports) == 1 and fake.calls == 10


def test_without_the_library_it_says_how_to_install_it(monkeypatch, tmp_path, capsys):
    real_import = builtins.__import__

    def no_workspaces(name, *args, **kwargs):
        if name.startswith("wandb_workspaces"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_workspaces)
    out = tmp_path / "specs.json"
    assert dashboard.main(["me/agf-exp", "--runs", str(tmp_path), "--dry-run", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install" in err and "wandb-workspaces" in err
    assert not out.exists()


def test_without_an_api_key_nothing_is_created(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert dashboard.main(["me/agf-exp", "--runs", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--dry-run" in err and "nothing was created" in err
    assert dashboard.main(["me/agf-exp", "--dry-run", str(tmp_path / "x.json")]) == 2
    assert "pass --runs DIR" in capsys.readouterr().err
    assert dashboard.main(["not-a-project"]) == 2
    assert dashboard.main(["me/p", "--tables", "table3"]) == 2
    assert "worked example" in capsys.readouterr().err
