"""Typed configuration: one dataclass schema per config group, registered in Hydra's ConfigStore.

``conf/<group>/<option>.yaml`` starts its defaults list with ``/schema/<group>/<name>@_here_`` (the
schema stored here under ``schema/``, outside the groups users choose from), so an unknown key, a value of the wrong type or an unknown enum value fails at start-up
with Hydra's message. The groups:

=========== =========================================== =====================================
group       schema                                      options (conf/<group>/*.yaml)
=========== =========================================== =====================================
pos         ``PosConfig`` subclass of each mode          none, agf, agf_m, agf_l, alibi, ...
model       :class:`agf_exp.model.ModelConfig`           tiny, small, transformer_big
data        ``DataConfig`` subclass of each source       synthetic, multi30k, files, wmt17_en_de
trainer     :class:`TrainerConfig`                       default
logger      :class:`LoggerConfig`                        none, wandb
experiment  (``@package _global_`` overrides)            quick, smoke, small, paper
row         (``@package _global_``: mode + toggles)      vanilla, agf, agf_m_pcmv, ... (paper rows)
table       (``@package _global_`` multirun sweeps in    table1 ... table6 (``+table=table4``)
            ``sweeps/table/``, on Hydra's search path)
=========== =========================================== =====================================
"""
from __future__ import annotations

import dataclasses
import enum
import functools
import math
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from .data import SOURCES
from .decoding import DecodeConfig, Strategy
from .devices import Device, Precision
from .model import ModelConfig
from .positional import MODES


@dataclass
class TrainerConfig:
    """Optimisation, schedule, evaluation cadence and decoding (``conf/trainer/*.yaml``)."""

    name: str = "default"
    max_epochs: int = 10
    max_steps: Optional[int] = None  # stop after this many optimizer updates
    max_minutes: Optional[float] = None  # stop after this much training time (evaluation excluded)
    batch_tokens: int = 4096  # padded tokens per batch (max(src, tgt) length x sentences)
    accum_steps: int = 1  # gradient accumulation: batches per optimizer update
    lr: float = 1e-3  # peak learning rate, reached at the end of warm-up
    warmup_steps: int = 4000  # inverse-sqrt (noam) schedule: lr * min(s / w, sqrt(w / s))
    adam_betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    adam_eps: float = 1e-9
    weight_decay: float = 0.0
    clip_grad_norm: float = 1.0  # 0 disables clipping
    label_smoothing: float = 0.1
    precision: Precision = Precision.auto
    device: Device = Device.auto
    num_threads: Optional[int] = None  # torch CPU threads (None: torch's default)
    eval_every_steps: Optional[int] = None  # also evaluate every N updates (always at epoch end)
    save_every_steps: Optional[int] = None  # write last.pt every N updates (always at epoch end)
    eval_batch_tokens: int = 8192
    best_metric: str = "val_acc"  # higher is better: one of config.BEST_METRICS
    resume: bool = True  # continue from <run dir>/checkpoints/last.pt when it exists
    progress: bool = True  # tqdm bar per epoch
    log_every_steps: int = 50
    max_nonfinite_steps: int = 5  # fp16: skipped overflow steps tolerated in a row before failing
    # torchrun (DDP): collectives of the training loop fail after dist_timeout_minutes; ranks
    # waiting for rank 0 alone (data preparation, evaluation, final decoding) wait dist_wait_minutes
    dist_timeout_minutes: float = 30.0
    dist_wait_minutes: float = 360.0
    # one process per run dir (a lock on <run dir>/.lock); false only where the file system has no locks
    lock_run_dir: bool = True
    # final decoding of the validation and test sets
    decode_splits: List[str] = field(default_factory=lambda: ["valid", "test"])
    decode_strategies: List[str] = field(default_factory=lambda: ["greedy", "beam"])
    beam_size: int = 5
    len_penalty: float = 1.0  # beam scores are log p / length ** len_penalty
    max_len_a: float = 1.2  # decoded length limit: a * source length + b
    max_len_b: int = 10
    decode_batch_sentences: int = 64
    max_decode_sentences: Optional[int] = None  # decode only the first N sentences of each split
    # which weights the final decoding uses: best (best.pt, by trainer.best_metric on valid) or
    # last (the end of training: a fixed budget, for studies where in-distribution validation
    # would choose the checkpoint badly, e.g. length generalization)
    decode_checkpoint: str = "best"


