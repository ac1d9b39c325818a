"""Devices and precision: which device a run uses, which autocast dtype, and the autocast context
(the training step, evaluation and decoding share them)."""
from __future__ import annotations

import contextlib
import ctypes
import enum
import os
import platform
from typing import Optional, Tuple

import torch


class Precision(str, enum.Enum):
    auto = "auto"  # bf16 on a CUDA device that supports it, else fp16 on CUDA; on a CPU see resolve_precision
    fp32 = "fp32"
    fp16 = "fp16"  # autocast + GradScaler (the paper trained in FP16)
    bf16 = "bf16"  # autocast; on a CPU with the fused output projection + loss (docs/precision.md)


#: Whether ``trainer.precision=auto`` picks bf16 on a CPU that has bf16 matrix units. It stays
#: False until bf16 runs of ``experiment=small`` are shown to reach fp32's validation accuracy
#: and test BLEU within 0.5 points over seeds (docs/precision.md, "Quality parity").
CPU_AUTO_BF16 = False


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


def cpu_bf16_units() -> Optional[str]:
    """The CPU's bf16 matrix instructions as PyTorch's own CPU-feature check sees them (the ones
    oneDNN's bf16 matmul uses): ``"amx_bf16"``, ``"avx512_bf16"``, or None without any (on such a
    CPU a bf16 matmul is emulated and runs slower than fp32)."""
    cpu = getattr(torch, "cpu", None)
    checks = (("amx_bf16", "_is_amx_tile_supported"), ("avx512_bf16", "_is_avx512_bf16_supported"))
    for name, check in checks:
        fn = getattr(cpu, check, None)
        try:
            if fn is not None and fn():
                return name
        except RuntimeError:
            continue
    return None


def resolve_precision(precision: Precision, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype (None = fp32)."""
    return describe_precision(precision, device)[0]


def describe_precision(precision: Precision, device: torch.device) -> Tuple[Optional[torch.dtype], str]:
    """(the autocast dtype, None for fp32; why it was chosen, in words for the log and
    summary.json). ``auto``: bf16 on a CUDA device that has it, else fp16 there; on a CPU, bf16
    where the CPU has bf16 matrix units and :data:`CPU_AUTO_BF16` is set, else fp32."""
    precision = Precision(precision)
    if precision != Precision.auto:
        dtype = {Precision.fp32: None, Precision.fp16: torch.float16, Precision.bf16: torch.bfloat16}[precision]
        why = f"trainer.precision={precision.value}"
        if device.type == "cpu" and dtype is not None:
            units = cpu_bf16_units()
            why += f" (CPU bf16 units: {units or 'none'})"
        return dtype, why
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "auto: bf16 (the GPU supports it)"
        return torch.float16, "auto: fp16 (the GPU has no bf16)"
    units = cpu_bf16_units()
    if units is None:
        return None, "auto: fp32 (the CPU has no bf16 matrix units)"
    if not CPU_AUTO_BF16:
        return None, f"auto: fp32 (the CPU has {units}; trainer.precision=bf16 uses it, see docs/precision.md)"
    return torch.bfloat16, f"auto: bf16 (the CPU has {units})"


def cpu_precision_problem(precision: Precision, device: torch.device) -> Optional[str]:
    """A warning for reduced precision on a CPU that cannot run it fast (it still trains correctly,
    emulated): one line naming the fix; None when there is nothing to say."""
    precision = Precision(precision)
    if device.type != "cpu":
        return None
    if precision == Precision.fp16:
        return ("trainer.precision=fp16 on a CPU: fp16 matmuls are emulated there and much slower than fp32; "
                "use trainer.precision=fp32 (or bf16 on a CPU with bf16 matrix units)")
    if precision == Precision.bf16 and cpu_bf16_units() is None:
        return ("trainer.precision=bf16 but this CPU has no bf16 matrix units (no amx_bf16 / avx512_bf16): bf16 "
                "matmuls are emulated and run slower than fp32; use trainer.precision=fp32 (or auto)")
    return None


def tune_cpu_allocator() -> bool:
    """Keep freed memory in glibc's heap instead of returning it to the system after every step:
    tensors up to 32 MB (glibc's maximum mmap threshold) are then served from pages already
    touched, not from fresh mmap()ed ones whose first-touch page faults cost ~5x an elementwise
    op on them (measured in benchmarks/precision.py). A no-op (False) outside glibc."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED is not None:
        return _ALLOCATOR_TUNED
    _ALLOCATOR_TUNED = False
    if platform.system() != "Linux":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        ok = libc.mallopt(m_mmap_threshold, 32 * 1024 * 1024) == 1
        ok = libc.mallopt(m_trim_threshold, 1024 * 1024 * 1024) == 1 and ok
    except (OSError, AttributeError):
        return False
    _ALLOCATOR_TUNED = ok
    return ok


_ALLOCATOR_TUNED: Optional[bool] = None

#: oneDNN primitives kept for reuse in a bf16 process on the CPU. oneDNN (PyTorch's bf16 matmul
#: on a CPU) keeps up to 1,024 by default, one per new shape with its buffers; training batches
#: change shape every update, so the default cache only grew: a bf16 run's peak RSS rose with
#: every update, above fp32's (benchmarks/README.md, "Whole-run peak RSS"). 16 keeps the few
#: shapes a decoding step repeats (beam search at full speed; 0 costs it 4-14 %).
ONEDNN_CACHE_CAPACITY = 16
ONEDNN_CACHE_ENV = "ONEDNN_PRIMITIVE_CACHE_CAPACITY"


def limit_onednn_cache(capacity: int = ONEDNN_CACHE_CAPACITY) -> str:
    """Cap oneDNN's primitive cache for this process (its ``ONEDNN_PRIMITIVE_CACHE_CAPACITY``),
    unless the user set it; the capacity in force, as oneDNN will read it. oneDNN reads the
    variable once, when the process creates its first primitive: call this before any bf16
    matmul (the trainer does, before it builds the model)."""
    os.environ.setdefault(ONEDNN_CACHE_ENV, str(capacity))
    return os.environ[ONEDNN_CACHE_ENV]


def autocast(device: torch.device, dtype: Optional[torch.dtype]):
    """Mixed precision in ``dtype`` on ``device`` (nothing for fp32: ``dtype`` None)."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
