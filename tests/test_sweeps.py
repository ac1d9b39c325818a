"""The paper's table sweeps: configs agree with the table definitions, every sweep runs at
`experiment=smoke` with one seed end to end through the report, re-runs skip finished runs, and
run dirs are stable (row/seed) so interrupted and extended runs resume."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agf_exp import report
from agf_exp.results.format import to_markdown
from agf_exp.results.runs import collect_runs
from agf_exp.results.tabulate import report_table
from agf_exp.config import ConfigError
from agf_exp.tables import PAPER_ROWS, TABLES
from agf_exp.rundir import train

from .conftest import make_cfg

ROOT = Path(__file__).resolve().parent.parent
# a seconds-long smoke run: one epoch on 400 synthetic pairs, 20 sentences decoded greedily
FAST = ["experiment=smoke", "trainer.max_epochs=1", "data.train_size=400", "data.valid_size=40", "data.test_size=40",
        "trainer.decode_strategies=[greedy]", "trainer.max_decode_sentences=20"]

# the paper's rows (docs/paper.md): (positional mode, PE, PCM-V, SCO)
PAPER_ROW_TOGGLES = {
    "vanilla": ("none", True, False, False),
    "agf": ("agf", False, False, False),
    "agf_m": ("agf_m", False, False, False),
    "agf_pcmv": ("agf", False, True, False),
    "agf_m_pcmv": ("agf_m", False, True, False),
    "alibi_bl": ("alibi_bl", False, False, False),
    "alibi_bl_pcmv_exp": ("alibi_bl", False, True, False),
    "alibi_bl_mul_pcmv": ("alibi_bl_mul", False, True, False),
    "agf_m_sco_pe": ("agf_m", True, False, True),
    "agf_m_sco_pcmv_pe": ("agf_m", True, True, True),
}


@pytest.mark.parametrize("row", sorted(PAPER_ROWS))
def test_row_config_has_the_papers_toggles(row):
    cfg = make_cfg(f"row={row}")
    assert (cfg.pos.name, cfg.pe, cfg.pcmv, cfg.sco) == PAPER_ROW_TOGGLES[row]
    assert cfg.row == row and cfg.run_name == row


@pytest.mark.parametrize("name", sorted(TABLES))
def test_sweep_configs_match_the_table_definitions(name):
    spec = TABLES[name]
    sweep = yaml.safe_load((ROOT / "sweeps/table" / f"{name}.yaml").read_text())
    assert sweep["table"] == name
    if not spec.rows:  # table 3: nothing to train, and asking to train it says so
        assert "hydra" not in sweep
        with pytest.raises(ConfigError, match="report table3"):
            train(make_cfg("+table=table3", *FAST), ROOT / "outputs/never-created")
        return
    params = sweep["hydra"]["sweeper"]["params"]
    assert params["row"].split(",") == spec.rows and str(params["seed"]).split(",") == ["1", "2", "3", "4", "5"]
    assert sweep["hydra"]["mode"] == "MULTIRUN"
    wandb_sweep = yaml.safe_load((ROOT / "sweeps/table" / f"{name}.wandb.yml").read_text())
    assert wandb_sweep["parameters"]["row"]["values"] == spec.rows
    assert wandb_sweep["parameters"]["seed"]["values"] == [1, 2, 3, 4, 5]  # as the committed reproduction
    assert wandb_sweep["parameters"]["experiment"]["values"] == ["small"]  # the scale is a parameter
    assert wandb_sweep["metric"] == {"name": "final/val_acc", "goal": "maximize"}
    assert not any(a.startswith("experiment=") for a in wandb_sweep["command"])
    assert "${args_no_hyphens}" in wandb_sweep["command"] and f"+table={name}" in wandb_sweep["command"]
    # what one W&B agent job composes: a single run of one row, with the table as W&B group
    fixed = [a for a in wandb_sweep["command"] if not a.startswith("${") and not a.startswith("hydra.")]
    cfg = make_cfg(*fixed, "experiment=small", f"row={spec.rows[-1]}", "seed=2")
    assert cfg.table == name and cfg.row == spec.rows[-1] and cfg.seed == 2 and cfg.logger.name == "wandb"
    assert cfg.experiment == "small"


def test_joblib_launcher_is_configured(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "run.py"), "+table=table2", "hydra/launcher=joblib",
                          "hydra.launcher.n_jobs=2", "--cfg", "hydra"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert "JoblibLauncher" in out.stdout and "n_jobs: 2" in out.stdout


def run_sweep(name: str, cwd: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), f"+table={name}", "seed=1",
                           *FAST, *extra], cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    """Every table's sweep at smoke scale with seed 1, in the default stable layout under cwd."""
    cwd = tmp_path_factory.mktemp("sweeps")
    for name, spec in TABLES.items():
        if spec.rows:
            out = run_sweep(name, cwd)
            assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return cwd


