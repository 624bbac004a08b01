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


def machine() -> str:
    """One line: CPU model, cores visible, torch threads, torch's CPU capability, bf16."""
    import torch

    from cetd_phase1.modeling.precision import cpu_has_native_bf16

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    bf16 = "native bf16" if cpu_has_native_bf16() else "no native bf16"
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
