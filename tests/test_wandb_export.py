"""``python -m agf_exp.wandb_export``: finished run dirs become W&B runs with what a live run logs.

The committed reproduction (results/multi30k-small, 50 runs) is exported offline and every offline
run file is read back with wandb's own schema: every key a dashboard view or the report reads is
there for every run (but the learned-field images: drawn from a model, and the committed runs keep
no checkpoints); a second export adds nothing; RUNS_DIR is not touched. A run trained with
``logger=wandb`` and the same run dir exported afterwards carry the same config, identity,
summary keys, metric definitions and artifact types."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from agf_exp import dashboard, wandb_export
from agf_exp.results.dashboards import FIELD_IMAGE
from agf_exp.loggers import read_offline_run
from agf_exp.rundir import train

from .conftest import make_cfg
from .test_wandb import SECRET, read_finished

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "results" / "multi30k-small"


@pytest.fixture
def wandb_home(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    for name in ("CACHE", "CONFIG", "DATA"):
        monkeypatch.setenv(f"WANDB_{name}_DIR", str(tmp_path / f"wandb-{name.lower()}"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


def history_keys(logged):
    keys = set().union(*(row.keys() for row in logged["history"])) if logged["history"] else set()
    return keys | {k[:-len("/_type")] for row in logged["history"] for k, v in row.items()
                   if k.endswith("/_type") and v == "image-file"}


def _tree(root: Path):
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*") if p.is_file()}


def test_the_committed_reproduction_exports_with_every_key_the_dashboards_read(wandb_home, capsys):
    before = _tree(RESULTS)
    out = wandb_home / "export"
    assert wandb_export.main([str(RESULTS), "--dir", str(out), "--project", "team/agf-exp"]) == 0
    assert "51 exported" in capsys.readouterr().out
    files = sorted(out.rglob("run-*.wandb"))
    logged = [read_finished(f) for f in files]
    train_runs = [x for x in logged if x["run"]["job_type"] == "train"]
    assert len(train_runs) == 50 and len({x["run"]["id"] for x in train_runs}) == 50
    # every key a dashboard view or the report reads (their specs, built offline from the same runs)
    specs = wandb_home / "specs.json"
    assert dashboard.main(["team/agf-exp", "--runs", str(RESULTS), "--experiment", "small", "--bootstrap", "20",
                           "--dry-run", str(specs)]) == 0
    built = json.loads(specs.read_text())
    reads = [v["reads"] for v in built["views"].values()] + [built["report"]["reads"]]
    history = set().union(*(r["history"] for r in reads)) - {FIELD_IMAGE}  # drawn from a model: no checkpoints here
    summary = set().union(*(r["summary"] for r in reads))
    config = set().union(*(r["config"] for r in reads))
    assert {"eval/val_acc", "eval/epoch", "curves/learning_curves"} <= history
    assert {"final/val_acc", "paper/val_acc", "test/beam/bleu", "test/beam/chrf"} <= summary
    for x in train_runs:
        name = x["run"]["name"]
        assert history <= history_keys(x), (name, history - history_keys(x))
        assert summary <= set(x["summary"]), (name, summary - set(x["summary"]))
        for key in config:
            node = x["config"]
            for part in key.split("."):
                node = node[part]
        assert x["config"]["row"] and x["summary"]["decoded_from"].startswith("best.pt (epoch "), name
        assert x["summary"]["best/epoch"] and x["summary"]["best/val_acc"] == x["summary"]["eval/val_acc"]["max"]
        assert x["run"]["group"] == f"small/multi30k/{x['config']['run_name']}"
        assert name == f"{x['config']['run_name']} seed{x['config']['seed']}"
        assert sorted(a["type"] for a in x["artifacts"]) == ["tokenizer", "translations"], name
        evals = [h for h in x["history"] if "eval/val_acc" in h]
        assert len(evals) == 12 and x["summary"]["eval/val_acc"] == {"max": max(h["eval/val_acc"] for h in evals)}
        assert {"summary.json", "metrics.jsonl", "config.yaml", "hyps/test.beam.txt"} <= set(x["files"])
    (report,) = [x for x in logged if x["run"]["job_type"] == "report"]
    assert {"REPORT.md", "table4.json", "claims.json"} <= set(report["artifacts"][0]["files"])
    # one subword model, one artifact name for all (W&B keeps one version of it)
    assert len({a["name"] for x in train_runs for a in x["artifacts"] if a["type"] == "tokenizer"}) == 1

    # idempotent: nothing is exported twice; the runs dir is read, never written
    capsys.readouterr()
    assert wandb_export.main([str(RESULTS), "--dir", str(out), "--project", "team/agf-exp"]) == 0
    assert capsys.readouterr().out.startswith("0 exported, 51 skipped (already exported)")
    assert sorted(out.rglob("run-*.wandb")) == files
    assert _tree(RESULTS) == before
    index = json.loads((out / "exported.json").read_text())
    assert len(index["team/agf-exp"]) == 51


def test_an_exported_run_logs_what_the_live_run_logged(wandb_home):
    run = wandb_home / "run"
    summary = train(make_cfg("experiment=smoke", "pos=agf_m", "pcmv=true", "trainer.decode_strategies=[greedy]",
                             "trainer.max_decode_sentences=20", "data.train_size=400", "data.valid_size=40",
                             "data.test_size=40", "trainer.max_epochs=2", "trainer.log_every_steps=1", "logger=wandb",
                             "logger.mode=offline"), run)
    (live_file,) = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    live = read_finished(live_file)
    out = wandb_home / "export"
    # logged live: skipped unless forced
    result = wandb_export.export(run.parent, out=out, log=lambda _: None)
    assert result["exported"] == [] and "logged live" in result["skipped"][0][1]
    result = wandb_export.export(run.parent, out=out, force=True, log=lambda _: None)
    (exported_file,) = sorted(out.rglob("run-*.wandb"))
    exported = read_finished(exported_file)
    assert exported["run"]["id"] != summary["wandb_id"]
    for key in ("group", "name", "job_type", "tags"):
        assert exported["run"][key] == live["run"][key], key
    assert exported["config"] == live["config"]
    assert set(exported["summary"]) - {"_runtime", "_wandb/runtime"} == set(live["summary"]) - {"_runtime", "_wandb/runtime"}
    assert exported["metrics"] == live["metrics"]
    assert sorted(a["type"] for a in exported["artifacts"]) == sorted(a["type"] for a in live["artifacts"])
    assert history_keys(exported) == history_keys(live)  # fields/* too: the run dir has their PNGs
    live_acc = [h["eval/val_acc"] for h in live["history"] if "eval/val_acc" in h]
    assert [h["eval/val_acc"] for h in exported["history"] if "eval/val_acc" in h] == live_acc


def test_bad_input_is_one_line_and_exit_2(wandb_home, capsys):
    assert wandb_export.main([str(wandb_home / "nowhere")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    (wandb_home / "empty").mkdir()
    assert wandb_export.main([str(wandb_home / "empty"), "--dir", str(wandb_home / "x")]) == 2
    assert "no complete run dir" in capsys.readouterr().err
    assert wandb_export.main([str(RESULTS), "--project", "a/b/c"]) == 2
    assert "neither PROJECT nor ENTITY/PROJECT" in capsys.readouterr().err
    assert not (wandb_home / "x").exists()


def test_a_foreign_or_damaged_run_dir_is_left_out_with_one_line(wandb_home, capsys):
    import shutil

    runs = wandb_home / "runs"
    for seed in (1, 2):
        shutil.copytree(RESULTS / "table4" / "small" / "vanilla" / f"seed{seed}", runs / f"seed{seed}")
    (runs / "seed2" / "summary.json").write_bytes(b"\x00garbled{")
    assert wandb_export.main([str(runs), "--dir", str(wandb_home / "out")]) == 0
    captured = capsys.readouterr()
    assert "1 exported" in captured.out
    assert "left out (unreadable):" in captured.err and "seed2" in captured.err and "Traceback" not in captured.err
