"""Which mixed precision pays on a device: fp16 on CUDA, bf16 on a CPU that computes it natively
(AVX-512 BF16 or AMX), fp32 elsewhere (emulated bf16 is slower than fp32)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import torch


@lru_cache(maxsize=1)  # read on every encoding call; the processor does not change
def cpu_flags() -> frozenset[str]:
    """The processor's feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


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



def weights_for_autocast(model: torch.nn.Module) -> None:
    """Store ``model``'s Linear layers in the autocast dtype of its device, as autocast would
    cast them on every call: the same products without the casts, which are most of what a
    one-requirement encoding costs beside the model itself. For a model that only encodes
    under :func:`autocast_dtype`: a float32 call would then fail on mixed dtypes."""
    dtype = autocast_dtype(next(model.parameters()).device)
    if dtype is None:
        return
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.to(dtype)