def test_every_sweep_writes_stable_run_dirs(swept):
    for name, spec in TABLES.items():
        for row in spec.rows:
            run = swept / "outputs/sweeps" / name / "smoke" / row / "seed1"
            summary = json.loads((run / "summary.json").read_text())
            assert summary["status"] == "complete" and summary["row"] == row and summary["table"] == name
            assert (run / "hyps/test.ref.txt").is_file() and (run / "curves.png").is_file()


@pytest.mark.parametrize("name", ["table1", "table2", "table4", "table5", "table6"])
def test_report_of_each_table(swept, name, tmp_path):
    out = tmp_path / f"{name}.json"
    assert report.main([name, "--runs", str(swept / "outputs/sweeps"), "--format", "json", "--out", str(out),
                        "--bootstrap", "200"]) == 0
    result = json.loads(out.read_text())
    assert result["experiment"] == "smoke" and not result["unfinished"] and not result["missing"]
    if name == "table1":
        ours = {i["item"]: i["ours"] for i in result["setup"]}
        assert ours["Number of layers"] == "2 encoder + 2 decoder" and "d_model 128" in ours["Base architecture"]
        assert "cpu" in ours["Hardware"] and "h wall per run" in ours["Training duration"]
        return
    spec = TABLES[name]
    assert [r["row"] for r in result["rows"]] == spec.rows
    for r in result["rows"]:
        assert r["val_acc"]["n"] == 1 and r["paper"] == PAPER_ROWS[r["row"]][1]
        assert r["runs"] == [str(swept / "outputs/sweeps" / name / "smoke" / r["row"] / "seed1")]
        if r["row"] == spec.baseline:
            assert r["diff"] is None and r["bootstrap"] is None
        else:
            assert r["diff"] is not None and 0 < r["bootstrap"]["p"] <= 1 and r["bootstrap"]["sentences"] == 20


def test_report_all_writes_every_table(swept, tmp_path):
    out = tmp_path / "REPORT.md"
    assert report.main(["--all", "--runs", str(swept / "outputs/sweeps"), "--out", str(out), "--bootstrap", "100"]) == 0
    text = out.read_text()
    for n in range(1, 7):
        assert f"### Table {n}:" in text
    assert "## The paper's claims at this scale" in text and "(fewer than 2 seeds)" in text  # seed 1 only
    assert len(json.loads((tmp_path / "claims.json").read_text())["claims"]) == 9
    for name in ("table2", "table4", "table5", "table6"):
        assert (tmp_path / "curves" / f"{name}.png").is_file() and f"curves/{name}.png" in text
        assert (tmp_path / f"{name}.csv").read_text().startswith("row,label,paper")


def test_exported_runs_give_the_same_report(swept, tmp_path):
    """`--export` copies what the report reads (no checkpoints); the report of the copy equals
    the report of the original run dirs, bootstrap included."""
    src, dest = swept / "outputs/sweeps", tmp_path / "results"
    assert report.main(["--export", str(dest), "--runs", str(src), "--experiment", "smoke"]) == 0
    assert not list(dest.rglob("*.pt")) and (dest / "table4/smoke/agf_m_pcmv/seed1/hyps/test.ref.txt").is_file()

    def without_paths(obj):
        if isinstance(obj, dict):
            return {k: without_paths(v) for k, v in obj.items() if k not in ("runs", "duplicates_ignored", "unfinished")}
        return [without_paths(v) for v in obj] if isinstance(obj, list) else obj

    for name in ("table1", "table4"):
        a = report_table(name, collect_runs(src), "smoke", n_bootstrap=200)
        b = report_table(name, collect_runs(dest), "smoke", n_bootstrap=200)
        assert without_paths(a) == without_paths(b)


