#!/usr/bin/env bash
# GPU smoke test and measurement for the Qwen2.5-Coder-1.5B path, for a lent GPU machine with
# no hub access: a *randomly initialised* model with the exact Qwen2.5-Coder-1.5B shapes
# (hidden 1536, 28 layers, 12 heads, 2 KV heads, MLP 8960, vocabulary 151936) in our
# CETDRetriever (LoRA r=16 on q/k/v/o_proj, last-token pooling, 768-d head, InfoNCE), trained
# with fp16 autocast + GradScaler on fp32 master weights and activation checkpointing, on
# batches of the seed's size: 8 requirements x 512 tokens, each with 1 positive + 3 negatives
# x 2048 tokens (the collator's layout; every text at its maximum length, the worst case).
# Prints steps/s, tokens/s and peak GPU memory per phase as JSON lines:
#   seed      batch 8,  up to $STEPS steps  (the seed's setting)
#   batch4    batch 4,  10 steps            (the setting proposed for a 24 GB P40)
# Finishes in under 5 minutes: each phase stops at its step count or time budget.
#
#   bash bench/gpu_smoke.sh                     # on the GPU machine, from the repo root
#   GPU_SMOKE_TINY=1 bash bench/gpu_smoke.sh    # dry run of the same code on a CPU, tiny shapes
# Environment: STEPS (50), BUDGET_S (seconds for the seed phase, 170), NEGATIVES (3).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF=${PYTORCH_CUDA_ALLOC_CONF:-expandable_segments:True}
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
    --format=csv,noheader || true

timeout 285 python - <<'EOF'
import json
import math
import os
import sys
import time

import torch
from transformers import Qwen2Config

from cetd_phase1 import CETDConfig, CETDRetriever

tiny = os.environ.get("GPU_SMOKE_TINY") == "1"
cuda = torch.cuda.is_available()
if not (cuda or tiny):
    sys.exit("no CUDA GPU visible; GPU_SMOKE_TINY=1 runs tiny shapes on the CPU")
device = torch.device("cuda" if cuda and not tiny else "cpu")
steps, budget = int(os.environ.get("STEPS", 50)), float(os.environ.get("BUDGET_S", 170))
negatives = int(os.environ.get("NEGATIVES", 3))
if tiny:
    shape = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=128, vocab_size=1000)
    q_len, p_len, steps = 32, 64, min(steps, 4)
else:  # Qwen/Qwen2.5-Coder-1.5B-Instruct's config.json
    shape = dict(hidden_size=1536, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, intermediate_size=8960, vocab_size=151936,
                 max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                 tie_word_embeddings=True)
    q_len, p_len = 512, 2048
eos = shape["vocab_size"] - 1
config = CETDConfig(backbone="random-init, Qwen2.5-Coder-1.5B shapes",
                    backbone_config=Qwen2Config(**shape, eos_token_id=eos).to_dict(),
                    pooling="last_token", append_eos=True, projection_dim=768,
                    loss="infonce", loss_temperature=0.05, use_lora=True, lora_r=16,
                    lora_alpha=32, lora_dropout=0.05,
                    lora_target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
t0 = time.time()
torch.manual_seed(0)
with torch.device(device):  # initialise on the GPU: a CPU init of 1.5B weights takes minutes
    model = CETDRetriever(config)
model.activation_checkpointing_enable()
model.train()
trainable = [p for p in model.parameters() if p.requires_grad]
print(json.dumps({"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                  "build_s": round(time.time() - t0, 1),
                  "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
                  "trainable_m": round(sum(p.numel() for p in trainable) / 1e6, 2),
                  "dtypes": sorted({str(p.dtype) for p in model.parameters()}),
                  "weights_gb": round(torch.cuda.memory_allocated() / 2**30, 2) if cuda else None}),
      flush=True)
optimizer = torch.optim.AdamW(trainable, lr=2e-5)
scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda")


def batch(b: int) -> dict[str, torch.Tensor]:
    """The collator's layout, every text at its maximum length, EOS last."""
    def texts(n: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.randint(0, eos, (n, length), device=device)
        ids[:, -1] = eos
        return ids, torch.ones_like(ids)
    q, qm = texts(b, q_len)
    p, pm = texts(b * (1 + negatives), p_len)
    return {"q_input_ids": q, "q_attention_mask": qm, "p_input_ids": p, "p_attention_mask": pm,
            "labels": torch.arange(b, device=device) * (1 + negatives),
            "owners": torch.arange(b, device=device).repeat_interleave(1 + negatives)}


def sync() -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def phase(name: str, b: int, max_steps: int, seconds: float, warmup: int = 2) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    tokens = b * q_len + b * (1 + negatives) * p_len
    losses, done, start = [], 0, None
    try:
        for step in range(max_steps + warmup):
            if step == warmup:
                sync()
                start = time.time()
            inputs = batch(b)
            with torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda"):
                loss = model(**inputs).loss
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(trainable, 1.0)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            losses.append(round(loss.item(), 4))
            done = step + 1 - warmup
            if start is not None and time.time() - start > seconds:
                break
    except torch.OutOfMemoryError:
        optimizer.zero_grad(set_to_none=True)
        print(json.dumps({"phase": name, "batch": b, "oom_after_steps": max(done, 0)}), flush=True)
        return
    sync()
    elapsed = time.time() - start if start and done > 0 else float("nan")
    print(json.dumps({
        "phase": name, "batch": b, "negatives": negatives, "q_len": q_len, "p_len": p_len,
        "tokens_per_step": tokens, "steps": done, "steps_per_s": round(done / elapsed, 3),
        "tokens_per_s": round(done * tokens / elapsed), "s_per_step": round(elapsed / done, 3),
        "peak_alloc_gb": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
        "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / 2**30, 2) if cuda else None,
        "loss_first_last": [losses[0], losses[-1]],
        "finite": all(math.isfinite(x) for x in losses)}), flush=True)


phase("seed", 8, steps, budget)
phase("batch4", 4, 10, 40)
EOF