class WandbMode(str, enum.Enum):
    auto = "auto"  # online when an API key is configured, offline otherwise
    online = "online"
    offline = "offline"
    disabled = "disabled"


@dataclass
class LoggerConfig:
    """Experiment tracking (``conf/logger/*.yaml``)."""

    name: str = "none"  # none | wandb
    project: str = "agf-exp"
    entity: Optional[str] = None
    group: Optional[str] = None
    job_name: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    mode: WandbMode = WandbMode.auto
    checkpoints: bool = False  # also upload best.pt / last.pt as a `model` artifact (large)


@dataclass
class Config:
    """The top-level schema (``conf/config.yaml`` composes the groups onto it)."""

    pos: Any = MISSING
    model: ModelConfig = MISSING
    data: Any = MISSING
    trainer: TrainerConfig = MISSING
    logger: LoggerConfig = MISSING
    seed: int = 1
    pcmv: bool = False  # PCM-V: scale values by the positional coefficient (PCM-V-Exp for additive modes)
    sco: bool = False  # SCO: logits q.k / ||k|| instead of q.k / sqrt(d)
    pe: bool = "${pos.default_pe}"  # type: ignore[assignment]  # absolute sinusoidal PE; default per mode
    run_name: str = "${agf_variant:${pos.name},${pos.default_pe},${pcmv},${sco},${pe}}"  # what it is (variant_name)
    experiment: str = "custom"  # set by conf/experiment/<name>.yaml; names sweep dirs and W&B tags
    row: Optional[str] = None  # set by conf/row/<row>.yaml: a named row of the paper's tables
    table: Optional[str] = None  # set by a table sweep (sweeps/table/<table>.yaml): the W&B group
    arm: Optional[str] = None  # set by conf/arm/<arm>.yaml: a mode of the length-generalization study
    study: Optional[str] = None  # set by a study sweep (sweeps/study/<study>.yaml)


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    # the typed schemas, outside the groups users choose from (so `pos=` completes to modes only):
    # conf/<group>/<option>.yaml extends one with `- /schema/<group>/<name>@_here_`
    for name, spec in MODES.items():
        cs.store(group="schema/pos", name=name, node=spec.config_class)
    for name, (config_class, _) in SOURCES.items():
        cs.store(group="schema/data", name=name, node=config_class)
    cs.store(group="schema", name="model", node=ModelConfig)
    cs.store(group="schema", name="trainer", node=TrainerConfig)
    cs.store(group="schema", name="logger", node=LoggerConfig)


register_configs()

# ``${agf_unique:}`` in the default run and sweep dirs (conf/config.yaml): one short random token
# per process, so two runs started in the same second (another config, or the same) never share a
# default run dir and refuse each other
_UNIQUE = secrets.token_hex(3)
OmegaConf.register_new_resolver("agf_unique", lambda: _UNIQUE, replace=True)


#: the config groups (``conf/``) that run.py, the tools and the benchmarks compose
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@functools.lru_cache(maxsize=None)
def _row_signatures(conf_dir: str) -> Dict[tuple, str]:
    out = {}
    for path in sorted((Path(conf_dir) / "row").glob("*.yaml")):
        node = OmegaConf.to_container(OmegaConf.load(path))
        pos = None
        for entry in node.get("defaults", []):
            if isinstance(entry, dict):
                for key, value in entry.items():
                    if key.replace("override ", "").strip("/ ") == "pos":
                        pos = value
        out[(pos, bool(node.get("pcmv")), bool(node.get("sco")), bool(node.get("pe")))] = path.stem
    return out


def row_signatures(conf_dir: Path = CONF_DIR) -> Dict[tuple, str]:
    """(pos mode, pcmv, sco, pe) -> row name, read from ``conf/row/*.yaml``."""
    return dict(_row_signatures(str(conf_dir)))


