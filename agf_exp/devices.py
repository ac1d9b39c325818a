"""Devices and precision: which device a run uses, which autocast dtype, and the autocast context
(the training step, evaluation and decoding share them)."""
from __future__ import annotations

import contextlib
import enum
from typing import Optional

import torch


class Precision(str, enum.Enum):
    auto = "auto"  # bf16 on a CUDA device that supports it, else fp16 on CUDA; fp32 on CPU
    fp32 = "fp32"
    fp16 = "fp16"  # autocast + GradScaler (the paper trained in FP16)
    bf16 = "bf16"


class Device(str, enum.Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class DeviceError(ValueError):
    """The device asked for is not there; the message says what to use instead."""


def resolve_device(name: str) -> torch.device:
    """``auto``: the GPU when one is visible, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceError("trainer.device=cuda but no CUDA device is visible; use trainer.device=auto or cpu")
    return torch.device(name)


def resolve_precision(precision: Precision, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype (None = fp32)."""
    if precision == Precision.auto:
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {Precision.fp32: None, Precision.fp16: torch.float16, Precision.bf16: torch.bfloat16}[precision]


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """Mixed precision in ``dtype`` on ``device`` (nothing for fp32: ``dtype`` None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
