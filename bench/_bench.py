"""Shared helpers of the bench scripts: import path, machine description, bf16 detection, peak
memory. Not a benchmark itself.

The scripts run from a clean checkout (``python bench/<script>.py``): the repository root is put
on ``sys.path`` so ``cetd_phase1`` and ``run_phase1`` import without ``pip install -e .``.
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Benchmarks never fetch anything: the model is the packaged MiniLM copy.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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


def bf16_supported() -> bool:
    """True when the CPU has native bf16 matmuls (AVX-512 BF16 or AMX), where bf16 autocast
    pays; elsewhere bf16 is emulated and slower than fp32."""
    import torch

    capability = torch.backends.cpu.get_cpu_capability()
    return "AMX" in capability or bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def machine() -> str:
    """One line: CPU model, cores visible, torch threads, torch's CPU capability, bf16."""
    import torch

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    bf16 = "native bf16" if bf16_supported() else "no native bf16"
    return (f"{model}, {cores} cores, torch {torch.__version__} ({torch.get_num_threads()} "
            f"threads, {torch.backends.cpu.get_cpu_capability()}, {bf16})")


def today() -> str:
    return datetime.date.today().isoformat()


def peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (VmHWM; ru_maxrss where /proc is absent)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
