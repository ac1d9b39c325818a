"""The shared seq2seq trainer: one function, :func:`train`, used by every run and sweep.

Run-dir layout (``hydra.run.dir``, or the ``run_dir`` argument)::

    config.yaml            resolved config
    metrics.jsonl          one JSON line per evaluation
    summary.json           final metrics, BLEU/chrF with signatures, best epoch, parameters, timing,
                           device, versions, git commit ("status": "complete" once done)
    checkpoints/last.pt    full state (model, optimizer, scaler, step, epoch position, RNG states)
    checkpoints/best.pt    weights of the best evaluation by ``trainer.best_metric``
    hyps/<split>.<strategy>.txt   detokenised translations
    hyps/<split>.ref.txt          the references they are scored against (for paired bootstrap)
    curves.png             learning curves of metrics.jsonl (also logged to W&B)

Re-running a run dir whose ``summary.json`` is complete and whose config is the same returns that
summary without training (so a re-run sweep skips finished runs); a finished run asked for a longer
budget (``trainer.max_epochs/max_steps/max_minutes``) continues from ``last.pt``; a finished run of
any other config is refused rather than overwritten.

Re-running with the same run dir resumes from ``last.pt`` (``trainer.resume=true``): the batch
order of an epoch depends only on (seed, epoch) and the RNG states are restored, so a resumed
run reproduces the uninterrupted one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import random
import subprocess
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from . import checkpoint
from .config import ConfigError, Precision, to_container, validate
from .data import DataBundle, collate, make_batches, prepare_data
from .atomic import atomic_write_bytes
from .distributed import Dist
from .distributed import init as init_distributed
from .evaluation import autocast, evaluate_split, score_translations, smoothed_loss, translate
from .loggers import NullLogger, build_logger
from .model import ModelConfig, Seq2SeqTransformer
from .positional import MODES
from .preemption import Preempted, PreemptionGuard
from .runlock import RunDirLock, RunDirLocked

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """Training cannot continue (e.g. the loss became NaN); the message says what to change."""


@dataclass
class TrainState:
    step: int = 0  # optimizer updates done
    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # batches of the current epoch already consumed
    best_value: float = -math.inf
    best_epoch: Optional[int] = None
    best_step: Optional[int] = None
    train_seconds: float = 0.0
    wall_seconds: float = 0.0  # wall-clock time of all sessions of this run (set at each save)
    train_tokens: int = 0
    metric_lines: int = 0
    wandb_id: Optional[str] = None
    # the training-loss window since the last evaluation (saved, so a resumed run logs the
    # train_loss and tokens/s of the interrupted window as the uninterrupted run does)
    window_loss: float = 0.0
    window_tokens: int = 0
    window_seconds: float = 0.0

    def reset_window(self) -> None:
        self.window_loss, self.window_tokens, self.window_seconds = 0.0, 0, 0.0

    def window_metrics(self) -> tuple:
        """(train loss per target token, target tokens/s) of the window; None where it is empty."""
        loss = self.window_loss / self.window_tokens if self.window_tokens else None
        tps = self.window_tokens / self.window_seconds if self.window_seconds else None
        return loss, tps


# --------------------------------------------------------------------------------------------
# set-up helpers


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> Dict[str, Any]:
    """Every RNG a run draws from; on CUDA only the training device's generator (a resumed job may
    see another number of GPUs: one state per visible device would not restore there)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Dict[str, Any], device: torch.device) -> None:
    """Restore :func:`rng_state` (tensors as loaded on the CPU). Older checkpoints hold a list of
    every visible device's CUDA state: the training device's entry is taken from it."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and device.type == "cuda":
        if isinstance(cuda, (list, tuple)):
            cuda = cuda[min(device.index or 0, len(cuda) - 1)]
        torch.cuda.set_rng_state(cuda.cpu(), device)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("trainer.device=cuda but no CUDA device is visible; use trainer.device=auto or cpu")
    return torch.device(name)


def resolve_precision(precision: Precision, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype (None = fp32)."""
    if precision == Precision.auto:
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {Precision.fp32: None, Precision.fp16: torch.float16, Precision.bf16: torch.bfloat16}[precision]


