#!/usr/bin/env python
"""What one training step costs under each CPU speed setting: the forward, backward and AdamW
step of ``CETDRetriever`` on real batches (stdlib train split, 32 requirements, length 256),
timed over a few steps, with the process's peak memory. One setting per process, so peaks
do not mix:

    python bench/train_step.py --attention-dropout keep --chunk 0   # before the speed work
    python bench/train_step.py --attention-dropout 0 --chunk 0      # flash attention on a CPU
    python bench/train_step.py --attention-dropout 0 --chunk 8      # + length-sorted chunks
    python bench/train_step.py --attention-dropout 0 --chunk 8 --negatives 0

``bench/train_throughput.py`` times the whole trainer against the peer; this script isolates
the model's settings.
"""

from __future__ import annotations

import argparse
import random
import sys
import time

import _bench  # noqa: F401  (repository root on sys.path, offline hub)
from _bench import machine, peak_rss_mb, today


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--attention-dropout", default="0",
                        help="'keep' (the backbone's own, 0.1 for MiniLM) or a number")
    parser.add_argument("--chunk", type=int, default=8,
                        help="encode_chunk_size (0: off, i.e. one chunk larger than any batch; "
                             "the model's own default would chunk by 8 on a CPU)")
    parser.add_argument("--negatives", type=int, default=1, help="hard negatives per sample")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)

    import torch

    from cetd_phase1.config import load_config
    from cetd_phase1.dataset import build_dataset
    from cetd_phase1.model import CETDRetriever, load_tokenizer, resolve_backbone
    from cetd_phase1.trainer import RetrievalCollator, group_queries

    cfg = load_config(_bench.REPO / "configs" / "phase1_minilm_cpu.yaml")
    d = cfg.dataset
    pairs = build_dataset(cfg.data_source, hard_negatives=d.hard_negatives,
                          random_negatives=d.random_negatives, max_positives=d.max_positives,
                          seed=d.seed)
    groups = group_queries(pairs["train"])
    tokenizer = load_tokenizer(resolve_backbone(cfg.model.base_model))
    dropout = None if args.attention_dropout == "keep" else float(args.attention_dropout)
    settings = {**cfg.model_settings(), "encode_chunk_size": args.chunk or 1 << 30}
    model = CETDRetriever.from_backbone(cfg.model.base_model, attention_dropout=dropout,
                                        **settings).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    collator = RetrievalCollator(tokenizer, max_req_length=args.max_length,
                                 max_code_length=args.max_length,
                                 negatives_per_query=args.negatives)
    b = args.batch_size
    times = []
    for step in range(args.steps):
        batch = collator([groups[i] for i in range(b * step, b * step + b)],
                         rng=random.Random(step))
        start = time.perf_counter()
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    print(f"{today()}, {machine()}")
    print(f"attention dropout {args.attention_dropout}, chunk {args.chunk}, negatives "
          f"{args.negatives}, batch {b}, length {args.max_length}: step seconds "
          f"{', '.join(f'{t:.1f}' for t in times)}; {b * len(times) / sum(times):.2f} samples/s; "
          f"peak RSS {peak_rss_mb() / 1024:.1f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
