"""One data-parallel training step per case, run by ``test_distributed.py`` under
``accelerate launch --num_processes 2``; rank 0 saves every rank's loss and the (DDP-averaged)
gradients to the file named on the command line. The test recomputes the same step in a single
process over the global batch and compares.

The model and the batches are built here so that both sides use exactly the same ones.
"""

from __future__ import annotations

import sys

import torch

#: case -> (gather_across_devices, requirements on rank 0 and rank 1)
CASES = {"gather": (True, (3, 3)), "gather_unequal": (True, (3, 2)), "local": (False, (3, 3))}
NEGATIVES = 2  # per requirement
Q_LEN, P_LEN, VOCAB = 12, 16, 100


def build_model(gather: bool):
    """A tiny random BERT retriever with a projection head; no dropout, so that a train-mode
    step is deterministic. Same weights for any ``gather``."""
    from transformers import BertConfig

    from cetd_phase1.modeling.config import CETDConfig
    from cetd_phase1.modeling.model import CETDRetriever
    backbone = BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2,
                          num_attention_heads=2, intermediate_size=32, max_position_embeddings=32,
                          hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    return CETDRetriever(CETDConfig(backbone="tiny-bert", backbone_config=backbone.to_dict(),
                                    pooling="mean", append_eos=False, projection_dim=8,
                                    gather_across_devices=gather))


def _ids_and_mask(rows: int, length: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    ids = torch.randint(1, VOCAB, (rows, length), generator=gen)
    lengths = torch.randint(3, length + 1, (rows,), generator=gen)
    mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    return ids * mask, mask


def rank_batches(sizes: tuple[int, ...], seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """One collator-shaped batch per rank: each requirement with 1 positive + NEGATIVES."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for b in sizes:
        q_ids, q_mask = _ids_and_mask(b, Q_LEN, gen)
        p_ids, p_mask = _ids_and_mask(b * (1 + NEGATIVES), P_LEN, gen)
        out.append({"q_input_ids": q_ids, "q_attention_mask": q_mask, "p_input_ids": p_ids,
                    "p_attention_mask": p_mask,
                    "labels": torch.arange(b) * (1 + NEGATIVES)})
    return out


def merged(batches: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The global batch a single process would see (labels re-indexed)."""
    out = {k: torch.cat([b[k] for b in batches]) for k in batches[0]}
    out["labels"] = torch.cat([b["labels"] + sum(len(x["p_input_ids"]) for x in batches[:r])
                               for r, b in enumerate(batches)])
    return out


def main(out_path: str) -> None:
    from accelerate import Accelerator, DistributedDataParallelKwargs

    accelerator = Accelerator(kwargs_handlers=[
        DistributedDataParallelKwargs(broadcast_buffers=False)])  # as training_arguments sets
    rank = accelerator.process_index
    results = {}
    for case, (gather, sizes) in CASES.items():
        model = build_model(gather)
        ddp = accelerator.prepare(model)
        loss = ddp(**rank_batches(sizes)[rank]).loss
        loss.backward()  # DDP all-reduces (averages) the gradients here
        losses = accelerator.gather(loss.detach()[None])
        results[case] = {"world_size": accelerator.num_processes, "losses": losses.tolist(),
                         "grads": {n: p.grad.clone() for n, p in model.named_parameters()
                                   if p.grad is not None}}
        # DDP's reducer holds gloo work; freeing each wrapper before the next (and before the
        # process group goes) avoids "terminate called without an active exception" at exit
        del ddp, loss
        accelerator.free_memory()
    if accelerator.is_main_process:
        torch.save(results, out_path)
    accelerator.wait_for_everyone()
    accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
