"""Shared fixtures. Tests never download: Multi30k comes from MULTI30K_ROOT (CI points it at the
shared data folder) and the tests that need it are skipped without it."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torch._dynamo
from agf_exp import config

CONF_DIR = str(config.CONF_DIR)


def pytest_configure(config):
    # flex_attention past dynamo's recompile limit silently runs unfused: make that a failure
    torch._dynamo.config.fail_on_recompile_limit_hit = True


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` form the GPU suite (``pytest -m cuda``); without a GPU they are skipped."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (the GPU suite: pytest -m cuda)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def _cache_dir(tmp_path_factory):
    """One sentencepiece cache for the whole session (AGF_CACHE_DIR wins when CI sets it)."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # tests never download (Hugging Face datasets)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not os.environ.get("AGF_CACHE_DIR"):
        os.environ["AGF_CACHE_DIR"] = str(tmp_path_factory.mktemp("agf_cache"))
    torch.set_num_threads(min(2, torch.get_num_threads()))
    yield


@pytest.fixture(autouse=True)
def _restore_num_threads():
    """A Trainer with trainer.num_threads sets torch's process-wide thread count; undo it after
    each test so that no test's result depends on which tests ran before it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def make_cfg(*overrides: str):
    """Compose the project config exactly as `python run.py <overrides>` would."""
    return config.compose(overrides)


@pytest.fixture
def cfg_factory():
    return make_cfg


@pytest.fixture
def multi30k_root():
    root = os.environ.get("MULTI30K_ROOT")
    if not root or not Path(root).is_dir():
        pytest.skip("set MULTI30K_ROOT to a folder with the Multi30k .gz files to run this test")
    return Path(root).resolve()  # the README passes it relative (../shared/...); tests may chdir or need a file URI