def build_model(config: Dict[str, Any] | DictConfig, vocab_size: int, pad_id: int) -> Seq2SeqTransformer:
    """Build the model from a (resolved) config, typing ``pos`` and ``model`` by their schemas."""
    cfg = OmegaConf.create(config) if not isinstance(config, DictConfig) else config
    pos_name = cfg.pos.name
    if pos_name not in MODES:
        raise ValueError(f"unknown positional mode {pos_name!r}; known modes: {sorted(MODES)}")
    pos = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(MODES[pos_name].config_class), cfg.pos))
    model_cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), cfg.model))
    return Seq2SeqTransformer(model_cfg, pos, vocab_size, pad_id, pe=bool(cfg.pe), pcmv=bool(cfg.pcmv),
                              sco=bool(cfg.sco))


def git_commit() -> Optional[str]:
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (commit + ("-dirty" if dirty else "")) or None


def lr_at(step: int, peak: float, warmup: int) -> float:
    """Inverse-sqrt ("noam") schedule: linear warm-up to ``peak`` at ``warmup``, then ~1/sqrt(step).
    OpenNMT-py's ``lr * d_model^-0.5 * min(s^-0.5, s * w^-1.5)`` is this with
    ``peak = lr * (d_model * w)^-0.5``."""
    step = max(step, 1)
    warmup = max(warmup, 1)
    return peak * min(step / warmup, math.sqrt(warmup / step))


def write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


# --------------------------------------------------------------------------------------------
# the trainer


