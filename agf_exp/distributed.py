"""Data-parallel training across processes (``torchrun --nproc_per_node=N run.py ...``).

torchrun sets ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`init` joins the process group
(NCCL on CUDA, gloo on CPU). With one process everything here is a no-op, so the single-process
path is unchanged. The trainer splits every optimizer update's global batch (``accum_steps`` ×
world size token-bucketed batches) across ranks, so ``N`` processes with ``accum_steps=a``
compute the same update as one process with ``accum_steps=N·a``. Rank 0 alone evaluates, logs,
writes checkpoints and owns the run dir, whose path every rank takes from rank 0.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this module initialised the process group (and destroys it)

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def barrier(self) -> None:
        if self.active:
            torch_dist.barrier()

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

    def close(self) -> None:
        if self.owns_group and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
            self.owns_group = False


def init(device_name: str = "auto") -> Dist:
    """Join the process group torchrun describes in the environment (a no-op for one process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device_name != "cpu" and torch.cuda.is_available()
    owns = False
    if not torch_dist.is_initialized():
        if use_cuda:
            torch.cuda.set_device(local_rank)
        torch_dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        owns = True
    return Dist(rank, world, local_rank, owns)