def test_rerun_skips_finished_runs(swept):
    summaries = sorted((swept / "outputs/sweeps/table5/smoke").rglob("summary.json"))
    before = [p.stat().st_mtime_ns for p in summaries]
    out = run_sweep("table5", swept)
    assert out.returncode == 0 and out.stdout.count("skipping") + out.stderr.count("skipping") == 3
    assert [p.stat().st_mtime_ns for p in summaries] == before


def test_report_lists_missing_and_unfinished_runs(swept, tmp_path):
    runs = tmp_path / "runs"
    shutil.copytree(swept / "outputs/sweeps/table2", runs / "table2")
    (runs / "table2/smoke/agf/seed1/summary.json").unlink()  # interrupted before its summary
    shutil.rmtree(runs / "table2/smoke/agf_m")  # never ran
    result = report_table("table2", collect_runs(runs), n_bootstrap=50)
    assert result["unfinished"] == [str(runs / "table2/smoke/agf/seed1")]
    assert sorted(result["missing"]) == ["agf: no finished run", "agf_m: no finished run"]  # not also per seed
    md = to_markdown(result)
    assert "Unfinished" in md and "Missing" in md


def test_interrupted_sweep_run_resumes_without_retraining(swept, tmp_path):
    """A run killed after training but before its summary finishes from last.pt on the re-run."""
    runs = tmp_path / "outputs/sweeps"
    shutil.copytree(swept / "outputs/sweeps/table6", runs / "table6")
    run = runs / "table6/smoke/agf_m_sco_pe/seed1"
    metrics_before = (run / "metrics.jsonl").read_text()
    (run / "summary.json").unlink()
    out = run_sweep("table6", tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"
    assert (run / "metrics.jsonl").read_text() == metrics_before  # no epoch was trained again


def test_finished_run_with_another_config_is_refused_and_longer_budget_continues(tmp_path):
    run = tmp_path / "run"
    first = train(make_cfg(*FAST, "row=agf_m"), run)
    with pytest.raises(ConfigError, match="different config.*trainer.lr"):
        train(make_cfg(*FAST, "row=agf_m", "trainer.lr=0.01"), run)
    again = train(make_cfg(*FAST, "row=agf_m"), run)
    assert again == first
    longer = train(make_cfg(*FAST, "row=agf_m", "trainer.max_epochs=2"), run)
    assert longer["epochs"] == 2 and len((run / "metrics.jsonl").read_text().splitlines()) == 2


def test_naming_the_subword_model_a_finished_run_used_keeps_it_complete(tmp_path):
    """reproduce_small.sh now passes data.subword_file; runs finished before (no such key) still
    count as complete when the file is the model they recorded, and not when it is another."""
    import hashlib

    from omegaconf import OmegaConf

    from agf_exp.config import to_container
    from agf_exp.rundir import completed_summary

    old = to_container(make_cfg("experiment=small", "row=agf_m"))
    del old["data"]["subword_file"]
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(old)))
    model = tmp_path / "unigram8000.model"
    model.write_bytes(b"the model bytes")
    summary = {"status": "complete", "tokenizer": {"sha256": hashlib.sha256(b"the model bytes").hexdigest()}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    cfg = make_cfg("experiment=small", "row=agf_m", f"data.subword_file={model}")
    assert completed_summary(cfg, tmp_path) == summary
    model.write_bytes(b"another model")
    with pytest.raises(ConfigError, match=r"data.subword_file: None -> "):
        completed_summary(cfg, tmp_path)


def test_options_added_after_a_run_finished_do_not_make_it_a_different_run(tmp_path):
    """A finished run's config.yaml lacks options added to the code later: at their default they
    are no difference (the run is still complete); set to anything else they are."""
    from omegaconf import OmegaConf

    from agf_exp.config import to_container
    from agf_exp.rundir import completed_summary

    cfg = make_cfg("experiment=small", "row=agf_m")
    old = to_container(cfg)
    del old["trainer"]["save_every_steps"], old["data"]["verify_checksum"], old["sco"]
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.create(old)))
    (tmp_path / "summary.json").write_text(json.dumps({"status": "complete", "steps": 7}))
    assert completed_summary(cfg, tmp_path) == {"status": "complete", "steps": 7}
    with pytest.raises(ConfigError, match=r"trainer.save_every_steps: None -> 100"):
        completed_summary(make_cfg("experiment=small", "row=agf_m", "trainer.save_every_steps=100"), tmp_path)
    with pytest.raises(ConfigError, match=r"sco: None -> True"):
        completed_summary(make_cfg("experiment=small", "row=agf_m_sco_pe", "pe=false"), tmp_path)