def row_of(config: Dict[str, Any], signatures: Optional[Dict[tuple, str]] = None) -> Optional[str]:
    """The paper row a run is: its ``row`` value, else the row whose mode and toggles it has."""
    if config.get("row"):
        return str(config["row"])
    pos = (config.get("pos") or {}).get("name")
    signatures = row_signatures() if signatures is None else signatures
    return signatures.get((pos, bool(config.get("pcmv")), bool(config.get("sco")), bool(config.get("pe"))))


def variant_name(pos: str, default_pe: bool, pcmv: bool, sco: bool, pe: bool) -> str:
    """A readable name of what a run is: the paper row it matches (``conf/row/``), else the mode and
    the toggles that differ from its defaults, e.g. ``agf_m+sco``, ``alibi+pe``, ``none-pe`` (NoPE)."""
    row = row_signatures().get((pos, bool(pcmv), bool(sco), bool(pe)))
    if row:
        return row
    name = pos + ("+pcmv" if pcmv else "") + ("+sco" if sco else "")
    if bool(pe) != bool(default_pe):
        name += "+pe" if pe else "-pe"
    return name


def _flag(value: Any) -> bool:  # resolver arguments arrive as bools, or as strings when quoted
    return value if isinstance(value, bool) else str(value).strip().lower() == "true"


def user_groups(conf_dir: Path = CONF_DIR) -> Dict[str, List[str]]:
    """The config groups a user chooses from and their options: ``conf/<group>/*.yaml`` and the
    sweeps on Hydra's search path (``sweeps/<group>/*.yaml``: table, study), without the typed
    schemas (``schema/``, in the ConfigStore) and without Hydra's own groups."""
    groups: Dict[str, List[str]] = {}
    for base in (conf_dir, conf_dir.parent / "sweeps"):
        for folder in sorted(p for p in base.iterdir() if p.is_dir() and p.name != "hydra") if base.is_dir() else []:
            options = sorted(p.stem for p in folder.glob("*.yaml"))
            if options:
                groups.setdefault(folder.name, []).extend(options)
    return dict(sorted(groups.items()))


def hide_schemas_from_completion() -> None:
    """Tab completion (``python run.py -sc ...``) without the ``schema`` group of typed schemas:
    Hydra lists every group of its config sources at the top level and has no hidden groups, so
    its repository's listing of the top level leaves ``schema`` out (only for completion: the
    yaml options still extend the schemas)."""
    from hydra._internal.config_repository import ConfigRepository

    listing = ConfigRepository.get_group_options

    def get_group_options(self, group_name, *args, **kwargs):
        options = listing(self, group_name, *args, **kwargs)
        return [o for o in options if not (group_name == "" and o == "schema")]

    ConfigRepository.get_group_options = get_group_options


OmegaConf.register_new_resolver(
    "agf_groups", lambda: "\n".join(f"{g}: {', '.join(o)}" for g, o in user_groups().items()), replace=True)

# ``${agf_variant:...}``: the default run_name (and so the default run dir's name and W&B name)
OmegaConf.register_new_resolver(
    "agf_variant", lambda pos, default_pe, pcmv, sco, pe: variant_name(
        str(pos), _flag(default_pe), _flag(pcmv), _flag(sco), _flag(pe)), replace=True)


def compose(overrides: Sequence[str] = ()) -> DictConfig:
    """The config ``python run.py <overrides>`` runs, composed with Hydra's compose API (no run
    dir, no logging set-up): for the tools, the benchmarks and the tests."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


class ConfigError(ValueError):
    """A combination of config values that cannot run; the message says which and what to do."""


def _check_no_extra_keys(node: DictConfig, where: str) -> None:
    """Hydra's `+key=value` can add keys to a typed node; refuse any key the schema lacks."""
    schema = OmegaConf.get_type(node)
    if schema is None or not dataclasses.is_dataclass(schema):
        return
    known = {f.name for f in dataclasses.fields(schema)}
    extra = sorted(set(node.keys()) - known)
    if extra:
        raise ConfigError(f"unknown key(s) {', '.join(f'{where}{k}' for k in extra)}; "
                          f"{where.rstrip('.') or 'the top level'} accepts: {', '.join(sorted(known))}")


# metrics best.pt can be chosen by: evaluation metrics where higher is better
BEST_METRICS = ("val_acc",)


