"""The length study in W&B (issue 47 item 5, issue 48 item 4): every run of a length task logs its
exact match against the target length (a curve against ``lengthgen/length``) and per length range
(summary), an MT run with joined test sentences its BLEU / chrF against k; the committed study runs
exported offline carry every key of the study's views (``python -m agf_exp.dashboard E/P --study
lengthgen``), with the same numbers as REPORT.md; a live run and its exported run dir log the same."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from agf_exp import dashboard, wandb_export
from agf_exp.data.lengthgen import RANGES
from agf_exp.loggers import JOIN_X, LENGTH_X, length_metrics
from agf_exp.results import lengthgen_mt as mt
from agf_exp.results.lengthgen import study_runs, summarize
from agf_exp.results.runs import collect_runs
from agf_exp.rundir import train

from .conftest import make_cfg
from .test_wandb import read_finished
from .test_wandb_export import history_keys, wandb_home  # noqa: F401  (fixture)

pytest.importorskip("wandb_workspaces")

ROOT = Path(__file__).resolve().parent.parent
STUDY = ROOT / "results" / "lengthgen" / "synthetic"
MT = ROOT / "results" / "lengthgen" / "mt"


def _view_reads(tmp_path: Path, *tasks: str) -> dict:
    specs = tmp_path / "study-specs.json"
    assert dashboard.main(["team/agf-exp", "--study", "lengthgen", "--tasks", ",".join(tasks),
                           "--dry-run", str(specs)]) == 0
    return {name.split("_")[-1][:-2]: v["reads"] for name, v in json.loads(specs.read_text())["views"].items()}


def test_length_metrics_of_a_synthetic_run_count_exact_matches_per_length_and_range():
    refs = ["a b", "a b", "a b c d e f g h i j k l m n o p q", "x " * 40]
    hyps = ["a b", "a c", "a b c d e f g h i j k l m n o p q", "x"]
    rows, summary = length_metrics({"data": {"name": "copy"}}, {}, {"test.greedy": hyps, "test.ref": refs})
    assert rows == [{LENGTH_X: 2, "lengthgen/test_em": 50.0, "lengthgen/test_examples": 2},
                    {LENGTH_X: 17, "lengthgen/test_em": 100.0, "lengthgen/test_examples": 1},
                    {LENGTH_X: 40, "lengthgen/test_em": 0.0, "lengthgen/test_examples": 1}]
    assert summary == {"lengthgen/test_em/in_dist": 50.0, "lengthgen/test_em/1_2x": 100.0,
                       "lengthgen/test_em/2_4x": 0.0, "lengthgen/train_max": 16}
    # not a length task, or translations that do not line up with their references: nothing
    assert length_metrics({"data": {"name": "multi30k"}}, {}, {"test.greedy": hyps, "test.ref": refs}) == ([], {})
    assert length_metrics({"data": {"name": "copy"}}, {}, {"test.greedy": hyps[:2], "test.ref": refs}) == ([], {})


def test_length_metrics_of_an_mt_run_are_bleu_and_chrf_against_k():
    decoding = {f"{split}/{strategy}": {"bleu": 30.0 - k - (strategy == "greedy"), "chrf": 60.0 - k}
                for k, split in [(1, "test"), (2, "test_join2"), (4, "test_join4"), (8, "test_join8")]
                for strategy in ("greedy", "beam")}
    decoding["valid/beam"] = {"bleu": 99.0, "chrf": 99.0}
    rows, summary = length_metrics({"data": {"name": "multi30k"}}, {"decoding": decoding}, {})
    assert rows == [{JOIN_X: k, "lengthgen/join_bleu": 30.0 - k, "lengthgen/join_chrf": 60.0 - k} for k in (1, 2, 4, 8)]
    assert summary == {}
    no_joins = {"decoding": {"test/beam": {"bleu": 30.0, "chrf": 60.0}}}
    assert length_metrics({"data": {"name": "multi30k"}}, no_joins, {}) == ([], {})


def test_the_committed_study_exports_with_every_key_its_views_read(wandb_home, tmp_path):  # noqa: F811
    out = wandb_home / "export"
    assert wandb_export.main([str(STUDY), "--dir", str(out), "--project", "team/agf-exp"]) == 0
    logged = [read_finished(f) for f in sorted(out.rglob("run-*.wandb"))]
    train_runs = [x for x in logged if x["run"]["job_type"] == "train"]
    runs, _ = study_runs(collect_runs(STUDY))
    assert len(train_runs) == len(runs) >= 12
    reads = _view_reads(tmp_path, "copy", "reverse", "scan")
    tasks = summarize(runs, n_bootstrap=10)["tasks"]
    for x in train_runs:
        name, task = x["run"]["name"], x["config"]["data"]["name"]
        view = reads[task]
        assert set(view["history"]) <= history_keys(x), (name, set(view["history"]) - history_keys(x))
        assert set(view["summary"]) <= set(x["summary"]), (name, set(view["summary"]) - set(x["summary"]))
        assert x["config"]["study"] == "lengthgen_synthetic"
        assert x["metrics"]["lengthgen/test_em"]["step_metric"] == LENGTH_X
        # the same numbers as the report's (REPORT.md): per range and per length, this seed
        arm = tasks[task]["arms"][x["config"]["arm"]]
        i = arm["seeds"].index(x["config"]["seed"])
        for rng in RANGES[task]:
            assert x["summary"][f"lengthgen/test_em/{rng.key}"] == pytest.approx(arm["ranges"][rng.name]["values"][i])
        curve = {h[LENGTH_X]: h["lengthgen/test_em"] for h in x["history"] if LENGTH_X in h}
        assert sorted(curve) == tasks[task]["lengths"]
        if len(arm["seeds"]) == 1:  # the report's per-length curve is this run's
            assert all(curve[n] == pytest.approx(arm["curve"][n]["mean"]) for n in curve), name
        # after the last training step, so that the learning curves keep their x
        steps = [h["_step"] for h in x["history"] if LENGTH_X in h]
        assert min(steps) > max(h["_step"] for h in x["history"] if "eval/val_acc" in h)


def test_the_committed_mt_runs_export_bleu_against_k_as_the_report_computes_it(wandb_home, tmp_path):  # noqa: F811
    out = wandb_home / "export"
    assert wandb_export.main([str(MT), "--dir", str(out), "--project", "team/agf-exp"]) == 0
    logged = [x for x in (read_finished(f) for f in sorted(out.rglob("run-*.wandb"))) if x["run"]["job_type"] == "train"]
    runs, _ = mt.mt_runs(collect_runs(MT))
    assert len(logged) == len(runs) >= 1
    view = _view_reads(tmp_path, "multi30k")["multi30k"]
    levels = {(r.arm, r.seed): {k: mt.level_scores(r, k) for k in mt.LEVELS} for r in runs}
    for x in logged:
        assert set(view["history"]) <= history_keys(x), set(view["history"]) - history_keys(x)
        assert x["config"]["study"] == "lengthgen_mt" and x["metrics"]["lengthgen/join_bleu"]["step_metric"] == JOIN_X
        curve = {h[JOIN_X]: h for h in x["history"] if JOIN_X in h}
        assert sorted(curve) == list(mt.LEVELS)
        # the run's own sacreBLEU (beam) per k equals the report's, recomputed from the committed outputs
        mine = levels[(x["config"]["arm"], x["config"]["seed"])]
        for k, h in curve.items():
            assert h["lengthgen/join_bleu"] == pytest.approx(mine[k]["bleu"], abs=1e-6)
            assert h["lengthgen/join_chrf"] == pytest.approx(mine[k]["chrf"], abs=1e-6)


def test_a_live_copy_run_logs_the_length_curves_as_its_export_does(wandb_home, tmp_path):  # noqa: F811
    run = wandb_home / "run"
    train(make_cfg("model=tiny", "data=copy", "arm=alibi", "+study=lengthgen_synthetic", "hydra.mode=RUN",
                   "data.train_size=200", "data.valid_size=20", "data.test_per_length=2", "data.test_max=34",
                   "trainer.max_steps=3", "trainer.eval_every_steps=3", "trainer.batch_tokens=512",
                   "trainer.num_threads=1", "logger=wandb", "logger.mode=offline"), run)
    (live_file,) = sorted((run / "wandb").glob("offline-run-*/run-*.wandb"))
    live = read_finished(live_file)
    reads = _view_reads(tmp_path, "copy")["copy"]
    assert set(reads["history"]) <= history_keys(live) and set(reads["summary"]) <= set(live["summary"])
    assert sorted(h[LENGTH_X] for h in live["history"] if LENGTH_X in h) == list(range(4, 35))
    out = wandb_home / "export"
    wandb_export.export(run.parent, out=out, force=True, log=lambda _: None)
    (exported_file,) = sorted(out.rglob("run-*.wandb"))
    exported = read_finished(exported_file)
    assert exported["metrics"] == live["metrics"]
    pick = [LENGTH_X, "lengthgen/test_em", "lengthgen/test_examples", "_step"]
    assert ([{k: h[k] for k in pick} for h in exported["history"] if LENGTH_X in h]
            == [{k: h[k] for k in pick} for h in live["history"] if LENGTH_X in h])
    for key in [k for k in live["summary"] if k.startswith("lengthgen/")]:
        assert exported["summary"][key] == live["summary"][key], key


def test_the_study_views_choose_runs_by_study_and_task_grouped_by_arm(tmp_path):
    specs = tmp_path / "specs.json"
    assert dashboard.main(["team/agf-exp", "--study", "lengthgen", "--dry-run", str(specs)]) == 0
    views = json.loads(specs.read_text())["views"]
    assert sorted(views) == [f"nw-agf_lengthgen_{t}-v" for t in ("copy", "multi30k", "reverse", "scan")]
    mt = views["nw-agf_lengthgen_multi30k-v"]["reads"]
    assert {"lengthgen/join_bleu", "lengthgen/join_chrf", JOIN_X} <= set(mt["history"])
    assert {"study", "data.name", "arm"} <= set(views["nw-agf_lengthgen_scan-v"]["reads"]["config"])


@pytest.mark.parametrize("argv,says", [
    (["--study", "lengthgen", "--tasks", "copy,sort"], "no length-study view for sort"),
    (["--study", "lengthgen", "--tables", "table2"], "drop --tables"),
])
def test_bad_study_input_is_one_line_and_exit_2(tmp_path, capsys, argv, says):
    assert dashboard.main(["team/agf-exp", *argv, "--dry-run", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert says in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "x.json").exists()
