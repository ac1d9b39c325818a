"""W&B logging (``logger=wandb``): what a run logs is read back from the offline run file with
wandb's own protobuf schema; resumed runs continue the same W&B run; no credential is written;
``mode=disabled`` works; ``wandb.finish()`` runs even when training fails."""
from __future__ import annotations

import json
import time

import pytest

from agf_exp.loggers import auto_tags, read_offline_run
from agf_exp.rundir import train
from agf_exp.training import Trainer

from .conftest import make_cfg

FAST = ["experiment=smoke", "trainer.decode_strategies=[greedy]", "trainer.max_decode_sentences=20",
        "data.train_size=400", "data.valid_size=40", "data.test_size=40", "logger=wandb"]
SECRET = "agf-test-not-a-real-key-0123456789abcdef"


@pytest.fixture
def wandb_env(tmp_path, monkeypatch):
    """An isolated W&B home with a (fake) API key in the environment, offline."""
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_DATA_DIR", str(tmp_path / "wandb-data"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


def offline_runs(run_dir):
    return sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def read_finished(wandb_file, timeout: float = 60.0):
    """The run as logged, once its exit record is in the file: ``wandb.finish()`` can return
    before wandb's service process has flushed the transaction log (seen in CI under load, where
    the file had no run record yet)."""
    deadline = time.monotonic() + timeout
    while True:
        logged = read_offline_run(wandb_file)
        if logged["complete"]:
            return logged
        assert time.monotonic() < deadline, f"{wandb_file}: no exit record after {timeout:.0f} s"
        time.sleep(0.2)


def test_offline_run_logs_config_metrics_and_summary(wandb_env):
    run = wandb_env / "run"
    cfg = make_cfg(*FAST, "row=agf_m_pcmv", "+table=table4", "seed=3", "trainer.max_epochs=2", "logger.mode=offline")
    summary = train(cfg, run)
    (wandb_file,) = offline_runs(run)
    logged = read_finished(wandb_file)

    # one W&B run: grouped by what it is (scale/data/row), named row + seed, tags from the config
    assert logged["run"]["id"] == summary["wandb_id"]
    assert logged["run"]["group"] == "smoke/synthetic/agf_m_pcmv" and logged["run"]["name"] == "agf_m_pcmv seed3"
    assert logged["run"]["job_type"] == "train"
    # evaluations against the epoch; validation accuracy summarised by its maximum
    assert logged["metrics"]["eval/val_acc"] == {"step_metric": "eval/epoch", "summary": ["max"]}
    assert logged["metrics"]["eval/val_loss"]["summary"] == ["min"]
    # best evaluation and the checkpoint the decoded scores come from
    assert logged["summary"]["best/val_acc"] == pytest.approx(summary["best"]["value"])
    assert logged["summary"]["best/epoch"] == summary["best"]["epoch"]
    assert logged["summary"]["decoded_from"] == f"best.pt (epoch {summary['best']['epoch']})"
    # artifacts: the translations and the subword model; run files copied, never symlinked one by one
    artifacts = {a["type"]: a for a in logged["artifacts"]}
    assert sorted(artifacts) == ["tokenizer", "translations"]
    assert set(artifacts["translations"]["files"]) == {f"hyps/{p.name}" for p in (run / "hyps").glob("*.txt")}
    assert artifacts["tokenizer"]["files"] == ["subword.model"]
    files = wandb_file.parent / "files"
    assert (files / "summary.json").read_bytes() == (run / "summary.json").read_bytes()
    assert (files / "hyps" / "test.greedy.txt").is_file()
    assert not any(p.is_symlink() for p in files.rglob("*"))  # wandb.save symlinks, with a warning per call
    assert {"pos:agf_m", "pcmv", "experiment:smoke", "seed:3", "table:table4", "row:agf_m_pcmv"} <= set(logged["run"]["tags"])
    # the resolved config
    assert logged["config"]["pos"]["name"] == "agf_m" and logged["config"]["pcmv"] is True
    assert logged["config"]["seed"] == 3 and logged["config"]["row"] == "agf_m_pcmv"
    assert logged["config"]["run_name"] == "agf_m_pcmv"
    assert logged["config"]["trainer"]["max_epochs"] == 2
    # per-evaluation metrics, exactly those of metrics.jsonl
    evals = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    logged_acc = [h["eval/val_acc"] for h in logged["history"] if "eval/val_acc" in h]
    assert logged_acc == pytest.approx([e["val_acc"] for e in evals]) and len(logged_acc) == 2
    # final BLEU/chrF with the sacreBLEU signature, parameter counts
    test = summary["decoding"]["test/greedy"]
    assert logged["summary"]["test/greedy/bleu"] == pytest.approx(test["bleu"])
    assert logged["summary"]["test/greedy/chrf"] == pytest.approx(test["chrf"])
    assert logged["summary"]["test/greedy/bleu_signature"] == test["bleu_signature"]
    assert logged["summary"]["positional_parameters"] == summary["parameters"]["positional"]
    # images: learning curves and positional fields were logged
    images = {k[: -len("/_type")] for h in logged["history"] for k, v in h.items() if v == "image-file"}
    assert "curves/learning_curves" in images and any(k.startswith("fields/") for k in images)

    # no credential anywhere in the run dir (config, summary, W&B's own files)
    for path in run.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_a_hand_started_run_is_named_and_grouped_by_what_it_is(wandb_env):
    """No ``row=``: the W&B config still carries the row its mode and toggles match, and a
    combination that is no row is named by mode + toggles (also the run dir's suffix)."""
    run = wandb_env / "run"
    train(make_cfg(*FAST, "pos=agf_m", "pcmv=true", "trainer.max_epochs=1", "logger.mode=offline"), run)
    logged = read_finished(offline_runs(run)[0])
    assert logged["config"]["row"] == "agf_m_pcmv" and logged["run"]["group"] == "smoke/synthetic/agf_m_pcmv"
    other = wandb_env / "other"
    train(make_cfg(*FAST, "pos=alibi", "sco=true", "trainer.max_epochs=1", "logger.mode=offline"), other)
    logged = read_finished(offline_runs(other)[0])
    assert logged["config"]["row"] is None and logged["run"]["name"] == "alibi+sco seed1"


