"""Grouped requirements -> model inputs: one positive and a few negatives per requirement,
tokenised and padded to the batch's longest text; drawn reproducibly per batch."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from cetd_phase1.modeling.config import CETDConfig
from cetd_phase1.modeling.tokens import pad, tokenize
from cetd_phase1.training.sampler import NoDuplicatesBatchSampler


@dataclass
class RetrievalCollator:
    """Grouped requirements -> model inputs.

    Each requirement contributes one positive (drawn at random among its positives) and up to
    ``negatives_per_query`` of its negatives (drawn at random), so a step sees different pairs
    every epoch. Requirements and code are truncated to the model's limits and padded to the
    longest text of the batch (rounded up to a multiple of 8), never to a fixed length.
    Outputs: ``q_input_ids``/``q_attention_mask`` [B, Lq], ``p_input_ids``/``p_attention_mask``
    [C, Lp], ``labels`` [B] (index of each positive in the candidates).
    """

    tokenizer: PreTrainedTokenizerBase
    model_config: CETDConfig  # token limits, EOS and identifier splitting: as the model reads
    negatives_per_query: int
    pad_to_multiple_of: int = 8

    def __call__(self, items: list[dict[str, Any]],
                 rng: random.Random | None = None) -> dict[str, torch.Tensor]:
        """Collate ``items``, drawing positives and negatives from ``rng`` (default: the
        global generator)."""
        draw = rng or random
        requirements, candidates, labels = [], [], []
        for item in items:
            negatives = item["negatives"]
            chosen = draw.sample(negatives, min(self.negatives_per_query, len(negatives)))
            requirements.append(item["requirement"])
            labels.append(len(candidates))
            candidates += [draw.choice(item["positives"]), *chosen]
        c = self.model_config
        eos, split = bool(c.append_eos), bool(c.split_identifiers)
        q = pad(self.tokenizer, tokenize(self.tokenizer, requirements, c.max_req_length, eos,
                                         split),
                self.pad_to_multiple_of)
        p = pad(self.tokenizer, tokenize(self.tokenizer, candidates, c.max_code_length, eos,
                                         split),
                self.pad_to_multiple_of)
        return {"q_input_ids": q["input_ids"], "q_attention_mask": q["attention_mask"],
                "p_input_ids": p["input_ids"], "p_attention_mask": p["attention_mask"],
                "labels": torch.tensor(labels)}


@dataclass
class SeededCollate:
    """``collate_fn`` drawing each batch's positives and negatives from a generator seeded by
    (seed, epoch, the batch's query ids) instead of the global one.

    The DataLoader collates one batch ahead and a resumed run skips batches without collating
    them, so draws from the global generator would differ after ``resume_from_checkpoint``;
    seeded per batch, a resumed run sees exactly the pairs of an uninterrupted one.
    """

    collator: RetrievalCollator
    sampler: NoDuplicatesBatchSampler

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        key = f"{self.sampler.seed}:{self.sampler.epoch}:" + ",".join(i["query_id"] for i in items)
        return self.collator(items, rng=random.Random(key))
