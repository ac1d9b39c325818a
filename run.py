"""Train one run: ``python run.py [group=option ...] [key=value ...]`` (Hydra; ``--help`` lists
the groups, ``--cfg job`` prints the composed config, ``-m`` runs a multirun sweep)."""
import logging
import sys

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import agf_exp.config  # noqa: F401  (registers the typed schemas before Hydra composes)
from agf_exp.config import ConfigError
from agf_exp.data import DataError
from agf_exp.training import TrainingError, train

log = logging.getLogger("run")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    try:
        summary = train(cfg, HydraConfig.get().runtime.output_dir)
    except (ConfigError, DataError, TrainingError) as e:
        log.error("%s: %s", type(e).__name__, e)
        sys.exit(2)
    return summary["best"]["value"]


if __name__ == "__main__":
    main()