def test_reading_a_run_file_still_being_written(wandb_env, tmp_path):
    """A run file cut anywhere reads as incomplete, up to its last whole record, never raises."""
    run = wandb_env / "run"
    train(make_cfg(*FAST, "trainer.max_epochs=1", "logger.mode=offline"), run)
    (wandb_file,) = offline_runs(run)
    full = read_finished(wandb_file)
    data = wandb_file.read_bytes()
    cut = tmp_path / "cut.wandb"
    for size in (0, 3, 7, 40, len(data) // 2, len(data) - 1):
        cut.write_bytes(data[:size])
        partial = read_offline_run(cut)
        assert not partial["complete"], size
        assert len(partial["history"]) <= len(full["history"])
    assert read_offline_run(cut)["run"]["id"] == full["run"]["id"]  # the run record is near the start
    cut.write_bytes(b"not a wandb file")
    with pytest.raises(ValueError, match="not a W&B transaction log"):
        read_offline_run(cut)


def test_resumed_run_continues_the_same_wandb_run(wandb_env):
    run = wandb_env / "run"
    first = train(make_cfg(*FAST, "trainer.max_epochs=1", "logger.mode=offline"), run)
    second = train(make_cfg(*FAST, "trainer.max_epochs=2", "logger.mode=offline"), run)  # longer budget: resumes
    assert second["epochs"] == 2 and second["wandb_id"] == first["wandb_id"]
    files = offline_runs(run)
    assert len(files) == 2 and all(first["wandb_id"] in f.name for f in files)
    assert [read_finished(f)["run"]["id"] for f in files] == [first["wandb_id"]] * 2


def test_auto_mode_without_a_key_is_offline(wandb_env, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("NETRC", str(wandb_env / "no-netrc"))
    run = wandb_env / "run"
    summary = train(make_cfg(*FAST, "trainer.max_epochs=1"), run)  # logger.mode=auto
    assert len(offline_runs(run)) == 1 and summary["wandb_id"]


def test_disabled_mode_trains_without_wandb_files(wandb_env):
    run = wandb_env / "run"
    summary = train(make_cfg(*FAST, "trainer.max_epochs=1", "logger.mode=disabled"), run)
    assert summary["status"] == "complete" and not offline_runs(run)


def test_wandb_run_is_finished_when_training_fails(wandb_env, monkeypatch):
    import wandb

    def boom(self, logger):
        raise RuntimeError("boom")

    monkeypatch.setattr(Trainer, "fit", boom)
    with pytest.raises(RuntimeError, match="boom"):
        train(make_cfg(*FAST, "trainer.max_epochs=1", "logger.mode=offline"), wandb_env / "run")
    assert wandb.run is None  # finished: the next job of a multirun starts its own run


def test_auto_tags():
    config = {"pos": {"name": "alibi_bl"}, "pcmv": True, "sco": False, "pe": False, "experiment": "small",
              "seed": 2, "table": "table5", "row": "alibi_bl_pcmv_exp"}
    assert auto_tags(config) == ["pos:alibi_bl", "pcmv", "experiment:small", "seed:2", "table:table5",
                                 "row:alibi_bl_pcmv_exp"]


def test_analysis_images_go_to_the_runs_wandb_run(wandb_env):
    from agf_exp import analyze

    run = wandb_env / "run"
    first = train(make_cfg(*FAST, "trainer.max_epochs=1", "logger.mode=offline"), run)
    assert analyze.main(["heads", f"ckpt={run / 'checkpoints/best.pt'}", "max_sentences=20", "n_perms=2",
                         "min_count=2"]) == 0
    files = offline_runs(run)
    assert len(files) == 2  # training, then the analysis resuming the same W&B run
    logged = read_finished(files[-1])
    assert logged["run"]["id"] == first["wandb_id"]
    images = {k[: -len("/_type")] for h in logged["history"] for k, v in h.items() if v == "image-file"}
    assert {"analysis/heads/heatmap", "analysis/heads/plane"} <= images
    assert analyze.main(["heads", f"ckpt={run / 'checkpoints/best.pt'}", "max_sentences=20", "n_perms=2",
                         "wandb=false"]) == 0
    assert len(offline_runs(run)) == 2  # wandb=false logs nothing
