"""Data-parallel training across processes (``torchrun --nproc_per_node=N run.py ...``).

torchrun sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`init` joins the process group
(NCCL on CUDA, gloo on CPU). With one process everything here is a no-op, so the single-process
path is unchanged. The trainer splits every optimizer update's global batch (``accum_steps`` ×
world size token-bucketed batches) across ranks, so ``N`` processes with ``accum_steps=a``
compute the same update as one process with ``accum_steps=N·a``. Rank 0 alone evaluates, logs,
writes checkpoints and owns the run dir, whose path every rank takes from rank 0.

Two timeouts, both explicit (``trainer.dist_timeout_minutes``, ``trainer.dist_wait_minutes``):
collectives of the training loop fail after the first (NCCL's own default is 10 minutes); the
places where the other ranks wait for rank 0 alone to do something long (train the tokenizer or
binarise data, evaluate and save ``best.pt``, decode the validation and test sets with beam
search) wait in :meth:`Dist.wait_for_main`, a barrier on a separate gloo group with the second.
"""
from __future__ import annotations

import inspect
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional

import torch
import torch.distributed as torch_dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this module initialised the process group (and destroys it)
    wait_group: Optional[Any] = None  # gloo group with the long timeout of wait_for_main

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            torch_dist.barrier()

    def wait_for_main(self) -> None:
        """Every rank waits here while rank 0 alone does something long (up to
        ``trainer.dist_wait_minutes``); rank 0 arrives when it is done."""
        if self.active:
            torch_dist.barrier(group=self.wait_group)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (any picklable object)."""
        if not self.active:
            return obj
        box = [obj if self.main else None]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def sum(self, value: float, device: torch.device) -> float:
        """The sum of ``value`` over ranks."""
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        torch_dist.all_reduce(t)
        return float(t.item())

    def any(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` is true on any rank (every rank gets the same answer)."""
        return self.sum(1.0 if flag else 0.0, device) > 0 if self.active else flag

    def close(self) -> None:
        if self.owns_group and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
            self.owns_group = False


def init(device_name: str = "auto", timeout_minutes: float = 30.0, wait_minutes: float = 360.0) -> Dist:
    """Join the process group torchrun describes in the environment (a no-op for one process):
    NCCL on CUDA (bound to this rank's GPU), gloo on CPU, collectives timing out after
    ``timeout_minutes``; plus the gloo group of :meth:`Dist.wait_for_main` (``wait_minutes``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    owns = False
    if not torch_dist.is_initialized():
        kwargs: dict = {"backend": "nccl" if use_cuda else "gloo", "timeout": timedelta(minutes=timeout_minutes)}
        if use_cuda:
            torch.cuda.set_device(local_rank)
            if "device_id" in inspect.signature(torch_dist.init_process_group).parameters:
                kwargs["device_id"] = torch.device("cuda", local_rank)
        torch_dist.init_process_group(**kwargs)
        owns = True
    wait_group = torch_dist.new_group(backend="gloo", timeout=timedelta(minutes=wait_minutes))
    return Dist(rank, world, local_rank, owns, wait_group)
