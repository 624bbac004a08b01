"""Two processes on the CPU (gloo) through ``accelerate launch``: one DDP step equals a
single-process step over the same global batch, and a short 2-rank ``run_phase1.py`` run trains,
saves once and reloads."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import _ddp_step  # noqa: E402
from _tiny_models import make_tiny_decoder  # noqa: E402

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_two_ranks(*args: str, timeout: int = 150) -> subprocess.CompletedProcess:
    """``ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 <args>``."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
           "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
           "--dynamo_backend", "no", "--main_process_port", str(_free_port()), *args]
    done = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stdout}\n{done.stderr}"
    return done


def _single_process_step(batch: dict[str, torch.Tensor]) -> tuple[float, dict[str, torch.Tensor]]:
    model = _ddp_step.build_model(gather=False)  # one process: nothing to gather
    loss = model(**batch).loss
    loss.backward()
    return loss.item(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "step.pt"
    launch_two_ranks(str(TESTS / "_ddp_step.py"), str(out))
    return torch.load(out)


@pytest.mark.parametrize("case", ["gather", "gather_unequal"])
def test_cross_rank_step_equals_single_process_global_batch(ddp_results, case):
    """With cross-rank negatives, the 2-rank loss (mean over ranks) and the DDP-averaged
    gradients are those of one process over the concatenated batch, also with 3 + 2
    requirements."""
    result = ddp_results[case]
    assert result["world_size"] == 2
    _, sizes = _ddp_step.CASES[case]
    loss, grads = _single_process_step(_ddp_step.merged(_ddp_step.rank_batches(sizes)))
    assert sum(result["losses"]) / 2 == pytest.approx(loss, abs=1e-5)
    assert set(result["grads"]) == set(grads)
    for name, grad in grads.items():
        torch.testing.assert_close(result["grads"][name], grad, atol=1e-5, rtol=1e-4,
                                   msg=lambda m: f"{case} {name}: {m}")


def test_without_gather_each_rank_is_its_own_half_batch(ddp_results):
    """Without the gather, rank r's loss is the single-process loss of its half of the batch
    and the gradient is the mean of the two halves' gradients (DDP's average)."""
    result = ddp_results["local"]
    halves = [_single_process_step(b) for b in _ddp_step.rank_batches(_ddp_step.CASES["local"][1])]
    assert result["losses"] == pytest.approx([h[0] for h in halves], abs=1e-5)
    for name in halves[0][1]:
        torch.testing.assert_close(result["grads"][name],
                                   (halves[0][1][name] + halves[1][1][name]) / 2,
                                   atol=1e-5, rtol=1e-4)
    # the same batch with cross-rank negatives is a different (harder) objective
    assert sum(ddp_results["gather"]["losses"]) > sum(result["losses"]) + 1e-3
