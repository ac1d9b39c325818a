"""Preemption and SLURM requeue: a signal during training saves last.pt after the current update
and is handed on (to submitit's requeue handler, or the default stop); running the job again
resumes to the same result. The SLURM launcher config composes onto hydra-submitit-launcher."""
from __future__ import annotations

import signal

import pytest
import torch

from agf_exp import checkpoint
from agf_exp.preemption import Preempted
from agf_exp.rundir import train
from agf_exp.training import Trainer

from .conftest import CONF_DIR, make_cfg

RUN = ["experiment=smoke", "trainer.max_steps=12", "trainer.decode_splits=[valid]",
       "trainer.decode_strategies=[greedy]", "trainer.max_decode_sentences=5", "data.valid_size=40"]


def _signal_at_step(monkeypatch, signum, step):
    original = Trainer._update

    def update(self, examples, group):
        if self.state.step == step:
            signal.raise_signal(signum)  # arrives in the middle of this update
        return original(self, examples, group)

    monkeypatch.setattr(Trainer, "_update", update)
    return original


@pytest.mark.skipif(not hasattr(signal, "SIGUSR2"), reason="POSIX signals")
def test_submitit_style_requeue_saves_then_hands_on_and_the_rerun_matches(tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    train(make_cfg(*RUN), straight)

    calls = []

    def submitit_handler(signum, frame):  # what submitit installs: requeue the job, then exit
        calls.append(signum)
        raise SystemExit(-1)

    previous = signal.signal(signal.SIGUSR2, submitit_handler)
    try:
        original = _signal_at_step(monkeypatch, signal.SIGUSR2, 5)
        requeued = tmp_path / "requeued"
        with pytest.raises(SystemExit):
            train(make_cfg(*RUN), requeued)
        assert calls == [signal.SIGUSR2]
        assert signal.getsignal(signal.SIGUSR2) is submitit_handler  # the trainer's guard is gone again
        state = checkpoint.load(requeued / "checkpoints/last.pt")["state"]
        assert state["step"] == 6  # the update in progress was finished, then saved
        assert not (requeued / "summary.json").exists()
        monkeypatch.setattr(Trainer, "_update", original)
        summary = train(make_cfg(*RUN), requeued)  # the requeued job: same overrides, same run dir
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert summary["status"] == "complete" and summary["steps"] == 12
    wa = checkpoint.load(straight / "checkpoints/last.pt")["model"]
    wb = checkpoint.load(requeued / "checkpoints/last.pt")["model"]
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0)


def test_sigterm_with_the_default_action_saves_and_stops_with_a_message(tmp_path, monkeypatch):
    _signal_at_step(monkeypatch, signal.SIGTERM, 3)
    with pytest.raises(Preempted, match="stopped by SIGTERM after saving last.pt at step 4; run the same command again"):
        train(make_cfg(*RUN), tmp_path)
    assert checkpoint.load(tmp_path / "checkpoints/last.pt")["state"]["step"] == 4
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_slurm_launcher_config_composes_onto_submitit():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="install agf-exp[slurm]")
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=["hydra/launcher=slurm", "+table=table4", "experiment=small",
                                                       "hydra.launcher.partition=gpu"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1
    assert launcher.max_num_timeout > 0 and launcher.signal_delay_s > 0  # requeue after a time-out
    # every job's run dir is the stable sweep dir, so a requeued job resumes its own last.pt
    assert OmegaConf.to_container(cfg.hydra.sweep)["subdir"] == "${row}/seed${seed}"