@pytest.mark.parametrize("jobs", ["1", "3"])
def test_reproduce_script_trains_every_row_once_per_seed(tmp_path, jobs):
    """sweeps/reproduce_small.sh, run with a stand-in `python` that records its arguments: every
    row of every table is trained exactly once per seed, in a dir its table's sweep uses; one
    failed run (parallel mode) does not stop the others but fails the script."""
    shutil.copytree(ROOT / "sweeps", tmp_path / "sweeps")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "calls.txt"
    (bin_dir / "python").write_text(
        '#!/bin/sh\necho "$*" >> "$CALLS"\n'
        'case "$*" in *"row=$FAIL_ROW seed=2 "*) exit 1;; esac\n')
    (bin_dir / "python").chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "MULTI30K_ROOT": str(tmp_path), "CALLS": str(calls),
           "AGF_JOBS": jobs, "AGF_OVERRIDES": "trainer.num_threads=1",
           "FAIL_ROW": "agf_m_sco_pe" if jobs != "1" else "none"}
    proc = subprocess.run(["bash", "sweeps/reproduce_small.sh", "1", "2"], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert (proc.returncode != 0) == (jobs != "1"), proc.stderr
    lines = calls.read_text().splitlines()
    trained = [dict(a.split("=", 1) for a in line.split()[1:] if "=" in a)
               for line in lines if line.startswith("run.py")]
    assert all(t["hydra.mode"] == "RUN" and t["experiment"] == "small" and t["trainer.num_threads"] == "1"
               and t["data.subword_file"] == f"{tmp_path}/results/multi30k-small/unigram8000.model"
               for t in trained)
    done = [(t["row"], t["seed"]) for t in trained]
    every_row = {row for table in TABLES.values() for row in table.rows}
    assert sorted(done) == sorted((row, seed) for row in every_row for seed in "12")
    for t in trained:  # the run lands in the dir of a table that has the row
        assert t["row"] in TABLES[t["+table"]].rows
    assert lines[-1].startswith("-m agf_exp.report --all --runs results/multi30k-small")
    assert lines[-1].endswith("--seeds 1,2")  # the report lists the seeds a row still lacks
    assert sum(line.startswith("-m agf_exp.report --export") for line in lines) == (2 if jobs == "1" else 1)


def test_committed_subword_model_is_the_one_the_committed_runs_used(multi30k_root):
    """results/multi30k-small/unigram8000.model (what reproduce_small.sh passes as data.subword_file)
    segments the validation targets into exactly the token count every committed run recorded."""
    from agf_exp.data import prepare_data
    from agf_exp.data.multi30k import Multi30kConfig

    results = ROOT / "results" / "multi30k-small"
    bundle = prepare_data(Multi30kConfig(root=str(multi30k_root), subword_file=str(results / "unigram8000.model")), 1)
    val_tokens = sum(len(tgt) - 1 for _, tgt in bundle.examples["valid"])  # targets after BOS: subwords + EOS
    recorded = {json.loads(p.read_text())["final"]["val_tokens"] for p in results.glob("*/small/*/seed*/summary.json")}
    assert recorded == {val_tokens}
