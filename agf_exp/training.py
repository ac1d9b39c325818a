"""The trainer: one run's optimisation loop, evaluations and checkpoints (:class:`Trainer`).

:func:`agf_exp.rundir.train` drives it for every run and sweep job (run-dir bookkeeping, logger,
final decoding, ``summary.json``). Re-running with the same run dir resumes from ``last.pt``
(``trainer.resume=true``): the batch order of an epoch depends only on (seed, epoch) and the RNG
states are restored, so a resumed run reproduces the uninterrupted one.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from . import checkpoint
from .atomic import append_line, atomic_write_bytes
from .config import ConfigError, config_diff, to_container
from .data import DataBundle, collate, make_batches, prepare_data
from .data.tokenizer import PAD
from .devices import (Precision, autocast, cpu_bf16_units, cpu_precision_problem, describe_precision,
                      limit_onednn_cache, resolve_device, tune_cpu_allocator)
from .distributed import Dist
from .evaluation import evaluate_split, smoothed_loss
from .fused_loss import linear_cross_entropy
from .loggers import NullLogger, eval_metrics
from .model import Seq2SeqTransformer
from .preemption import Preempted, PreemptionGuard

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
    # where each earlier session stopped and this run resumed (step, epoch, batch_in_epoch)
    resumed_at: List[Dict[str, int]] = field(default_factory=list)

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
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    # numpy's state as a tensor and plain numbers: a checkpoint holds nothing a weights-only load refuses
    numpy_state = {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: Dict[str, Any], device: torch.device) -> None:
    """Restore :func:`rng_state` (tensors as loaded on the CPU). Older checkpoints hold a list of
    every visible device's CUDA state: the training device's entry is taken from it; checkpoints of
    format 1 hold numpy's state as numpy's own tuple."""
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    saved = state["numpy"]
    if isinstance(saved, dict):
        saved = (saved["kind"], saved["keys"].numpy().astype(np.uint32), saved["pos"], saved["has_gauss"],
                 saved["cached_gaussian"])
    np.random.set_state(saved)
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and device.type == "cuda":
        if isinstance(cuda, (list, tuple)):
            cuda = cuda[min(device.index or 0, len(cuda) - 1)]
        torch.cuda.set_rng_state(cuda.cpu(), device)


def lr_at(step: int, peak: float, warmup: int) -> float:
    """Inverse-sqrt ("noam") schedule: linear warm-up to ``peak`` at ``warmup``, then ~1/sqrt(step).
    OpenNMT-py's ``lr * d_model^-0.5 * min(s^-0.5, s * w^-1.5)`` is this with
    ``peak = lr * (d_model * w)^-0.5``."""
    step = max(step, 1)
    warmup = max(warmup, 1)
    return peak * min(step / warmup, math.sqrt(warmup / step))


def batch_loss(model, generator_weight: torch.Tensor, src: torch.Tensor, tgt: torch.Tensor, label_smoothing: float,
               device: torch.device, amp_dtype: Optional[torch.dtype], fused: bool) -> torch.Tensor:
    """The summed label-smoothed loss of one batch (``tgt`` with BOS; ``model``: the model or its
    DDP wrapper), in ``amp_dtype`` autocast. ``fused``: the model returns its final decoder
    states and :func:`~agf_exp.fused_loss.linear_cross_entropy` projects them onto the vocabulary
    (``generator_weight``) and scores them chunk by chunk, never holding the logits."""
    with autocast(device, amp_dtype):
        out = model(src, tgt[:, :-1], return_hidden=fused)
    if fused:
        return linear_cross_entropy(out, generator_weight, tgt[:, 1:], label_smoothing, pad_id=PAD,
                                    dtype=amp_dtype or torch.float32)
    return smoothed_loss(out, tgt[:, 1:], label_smoothing)


# --------------------------------------------------------------------------------------------
# the trainer


class Update(NamedTuple):
    """What one optimizer update hands back to the loop."""

    loss_sum: float  # label-smoothed loss summed over the update's target tokens (all ranks)
    tokens: int  # target tokens of the update
    lr: Optional[float]  # the learning rate it used (None: skipped, the loss was not finite)


class Trainer:
    """Trains one model on one run dir's config: data, model, optimizer and their state, built
    from ``cfg`` (checked by :func:`agf_exp.config.validate`; :func:`agf_exp.rundir.train` does
    it). Nothing is written to ``run_dir`` before :meth:`record_start`. :meth:`fit` trains until
    the budget is spent, logging to the logger it is given."""

    def __init__(self, cfg: DictConfig, run_dir: Path, dist: Optional[Dist] = None):
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
        self.amp_dtype, self.precision_reason = describe_precision(self.tcfg.precision, self.device)
        warning = cpu_precision_problem(self.tcfg.precision, self.device)
        if warning and self.dist.main:
            log.warning(warning)
        # bf16 on the CPU: the output projection and the loss fused, chunk by chunk (agf_exp.fused_loss)
        self.fused_loss = self.device.type == "cpu" and self.amp_dtype == torch.bfloat16
        if self.device.type == "cpu":
            tune_cpu_allocator()
        if self.fused_loss:  # bf16 on the CPU: a bounded oneDNN cache (devices.ONEDNN_CACHE_CAPACITY)
            limit_onednn_cache()
        seed_everything(cfg.seed)
        if not self.dist.main:
            self.dist.wait_for_main()  # rank 0 trains the tokenizer and builds any binarised cache first
        self.data: DataBundle = prepare_data(cfg.data, cfg.seed)
        if self.dist.main:
            self.dist.wait_for_main()
        tok = self.data.tokenizer
        self.model = Seq2SeqTransformer.from_config(cfg, tok.vocab_size, tok.pad_id).to(self.device)
        self._check_positions()
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
        self.records: List[Dict[str, Any]] = []  # every evaluation so far: metrics.jsonl's lines, kept in last.pt
        self._preemption: Optional[PreemptionGuard] = None  # set while fit() runs
        self._session_start, self._wall_before = time.perf_counter(), 0.0
        self._seed_rank()

    def _check_positions(self) -> None:
        """With the absolute sinusoidal PE every position a split needs (its longest source and
        target, and the decoding's length limit on the decoded splits) must be in the PE table:
        checked before the first update, not at the first evaluation an epoch later."""
        if not self.model.src_embed.pe:
            return
        table, t = self.model.src_embed.pe_table.shape[0], self.tcfg
        max_len = self.cfg.data.get("max_len")
        for split, examples in self.data.examples.items():
            if not len(examples) or (split == "train" and max_len is not None and max_len + 2 <= table):
                continue  # training pairs are filtered to data.max_len subword tokens
            src = max(len(s) for s, _ in examples)
            need = {"source": src, "target": max(len(g) - 1 for _, g in examples)}
            if split in t.decode_splits:
                need["decoding limit"] = 1 + int(src * t.max_len_a + t.max_len_b)  # BOS + the limit
            what, n = max(need.items(), key=lambda kv: kv[1])
            if n > table:
                raise ConfigError(f"the {split} split needs {n} positions ({what}: its longest sentence) but "
                                  f"model.max_positions={table} (the sinusoidal PE table): raise model.max_positions "
                                  f"to at least {n}" + (", or lower data.max_len" if split == "train" else ""))

    def precision_record(self) -> Dict[str, Any]:
        """How this run computes (summary.json's ``precision``)."""
        return {"requested": Precision(self.tcfg.precision).value,
                "autocast": None if self.amp_dtype is None else str(self.amp_dtype).replace("torch.", ""),
                "why": self.precision_reason, "fused_output_loss": self.fused_loss,
                "cpu_bf16_units": cpu_bf16_units() if self.device.type == "cpu" else None}

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
            "metrics": list(self.records),
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
        lacking = [k for k in ("optimizer", "scaler", "rng", "state") if k not in ckpt]
        if lacking or not isinstance(ckpt.get("state"), dict) or set(ckpt["state"]) - set(TrainState.__dataclass_fields__):
            raise checkpoint.CheckpointError(
                f"{path} cannot be resumed: it lacks the training state ({', '.join(lacking) or 'unknown counters'}; "
                "a best.pt copied over it?); move it away to train this run from the start")
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
        self.state.resumed_at = [dict(x) for x in self.state.resumed_at] + [
            {"step": self.state.step, "epoch": self.state.epoch, "batch_in_epoch": self.state.batch_in_epoch}]
        self._wall_before = self.state.wall_seconds
        changed = config_diff(ckpt["config"], self.config)
        if changed:
            log.warning("resuming with a changed config: %s", ", ".join(changed))
        self._seed_rank()
        self.records = self._resumed_records(ckpt, path)
        if self.dist.main:
            # metrics.jsonl is the checkpoint's evaluations: lines logged after it (an interrupted
            # run may have written some) are dropped, a line a crash cut short is written whole again
            text = "".join(json.dumps(r) + "\n" for r in self.records)
            atomic_write_bytes(self.run_dir / "metrics.jsonl", text.encode())
        log.info("resumed from %s at epoch %d, batch %d, step %d", path, self.state.epoch,
                 self.state.batch_in_epoch, self.state.step)
        return True

    def _resumed_records(self, ckpt: Dict[str, Any], path: Path) -> List[Dict[str, Any]]:
        """The evaluations ``last.pt`` counts: its own copy (format 2), else the first
        ``metric_lines`` lines of metrics.jsonl, which must then all be whole."""
        n = self.state.metric_lines
        if isinstance(ckpt.get("metrics"), list) and len(ckpt["metrics"]) == n:
            return [dict(r) for r in ckpt["metrics"]]
        metrics = self.run_dir / "metrics.jsonl"
        lines = metrics.read_text(errors="replace").split("\n") if metrics.is_file() else []
        records = []
        for number, line in enumerate(lines[:n], start=1):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                raise TrainingError(f"{metrics} line {number} is not whole (cut short by a crash?) and {path}, written "
                                    "by an older agf-exp, holds no copy of it: restore the line from a copy, or move "
                                    "the run dir away to train afresh") from None
        if len(records) < n:
            raise TrainingError(f"{metrics} has {len(records)} evaluation lines but {path} counts {n}: restore "
                                "the file from a copy, or move the run dir away to train afresh")
        return records

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

    def evaluate_on_main(self, epoch_fraction: float, logger: NullLogger) -> None:
        """Rank 0 evaluates (and saves best.pt); the other ranks wait for it. The training-loss
        window closes with the evaluation."""
        if self.dist.main:
            self.evaluate(epoch_fraction, logger)
        self.dist.wait_for_main()
        self.state.reset_window()

    def evaluate(self, epoch_fraction: float, logger: NullLogger = NullLogger()) -> Dict[str, Any]:
        """Validation metrics at this point, appended to ``metrics.jsonl`` (with the training-loss
        window's loss and tokens/s) and logged; ``best.pt`` when they are the best so far."""
        train_loss, tokens_per_s = self.state.window_metrics()
        metrics = evaluate_split(self.model, self.data.examples["valid"], batch_tokens=self.tcfg.eval_batch_tokens,
                                 device=self.device, label_smoothing=self.tcfg.label_smoothing,
                                 amp_dtype=self.amp_dtype)
        record = {"epoch": self.state.epoch, "epoch_fraction": epoch_fraction, "step": self.state.step,
                  "lr": self.optimizer.param_groups[0]["lr"], "train_loss": train_loss,
                  "tokens_per_s": tokens_per_s, "train_seconds": self.state.train_seconds, **metrics}
        # on disk (fsynced) before any checkpoint that counts it is written
        append_line(self.run_dir / "metrics.jsonl", json.dumps(record))
        self.records.append(record)
        self.state.metric_lines += 1
        logger.log(eval_metrics(record), step=self.state.step)
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

    def epoch_batches(self) -> List[Any]:
        """The batches (example indices) of the current epoch: a function of (seed, epoch) only."""
        return make_batches(self.data.examples["train"], self.tcfg.batch_tokens, shuffle=True, seed=self.cfg.seed,
                            epoch=self.state.epoch)

    def train_epoch(self, batches: List[Any], logger: NullLogger = NullLogger()) -> None:
        """Updates over the epoch's ``batches`` from ``state.batch_in_epoch`` until the epoch or the
        budget ends, with the step-cadence logging, evaluations and saves."""
        t, st = self.tcfg, self.state
        examples = self.data.examples["train"]
        n_batches = len(batches)
        self.model.train()
        bar = tqdm(total=n_batches, initial=st.batch_in_epoch, desc=f"epoch {st.epoch + 1}",
                   disable=not (t.progress and self.dist.main), dynamic_ncols=True, leave=False)
        per_update = t.accum_steps * self.dist.world  # batches in one optimizer update, over all ranks
        nonfinite = 0
        try:
            while st.batch_in_epoch < n_batches and self._budget_left():
                group = batches[st.batch_in_epoch: st.batch_in_epoch + per_update]
                start = time.perf_counter()
                update = self._update(examples, group)
                elapsed = time.perf_counter() - start
                loss_sum, n_tokens = update.loss_sum, update.tokens
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
                    logger.log({"train/loss": train_loss, "train/lr": update.lr, "train/tokens_per_s": tps},
                               step=st.step)
                if t.eval_every_steps and st.step % t.eval_every_steps == 0 and st.batch_in_epoch < n_batches:
                    self.evaluate_on_main(st.epoch + st.batch_in_epoch / n_batches, logger)
                if t.save_every_steps and st.step % t.save_every_steps == 0:
                    self.save_last()
                if self._preempted():
                    self._stop_for_preemption()
        finally:
            bar.close()

    def _last_good_state(self) -> str:
        """What a failed run leaves to resume from, in words."""
        last = self.ckpt_dir / "last.pt"
        if last.is_file():
            try:
                step = checkpoint.load(last, map_location="cpu")["state"]["step"]
            except (checkpoint.CheckpointError, KeyError, TypeError) as e:
                return f"{last} cannot be resumed from either ({e})"
            return f"{last} holds the last good state (step {step})"
        return (f"no checkpoint was written yet ({last} is written at each epoch's end and every "
                "trainer.save_every_steps updates)")

    def _update(self, examples, group) -> Update:
        """One optimizer update over ``group`` (``accum_steps`` × world-size batches; this rank
        computes every world-size-th of them).

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
                loss = batch_loss(self.train_model, self.model.generator.weight, src, tgt, t.label_smoothing,
                                  self.device, self.amp_dtype, fused=self.fused_loss)
                self.scaler.scale(loss / n_tokens * weight if world > 1 else loss / n_tokens).backward()
            if mine:
                loss_sum += loss.item()
        loss_sum = self.dist.sum(loss_sum, self.device)
        if not math.isfinite(loss_sum):
            self.optimizer.zero_grad(set_to_none=True)
            if self.amp_dtype == torch.float16:
                self.scaler.update(self.scaler.get_scale() / 2)
            return Update(loss_sum, n_tokens, None)
        lr = lr_at(self.state.step + 1, t.lr, t.warmup_steps)
        for group_ in self.optimizer.param_groups:
            group_["lr"] = lr
        if t.clip_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return Update(loss_sum, n_tokens, lr)

    def fit(self, logger: NullLogger = NullLogger()) -> None:
        """Train until the budget is spent, logging to ``logger`` (rank 0's; the others get a
        :class:`~agf_exp.loggers.NullLogger`). A preemption signal (SIGTERM, submitit's SIGUSR2)
        is acted on after the update in progress: last.pt is written, then the signal is handed
        on (see :mod:`agf_exp.preemption`)."""
        with PreemptionGuard() as self._preemption:
            self._fit(logger)
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
        log.warning("stopped by a signal: saved %s at step %d; the run resumes from it when run again",
                    self.ckpt_dir / "last.pt", self.state.step)
        signalled = self._preemption.pending
        self._preemption.after = f"after saving last.pt at step {self.state.step}"
        self._preemption.hand_on()
        if not signalled:
            raise Preempted("another rank was stopped by a signal; this rank stopped with it after last.pt "
                            "was saved; run the same command again to resume")

    def _fit(self, logger: NullLogger) -> None:
        t, st = self.tcfg, self.state
        while st.epoch < t.max_epochs and self._budget_left():
            batches = self.epoch_batches()
            self.train_epoch(batches, logger)
            if st.batch_in_epoch >= len(batches):
                st.epoch += 1
                st.batch_in_epoch = 0
                self.evaluate_on_main(float(st.epoch), logger)
            elif st.window_tokens:  # stopped mid-epoch by max_steps / max_minutes
                self.evaluate_on_main(st.epoch + st.batch_in_epoch / max(len(batches), 1), logger)
            self.save_last()
            if self._preempted():  # arrived during the epoch's evaluation
                self._stop_for_preemption()