class Trainer:
    def __init__(self, cfg: DictConfig, run_dir: Path, dist: Optional[Dist] = None):
        validate(cfg)
        self.cfg, self.tcfg = cfg, cfg.trainer
        self.dist = dist or Dist()
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.config = to_container(cfg)
        if self.tcfg.num_threads:
            torch.set_num_threads(self.tcfg.num_threads)
        self.device = resolve_device(self.tcfg.device.value)
        if self.device.type == "cuda" and self.dist.active:
            self.device = torch.device("cuda", self.dist.local_rank)  # one GPU per process
        if self.device.type == "cpu" and str(getattr(cfg.model.attn_backend, "value", cfg.model.attn_backend)) == "flex":
            raise ConfigError(f"model.attn_backend=flex cannot train on CPU: flex_attention in torch {torch.__version__} "
                              "has no CPU backward; use model.attn_backend=auto (eager/SDPA on CPU, flex on CUDA)")
        self.amp_dtype = resolve_precision(self.tcfg.precision, self.device)
        seed_everything(cfg.seed)
        if not self.dist.main:
            self.dist.wait_for_main()  # rank 0 trains the tokenizer and builds any binarised cache first
        self.data: DataBundle = prepare_data(cfg.data, cfg.seed)
        if self.dist.main:
            self.dist.wait_for_main()
        tok = self.data.tokenizer
        self.model = build_model(cfg, tok.vocab_size, tok.pad_id).to(self.device)
        # what the training step calls: the model itself, or its DistributedDataParallel wrapper
        # (which averages gradients over ranks); checkpoints and evaluation use self.model
        self.train_model = self.model
        if self.dist.active:
            self.train_model = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=self.tcfg.lr, betas=tuple(self.tcfg.adam_betas),
                                          eps=self.tcfg.adam_eps, weight_decay=self.tcfg.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp_dtype == torch.float16)
        self.state = TrainState()
        self._preemption: Optional[PreemptionGuard] = None  # set while fit() runs
        self.logger = None
        self._session_start, self._wall_before = time.perf_counter(), 0.0
        self._seed_rank()

    def record_start(self) -> None:
        """The run starts (or resumes): rank 0 writes its resolved ``config.yaml``. Nothing in the
        run dir is written before this, so a start refused earlier leaves it as it was."""
        if self.dist.main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.run_dir / "config.yaml", OmegaConf.to_yaml(OmegaConf.create(self.config)).encode())

    def _seed_rank(self) -> None:
        """Distinct dropout streams per rank, derived from (seed, rank, step) so a resumed run with
        the same world size draws the same ones (a no-op for one process)."""
        if self.dist.active:
            torch.manual_seed(self.cfg.seed * 1_000_003 + self.dist.rank * 7_919 + self.state.step)

    def wall_seconds(self) -> float:
        return self._wall_before + time.perf_counter() - self._session_start

    # ---- checkpoints -------------------------------------------------------------------------

    def _payload(self, full: bool) -> Dict[str, Any]:
        self.state.wall_seconds = self.wall_seconds()
        payload = {
            "model": self.model.state_dict(),
            "config": self.config,
            "tokenizer": self.data.tokenizer.model_proto,
            "vocab_size": self.data.tokenizer.vocab_size,
            "state": asdict(self.state),
        }
        if full:
            payload.update(optimizer=self.optimizer.state_dict(), scaler=self.scaler.state_dict(),
                           rng=rng_state(self.device))
        return payload

    def save_last(self) -> None:
        if self.dist.main:
            checkpoint.save_atomic(self._payload(full=True), self.ckpt_dir / "last.pt")

    def try_resume(self) -> bool:
        path = self.ckpt_dir / "last.pt"
        if not (self.tcfg.resume and path.is_file()):
            return False
        # on the CPU: the RNG states must stay CPU ByteTensors, and load_state_dict moves the
        # model's and the optimizer's tensors to their parameters' device itself
        ckpt = checkpoint.load(path, map_location="cpu")
        if ckpt.get("tokenizer") not in (None, self.data.tokenizer.model_proto):
            # another sentencepiece version (or data) gives other token ids: the weights would not fit
            saved = self.ckpt_dir / "subwords.model"
            if self.dist.main:
                atomic_write_bytes(saved, ckpt["tokenizer"])
            raise ConfigError(f"{path} was trained with another subword model than this run's data config "
                              "gives (e.g. another sentencepiece version trained it); resume with that model: "
                              f"data.subword_file={saved}")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self._load_scaler(ckpt["scaler"])
        set_rng_state(ckpt["rng"], self.device)
        self.state = TrainState(**ckpt["state"])
        self._wall_before = self.state.wall_seconds
        changed = _diff(ckpt["config"], self.config)
        if changed:
            log.warning("resuming with a changed config: %s", ", ".join(changed))
        self._seed_rank()
        # forget evaluations logged after the checkpoint (an interrupted run may have written some)
        metrics = self.run_dir / "metrics.jsonl"
        if metrics.is_file() and self.dist.main:
            lines = metrics.read_text().splitlines(keepends=True)[: self.state.metric_lines]
            atomic_write_bytes(metrics, "".join(lines).encode())
        log.info("resumed from %s at epoch %d, batch %d, step %d", path, self.state.epoch,
                 self.state.batch_in_epoch, self.state.step)
        return True

    def _load_scaler(self, saved: Dict[str, Any]) -> None:
        """The GradScaler's state, when the checkpoint has one to give: a run saved without fp16
        (bf16 on one node, fp32) has an empty state, and resuming it in fp16 (e.g. requeued onto
        a GPU without bf16) starts a fresh scale instead of failing."""
        if not saved:
            if self.scaler.is_enabled():
                log.info("last.pt has no fp16 loss-scale state (saved without fp16): starting a fresh scale")
            return
        self.scaler.load_state_dict(saved)

    # ---- training ----------------------------------------------------------------------------

    def _budget_left(self) -> bool:
        """Whether to keep training. A time budget (``max_minutes``) is measured per rank, so with
        several ranks it is rank 0's answer that counts; the other limits agree on every rank."""
        if self.tcfg.max_minutes is None:
            return self._own_budget_left()
        return self.dist.broadcast(self._own_budget_left())

    def _own_budget_left(self) -> bool:
        t = self.tcfg
        if t.max_steps is not None and self.state.step >= t.max_steps:
            return False
        if t.max_minutes is not None and self.state.train_seconds >= 60.0 * t.max_minutes:
            return False
        return True

    def evaluate_on_main(self, train_loss: Optional[float], tokens_per_s: Optional[float]) -> None:
        """Rank 0 evaluates (and saves best.pt); the other ranks wait for it."""
        if self.dist.main:
            self.evaluate(train_loss, tokens_per_s)
        self.dist.wait_for_main()

    def evaluate(self, train_loss: Optional[float], tokens_per_s: Optional[float]) -> Dict[str, Any]:
        metrics = evaluate_split(self.model, self.data.examples["valid"], batch_tokens=self.tcfg.eval_batch_tokens,
                                 device=self.device, label_smoothing=self.tcfg.label_smoothing,
                                 amp_dtype=self.amp_dtype)
        record = {"epoch": self.state.epoch, "epoch_fraction": self._epoch_position(), "step": self.state.step,
                  "lr": self.optimizer.param_groups[0]["lr"], "train_loss": train_loss,
                  "tokens_per_s": tokens_per_s, "train_seconds": self.state.train_seconds, **metrics}
        with open(self.run_dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        self.state.metric_lines += 1
        self.logger.log({f"eval/{k}": v for k, v in record.items() if v is not None}, step=self.state.step)
        log.info("eval epoch %.2f step %d: val_acc %.2f val_ppl %.2f val_loss %.4f", record["epoch_fraction"],
                 self.state.step, metrics["val_acc"], metrics["val_ppl"], metrics["val_loss"])
        value = record.get(self.tcfg.best_metric)
        if value is None:
            raise TrainingError(f"trainer.best_metric={self.tcfg.best_metric!r} is not an evaluation metric; "
                                f"use one of {sorted(k for k, v in record.items() if isinstance(v, float))}")
        if value > self.state.best_value:
            self.state.best_value, self.state.best_epoch, self.state.best_step = value, record["epoch_fraction"], self.state.step
            checkpoint.save_atomic(self._payload(full=False), self.ckpt_dir / "best.pt")
        return record

    def _epoch_position(self) -> float:
        n = max(len(self._batches), 1) if hasattr(self, "_batches") else 1
        return self.state.epoch + self.state.batch_in_epoch / n

    def train_epoch(self) -> None:
        t, st = self.tcfg, self.state
        examples = self.data.examples["train"]
        self._batches = make_batches(examples, t.batch_tokens, shuffle=True, seed=self.cfg.seed, epoch=st.epoch)
        n_batches = len(self._batches)
        self.model.train()
        bar = tqdm(total=n_batches, initial=st.batch_in_epoch, desc=f"epoch {st.epoch + 1}",
                   disable=not (t.progress and self.dist.main), dynamic_ncols=True, leave=False)
        per_update = t.accum_steps * self.dist.world  # batches in one optimizer update, over all ranks
        nonfinite = 0
        try:
            while st.batch_in_epoch < n_batches and self._budget_left():
                group = self._batches[st.batch_in_epoch: st.batch_in_epoch + per_update]
                start = time.perf_counter()
                loss_sum, n_tokens = self._update(examples, group)
                elapsed = time.perf_counter() - start
                st.batch_in_epoch += len(group)
                bar.update(len(group))
                if not math.isfinite(loss_sum):
                    nonfinite += 1
                    if self.amp_dtype != torch.float16 or nonfinite > t.max_nonfinite_steps:
                        raise TrainingError(
                            f"the training loss is {loss_sum} at step {st.step + 1} (epoch {st.epoch + 1}); "
                            f"nothing was updated and {self._last_good_state()}. "
                            "Lower trainer.lr, keep trainer.clip_grad_norm > 0, raise trainer.warmup_steps, "
                            "or train with trainer.precision=fp32/bf16"
                        )
                    continue
                nonfinite = 0
                st.step += 1
                st.train_seconds += elapsed
                st.train_tokens += n_tokens
                st.window_loss += loss_sum
                st.window_tokens += n_tokens
                st.window_seconds += elapsed
                train_loss, tps = st.window_metrics()
                bar.set_postfix(loss=f"{train_loss:.3f}", tok_s=f"{tps or 0:.0f}", refresh=False)
                if st.step % t.log_every_steps == 0:
                    self.logger.log({"train/loss": train_loss, "train/lr": self._lr,
                                     "train/tokens_per_s": tps}, step=st.step)
                if t.eval_every_steps and st.step % t.eval_every_steps == 0 and st.batch_in_epoch < n_batches:
                    self.evaluate_on_main(train_loss, tps)
                    st.reset_window()
                if t.save_every_steps and st.step % t.save_every_steps == 0:
                    self.save_last()
                if self._preempted():
                    log.warning("preempted: saving %s at step %d; the job resumes from it when run again",
                                self.ckpt_dir / "last.pt", st.step)
                    self._stop_for_preemption()
        except KeyboardInterrupt:
            log.warning("interrupted: saving %s at step %d; re-run with the same run dir to resume",
                        self.ckpt_dir / "last.pt", st.step)
            self.save_last()
            raise
        finally:
            bar.close()

    def _last_good_state(self) -> str:
        """What a failed run leaves to resume from, in words."""
        last = self.ckpt_dir / "last.pt"
        if last.is_file():
            step = checkpoint.load(last, map_location="cpu")["state"]["step"]
            return f"{last} holds the last good state (step {step})"
        return (f"no checkpoint was written yet ({last} is written at each epoch's end and every "
                "trainer.save_every_steps updates)")

    def _update(self, examples, group):
        """One optimizer update over ``group`` (``accum_steps`` × world-size batches; this rank
        computes every world-size-th of them). Returns (loss summed over all ranks, target tokens).

        The loss is normalised by the target tokens of the whole group and multiplied by the world
        size, so DDP's gradient average equals the single-process gradient of the same group."""
        t, world = self.tcfg, self.dist.world
        n_tokens = sum(len(examples[i][1]) - 1 for idx in group for i in idx)  # gold tokens: tgt[1:]
        mine = group[self.dist.rank::world]
        # a rank without a batch in the last update of an epoch still joins the gradient all-reduce
        # with a zero-weighted pass, so every rank runs the same collectives
        weight = float(world) if mine else 0.0
        batches = [collate(examples, idx) for idx in (mine or group[:1])]
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = 0.0
        for i, (src, tgt) in enumerate(batches):
            src, tgt = src.to(self.device), tgt.to(self.device)
            sync = i == len(batches) - 1 or not self.dist.active
            with nullcontext() if sync else self.train_model.no_sync():
                with autocast(self.device, self.amp_dtype):
                    logits = self.train_model(src, tgt[:, :-1])
                loss = smoothed_loss(logits, tgt[:, 1:], t.label_smoothing)
                self.scaler.scale(loss / n_tokens * weight if world > 1 else loss / n_tokens).backward()
            if mine:
                loss_sum += loss.item()
        loss_sum = self.dist.sum(loss_sum, self.device)
        if not math.isfinite(loss_sum):
            self.optimizer.zero_grad(set_to_none=True)
            if self.amp_dtype == torch.float16:
                self.scaler.update(self.scaler.get_scale() / 2)
            return loss_sum, n_tokens
        self._lr = lr_at(self.state.step + 1, t.lr, t.warmup_steps)
        for group_ in self.optimizer.param_groups:
            group_["lr"] = self._lr
        if t.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss_sum, n_tokens

    def fit(self) -> None:
        """Train until the budget is spent. A preemption signal (SIGTERM, submitit's SIGUSR2) is
        acted on after the update in progress: last.pt is written, then the signal is handed on
        (see :mod:`agf_exp.preemption`)."""
        with PreemptionGuard() as self._preemption:
            self._fit()
            if self._preempted():  # arrived during the last evaluation
                self._stop_for_preemption()

    def _preempted(self) -> bool:
        """Whether a preemption signal is pending on any rank. Under DDP the ranks agree (one
        all-reduce) so that they all stop after the same update: a rank leaving alone would
        leave the others waiting in the next collective."""
        local = self._preemption is not None and self._preemption.pending
        return self.dist.any(local, self.device)

    def _stop_for_preemption(self) -> None:
        """Write last.pt, then hand the signal on (see :mod:`agf_exp.preemption`); a rank that did
        not receive the signal itself stops with the others."""
        self.save_last()
        signalled = self._preemption.pending
        self._preemption.hand_on()
        if not signalled:
            raise Preempted("another rank was stopped by a signal; this rank stopped with it after last.pt "
                            "was saved; run the same command again to resume")

    def _fit(self) -> None:
        t, st = self.tcfg, self.state
        while st.epoch < t.max_epochs and self._budget_left():
            self.train_epoch()
            train_loss, tps = st.window_metrics()
            if st.batch_in_epoch >= len(self._batches):
                st.epoch += 1
                st.batch_in_epoch = 0
                self.evaluate_on_main(train_loss, tps)
                st.reset_window()
            elif st.window_tokens:  # stopped mid-epoch by max_steps / max_minutes
                self.evaluate_on_main(train_loss, tps)
                st.reset_window()
            self.save_last()

    # ---- final evaluation --------------------------------------------------------------------

    def draw_fields(self) -> None:
        """PNGs of the learned positional fields of the decoded (best) model in ``<run dir>/fields``,
        also logged to W&B. A plotting failure is logged, never fatal: the run is already complete."""
        from .plot_fields import draw, fields

        field_list = fields(self.model)
        if not field_list:
            return
        try:
            written = draw(field_list, self.run_dir / "fields", title=f"pos={self.config['pos']['name']}")
        except Exception as e:  # e.g. no matplotlib backend: the run's results are already saved
            log.warning("could not draw the positional fields: %s", e)
            return
        log.info("positional fields drawn in %s", self.run_dir / "fields")
        self.logger.log_images({f"fields/{name}": path for name, path in written.items()}, step=self.state.step)

    def draw_curves(self) -> None:
        """``<run dir>/curves.png``: validation accuracy and losses per epoch, also logged to W&B."""
        from .report import plot_run_curves

        try:
            path = plot_run_curves(self.run_dir)
        except Exception as e:  # never fatal: the run's results are already saved
            log.warning("could not draw the learning curves: %s", e)
            return
        if path is not None:
            self.logger.log_images({"curves/learning_curves": path}, step=self.state.step)

    def final_decode(self) -> Dict[str, Any]:
        t = self.tcfg
        best = self.ckpt_dir / "best.pt"
        if best.is_file():
            self.model.load_state_dict(checkpoint.load(best, map_location="cpu")["model"])
        results: Dict[str, Any] = {}
        hyp_dir = self.run_dir / "hyps"
        for split in t.decode_splits:
            sources = [s for s, _ in self.data.examples[split]]
            refs = self.data.raw[split][1]
            if t.max_decode_sentences:
                sources, refs = sources[: t.max_decode_sentences], refs[: t.max_decode_sentences]
            for strategy in t.decode_strategies:
                start = time.perf_counter()
                hyps = translate(self.model, self.data.tokenizer, sources, strategy=strategy, beam_size=t.beam_size,
                                 len_penalty=t.len_penalty, max_len_a=t.max_len_a, max_len_b=t.max_len_b,
                                 batch_sentences=t.decode_batch_sentences, device=self.device,
                                 amp_dtype=self.amp_dtype)
                atomic_write_bytes(hyp_dir / f"{split}.{strategy}.txt", ("\n".join(hyps) + "\n").encode())
                atomic_write_bytes(hyp_dir / f"{split}.ref.txt", ("\n".join(refs) + "\n").encode())
                scores = score_translations(hyps, refs)
                scores["seconds"] = time.perf_counter() - start
                results[f"{split}/{strategy}"] = scores
                log.info("%s %s: BLEU %.2f chrF %.2f (%s)", split, strategy, scores["bleu"], scores["chrf"],
                         scores["bleu_signature"])
        return results


def _diff(old: Dict[str, Any], new: Dict[str, Any], prefix: str = "") -> list:
    keys = set(old) | set(new)
    out = []
    for key in sorted(keys):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _diff(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} -> {b!r}")
    return out


# keys that do not change what a run computes: a finished run is still "the same run" without them
_RESULT_NEUTRAL = ("logger", "trainer.progress", "trainer.log_every_steps", "trainer.num_threads", "table",
                   "trainer.dist_timeout_minutes", "trainer.dist_wait_minutes", "trainer.lock_run_dir")
# a finished run asked for a longer budget continues from last.pt instead of being refused
_BUDGET = ("trainer.max_epochs", "trainer.max_steps", "trainer.max_minutes")


def _without(config: Dict[str, Any], dotted_keys) -> Dict[str, Any]:
    out = json.loads(json.dumps(config))
    for dotted in dotted_keys:
        *parents, last = dotted.split(".")
        node = out
        for key in parents:
            node = node.get(key, {}) if isinstance(node, dict) else {}
        if isinstance(node, dict):
            node.pop(last, None)
    return out


def _added_at_default(done: Dict[str, Any], cfg: DictConfig, prefix: str = "") -> List[str]:
    """Dotted keys that ``cfg`` has and the finished run's config ``done`` lacks, whose value is
    their schema's default: options added to the code after the run finished, which do not
    change what it computed (so the run still counts as complete)."""
    import dataclasses

    out: List[str] = []
    schema = OmegaConf.get_type(cfg)
    defaults = {}
    if dataclasses.is_dataclass(schema):
        for f in dataclasses.fields(schema):
            if f.default is not dataclasses.MISSING:
                defaults[f.name] = f.default
            elif f.default_factory is not dataclasses.MISSING:
                defaults[f.name] = f.default_factory()
    for key in cfg:
        node = cfg._get_node(key)
        if key not in done:
            if key in defaults and not isinstance(node, DictConfig):
                value = to_container(OmegaConf.create({"v": cfg[key]}))["v"]
                default = getattr(defaults[key], "value", defaults[key])
                if value == default:
                    out.append(f"{prefix}{key}")
        elif isinstance(node, DictConfig) and isinstance(done[key], dict):
            out += _added_at_default(done[key], node, f"{prefix}{key}.")
    return out


def _same_subwords(cfg: DictConfig, run_dir: Path, summary: Dict[str, Any]) -> tuple:
    """("data.subword_file",) when ``cfg`` names a subword model file with exactly the model the
    finished run in ``run_dir`` used (its summary's hash, else its last.pt's model): naming the
    model it trained does not change the run."""
    given = cfg.data.get("subword_file")
    if not given or not Path(given).expanduser().is_file():
        return ()
    data = Path(given).expanduser().read_bytes()
    recorded = (summary.get("tokenizer") or {}).get("sha256")
    if recorded is None and (run_dir / "checkpoints" / "last.pt").is_file():
        proto = checkpoint.load(run_dir / "checkpoints" / "last.pt", map_location="cpu").get("tokenizer")
        recorded = hashlib.sha256(proto).hexdigest() if proto else None
    return ("data.subword_file",) if recorded == hashlib.sha256(data).hexdigest() else ()


def completed_summary(cfg: DictConfig, run_dir: Path) -> Optional[Dict[str, Any]]:
    """The summary of a finished run of this config in ``run_dir``, or None if it must (re)train.
    Raises :class:`ConfigError` when ``run_dir`` holds a finished run of a different config."""
    summary_path, config_path = run_dir / "summary.json", run_dir / "config.yaml"
    if not (summary_path.is_file() and config_path.is_file()):
        return None
    try:
        summary = json.loads(summary_path.read_text())
    except json.JSONDecodeError:
        return None
    if summary.get("status") != "complete":
        return None
    done = OmegaConf.to_container(OmegaConf.load(config_path), resolve=True)
    neutral = _RESULT_NEUTRAL + tuple(_added_at_default(done, cfg)) + _same_subwords(cfg, run_dir, summary)
    changed = _diff(_without(done, neutral), _without(to_container(cfg), neutral))
    if changed and not _diff(_without(done, neutral + _BUDGET), _without(to_container(cfg), neutral + _BUDGET)):
        log.info("%s is complete but its budget changed (%s): continuing from last.pt", run_dir, "; ".join(changed))
        return None
    if changed:
        raise ConfigError(f"{run_dir} holds a finished run of a different config ({'; '.join(changed[:5])}); "
                          "move or delete it to retrain, or choose another run dir "
                          "(hydra.run.dir=... / hydra.sweep.dir=...)")
    return summary


def train(cfg: DictConfig, run_dir: str | Path, on_start: Optional[Callable[[Path], None]] = None) -> Dict[str, Any]:
    """Train (or resume) one run in ``run_dir`` and return its summary. A run dir that already
    holds the finished run of this config is not trained again: its summary is returned.

    The run holds ``run_dir``'s lock (:mod:`agf_exp.runlock`) throughout; a start refused before
    training begins (the dir in use, a finished run of another config, bad data) raises and
    leaves the dir as it was. ``on_start(run_dir)`` is called (on rank 0) once the start is
    accepted, before the first update: ``run.py`` writes Hydra's files and the log there.

    Under ``torchrun`` every rank calls this; they train together on rank 0's run dir and all
    return rank 0's summary (see :mod:`agf_exp.distributed`)."""
    validate(cfg)
    dist = init_distributed(str(getattr(cfg.trainer.device, "value", cfg.trainer.device)),
                            cfg.trainer.dist_timeout_minutes, cfg.trainer.dist_wait_minutes)
    try:
        summary = _locked_train(cfg, Path(dist.broadcast(str(run_dir))), dist, on_start)
        # every rank past its last collective before any tears its gloo group down (once, under
        # a loaded CPU, rank 0 aborted with "terminate called without an active exception" there)
        dist.barrier()
        return summary
    finally:
        dist.close()


def _locked_train(cfg: DictConfig, run_dir: Path, dist: Dist, on_start) -> Dict[str, Any]:
    """:func:`_train` holding the run dir's lock (rank 0; every rank learns of a refusal)."""
    lock = RunDirLock(run_dir) if dist.main and cfg.trainer.lock_run_dir else None
    refusal = None
    if lock is not None:
        try:
            lock.acquire()
        except RunDirLocked as e:
            refusal = str(e)
    refusal = dist.broadcast(refusal)
    if refusal:
        raise RunDirLocked(refusal)
    started = False

    def start() -> None:
        nonlocal started
        started = True
        if on_start is not None and dist.main:
            on_start(run_dir)

    try:
        return _train(cfg, run_dir, dist, start)
    finally:
        if lock is not None:
            lock.release(started=started)


def _train(cfg: DictConfig, run_dir: Path, dist: Dist, start: Callable[[], Any]) -> Dict[str, Any]:
    done = completed_summary(cfg, run_dir)
    if done is not None:
        log.info("%s is complete (summary.json); skipping. Delete it to train again.", run_dir)
        return done
    trainer = Trainer(cfg, run_dir, dist)
    trainer.try_resume()
    trainer.record_start()
    start()
    st = trainer.state
    params = trainer.model.num_parameters()
    log.info("model: %d parameters (%d positional); device %s, autocast %s%s", params["total"],
             params["positional"], trainer.device, trainer.amp_dtype,
             f"; rank {dist.rank} of {dist.world}" if dist.active else "")
    trainer.logger = NullLogger()
    if dist.main:  # only rank 0 logs
        trainer.logger = build_logger(cfg.logger, trainer.config, trainer.run_dir, run_id=st.wandb_id,
                                      default_name=str(cfg.run_name))
        st.wandb_id = trainer.logger.run_id
    try:
        trainer.fit()
        summary = _finish(cfg, trainer, params) if dist.main else None
        dist.wait_for_main()  # the other ranks wait while rank 0 decodes (beam search can be long)
        return dist.broadcast(summary)
    finally:
        trainer.logger.finish()


def _finish(cfg: DictConfig, trainer: Trainer, params: Dict[str, int]) -> Dict[str, Any]:
    """Rank 0, after training: decode, draw, write summary.json and the W&B summary."""
    st = trainer.state
    with PreemptionGuard(immediate="the final decoding"):  # a rerun resumes at the end and decodes
        decoded = trainer.final_decode()
    trainer.draw_fields()
    trainer.draw_curves()
    last = {}
    metrics_path = trainer.run_dir / "metrics.jsonl"
    if metrics_path.is_file() and metrics_path.stat().st_size:
        last = json.loads(metrics_path.read_text().splitlines()[-1])
    summary = {
        "status": "complete",
        "run_name": str(cfg.run_name),
        "experiment": str(cfg.experiment), "row": cfg.row, "table": cfg.table,
        "pos": cfg.pos.name, "pcmv": bool(cfg.pcmv), "sco": bool(cfg.sco), "pe": bool(cfg.pe),
        "seed": cfg.seed,
        "data": trainer.data.description,
        "final": last,
        "best": {"metric": trainer.tcfg.best_metric, "value": st.best_value, "epoch": st.best_epoch,
                 "step": st.best_step},
        "decoding": decoded,
        "parameters": params,
        "epochs": st.epoch, "steps": st.step,
        "train_seconds": st.train_seconds,
        "train_tokens_per_s": st.train_tokens / st.train_seconds if st.train_seconds else None,
        "wall_seconds": trainer.wall_seconds(),
        "device": str(trainer.device) + (f" ({torch.cuda.get_device_name()})" if trainer.device.type == "cuda" else ""),
        "world_size": trainer.dist.world,
        "autocast": str(trainer.amp_dtype),
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "git_commit": git_commit(),
        "argv": sys.argv,
        "wandb_id": st.wandb_id,
        "vocab_size": trainer.data.tokenizer.vocab_size,
        "tokenizer": trainer.data.tokenizer.identity(),
        "train_pairs": len(trainer.data.examples["train"]),
        "train_pairs_dropped": trainer.data.dropped_train,
    }
    write_json(trainer.run_dir / "summary.json", summary)
    flat = {f"final/{k}": v for k, v in last.items() if isinstance(v, (int, float))}
    for key, scores in decoded.items():
        for name in ("bleu", "chrf", "bleu_lc", "bleu_signature", "chrf_signature"):
            flat[f"{key}/{name}"] = scores[name]
    trainer.logger.summary({**flat, "parameters": params["total"], "positional_parameters": params["positional"]})
    trainer.logger.save_files([trainer.run_dir / "summary.json", trainer.run_dir / "config.yaml",
                               trainer.run_dir / "metrics.jsonl", *sorted((trainer.run_dir / "hyps").glob("*.txt"))])
    return summary