def validate(cfg: DictConfig) -> None:
    """Cross-field checks that a schema cannot express. Raises :class:`ConfigError`."""
    from .positional import MODES as modes

    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{', '.join(missing)} must be set: pass {missing[0]}=... on the command line")
    _check_no_extra_keys(cfg, "")
    for group in ("pos", "model", "data", "trainer", "logger"):
        _check_no_extra_keys(cfg[group], f"{group}.")
    d_model, n_heads = cfg.model.d_model, cfg.model.n_heads
    if n_heads < 1 or d_model < 1 or d_model % n_heads:
        raise ConfigError(f"model.d_model={d_model} is not divisible by model.n_heads={n_heads}: each head "
                          "gets d_model / n_heads channels; choose e.g. model.d_model="
                          f"{max(n_heads, 1) * max(1, round(d_model / max(n_heads, 1)))}")
    from .attention.kernels import refusal

    problem = refusal(cfg.model.attn_backend, cfg.pos.name, modes[cfg.pos.name].module_class, cfg.pcmv,
                      d_model // n_heads, cfg.model.attn_dropout)
    if problem:
        raise ConfigError(problem)
    if cfg.table is not None:
        from .tables import table

        try:
            spec = table(cfg.table)
        except KeyError as e:
            raise ConfigError(str(e.args[0])) from None
        if not spec.rows:
            raise ConfigError(f"{spec.name} has no training runs ({spec.title}); "
                              f"print it with `python -m agf_exp.report {spec.name}`")
    joins = list(cfg.data.get("test_joins") or [])
    if any(not isinstance(k, int) or k < 2 for k in joins):
        raise ConfigError(f"data.test_joins={joins}: each k joins k >= 2 test sentences into one input, e.g. [2,4,8]")
    words = cfg.data.get("train_max_src_words")
    if words is not None and words < 1:
        raise ConfigError(f"data.train_max_src_words={words} must be >= 1 (or null: every training pair)")
    for split in cfg.trainer.decode_splits:
        if split not in ("train", "valid", "test", *(f"test_join{k}" for k in joins)):
            raise ConfigError(f"trainer.decode_splits has {split!r}; use train, valid, test"
                              + (", " + ", ".join(f"test_join{k}" for k in joins) if joins else
                                 " (or test_join<k> with data.test_joins=[k, ...])"))
        if split == "train" and cfg.data.get("binarize"):
            raise ConfigError("trainer.decode_splits has 'train', but the training split is binarised "
                              "(data.binarize=true) and kept on disk as ids only; decode valid/test")
    if cfg.trainer.decode_checkpoint not in ("best", "last"):
        raise ConfigError(f"trainer.decode_checkpoint={cfg.trainer.decode_checkpoint!r}; use best or last")
    for strategy in cfg.trainer.decode_strategies:
        if strategy not in ("greedy", "beam"):
            raise ConfigError(f"trainer.decode_strategies has {strategy!r}; use greedy and/or beam")
    if cfg.trainer.accum_steps < 1 or cfg.trainer.batch_tokens < 1:
        raise ConfigError("trainer.accum_steps and trainer.batch_tokens must be >= 1")
    _check_trainer_numbers(cfg.trainer)
    problem = run_name_problem(str(cfg.run_name))
    if problem:
        raise ConfigError(problem)
    for key in ("dropout", "attn_dropout"):
        value = cfg.model.get(key)
        if value is not None and not 0.0 <= value < 1.0:
            raise ConfigError(f"model.{key}={value} must be in [0, 1) (the probability of dropping a unit)")
    for key in ("train_size", "valid_size", "test_size"):
        value = cfg.data.get(key)
        if value is not None and value < 1:
            raise ConfigError(f"data.{key}={value} must be >= 1: every split needs sentences (null: the whole file)")
    vocab = cfg.data.get("vocab_size")
    if vocab is not None and vocab < 8:
        raise ConfigError(f"data.vocab_size={vocab} is too small: sentencepiece needs the 4 special pieces plus "
                          "every character of the data; try 1000 or more")
    if cfg.model.get("max_positions", 1) < 2:
        raise ConfigError(f"model.max_positions={cfg.model.max_positions} must be >= 2 (BOS and one token)")
    for strategy in cfg.trainer.decode_strategies:
        problem = decode_config(cfg.trainer, strategy).problem(prefix="trainer.")
        if problem:
            raise ConfigError(problem)
    _check_model_builds(cfg)


def run_name_problem(name: str) -> Optional[str]:
    """A run name is one folder name: the default run dir is outputs/runs/<time>_<run_name>_..."""
    if not name or "/" in name or "\\" in name or name.startswith("..") or "\0" in name:
        return (f"run_name={name!r} is not a folder name (it would put the run outside outputs/runs); use "
                "letters, digits, '-', '_' and '.', or set hydra.run.dir=... to choose the place")
    return None


def _check_model_builds(cfg: DictConfig) -> None:
    """Build the model on the meta device (no memory, no compute): a positional mode or model
    option its constructor refuses is one line now, not a traceback after the data is loaded."""
    import torch

    from .model import Seq2SeqTransformer

    try:
        with torch.device("meta"):
            Seq2SeqTransformer.from_config(cfg, 16, 0)
    except (ValueError, TypeError, RuntimeError, AssertionError, ZeroDivisionError) as e:
        text = " ".join(str(e).split()) or type(e).__name__
        raise ConfigError(f"pos={cfg.pos.name} with these pos.* / model.* values cannot be built: {text}") from None


def _check_trainer_numbers(t: DictConfig) -> None:
    """Values the optimiser or the schedule would reject (or silently misuse) mid-run."""
    positive = {"lr": t.lr, "adam_eps": t.adam_eps, "eval_batch_tokens": t.eval_batch_tokens,
                "log_every_steps": t.log_every_steps, "beam_size": t.beam_size,
                "decode_batch_sentences": t.decode_batch_sentences,
                "dist_timeout_minutes": t.dist_timeout_minutes, "dist_wait_minutes": t.dist_wait_minutes}
    for key, value in positive.items():
        if not (value > 0 and math.isfinite(value)):
            raise ConfigError(f"trainer.{key}={value} must be a finite number > 0")
    for key in ("warmup_steps", "weight_decay", "clip_grad_norm", "max_epochs"):
        if not (t[key] >= 0 and math.isfinite(t[key])):
            raise ConfigError(f"trainer.{key}={t[key]} must be a finite number >= 0")
    if t.max_epochs == 0 or t.max_steps == 0:
        raise ConfigError(f"trainer.max_epochs={t.max_epochs}, trainer.max_steps={t.max_steps}: this budget trains "
                          "nothing; give at least one epoch (or step)")
    if t.best_metric not in BEST_METRICS:
        raise ConfigError(f"trainer.best_metric={t.best_metric!r} is not a metric best.pt can be chosen by (higher "
                          f"is better); use one of {', '.join(BEST_METRICS)}")
    if not (0.0 <= t.label_smoothing < 1.0):
        raise ConfigError(f"trainer.label_smoothing={t.label_smoothing} must be in [0, 1)")
    if len(t.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in t.adam_betas):
        raise ConfigError(f"trainer.adam_betas={list(t.adam_betas)} must be two numbers in [0, 1), e.g. [0.9,0.98]")
    for key in ("max_steps", "max_minutes", "eval_every_steps", "save_every_steps"):
        if t[key] is not None and not t[key] > 0:
            raise ConfigError(f"trainer.{key}={t[key]} must be > 0 (or null for no limit)")


def to_container(cfg: DictConfig) -> dict:
    """The resolved config as plain Python (what is saved in run dirs, checkpoints and W&B)."""
    return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)


def config_diff(old: Dict[str, Any], new: Dict[str, Any], prefix: str = "") -> List[str]:
    """``key: old -> new`` for every dotted key whose value differs between two config dicts."""
    keys = set(old) | set(new)
    out = []
    for key in sorted(keys):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


def decode_config(trainer: TrainerConfig | DictConfig, strategy: str) -> DecodeConfig:
    """The end-of-training decoding by ``strategy`` (one of ``trainer.decode_strategies``) with
    the trainer's decoding keys."""
    return DecodeConfig(strategy=Strategy(strategy), beam_size=trainer.beam_size, len_penalty=trainer.len_penalty,
                        max_len_a=trainer.max_len_a, max_len_b=trainer.max_len_b,
                        batch_sentences=trainer.decode_batch_sentences)
