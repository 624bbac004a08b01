"""Which mixed precision pays on a device: fp16 on CUDA, bf16 on a CPU that computes it natively
(AVX-512 BF16 or AMX), fp32 elsewhere (emulated bf16 is slower than fp32)."""

from __future__ import annotations

from pathlib import Path

import torch


def cpu_flags() -> set[str]:
    """The processor's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cpu_has_native_bf16() -> bool:
    """True when the CPU computes bf16 matmuls natively (AVX-512 BF16 or AMX), where bf16
    autocast pays; elsewhere torch emulates bf16 and it is slower than fp32."""
    return ("AMX" in torch.backends.cpu.get_cpu_capability()
            or bool(cpu_flags() & {"avx512_bf16", "amx_bf16"}))


def autocast_dtype(device: torch.device) -> torch.dtype | None:
    """The mixed precision that pays on ``device``: fp16 on CUDA, bf16 on a CPU with native
    bf16, none (fp32) elsewhere."""
    if device.type == "cuda":
        return torch.float16
    if device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return None

