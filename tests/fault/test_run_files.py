"""Damaged or foreign run files: metrics.jsonl, summary.json, config.yaml, and the report over many
runs (issue 43, parts 3 and 4).

| case | before | now |
|---|---|---|
| a counted metrics.jsonl line cut in half (power loss), then resume | next record glued on, JSONDecodeError at the end, the run could never finish | the checkpoint's copy of its evaluations rewrites the file; the run finishes |
| the same with a format-1 last.pt (no copy) | as above | one line naming the line and what to do, nothing changed |
| summary.json cut short, or `[]` | JSONDecodeError / AttributeError traceback on rerun | the summary is written again from last.pt |
| config.yaml of a finished run garbled | yaml traceback | one line naming the file, nothing changed |
| config.yaml with `${oc.env:VAR}` | resolved from the environment when read | refused, never resolved |
| one run's summary / metrics / config damaged, then `report --all` | traceback, the whole report lost | the report is written; the run is listed as "unreadable: FILE: reason" |
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from agf_exp import report
from agf_exp.config import ConfigError
from agf_exp.results.runs import collect_runs
from agf_exp.runfiles import RunFileError, read_config
from agf_exp.rundir import train
from agf_exp.training import TrainingError

from .conftest import cfg_for, snapshot

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "results" / "multi30k-small"


def _cut_last_line(path: Path) -> str:
    text = path.read_text()
    lines = text.splitlines(keepends=True)
    whole = lines[-1]
    path.write_text("".join(lines[:-1]) + whole[: len(whole) // 2])
    return whole


def test_a_counted_metrics_line_cut_in_half_is_rewritten_from_last_pt(old_run):
    train(cfg_for(old_run, "trainer.max_epochs=2"), old_run)  # last.pt of this version: it keeps its evaluations
    metrics = old_run / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    _cut_last_line(metrics)  # what a power loss can leave of the line last.pt counts
    summary = train(cfg_for(old_run, "trainer.max_epochs=3"), old_run)
    assert summary["status"] == "complete" and summary["epochs"] == 3
    again = metrics.read_text().splitlines()
    assert again[:2] == lines and len(again) == 3
    assert [json.loads(line)["epoch"] for line in again] == [1, 2, 3]


def test_a_cut_line_with_an_old_last_pt_is_one_line_and_changes_nothing(old_run):
    _cut_last_line(old_run / "metrics.jsonl")
    before = snapshot(old_run)
    with pytest.raises(TrainingError, match=r"metrics\.jsonl line 1 is not whole .* restore the line") as info:
        train(cfg_for(old_run, "trainer.max_epochs=2"), old_run)
    assert "\n" not in str(info.value)
    assert snapshot(old_run) == before


@pytest.mark.parametrize("damage", ["cut short", "a list"])
def test_a_bad_summary_is_written_again(old_run, damage):
    summary_path = old_run / "summary.json"
    text = summary_path.read_text()
    summary_path.write_text(text[: len(text) // 2] if damage == "cut short" else "[]")
    summary = train(cfg_for(old_run, "trainer.max_epochs=1"), old_run)
    assert summary["status"] == "complete" and summary["epochs"] == 1
    assert json.loads(summary_path.read_text())["status"] == "complete"


def test_a_garbled_config_of_a_finished_run_is_one_line(old_run):
    (old_run / "config.yaml").write_text("trainer: {max_epochs: 1\n  : [\n")
    before = snapshot(old_run)
    with pytest.raises(ConfigError, match=r"config\.yaml: not a readable YAML config .* restore the file") as info:
        train(cfg_for(old_run, "trainer.max_epochs=1"), old_run)
    assert "\n" not in str(info.value)
    assert snapshot(old_run) == before


def test_run_files_never_resolve_interpolations(tmp_path, monkeypatch):
    monkeypatch.setenv("AGF_SECRET", "hunter2")
    path = tmp_path / "config.yaml"
    path.write_text("seed: 1\nwandb_key: ${oc.env:AGF_SECRET}\n")
    with pytest.raises(RunFileError, match="interpolation") as info:
        read_config(path)
    assert "hunter2" not in str(info.value)
    path.write_text("!!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(RunFileError, match="not a readable YAML config"):
        read_config(path)


def _copy_runs(dest: Path, rows=("vanilla", "agf"), seeds=(1, 2, 3)) -> list:
    copied = []
    for row in rows:
        for seed in seeds:
            src = next(COMMITTED.glob(f"*/small/{row}/seed{seed}"))
            target = dest / src.relative_to(COMMITTED)
            shutil.copytree(src, target)
            copied.append(target)
    return copied


DAMAGE = {
    "summary.json cut short": lambda run: (run / "summary.json").write_text((run / "summary.json").read_text()[:200]),
    "metrics.jsonl line cut": lambda run: _cut_last_line(run / "metrics.jsonl"),
    "config.yaml garbled": lambda run: (run / "config.yaml").write_bytes(b"\xff\xfe\x00garbage: [\n"),
    "config.yaml with ${oc.env:...}": lambda run: (run / "config.yaml").write_text(
        (run / "config.yaml").read_text() + "leak: ${oc.env:HOME}\n"),
}


def test_the_report_reads_every_run_on_its_own(tmp_path, capsys):
    """Four of six runs each damaged in another way: the report is still written, from the two
    readable runs, and names each unreadable file with its reason."""
    runs = _copy_runs(tmp_path / "runs")
    damaged = dict(zip(DAMAGE, runs[1:]))
    for name, run in damaged.items():
        DAMAGE[name](run)
    unreadable = []
    assert len(collect_runs(tmp_path / "runs", unreadable)) == 2 and len(unreadable) == 4
    out = tmp_path / "REPORT.md"
    assert report.main(["--all", "--runs", str(tmp_path / "runs"), "--experiment", "small", "--bootstrap", "20",
                        "--out", str(out)]) == 0
    err = capsys.readouterr().err
    text = out.read_text()
    assert "**Unreadable runs (not used):** 4" in text
    for name, run in damaged.items():
        file = "summary.json" if "summary" in name else "metrics.jsonl" if "metrics" in name else "config.yaml"
        assert f"unreadable: `{run / file}: " in text, name
        assert f"unreadable: {run / file}: " in err, name
    assert "line 12 is not valid JSON" in text and "not UTF-8 text" in text and "interpolation" in text
    table2 = text.split("### Table 2")[1].split("###")[0]  # the two readable runs, one per row, are in it
    assert "| 1 |" in table2 and table2.count("| 1 |") == 2
