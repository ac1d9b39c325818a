"""Puts the repository's ``sweeps/`` folder on Hydra's config search path, so the paper's table
sweeps (``sweeps/table/tableN.yaml``) are selected as ``python run.py +table=table4``.

Hydra discovers every module in the ``hydra_plugins`` namespace package; this one only appends a
search path and does nothing else.
"""
from pathlib import Path

from hydra.core.config_search_path import ConfigSearchPath
from hydra.plugins.search_path_plugin import SearchPathPlugin

SWEEPS_DIR = Path(__file__).resolve().parent.parent.parent / "sweeps"


class AgfExpSweepsSearchPathPlugin(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        if SWEEPS_DIR.is_dir():
            search_path.append(provider="agf-exp-sweeps", path=f"file://{SWEEPS_DIR}")
