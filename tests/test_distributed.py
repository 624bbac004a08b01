"""Two processes on the CPU (gloo) through ``accelerate launch``: one DDP step equals a
single-process step over the same global batch, and a short 2-rank ``run_phase1.py`` run trains,
saves once and reloads."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import _ddp_step  # noqa: E402
from _tiny_models import make_tiny_decoder, write_apps  # noqa: E402

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


def test_cross_rank_batches_are_conflict_free_global_batches():
    """With num_replicas=2 the batches come in pairs (one per rank) whose union has no
    requirement's positive among another's candidates, split evenly; without, per-rank
    batches as before."""
    import datasets

    from _tiny_models import pair_rows
    from cetd_phase1.training.sampler import NoDuplicatesBatchSampler, group_queries
    rows = pair_rows(apps=("a1", "a2", "a3"))
    for row in rows:  # the apps' code differs: they only conflict within an app
        row["code"] += f"  # {row['app_id']}"
    groups = group_queries(datasets.Dataset.from_list(rows))
    sampler = NoDuplicatesBatchSampler(groups, batch_size=2, seed=1, num_replicas=2)
    batches = list(sampler)
    assert batches and len(batches) % 2 == 0 and all(batches)
    seen = [i for b in batches for i in b]
    assert len(seen) == len(set(seen)) and len(seen) + sampler.skipped == len(groups)
    for step in range(0, len(batches), 2):
        first, second = batches[step], batches[step + 1]
        assert abs(len(first) - len(second)) <= 1
        union = first + second
        for i in union:
            others = set().union(*(sampler.candidates[j] for j in union if j != i))
            assert not sampler.positives[i] & others
    assert max(len(b) for b in batches) == 2  # 3 apps: up to 3 per global batch, split 2 + 1
    single = list(NoDuplicatesBatchSampler(groups, batch_size=2, seed=1))
    assert max(len(b) for b in single) == 2 and sum(map(len, single)) == len(groups)


def test_two_rank_training_run_saves_once_and_reloads(tmp_path):
    """``run_phase1.py`` on 2 ranks: the tiny Qwen2 with LoRA on q/k/v/o_proj, activation
    checkpointing and cross-rank negatives trains; one checkpoint is written (the weights and
    state by rank 0, each rank adding its own RNG state), the final model and the report once;
    the final model reloads with ``from_pretrained``."""
    from test_run_phase1 import APPS, SPLITS

    from cetd_phase1.modeling.model import CETDRetriever
    from cetd_phase1.ranking.encode import encode_texts
    from cetd_phase1.modeling.tokens import load_tokenizer
    # a second training app: within one app every requirement conflicts with the others, so
    # one app alone cannot fill a global batch of one requirement per rank
    apps = {**APPS, "files": {"io.py": '''
def read_lines(path):
    """Read every line of a text file into a list."""
    return open(path).read().splitlines()


def write_lines(path, lines):
    """Write a list of lines to a text file."""
    open(path, "w").write("\\n".join(lines))


def count_words(path):
    """Count the words in a text file."""
    return len(open(path).read().split())
'''}}
    manifest = write_apps(tmp_path, apps, {**SPLITS, "files": "train"})
    backbone = make_tiny_decoder(tmp_path / "qwen2")
    out = tmp_path / "out"
    config = tmp_path / "tiny.yaml"
    config.write_text(f"""
model: {{base_model: "{backbone}", output_dir: "{out}", gradient_checkpointing: true}}
training:
  max_steps: 4
  batch_size: 2
  learning_rate: 1e-3
  warmup_steps: 0
  gradient_accumulation_steps: 1
  use_lora: true
  target_modules: [q_proj, k_proj, v_proj, o_proj]
  negatives_per_query: 2
  gather_across_devices: true
  logging_steps: 2
dataset:
  source: "{manifest}"
  max_code_length: 48
  max_req_length: 24
  hard_negatives: 2
  random_negatives: 1
  label_sources: [docstring]
  cache_dir: "{tmp_path / 'cache'}"
evaluation: {{eval_steps: 4, save_steps: 4, metric: map, eval_batch_size: 8}}
""")
    done = launch_two_ranks(str(ROOT / "run_phase1.py"), "--config", str(config), timeout=240)
    assert "2 process(es) x 2 requirements x (1 + 2 negatives) - 1" in done.stdout
    assert done.stdout.count("CET-D phase 1: 4 steps") == 1  # the summary: rank 0 only
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]
    assert (out / "checkpoint-4" / "adapter_model.safetensors").is_file()
    assert {p.name for p in (out / "checkpoint-4").glob("rng_state_*")} == {
        "rng_state_0.pth", "rng_state_1.pth"}
    assert (out / "metrics.json").is_file()
    model = CETDRetriever.from_pretrained(out / "final")
    assert model.config.gather_across_devices and model.is_lora
    tok = load_tokenizer(out / "final")
    emb = encode_texts(model, tok, ["Convert a distance in kilometres to miles."], max_length=24)
    assert emb.shape == (1, 32) and np.isfinite(emb).all()
